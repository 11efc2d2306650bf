"""Evaluation metrics: exact zeros, known values, monotonicity, invariances and shapes."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from pyramid_cli.metrics.distances import (
    mel_distance,
    real_time_factor,
    si_sdr,
    stft_distance,
    tokens_per_second,
    waveform_distance,
)

RATE = 22050
T = 8192  # 0.37 s: long enough for every window, short enough for a fast mel


def noise(shape: tuple[int, ...], seed: int, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def sine(freq: float, n: int = T) -> torch.Tensor:
    return 0.5 * torch.sin(2 * math.pi * freq * torch.arange(n) / RATE).reshape(1, 1, n)


def with_snr(x: torch.Tensor, snr_db: float, seed: int) -> torch.Tensor:
    """x plus white noise at exactly `snr_db` (energies measured per item, after removing means)."""
    n = noise(tuple(x.shape), seed)
    n = n - n.mean(dim=-1, keepdim=True)
    energy_x = (x - x.mean(dim=-1, keepdim=True)).pow(2).sum(dim=-1, keepdim=True)
    return x + n * torch.sqrt(energy_x / n.pow(2).sum(dim=-1, keepdim=True) / 10 ** (snr_db / 10))


DISTANCES: dict[str, Callable[..., torch.Tensor]] = {
    "mel": lambda x, y, **kw: mel_distance(x, y, RATE, **kw),
    "stft": stft_distance,
    "waveform": waveform_distance,
}


@pytest.mark.parametrize("name", DISTANCES)
@pytest.mark.parametrize("shape", [(2, 1, T), (1, T)])
def test_identical_signals_are_at_distance_zero(name: str, shape: tuple[int, ...]) -> None:
    x = noise(shape, 0, 0.3)
    assert DISTANCES[name](x, x.clone()).item() == 0.0
    assert si_sdr(x, x.clone()).item() == pytest.approx(100.0)


@pytest.mark.parametrize("name", DISTANCES)
def test_distances_grow_with_the_noise_level(name: str) -> None:
    x = sine(440.0) + noise((1, 1, T), 1, 0.05)
    values = [DISTANCES[name](x + noise((1, 1, T), 2, level), x).item() for level in (1e-3, 1e-2, 1e-1)]
    assert 0 < values[0] < values[1] < values[2]
    sdrs = [si_sdr(x + noise((1, 1, T), 2, level), x).item() for level in (1e-3, 1e-2, 1e-1)]
    assert sdrs[0] > sdrs[1] > sdrs[2]


@pytest.mark.parametrize("name", DISTANCES)
def test_batch_shapes_and_reductions(name: str) -> None:
    x, y = noise((2, 1, T), 3, 0.3), noise((2, 1, T), 4, 0.3)
    per_item = DISTANCES[name](x, y, reduction="none")
    assert per_item.shape == (2,)
    assert DISTANCES[name](x, y).item() == pytest.approx(per_item.mean().item(), rel=1e-5)
    # (1, T) and (1, 1, T) are the same single item.
    assert DISTANCES[name](x[0], y[0]).item() == pytest.approx(per_item[0].item(), rel=1e-5)
    assert si_sdr(x, y, reduction="none").shape == (2,)


def test_mel_distance_is_symmetric_positive_and_knows_a_gain() -> None:
    a, b = sine(440.0), sine(660.0)
    assert mel_distance(a, b, RATE).item() > 0.2
    assert mel_distance(a, b, RATE).item() == pytest.approx(mel_distance(b, a, RATE).item(), rel=1e-6)
    # A gain of 2 shifts every log10 mel value by log10(2) (no band is empty or below the floor here),
    # at each of the 7 resolutions, which the paper's scale sums.
    x = noise((1, 1, T), 5, 0.5)
    assert mel_distance(2 * x, x, RATE).item() == pytest.approx(7 * math.log10(2), abs=1e-4)


def test_si_sdr_is_scale_invariant() -> None:
    x = noise((1, 1, T), 6, 0.2)
    assert si_sdr(x, 0.5 * x).item() == pytest.approx(si_sdr(x, x).item())
    assert si_sdr(0.5 * x, x).item() == pytest.approx(si_sdr(x, x).item())
    y = with_snr(x, 10.0, 7)
    for gain in (0.1, 3.0):
        assert si_sdr(gain * y, x).item() == pytest.approx(si_sdr(y, x).item(), abs=1e-4)
        assert si_sdr(y, gain * x).item() == pytest.approx(si_sdr(y, x).item(), abs=1e-4)


@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 10.0, 30.0])
def test_si_sdr_of_white_noise_at_a_known_snr(snr_db: float) -> None:
    x = sine(440.0) + noise((1, 1, T), 8, 0.1)
    assert si_sdr(with_snr(x, snr_db, 9), x).item() == pytest.approx(snr_db, abs=0.5)


def test_si_sdr_is_finite_on_silence() -> None:
    zero = torch.zeros(1, 1, 100)
    assert si_sdr(zero, zero).item() == 0.0
    assert si_sdr(noise((1, 1, 100), 10), zero).item() == -100.0
    assert torch.isfinite(si_sdr(zero, noise((1, 1, 100), 10)))


def test_metrics_are_deterministic_differentiable_and_handle_short_clips() -> None:
    x = noise((2, 1, 300), 11, 0.3).requires_grad_()  # shorter than half the largest window
    y = noise((2, 1, 300), 12, 0.3)
    first = mel_distance(x, y, RATE) + stft_distance(x, y) + waveform_distance(x, y) - si_sdr(x, y)
    first.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    second = mel_distance(x, y, RATE) + stft_distance(x, y) + waveform_distance(x, y) - si_sdr(x, y)
    assert first.item() == second.item()
    assert mel_distance(x.double(), y.double(), RATE).dtype == torch.float64


def test_bad_arguments_raise_value_error() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        waveform_distance(torch.zeros(1, 10), torch.zeros(1, 11))
    with pytest.raises(ValueError, match="reduction"):
        waveform_distance(torch.zeros(1, 10), torch.zeros(1, 10), reduction="sum")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="T > 0"):
        si_sdr(torch.zeros(1, 0), torch.zeros(1, 0))


def test_matches_the_training_losses() -> None:
    """metrics and codec.losses implement one definition (DESIGN §7): the metrics sum the resolutions
    (the paper's scale), the training losses average them (their weights were tuned on that scale)."""
    from pyramid_cli.codec import losses

    x, y = noise((2, 1, T), 13, 0.3), noise((2, 1, T), 14, 0.3)
    mel_loss = losses.MultiScaleMelLoss(RATE)(x, y).item()
    assert mel_distance(x, y, RATE).item() == pytest.approx(7 * mel_loss, rel=1e-5)
    assert stft_distance(x, y).item() == pytest.approx(2 * losses.MultiScaleSTFTLoss()(x, y).item(), rel=1e-5)


def test_tokens_per_second_and_real_time_factor() -> None:
    rates = [RATE / 2048, RATE / 1024, RATE / 512]  # Pyramid-22k-p111
    assert [tokens_per_second(rates, 1, k) for k in (1, 2, 3)] == pytest.approx([10.7666, 32.2998, 75.3662],
                                                                                abs=1e-4)
    assert tokens_per_second(rates, [5, 5, 5]) == pytest.approx(376.831, abs=1e-3)  # p555
    assert tokens_per_second([RATE / 512], 2) == pytest.approx(86.1328, abs=1e-4)  # DAC-22k-n2
    with pytest.raises(ValueError):
        tokens_per_second(rates, [1, 1], 2)
    with pytest.raises(ValueError):
        tokens_per_second(rates, 1, 4)
    assert real_time_factor(180.0, 9.0) == 20.0
    assert real_time_factor(1.0, 0.0) == math.inf
    with pytest.raises(ValueError):
        real_time_factor(-1.0, 1.0)
