import pytest
import torch

from pyramid_cli.codec.targets import band_limited_targets


def noise(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


def power_spectrum(x: torch.Tensor) -> torch.Tensor:
    window = torch.hann_window(x.shape[-1], dtype=x.dtype)
    return torch.fft.rfft(x * window).abs().pow(2)


@pytest.mark.parametrize("n_levels", [1, 2, 3])
def test_shapes_and_finest_level_is_the_input(n_levels):
    wav = noise(2, 1, 3001)
    targets = band_limited_targets(wav, n_levels)
    assert len(targets) == n_levels
    assert all(t.shape == wav.shape for t in targets)
    assert targets[-1] is wav


def test_lower_levels_have_no_energy_above_their_cutoff():
    n = 2**14
    wav = noise(n).double()
    targets = band_limited_targets(wav, 3)
    total = power_spectrum(wav)
    bins = torch.arange(total.shape[-1]) / (total.shape[-1] - 1)  # 0 … 1 = Nyquist
    for level, fraction in [(0, 1 / 4), (1, 1 / 2)]:
        spectrum = power_spectrum(targets[level])
        above = spectrum[bins > fraction * 1.02].sum() / total[bins > fraction * 1.02].sum()
        assert above < 1e-5, (level, float(above))
        # … and the band they keep is kept (julius rolls off from 0.945 of the cut-off).
        kept = spectrum[bins < fraction * 0.9].sum() / total[bins < fraction * 0.9].sum()
        assert 0.95 < kept < 1.05, (level, float(kept))


def test_bad_level_count():
    with pytest.raises(ValueError):
        band_limited_targets(noise(10), 0)
