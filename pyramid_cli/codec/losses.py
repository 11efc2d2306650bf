"""Reconstruction losses (DESIGN §7) and the GAN losses, shaped after DAC's loss.py
(descript-audio-codec, ``MelSpectrogramLoss``, ``MultiScaleSTFTLoss``, ``L1Loss``, ``GANLoss``).

Differences from DAC, on purpose: magnitudes (not powers) go into log10, and the scales are
*averaged* rather than summed (the training weights were tuned on that scale). The reported
distances (``pyramid_cli.metrics.distances``, DESIGN §7) sum them, as DAC and the paper do: 7x and 2x these. Both
compute their spectra with ``pyramid_cli.audio.spectra``.
Inputs are (B, 1, T) or (B, T) audio; every loss returns a scalar.

The GAN losses take discriminator outputs (``pyramid_cli.codec.discriminators.Features``: per
sub-discriminator its feature maps, logits last) and, as DAC's, *sum* over sub-discriminators,
so the DAC weights (adversarial 1, feature matching 2) mean what they mean there.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pyramid_cli.audio.spectra import MEL_BANDS, MEL_WINDOWS, STFT_WINDOWS, mel_magnitude, stft_magnitude
from pyramid_cli.codec.discriminators import Features


def _log_l1(x: torch.Tensor, y: torch.Tensor, clamp_eps: float) -> torch.Tensor:
    return (x.clamp(min=clamp_eps).log10() - y.clamp(min=clamp_eps).log10()).abs().mean()


def _items(x: torch.Tensor) -> torch.Tensor:
    """(B, [1,] T) → (B', T)."""
    return x.reshape(-1, x.shape[-1])


class MultiScaleMelLoss(nn.Module):
    """Mel distance: mean over resolutions of L1(log10(max(mel, eps))) (+ optional mel-magnitude L1).

    Defaults are DESIGN §7 (DAC's mel loss): windows 32…2048, hop window/4, 5…320 Slaney mel bands
    (``pyramid_cli.audio.spectra``, shared with the reported distances).
    """

    def __init__(
        self,
        sample_rate: int,
        window_lengths: Sequence[int] = MEL_WINDOWS,
        n_mels: Sequence[int] = MEL_BANDS,
        clamp_eps: float = 1e-5,
        log_weight: float = 1.0,
        mag_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if len(window_lengths) != len(n_mels):
            raise ValueError("window_lengths and n_mels need one entry per resolution")
        self.clamp_eps, self.log_weight, self.mag_weight = clamp_eps, log_weight, mag_weight
        self.sample_rate = sample_rate
        self.window_lengths, self.n_mels = tuple(window_lengths), tuple(n_mels)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Distance between estimate ``x`` and reference ``y`` (same shape); 0 when equal."""
        total = x.new_zeros(())
        for window, bands in zip(self.window_lengths, self.n_mels, strict=True):
            # Reshaped per resolution, as before spectra.py: the gradients then sum in the same order.
            mel_x = mel_magnitude(stft_magnitude(_items(x), window), bands, self.sample_rate)  # (B, frames, n_mels)
            mel_y = mel_magnitude(stft_magnitude(_items(y), window), bands, self.sample_rate)
            total = total + self.log_weight * _log_l1(mel_x, mel_y, self.clamp_eps)
            if self.mag_weight:
                total = total + self.mag_weight * (mel_x - mel_y).abs().mean()
        return total / len(self.window_lengths)


class MultiScaleSTFTLoss(nn.Module):
    """STFT distance: mean over windows of L1(log10 magnitude) + L1(magnitude) (DESIGN §7, DAC)."""

    def __init__(
        self,
        window_lengths: Sequence[int] = STFT_WINDOWS,
        clamp_eps: float = 1e-5,
        log_weight: float = 1.0,
        mag_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.clamp_eps, self.log_weight, self.mag_weight = clamp_eps, log_weight, mag_weight
        self.window_lengths = tuple(window_lengths)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Distance between estimate ``x`` and reference ``y`` (same shape); 0 when equal."""
        total = x.new_zeros(())
        for window in self.window_lengths:
            mag_x, mag_y = stft_magnitude(_items(x), window), stft_magnitude(_items(y), window)
            total = total + self.log_weight * _log_l1(mag_x, mag_y, self.clamp_eps)
            total = total + self.mag_weight * (mag_x - mag_y).abs().mean()
        return total / len(self.window_lengths)


def waveform_l1(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean absolute sample difference (DAC's ``L1Loss`` on waveforms)."""
    return (x - y).abs().mean()


# ---- GAN losses (least squares, Mao et al. 2017, as HiFi-GAN and DAC) ------------------------------


def discriminator_loss(real: Features, fake: Features) -> torch.Tensor:
    """LSGAN discriminator loss: sum over sub-discriminators of mean((1 - D(real))²) + mean(D(fake)²).

    0 when every real logit is 1 and every fake logit 0. Pass features of detached fakes.
    """
    total = real[0][-1].new_zeros((), dtype=torch.float32)
    for real_maps, fake_maps in zip(real, fake, strict=True):
        total = total + (1 - real_maps[-1].float()).pow(2).mean() + fake_maps[-1].float().pow(2).mean()
    return total


def generator_adversarial_loss(fake: Features) -> torch.Tensor:
    """LSGAN generator loss: sum over sub-discriminators of mean((1 - D(fake))²); 0 when D says "real"."""
    total = fake[0][-1].new_zeros((), dtype=torch.float32)
    for maps in fake:
        total = total + (1 - maps[-1].float()).pow(2).mean()
    return total


def feature_matching_loss(real: Features, fake: Features) -> torch.Tensor:
    """L1 between the discriminator's activations on real and fake audio (MelGAN, HiFi-GAN, DAC).

    Mean absolute difference per feature map, summed over every layer except the logits and over
    sub-discriminators; real features are detached (this loss trains the generator only).
    """
    total = fake[0][-1].new_zeros((), dtype=torch.float32)
    for real_maps, fake_maps in zip(real, fake, strict=True):
        for r, f in zip(real_maps[:-1], fake_maps[:-1], strict=True):
            total = total + (f.float() - r.detach().float()).abs().mean()
    return total
