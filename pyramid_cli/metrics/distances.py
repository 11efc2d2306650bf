"""Evaluation metrics (DESIGN §7): mel, STFT and waveform distances, SI-SDR, token and speed rates.

Pure, deterministic functions. Audio is a tensor shaped (B, 1, T), (B, C, T), (1, T) or (T,);
every leading index is one item, and `reduction="mean"` averages the items into a scalar
tensor while `reduction="none"` returns one value per item, shaped (N,) with N the product of
the leading dimensions. Distances take (estimate, reference) and stay differentiable.

The distances follow DAC's loss definitions (descript-audio-codec `dac/nn/loss.py`) with the
settings DESIGN §7 fixes: magnitudes, not powers, go into log10 (pow 1), mel magnitudes are not
compared linearly (mag_weight 0), and the resolutions are **summed**, as DAC's `forward` does, so
the numbers are on the scale of the paper's Table 1 (p111: mel 0.953, STFT 1.247). (Until
2026-11-30 they were averaged, 7x and 2x smaller; figures from before then are not comparable.)
`pyramid_cli.codec.losses` builds the same quantities as training losses (averaged there: the
training weights were tuned on that scale).

A mel distance alone cannot tell a static buzz with the right spectral envelope from music, so
`chroma_similarity` (dependency-free) and note onset F1 (`pyramid_cli.metrics.transcribe`) measure pitch.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Literal

import torch

from pyramid_cli.audio.spectra import CLAMP_EPS, MEL_BANDS, MEL_WINDOWS, STFT_WINDOWS, mel_magnitude, stft_magnitude

Reduction = Literal["mean", "none"]


def _items(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., T) pair → (N, T) pair in float32 (float64 kept), after checking the shapes agree."""
    if x.shape != y.shape:
        raise ValueError(f"estimate and reference shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    if x.ndim == 0 or x.shape[-1] == 0:
        raise ValueError(f"expected audio shaped (..., T) with T > 0, got {tuple(x.shape)}")
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32  # STFT lacks fp16 on CPU
    return x.reshape(-1, x.shape[-1]).to(dtype), y.reshape(-1, y.shape[-1]).to(dtype)


def _reduce(per_item: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    if reduction == "mean":
        return per_item.mean()
    if reduction == "none":
        return per_item
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def _log_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, ...) pair → (N,) mean |log10(max(a, eps)) - log10(max(b, eps))|."""
    diff = a.clamp(min=CLAMP_EPS).log10() - b.clamp(min=CLAMP_EPS).log10()
    return diff.abs().flatten(1).mean(dim=1)


def mel_distance(estimate: torch.Tensor, reference: torch.Tensor, sample_rate: int,
                 reduction: Reduction = "mean") -> torch.Tensor:
    """Multi-scale mel distance (DESIGN §7; DAC MelSpectrogramLoss, log_weight 1, mag_weight 0, pow 1).

    Windows 32…2048 (hop window/4) with 5…320 Slaney mel bands; the L1 of log10(max(mel, 1e-5))
    per resolution, summed over the 7 resolutions (the paper's scale).

    Args:
        estimate, reference: audio (..., T), same shape.
        sample_rate: in Hz; places the mel bands.
        reduction: "mean" → scalar, "none" → (N,) one value per item.
    """
    x, y = _items(estimate, reference)
    total = x.new_zeros(x.shape[0])
    for window_length, n_mels in zip(MEL_WINDOWS, MEL_BANDS, strict=True):
        mel_x = mel_magnitude(stft_magnitude(x, window_length), n_mels, sample_rate)  # (N, frames, n_mels)
        mel_y = mel_magnitude(stft_magnitude(y, window_length), n_mels, sample_rate)
        total = total + _log_l1(mel_x, mel_y)
    return _reduce(total, reduction)


def stft_distance(estimate: torch.Tensor, reference: torch.Tensor,
                  reduction: Reduction = "mean") -> torch.Tensor:
    """Multi-scale STFT distance (DESIGN §7; DAC MultiScaleSTFTLoss with pow 1, scales summed).

    At windows 2048 and 512 (hop window/4): L1 of log10(max(|STFT|, 1e-5)) plus L1 of |STFT|,
    summed over the two windows. Args as `mel_distance`.
    """
    x, y = _items(estimate, reference)
    total = x.new_zeros(x.shape[0])
    for window_length in STFT_WINDOWS:
        mag_x, mag_y = stft_magnitude(x, window_length), stft_magnitude(y, window_length)
        total = total + _log_l1(mag_x, mag_y) + (mag_x - mag_y).abs().flatten(1).mean(dim=1)
    return _reduce(total, reduction)


CHROMA_WINDOW = 4096  # 5.4 Hz bins at 22,050 Hz: neighbouring semitones apart from about 90 Hz up
CHROMA_FMIN, CHROMA_FMAX = 65.0, 4200.0  # C2 to about C8: fundamentals and the partials that name them


@functools.lru_cache(maxsize=8)
def _chroma_map(window_length: int, sample_rate: int) -> torch.Tensor:
    """(12, F) 0/1 matrix: which pitch class each STFT bin between CHROMA_FMIN and CHROMA_FMAX falls in."""
    freqs = torch.arange(window_length // 2 + 1, dtype=torch.float64) * sample_rate / window_length
    mapping = torch.zeros(12, freqs.numel())
    inside = (freqs >= CHROMA_FMIN) & (freqs <= CHROMA_FMAX)
    midi = 69 + 12 * torch.log2(freqs[inside] / 440.0)
    mapping[midi.round().long() % 12, inside.nonzero().squeeze(1)] = 1.0
    return mapping


def chroma(audio: torch.Tensor, sample_rate: int, window_length: int = CHROMA_WINDOW) -> torch.Tensor:
    """(..., T) audio → (N, 12, frames) pitch-class energy (STFT power summed per pitch class).

    Frames are window/4 apart (46 ms at 22,050 Hz for the default window).
    """
    x = audio.reshape(-1, audio.shape[-1]).to(torch.float64)
    power = stft_magnitude(x, window_length) ** 2  # (N, F, frames)
    return _chroma_map(window_length, int(sample_rate)).to(x) @ power


def chroma_similarity(estimate: torch.Tensor, reference: torch.Tensor, sample_rate: int,
                      reduction: Reduction = "mean", silence_db: float = -50.0) -> torch.Tensor:
    """Frame-by-frame cosine similarity of the pitch-class profiles, in [0, 1] (1: same pitches).

    The phase-insensitive check that the pitches of the reference are present at the same times:
    a buzz whose partials sit at multiples of a frame rate, silence, or the same music a beat
    late all score low; a low-passed copy scores high. Frames where the reference is more than
    ``silence_db`` below its loudest frame are skipped; a silent estimate scores 0 there.
    Args as `mel_distance`.
    """
    x, y = _items(estimate, reference)
    cx, cy = chroma(x, sample_rate), chroma(y, sample_rate)  # (N, 12, frames)
    energy = cy.sum(dim=1)  # (N, frames)
    loud = energy > energy.amax(dim=1, keepdim=True) * 10 ** (silence_db / 10)
    cosine = (cx * cy).sum(dim=1) / (cx.norm(dim=1) * cy.norm(dim=1)).clamp(min=1e-30)
    per_item = (cosine * loud).sum(dim=1) / loud.sum(dim=1).clamp(min=1)
    return _reduce(per_item.to(x.dtype if x.dtype == torch.float64 else torch.float32), reduction)


def waveform_distance(estimate: torch.Tensor, reference: torch.Tensor,
                      reduction: Reduction = "mean") -> torch.Tensor:
    """Mean absolute sample difference. Args as `mel_distance`."""
    x, y = _items(estimate, reference)
    return _reduce((x - y).abs().mean(dim=1), reduction)


def si_sdr(estimate: torch.Tensor, reference: torch.Tensor, reduction: Reduction = "mean",
           max_db: float = 100.0) -> torch.Tensor:
    """Scale-invariant signal-to-distortion ratio in dB (Le Roux et al., "SDR – half-baked or well
    done?", ICASSP 2019), after removing each item's mean.

    The error energy is floored at 10**(-max_db/10) of the target energy, so identical signals
    give `max_db` whatever their scale; silent inputs give a finite value (0 dB when both are
    silent, -max_db for a silent reference) instead of NaN; results lie in [-max_db, max_db].
    Computed in float64, so float32 rounding does not cap good estimates.

    Args:
        estimate, reference: audio (..., T), same shape.
        reduction: "mean" → scalar, "none" → (N,).
        max_db: the ceiling for a perfect estimate (and, negated, the floor).
    """
    x, y = _items(estimate, reference)
    out_dtype = x.dtype
    x, y = x.to(torch.float64), y.to(torch.float64)
    x = x - x.mean(dim=1, keepdim=True)
    y = y - y.mean(dim=1, keepdim=True)
    tiny = torch.finfo(torch.float64).tiny
    scale = (x * y).sum(dim=1, keepdim=True) / ((y * y).sum(dim=1, keepdim=True) + tiny)
    target = scale * y  # the part of the estimate explained by the reference
    target_energy = (target * target).sum(dim=1)
    error_energy = ((x - target) ** 2).sum(dim=1)
    floor = 10 ** (-max_db / 10) * target_energy
    ratio = (target_energy + tiny) / (error_energy + floor + tiny)
    return _reduce((10 * torch.log10(ratio)).clamp(-max_db, max_db), reduction).to(out_dtype)


def tokens_per_second(frame_rates: Sequence[float], n_codebooks: Sequence[int] | int,
                      levels: int | None = None) -> float:
    """Tokens per second of audio when decoding the first `levels` levels (all when None).

    Example: p111 at 22,050 Hz, frame rates (10.77, 21.53, 43.07) and 1 codebook each, gives
    10.77 / 32.30 / 75.37 for 1 / 2 / 3 levels (the paper's "10 / 30 / 70 TPS").
    """
    counts = [n_codebooks] * len(frame_rates) if isinstance(n_codebooks, int) else list(n_codebooks)
    if len(counts) != len(frame_rates):
        raise ValueError(f"{len(frame_rates)} frame rates but {len(counts)} codebook counts")
    levels = len(frame_rates) if levels is None else levels
    if not 1 <= levels <= len(frame_rates):
        raise ValueError(f"levels must be in [1, {len(frame_rates)}], got {levels}")
    return float(sum(rate * n for rate, n in zip(frame_rates[:levels], counts[:levels], strict=True)))


def real_time_factor(audio_seconds: float, wall_seconds: float) -> float:
    """Seconds of audio processed per second of wall time (> 1 is faster than real time)."""
    if audio_seconds < 0 or wall_seconds < 0:
        raise ValueError("durations must be non-negative")
    if wall_seconds == 0:
        return math.inf if audio_seconds > 0 else 0.0
    return audio_seconds / wall_seconds
