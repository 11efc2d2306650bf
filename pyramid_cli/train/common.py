"""What every training loop shares: DDP set-up from torchrun, unwrapping, LR schedules, seeding,
``--set key=value`` overrides and a few collectives.

Multi-GPU runs use plain ``torchrun`` (no Dora/Hydra launcher: those cause most AudioCraft
training complaints): torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT,
and ``setup_distributed`` reads them. NCCL on CUDA, gloo on the CPU.
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from pyramid_cli.errors import UsageError
from pyramid_cli.runtime.devices import resolve_device

SCHEDULES = ("exponential", "cosine", "constant")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in a (possibly single-process) run."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool  # this process created the process group and must destroy it

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes files and reports metrics."""
        return self.rank == 0


def training_device(name: str, local_rank: int = 0, distributed: bool = False) -> torch.device:
    """``pyramid_cli.runtime.devices.resolve_device``, except that under torchrun "auto" and "cuda" mean
    cuda:<LOCAL_RANK> (one GPU per process)."""
    device = resolve_device(name)
    if distributed and device.type == "cuda" and name.strip().lower() in ("auto", "cuda"):
        device = torch.device("cuda", local_rank)
    return device


def setup_distributed(device: str = "auto") -> DistInfo:
    """Join the torchrun process group when WORLD_SIZE > 1, else describe a single process.

    A group that the caller already initialised (e.g. tests with ``mp.spawn``) is reused.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if dist.is_available() and dist.is_initialized():
        world_size = dist.get_world_size()
    if world_size <= 1:
        return DistInfo(0, 1, 0, training_device(device), owns_group=False)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = training_device(device, local_rank, distributed=True)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)  # NCCL binds each rank to its current device
        dist.init_process_group(backend=backend)
        owns = True
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, resolved, owns_group=owns)


def teardown_distributed(info: DistInfo) -> None:
    """Destroy the process group if ``setup_distributed`` created it."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed torch, Python and NumPy from an explicit seed (offset by rank so ranks differ)."""
    torch.manual_seed(seed + rank)
    random.seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)


def step_generator(seed: int, step: int, salt: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator fixed by (seed, step, salt) alone: identical on every rank and after a resume."""
    mixed = np.random.SeedSequence([seed, step, salt]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(mixed) & (2**63 - 1))


def learning_rate(
    step: int,
    lr: float,
    warmup_steps: int = 0,
    schedule: str = "exponential",
    total_steps: int = 1,
    decay: float = 0.999996,
    min_ratio: float = 0.0,
) -> float:
    """Learning rate of optimisation step ``step`` (0-based): linear warm-up, then the schedule.

    "exponential": lr * decay**(step - warmup) (DAC uses decay 0.999996 per step) — does not
    depend on ``total_steps``, so extending a run never changes the steps already taken.
    "cosine": from lr down to min_ratio * lr at ``total_steps``. "constant": lr.
    """
    if schedule not in SCHEDULES:
        raise UsageError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    after = step - warmup_steps
    if schedule == "exponential":
        return lr * decay**after
    if schedule == "cosine":
        progress = min(1.0, after / max(1, total_steps - warmup_steps))
        return lr * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))
    return lr


# ---- config overrides ---------------------------------------------------------------------------


def parse_value(text: str) -> Any:
    """A ``--set`` value: JSON when it parses (numbers, true/false, lists, objects), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(data: dict[str, Any], items: list[str]) -> dict[str, Any]:
    """Apply ``key=value`` items (dotted keys reach into nested dicts) to a copy of ``data``.

    Example: ``apply_overrides(cfg, ["lr=3e-4", "model.latent_dim=64"])``. Unknown keys are left
    for the config's ``from_dict`` to reject, with its list of valid names.
    """
    result = json.loads(json.dumps(data))  # deep copy that also turns tuples into lists
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"set expects key=value, got {item!r}", option="set")
        *parents, leaf = key.strip().split(".")
        node = result
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise UsageError(f"set {key}: {part!r} is not a nested setting", option="set")
            node = node[part]
        node[leaf] = parse_value(value)
    return result


# ---- collectives (no-ops in a single process) ---------------------------------------------------


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank when ``flag`` is true on at least one (e.g. a stop request)."""
    if not info.distributed:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def gather_tensor(tensor: torch.Tensor, info: DistInfo) -> list[torch.Tensor]:
    """Every rank's copy of a same-shaped tensor, rank order, on the CPU (all ranks must call)."""
    if not info.distributed:
        return [tensor.cpu()]
    local = tensor.to(info.device)
    parts = [torch.empty_like(local) for _ in range(info.world_size)]
    dist.all_gather(parts, local)
    return [p.cpu() for p in parts]


def check_replicas_in_sync(model: nn.Module, info: DistInfo) -> None:
    """Raise if DDP replicas drifted apart (e.g. a parameter changed outside the optimizer)."""
    if not info.distributed:
        return
    with torch.no_grad():
        checksum = torch.stack([p.double().sum() for p in model.parameters()]).sum().reshape(1).to(info.device)
        low, high = checksum.clone(), checksum.clone()
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
    if low.item() != high.item():
        raise RuntimeError("DDP replicas hold different weights; this is a bug in the training loop")


class RunningMeans:
    """Means of named scalars over a logging window (values are tensors: no GPU sync per step)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, values: dict[str, torch.Tensor]) -> None:
        for key, value in values.items():
            value = value.detach().float()
            self.sums[key] = self.sums[key] + value if key in self.sums else value
            self.counts[key] = self.counts.get(key, 0) + 1

    def means(self) -> dict[str, float]:
        """The window means as floats (one host sync), then an empty window."""
        result = {key: float(total) / self.counts[key] for key, total in self.sums.items()}
        self.sums, self.counts = {}, {}
        return result
