"""Sampling: temperature, top-k and top-p filters, and cached generation over a layout.

``generate`` walks a laid-out piece (``TokenSequence`` with -1 for unknown tokens) from left to
right. Runs of known tokens (BOS, SEP, a prompt's codes) are fed in one forward pass; each unknown
token is sampled from the logits of the token before it and fed next. Keys and values go into a
``KVCache`` slot per token, and every query reads only the slots its layout ranges allow, so no
step recomputes the prefix and a step's cost does not grow with the length of the piece.

Single tokens go through ``decode.DecodeStep``, whose shapes are the same at every step (cache
allocated for the whole piece, slots padded and masked), so that the step can be compiled or
captured as a CUDA graph (``DecodeSettings``); the eager step is the plain path.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from pyramid_cli.errors import UsageError
from pyramid_cli.lm.decode import DecodeSettings, autocast, make_step
from pyramid_cli.lm.layout import TokenSequence, key_mask
from pyramid_cli.lm.model import KVCache, PyramidLM
from pyramid_cli.runtime.threads import torch_threads

ProgressCallback = Callable[[int, int, int], None]  # (tokens generated, tokens to generate, level of the last)


def top_k_filter(logits: torch.Tensor, k: int | None) -> torch.Tensor:
    """Keep the ``k`` largest logits of the last axis (ties at the k-th kept), -inf elsewhere."""
    if k is None or k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float | None) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of top tokens whose probability reaches ``p``."""
    if p is None or p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    # Drop a token when the tokens ranked above it already reach p (the top one is always kept).
    drop = probs.cumsum(dim=-1) - probs >= p
    drop_unsorted = torch.zeros_like(drop).scatter(-1, order, drop)
    return logits.masked_fill(drop_unsorted, float("-inf"))


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None = None, top_p: float | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, V) logits → (B,) token ids; temperature 0 is greedy."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = top_p_filter(top_k_filter(logits.float() / temperature, top_k), top_p)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


@dataclass(frozen=True)
class SamplingSettings:
    temperature: float = 1.0
    top_k: int | None = 100
    top_p: float | None = None

    def __post_init__(self) -> None:
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise UsageError(f"temperature must be a finite number >= 0, got {self.temperature}", option="temperature")
        if self.top_k is not None and self.top_k < 0:
            raise UsageError(f"top_k must be >= 0 (0 = off), got {self.top_k}", option="top_k")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:  # also refuses NaN
            raise UsageError(f"top_p must be in (0, 1], got {self.top_p}", option="top_p")


@torch.inference_mode()
def generate(model: PyramidLM, plan: TokenSequence, *, num_samples: int = 1,
             sampling: SamplingSettings | None = None, generator: torch.Generator | None = None,
             stop: int | None = None, on_progress: ProgressCallback | None = None,
             decode: DecodeSettings | None = None) -> np.ndarray:
    """Fill the unknown tokens of ``plan``; returns (num_samples, L) token ids (-1 left after ``stop``).

    Args:
        plan: a layout's ``piece``, with -1 where tokens are to be sampled; token 0 must be known.
        stop: generate only tokens before this index (e.g. the end of the coarse levels).
        generator: drives every random draw (same seed, settings and device ⇒ same tokens).
        decode: dtype and compilation of the per-token step (default: ``auto`` dtype, which is
            float32 off CUDA, and no compilation).
    """
    decode = decode or DecodeSettings()
    with torch_threads(decode.threads):
        return _generate(model, plan, num_samples, sampling or SamplingSettings(), generator, stop, on_progress,
                         decode)


def _generate(model: PyramidLM, plan: TokenSequence, num_samples: int, sampling: SamplingSettings,
              generator: torch.Generator | None, stop: int | None, on_progress: ProgressCallback | None,
              decode: DecodeSettings) -> np.ndarray:
    device = next(model.parameters()).device
    dtype = decode.resolve(device)
    length = len(plan) if stop is None else min(stop, len(plan))
    if length == 0 or plan.tokens[0] < 0:
        raise UsageError("a generation plan must start with a known token (BOS or a prompt)")
    known = plan.tokens[:length] >= 0
    to_generate = int((~known).sum())
    # Tokens stay on the device: a sampled token is fed to the next step without a round trip
    # through the host (which would make every step wait for the GPU).
    tokens = torch.from_numpy(np.tile(plan.tokens[:length], (num_samples, 1))).to(device)
    slots = torch.arange(length, device=device)
    positions, streams = slots.new_tensor(plan.positions[:length]), slots.new_tensor(plan.streams[:length])
    codebook_size = model.config.codebook_size
    cache = KVCache.empty(model.config, num_samples, length, device=device, dtype=dtype)
    step = make_step(model, cache, plan, length, decode, dtype)
    done, start = 0, 0
    while start < length:
        end = start + 1
        while end < length and known[end]:
            end += 1
        if end - start == 1:  # one token (sampled, or a lone special): the fixed-shape step
            logits = step(tokens[:, start:end], slots[start:end])
        else:  # a run of known tokens (BOS + prompt, SEP + prompt) in one eager pass
            ranges = plan.ranges[start:end]
            low = int(min(ranges[:, 0].min(), np.where(ranges[:, 3] > ranges[:, 2], ranges[:, 2], end).min()))
            mask = key_mask(ranges, torch.arange(low, end)).to(device)
            with autocast(device, dtype):
                chunk_logits, cache = model(tokens[:, start:end], positions[start:end], streams[start:end], mask=mask,
                                            cache=cache, start=start, key_slots=slots[low:end])
            logits = chunk_logits[:, -1, :codebook_size].float()
        if end == length:
            break
        # The next token is a code of a known level: the special tokens are laid out, never sampled.
        tokens[:, end] = sample_next(logits, sampling.temperature, sampling.top_k, sampling.top_p, generator)
        done += 1
        if on_progress is not None:
            on_progress(done, to_generate, int(plan.level[end]))
        start = end
    out = tokens.cpu().numpy()
    if length < len(plan):
        out = np.concatenate([out, np.full((num_samples, len(plan) - length), -1, np.int64)], axis=1)
    return out
