"""Fréchet distance between generated audio and a corpus split, in an embedding computable offline.

The Fréchet Audio Distance (FAD) fits a Gaussian to frame embeddings of each audio set and
measures the Fréchet (2-Wasserstein) distance between the two Gaussians:

    d² = ||mu1 - mu2||² + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^(1/2))

The embedding is pluggable. An embedding function (`EmbeddingFn`) takes mono float32 audio
shaped (T,) and its sample rate and returns (n_frames, dim) embeddings. Two are built in, both
over 1-second windows (0.5 s hop):

- ``notes`` (the default, `note_statistics`): statistics of the frame posteriors of the
  transcription model (Basic Pitch, `pyramid_cli.metrics.transcribe`): which pitch classes and octaves
  sound, which pitch classes start notes, how many notes start and sound at once, and how much
  the harmony changes within the second. It sees notes, not timbre: a drone or a buzz is far
  from music in it even when its loudness and spectral balance match (the mel statistics rated
  a drone closer to the corpus than the codec's own reconstructions).
- ``mel-stats`` (`mel_statistics`, no model): log-mel band statistics plus loudness and onset
  statistics: spectral balance, timbre and dynamics, not pitch.

Neither captures long-range form, and neither is a learned perceptual embedding, so their
distances cannot be compared with published FAD figures (those use VGGish, CLAP, MERT, ...). A
learned model can be plugged in as ``module:function`` (see `load_embedding`).

FAD is biased upward for small sets (the covariance of few frames is noisy), so a distance
means something only next to a yardstick measured at a similar size, such as the distance
between two halves of the reference split.

The library never prints; it raises `InputError` for unreadable audio and `UsageError` for a
bad embedding specification.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pyramid_cli.audio.io import load_audio, resample, to_mono
from pyramid_cli.data.manifest import SPLITS, load_manifest
from pyramid_cli.errors import InputError, UsageError

EmbeddingFn = Callable[[np.ndarray, int], np.ndarray]
"""Mono float32 audio (T,) at a sample rate → (n_frames, dim) float embeddings."""

DEFAULT_EMBEDDING = "notes"
AUDIO_SUFFIXES = (".wav", ".flac")

# The built-in embedding's analysis settings.
MEL_SAMPLE_RATE = 22050
MEL_BANDS = 64
MEL_N_FFT = 2048
MEL_HOP = 512
WINDOW_SECONDS = 1.0
WINDOW_HOP_SECONDS = 0.5
POWER_FLOOR = 1e-10  # -100 dB: digital silence stays finite
RMS_FLOOR = 1e-5  # -100 dBFS
MEL_STATS_DIM = 2 * MEL_BANDS + 4


def mel_statistics(wav: np.ndarray, sample_rate: int) -> np.ndarray:
    """The built-in embedding: statistics of 1-second windows (0.5 s hop) of a log-mel spectrogram.

    The audio is resampled to 22,050 Hz, then analysed with a 64-band mel spectrogram (n_fft 2048,
    hop 512, about 43 frames per second) in dB (10·log10 of the mel power, floored at -100 dB).
    Each window of 43 frames gives one vector of 132 values:

    - 64 band means of the log-mel: the spectral balance and timbre (which bands carry energy);
    - 64 band standard deviations: how much each band moves within the second;
    - mean and standard deviation of the spectral flux (the band-averaged positive dB change
      from frame to frame): onset strength and onset density;
    - mean and standard deviation of the frame RMS level in dBFS: loudness and its dynamics.

    It does not capture melody, harmony or anything beyond about a second (phrases, sections,
    long-range form), and it is not a learned perceptual embedding: distances in it are not
    comparable with published FAD figures. All 132 features are in dB (or dB per frame), so a
    distance d is roughly a root-mean-square difference of sqrt(d / 132) dB per feature. Audio
    shorter than a window gives a single vector over all its frames; empty audio gives a (0, 132)
    array.

    Args:
        wav: mono float32 audio, (T,) (a (1, T) array is accepted too).
        sample_rate: its sample rate in Hz.

    Returns:
        (n_windows, 132) float64 array.
    """
    import torch

    from pyramid_cli.audio.spectra import mel_magnitude, stft_magnitude

    mono = np.asarray(wav, dtype=np.float32)
    if mono.ndim == 2 and mono.shape[0] == 1:
        mono = mono[0]
    if mono.ndim != 1:
        raise InputError(f"mel_statistics expects mono audio shaped (T,), got shape {mono.shape}")
    if mono.size == 0:
        return np.zeros((0, MEL_STATS_DIM))
    mono = np.ascontiguousarray(resample(mono, sample_rate, MEL_SAMPLE_RATE), dtype=np.float32)
    if mono.size < MEL_N_FFT:  # reflect padding needs at least half an FFT frame
        mono = np.pad(mono, (0, MEL_N_FFT - mono.size))
    signal = torch.from_numpy(mono)
    power = stft_magnitude(signal[None], MEL_N_FFT, MEL_HOP)[0] ** 2  # (F, frames), frame i centred on i * hop
    mel = mel_magnitude(power, MEL_BANDS, MEL_SAMPLE_RATE, mel_scale="htk").T  # (bands, frames)
    log_mel = (10.0 * torch.log10(mel.clamp_min(POWER_FLOOR))).double().numpy()
    frames = log_mel.shape[1]

    # Frame RMS over the same centred n_fft frames as the spectrogram.
    padded = np.pad(mono, (MEL_N_FFT // 2, MEL_N_FFT // 2)).astype(np.float64)
    squares = np.concatenate([[0.0], np.cumsum(padded**2)])
    starts = np.arange(frames) * MEL_HOP
    ends = np.minimum(starts + MEL_N_FFT, padded.size)
    mean_square = (squares[ends] - squares[starts]) / MEL_N_FFT
    rms_db = 20.0 * np.log10(np.maximum(np.sqrt(np.maximum(mean_square, 0.0)), RMS_FLOOR))

    # Spectral flux: band-averaged half-wave-rectified dB increase; the first frame has none.
    flux = np.concatenate([[0.0], np.maximum(np.diff(log_mel, axis=1), 0.0).mean(axis=0)])

    rows = []
    for start, end in _window_spans(frames, MEL_SAMPLE_RATE / MEL_HOP):
        part = log_mel[:, start:end]
        rows.append(np.concatenate([
            part.mean(axis=1), part.std(axis=1),
            [flux[start:end].mean(), flux[start:end].std(), rms_db[start:end].mean(), rms_db[start:end].std()],
        ]))
    return np.stack(rows)


# The note embedding's layout: 12 pitch classes sounding, 8 octaves sounding, 12 pitch classes
# starting, onset density (mean, std), polyphony (mean, std), harmonic change.
NOTE_STATS_DIM = 12 + 8 + 12 + 2 + 2 + 1


def _window_spans(frames: int, frames_per_second: float) -> list[tuple[int, int]]:
    """1-second windows with a 0.5 s hop (one window over everything when shorter than a second)."""
    window = round(WINDOW_SECONDS * frames_per_second)
    hop = round(WINDOW_HOP_SECONDS * frames_per_second)
    if frames <= window:
        return [(0, frames)]
    return [(s, s + window) for s in range(0, frames - window + 1, hop)]


def note_statistics_from_posteriors(note: np.ndarray, onset: np.ndarray) -> np.ndarray:
    """Basic Pitch posteriors, note (F, 88) and onset (F, 88) at 86.13 frames/s → (n_windows, 37).

    Per 1-second window (0.5 s hop):

    - 12: the mean note posterior of each pitch class (keys folded onto C, C#, ... B): the
      harmony and key that sound;
    - 8: the mean note posterior per octave (keys 0-11 from A0, 12-23, ...): the register;
    - 12: the mean onset posterior of each pitch class: which pitches start notes (melody);
    - 2: mean and standard deviation over frames of the summed onset posterior: note density and
      its rhythm;
    - 2: mean and standard deviation of the summed note posterior: polyphony;
    - 1: the Euclidean distance between the pitch-class profiles of the window's two halves,
      each normalised to unit sum: how much the harmony moves within the second.

    A window of silence is all zeros (no empty profile is normalised).
    """
    from pyramid_cli.metrics.transcribe import FRAMES_PER_SECOND, LOWEST_PITCH

    note = np.asarray(note, dtype=np.float64)
    onset = np.asarray(onset, dtype=np.float64)
    if note.shape != onset.shape or note.ndim != 2 or note.shape[1] != 88:
        raise ValueError(f"expected note and onset posteriors of one shape (F, 88), got {note.shape}, {onset.shape}")
    if note.shape[0] == 0:
        return np.zeros((0, NOTE_STATS_DIM))
    pitch_class = (np.arange(88) + LOWEST_PITCH) % 12
    octave = np.arange(88) // 12  # 8 groups of 12 keys (the last holds 4)
    fold = np.eye(12)[pitch_class]  # (88, 12)
    by_octave = np.eye(8)[octave]  # (88, 8)

    def profile(block: np.ndarray) -> np.ndarray:
        total = block.sum()
        return block / total if total > 1e-9 else block

    rows = []
    for start, end in _window_spans(note.shape[0], FRAMES_PER_SECOND):
        n, o = note[start:end], onset[start:end]
        classes = n @ fold
        half = max(1, (end - start) // 2)
        change = np.linalg.norm(profile(classes[:half].sum(0)) - profile(classes[half:].sum(0)))
        onsets_per_frame, sounding = o.sum(1), n.sum(1)
        rows.append(np.concatenate([
            classes.mean(0), (n @ by_octave).mean(0), (o @ fold).mean(0),
            [onsets_per_frame.mean(), onsets_per_frame.std(), sounding.mean(), sounding.std(), change],
        ]))
    return np.stack(rows)


def note_statistics_embedding(threads: int = 1) -> EmbeddingFn:
    """The ``notes`` embedding: transcribe (Basic Pitch) and summarise (`note_statistics_from_posteriors`).

    Raises:
        DependencyError: the transcription model is not installed (at call time of this factory).
    """
    from pyramid_cli.metrics.transcribe import SAMPLE_RATE, Transcriber

    transcriber = Transcriber(threads=threads)

    def note_statistics(wav: np.ndarray, sample_rate: int) -> np.ndarray:
        mono = np.asarray(wav, dtype=np.float32).reshape(-1)
        if mono.size == 0:
            return np.zeros((0, NOTE_STATS_DIM))
        if sample_rate != SAMPLE_RATE:
            mono = resample(mono, sample_rate, SAMPLE_RATE)
        note, onset, _ = transcriber.posteriors(mono)
        return note_statistics_from_posteriors(note, onset)

    return note_statistics


def load_embedding(spec: str | None, threads: int = 1) -> tuple[str, EmbeddingFn]:
    """The embedding named by `spec`: None or "notes" → the note statistics (transcription with
    ``threads`` threads); "mel-stats" → `mel_statistics`; "module:function" → a user callable.

    A user function is imported from an importable module (on ``sys.path``; ``PYTHONPATH`` can add
    a folder) and must follow `EmbeddingFn`: ``fn(wav: np.ndarray (T,), sample_rate: int) ->
    np.ndarray (n_frames, dim)``. It receives the file's native sample rate and resamples itself.
    This is the hook for learned models (VGGish, CLAP, MERT, ...), whose weights the user provides.

    Returns:
        (name, function); the name is "notes", "mel-stats" or the spec itself.

    Raises:
        UsageError: the spec is malformed, the module cannot be imported, or the attribute is missing
            or not callable.
    """
    if spec is None or spec == DEFAULT_EMBEDDING:
        return DEFAULT_EMBEDDING, note_statistics_embedding(threads)
    if spec == "mel-stats":
        return spec, mel_statistics
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise UsageError(f"embedding {spec!r}: expected 'notes', 'mel-stats' or 'module:function'")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # noqa: BLE001 - any import failure is the user's module's
        raise UsageError(f"embedding {spec!r}: cannot import {module_name!r} "
                         f"({type(error).__name__}: {error})") from None
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise UsageError(f"embedding {spec!r}: {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise UsageError(f"embedding {spec!r}: {attribute!r} is not callable")
    return spec, target


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), with numpy only.

    ||mu1 - mu2||² + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^(1/2)), where Tr((S1 S2)^(1/2)) is computed as
    the sum of the square roots of the eigenvalues (clipped at zero) of the symmetric matrix
    S1^(1/2) S2 S1^(1/2), which has the same eigenvalues as S1 S2; S1^(1/2) comes from
    `np.linalg.eigh`. A ridge ``eps · I`` is added to both covariances so rank-deficient ones
    (fewer frames than dimensions) stay well-conditioned; the result is clipped at 0.

    Args:
        mu1, mu2: means, (dim,).
        sigma1, sigma2: covariances, (dim, dim) (scalars are accepted for dim 1).
        eps: the ridge.

    Returns:
        The squared-distance figure that FAD reports (non-negative float).
    """
    m1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    m2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    s1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    s2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    dim = m1.shape[0]
    if m2.shape != (dim,) or s1.shape != (dim, dim) or s2.shape != (dim, dim):
        raise ValueError(f"shape mismatch: mu {m1.shape} / {m2.shape}, sigma {s1.shape} / {s2.shape}")
    ridge = eps * np.eye(dim)
    s1 = (s1 + s1.T) / 2.0 + ridge
    s2 = (s2 + s2.T) / 2.0 + ridge
    values, vectors = np.linalg.eigh(s1)
    root1 = (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T
    middle = root1 @ s2 @ root1
    middle = (middle + middle.T) / 2.0
    trace_sqrt = float(np.sqrt(np.clip(np.linalg.eigvalsh(middle), 0.0, None)).sum())
    diff = m1 - m2
    distance = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt)
    return max(distance, 0.0)


def gaussian_stats(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (dim,) and covariance (dim, dim) of (n, dim) embeddings (n ≥ 2)."""
    frames = np.asarray(embeddings, dtype=np.float64)
    if frames.ndim != 2 or frames.shape[0] < 2:
        raise InputError(f"need at least 2 embedding frames to fit a Gaussian, got {frames.shape[0]}")
    return frames.mean(axis=0), np.cov(frames, rowvar=False).reshape(frames.shape[1], frames.shape[1])


def _middle(wav: np.ndarray, sample_rate: int, max_seconds: float | None) -> np.ndarray:
    """At most `max_seconds` from the middle (openings are often sparse intros)."""
    if max_seconds is None:
        return wav
    length = max(1, int(max_seconds * sample_rate))
    if wav.shape[-1] <= length:
        return wav
    start = (wav.shape[-1] - length) // 2
    return wav[..., start:start + length]


def embed_files(paths: Sequence[Path], fn: EmbeddingFn, max_seconds: float | None = None,
                on_file: Callable[[Path], None] | None = None) -> list[np.ndarray]:
    """Embed each audio file (mixed to mono, at its native sample rate).

    Args:
        paths: audio files (anything soundfile reads: WAV, FLAC, ...).
        fn: the embedding function.
        max_seconds: embed at most this many seconds from the middle of each file (None: whole files).
        on_file: called with each path once it is embedded (progress).

    Returns:
        One (n_frames, dim) float64 array per file, all with the same dim.

    Raises:
        InputError: a file is missing or unreadable (the message names it).
        UsageError: the embedding returns something other than a finite 2-D array of a fixed width.
    """
    if max_seconds is not None and max_seconds <= 0:
        raise UsageError("max_seconds must be positive")
    result: list[np.ndarray] = []
    dim: int | None = None
    for path in paths:
        wav, rate = load_audio(path)
        mono = np.ascontiguousarray(_middle(to_mono(wav), rate, max_seconds)[0], dtype=np.float32)
        embedding = np.asarray(fn(mono, rate), dtype=np.float64)
        if embedding.ndim != 2:
            raise UsageError(f"{path}: the embedding returned shape {embedding.shape}, expected (n_frames, dim)")
        if dim is not None and embedding.shape[1] != dim:
            raise UsageError(f"{path}: the embedding returned dim {embedding.shape[1]}, other files gave {dim}")
        if not np.all(np.isfinite(embedding)):
            raise UsageError(f"{path}: the embedding returned non-finite values")
        dim = embedding.shape[1]
        result.append(embedding)
        if on_file is not None:
            on_file(path)
    return result


def corpus_split_files(corpus: Path, split: str) -> list[Path]:
    """The audio files of one split of a corpus built by `pyramid dataset build`, sorted by record id.

    Raises:
        UsageError: `split` is not train, valid or test.
        FormatError: the folder holds no valid manifest.
        InputError: the split is empty.
    """
    if split not in SPLITS:
        raise UsageError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    records = sorted((r for r in load_manifest(corpus) if r["split"] == split), key=lambda r: str(r["id"]))
    if not records:
        raise InputError(f"{corpus}: the {split!r} split is empty")
    return [corpus / record["audio"] for record in records]


def find_audio_files(inputs: Sequence[Path]) -> list[Path]:
    """Files as given, and the .wav/.flac files under each folder (recursively, sorted).

    Raises:
        InputError: an input does not exist, or a folder holds no .wav/.flac file.
    """
    files: list[Path] = []
    for item in inputs:
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
            if not found:
                raise InputError(f"{item}: no .wav or .flac file in this folder")
            files.extend(found)
        elif item.exists():
            files.append(item)
        else:
            raise InputError(f"{item}: no such file or folder")
    return files


@dataclass(frozen=True)
class FadResult:
    """A Fréchet distance between two embedded audio sets."""

    distance: float
    n_generated_frames: int
    n_reference_frames: int
    embedding: str
    dim: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fad_from_embeddings(generated: Sequence[np.ndarray], reference: Sequence[np.ndarray],
                        embedding: str) -> FadResult:
    """The Fréchet distance between the Gaussians fitted to two sets of per-file embeddings."""
    if not generated or not reference:
        raise InputError(f"no {'generated' if not generated else 'reference'} audio to compare")
    gen, ref = np.concatenate(list(generated)), np.concatenate(list(reference))
    if gen.shape[1:] != ref.shape[1:]:
        raise UsageError(f"embedding widths differ: generated {gen.shape[1:]}, reference {ref.shape[1:]}")
    try:
        mu_gen, sigma_gen = gaussian_stats(gen)
    except InputError:
        raise InputError(f"the generated audio gives {gen.shape[0]} embedding frame(s); at least 2 are needed "
                         "(longer or more files)") from None
    try:
        mu_ref, sigma_ref = gaussian_stats(ref)
    except InputError:
        raise InputError(f"the reference audio gives {ref.shape[0]} embedding frame(s); at least 2 are needed "
                         "(longer or more files)") from None
    return FadResult(distance=frechet_distance(mu_gen, sigma_gen, mu_ref, sigma_ref),
                     n_generated_frames=int(gen.shape[0]), n_reference_frames=int(ref.shape[0]),
                     embedding=embedding, dim=int(gen.shape[1]))


def fad(generated_paths: Sequence[Path], reference_paths: Sequence[Path], fn: EmbeddingFn,
        name: str | None = None, max_seconds: float | None = None) -> FadResult:
    """Fréchet distance between the embeddings of generated files and of reference files.

    Args:
        generated_paths: generated audio files (embedded whole).
        reference_paths: reference audio files, e.g. `corpus_split_files(corpus, "test")`.
        fn: the embedding function (see `load_embedding`).
        name: the embedding's name in the result [default: the function's name].
        max_seconds: embed at most this many seconds from the middle of each reference file.
    """
    label = name or str(getattr(fn, "__name__", "custom"))
    return fad_from_embeddings(embed_files(generated_paths, fn), embed_files(reference_paths, fn, max_seconds),
                               label)


def reference_self_distance(reference: Sequence[np.ndarray], embedding: str) -> FadResult | None:
    """Yardstick: the distance between the first and second halves of the reference files (in order).

    None when there are fewer than 2 files or a half gives fewer than 2 frames.
    """
    if len(reference) < 2:
        return None
    half = len(reference) // 2
    try:
        return fad_from_embeddings(reference[:half], reference[half:], embedding)
    except InputError:
        return None
