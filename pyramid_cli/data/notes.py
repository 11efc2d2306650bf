"""Piano rolls of a corpus's songs from the MIDI files they were rendered from (note-head training).

A song rendered by ``pyramid dataset build`` starts at MIDI time 0, so a crop from sample ``offset``
sees the notes sounding at ``(offset + t * hop) / sample_rate`` in frame t (frames centred as in
``codec.spectral.stft_magnitude``). Drums have no pitch and are left out; keys outside the piano's
88 are dropped.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from pyramid_cli.codec.spectral import PIANO_KEYS, PIANO_LOW
from pyramid_cli.data.midi_libs import pretty_midi
from pyramid_cli.errors import InputError


def midi_notes(path: str | Path) -> np.ndarray:
    """(n, 3) float64 rows (start s, end s, MIDI pitch) of the pitched notes of a MIDI file."""
    try:
        with warnings.catch_warnings():  # tempo events on the wrong track: harmless for note times
            warnings.simplefilter("ignore")
            midi = pretty_midi.PrettyMIDI(str(path))
    except Exception as exc:  # pretty_midi/mido raise many types on a corrupt file
        raise InputError(f"{path}: cannot read MIDI ({type(exc).__name__}: {exc})") from exc
    rows = [(n.start, n.end, n.pitch) for inst in midi.instruments if not inst.is_drum for n in inst.notes
            if PIANO_LOW <= n.pitch < PIANO_LOW + PIANO_KEYS]
    return np.array(rows, dtype=np.float64).reshape(-1, 3)


def _note_frames(notes: np.ndarray, offset: int, hop: int, sample_rate: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per note: key index (0..87), first frame and end frame (exclusive), unclipped."""
    first = (notes[:, 0] * sample_rate - offset) / hop  # in frames, fractional
    last = (notes[:, 1] * sample_rate - offset) / hop
    end = np.maximum(np.ceil(last).astype(np.int64), np.round(first).astype(np.int64) + 1)
    start = np.minimum(np.ceil(first).astype(np.int64), end - 1)
    return notes[:, 2].astype(np.int64) - PIANO_LOW, start, end


def piano_roll(notes: np.ndarray, offset: int, frames: int, hop: int, sample_rate: int) -> np.ndarray:
    """(88, frames) float32: 1 where a key sounds in frame t (time (offset + t * hop) / sample_rate).

    A note shorter than a frame still marks the frame nearest its onset, so no note is lost.
    """
    roll = np.zeros((PIANO_KEYS, frames), np.float32)
    if not len(notes):
        return roll
    keys, start, end = _note_frames(notes, offset, hop, sample_rate)
    for key, a, b in zip(keys, np.clip(start, 0, frames), np.clip(end, 0, frames), strict=True):
        if a < b:
            roll[key, a:b] = 1.0
    return roll


def onset_roll(notes: np.ndarray, offset: int, frames: int, hop: int, sample_rate: int) -> np.ndarray:
    """(88, frames) float32: 1 where a note starts, in the first frame that ``piano_roll`` marks for it."""
    roll = np.zeros((PIANO_KEYS, frames), np.float32)
    if not len(notes):
        return roll
    keys, start, _ = _note_frames(notes, offset, hop, sample_rate)
    inside = (start >= 0) & (start < frames)
    roll[keys[inside], start[inside]] = 1.0
    return roll
