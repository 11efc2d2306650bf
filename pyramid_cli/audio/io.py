"""Audio I/O and small pure DSP helpers.

Waveforms are float32 numpy arrays shaped (channels, samples) in [-1, 1]. Reading goes through
soundfile (WAV, FLAC, OGG, and MP3 where the installed libsndfile supports it), from a path or
a binary stream (stdin); resampling goes through julius.

torch is imported only inside `resample`: the corpus builder forks one worker per MIDI file
under a memory cap, and a torch import would cost each of them seconds and gigabytes of
address space.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import soundfile as sf

from pyramid_cli.errors import InputError
from pyramid_cli.runtime.fileio import atomic_write

SAVE_FORMATS = {".wav": "WAV", ".flac": "FLAC"}


def load_audio(source: str | Path | BinaryIO, name: str | None = None) -> tuple[np.ndarray, int]:
    """Read an audio file or stream.

    Args:
        source: a path, or a binary stream (e.g. stdin's buffer) holding a whole audio file.
        name: how to call the input in error messages (defaults to the path).

    Returns:
        (waveform (C, T) float32, sample rate).
    """
    label = name or (str(source) if isinstance(source, (str, Path)) else "<stream>")
    if isinstance(source, (str, Path)):
        if not Path(source).exists():
            raise InputError(f"{label}: no such file")
        if Path(source).is_dir():
            raise InputError(f"{label}: is a directory, not an audio file")
    elif not isinstance(source, io.BytesIO):
        # soundfile needs a seekable stream; stdin is not one.
        source = io.BytesIO(source.read())
    try:
        data, sample_rate = sf.read(source, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as error:
        raise InputError(f"{label}: not a readable audio file ({error})") from None
    if data.shape[0] == 0:
        raise InputError(f"{label}: the file holds no audio samples")
    return np.ascontiguousarray(data.T), int(sample_rate)


def to_mono(wav: np.ndarray) -> np.ndarray:
    """(C, T) → (1, T) by averaging channels."""
    return wav.mean(axis=0, keepdims=True) if wav.shape[0] > 1 else wav


def resample(wav: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Band-limited sinc resampling (julius); a no-op when the rates match. (..., T) → (..., T')."""
    if from_rate == to_rate:
        return wav
    import julius
    import torch

    return julius.resample_frac(torch.from_numpy(wav), from_rate, to_rate).numpy()


def load_mono(source: str | Path | BinaryIO, sample_rate: int, name: str | None = None) -> np.ndarray:
    """Load, mix down to mono and resample to `sample_rate`. Returns (1, T)."""
    wav, rate = load_audio(source, name=name)
    return resample(to_mono(wav), rate, sample_rate)


def peak_normalize(wav: np.ndarray, peak: float = 0.95) -> np.ndarray:
    """Scale so the largest absolute sample equals `peak`; silence is returned unchanged."""
    top = float(np.max(np.abs(wav))) if wav.size else 0.0
    return wav if top == 0.0 else (wav * (peak / top)).astype(np.float32)


def trim_trailing_silence(wav: np.ndarray, sample_rate: int, threshold_db: float = -60.0,
                          keep_seconds: float = 0.25) -> np.ndarray:
    """Drop the silent tail (reverb tails of FluidSynth renders run long), keeping a short margin."""
    threshold = db_to_amplitude(threshold_db)
    loud = np.flatnonzero(np.abs(wav) > threshold)
    if loud.size == 0:
        return wav[..., :0]
    end = min(wav.shape[-1], int(loud[-1]) + 1 + int(keep_seconds * sample_rate))
    return wav[..., :end]


def db_to_amplitude(db: float) -> float:
    """A level in dBFS as a linear sample amplitude (0 dBFS = 1.0)."""
    return 10.0 ** (db / 20.0)


def is_silent(wav: np.ndarray, threshold_db: float = -60.0) -> bool:
    """True when no sample rises above `threshold_db` dBFS."""
    return wav.size == 0 or float(np.max(np.abs(wav))) <= db_to_amplitude(threshold_db)


def encode_audio_bytes(wav: np.ndarray, sample_rate: int, fmt: str = "WAV", subtype: str = "PCM_16") -> bytes:
    """Serialise (C, T) or (T,) audio to a complete file in memory (for stdout and atomic writes)."""
    values = np.clip(np.asarray(wav, dtype=np.float32), -1.0, 1.0)
    frames = values.T if values.ndim == 2 else values
    buffer = io.BytesIO()
    sf.write(buffer, frames, sample_rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def write_audio_pieces(handle: BinaryIO, pieces: Iterable[np.ndarray], sample_rate: int, fmt: str = "WAV",
                       subtype: str = "PCM_16") -> int:
    """Write consecutive (1, n) mono pieces as one audio file to a seekable binary ``handle``, as they come.

    Only one piece is in memory at a time (``pyramid decode`` of an hour). Returns the samples written.

    Raises:
        OSError: writing to ``handle`` failed (a full disk). libsndfile calls ``handle.write`` from C,
            where soundfile would print the exception and fail later on an ``AssertionError``; the
            guard keeps the first error and raises it here instead.
    """
    guard = _WriteGuard(handle)
    written = 0
    try:
        with sf.SoundFile(guard, mode="w", samplerate=sample_rate, channels=1, format=fmt, subtype=subtype) as out:
            for piece in pieces:
                out.write(np.clip(np.asarray(piece, dtype=np.float32), -1.0, 1.0).reshape(-1))
                written += piece.shape[-1]
    except (AssertionError, RuntimeError, sf.LibsndfileError):
        if guard.error is not None:
            raise guard.error from None
        raise
    finally:
        # A generator left suspended (by an error above) would keep its context open, e.g. the
        # decoder's torch.inference_mode, for the rest of the process: close it now.
        close = getattr(pieces, "close", None)
        if close is not None:
            close()
    if guard.error is not None:
        raise guard.error
    return written


class _WriteGuard:
    """A binary handle whose ``write`` records an ``OSError`` (and writes nothing more) instead of raising it."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        if self.error is not None:
            return 0
        try:
            return self._handle.write(data)
        except OSError as error:
            self.error = error
            return 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


def save_audio(path: str | Path, wav: np.ndarray, sample_rate: int,
               subtype: str = "PCM_16") -> None:
    """Write WAV or FLAC (by suffix) atomically: temporary file in the same folder, then rename."""
    suffix = Path(path).suffix.lower()
    if suffix not in SAVE_FORMATS:
        raise InputError(f"{path}: cannot write '{suffix}' audio; use .wav or .flac")
    data = encode_audio_bytes(wav, sample_rate, SAVE_FORMATS[suffix], subtype)
    with atomic_write(path) as handle:
        handle.write(data)
