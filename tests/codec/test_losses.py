import pytest
import torch

from pyramid_cli.codec.losses import (
    MultiScaleMelLoss,
    MultiScaleSTFTLoss,
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
    waveform_l1,
)


def clip(seed: int, length: int = 4096) -> torch.Tensor:
    return 0.3 * torch.randn(2, 1, length, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def mel() -> MultiScaleMelLoss:
    return MultiScaleMelLoss(22050)


def test_mel_loss_zero_for_identical_and_positive_otherwise(mel):
    x, y = clip(0), clip(1)
    assert float(mel(x, x)) == 0.0
    assert float(mel(x, y)) > 0.1
    assert float(mel(x, 0.5 * x)) == pytest.approx(torch.log10(torch.tensor(2.0)).item(), rel=0.05)


def test_mel_loss_accepts_flat_batches(mel):
    x, y = clip(0), clip(1)
    torch.testing.assert_close(mel(x.squeeze(1), y.squeeze(1)), mel(x, y))


def test_mel_loss_has_seven_resolutions(mel):
    assert mel.window_lengths == (32, 64, 128, 256, 512, 1024, 2048)
    assert mel.n_mels == (5, 10, 20, 40, 80, 160, 320)
    assert not any(name.startswith("fbank") for name in mel.state_dict())  # derived, not saved


def test_stft_and_waveform_losses():
    stft = MultiScaleSTFTLoss()
    x, y = clip(0), clip(1)
    assert float(stft(x, x)) == 0.0 and float(stft(x, y)) > 0.1
    assert float(waveform_l1(x, x)) == 0.0
    assert float(waveform_l1(x, x + 0.25)) == pytest.approx(0.25)


def test_gradients_are_finite_on_silence(mel):
    x = torch.zeros(1, 1, 2048, requires_grad=True)
    loss = mel(x, clip(2, 2048)[:1]) + MultiScaleSTFTLoss()(x, clip(2, 2048)[:1])
    loss.backward()
    assert torch.isfinite(x.grad).all()


def test_short_clips_work(mel):
    x, y = clip(0, 300), clip(1, 300)  # shorter than half the largest window
    assert torch.isfinite(mel(x, y)) and float(mel(x, y)) > 0


# ---- GAN losses ------------------------------------------------------------------------------------


def features(*logits: float, layer: float = 0.0) -> list[list[torch.Tensor]]:
    """One sub-discriminator per logit value: a feature map full of ``layer``, then logits."""
    return [[torch.full((2, 3, 5), layer), torch.full((2, 1, 4), value)] for value in logits]


def test_lsgan_losses_on_known_scores():
    real, fake = features(1.0, 1.0), features(0.0, 0.0)
    assert float(discriminator_loss(real, fake)) == 0.0  # a perfect discriminator
    assert float(generator_adversarial_loss(real)) == 0.0  # fakes scored as real
    # Swapped scores: each of the two sub-discriminators adds 1 + 1 (sums, as DAC).
    assert float(discriminator_loss(fake, real)) == pytest.approx(4.0)
    assert float(generator_adversarial_loss(fake)) == pytest.approx(2.0)
    assert float(discriminator_loss(features(0.5), features(0.5))) == pytest.approx(0.5)


def test_feature_matching_loss():
    real = features(0.3, 0.7, layer=0.25)
    assert float(feature_matching_loss(real, real)) == 0.0
    # Logits are left out; each sub-discriminator's one feature map is off by 0.5.
    assert float(feature_matching_loss(real, features(9.0, -9.0, layer=0.75))) == pytest.approx(1.0)


def test_gan_loss_gradients_go_where_they_should():
    real = [[torch.ones(2, 3, requires_grad=True), torch.zeros(2, 1, requires_grad=True)]]
    fake = [[torch.zeros(2, 3, requires_grad=True), torch.zeros(2, 1, requires_grad=True)]]
    (feature_matching_loss(real, fake) + generator_adversarial_loss(fake)).backward()
    assert real[0][0].grad is None  # real features are targets, not trained through this loss
    assert fake[0][0].grad is not None and fake[0][1].grad is not None
