"""Audio in and out (``pyramid_cli.audio.io``): reading files and streams, mix-down, resampling,
levels, and writing whole files or piece by piece."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pyramid_cli.audio.io import (
    db_to_amplitude,
    encode_audio_bytes,
    is_silent,
    load_audio,
    load_mono,
    peak_normalize,
    resample,
    to_mono,
    trim_trailing_silence,
    write_audio_pieces,
)
from pyramid_cli.errors import InputError

RATE = 22050


def stereo(seconds: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * RATE)) / RATE
    return np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.25 * np.sin(2 * np.pi * 220 * t)]).astype(np.float32)


def test_load_audio_from_a_path_and_a_stream(tmp_path: Path) -> None:
    wav = stereo()
    sf.write(tmp_path / "a.flac", wav.T, RATE, subtype="PCM_24")
    loaded, rate = load_audio(tmp_path / "a.flac")
    assert rate == RATE and loaded.shape == wav.shape and loaded.dtype == np.float32
    np.testing.assert_allclose(loaded, wav, atol=1e-6)
    streamed, _ = load_audio(io.BytesIO((tmp_path / "a.flac").read_bytes()), name="<stdin>")
    np.testing.assert_array_equal(streamed, loaded)


def test_unreadable_inputs_are_one_line_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        load_audio(tmp_path / "missing.wav")
    with pytest.raises(InputError, match="is a directory"):
        load_audio(tmp_path)
    (tmp_path / "text.wav").write_text("not audio")
    with pytest.raises(InputError, match="not a readable audio file"):
        load_audio(tmp_path / "text.wav")


def test_mono_resampling_and_levels(tmp_path: Path) -> None:
    wav = stereo()
    mono = to_mono(wav)
    assert mono.shape == (1, wav.shape[1]) and np.allclose(mono[0], wav.mean(axis=0))
    assert resample(mono, RATE, RATE) is mono
    assert resample(mono, RATE, 2 * RATE).shape[1] == 2 * wav.shape[1]
    sf.write(tmp_path / "a.wav", wav.T, RATE)
    assert load_mono(tmp_path / "a.wav", 16000).shape == (1, round(wav.shape[1] * 16000 / RATE))
    assert np.max(np.abs(peak_normalize(wav))) == pytest.approx(0.95)
    assert db_to_amplitude(-20.0) == pytest.approx(0.1) and is_silent(0.0001 * wav) and not is_silent(wav)
    padded = np.concatenate([mono, np.zeros((1, RATE))], axis=1)
    assert trim_trailing_silence(padded, RATE).shape[1] == wav.shape[1] + RATE // 4


def test_whole_files_and_pieces_write_the_same_audio() -> None:
    mono = to_mono(stereo())
    whole = encode_audio_bytes(mono, RATE)
    buffer = io.BytesIO()
    written = write_audio_pieces(buffer, [mono[:, :1000], mono[:, 1000:]], RATE)
    assert written == mono.shape[1] and buffer.getvalue() == whole
    decoded, rate = sf.read(io.BytesIO(whole), dtype="float32")
    assert rate == RATE and np.abs(decoded - mono[0]).max() < 1e-4
