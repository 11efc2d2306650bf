"""Note transcription for evaluation: Basic Pitch (Bittner et al., "A Lightweight Instrument-Agnostic
Model for Polyphonic Note Transcription and Multipitch Estimation", ICASSP 2022).

Why this route: the ``basic-pitch`` package pins TensorFlow < 2.15.1 and NumPy < 2 on Linux, which
must not enter pyramid's environment. Its wheel also ships the same network as an ONNX file
(``saved_models/icassp_2022/nmp.onnx``, 230 kB), so the evaluation extra installs the wheel without
its dependencies (``pip install --no-deps basic-pitch``), runs the ONNX file with onnxruntime and
does the framing and note decoding here, after Basic Pitch's own inference (2 s windows, 30
overlapping frames, 86 posterior frames per second, 88 piano keys). The note decoder follows
Basic Pitch's ``output_to_notes_polyphonic`` (onset peaks, onsets inferred from frame jumps, notes
followed while the frame posterior stays above threshold) without its "melodia" pass, which adds
notes that have no onset: onset F1 (mir_eval, 50 ms) compares onsets only.

Used by ``pyramid eval codec`` (note onset F1 between input and decode) and ``pyramid eval music``.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pyramid_cli.errors import DependencyError

SAMPLE_RATE = 22050  # Basic Pitch's input rate
FFT_HOP = 256
FRAMES_PER_SECOND = SAMPLE_RATE / FFT_HOP  # 86.13 posterior frames per second
WINDOW_SAMPLES = 2 * SAMPLE_RATE - FFT_HOP  # 43,844 samples per network window
OVERLAP_FRAMES = 30
OVERLAP_SAMPLES = OVERLAP_FRAMES * FFT_HOP
WINDOW_HOP = WINDOW_SAMPLES - OVERLAP_SAMPLES
FRAMES_PER_WINDOW = 172
LOWEST_PITCH = 21  # MIDI number of the first of the 88 output bins (A0)
MODEL_ENV = "PYRAMID_BASIC_PITCH_ONNX"
INSTALL_HINT = "install the evaluation extra: `make install-eval` (see the README, Evaluation)"

# Basic Pitch's defaults (``basic-pitch`` CLI): onset 0.5, frame 0.3, minimum note 127.7 ms.
ONSET_THRESHOLD = 0.5
FRAME_THRESHOLD = 0.3
MIN_NOTE_FRAMES = 11
ENERGY_TOLERANCE = 11  # frames below the frame threshold before a note ends


@dataclass(frozen=True)
class Note:
    """One transcribed note: times in seconds, MIDI pitch, mean frame posterior as amplitude."""

    start: float
    end: float
    pitch: int
    amplitude: float


@dataclass
class Transcription:
    """Notes and the frame-wise posteriors (86.13 frames/s) they were decoded from."""

    notes: list[Note]
    note_posteriors: np.ndarray  # (frames, 88): a note of that key sounds
    onset_posteriors: np.ndarray  # (frames, 88): a note of that key starts
    contour_posteriors: np.ndarray  # (frames, 264): pitch salience at a third of a semitone
    duration: float  # seconds of audio transcribed

    @property
    def notes_per_second(self) -> float:
        return len(self.notes) / self.duration if self.duration > 0 else 0.0


def model_path() -> Path:
    """The Basic Pitch ONNX file: ``$PYRAMID_BASIC_PITCH_ONNX``, else the installed ``basic_pitch`` wheel's."""
    override = os.environ.get(MODEL_ENV)
    if override:
        path = Path(override)
    else:
        # find_spec locates the package without importing it (its __init__ probes for TensorFlow).
        spec = importlib.util.find_spec("basic_pitch")
        if spec is None or not spec.submodule_search_locations:
            raise DependencyError(f"note transcription needs Basic Pitch's model: {INSTALL_HINT}")
        path = Path(next(iter(spec.submodule_search_locations))) / "saved_models" / "icassp_2022" / "nmp.onnx"
    if not path.is_file():
        raise DependencyError(f"Basic Pitch model not found at {path}: {INSTALL_HINT}")
    return path


def available() -> bool:
    """True when transcription can run (onnxruntime and the Basic Pitch ONNX file are installed)."""
    try:
        model_path()
    except DependencyError:
        return False
    return importlib.util.find_spec("onnxruntime") is not None


class Transcriber:
    """Basic Pitch on onnxruntime. ``Transcriber().transcribe(audio, sample_rate)`` → Transcription."""

    def __init__(self, threads: int = 1) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise DependencyError(f"note transcription needs onnxruntime: {INSTALL_HINT}") from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self._session: Any = ort.InferenceSession(
            str(model_path()), sess_options=options, providers=["CPUExecutionProvider"]
        )

    def posteriors(self, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(T,) float audio at 22,050 Hz → note (F, 88), onset (F, 88), contour (F, 264) posteriors."""
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        padded = np.concatenate([np.zeros(OVERLAP_SAMPLES // 2, np.float32), audio])
        starts = range(0, max(len(padded), 1), WINDOW_HOP)
        windows = np.zeros((len(starts), WINDOW_SAMPLES, 1), np.float32)
        for row, start in enumerate(starts):
            piece = padded[start:start + WINDOW_SAMPLES]
            windows[row, : len(piece), 0] = piece
        outputs: dict[str, list[np.ndarray]] = {"note": [], "onset": [], "contour": []}
        for batch in range(0, len(windows), 16):
            contour, note, onset = self._session.run(
                ["StatefulPartitionedCall:0", "StatefulPartitionedCall:1", "StatefulPartitionedCall:2"],
                {"serving_default_input_2:0": windows[batch:batch + 16]},
            )
            outputs["note"].append(note)
            outputs["onset"].append(onset)
            outputs["contour"].append(contour)
        n_frames = int(np.floor(len(audio) * FRAMES_PER_SECOND / SAMPLE_RATE))
        half = OVERLAP_FRAMES // 2

        def unwrap(parts: list[np.ndarray]) -> np.ndarray:
            stacked = np.concatenate(parts)[:, half:-half, :]  # drop the overlapping halves
            return stacked.reshape(-1, stacked.shape[-1])[:n_frames]

        return unwrap(outputs["note"]), unwrap(outputs["onset"]), unwrap(outputs["contour"])

    def transcribe(self, audio: np.ndarray, sample_rate: int) -> Transcription:
        """Transcribe mono audio (T,) at any rate (resampled to 22,050 Hz)."""
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if sample_rate != SAMPLE_RATE:
            from pyramid_cli.audio.io import resample

            audio = resample(audio, sample_rate, SAMPLE_RATE)
        note, onset, contour = self.posteriors(audio)
        return Transcription(
            notes=decode_notes(note, onset),
            note_posteriors=note,
            onset_posteriors=onset,
            contour_posteriors=contour,
            duration=len(audio) / SAMPLE_RATE,
        )


def frame_times(n_frames: int) -> np.ndarray:
    """Seconds of each posterior frame, with Basic Pitch's per-window drift correction."""
    frames = np.arange(n_frames)
    # Windows hold 171.27 frames of audio but yield 172: each window shifts later frames by this.
    drift = (FFT_HOP / SAMPLE_RATE) * (FRAMES_PER_WINDOW - WINDOW_SAMPLES / FFT_HOP) + 0.0018
    return frames * FFT_HOP / SAMPLE_RATE - drift * np.floor(frames / FRAMES_PER_WINDOW)


def _inferred_onsets(onsets: np.ndarray, frames: np.ndarray, n_diff: int = 2) -> np.ndarray:
    """Onsets plus sharp rises of the frame posterior (scaled to the onsets' maximum)."""
    rises = []
    for n in range(1, n_diff + 1):
        shifted = np.concatenate([np.zeros((n, frames.shape[1]), frames.dtype), frames[:-n]])
        rises.append(frames - shifted)
    rise = np.clip(np.min(rises, axis=0), 0, None)
    rise[:n_diff] = 0
    if rise.max() > 0:
        rise = onsets.max() * rise / rise.max()
    return np.maximum(onsets, rise)


def decode_notes(
    frames: np.ndarray,
    onsets: np.ndarray,
    onset_threshold: float = ONSET_THRESHOLD,
    frame_threshold: float = FRAME_THRESHOLD,
    min_note_frames: int = MIN_NOTE_FRAMES,
) -> list[Note]:
    """Posteriors (F, 88) → notes, latest onset first handled (Basic Pitch's order), sorted by start."""
    n_frames = frames.shape[0]
    if n_frames < 3:
        return []
    onsets = _inferred_onsets(onsets, frames)
    # Local maxima in time (strict, as scipy.signal.argrelmax) above the onset threshold.
    peak = np.zeros_like(onsets, dtype=bool)
    peak[1:-1] = (onsets[1:-1] > onsets[:-2]) & (onsets[1:-1] > onsets[2:])
    peak &= onsets >= onset_threshold
    times = frame_times(n_frames)
    energy = frames.copy()
    notes: list[Note] = []
    starts, keys = np.nonzero(peak)
    for start, key in zip(starts[::-1], keys[::-1], strict=True):
        if start >= n_frames - 1:
            continue
        i, below = start + 1, 0
        while i < n_frames - 1 and below < ENERGY_TOLERANCE:
            below = below + 1 if energy[i, key] < frame_threshold else 0
            i += 1
        end = i - below
        if end - start <= min_note_frames:
            continue
        energy[start:end, max(key - 1, 0): key + 2] = 0  # a note claims its key and both neighbours
        notes.append(Note(float(times[start]), float(times[min(end, n_frames - 1)]), int(key) + LOWEST_PITCH,
                          float(frames[start:end, key].mean())))
    return sorted(notes, key=lambda note: (note.start, note.pitch))


def _mir_eval() -> Any:
    try:
        import mir_eval
    except ImportError as exc:
        raise DependencyError(f"note F1 needs mir_eval: {INSTALL_HINT}") from exc
    return mir_eval


def _arrays(notes: list[Note]) -> tuple[np.ndarray, np.ndarray]:
    """mir_eval's (intervals (n, 2) s, pitches (n,) Hz) of ``notes``."""
    intervals = np.array([[n.start, max(n.end, n.start + 1e-3)] for n in notes]).reshape(-1, 2)
    pitches = 440.0 * 2.0 ** ((np.array([n.pitch for n in notes], float) - 69) / 12)
    return intervals, pitches


def onset_f1(reference: list[Note], estimate: list[Note], onset_tolerance: float = 0.05) -> tuple[float, float, float]:
    """Note onset precision, recall and F1 (mir_eval.transcription, offsets ignored, 50 ms, 50 cents).

    Two empty note lists agree perfectly (1, 1, 1); one empty list against a non-empty one scores 0.
    """
    if not reference and not estimate:
        return 1.0, 1.0, 1.0
    if not reference or not estimate:
        return 0.0, 0.0, 0.0
    precision, recall, f1, _ = _mir_eval().transcription.precision_recall_f1_overlap(
        *_arrays(reference), *_arrays(estimate), onset_tolerance=onset_tolerance, offset_ratio=None
    )
    return float(precision), float(recall), float(f1)


@dataclass(frozen=True)
class NoteErrors:
    """What onset F1's unmatched notes are, counted (``note_errors``).

    Why: an F1 says how many notes are wrong, not why. A decode's extra notes may be octaves of the
    input's (a pitch-class-right, octave-wrong codec), other keys that share a partial with an input
    note, or a held note broken in two; its misses may sit inside a note of the same pitch that the
    decode holds on (a re-struck key rendered without a new attack); each calls for a different fix.
    """

    extra: int  # decode notes matching no input note
    extra_octave: int  # of those, one or two octaves from an input note starting within the tolerance
    missed: int  # input notes matching no decode note
    missed_in_sustain: int  # of those, inside a decode note of the same pitch that started earlier
    # Of the extra notes that are not octaves: a fifth, a twelfth or two octaves and a third from an
    # input note starting within the tolerance (they share its 3rd or 5th partial) ...
    extra_partial: int = 0
    # ... and of the rest, those starting within FRAGMENT_GAP of the end of a decode note of the same
    # pitch: one held note broken in two.
    extra_fragment: int = 0


OCTAVES = (12, 24)
SHARED_PARTIAL = (7, 19, 28)  # semitones: 3:2, 3:1 and 5:1
FRAGMENT_GAP = 0.12  # seconds


def match_notes(reference: list[Note], estimate: list[Note], onset_tolerance: float = 0.05) -> list[tuple[int, int]]:
    """``onset_f1``'s matching: (reference index, estimate index) pairs (mir_eval, offsets ignored)."""
    if not reference or not estimate:
        return []
    pairs = _mir_eval().transcription.match_notes(*_arrays(reference), *_arrays(estimate),
                                                  onset_tolerance=onset_tolerance, offset_ratio=None)
    return [(int(i), int(j)) for i, j in pairs]


def note_errors(reference: list[Note], estimate: list[Note], onset_tolerance: float = 0.05) -> NoteErrors:
    """Classify the notes that ``onset_f1`` leaves unmatched (same matching: ``match_notes``)."""
    matched = match_notes(reference, estimate, onset_tolerance)
    matched_reference = {i for i, _ in matched}
    matched_estimate = {j for _, j in matched}
    extra = [n for j, n in enumerate(estimate) if j not in matched_estimate]
    missed = [n for i, n in enumerate(reference) if i not in matched_reference]

    def near_input(n: Note, intervals: tuple[int, ...]) -> bool:
        return any(abs(r.pitch - n.pitch) in intervals and abs(r.start - n.start) <= onset_tolerance
                   for r in reference)

    octave = partial = fragment = 0
    for n in extra:  # the first kind that fits
        if near_input(n, OCTAVES):
            octave += 1
        elif near_input(n, SHARED_PARTIAL):
            partial += 1
        elif any(e.pitch == n.pitch and e.end <= n.start < e.end + FRAGMENT_GAP for e in estimate):
            fragment += 1
    sustained = sum(any(e.pitch == n.pitch and e.start < n.start - onset_tolerance and n.start < e.end
                        for e in estimate) for n in missed)
    return NoteErrors(extra=len(extra), extra_octave=octave, missed=len(missed), missed_in_sustain=sustained,
                      extra_partial=partial, extra_fragment=fragment)


def top_line(notes: list[Note], onset_tolerance: float = 0.05) -> list[Note]:
    """The melody a listener follows, approximated by the skyline: the notes that no higher note covers.

    A note is kept when no higher-pitched note is sounding at its onset or starts within
    ``onset_tolerance`` after it (a chord's top note is kept, its inner notes are not). The skyline
    (Uitdenbogerd and Zobel, 1999) is the usual symbolic stand-in for a melody; it needs no
    instrument labels, so it works on any transcription. Why: note F1 over every note weighs a
    wrong inner voice as much as a lost tune; comparing the top lines asks whether the tune survives.
    """
    if not notes:
        return []
    starts = np.array([n.start for n in notes])
    ends = np.array([n.end for n in notes])
    pitches = np.array([n.pitch for n in notes])
    # covered[i, j]: note j is higher than note i and sounds at (or just after) i's onset
    covered = ((pitches[None, :] > pitches[:, None]) & (starts[None, :] <= starts[:, None] + onset_tolerance)
               & (ends[None, :] > starts[:, None]))
    hidden = np.asarray(covered.any(axis=1))
    return [n for i, n in enumerate(notes) if not hidden[i]]
