"""The spectral codec (frame-rate ConvNeXt encoder/decoder, Griffin-Lim phase) and FSQ stages."""

from __future__ import annotations

import math

import pytest
import torch

from pyramid_cli.codec import CodecConfig, PyramidCodec
from pyramid_cli.codec.config import p111_spectral
from pyramid_cli.codec.inference import decode_codes, encode_audio
from pyramid_cli.codec.quantize import ResidualVectorQuantize, ScalarQuantize
from pyramid_cli.codec.spectral import griffin_lim, stft_magnitude
from pyramid_cli.errors import UsageError

RATE = 22050
TINY = CodecConfig(name="tiny-spectral", architecture="spectral", encoder_rates=(256,), encoder_dim=16,
                   decoder_dim=16, latent_dim=16, encoder_layers=1, decoder_layers=1, griffin_lim_iters=4,
                   fsq_levels=(4, 4, 4, 4, 4))
LENGTH = 3 * RATE + 777


@pytest.fixture(scope="module")
def model() -> PyramidCodec:
    torch.manual_seed(0)
    return PyramidCodec(TINY).eval()


@pytest.fixture(scope="module")
def wav() -> torch.Tensor:
    t = torch.arange(LENGTH) / RATE
    g = torch.Generator().manual_seed(1)
    return (0.3 * torch.sin(2 * math.pi * 330 * t) + 0.05 * torch.randn(LENGTH, generator=g))[None]


def test_preset_keeps_the_p111_token_rates() -> None:
    config = p111_spectral()
    assert config.hop_lengths == (2048, 1024, 512)
    assert config.tokens_per_second(3) == pytest.approx(75.366, abs=1e-3)
    assert config.codebook_size == math.prod(config.fsq_levels) == 1024


def test_config_checks() -> None:
    with pytest.raises(UsageError, match="fsq_levels"):
        CodecConfig(fsq_levels=(4, 4, 4))  # 64 codes, codebook_size 1024
    with pytest.raises(UsageError, match="one stride"):
        CodecConfig(architecture="spectral", encoder_rates=(16, 16))
    with pytest.raises(UsageError, match="architecture"):
        CodecConfig(architecture="mel")
    assert CodecConfig.from_dict({k: v for k, v in CodecConfig().to_dict().items()
                                  if k not in ("architecture", "fsq_levels")}).architecture == "waveform"


def test_fsq_codes_round_trip_and_cover_the_grid() -> None:
    torch.manual_seed(0)
    stage = ScalarQuantize(8, (4, 4, 4, 4, 4)).eval()
    z = 3 * torch.randn(2, 8, 50)
    out = stage(z)
    assert out.codes.min() >= 0 and out.codes.max() < 1024
    assert torch.allclose(stage.from_codes(out.codes), out.z_q, atol=1e-6)
    grid = stage.lookup(torch.arange(1024)[None])  # (1, 5, 1024)
    assert grid.unique(dim=2).shape[-1] == 1024  # every code is its own grid point
    assert torch.equal(stage._codes(grid * 2), torch.arange(1024)[None])  # and maps back to itself


def test_a_binary_grid_splits_its_inputs_at_zero() -> None:
    """Two levels per dimension: the paper's bound would put nearly every input in one cell."""
    torch.manual_seed(0)
    stage = ScalarQuantize(8, (2,) * 10).eval()
    z_e = torch.randn(1, 10, 4000)
    bits = (stage.nearest_codes(z_e)[0, :, None] // stage.basis.long()) % 2  # (T, 10)
    assert torch.equal(bits.T.bool(), z_e[0] > 0)
    assert torch.equal(stage._codes(stage.lookup(torch.arange(1024)[None])), torch.arange(1024)[None])


def test_fsq_standardisation_keeps_codes_spread() -> None:
    """A large common offset (what collapsed training) does not put every frame in one cell."""
    torch.manual_seed(0)
    rvq = ResidualVectorQuantize(16, 1, 1024, 8, fsq_levels=(4, 4, 4, 4, 4)).train()
    z = 500 + 0.01 * torch.randn(4, 16, 100)  # frames differ by 1e-5 of their common part
    codes = rvq(z).codes
    assert codes.unique().numel() > 50


def test_decode_reads_only_the_levels_asked_for(model, wav) -> None:
    with torch.inference_mode():
        codes = model.encode(wav[None])
        one = model.decode(codes[:1], levels=1, length=LENGTH)
        also_one = model.decode([codes[0], torch.zeros_like(codes[1]), torch.zeros_like(codes[2])], levels=1,
                                length=LENGTH)
    assert one.shape == (1, 1, LENGTH) and torch.equal(one, also_one)
    assert one.abs().max() <= 1.0


def test_chunked_coding_equals_whole_signal_coding(model, wav) -> None:
    with torch.inference_mode():
        whole = [c[0] for c in model.encode(wav[None])]
        reference = model.decode([c[None] for c in whole], length=LENGTH)[0]
    codes = encode_audio(model, wav, chunk_seconds=0.5)
    for chunked, full in zip(codes, whole, strict=True):
        assert torch.equal(chunked, full)
    audio = decode_codes(model, whole, num_samples=LENGTH, chunk_seconds=0.5)
    assert (audio - reference).abs().max() < 1e-4  # Griffin-Lim's reach is bounded: no seams


def test_griffin_lim_restores_a_consistent_signal() -> None:
    t = torch.arange(2 * RATE) / RATE
    x = (0.4 * torch.sin(2 * math.pi * 220 * t) + 0.2 * torch.sin(2 * math.pi * 331 * t))[None, None]
    magnitude = stft_magnitude(x, 2048, 512)
    def inconsistency(iterations: int) -> float:
        y = griffin_lim(magnitude, 2048, 512, iterations, x.shape[-1])
        assert y.shape == x.shape
        return float((stft_magnitude(y, 2048, 512) - magnitude).norm() / magnitude.norm())

    zero_phase, restored = inconsistency(0), inconsistency(32)
    assert restored < 0.2 and restored < zero_phase / 2


def test_spectral_losses_compare_each_frame_with_the_target_at_the_same_time() -> None:
    """A 2 s crop is not a whole number of coarse frames; the model pads it, and frame t of its
    output must be compared with the target's frame centred at t * hop (until December 2026 the
    hop was inferred as ceil(T / frames): 502 for 512, a drift of 39 ms by the crop's end)."""
    from pyramid_cli.train.codec_parts import spectral_losses

    codec = PyramidCodec(TINY).train()
    wav = 0.1 * torch.randn(1, 1, 2 * RATE, generator=torch.Generator().manual_seed(0))
    out = codec(wav, levels_to_decode=[2])
    frames, hop = out.spectra[2].shape[-1], out.frame_hop
    assert hop == TINY.hop_lengths[-1] and frames * hop > wav.shape[-1] + frames  # padding > 1 sample a frame
    padded = torch.nn.functional.pad(wav, (0, frames * hop - wav.shape[-1]))
    exact = stft_magnitude(padded, TINY.n_fft, hop).clamp(min=1e-2).log()
    assert spectral_losses(exact, wav, RATE, hop)["log_mag"] < 1e-5
    late = torch.cat([exact[..., :1], exact[..., :-1]], -1)  # one frame late
    assert spectral_losses(late, wav, RATE, hop)["log_mag"] > 0.1


def test_training_step_learns_from_magnitudes() -> None:
    from pyramid_cli.train.codec_parts import level_targets, spectral_losses

    torch.manual_seed(0)
    codec = PyramidCodec(TINY).train()
    optimizer = torch.optim.Adam(codec.parameters(), lr=3e-3)
    t = torch.arange(RATE) / RATE
    wav = (0.3 * torch.sin(2 * math.pi * 440 * t))[None, None].repeat(2, 1, 1)
    losses = []
    for _ in range(15):
        out = codec(wav, levels_to_decode=[2])
        assert out.reconstructions == {} and out.spectra is not None
        parts = spectral_losses(out.spectra[2], level_targets(wav, [2], 3)[2], RATE, out.frame_hop)
        loss = parts["mel"] + parts["log_mag"] + parts["convergence"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert math.isfinite(losses[-1]) and losses[-1] < 0.9 * losses[0]
