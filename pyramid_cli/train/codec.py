"""Hierarchical codec training (PyramidCodec Eq. 2–3): every decoded level Y[i] is pulled towards
the input band-limited to its share of the bandwidth, with DAC's multi-scale mel loss (its weight
raised from 2 to 10 after a warm-up, as the paper does), optional STFT / waveform losses, the
RVQ commitment (0.25) and codebook (1.0) losses, and, switched on by ``gan``, DAC's adversarial
(1.0) and feature-matching (2.0) losses against multi-period + multi-band STFT discriminators
(``pyramid_cli.train.codec_gan``; off by default: it makes a CPU step about 3x slower).

``train_codec`` resumes by default: a run folder holds config.json, metrics.jsonl, checkpoints/
(step-*/ folders + ``last``/``best`` pointers, see ``pyramid_cli.train.checkpoint``) and export/ (the
fp16 model to ship). Everything random is either restored from the checkpoint (torch RNG of each
rank) or a pure function of (seed, step) or of (seed, crop index), so a resumed CPU run is
bit-identical to an uninterrupted one, with or without GAN (the discriminator and its optimiser
are checkpointed too, but never exported).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from pyramid_cli.codec import CodecConfig, PyramidCodec
from pyramid_cli.codec.losses import MultiScaleMelLoss, MultiScaleSTFTLoss
from pyramid_cli.data.audio_dataset import CropSampler, NoteCropDataset, RandomCropDataset
from pyramid_cli.errors import UsageError
from pyramid_cli.hub.files import MAX_TUPLE, WEIGHTS_NAME
from pyramid_cli.hub.identity import weights_hash
from pyramid_cli.runtime.fileio import read_json_object, write_text_atomic
from pyramid_cli.train import codec_parts as parts_
from pyramid_cli.train.checkpoint import latest_checkpoint
from pyramid_cli.train.codec_gan import Adversary, autocast
from pyramid_cli.train.common import DistInfo, seed_everything, setup_distributed, step_generator, teardown_distributed
from pyramid_cli.train.config import CodecTrainConfig
from pyramid_cli.train.loop import LogCallback, Progress, RunFolder, restore, run_loop


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
        return _train(RunFolder(Path(run_dir), info, on_log), config, Path(corpus), info, init_from,
                      max_steps_this_call, stop)
    finally:
        if flushing:
            torch.set_flush_denormal(False)
        teardown_distributed(info)


def _codec_config(run: RunFolder, cfg: CodecTrainConfig, resume: Path | None,
                  init_from: str | Path | None) -> CodecConfig:
    """The architecture to train: a resumed run's own, else the config's (or a fine-tuned model's)."""
    if resume is not None:
        saved = CodecConfig.from_dict(read_json_object(resume / "config.json", "codec config"))
        if init_from is None and saved != cfg.codec_config():
            raise UsageError(f"{run.path} holds a {saved.name!r} run with another model config; "
                             "use a new run folder, or start a new one from its weights (init_from)")
        return saved
    wanted = cfg.codec_config()
    if init_from is None:
        if cfg.freeze_tokenizer:
            raise UsageError("freeze_tokenizer fine-tunes the decoder of a trained codec: give --init-from")
        return wanted
    source = parts_.read_model_config(Path(init_from))
    config = wanted if parts_.added_parts(source, wanted) else source
    # A decoding setting, which added_parts ignores: the start model's, unless the settings ask for
    # another than the default.
    power = wanted.note_gate_power if wanted.note_gate_power != 1.0 else source.note_gate_power
    config = replace(config, note_gate_power=power)
    if cfg.freeze_tokenizer and config.fsq_levels != source.fsq_levels:
        raise UsageError("freeze_tokenizer keeps the start model's quantizers: it cannot change fsq_levels")
    if cfg.freeze_tokenizer:  # its tokens are the start model's: same name, and its hash accepted
        start_hash = weights_hash(Path(init_from) / WEIGHTS_NAME)
        earlier = tuple(h for h in source.same_tokens_as if h != start_hash)
        return replace(config, name=source.name, same_tokens_as=(*earlier, start_hash)[-MAX_TUPLE:])
    return replace(config, same_tokens_as=())  # a trained encoder makes other codes


def _dataset(cfg: CodecTrainConfig, corpus: Path, codec_config: CodecConfig) -> RandomCropDataset:
    if not codec_config.harmonics:
        return RandomCropDataset(corpus, "train", cfg.crop_seconds, codec_config.sample_rate,
                                 seed=cfg.seed, silence_db=cfg.silence_db)
    if cfg.notes_from is None:
        raise UsageError(f"{codec_config.name} has a note head, which learns from MIDI piano rolls: "
                         "set notes_from to the MIDI folder the corpus was built from")
    return NoteCropDataset(corpus, "train", cfg.crop_seconds, cfg.notes_from, codec_config.hop_lengths[-1],
                           sample_rate=codec_config.sample_rate, seed=cfg.seed, silence_db=cfg.silence_db)


def _train(run: RunFolder, cfg: CodecTrainConfig, corpus: Path, info: DistInfo, init_from: str | Path | None,
           max_steps: int | None, stop: Callable[[], bool] | None) -> TrainResult:
    resume = latest_checkpoint(run.checkpoints)
    codec_config = _codec_config(run, cfg, resume, init_from)
    cfg = replace(cfg, model=codec_config.to_dict(), discriminator=cfg.discriminator_config().to_dict())
    if info.is_main:
        run.path.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run.path / "config.json", json.dumps(cfg.to_dict(), indent=2) + "\n")
    if cfg.note_level_weights and len(cfg.note_level_weights) != codec_config.n_levels:
        raise UsageError(f"note_level_weights needs one factor per level ({codec_config.n_levels}), "
                         f"got {list(cfg.note_level_weights)}")
    if cfg.gan and codec_config.architecture == "spectral":
        raise UsageError("GAN training needs a waveform codec; a spectral codec is trained on magnitudes")
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = PyramidCodec(codec_config)
    adversary = Adversary(cfg, info) if cfg.gan else None  # its init follows the model's from the seed
    if resume is None and init_from is not None:
        parts_.load_init_weights(model, Path(init_from))
    if cfg.freeze_tokenizer:
        model.freeze_tokenizer()
    head = getattr(model.decoder, "note_head", None)
    if cfg.partials_from_fits_only and head is not None:
        head.render_detached = True
    model.to(info.device).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    seed_everything(cfg.seed, info.rank)
    progress, position = Progress(), 0
    if resume is not None:
        loaded = restore(resume, model, optimizer, info, cfg.seed, run)
        # A run that turns GAN on at a resume gets a fresh discriminator.
        if adversary is not None and not adversary.load(loaded):
            run.log({"kind": "note", "step": loaded.step, "fresh_discriminator": True})
        progress = Progress(step=loaded.step, best=loaded.state.get("best"),
                            elapsed=float(loaded.state.get("elapsed_s", 0.0)), last_saved=loaded.step)
        position = int(loaded.state["data_position"])
    if adversary is not None:
        adversary.wrap_ddp()
    ddp = (DistributedDataParallel(model, device_ids=[info.device.index] if info.device.type == "cuda" else None,
                                   broadcast_buffers=False,  # codebook usage counts are per rank, reduced on use
                                   find_unused_parameters=cfg.levels_per_step == "random")
           if info.distributed else model)
    dataset = _dataset(cfg, corpus, codec_config)
    sampler = CropSampler(cfg.batch_size, start=position, rank=info.rank, world_size=info.world_size)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                        pin_memory=info.device.type == "cuda",
                        # Its own generator: making the iterator must not draw from the global RNG.
                        generator=torch.Generator().manual_seed(cfg.seed))
    evaluator = parts_.Evaluator.build(corpus, cfg, codec_config, info) if info.is_main else None
    end = cfg.steps if max_steps is None else min(cfg.steps, progress.step + max(0, max_steps))
    resumed_from = progress.step if resume is not None else None
    run.log({"kind": "start", "step": progress.step, "total_steps": cfg.steps, "end_step": end,
             "resumed_from": resumed_from, "world_size": info.world_size, "device": str(info.device),
             "codec": codec_config.name, "train_songs": len(dataset.songs),
             "eval_clips": 0 if evaluator is None else evaluator.count,
             "init_from": None if init_from is None or resume is not None else str(init_from)})
    task = _CodecTask(cfg, info, run, model, ddp, optimizer, adversary, iter(loader), sampler, progress.step, evaluator)
    run_loop(task, cfg, info, run, progress, end, stop)
    best = progress.best
    return TrainResult(
        run_dir=run.path, step=progress.step, total_steps=cfg.steps, finished=progress.step >= cfg.steps,
        stopped=progress.stopped, resumed_from=resumed_from, best_step=None if best is None else best["step"],
        best_mel=None if best is None else best["mel"], export_dir=run.export_dir if info.is_main else None,
        last_train=progress.last_train or {},
    )


class _CodecTask:
    """The codec's part of the training loop (``train.loop.Task``): Eq. 3 on one batch, dead-code
    reseeding, code usage in the train records, validation mel distances, the data position and
    the discriminator in checkpoints."""

    best_key = "mel"

    def __init__(self, cfg: CodecTrainConfig, info: DistInfo, run: RunFolder, model: PyramidCodec,
                 ddp: torch.nn.Module, optimizer: torch.optim.Optimizer, adversary: Adversary | None,
                 batches: Any, sampler: CropSampler, first_step: int, evaluator: parts_.Evaluator | None) -> None:
        self.cfg, self.info, self.run, self.model, self.ddp = cfg, info, run, model, ddp
        self.optimizer, self.adversary, self.batches, self.sampler = optimizer, adversary, batches, sampler
        self.first_step, self.evaluator = first_step, evaluator
        config = model.config
        self.mel_loss = MultiScaleMelLoss(config.sample_rate).to(info.device)
        self.stft_loss = MultiScaleSTFTLoss().to(info.device) if cfg.stft_weight else None
        self.codes = parts_.CodeCounter(config)
        self.mel_weight = cfg.mel_weight_initial
        self.wav: torch.Tensor | None = None  # the last batch (dead codes are reseeded from it)

    def train_step(self, step: int) -> dict[str, torch.Tensor]:
        cfg, info, n_levels = self.cfg, self.info, self.model.config.n_levels
        batch = next(self.batches)
        # (B, 1, T), and with MIDI the sounding and onset rolls (B, 88, frames) each
        wav, rolls, onsets = batch if isinstance(batch, list) else (batch, None, None)
        wav = self.wav = wav.to(info.device, non_blocking=True)
        if cfg.levels_per_step == "random":  # the same level on every rank, and after a resume
            levels = [int(torch.randint(n_levels, (1,), generator=step_generator(cfg.seed, step, 0)))]
        else:
            levels = list(range(n_levels))
        self.mel_weight = cfg.mel_weight_initial if step < cfg.mel_warmup_steps else cfg.mel_weight
        with autocast(cfg, info.device):
            out = self.ddp(wav, levels_to_decode=levels)
        targets = parts_.level_targets(wav, levels, n_levels)
        gan = self.adversary if self.adversary is not None and self.adversary.active(step) else None
        values: dict[str, torch.Tensor] = {}
        if gan is not None:  # DAC's order: the discriminator learns from this step's output first
            values.update(gan.discriminator_step(targets, out.reconstructions, step))
        loss, parts = parts_.codec_loss(out, targets, cfg, self.mel_weight, self.mel_loss, self.stft_loss, gan,
                                        None if rolls is None else rolls.to(info.device),
                                        None if onsets is None else onsets.to(info.device))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip or float("inf"))
        self.optimizer.step()
        self.codes.add(out.codes)
        return {**values, **parts, "loss": loss, "grad_norm": grad_norm}

    def after_step(self, step: int) -> None:
        every = self.cfg.reseed_dead_codes_every
        if every and step % every == 0 and self.wav is not None:
            generator = step_generator(self.cfg.seed, step, 1, self.info.device)
            replaced = parts_.reseed_dead_codes(self.model, self.wav, self.info, generator)
            self.run.log({"kind": "note", "step": step, "reseeded_codes": replaced})

    def record_fields(self, rate: float, seconds: float) -> tuple[dict[str, Any], dict[str, Any]]:
        return ({"mel_weight": self.mel_weight},
                {**self.codes.summary(), "samples_per_s": rate * self.cfg.batch_size * self.info.world_size})

    def evaluate(self, step: int) -> dict[str, Any] | None:
        return None if self.evaluator is None else self.evaluator.run(self.model, step)

    def checkpoint_state(self, step: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        state: dict[str, Any] = {"data_position": self.sampler.position_after(step - self.first_step)}
        if self.adversary is None:
            return {}, state
        tensors, meta = self.adversary.state()  # the discriminator in its training state
        return tensors, {**state, "discriminator": meta}
