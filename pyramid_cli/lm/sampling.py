"""Sampling: temperature, top-k and top-p filters, and cached generation over a layout.

``generate`` walks a laid-out piece (``TokenSequence`` with -1 for unknown tokens) from left to
right. Runs of known tokens (BOS, SEP, a prompt's codes) are fed in one forward pass; each unknown
token is sampled from the logits of the token before it and fed next. Keys and values go into a
``KVCache`` slot per token, and every query reads only the slots its layout ranges allow, so no
step recomputes the prefix and a step's cost does not grow with the length of the piece.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from pyramid_cli.errors import UsageError
from pyramid_cli.lm.layout import TokenSequence
from pyramid_cli.lm.model import KVCache, PyramidLM

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
        if self.temperature < 0:
            raise UsageError(f"--temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 0:
            raise UsageError(f"--top-k must be >= 0 (0 = off), got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise UsageError(f"--top-p must be in (0, 1], got {self.top_p}")


def _slots(ranges: np.ndarray) -> np.ndarray:
    """Cache slots one query may attend to: the union of its two ranges."""
    return np.concatenate([np.arange(ranges[0], ranges[1]), np.arange(ranges[2], ranges[3])])


def _chunk_mask(ranges: np.ndarray, low: int, high: int) -> torch.Tensor:
    """(T, high-low) bool mask of a chunk of queries against slots low:high."""
    j = torch.arange(low, high)[None, :]
    r = torch.from_numpy(ranges)
    return ((j >= r[:, :1]) & (j < r[:, 1:2])) | ((j >= r[:, 2:3]) & (j < r[:, 3:4]))


@torch.inference_mode()
def generate(model: PyramidLM, plan: TokenSequence, *, num_samples: int = 1,
             sampling: SamplingSettings | None = None, generator: torch.Generator | None = None,
             stop: int | None = None, on_progress: ProgressCallback | None = None) -> np.ndarray:
    """Fill the unknown tokens of ``plan``; returns (num_samples, L) token ids (-1 left after ``stop``).

    Args:
        plan: a layout's ``piece``, with -1 where tokens are to be sampled; token 0 must be known.
        stop: generate only tokens before this index (e.g. the end of the coarse levels).
        generator: drives every random draw (same seed, settings and device ⇒ same tokens).
    """
    sampling = sampling or SamplingSettings()
    device = next(model.parameters()).device
    length = len(plan) if stop is None else min(stop, len(plan))
    if length == 0 or plan.tokens[0] < 0:
        raise UsageError("a generation plan must start with a known token (BOS or a prompt)")
    tokens = np.tile(plan.tokens[:length], (num_samples, 1))
    known = tokens[0] >= 0
    to_generate = int((~known).sum())
    positions = torch.from_numpy(plan.positions[:length]).to(device)
    streams = torch.from_numpy(plan.streams[:length]).to(device)
    codebook_size = model.config.codebook_size
    cache = KVCache.empty(model.config, num_samples, length, device=device)
    done, start = 0, 0
    while start < length:
        end = start + 1
        while end < length and known[end]:
            end += 1
        chunk = torch.from_numpy(tokens[:, start:end]).to(device)
        ranges = plan.ranges[start:end]
        if end - start == 1:
            slots = torch.from_numpy(_slots(ranges[0])).to(device)
            mask = None
        else:
            low = int(min(ranges[:, 0].min(), np.where(ranges[:, 3] > ranges[:, 2], ranges[:, 2], end).min()))
            slots = torch.arange(low, end, device=device)
            mask = _chunk_mask(ranges, low, end).to(device)
        logits, cache = model(chunk, positions[start:end], streams[start:end], mask=mask, cache=cache,
                              start=start, key_slots=slots)
        if end == length:
            break
        # The next token is a code of a known level: the special tokens are laid out, never sampled.
        next_token = sample_next(logits[:, -1, :codebook_size], sampling.temperature, sampling.top_k,
                                 sampling.top_p, generator)
        tokens[:, end] = next_token.cpu().numpy()
        known[end] = True
        done += 1
        if on_progress is not None:
            on_progress(done, to_generate, int(plan.level[end]))
        start = end
    if length < len(plan):
        tokens = np.concatenate([tokens, np.full((num_samples, len(plan) - length), -1, np.int64)], axis=1)
    return tokens
