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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from pyramid_cli.data.tokens import TokenItem, TokenMeta, TokenSet
from pyramid_cli.errors import UsageError
from pyramid_cli.hub.identity import CodecIdentity
from pyramid_cli.lm.config import LMConfig
from pyramid_cli.lm.layout import Layout, TokenSequence, make_layout, special_tokens
from pyramid_cli.lm.model import PyramidLM, check_codec
from pyramid_cli.runtime.fileio import read_json_object, write_text_atomic
from pyramid_cli.train.checkpoint import latest_checkpoint
from pyramid_cli.train.common import DistInfo, seed_everything, setup_distributed, teardown_distributed
from pyramid_cli.train.config import LMTrainConfig
from pyramid_cli.train.loop import LogCallback, Progress, RunFolder, restore, run_loop


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


# ---- the loop ----------------------------------------------------------------------------------


def train_lm(run_dir: str | Path, config: LMTrainConfig, tokens_dir: str | Path, on_log: LogCallback | None = None,
             init_from: str | Path | None = None, max_steps_this_call: int | None = None,
             stop: Callable[[], bool] | None = None) -> LMTrainResult:
    """Train (or resume) a pyramid LM on token shards; see the module docstring.

    Args:
        init_from: an LM folder to start from (weights only, fresh optimizer and schedule);
            ignored when the run already has a checkpoint.
        stop: polled between steps; True saves a checkpoint and returns (Ctrl-C).
    """
    info = setup_distributed(config.device)
    try:
        return _train(RunFolder(Path(run_dir), info, on_log), config, Path(tokens_dir), info, init_from,
                      max_steps_this_call, stop)
    finally:
        teardown_distributed(info)


def _lm_config(config: LMTrainConfig, meta: TokenMeta, resume: Path | None, init_from: str | Path | None) -> LMConfig:
    """The LM to train: a resumed run's own, a fine-tuned model's, or the config's on these tokens."""
    if resume is not None:
        return LMConfig.from_dict(read_json_object(resume / "config.json", "LM config"))
    if init_from is not None:
        return PyramidLM.from_pretrained(init_from).config
    return config.lm_config().with_codec(meta.codec_name, meta.codec_hash, meta.sample_rate, meta.hop_lengths,
                                         meta.n_codebooks, meta.codebook_size)


def _train(run: RunFolder, config: LMTrainConfig, tokens_dir: Path, info: DistInfo, init_from: str | Path | None,
           max_steps: int | None, stop: Callable[[], bool] | None) -> LMTrainResult:
    tokens = TokenSet.open(tokens_dir)
    meta = tokens.meta
    resume = latest_checkpoint(run.checkpoints)
    lm_config = _lm_config(config, meta, resume, init_from)
    check_codec(lm_config, CodecIdentity(meta.codec_name, meta.codec_hash), f"{tokens_dir} holds tokens of")
    config = replace(config, model=lm_config.to_dict(), layout=None)
    if info.is_main:
        run.path.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run.path / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")
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
    progress = Progress()
    if resume is not None:
        loaded = restore(resume, model, optimizer, info, config.seed, run)
        progress = Progress(step=loaded.step, best=loaded.state.get("best"),
                            elapsed=float(loaded.state.get("elapsed_s", 0.0)), last_saved=loaded.step)
    ddp = (DistributedDataParallel(model, device_ids=[info.device.index] if info.device.type == "cuda" else None)
           if info.distributed else model)
    items = tokens.items("train")
    if not items:
        raise UsageError(f"{tokens_dir} has no train items")
    end = config.steps if max_steps is None else min(config.steps, progress.step + max(0, max_steps))
    resumed_from = progress.step if resume is not None else None
    run.log({"kind": "start", "step": progress.step, "total_steps": config.steps, "end_step": end,
             "resumed_from": resumed_from, "world_size": info.world_size, "device": str(info.device),
             "parameters": model.num_parameters(), "layout": lm_config.layout, "train_items": len(items),
             "codec": f"{lm_config.codec_name}@{lm_config.codec_hash}"})
    run_loop(_LMTask(config, info, model, ddp, optimizer, tokens, items), config, info, run, progress, end, stop)
    best = progress.best
    return LMTrainResult(run_dir=run.path, step=progress.step, total_steps=config.steps,
                         finished=progress.step >= config.steps, stopped=progress.stopped, resumed_from=resumed_from,
                         best_step=None if best is None else best["step"],
                         best_loss=None if best is None else best["nll"],
                         export_dir=run.export_dir if info.is_main else None, last_eval=progress.last_eval)


class _LMTask:
    """The LM's part of the training loop (``train.loop.Task``): next-token cross-entropy on windows
    drawn as a pure function of (seed, step, rank, row), tokens per second in the train records,
    validation NLL per level."""

    best_key = "nll"

    def __init__(self, cfg: LMTrainConfig, info: DistInfo, model: PyramidLM, ddp: torch.nn.Module,
                 optimizer: torch.optim.Optimizer, tokens: TokenSet, items: Sequence[TokenItem]) -> None:
        self.cfg, self.info, self.model, self.ddp, self.optimizer = cfg, info, model, ddp, optimizer
        self.tokens, self.items = tokens, items
        self.layout = make_layout(model.config)
        self.weights = np.array([i.frames[0] for i in items], dtype=np.float64)
        self.weights /= self.weights.sum()
        self.pad = special_tokens(model.config.codebook_size)["PAD"]
        self.autocast = cfg.bf16 and info.device.type == "cuda"
        self.window_tokens = 0  # target tokens since the last train record

    def train_step(self, step: int) -> dict[str, torch.Tensor]:
        cfg, info = self.cfg, self.info
        rngs = [window_rng(cfg.seed, step, info.rank, row) for row in range(cfg.batch_size)]
        batch = collate(sample_windows(self.layout, self.items, self.weights, rngs), self.pad)
        batch = {k: v.to(info.device, non_blocking=True) for k, v in batch.items()}
        loss, per_level = window_loss(self.ddp, batch, self.model.config.n_levels, self.autocast)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip or float("inf"))
        self.optimizer.step()
        self.window_tokens += sum(n for _, n in per_level)
        return {"loss": loss.detach(), "grad_norm": grad_norm,
                **{f"loss_l{i}": torch.tensor(s / n) for i, (s, n) in enumerate(per_level) if n}}

    def after_step(self, step: int) -> None:
        pass

    def record_fields(self, rate: float, seconds: float) -> tuple[dict[str, Any], dict[str, Any]]:
        tokens, self.window_tokens = self.window_tokens, 0
        return {}, {"tokens_per_s": tokens / max(seconds, 1e-9) * self.info.world_size}

    def evaluate(self, step: int) -> dict[str, Any] | None:
        if "valid" not in self.tokens.splits():
            return None
        return {"kind": "eval", "step": step,
                **evaluate_lm(self.model, self.tokens, "valid", self.cfg.eval_windows, batch_size=16)}

    def checkpoint_state(self, step: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return {}, {}
