import pytest
import torch

from pyramid_cli.codec.discriminators import (
    BANDS,
    BandSTFTDiscriminator,
    Discriminator,
    DiscriminatorConfig,
    MultiBandSTFTDiscriminator,
    MultiPeriodDiscriminator,
    discriminator_preset,
)
from pyramid_cli.errors import UsageError

TINY = DiscriminatorConfig(periods=(2, 3, 5), period_channels=(4, 8, 8), stft_windows=(256, 128), stft_channels=4)


def audio(length: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return 0.3 * torch.randn(batch, 1, length, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("length", [1, 97, 300, 2048, 4411])
def test_period_discriminator_shapes(length: int) -> None:
    mpd = MultiPeriodDiscriminator((2, 3, 5), (4, 8, 8))
    features = mpd(audio(length))
    assert len(features) == 3
    for period, maps in zip((2, 3, 5), features, strict=True):
        assert len(maps) == 4  # three convs + logits
        rows = -(-length // period)  # padded up to a whole number of periods
        for i, f in enumerate(maps[:-1]):
            rows = rows if i == 2 else (rows - 1) // 3 + 1  # stride 3 in time but the last conv
            assert f.shape == (2, (4, 8, 8)[i], rows, period)
        assert maps[-1].shape == (2, 1, rows, period)


@pytest.mark.parametrize("length", [1, 100, 1000, 4411])
@pytest.mark.parametrize("window", [128, 512])
def test_stft_discriminator_shapes(length: int, window: int) -> None:
    mrd = BandSTFTDiscriminator(window, channels=4)
    maps = mrd(audio(length))
    frames = length // (window // 4) + 1  # centred STFT
    assert len(maps) == 5 * len(BANDS) + 1
    bins = window // 2 + 1
    widths = []
    for lo, hi in BANDS:
        width = int(hi * bins) - int(lo * bins)
        for _ in range(3):  # three convs of stride 2 in frequency
            width = (width - 1) // 2 + 1
        widths.append(width)
    for b, width in enumerate(widths):
        assert maps[5 * b].shape == (2, 4, frames, int(BANDS[b][1] * bins) - int(BANDS[b][0] * bins))
        assert maps[5 * b + 4].shape == (2, 4, frames, width)
    assert maps[-1].shape == (2, 1, frames, sum(widths))


def test_combined_discriminator_order_and_gradients() -> None:
    disc = Discriminator(TINY)
    wav = audio(2000).requires_grad_(True)
    features = disc(wav)
    assert len(features) == 3 + 2  # periods first, then STFT windows
    assert [len(maps) for maps in features] == [4, 4, 4, 26, 26]
    sum(maps[-1].mean() for maps in features).backward()
    assert wav.grad is not None and torch.isfinite(wav.grad).all() and wav.grad.abs().sum() > 0
    assert all(p.grad is not None for p in disc.parameters())


def test_input_level_does_not_matter() -> None:
    # Centred and peak-normalised first (DAC): quiet band-limited targets are judged by their sound.
    disc = Discriminator(TINY)
    wav = audio(1500)
    for a, b in zip(disc(wav), disc(0.1 * wav + 0.05), strict=True):
        torch.testing.assert_close(a[-1], b[-1], rtol=1e-4, atol=1e-5)


def test_weight_norm_and_sizes() -> None:
    disc = Discriminator(DiscriminatorConfig())
    keys = list(disc.state_dict())
    assert keys and all(".parametrizations.weight." in k or k.endswith(".bias") for k in keys)
    small = sum(p.numel() for p in disc.parameters())
    paper = sum(p.numel() for p in Discriminator(discriminator_preset("paper")).parameters())
    assert small < 1_000_000 < 40_000_000 < paper  # DAC's widths: ~42 M parameters


def test_config_round_trip_and_errors() -> None:
    config = DiscriminatorConfig.from_dict({"periods": [2, 3], "bands": [[0.0, 0.5], [0.5, 1.0]]})
    assert config.periods == (2, 3) and config.bands == ((0.0, 0.5), (0.5, 1.0))
    assert DiscriminatorConfig.from_dict(config.to_dict()) == config
    assert discriminator_preset("paper").period_channels == (32, 128, 512, 1024, 1024)
    with pytest.raises(UsageError, match="unknown key.*width"):
        DiscriminatorConfig.from_dict({"width": 3})
    with pytest.raises(UsageError, match="bands"):
        DiscriminatorConfig(bands=((0.5, 0.2),))
    with pytest.raises(UsageError, match="preset"):
        discriminator_preset("huge")


def test_multi_band_stft_discriminator_counts() -> None:
    mrd = MultiBandSTFTDiscriminator((256, 128), channels=4, bands=((0.0, 0.5), (0.5, 1.0)))
    features = mrd(audio(700))
    assert [len(maps) for maps in features] == [11, 11]
