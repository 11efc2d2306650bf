"""The per-token decode step at fixed shapes, and the fast paths built on it: reduced precision
(autocast) and ``torch.compile`` (with CUDA graphs on a GPU).

Cached generation spends nearly all its time feeding one token at a time. ``DecodeStep`` does that
with the same tensor shapes at every step of a piece: the key/value cache is allocated for the
whole piece up front, the step number is a tensor rather than a Python int, and the cache slots a
query may see (its layout ranges, of varying count) are padded to the widest count of the piece
and masked. Nothing about a step's shapes then depends on where in the piece it is, so the step
can be compiled once and replayed (``torch.compile``; ``mode="reduce-overhead"`` on CUDA captures
it as a CUDA graph, as gpt-fast does). The eager step is the plain path, so the compiled one is
checked against exactly the computation it replaces.

Reduced precision runs the LM's forward under ``torch.autocast`` (matrix products in bf16/fp16,
layer norms and softmax kept in float32, as autocast decides) and keeps the cache in that dtype,
halving its memory; sampling always reads float32 logits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pyramid_cli.errors import DependencyError, UsageError
from pyramid_cli.lm.layout import TokenSequence, padded_key_slots
from pyramid_cli.lm.model import KVCache, PyramidLM
from pyramid_cli.runtime.threads import SAMPLING_THREADS

DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

StepFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _cuda_bf16(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def resolve_dtype(name: str, device: torch.device | str) -> torch.dtype:
    """The compute dtype ``name`` means on ``device``.

    ``auto`` is bfloat16 on a CUDA GPU that supports it (Ampere and later) and float32 elsewhere:
    the CPU's bf16 matrix products are slower than float32 ones on most CPUs, and float16 can
    overflow in a model trained in float32. Explicit ``bfloat16`` works on the CPU and on CUDA
    GPUs that support it; ``float16`` on CUDA only (CPU autocast in float16 is slow or missing).

    Raises:
        UsageError: an unknown name, or a dtype this device cannot run.
    """
    device = torch.device(device)
    if name not in DTYPE_CHOICES:
        raise UsageError(f"dtype must be one of {', '.join(DTYPE_CHOICES)}, got {name!r}", option="dtype")
    if name == "auto":
        return torch.bfloat16 if _cuda_bf16(device) else torch.float32
    dtype = _DTYPES[name]
    if dtype == torch.float32:
        return dtype
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"dtype {name}: reduced precision runs on cpu and cuda, not {device.type}; "
                         "use float32", option="dtype")
    if dtype == torch.float16 and device.type != "cuda":
        raise UsageError("dtype float16 needs a CUDA device; on the CPU use bfloat16 or float32", option="dtype")
    if dtype == torch.bfloat16 and device.type == "cuda" and not _cuda_bf16(device):
        raise UsageError(f"dtype bfloat16: {device} has no bfloat16 support; use float16 or float32", option="dtype")
    return dtype


@dataclass(frozen=True)
class DecodeSettings:
    """How the LM runs during generation; none of it changes what is sampled beyond rounding.

    Attributes:
        dtype: one of ``DTYPE_CHOICES`` (see ``resolve_dtype``).
        compile: ``torch.compile`` the per-token step (CUDA: ``mode="reduce-overhead"``, i.e.
            CUDA graphs). Compilation takes tens of seconds on first use in a process.
        threads: CPU threads while sampling (``pyramid_cli.runtime.threads``: one by default, measured
            fastest idle and 4x faster than two with another process busy); None = as set.
    """

    dtype: str = "auto"
    compile: bool = False
    threads: int | None = SAMPLING_THREADS

    def __post_init__(self) -> None:
        if self.dtype not in DTYPE_CHOICES:
            raise UsageError(f"dtype must be one of {', '.join(DTYPE_CHOICES)}, got {self.dtype!r}", option="dtype")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"threads must be at least 1, got {self.threads}")

    def resolve(self, device: torch.device | str) -> torch.dtype:
        """The compute dtype on ``device``; UsageError where that device cannot run it or compile."""
        device = torch.device(device)
        if self.compile and device.type not in ("cpu", "cuda"):
            raise UsageError(f"compile supports cpu and cuda devices, not {device.type}", option="compile")
        return resolve_dtype(self.dtype, device)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager[object]:
    """Autocast to ``dtype`` on ``device``; nothing at all for float32 (the plain path untouched)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def slot_width(plan: TokenSequence, length: int) -> int:
    """The most cache slots any of the first ``length`` queries of ``plan`` may attend to."""
    ranges = plan.ranges[:length]
    counts = (ranges[:, 1] - ranges[:, 0]) + np.maximum(ranges[:, 3] - ranges[:, 2], 0)
    return max(1, int(counts.max()))


class DecodeStep(nn.Module):
    """One token through the LM with the same shapes at every step of a piece.

    The cache and the plan's positions, streams and ranges are buffers, so a compiled step treats
    them as fixed addresses (what CUDA graphs need) and writes the cache in place.
    """

    positions: torch.Tensor
    streams: torch.Tensor
    ranges: torch.Tensor
    offsets: torch.Tensor

    def __init__(self, model: PyramidLM, cache: KVCache, plan: TokenSequence, length: int,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        device = cache.keys[0].device
        self.model = model
        self.codebook_size = model.config.codebook_size
        self.dtype = dtype
        self.n_layer = len(cache.keys)
        for layer, (keys, values) in enumerate(zip(cache.keys, cache.values, strict=True)):
            self.register_buffer(f"keys_{layer}", keys, persistent=False)
            self.register_buffer(f"values_{layer}", values, persistent=False)
        for name in ("positions", "streams", "ranges"):
            self.register_buffer(name, torch.from_numpy(np.ascontiguousarray(getattr(plan, name)[:length]))
                                 .to(device), persistent=False)
        self.register_buffer("offsets", torch.arange(slot_width(plan, length), device=device), persistent=False)

    def forward(self, token: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Feed ``token`` (B, 1) at slot ``index`` (1,); returns float32 code logits (B, codebook_size)
        for the token after it."""
        slots, visible = padded_key_slots(self.ranges[index][0], self.offsets, index)
        cache = KVCache([getattr(self, f"keys_{i}") for i in range(self.n_layer)],
                        [getattr(self, f"values_{i}") for i in range(self.n_layer)])
        with autocast(index.device, self.dtype):
            logits, _ = self.model(token, self.positions[index], self.streams[index], mask=visible[None],
                                   cache=cache, start=index, key_slots=slots)
        return logits[:, -1, :self.codebook_size].float()


class CompiledStep:
    """``torch.compile`` of a ``DecodeStep``; a compilation failure becomes a one-line error."""

    def __init__(self, step: DecodeStep) -> None:
        self.cuda = step.offsets.device.type == "cuda"
        # CUDA: replay the step as a CUDA graph (its launch overhead dominates a small model's
        # step). CPU: the default mode; inductor fuses the step's many small kernels.
        mode = "reduce-overhead" if self.cuda else None
        self.compiled: StepFunction = torch.compile(step, mode=mode, fullgraph=True, dynamic=False)
        self.checked = False

    def __call__(self, token: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        if self.cuda:
            # Each call is a new step: lets the CUDA-graph runtime reuse the previous step's output
            # memory (the caller has consumed those logits by now).
            torch.compiler.cudagraph_mark_step_begin()
        if self.checked:
            return self.compiled(token, index)
        try:
            logits = self.compiled(token, index)
        except Exception as exc:  # inductor / dynamo raise many types; the cause is kept in the chain
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise DependencyError(f"torch.compile of the decode step failed ({first_line[:300]}); "
                                  "run it uncompiled") from exc
        self.checked = True
        return logits


def make_step(model: PyramidLM, cache: KVCache, plan: TokenSequence, length: int, settings: DecodeSettings,
              dtype: torch.dtype) -> StepFunction:
    """The decode step ``generate`` calls: eager, or compiled when ``settings.compile``."""
    step = DecodeStep(model, cache, plan, length, dtype)
    return CompiledStep(step) if settings.compile else step
