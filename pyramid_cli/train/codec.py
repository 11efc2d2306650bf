"""Hierarchical codec training (PyramidCodec Eq. 2–3): every decoded level Y[i] is pulled towards
the input band-limited to its share of the bandwidth, with DAC's multi-scale mel loss (its weight
raised from 2 to 10 after a warm-up, as the paper does), optional STFT / waveform losses, the
RVQ commitment (0.25) and codebook (1.0) losses, and, switched on by ``gan``, DAC's adversarial
(1.0) and feature-matching (2.0) losses against multi-period + multi-band STFT discriminators
(``pyramid_cli.train.codec_gan``; off by default: it makes a CPU step about 3x slower).

``train_codec`` resumes by default: a run folder holds config.json, metrics.jsonl, checkpoints/
(step-*/ folders + ``last``/``best`` pointers, see ``pyramid_cli.checkpoint``) and export/ (the
fp16 model to ship). Everything random is either restored from the checkpoint (torch RNG of each
rank) or a pure function of (seed, step) or of (seed, crop index), so a resumed CPU run is
bit-identical to an uninterrupted one, with or without GAN (the discriminator and its optimiser
are checkpointed too, but never exported).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from pyramid_cli.checkpoint import latest_checkpoint, load_training_state
from pyramid_cli.codec import CodecConfig, PyramidCodec, preset
from pyramid_cli.codec.discriminators import DiscriminatorConfig, discriminator_preset
from pyramid_cli.codec.losses import MultiScaleMelLoss, MultiScaleSTFTLoss
from pyramid_cli.data.audio_dataset import CropSampler, NoteCropDataset, RandomCropDataset
from pyramid_cli.data.manifest import append_jsonl, read_jsonl, write_jsonl
from pyramid_cli.errors import FormatError, PyramidError, UsageError
from pyramid_cli.fileio import read_json_object, write_text_atomic
from pyramid_cli.train import codec_parts as parts_
from pyramid_cli.train.codec_gan import Adversary, autocast
from pyramid_cli.train.common import (
    SCHEDULES,
    DistInfo,
    RunningMeans,
    TrainSettings,
    any_rank,
    learning_rate,
    seed_everything,
    setup_distributed,
    step_generator,
    teardown_distributed,
)

LogCallback = Callable[[dict[str, Any]], None]


@dataclass
class CodecTrainConfig(TrainSettings):
    """Everything a codec training run needs; saved resolved as ``<run>/config.json``."""

    model: str | dict[str, Any] = "p111_small"  # preset name or a full CodecConfig dict
    crop_seconds: float = 1.0  # length of each training crop
    batch_size: int = 8  # crops per step and per rank
    steps: int = 10_000  # total optimisation steps of the run (raise it and rerun to extend)
    lr: float = 1e-4  # peak learning rate (DAC: 1e-4)
    betas: tuple[float, float] = (0.8, 0.99)  # AdamW betas (DAC)
    weight_decay: float = 0.01  # AdamW decoupled weight decay
    grad_clip: float = 1000.0  # max global grad norm (DAC clips the generator at 1e3)
    warmup_steps: int = 200  # linear LR warm-up
    schedule: str = "exponential"  # after warm-up: exponential | cosine | constant
    lr_decay: float = 0.999996  # exponential: factor per step (DAC)
    min_lr_ratio: float = 0.1  # cosine: final LR as a fraction of lr
    mel_weight_initial: float = 2.0  # mel loss weight during the mel warm-up (paper: 2)
    mel_weight: float = 10.0  # mel loss weight afterwards (paper: 10)
    mel_warmup_steps: int = 1000  # steps before the mel weight is raised
    stft_weight: float = 0.0  # multi-scale STFT loss weight (0 = off)
    waveform_weight: float = 0.0  # waveform L1 weight (0 = off)
    pitch_weight: float = 0.0  # spectral codecs: semitone-band log-magnitude loss (codec_parts.spectral_losses)
    note_weight: float = 1.0  # codecs with a note head: BCE of its note logits against the MIDI piano roll
    note_pos_weight: float = 1.0  # weight of the sounding keys in that BCE (> 1 trades precision for recall)
    notes_from: str | None = None  # codecs with a note head: the MIDI folder the corpus was built from
    commitment_weight: float = 0.25  # RVQ commitment loss (DAC)
    diversity_weight: float = 0.0  # codebook diversity loss against collapse (wav2vec 2.0's; 0 = off)
    codebook_weight: float = 1.0  # RVQ codebook loss (DAC)
    levels_per_step: str = "random"  # "random": decode one random level per step (paper's code); "all"
    eval_every: int = 500  # steps between validation passes (0 = never)
    eval_clips: int = 16  # fixed validation crops
    eval_seconds: float = 2.0  # length of each validation crop
    log_every: int = 10  # steps between metrics.jsonl records
    checkpoint_every: int = 500  # steps between checkpoints (also saved at the end and on stop)
    keep_last: int = 3  # newest checkpoints kept, plus the best
    seed: int = 0  # fixes init, crops, level choice and reseeding
    num_workers: int = 0  # DataLoader worker processes (0: read in the training process)
    reseed_dead_codes_every: int = 200  # steps between dead-code reseeds (0 = never)
    silence_db: float = -45.0  # crops quieter than this RMS (dBFS) are redrawn
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    bf16: bool = True  # bf16 autocast of the model on CUDA (losses stay float32)
    flush_denormal: bool = True  # CPU: denormal floats → 0; quiet music made steps up to 15x slower without it
    gan: bool = False  # adversarial training (multi-period + multi-band STFT discriminators, DAC); ~3x CPU time
    gan_start_step: int = 0  # steps of reconstruction-only training before the discriminator joins
    adv_weight: float = 1.0  # generator's least-squares adversarial loss (DAC: 1)
    feat_weight: float = 2.0  # discriminator feature-matching L1 loss (DAC: 2)
    disc_grad_clip: float = 10.0  # max global grad norm of the discriminator (DAC: 10)
    discriminator: str | dict[str, Any] = "small"  # preset (small | paper = DAC widths) or DiscriminatorConfig fields

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # type: ignore[assignment]  # JSON gives lists
        self.discriminator_config()  # a bad preset name or key fails here, not mid-run
        if self.levels_per_step not in ("random", "all"):
            raise UsageError(f"levels_per_step must be 'random' or 'all', got {self.levels_per_step!r}")
        if self.schedule not in SCHEDULES:
            raise UsageError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        self.check_ranges(
            positive=("crop_seconds", "batch_size", "lr", "eval_clips", "eval_seconds", "log_every", "keep_last",
                      "note_pos_weight"),
            non_negative=("steps", "warmup_steps", "mel_warmup_steps", "eval_every", "checkpoint_every",
                          "num_workers", "reseed_dead_codes_every", "grad_clip", "gan_start_step", "adv_weight",
                          "feat_weight", "disc_grad_clip", "diversity_weight", "pitch_weight", "note_weight"))

    def codec_config(self) -> CodecConfig:
        """The model architecture this config names."""
        if isinstance(self.model, str):
            return preset(self.model)
        try:
            return CodecConfig.from_dict(self.model)
        except FormatError as exc:
            raise UsageError(f"model: {exc}") from exc

    def discriminator_config(self) -> DiscriminatorConfig:
        """The GAN discriminator this config names (a preset, or fields over the "small" defaults)."""
        if isinstance(self.discriminator, str):
            return discriminator_preset(self.discriminator)
        return DiscriminatorConfig.from_dict(self.discriminator)


@dataclass
class TrainResult:
    """How a ``train_codec`` call ended."""

    run_dir: Path
    step: int  # completed steps of the run
    total_steps: int
    finished: bool  # the run reached ``steps``
    stopped: bool  # ``stop()`` asked to end early (a checkpoint was saved)
    resumed_from: int | None  # the step a checkpoint put us back at
    best_step: int | None
    best_mel: float | None  # validation mel distance averaged over levels
    export_dir: Path | None
    last_train: dict[str, Any] = field(default_factory=dict)  # the last metrics.jsonl train record


def train_codec(
    run_dir: str | Path,
    config: CodecTrainConfig,
    corpus: str | Path,
    on_log: LogCallback | None = None,
    init_from: str | Path | None = None,
    max_steps_this_call: int | None = None,
    stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train (or resume training) a PyramidCodec on a corpus built by ``pyramid dataset build``.

    Args:
        run_dir: the run folder; resumed when it holds a checkpoint.
        config: the run settings.
        corpus: corpus folder; crops come from its "train" split, evaluation from "valid".
        on_log: receives every record written to metrics.jsonl (kinds: start, train, eval,
            checkpoint, note), on rank 0 only.
        init_from: a model folder (config.json + model.safetensors) to start from: weights only,
            fresh optimizer, schedule and discriminator (fine-tuning). Ignored when the run already
            has a checkpoint.
        max_steps_this_call: stop (with a checkpoint) after this many steps; rerun to go on.
        stop: polled between steps; True saves a checkpoint and returns (e.g. after Ctrl-C).

    Returns:
        A ``TrainResult``. Under torchrun every rank calls this; rank 0 writes the files.
    """
    info = setup_distributed(config.device)
    # Process-wide FPU mode, so it is switched back off on the way out (torch has no getter for it).
    flushing = config.flush_denormal and torch.set_flush_denormal(True)
    try:
        return _Trainer(Path(run_dir), config, Path(corpus), info, on_log).run(
            init_from, max_steps_this_call, stop
        )
    finally:
        if flushing:
            torch.set_flush_denormal(False)
        teardown_distributed(info)


class _Trainer:
    """One call of ``train_codec``: set-up, the loop, and its bookkeeping."""

    def __init__(self, run_dir: Path, config: CodecTrainConfig, corpus: Path, info: DistInfo,
                 on_log: LogCallback | None) -> None:
        self.run_dir, self.config, self.corpus, self.info, self.on_log = run_dir, config, corpus, info, on_log
        self.ckpt_root = run_dir / "checkpoints"
        self.metrics_path = run_dir / "metrics.jsonl"

    def log(self, record: dict[str, Any]) -> None:
        if self.info.is_main:
            append_jsonl(self.metrics_path, record)
            if self.on_log is not None:
                self.on_log(record)

    def _codec_config(self, resume: Path | None, init_from: str | Path | None) -> CodecConfig:
        if resume is not None:
            saved = CodecConfig.from_dict(read_json_object(resume / "config.json", "codec config"))
            if init_from is None and saved != self.config.codec_config():
                raise UsageError(f"{self.run_dir} holds a {saved.name!r} run with another model config; "
                                 "pass a new --run folder, or --init-from to start from its weights")
            return saved
        wanted = self.config.codec_config()
        if init_from is not None:
            source = parts_.read_model_config(Path(init_from))
            return wanted if parts_.grows_note_head(source, wanted) else source
        return wanted

    def run(self, init_from: str | Path | None, max_steps: int | None,  # noqa: C901 (issue 12 part 1)
            stop: Callable[[], bool] | None) -> TrainResult:
        cfg, info = self.config, self.info
        resume = latest_checkpoint(self.ckpt_root)
        codec_config = self._codec_config(resume, init_from)
        cfg = self.config = replace(cfg, model=codec_config.to_dict(),
                                    discriminator=cfg.discriminator_config().to_dict())
        if info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.run_dir / "config.json", json.dumps(cfg.to_dict(), indent=2) + "\n")
        if cfg.gan and codec_config.architecture == "spectral":
            raise UsageError("GAN training needs a waveform codec; a spectral codec is trained on magnitudes")
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        model = PyramidCodec(codec_config)
        adversary = Adversary(cfg, info) if cfg.gan else None  # its init follows the model's from the seed
        if resume is None and init_from is not None:
            parts_.load_init_weights(model, Path(init_from))
        model.to(info.device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        seed_everything(cfg.seed, info.rank)
        step, position, best, elapsed = (self._restore(resume, model, optimizer, adversary) if resume
                                         else (0, 0, None, 0.0))
        if adversary is not None:
            adversary.wrap_ddp()
        ddp = (DistributedDataParallel(model, device_ids=[info.device.index] if info.device.type == "cuda" else None,
                                       broadcast_buffers=False,  # codebook usage counts are per rank, reduced on use
                                       find_unused_parameters=cfg.levels_per_step == "random")
               if info.distributed else model)
        dataset = self._dataset(codec_config)
        sampler = CropSampler(cfg.batch_size, start=position, rank=info.rank, world_size=info.world_size)
        loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                            pin_memory=info.device.type == "cuda",
                            # Its own generator: making the iterator must not draw from the global RNG.
                            generator=torch.Generator().manual_seed(cfg.seed))
        evaluator = parts_.Evaluator.build(self.corpus, cfg, codec_config, info) if info.is_main else None
        mel_loss = MultiScaleMelLoss(codec_config.sample_rate).to(info.device)
        stft_loss = MultiScaleSTFTLoss().to(info.device) if cfg.stft_weight else None
        end = cfg.steps if max_steps is None else min(cfg.steps, step + max(0, max_steps))
        resumed_from = step if resume is not None else None
        saver = parts_.Saver(self.ckpt_root, self.run_dir / "export", cfg, info, model, optimizer, adversary)
        saver.last_saved = step if resume is not None else None
        self.log({"kind": "start", "step": step, "total_steps": cfg.steps, "end_step": end,
                  "resumed_from": resumed_from, "world_size": info.world_size, "device": str(info.device),
                  "codec": codec_config.name, "train_songs": len(dataset.songs),
                  "eval_clips": 0 if evaluator is None else evaluator.count,
                  "init_from": None if init_from is None or resume is not None else str(init_from)})
        window, codes = RunningMeans(), parts_.CodeCounter(codec_config)
        n_levels, batches, stopped, first_step = codec_config.n_levels, iter(loader), False, step
        window_start, window_steps, last_train = time.perf_counter(), 0, {}
        while step < end:
            if stop is not None and any_rank(stop(), info):
                stopped = True
                break
            batch = next(batches)
            wav, rolls = batch if isinstance(batch, list) else (batch, None)  # (B, 1, T), (B, 88, frames)
            wav = wav.to(info.device, non_blocking=True)
            lr = learning_rate(step, cfg.lr, cfg.warmup_steps, cfg.schedule, cfg.steps, cfg.lr_decay, cfg.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            if cfg.levels_per_step == "random":  # the same level on every rank, and after a resume
                levels = [int(torch.randint(n_levels, (1,), generator=step_generator(cfg.seed, step, 0)))]
            else:
                levels = list(range(n_levels))
            mel_weight = cfg.mel_weight_initial if step < cfg.mel_warmup_steps else cfg.mel_weight
            with autocast(cfg, info.device):
                out = ddp(wav, levels_to_decode=levels)
            targets = parts_.level_targets(wav, levels, n_levels)
            gan = adversary if adversary is not None and adversary.active(step) else None
            if gan is not None:  # DAC's order: the discriminator learns from this step's output first
                window.add(gan.discriminator_step(targets, out.reconstructions, step))
            loss, parts = parts_.codec_loss(out, targets, cfg, mel_weight, mel_loss, stft_loss, gan,
                                            None if rolls is None else rolls.to(info.device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
            optimizer.step()
            step += 1
            window_steps += 1
            window.add({**parts, "loss": loss, "grad_norm": grad_norm})
            codes.add(out.codes)
            if cfg.reseed_dead_codes_every and step % cfg.reseed_dead_codes_every == 0:
                replaced = parts_.reseed_dead_codes(model, wav, info, step_generator(cfg.seed, step, 1, info.device))
                self.log({"kind": "note", "step": step, "reseeded_codes": replaced})
            if step % cfg.log_every == 0 or step == end:
                now = time.perf_counter()
                elapsed += now - window_start
                means = window.means()
                if not all(math.isfinite(v) for v in means.values()):
                    raise PyramidError(f"training diverged by step {step} (NaN/inf loss); lower --lr and resume")
                rate = window_steps / max(now - window_start, 1e-9)
                last_train = {"kind": "train", "step": step, "lr": lr, "mel_weight": mel_weight, **means,
                              **codes.summary(), "steps_per_s": rate,
                              "samples_per_s": rate * cfg.batch_size * info.world_size,
                              "elapsed_s": elapsed, "eta_s": (cfg.steps - step) / max(rate, 1e-9)}
                self.log(last_train)
                window_start, window_steps = time.perf_counter(), 0
            new_best = False
            if cfg.eval_every and step % cfg.eval_every == 0:
                if evaluator is not None:
                    record = evaluator.run(model, step)
                    self.log(record)
                    new_best = best is None or record["mel"] < best["mel"]
                    best = {"step": step, "mel": record["mel"]} if new_best else best
                new_best = any_rank(new_best, info)  # every rank takes part in saving
            if new_best or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                self._save(saver, step, sampler.position_after(step - first_step), best, elapsed, new_best)
        if saver.last_saved != step:
            self._save(saver, step, sampler.position_after(step - first_step), best, elapsed, False)
        saver.barrier()
        return TrainResult(
            run_dir=self.run_dir, step=step, total_steps=cfg.steps, finished=step >= cfg.steps, stopped=stopped,
            resumed_from=resumed_from, best_step=None if best is None else best["step"],
            best_mel=None if best is None else best["mel"], export_dir=saver.export_dir if info.is_main else None,
            last_train=last_train,
        )

    def _dataset(self, codec_config: CodecConfig) -> RandomCropDataset:
        cfg = self.config
        if not codec_config.harmonics:
            return RandomCropDataset(self.corpus, "train", cfg.crop_seconds, codec_config.sample_rate,
                                     seed=cfg.seed, silence_db=cfg.silence_db)
        if cfg.notes_from is None:
            raise UsageError(f"{codec_config.name} has a note head, which learns from MIDI piano rolls: "
                             "set notes_from to the MIDI folder the corpus was built from")
        return NoteCropDataset(self.corpus, "train", cfg.crop_seconds, cfg.notes_from, codec_config.hop_lengths[-1],
                               sample_rate=codec_config.sample_rate, seed=cfg.seed, silence_db=cfg.silence_db)

    def _restore(self, folder: Path, model: PyramidCodec, optimizer: torch.optim.Optimizer,
                 adversary: Adversary | None) -> tuple[int, int, dict[str, Any] | None, float]:
        """Load a checkpoint: weights, optimizer, discriminator, RNGs; returns (step, data position,
        best, elapsed). A run that turns GAN on at a resume gets a fresh discriminator."""
        loaded = load_training_state(folder, model, optimizer, restore_rng=self.info.rank == 0)
        parts_.restore_rank_rng(loaded, self.info, self.config.seed)
        step = loaded.step
        fresh_discriminator = adversary is not None and not adversary.load(loaded)
        if self.info.is_main:  # drop records of steps after the checkpoint: they are about to be redone
            write_jsonl(self.metrics_path, [r for r in read_jsonl(self.metrics_path) if r.get("step", 0) <= step])
        if fresh_discriminator:
            self.log({"kind": "note", "step": step, "fresh_discriminator": True})
        state = loaded.state
        return step, int(state["data_position"]), state.get("best"), float(state.get("elapsed_s", 0.0))

    def _save(self, saver: parts_.Saver, step: int, position: int, best: dict[str, Any] | None,
              elapsed: float, is_best: bool) -> None:
        path = saver.save(step, {"data_position": position, "best": best, "elapsed_s": elapsed,
                                 "world_size": self.info.world_size}, is_best)
        self.log({"kind": "checkpoint", "step": step, "path": str(path), "best": is_best})
