"""Chunked coding equals whole-signal coding: the chunk size is an execution detail (UX §1)."""

from __future__ import annotations

import pytest
import torch

from pyramid_cli.codec import CodecConfig, PyramidCodec, inference, p111_small
from pyramid_cli.codec.inference import decode_codes, encode_audio, receptive_field
from pyramid_cli.errors import InputError, UsageError

# The p111 geometry (strides 4,4,4,4 then 2,2,2: hops 2048 / 1024 / 512) at toy widths.
TINY_P111 = CodecConfig(name="tiny-p111", encoder_dim=8, latent_dim=16, decoder_dim=32)
TINY_DAC = CodecConfig(name="tiny-dac", encoder_dim=4, encoder_rates=(2, 2, 2), decoder_dim=16, pyramid_rates=(),
                       latent_dim=16, n_codebooks=(2,), codebook_size=32, codebook_dim=4)
RATE = 22050
LENGTH = 4 * RATE + 1234  # 44 coarse frames, the last one partly padding



@pytest.fixture(scope="module")
def model() -> PyramidCodec:
    torch.manual_seed(0)
    return PyramidCodec(TINY_P111).eval().fold_weight_norm()


@pytest.fixture(scope="module")
def wav() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    t = torch.arange(LENGTH) / RATE
    return (0.3 * torch.sin(2 * torch.pi * 330 * t) + 0.1 * torch.randn(LENGTH, generator=g))[None]  # (1, T)


@pytest.fixture(scope="module")
def whole(model: PyramidCodec, wav: torch.Tensor) -> list[torch.Tensor]:
    with torch.inference_mode():
        return [c[0] for c in model.encode(wav[None])]  # per level (n_q, T_i)


def test_receptive_field_depends_on_the_strides_only():
    field = receptive_field(TINY_P111)
    # Measured: a p111 code reaches 15,008 samples past its frame (7.3 coarse frames → 8), an
    # output sample depends on codes up to 9 coarse frames away (the decoder's residual units).
    assert (field.encode_frames, field.decode_frames) == (8, 9)
    assert field.hop_length == 2048 and 0.7 < field.encode_seconds < 0.8 and 0.8 < field.decode_seconds < 0.9
    assert receptive_field(p111_small()) == field  # same strides, other widths


@pytest.mark.parametrize("chunk_seconds", [0.3, 1.1, 1000.0])
def test_encode_is_chunk_invariant(model, wav, whole, chunk_seconds):
    codes = encode_audio(model, wav, chunk_seconds=chunk_seconds)
    assert [c.shape[-1] for c in codes] == model.frame_counts(LENGTH)
    for level, (chunked, reference) in enumerate(zip(codes, whole, strict=True)):
        assert torch.equal(chunked, reference), f"level {level}: {(chunked != reference).sum()} codes differ"


def no_overlap(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks without context on either side (the receptive field measured as nothing)."""
    monkeypatch.setattr(inference, "encode_reach", lambda config: 0)
    monkeypatch.setattr(inference, "decode_reach", lambda config: 0)


def test_too_little_overlap_changes_the_codes(model, wav, whole, monkeypatch: pytest.MonkeyPatch):
    """The overlap is what makes chunking exact: without it, codes next to chunk edges change."""
    no_overlap(monkeypatch)
    codes = encode_audio(model, wav, chunk_seconds=0.3)
    assert any(not torch.equal(c, w) for c, w in zip(codes, whole, strict=True))


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_decode_is_chunk_invariant_and_exact_length(model, whole, levels, monkeypatch: pytest.MonkeyPatch):
    with torch.inference_mode():
        reference = model.decode([c[None] for c in whole], levels=levels, length=LENGTH)[0]
    for chunk_seconds in (0.3, 1.1):
        audio = decode_codes(model, whole, levels=levels, num_samples=LENGTH, chunk_seconds=chunk_seconds)
        assert audio.shape == (1, LENGTH)
        assert (audio - reference).abs().max() < 1e-5  # float rounding only: no seam
    no_overlap(monkeypatch)
    seamy = decode_codes(model, whole, levels=levels, num_samples=LENGTH, chunk_seconds=0.3)
    assert (seamy - reference).abs().max() > 1e-3


def test_single_level_codec_is_chunk_invariant():
    torch.manual_seed(0)
    dac = PyramidCodec(TINY_DAC).eval()
    wav = 0.3 * torch.randn(1, 3001, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        reference = dac.encode(wav[None])
        audio = dac.decode(reference, length=3001)[0]
    codes = encode_audio(dac, wav, chunk_seconds=200 / RATE)
    assert torch.equal(codes[0], reference[0][0])
    chunked = decode_codes(dac, codes, num_samples=3001, chunk_seconds=200 / RATE)
    assert chunked.shape == (1, 3001) and (chunked - audio).abs().max() < 1e-5


@pytest.mark.parametrize("length", [1, 2047, 2048, 2049])
def test_short_and_odd_lengths(model, length):
    wav = 0.1 * torch.randn(1, length, generator=torch.Generator().manual_seed(length))
    codes = encode_audio(model, wav, chunk_seconds=0.1)
    assert [c.shape[-1] for c in codes] == model.frame_counts(length)
    assert decode_codes(model, codes, num_samples=length, chunk_seconds=0.1).shape == (1, length)


def test_progress_reaches_the_total(model, wav, whole):
    calls: list[tuple[int, int]] = []
    encode_audio(model, wav, chunk_seconds=1.0, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (LENGTH, LENGTH) and len(calls) == 4  # 11 coarse frames per chunk
    calls.clear()
    decode_codes(model, whole, num_samples=1000, chunk_seconds=1.0, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1000, 1000)]  # frames past num_samples are decoded only as context


def test_bad_arguments(model, whole):
    with pytest.raises(InputError, match="mono audio"):
        encode_audio(model, torch.zeros(2, 100))
    with pytest.raises(UsageError, match="chunk length"):
        encode_audio(model, torch.zeros(1, 100), chunk_seconds=0)
    with pytest.raises(InputError, match="samples asked for"):
        decode_codes(model, whole, num_samples=whole[0].shape[-1] * 2048 + 1)
    with pytest.raises(UsageError, match="cannot decode 3 levels"):
        decode_codes(model, whole[:2], levels=3)


@pytest.mark.parametrize("rate", [22050, 44100])
def test_a_file_encoded_chunk_by_chunk_from_disk_equals_the_file_encoded_from_memory(tmp_path, model, rate):
    """``encode_file`` streams the file (mix-down and resampling range by range); the tokens stay the same."""
    import numpy as np
    import soundfile as sf

    from pyramid_cli.codec.api import LoadedCodec, encode_file, encode_waveform

    rng = np.random.default_rng(3)
    t = np.arange(round(5.3 * rate)) / rate
    stereo = np.stack([0.3 * np.sin(2 * np.pi * 220 * t), 0.2 * np.sin(2 * np.pi * 331 * t)])
    stereo = (stereo + 0.05 * rng.standard_normal(stereo.shape)).astype(np.float32)
    sf.write(tmp_path / "song.wav", stereo.T, rate, subtype="FLOAT")
    codec = LoadedCodec(model, "tiny-p111", "0" * 16)
    streamed = encode_file(tmp_path / "song.wav", codec, chunk_seconds=1.0)
    in_memory = encode_waveform(stereo, rate, codec, chunk_seconds=1.0)
    assert streamed.num_samples == in_memory.num_samples
    assert (streamed.original_sample_rate, streamed.original_channels) == (rate, 2)
    for a, b in zip(streamed.levels, in_memory.levels, strict=True):
        np.testing.assert_array_equal(a.codes, b.codes)
