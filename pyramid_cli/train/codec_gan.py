"""The optional GAN side of codec training (``CodecTrainConfig.gan``), as DAC trains its codec:
a discriminator (``pyramid_cli.codec.discriminators``) with its own AdamW optimiser and the
generator's LR schedule, a discriminator step on detached reconstructions before every generator
step, and the least-squares adversarial + feature-matching losses for the generator.

Hierarchical training (Eq. 3) pairs every decoded level Y[i] with its band-limited target: the
discriminator sees targets as real and reconstructions as fake, level by level in one batch, and
its losses are summed over the decoded levels like the mel terms.

The discriminator is training state only: checkpoints keep it (weights and optimiser, under
``discriminator.*`` keys of training.safetensors, so that a checkpoint folder stays a codec model
folder) and exports never hold it.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from pyramid_cli.codec.discriminators import Discriminator, Features
from pyramid_cli.codec.losses import discriminator_loss, feature_matching_loss, generator_adversarial_loss
from pyramid_cli.errors import FormatError, UsageError
from pyramid_cli.train.checkpoint import LoadedState, load_optimizer_state, optimizer_state
from pyramid_cli.train.common import DistInfo, check_replicas_in_sync, learning_rate
from pyramid_cli.train.config import CodecTrainConfig

PREFIX = "discriminator."  # training.safetensors keys: discriminator.model.<name>, discriminator.optimizer.<...>


def autocast(cfg: CodecTrainConfig, device: torch.device) -> AbstractContextManager[Any]:
    """bf16 autocast on CUDA when ``cfg.bf16`` (losses are computed in float32 regardless)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16 and device.type == "cuda")


def _split(features: Features, n_first: int) -> tuple[Features, Features]:
    """Features of a batch [first; second] → (features of first, features of second)."""
    return ([[f[:n_first] for f in maps] for maps in features],
            [[f[n_first:] for f in maps] for maps in features])


class Adversary:
    """The discriminator, its optimiser and DDP wrapper, its step and the generator's GAN losses."""

    def __init__(self, cfg: CodecTrainConfig, info: DistInfo) -> None:
        """Build a fresh discriminator on ``info.device`` (initialised from the global torch RNG)."""
        self.cfg, self.info = cfg, info
        self.config = cfg.discriminator_config()
        self.discriminator = Discriminator(self.config).to(info.device).train()
        self.optimizer = torch.optim.AdamW(self.discriminator.parameters(), lr=cfg.lr, betas=cfg.betas,
                                           weight_decay=cfg.weight_decay)
        self.ddp: torch.nn.Module = self.discriminator

    def wrap_ddp(self) -> None:
        """Under torchrun, wrap in DDP (after ``load``: DDP broadcasts rank 0's weights at wrap time)."""
        if self.info.distributed:
            device_ids = [self.info.device.index] if self.info.device.type == "cuda" else None
            # Buffers are constant STFT windows: nothing to broadcast.
            self.ddp = DistributedDataParallel(self.discriminator, device_ids=device_ids, broadcast_buffers=False)

    def active(self, step: int) -> bool:
        """Whether optimisation step ``step`` (0-based) trains adversarially."""
        return step >= self.cfg.gan_start_step

    def discriminator_step(self, targets: dict[int, torch.Tensor], estimates: dict[int, torch.Tensor],
                           step: int) -> dict[str, torch.Tensor]:
        """One discriminator update on the decoded levels: targets real, detached reconstructions fake.

        Its LR follows the generator's schedule, counted from ``gan_start_step`` (so it warms up
        when it joins). Returns ``d_loss`` and ``grad_norm_d`` for the log.
        """
        cfg = self.cfg
        start = cfg.gan_start_step
        lr = learning_rate(step - start, cfg.lr, cfg.warmup_steps, cfg.schedule, max(1, cfg.steps - start),
                           cfg.lr_decay, cfg.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        real = torch.cat([targets[i] for i in targets])  # (L·B, 1, T), levels stacked
        fake = torch.cat([estimates[i].detach().float() for i in targets])  # bf16 under autocast
        with autocast(cfg, self.info.device):
            features = self.ddp(torch.cat([fake, real]))  # one pass: one DDP forward per backward
        fake_features, real_features = _split(features, fake.shape[0])
        # The loss of the stacked batch is the mean over levels; Eq. 3 sums over them.
        loss = len(targets) * discriminator_loss(real_features, fake_features)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.discriminator.parameters(), cfg.disc_grad_clip or float("inf"))
        self.optimizer.step()
        return {"d_loss": loss.detach(), "grad_norm_d": grad_norm}

    def generator_losses(self, targets: dict[int, torch.Tensor],
                         estimates: dict[int, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``adv`` (LSGAN) and ``feat`` (feature matching) of the reconstructions, summed over levels.

        The bare discriminator runs with its parameters frozen: the gradient reaches the
        generator only, no discriminator weight gradient is computed, and DDP's hooks on the
        discriminator stay quiet (this is not a DDP forward).
        """
        real = torch.cat([targets[i] for i in targets])
        fake = torch.cat([estimates[i] for i in targets])
        self.discriminator.requires_grad_(False)
        try:
            with autocast(self.cfg, self.info.device):
                with torch.no_grad():
                    real_features = self.discriminator(real)
                fake_features = self.discriminator(fake)
        finally:
            self.discriminator.requires_grad_(True)
        n = len(targets)
        return {"adv": n * generator_adversarial_loss(fake_features),
                "feat": n * feature_matching_loss(real_features, fake_features)}

    # ---- checkpoints --------------------------------------------------------------------------------

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(tensors for training.safetensors, JSON for training.json) of the discriminator and optimiser."""
        check_replicas_in_sync(self.discriminator, self.info)
        tensors = {f"{PREFIX}model.{k}": v.detach().to("cpu").contiguous()
                   for k, v in self.discriminator.state_dict().items()}
        opt_tensors, opt_meta = optimizer_state(self.discriminator, self.optimizer)
        tensors.update({PREFIX + k: v for k, v in opt_tensors.items()})
        return tensors, {"config": self.config.to_dict(), "optimizer": opt_meta}

    def load(self, loaded: LoadedState) -> bool:
        """Restore what ``state`` saved; False (discriminator left fresh) when the checkpoint has none.

        A checkpoint of a run without GAN has none: the discriminator then starts fresh, which is
        how GAN training is added to a run trained on reconstruction losses first.
        """
        meta = loaded.state.get("discriminator")
        if meta is None:
            return False
        if meta.get("config") != self.config.to_dict():
            raise UsageError(f"{loaded.path} holds a discriminator with other settings ({meta.get('config')}); "
                             "keep the run's discriminator setting or start a new run folder")
        model_prefix = f"{PREFIX}model."
        weights = {k[len(model_prefix):]: v for k, v in loaded.tensors.items() if k.startswith(model_prefix)}
        try:
            self.discriminator.load_state_dict(weights, strict=True)
        except RuntimeError as exc:
            raise FormatError(f"{loaded.path}: discriminator weights do not fit ({exc})") from exc
        optimizer_tensors = {k[len(PREFIX):]: v for k, v in loaded.tensors.items()
                             if k.startswith(f"{PREFIX}optimizer.")}
        load_optimizer_state(self.discriminator, self.optimizer, optimizer_tensors, meta["optimizer"])
        return True
