"""The one STFT-magnitude and mel implementation: training losses, metrics, plots and the FAD embedding use it.

Frames are centred (``torch.stft(center=True)``) with a Hann window and, unless given, a hop of a
quarter window. Mel filter banks default to the Slaney scale with area normalisation, librosa's
defaults, which DAC's mel loss (and so DESIGN §7) uses.
"""

from __future__ import annotations

import functools
import warnings

import torch
import torchaudio.functional as AF

# DAC's resolutions (DESIGN §7), shared by the training losses and the reported distances.
MEL_WINDOWS = (32, 64, 128, 256, 512, 1024, 2048)
MEL_BANDS = (5, 10, 20, 40, 80, 160, 320)
STFT_WINDOWS = (2048, 512)
CLAMP_EPS = 1e-5  # floor under magnitudes before log10 (DAC's clamp_eps)


def stft_magnitude(x: torch.Tensor, window_length: int, hop_length: int | None = None) -> torch.Tensor:
    """(N, T) → (N, window_length/2 + 1, frames) STFT magnitude: Hann window, centred frames, hop
    ``hop_length`` (default window/4). Computed in ``x``'s dtype."""
    hop = window_length // 4 if hop_length is None else hop_length
    window = torch.hann_window(window_length, dtype=x.dtype, device=x.device)
    # Reflect padding needs more than half a window of signal; zero-pad very short clips instead.
    pad_mode = "reflect" if x.shape[-1] > window_length // 2 else "constant"
    spec = torch.stft(x, window_length, hop, window=window, center=True, pad_mode=pad_mode, return_complex=True)
    return spec.abs()


@functools.lru_cache(maxsize=64)
def mel_filterbank(window_length: int, n_mels: int, sample_rate: int, mel_scale: str = "slaney") -> torch.Tensor:
    """(F, n_mels) float32 on the CPU, F = window_length/2 + 1, from 0 Hz to Nyquist.

    ``mel_scale="slaney"`` (the default) area-normalises each band, as librosa does; ``"htk"`` gives
    unnormalised HTK bands (torchaudio's ``MelSpectrogram`` defaults). Keyed on plain values only, so
    the cache holds no caller state.
    """
    # Built outside inference mode: the cached tensor may later take part in a training loss,
    # and an inference tensor cannot be saved for backward.
    with warnings.catch_warnings(), torch.inference_mode(False):
        # At 32-sample windows or 320 bands some triangles cover no FFT bin; torchaudio warns. Such
        # a band reads CLAMP_EPS in both signals and adds exactly 0 to the distance, as in DAC.
        warnings.simplefilter("ignore", UserWarning)
        return AF.melscale_fbanks(window_length // 2 + 1, 0.0, sample_rate / 2, n_mels, sample_rate,
                                  norm="slaney" if mel_scale == "slaney" else None, mel_scale=mel_scale)


def mel_magnitude(magnitude: torch.Tensor, n_mels: int, sample_rate: int, mel_scale: str = "slaney") -> torch.Tensor:
    """(..., F, frames) STFT magnitudes (or powers) → (..., frames, n_mels) mel band sums."""
    fbank = mel_filterbank(2 * (magnitude.shape[-2] - 1), n_mels, int(sample_rate), mel_scale)
    return magnitude.transpose(-1, -2) @ fbank.to(magnitude.device, magnitude.dtype)


def log_mel(wav: torch.Tensor, sample_rate: int, n_fft: int = 1024, n_mels: int = 80) -> torch.Tensor:
    """(1, T) → (n_mels, frames) log10 mel magnitudes, floored at ``CLAMP_EPS`` as in the mel distance."""
    magnitude = stft_magnitude(wav.reshape(1, -1).float(), n_fft)[0]  # (F, frames)
    return torch.log10(torch.clamp(mel_magnitude(magnitude, n_mels, sample_rate).T, min=CLAMP_EPS))
