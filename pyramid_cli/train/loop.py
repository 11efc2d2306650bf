"""The one training loop: schedule, logging, evaluation, checkpoints and resumption, for every trainer.

A trainer (``train.codec``, ``train.lm``) builds its model, optimizer and data, and hands the loop a
``Task``: one optimisation step, and an evaluation. The loop owns everything else, the same way for
both: the learning rate of each step, the stop request, the ``train`` records of ``metrics.jsonl``
(window means, speed, elapsed time and ETA, a NaN check), evaluation every ``eval_every`` steps and
the best checkpoint it picks, checkpoints every ``checkpoint_every`` steps and at the end, and the
export. A checkpoint holds every rank's torch generator and is written only after the DDP replicas
were checked to agree, so a resumed multi-process run continues each rank's random stream (dropout,
quantizer dropout) exactly where it stopped.

A run folder: ``config.json`` (the resolved settings), ``metrics.jsonl`` (one record a line),
``checkpoints/`` (``pyramid_cli.train.checkpoint``) and ``export/`` (fp16 weights ready to load).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist

from pyramid_cli.data.manifest import append_jsonl, read_jsonl, write_jsonl
from pyramid_cli.errors import PyramidError
from pyramid_cli.train.checkpoint import LoadedState, load_training_state, save_training_state, step_dir_name
from pyramid_cli.train.common import (
    DistInfo,
    RunningMeans,
    any_rank,
    check_replicas_in_sync,
    gather_tensor,
    seed_everything,
)
from pyramid_cli.train.config import TrainSettings

LogCallback = Callable[[dict[str, Any]], None]


class Task(Protocol):
    """What a trainer supplies to ``run_loop``.

    ``model`` is the bare model (not its DDP wrapper): it is checkpointed, exported and compared
    across replicas. ``best_key`` names the field of an evaluation record that picks the best
    checkpoint (lower is better).
    """

    optimizer: torch.optim.Optimizer
    best_key: str

    @property
    def model(self) -> torch.nn.Module:
        """The bare model, with ``config`` and ``save_pretrained`` (``PyramidCodec``, ``PyramidLM``)."""
        ...

    def train_step(self, step: int) -> dict[str, torch.Tensor]:
        """One optimisation step at 0-based ``step`` (the learning rate is already set); returns the
        values averaged over the logging window."""
        ...

    def after_step(self, step: int) -> None:
        """Periodic work after ``step`` steps are done (the codec reseeds dead codes)."""
        ...

    def record_fields(self, rate: float, seconds: float) -> tuple[dict[str, Any], dict[str, Any]]:
        """Extra fields of a ``train`` record: (before the means, after the means); ``rate`` is steps
        per second over the window of ``seconds``. Also ends the task's own window."""
        ...

    def evaluate(self, step: int) -> dict[str, Any] | None:
        """On rank 0: an ``eval`` record, or None when there is nothing to evaluate on."""
        ...

    def checkpoint_state(self, step: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Extra tensors and JSON state for the checkpoint at ``step`` (every rank calls it)."""
        ...


class RunFolder:
    """The run folder's files; only rank 0 writes them."""

    def __init__(self, path: Path, info: DistInfo, on_log: LogCallback | None = None) -> None:
        self.path, self.info, self.on_log = path, info, on_log
        self.checkpoints = path / "checkpoints"
        self.export_dir = path / "export"
        self.metrics = path / "metrics.jsonl"

    def log(self, record: dict[str, Any]) -> None:
        """Append a record to metrics.jsonl and pass it to ``on_log`` (rank 0 only)."""
        if self.info.is_main:
            append_jsonl(self.metrics, record)
            if self.on_log is not None:
                self.on_log(record)

    def forget_after(self, step: int) -> None:
        """Drop the records of steps after ``step`` (a resumed run is about to redo them)."""
        if self.info.is_main:
            write_jsonl(self.metrics, [r for r in read_jsonl(self.metrics) if r.get("step", 0) <= step])


# ---- every rank's random state ----------------------------------------------------------------------


def rank_rng_tensors(info: DistInfo) -> dict[str, torch.Tensor]:
    """Torch generator states of ranks 1.. (rank 0's are saved by save_training_state itself).
    A collective: every rank calls it."""
    tensors: dict[str, torch.Tensor] = {}
    for rank, state in enumerate(gather_tensor(torch.get_rng_state(), info)):
        if rank:
            tensors[f"rng.rank{rank}.torch"] = state
    if info.device.type == "cuda":
        for rank, state in enumerate(gather_tensor(torch.cuda.get_rng_state(info.device), info)):
            if rank:
                tensors[f"rng.rank{rank}.cuda"] = state
    return tensors


def restore_rank_rng(loaded: LoadedState, info: DistInfo, seed: int) -> None:
    """Give ranks 1.. their saved generators (rank 0's are restored by load_training_state).

    A rank the checkpoint has no state for (the run now has more processes) is seeded from
    (seed, step, rank) instead.
    """
    if info.rank == 0:
        return
    key = f"rng.rank{info.rank}."
    if f"{key}torch" not in loaded.tensors:
        seed_everything(seed + 1_000_003 * loaded.step, info.rank)
        return
    torch.set_rng_state(loaded.tensors[f"{key}torch"])
    if info.device.type == "cuda" and f"{key}cuda" in loaded.tensors:
        torch.cuda.set_rng_state(loaded.tensors[f"{key}cuda"], info.device)


def restore(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, info: DistInfo, seed: int,
            run: RunFolder) -> LoadedState:
    """Load a checkpoint into ``model`` and ``optimizer`` with each rank's own random state, and drop
    the metrics records of the steps about to be redone."""
    loaded = load_training_state(folder, model, optimizer, restore_rng=info.rank == 0)
    restore_rank_rng(loaded, info, seed)
    run.forget_after(loaded.step)
    return loaded


# ---- the loop ------------------------------------------------------------------------------------------


@dataclass
class Progress:
    """Where a run stands: the loop carries it and checkpoints record it."""

    step: int = 0
    best: dict[str, Any] | None = None  # {"step": ..., best_key: ...} of the best evaluation
    elapsed: float = 0.0  # training seconds over all calls, evaluation and checkpoints excluded
    last_saved: int | None = None  # the step of the newest checkpoint
    stopped: bool = False  # ``stop()`` ended the loop early
    last_train: dict[str, Any] | None = None  # the newest train record
    last_eval: dict[str, Any] | None = None  # the newest eval record (rank 0)


def save_checkpoint(task: Task, cfg: TrainSettings, info: DistInfo, run: RunFolder, progress: Progress,
                    is_best: bool) -> None:
    """Checkpoint and export at ``progress.step``: every rank takes part (its random state is
    gathered, the replicas are compared), rank 0 writes."""
    step = progress.step
    tensors = rank_rng_tensors(info)
    check_replicas_in_sync(task.model, info)
    extra_tensors, extra_state = task.checkpoint_state(step)
    state = {**extra_state, "best": progress.best, "elapsed_s": progress.elapsed, "world_size": info.world_size}
    path = run.checkpoints / step_dir_name(step)
    model: Any = task.model
    if info.is_main:
        path = save_training_state(run.checkpoints, step, task.model, task.optimizer, state,
                                   {**tensors, **extra_tensors}, model_config=model.config.to_dict(),
                                   keep_last=cfg.keep_last, best=is_best)
        model.save_pretrained(run.export_dir, fp16=True)  # the bare model alone, ready to ship
    progress.last_saved = step
    run.log({"kind": "checkpoint", "step": step, "path": str(path), "best": is_best})


def run_loop(task: Task, cfg: TrainSettings, info: DistInfo, run: RunFolder, progress: Progress, end: int,
             stop: Callable[[], bool] | None = None) -> Progress:
    """Train from ``progress.step`` to ``end`` (see the module docstring); returns the progress made."""
    window = RunningMeans()
    window_start, window_steps = time.perf_counter(), 0
    while progress.step < end:
        if stop is not None and any_rank(stop(), info):
            progress.stopped = True
            break
        lr = cfg.lr_at(progress.step)
        for group in task.optimizer.param_groups:
            group["lr"] = lr
        window.add(task.train_step(progress.step))
        progress.step += 1
        step = progress.step
        window_steps += 1
        task.after_step(step)
        if step % cfg.log_every == 0 or step == end:
            now = time.perf_counter()
            progress.elapsed += now - window_start
            means = window.means()
            if not all(math.isfinite(v) for v in means.values()):
                raise PyramidError(f"training diverged by step {step} (NaN/inf loss); "
                                   "lower the learning rate and resume")
            rate = window_steps / max(now - window_start, 1e-9)
            before, after = task.record_fields(rate, now - window_start)
            progress.last_train = {"kind": "train", "step": step, "lr": lr, **before, **means, "steps_per_s": rate,
                                   **after, "elapsed_s": progress.elapsed,
                                   "eta_s": (cfg.steps - step) / max(rate, 1e-9)}
            run.log(progress.last_train)
            window_start, window_steps = time.perf_counter(), 0
        new_best = False
        if cfg.eval_every and step % cfg.eval_every == 0:
            record = task.evaluate(step) if info.is_main else None
            if record is not None:
                progress.last_eval = record
                run.log(record)
                score = record[task.best_key]
                new_best = progress.best is None or score < progress.best[task.best_key]
                progress.best = {"step": step, task.best_key: score} if new_best else progress.best
            new_best = any_rank(new_best, info)  # every rank takes part in saving
        if new_best or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
            save_checkpoint(task, cfg, info, run, progress, new_best)
    if progress.last_saved != progress.step:
        save_checkpoint(task, cfg, info, run, progress, False)
    if info.distributed:
        dist.barrier()
    return progress
