"""Reading a file range by range gives what loading it whole gives (the streaming encode's input)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from pyramid_cli.audio.io import resample, to_mono, write_audio_pieces
from pyramid_cli.audio.stream import AudioReader
from pyramid_cli.errors import InputError
from pyramid_cli.runtime.fileio import atomic_write

CODEC_RATE = 22050


def _write(path, rate: int, channels: int, seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = (0.3 * rng.standard_normal((round(seconds * rate), channels))).astype(np.float32)
    sf.write(path, data, rate, subtype="FLOAT")
    return data.T  # (C, T)


@pytest.mark.parametrize(("rate", "channels"), [(22050, 1), (44100, 2), (48000, 2), (16000, 1)])
def test_ranges_equal_the_whole_file_mixed_down_and_resampled(tmp_path, rate, channels):
    path = tmp_path / "in.wav"
    whole = resample(to_mono(_write(path, rate, channels, 3.3)), rate, CODEC_RATE)
    rng = np.random.default_rng(1)
    with AudioReader(path, CODEC_RATE) as reader:
        assert (reader.original_sample_rate, reader.channels) == (rate, channels)
        assert reader.num_samples == whole.shape[1]
        n = reader.num_samples
        ranges = [(0, 1000), (n - 777, n), (0, n), (n - 10, n + 500)]
        ranges += [tuple(sorted(rng.integers(0, n, 2))) for _ in range(6)]
        for start, stop in ranges:
            piece = reader.read(int(start), int(stop))
            expected = np.zeros((1, stop - start), np.float32)
            expected[:, : max(0, min(stop, n) - start)] = whole[:, start:stop]
            np.testing.assert_allclose(piece, expected, atol=1e-5, err_msg=f"range [{start}, {stop})")


def test_peak_of_the_mono_mix(tmp_path):
    path = tmp_path / "in.wav"
    data = _write(path, 44100, 2, 1.0)
    with AudioReader(path, CODEC_RATE) as reader:
        assert reader.peak() == pytest.approx(float(np.abs(data.mean(axis=0)).max()), rel=1e-6)


def test_streams_and_bad_files(tmp_path):
    buffer = io.BytesIO()
    sf.write(buffer, np.full(100, 0.5, np.float32), CODEC_RATE, format="WAV", subtype="FLOAT")
    with AudioReader(io.BytesIO(buffer.getvalue()), CODEC_RATE) as reader:
        np.testing.assert_array_equal(reader.read(90, 110)[0, :10], np.full(10, 0.5, np.float32))
        assert not reader.read(90, 110)[0, 10:].any()
    (tmp_path / "junk.wav").write_bytes(b"RIFF....not audio")
    with pytest.raises(InputError, match="not a readable audio file"):
        AudioReader(tmp_path / "junk.wav", CODEC_RATE)
    with pytest.raises(InputError, match="no such file"):
        AudioReader(tmp_path / "missing.wav", CODEC_RATE)


def test_pieces_written_as_they_come_make_the_same_file_and_an_interruption_leaves_none(tmp_path):
    pieces = [np.full((1, n), v, np.float32) for n, v in ((100, 0.1), (7, -0.5), (50, 2.0))]
    with atomic_write(tmp_path / "out.wav") as handle:
        assert write_audio_pieces(handle, iter(pieces), CODEC_RATE) == 157
    audio, rate = sf.read(tmp_path / "out.wav", dtype="float32")
    assert rate == CODEC_RATE
    np.testing.assert_allclose(audio, np.clip(np.concatenate(pieces, axis=1)[0], -1, 1), atol=1 / 32768)

    def failing():
        yield pieces[0]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), atomic_write(tmp_path / "cut.wav") as handle:
        write_audio_pieces(handle, failing(), CODEC_RATE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.wav"]


def _wav_bytes(fmt: str = "WAV", subtype: str = "PCM_16", frames: int = 8000, channels: int = 2) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros((frames, channels), np.float32), CODEC_RATE, format=fmt, subtype=subtype)
    return buffer.getvalue()


@pytest.mark.parametrize(("fmt", "subtype"), [("WAV", "PCM_16"), ("WAV", "FLOAT"), ("WAV", "PCM_24"),
                                              ("RF64", "PCM_16")])
def test_a_cut_wav_is_flagged_as_truncated(fmt: str, subtype: str):
    """libsndfile shortens a cut WAV to what it holds without a word; the header's promise tells."""
    whole = _wav_bytes(fmt, subtype)
    with AudioReader(io.BytesIO(whole), CODEC_RATE) as reader:
        assert (reader.frames, reader.header_frames, reader.truncated) == (8000, 8000, False)
    with AudioReader(io.BytesIO(whole[: len(whole) // 2]), CODEC_RATE) as reader:
        assert reader.header_frames == 8000 and reader.truncated and 3900 < reader.frames < 4100
        assert reader.read(0, reader.num_samples).shape == (1, reader.frames)  # the readable part reads


def test_unknown_lengths_and_other_formats_promise_nothing():
    """A WAV streamed to a pipe leaves its sizes 0xFFFFFFFF; FLAC, AIFF, W64 are not WAV headers."""
    from pyramid_cli.audio.stream import wav_header_frames

    streamed = bytearray(_wav_bytes())
    data = streamed.index(b"data")
    streamed[4:8] = streamed[data + 4: data + 8] = b"\xff\xff\xff\xff"
    assert wav_header_frames(io.BytesIO(bytes(streamed))) is None
    for fmt in ("FLAC", "AIFF", "W64"):
        assert wav_header_frames(io.BytesIO(_wav_bytes(fmt))) is None
    handle = io.BytesIO(_wav_bytes())
    handle.seek(5)
    assert wav_header_frames(handle) == 8000 and handle.tell() == 5  # the position is restored
