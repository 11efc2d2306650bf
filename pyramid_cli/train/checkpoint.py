"""Resumable training state without pickle: safetensors for tensors, JSON for everything else.

A checkpoint is one folder, ``<checkpoints>/step-000001200/``:

    config.json           the model config (so the folder loads with ``from_pretrained``)
    model.safetensors     float32 model weights (``state_dict`` keys)
    training.safetensors  optimizer tensors ``optimizer.<param name>.<key>``, RNG states ``rng.*``,
                          non-persistent buffers ``buffer.<name>`` (e.g. codebook usage counts)
    training.json         format + version, step, optimizer hyper-parameters, Python/NumPy RNG
                          states, and whatever the trainer adds (schedule, data position, best)

Crash safety (AudioCraft keeps atomic last-N checkpoints too): the files are written into a hidden
temporary folder which is then renamed to its final name, so a ``step-*`` folder is always
complete; only then is the one-line pointer file ``last`` (and ``best``) replaced atomically. A
crash at any moment leaves the previous pointer on a complete, self-consistent folder.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import safetensors.torch
import torch
from torch import nn

from pyramid_cli.errors import FormatError
from pyramid_cli.runtime.fileio import read_json_object, write_bytes_atomic, write_text_atomic

STATE_FORMAT = "pyramid-training-state"
STATE_VERSION = 1
MODEL_FILE = "model.safetensors"
TENSORS_FILE = "training.safetensors"
STATE_FILE = "training.json"
CONFIG_FILE = "config.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass
class LoadedState:
    """What ``load_training_state`` read: the step, the trainer's JSON state and extra tensors."""

    path: Path
    step: int
    state: dict[str, Any]
    tensors: dict[str, torch.Tensor]  # rng.* and any extra tensors the trainer saved


# ---- optimizer and RNG state as (tensors, JSON) ---------------------------------------------------


def _param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[list[str]]:
    """Per param group, the model names of its parameters (the optimizer only knows positions)."""
    names = {id(p): name for name, p in model.named_parameters()}
    try:
        return [[names[id(p)] for p in group["params"]] for group in optimizer.param_groups]
    except KeyError:
        raise ValueError("the optimizer holds parameters that are not the model's") from None


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Flatten ``optimizer.state_dict()`` into named tensors and a JSON-ready dict."""
    names = [n for group in _param_names(model, optimizer) for n in group]
    full = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in full["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{names[index]}.{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(names[index], {})[key] = value
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items() if k != "params"}
              for g in full["param_groups"]]
    return tensors, {"param_names": _param_names(model, optimizer), "param_groups": groups, "scalars": scalars}


def load_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], meta: dict
) -> None:
    """Inverse of ``optimizer_state``; refuses a checkpoint made for other parameters."""
    groups_names = _param_names(model, optimizer)
    if meta["param_names"] != groups_names:
        raise FormatError("checkpoint optimizer state was saved for different model parameters")
    flat = [n for group in groups_names for n in group]
    state: dict[int, dict[str, Any]] = {}
    for index, name in enumerate(flat):
        entry = dict(meta["scalars"].get(name, {}))
        prefix = f"optimizer.{name}."
        entry.update({k[len(prefix):]: v for k, v in tensors.items()
                      if k.startswith(prefix) and "." not in k[len(prefix):]})
        if entry:
            state[index] = entry
    groups, start = [], 0
    for group, names in zip(meta["param_groups"], groups_names, strict=True):
        # JSON turned tuples (AdamW betas) into lists; give them back their type.
        restored = {k: tuple(v) if isinstance(v, list) else v for k, v in group.items()}
        groups.append({**restored, "params": list(range(start, start + len(names)))})
        start += len(names)
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def rng_state(prefix: str = "rng.") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """This process's RNG states: torch CPU/CUDA as uint8 tensors, Python and NumPy as JSON."""
    tensors = {f"{prefix}torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors.update({f"{prefix}cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    meta = {"python": [version, list(internal), gauss],
            "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]}
    return tensors, meta


def set_rng_state(tensors: Mapping[str, torch.Tensor], meta: dict[str, Any] | None, prefix: str = "rng.") -> None:
    """Restore what ``rng_state`` captured (``meta`` None: torch generators only)."""
    torch.set_rng_state(tensors[f"{prefix}torch"])
    cuda_keys = [k for k in tensors if k.startswith(f"{prefix}cuda.")]
    cuda = [tensors[k] for k in sorted(cuda_keys, key=lambda k: int(k.rsplit(".", 1)[1]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    if meta is not None:
        version, internal, gauss = meta["python"]
        random.setstate((version, tuple(internal), gauss))
        kind, keys, pos, has_gauss, cached = meta["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


# ---- checkpoint folders ---------------------------------------------------------------------------


def step_dir_name(step: int) -> str:
    return f"step-{step:09d}"


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoint folders under ``root``, oldest step first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def _pointer(root: Path, name: str) -> Path | None:
    target = root / name
    if not target.is_file():
        return None
    folder = root / target.read_text(encoding="utf-8").strip()
    return folder if folder.is_dir() and _STEP_DIR.match(folder.name) else None


def latest_checkpoint(root: str | Path) -> Path | None:
    """The folder ``last`` names; if it is missing, the newest complete folder (or None)."""
    root = Path(root)
    found = _pointer(root, "last")
    if found is None:
        folders = list_checkpoints(root)
        found = folders[-1] if folders else None
    return found


def best_checkpoint(root: str | Path) -> Path | None:
    """The folder ``best`` names, or None."""
    return _pointer(Path(root), "best")


def save_training_state(
    root: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    state: dict[str, Any],
    tensors: Mapping[str, torch.Tensor] | None = None,
    model_config: dict[str, Any] | None = None,
    keep_last: int = 3,
    best: bool = False,
) -> Path:
    """Write checkpoint ``root/step-<step>/`` atomically, point ``last`` (and ``best``) at it, prune.

    Args:
        root: the checkpoints folder of a run.
        step: completed optimisation steps.
        model: the unwrapped model (no DDP / compile wrapper: its keys are the bare names).
        optimizer: saved as named tensors + JSON; None for weights only.
        state: JSON-ready trainer state (schedule, data position, best metric, ...).
        tensors: extra tensors to keep (RNG states of every rank, ...).
        model_config: written as config.json (makes the folder a model directory).
        keep_last: newest folders kept besides the one ``best`` names (at least 1).
        best: also point ``best`` at this checkpoint.

    Returns:
        The checkpoint folder.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-step-*"):  # left by a crash mid-save
        shutil.rmtree(stale, ignore_errors=True)
    final = root / step_dir_name(step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    tmp.mkdir()
    weights = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    rng_tensors, rng_meta = rng_state()  # this process's generators; ``tensors`` may add other ranks'
    extra = {k: v.detach().to("cpu").contiguous() for k, v in {**rng_tensors, **(tensors or {})}.items()}
    persistent = set(model.state_dict())
    extra.update({f"buffer.{n}": b.detach().to("cpu").contiguous()
                  for n, b in model.named_buffers() if n not in persistent})
    meta: dict[str, Any] = {"format": STATE_FORMAT, "version": STATE_VERSION, "step": step, "trainer": state,
                            "rng": rng_meta}
    if optimizer is not None:
        opt_tensors, meta["optimizer"] = optimizer_state(model, optimizer)
        extra.update(opt_tensors)
    write_bytes_atomic(tmp / MODEL_FILE, safetensors.torch.save(weights, metadata={"format": "pt"}))
    write_bytes_atomic(tmp / TENSORS_FILE, safetensors.torch.save(extra, metadata={"format": "pt"}))
    if model_config is not None:
        write_text_atomic(tmp / CONFIG_FILE, json.dumps(model_config, indent=2) + "\n")
    write_text_atomic(tmp / STATE_FILE, json.dumps(meta, indent=1) + "\n")  # written last, read first
    if final.exists():  # the same step saved again (e.g. stopped right after a periodic save)
        old = root / f".tmp-step-old-{final.name}-{os.getpid()}"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    write_text_atomic(root / "last", final.name + "\n")
    if best:
        write_text_atomic(root / "best", final.name + "\n")
    keep = set(list_checkpoints(root)[-max(1, keep_last):]) | {final}
    keep |= {p for p in (best_checkpoint(root),) if p is not None}
    for folder in list_checkpoints(root):
        if folder not in keep:
            shutil.rmtree(folder, ignore_errors=True)
    return final


def read_state(folder: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The checked ``training.json`` and ``training.safetensors`` of a checkpoint folder."""
    folder = Path(folder)
    meta = read_json_object(folder / STATE_FILE, "training state")
    try:
        tensors = safetensors.torch.load_file(folder / TENSORS_FILE)
    except OSError as exc:
        raise FormatError(f"{folder}: unreadable training state ({exc})") from exc
    except Exception as exc:  # safetensors' own error types for corrupt files
        raise FormatError(f"{folder}: corrupt {TENSORS_FILE} ({exc})") from exc
    if meta.get("format") != STATE_FORMAT:
        raise FormatError(f"{folder / STATE_FILE}: not a pyramid training state")
    if meta.get("version") != STATE_VERSION:
        raise FormatError(f"{folder / STATE_FILE}: version {meta.get('version')}, this pyramid reads {STATE_VERSION}")
    return meta, tensors


def load_training_state(
    folder: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    restore_rng: bool = True,
) -> LoadedState:
    """Load a checkpoint folder into ``model`` (and ``optimizer``), restoring this process's RNGs.

    Tensors land on the device of the model's parameters. With ``restore_rng`` the torch,
    Python and NumPy generators continue exactly where the saving process left them, so on the
    CPU a resumed run is bit-identical to an uninterrupted one.
    """
    folder = Path(folder)
    meta, tensors = read_state(folder)
    try:
        weights = safetensors.torch.load_file(folder / MODEL_FILE)
        model.load_state_dict(weights, strict=True)
    except (RuntimeError, OSError) as exc:
        raise FormatError(f"{folder / MODEL_FILE}: does not match the model ({exc})") from exc
    buffers = dict(model.named_buffers())
    for key, value in tensors.items():
        if key.startswith("buffer.") and key[7:] in buffers:
            buffers[key[7:]].copy_(value)
    if optimizer is not None:
        if "optimizer" not in meta:
            raise FormatError(f"{folder}: holds no optimizer state")
        load_optimizer_state(model, optimizer, tensors, meta["optimizer"])
    if restore_rng and "rng.torch" in tensors:
        set_rng_state(tensors, meta.get("rng"))
    return LoadedState(path=folder, step=int(meta["step"]), state=meta.get("trainer", {}), tensors=tensors)
