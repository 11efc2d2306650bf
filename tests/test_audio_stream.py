"""Reading a file range by range gives what loading it whole gives (the streaming encode's input)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from pyramid_cli.audio import resample, to_mono, write_audio_pieces
from pyramid_cli.audio_stream import AudioReader
from pyramid_cli.errors import InputError
from pyramid_cli.fileio import atomic_write

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
