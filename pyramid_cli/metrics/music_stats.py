"""Is it music, and does it stay music? Statistics of a transcription, window by window.

From the notes a transcription model finds (``pyramid_cli.metrics.transcribe``), per window (30 s by
default): notes per second, distinct pitches, pitch-class entropy, the best-matching key and its
clarity, the fraction of time some note sounds, and a repetition measure. A 3-minute piece that
collapses into a drone or a loop shows it as falling notes per second, distinct pitches and
entropy, or rising repetition, in its later windows.

- Key and key clarity: the duration-weighted pitch-class histogram is correlated (Pearson) with the
  24 Krumhansl-Kessler key profiles (Krumhansl & Kessler 1982; the Krumhansl-Schmuckler key-finding
  algorithm); the best key and its correlation (1 = the histogram has the profile's shape).
- Pitch-class entropy: Shannon entropy in bits of the duration-weighted pitch-class histogram
  (0 for one pitch class, log2 12 = 3.58 for all twelve alike).
- Repetition: the window is cut into 1 s segments, each summarised by its duration-weighted
  pitch-class vector and onset count; the share of segments that have an earlier twin (cosine
  similarity ≥ 0.99 and the same onset count, starting at least ``min_lag`` seconds before) is
  the repetition. Songs repeat too (choruses); a loop or a drone scores near 1.
- Loudness (when the audio is given): each window's RMS level in dBFS. The transcription model
  normalises its input, so it finds notes in a passage 45 dB below the rest of the piece, which
  a listener hears as silence; a window ``QUIET_DB`` or more below the piece's loudest counts as
  quiet, whatever notes were found in it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pyramid_cli.metrics.transcribe import Note

# Krumhansl & Kessler (1982) probe-tone ratings, tonic first.
MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
QUIET_DB = 30.0  # a window this far below the loudest is quiet (the test split's 19 songs: 8 dB at most)
SILENCE_DBFS = -120.0  # the level reported for digital silence


@dataclass
class WindowStats:
    """Statistics of one window of a piece."""

    start: float  # seconds
    end: float
    notes_per_second: float
    distinct_pitches: int
    pitch_class_entropy: float  # bits, 0 … 3.58
    key: str  # e.g. "A minor"; "" when no note sounds
    key_clarity: float  # correlation with the best key profile, -1 … 1 (0 with no notes)
    sounding_fraction: float  # share of the window with at least one note sounding
    repetition: float  # share of 1 s segments with an earlier twin in the piece
    loudness_db: float | None = None  # RMS level in dBFS (None: the audio was not given)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pitch_class_histogram(notes: list[Note], start: float = 0.0, end: float = math.inf) -> np.ndarray:
    """(12,) seconds each pitch class sounds within [start, end)."""
    histogram = np.zeros(12)
    for note in notes:
        overlap = min(note.end, end) - max(note.start, start)
        if overlap > 0:
            histogram[note.pitch % 12] += overlap
    return histogram


def best_key(histogram: np.ndarray) -> tuple[str, float]:
    """The Krumhansl-Kessler key whose profile correlates best with ``histogram``, and that correlation."""
    if histogram.sum() <= 0 or np.allclose(histogram, histogram[0]):
        return "", 0.0
    best = ("", -2.0)
    for tonic in range(12):
        for mode, profile in (("major", MAJOR_PROFILE), ("minor", MINOR_PROFILE)):
            r = float(np.corrcoef(histogram, np.roll(profile, tonic))[0, 1])
            if r > best[1]:
                best = (f"{PITCH_CLASSES[tonic]} {mode}", r)
    return best


def entropy_bits(histogram: np.ndarray) -> float:
    """Shannon entropy (bits) of a non-negative histogram; 0 when it is empty."""
    total = histogram.sum()
    if total <= 0:
        return 0.0
    p = histogram[histogram > 0] / total
    return float(-(p * np.log2(p)).sum())


def _sounding_fraction(notes: list[Note], start: float, end: float) -> float:
    intervals = sorted((max(n.start, start), min(n.end, end)) for n in notes if n.end > start and n.start < end)
    covered, reach = 0.0, start
    for a, b in intervals:
        if b > reach:
            covered += b - max(a, reach)
            reach = b
    return covered / (end - start) if end > start else 0.0


def _segments(notes: list[Note], duration: float, segment: float) -> list[tuple[np.ndarray, int]]:
    """Per ``segment``-second slice: (normalised pitch-class vector, onset count)."""
    result = []
    for i in range(int(math.ceil(duration / segment))):
        a, b = i * segment, (i + 1) * segment
        vector = pitch_class_histogram(notes, a, b)
        norm = np.linalg.norm(vector)
        onsets = sum(1 for n in notes if a <= n.start < b)
        result.append((vector / norm if norm > 0 else vector, onsets))
    return result


def _same(a: tuple[np.ndarray, int], b: tuple[np.ndarray, int]) -> bool:
    """Two segments are twins: same onset count and pitch classes (cosine ≥ 0.99), or both silent."""
    (va, na), (vb, nb) = a, b
    if na != nb:
        return False
    if not va.any() or not vb.any():
        return not va.any() and not vb.any()
    return float(va @ vb) >= 0.99


def loudness_db(wav: np.ndarray) -> float:
    """RMS level of mono samples in dBFS; ``SILENCE_DBFS`` for digital silence or no samples."""
    if not wav.size:
        return SILENCE_DBFS
    rms = float(np.sqrt(np.mean(np.square(wav, dtype=np.float64))))
    return max(20.0 * math.log10(rms), SILENCE_DBFS) if rms > 0 else SILENCE_DBFS


def window_stats(notes: list[Note], duration: float, window: float = 30.0, segment: float = 1.0,
                 min_lag: float = 2.0, wav: np.ndarray | None = None, sample_rate: int | None = None,
                 ) -> list[WindowStats]:
    """Statistics of every ``window``-second window of a piece of ``duration`` seconds.

    A remainder shorter than half a window joins the last window (a 180.001 s piece has six
    windows, not a seventh, silent one of 1 ms); a longer one is a shorter last window. With the
    piece's mono samples ``wav`` at ``sample_rate``, each window also gets its loudness.
    """
    if wav is not None and not sample_rate:
        raise ValueError("loudness needs the sample rate of wav")
    if duration <= 0 or window <= 0:
        raise ValueError("duration and window must be positive")
    segments = _segments(notes, duration, segment)
    lag = max(1, int(math.ceil(min_lag / segment)))
    repeated = [any(_same(seg, other) for other in segments[: max(0, i - lag + 1)])
                for i, seg in enumerate(segments)]
    stats = []
    count = max(1, int(math.floor(duration / window + 0.5)))
    for w in range(count):
        start, end = w * window, (w + 1) * window if w < count - 1 else duration
        inside = [n for n in notes if start <= n.start < end]
        histogram = pitch_class_histogram(notes, start, end)
        key, clarity = best_key(histogram)
        first, last = int(start // segment), int(math.ceil(end / segment))
        window_repeats = repeated[first:last]
        stats.append(WindowStats(
            start=start, end=end, notes_per_second=len(inside) / (end - start),
            distinct_pitches=len({n.pitch for n in inside}), pitch_class_entropy=entropy_bits(histogram),
            key=key, key_clarity=clarity, sounding_fraction=_sounding_fraction(notes, start, end),
            repetition=sum(window_repeats) / max(len(window_repeats), 1),
            loudness_db=None if wav is None or sample_rate is None else loudness_db(
                wav[round(start * sample_rate): round(end * sample_rate)]),
        ))
    return stats


def summarise(stats: list[WindowStats]) -> dict[str, float]:
    """Means over the windows, the weakest window's notes per second, and the drift of the last
    minute against the first (relative change of notes/s; 0 = stable). With loudness: how far the
    quietest window is below the loudest (dB), and how many windows are quiet (``QUIET_DB``)."""
    if not stats:
        return {}
    rates = [s.notes_per_second for s in stats]
    summary = {
        "notes_per_second": float(np.mean(rates)),
        "min_window_notes_per_second": float(min(rates)),
        "distinct_pitches": float(np.mean([s.distinct_pitches for s in stats])),
        "pitch_class_entropy": float(np.mean([s.pitch_class_entropy for s in stats])),
        "key_clarity": float(np.mean([s.key_clarity for s in stats])),
        "sounding_fraction": float(np.mean([s.sounding_fraction for s in stats])),
        "repetition": float(np.mean([s.repetition for s in stats])),
    }
    first, last = [s for s in stats if s.start < 60.0], [s for s in stats if s.end > stats[-1].end - 60.0]
    if stats[-1].end >= 120.0:
        a, b = np.mean([s.notes_per_second for s in first]), np.mean([s.notes_per_second for s in last])
        summary["last_vs_first_minute_notes_per_second"] = float((b - a) / a) if a > 0 else float("nan")
    levels = [s.loudness_db for s in stats if s.loudness_db is not None]
    if levels:
        summary["quietest_window_below_loudest_db"] = max(levels) - min(levels)
        summary["quiet_windows"] = float(sum(level <= max(levels) - QUIET_DB for level in levels))
    return summary


def mean_summary(summaries: list[dict[str, float]]) -> dict[str, float]:
    """Each statistic averaged over pieces (a corpus split's yardstick); a piece lacking one is skipped."""
    keys = sorted({key for summary in summaries for key in summary})
    return {key: float(np.mean([s[key] for s in summaries if key in s])) for key in keys}


def related_keys(a: str, b: str) -> bool:
    """Same key, relative major/minor, or a fifth apart in the same mode: neighbours on the circle of
    fifths, which key-finding confuses easily ("C major" and "A minor", "G major" or "F major": True)."""
    if not a or not b:
        return False
    (tonic_a, mode_a), (tonic_b, mode_b) = a.split(), b.split()
    ia, ib = PITCH_CLASSES.index(tonic_a), PITCH_CLASSES.index(tonic_b)
    if mode_a == mode_b:
        return (ib - ia) % 12 in (0, 5, 7)
    return ib == ((ia - 3) % 12 if mode_a == "major" else (ia + 3) % 12)
