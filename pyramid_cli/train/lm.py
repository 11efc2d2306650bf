"""Language-model training over token shards (``pyramid dataset tokenize``).

Each step draws ``batch_size`` windows from the train split: a piece is picked with probability
proportional to its length, then the layout cuts a training window from it
(``Layout.window``). Every draw is a pure function of (seed, step, rank, row), so a resumed run
takes the same batches as an uninterrupted one without saving a data position. The run folder
has the codec trainer's shape: config.json, metrics.jsonl, checkpoints/ (atomic, last N + best)
and export/ (fp16 weights ready for ``pyramid generate --lm``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from pyramid_cli.checkpoint import latest_checkpoint, load_training_state, save_training_state
from pyramid_cli.data.manifest import append_jsonl, read_jsonl, write_jsonl
from pyramid_cli.data.tokens import TokenItem, TokenSet
from pyramid_cli.errors import FormatError, PyramidError, UsageError
from pyramid_cli.fileio import read_json_object, write_text_atomic
from pyramid_cli.hub.identity import CodecIdentity
from pyramid_cli.lm.config import LAYOUTS, LMConfig, preset
from pyramid_cli.lm.layout import Layout, TokenSequence, make_layout, special_tokens
from pyramid_cli.lm.model import PyramidLM, check_codec
from pyramid_cli.train.common import (
    SCHEDULES,
    RunningMeans,
    TrainSettings,
    any_rank,
    learning_rate,
    seed_everything,
    setup_distributed,
    teardown_distributed,
)

LogCallback = Callable[[dict[str, Any]], None]


@dataclass
class LMTrainConfig(TrainSettings):
    """Everything an LM training run needs; saved resolved as ``<run>/config.json``."""

    model: str | dict[str, Any] = "small"  # preset name (small, tiny, paper) or a full LMConfig dict
    layout: str | None = None  # override the preset's layout: time_aligned | flat
    batch_size: int = 16  # windows per step and per rank
    steps: int = 5000  # total optimisation steps (raise it and rerun to extend)
    lr: float = 1e-3  # peak AdamW learning rate
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    warmup_steps: int = 200
    schedule: str = "cosine"  # cosine | exponential | constant
    lr_decay: float = 0.9999  # exponential only
    min_lr_ratio: float = 0.1  # cosine: final LR fraction
    eval_every: int = 500  # steps between validation passes (0 = never)
    eval_windows: int = 64  # fixed validation windows
    log_every: int = 10
    checkpoint_every: int = 500
    keep_last: int = 3
    seed: int = 0
    device: str = "auto"
    bf16: bool = True  # bf16 autocast on CUDA

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # type: ignore[assignment]  # JSON gives lists
        if self.layout is not None and self.layout not in LAYOUTS:
            raise UsageError(f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if self.schedule not in SCHEDULES:
            raise UsageError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        self.check_ranges(positive=("batch_size", "lr", "eval_windows", "log_every", "keep_last"),
                          non_negative=("steps", "warmup_steps", "eval_every", "checkpoint_every", "grad_clip"))

    def lm_config(self) -> LMConfig:
        if isinstance(self.model, str):
            config = preset(self.model)
        else:
            try:
                config = LMConfig.from_dict(self.model)
            except FormatError as exc:
                raise UsageError(f"model: {exc}") from exc
        return replace(config, layout=self.layout) if self.layout else config


@dataclass
class LMTrainResult:
    run_dir: Path
    step: int
    total_steps: int
    finished: bool
    stopped: bool
    resumed_from: int | None
    best_step: int | None
    best_loss: float | None
    export_dir: Path | None
    last_eval: dict[str, Any] | None


# ---- batches -------------------------------------------------------------------------------------


def window_rng(seed: int, step: int, rank: int, row: int) -> np.random.Generator:
    return np.random.default_rng([seed, step, rank, row])


def sample_windows(layout: Layout, items: Sequence[TokenItem], weights: np.ndarray,
                   rngs: Sequence[np.random.Generator]) -> list[TokenSequence]:
    """One training window per generator: a piece drawn by length, then a window of it."""
    windows = []
    for rng in rngs:
        item = items[int(rng.choice(len(items), p=weights))]
        windows.append(layout.window([np.asarray(level) for level in item.levels()], rng))
    return windows


def collate(windows: Sequence[TokenSequence], pad: int) -> dict[str, torch.Tensor]:
    """Pad windows to one length: tokens, positions, streams, levels of targets (-1 = no loss), masks."""
    length = max(len(w) for w in windows)
    batch = len(windows)
    tokens = torch.full((batch, length), pad, dtype=torch.long)
    positions = torch.zeros((batch, length), dtype=torch.long)
    streams = torch.zeros((batch, length), dtype=torch.long)
    target_level = torch.full((batch, length), -1, dtype=torch.long)
    mask = torch.eye(length, dtype=torch.bool).repeat(batch, 1, 1, 1)  # padding attends to itself only
    for row, w in enumerate(windows):
        n = len(w)
        tokens[row, :n] = torch.from_numpy(w.tokens)
        positions[row, :n] = torch.from_numpy(w.positions)
        streams[row, :n] = torch.from_numpy(w.streams)
        target_level[row, :n] = torch.from_numpy(np.where(w.targets, w.level, -1))
        mask[row, 0, :n, :n] = w.attention_mask()
    return {"tokens": tokens, "positions": positions, "streams": streams, "target_level": target_level,
            "mask": mask}


def window_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], n_levels: int,
                autocast: bool) -> tuple[torch.Tensor, list[tuple[float, int]]]:
    """Mean next-token cross-entropy over target tokens, and (sum of nats, count) per level."""
    with torch.autocast(batch["tokens"].device.type, dtype=torch.bfloat16, enabled=autocast):
        logits, _ = model(batch["tokens"], batch["positions"], batch["streams"], mask=batch["mask"])
    target_level = batch["target_level"][:, 1:]
    nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), batch["tokens"][:, 1:], reduction="none")
    keep = target_level >= 0
    loss = nll[keep].mean()
    per_level = [(float(nll[target_level == i].detach().sum()), int((target_level == i).sum()))
                 for i in range(n_levels)]
    return loss, per_level


# ---- evaluation ---------------------------------------------------------------------------------


@torch.inference_mode()
def evaluate_lm(model: PyramidLM, tokens: TokenSet, split: str, windows: int, seed: int = 1234,
                batch_size: int = 16) -> dict[str, Any]:
    """Validation NLL per level on fixed windows: nats and bits per token, bits per second of audio."""
    config = model.config
    layout = make_layout(config)
    items = tokens.items(split)
    if not items:
        raise UsageError(f"the token set has no {split!r} items")
    weights = np.array([i.frames[0] for i in items], dtype=np.float64)
    weights /= weights.sum()
    sums = np.zeros(config.n_levels)
    counts = np.zeros(config.n_levels)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad = special_tokens(config.codebook_size)["PAD"]
    for first in range(0, windows, batch_size):
        count = min(batch_size, windows - first)
        rngs = [window_rng(seed, first + row, 0, 0) for row in range(count)]
        batch = collate(sample_windows(layout, items, weights, rngs), pad)
        _, per_level = window_loss(model, {k: v.to(device) for k, v in batch.items()}, config.n_levels, False)
        for i, (total, n) in enumerate(per_level):
            sums[i] += total
            counts[i] += n
    model.train(was_training)
    record: dict[str, Any] = {"split": split, "windows": windows}
    all_nats = float(sums.sum() / max(counts.sum(), 1))
    record["nll"] = all_nats
    for i in range(config.n_levels):
        nats = float(sums[i] / counts[i]) if counts[i] else float("nan")
        record[f"nll_l{i}"] = nats
        record[f"bits_per_token_l{i}"] = nats / math.log(2)
        record[f"bits_per_second_l{i}"] = nats / math.log(2) * config.tokens_per_second(i)
        record[f"tokens_l{i}"] = int(counts[i])
    return record


# ---- the loop -----------------------------------------------------------------------------------


def train_lm(run_dir: str | Path, config: LMTrainConfig, tokens_dir: str | Path, on_log: LogCallback | None = None,  # noqa: C901 (issue 12 part 1)
             init_from: str | Path | None = None, max_steps_this_call: int | None = None,
             stop: Callable[[], bool] | None = None) -> LMTrainResult:
    """Train (or resume) a pyramid LM on token shards; see the module docstring.

    Args:
        init_from: an LM folder to start from (weights only, fresh optimizer and schedule);
            ignored when the run already has a checkpoint.
        stop: polled between steps; True saves a checkpoint and returns (Ctrl-C).
    """
    info = setup_distributed(config.device)
    run_dir = Path(run_dir)
    try:
        tokens = TokenSet.open(tokens_dir)
        meta = tokens.meta
        resume = latest_checkpoint(run_dir / "checkpoints")
        if resume is not None:
            lm_config = LMConfig.from_dict(read_json_object(resume / "config.json", "LM config"))
        elif init_from is not None:
            lm_config = PyramidLM.from_pretrained(init_from).config
        else:
            lm_config = config.lm_config().with_codec(meta.codec_name, meta.codec_hash, meta.sample_rate,
                                                      meta.hop_lengths, meta.n_codebooks, meta.codebook_size)
        check_codec(lm_config, CodecIdentity(meta.codec_name, meta.codec_hash), f"{tokens_dir} holds tokens of")
        config = replace(config, model=lm_config.to_dict(), layout=None)
        if info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(run_dir / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")
        torch.manual_seed(config.seed)
        model = PyramidLM(lm_config)
        if resume is None and init_from is not None:
            model.load_state_dict(PyramidLM.from_pretrained(init_from).state_dict())
        model.to(info.device).train()
        decay = [p for p in model.parameters() if p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.dim() < 2]
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                       {"params": no_decay, "weight_decay": 0.0}], lr=config.lr, betas=config.betas)
        seed_everything(config.seed, info.rank)
        step, best, elapsed = 0, None, 0.0
        metrics = run_dir / "metrics.jsonl"
        if resume is not None:
            loaded = load_training_state(resume, model, optimizer, restore_rng=True)
            step, best = loaded.step, loaded.state.get("best")
            elapsed = float(loaded.state.get("elapsed_s", 0.0))
            if info.is_main:
                write_jsonl(metrics, [r for r in read_jsonl(metrics) if r.get("step", 0) <= step])

        def log(record: dict[str, Any]) -> None:
            if info.is_main:
                append_jsonl(metrics, record)
                if on_log is not None:
                    on_log(record)

        ddp = (DistributedDataParallel(model, device_ids=[info.device.index] if info.device.type == "cuda" else None)
               if info.distributed else model)
        layout = make_layout(lm_config)
        items = tokens.items("train")
        if not items:
            raise UsageError(f"{tokens_dir} has no train items")
        weights = np.array([i.frames[0] for i in items], dtype=np.float64)
        weights /= weights.sum()
        pad = special_tokens(lm_config.codebook_size)["PAD"]
        autocast = config.bf16 and info.device.type == "cuda"
        end = config.steps if max_steps_this_call is None else min(config.steps, step + max(0, max_steps_this_call))
        resumed_from = step if resume is not None else None
        log({"kind": "start", "step": step, "total_steps": config.steps, "end_step": end,
             "resumed_from": resumed_from, "world_size": info.world_size, "device": str(info.device),
             "parameters": model.num_parameters(), "layout": lm_config.layout, "train_items": len(items),
             "codec": f"{lm_config.codec_name}@{lm_config.codec_hash}"})
        last_saved = step if resume is not None else None
        window, last_eval, stopped = RunningMeans(), None, False
        window_start, window_steps, window_tokens = time.perf_counter(), 0, 0

        def save(is_best: bool) -> None:
            nonlocal last_saved
            if info.is_main:
                path = save_training_state(run_dir / "checkpoints", step, model, optimizer,
                                           {"best": best, "elapsed_s": elapsed}, model_config=lm_config.to_dict(),
                                           keep_last=config.keep_last, best=is_best)
                model.save_pretrained(run_dir / "export", fp16=True)
                log({"kind": "checkpoint", "step": step, "path": str(path), "best": is_best})
            last_saved = step

        while step < end:
            if stop is not None and any_rank(stop(), info):
                stopped = True
                break
            lr = learning_rate(step, config.lr, config.warmup_steps, config.schedule, config.steps,
                               config.lr_decay, config.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            rngs = [window_rng(config.seed, step, info.rank, row) for row in range(config.batch_size)]
            batch = collate(sample_windows(layout, items, weights, rngs), pad)
            batch = {k: v.to(info.device, non_blocking=True) for k, v in batch.items()}
            loss, per_level = window_loss(ddp, batch, lm_config.n_levels, autocast)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip or float("inf"))
            optimizer.step()
            step += 1
            window_steps += 1
            window_tokens += sum(n for _, n in per_level)
            window.add({"loss": loss.detach(), "grad_norm": grad_norm,
                        **{f"loss_l{i}": torch.tensor(s / n) for i, (s, n) in enumerate(per_level) if n}})
            if step % config.log_every == 0 or step == end:
                now = time.perf_counter()
                elapsed += now - window_start
                means = window.means()
                if not all(math.isfinite(v) for v in means.values()):
                    raise PyramidError(f"training diverged by step {step} (NaN/inf loss); lower --lr and resume")
                rate = window_steps / max(now - window_start, 1e-9)
                log({"kind": "train", "step": step, "lr": lr, **means, "steps_per_s": rate,
                     "tokens_per_s": window_tokens / max(now - window_start, 1e-9) * info.world_size,
                     "elapsed_s": elapsed, "eta_s": (config.steps - step) / max(rate, 1e-9)})
                window_start, window_steps, window_tokens = time.perf_counter(), 0, 0
            new_best = False
            if config.eval_every and step % config.eval_every == 0 and "valid" in tokens.splits():
                if info.is_main:
                    last_eval = {"kind": "eval", "step": step,
                                 **evaluate_lm(model, tokens, "valid", config.eval_windows, batch_size=16)}
                    log(last_eval)
                    new_best = best is None or last_eval["nll"] < best["nll"]
                    best = {"step": step, "nll": last_eval["nll"]} if new_best else best
                new_best = any_rank(new_best, info)
            if new_best or (config.checkpoint_every and step % config.checkpoint_every == 0):
                save(new_best)
        if last_saved != step:
            save(False)
        return LMTrainResult(run_dir=run_dir, step=step, total_steps=config.steps, finished=step >= config.steps,
                             stopped=stopped, resumed_from=resumed_from,
                             best_step=None if best is None else best["step"],
                             best_loss=None if best is None else best["nll"],
                             export_dir=run_dir / "export" if info.is_main else None, last_eval=last_eval)
    finally:
        teardown_distributed(info)
