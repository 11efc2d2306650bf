"""Generation speed of the pyramid LM: KV-cached sampling against naive full-prefix sampling.

The cached sampler (``pyramid_cli.lm.sampling.generate``, what ``pyramid generate`` runs) feeds one
token per step and reads only the cache slots its layout allows. Naive sampling re-runs the model
over the whole prefix for every new token, as nanoGPT's ``sample.py`` does; its step cost grows
with the prefix, so it is timed on tokens re-sampled from the middle of the finished piece, which
gives its average rate over the piece without running it for hours. Both run in the same process
on the same model; speed does not depend on the weights, so a random model of the default size
stands in when no trained LM is installed.

With ``compile=True`` the piece is generated twice more with the compiled decode step (see
``pyramid_cli.lm.decode``): the first run includes compilation, the second is warm; both use the
seed of the plain run, and whether they sampled the same tokens is recorded.
"""

from __future__ import annotations

import contextlib
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch

from pyramid_cli.errors import PyramidError, UsageError
from pyramid_cli.lm.decode import DecodeSettings, autocast, dtype_name
from pyramid_cli.lm.layout import TokenSequence, make_layout
from pyramid_cli.lm.model import PyramidLM
from pyramid_cli.lm.sampling import SamplingSettings, generate, sample_next
from pyramid_cli.runtime.threads import SAMPLING_THREADS

DEFAULT_LM_KEY = "default"
FALLBACK_LM_PRESET = "small"
SAMPLING = SamplingSettings(temperature=1.0, top_k=100)


@dataclass(frozen=True)
class LMResult:
    """Cached and naive generation speed of one LM on one piece."""

    key: str
    name: str
    weights: str  # "trained" or "random"
    parameters: int
    layout: str
    piece_seconds: float  # audio the piece covers
    tokens: int  # tokens sampled by the cached sampler (the layout's special tokens are not sampled)
    cached_seconds: float
    cached_tokens_per_second: float
    realtime_factor: float  # piece seconds / cached wall seconds
    naive_tokens: int
    naive_seconds: float
    naive_tokens_per_second: float
    speedup: float  # cached over naive tokens per second
    threads: int
    device: str
    note: str = ""
    dtype: str = "float32"  # the LM's compute dtype in every run
    # --- compiled decode step (None when not measured) ---
    compiled_first_seconds: float | None = None  # first compiled run, compilation included
    compiled_seconds: float | None = None  # second compiled run (warm)
    compiled_tokens_per_second: float | None = None  # warm
    compiled_first_tokens_per_second: float | None = None  # compilation included
    compiled_same_tokens: bool | None = None  # the compiled runs sampled the plain run's tokens
    # cached sampler while one other process keeps a core busy (CPU only; pyramid_cli.runtime.threads)
    contended_tokens_per_second: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LMResult:
        return cls(**data)


def load_bench_lm(key: str | None, device: torch.device | str = "cpu") -> tuple[PyramidLM, str, str]:
    """(model, weights, note) for ``key``: ``default`` or None (the default LM; a random ``small`` when it
    is not installed), an LM preset (random weights), or a folder / bundled name."""
    from pyramid_cli.hub.registry import DEFAULT_LM
    from pyramid_cli.lm.api import load_lm
    from pyramid_cli.lm.config import PRESETS, preset

    device = torch.device(device)
    note = ""
    if key is None or key == DEFAULT_LM_KEY:
        try:
            return load_lm(DEFAULT_LM, device=device).model.eval(), "trained", ""
        except PyramidError:
            note = (f"the default LM {DEFAULT_LM} is not installed: a random-weight {FALLBACK_LM_PRESET} "
                    "preset (its size) stands in")
            key = FALLBACK_LM_PRESET
    if key in PRESETS:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = PyramidLM(preset(key))
        return model.eval().to(device).requires_grad_(False), "random", note
    return load_lm(key, device=device).model.eval(), "trained", note


def _prefix_mask(plan: TokenSequence, length: int) -> torch.Tensor:
    """(length, length) bool attention mask of the first ``length`` tokens (the layout's pattern)."""
    j = torch.arange(length)[None, :]
    r = torch.from_numpy(plan.ranges[:length])
    return ((j >= r[:, :1]) & (j < r[:, 1:2])) | ((j >= r[:, 2:3]) & (j < r[:, 3:4]))


@torch.inference_mode()
def naive_generate(model: PyramidLM, plan: TokenSequence, tokens: np.ndarray, count: int,
                   generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> tuple[int, float]:
    """Re-sample ``count`` tokens from the middle of a finished piece, each with a full forward pass over
    its whole prefix (under autocast to ``dtype``, as the cached sampler). Returns (tokens sampled, seconds)."""
    device = next(model.parameters()).device
    start = len(tokens) // 2
    stop = min(start + count, len(tokens))
    positions = torch.from_numpy(plan.positions[:stop]).to(device)
    streams = torch.from_numpy(plan.streams[:stop]).to(device)
    mask = _prefix_mask(plan, stop).to(device)
    work = torch.from_numpy(tokens[:stop].copy()).to(device)
    size = model.config.codebook_size
    started = time.perf_counter()
    for i in range(start, stop):
        with autocast(device, dtype):
            logits, _ = model(work[None, :i], positions[:i], streams[:i], mask=mask[:i, :i])
        work[i] = sample_next(logits[:, -1, :size], SAMPLING.temperature, SAMPLING.top_k, None, generator)[0]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return stop - start, time.perf_counter() - started


def _timed_generate(lm: PyramidLM, plan: TokenSequence, decode: DecodeSettings, seed: int,
                    device: torch.device) -> tuple[np.ndarray, float]:
    generator = torch.Generator(device=device).manual_seed(seed)
    started = time.perf_counter()
    tokens = generate(lm, plan, sampling=SAMPLING, generator=generator, decode=decode)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return tokens, time.perf_counter() - started


@contextlib.contextmanager
def busy_process() -> Iterator[None]:
    """Another process spinning on one core for the duration of the block (a user's other job)."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)  # let it start spinning
        yield
    finally:
        spinner.kill()
        spinner.wait()


def measure_lm(seconds: float, *, model: str | None = None, layout: str | None = None, naive_tokens: int = 200,
               device: torch.device | str = "cpu", threads: int | None = None, seed: int = 0,
               dtype: str = "auto", compile: bool = False) -> LMResult:
    """Generate a ``seconds``-long piece with the cached sampler, then time ``naive_tokens`` naive steps.

    Args:
        model: see ``load_bench_lm`` (None: the default LM, else a random ``small``).
        layout: for a random preset, its token layout (``time_aligned`` or ``flat``; default the preset's).
        threads: torch intra-op threads (restored afterwards); None = torch's default.
        dtype: the LM's compute dtype (``auto``: bfloat16 on a CUDA GPU that has it, else float32).
        compile: also time the compiled decode step (first run with compilation, then warm).
    """
    if not (seconds > 0 and math.isfinite(seconds)):
        raise UsageError(f"the piece length must be a positive number of seconds, got {seconds}")
    if naive_tokens < 1:
        raise UsageError(f"the naive sampler needs at least one token, got {naive_tokens}")
    device = torch.device(device)
    plain = DecodeSettings(dtype=dtype, threads=threads or SAMPLING_THREADS)
    compute_dtype = plain.resolve(device)
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        lm, weights, note = load_bench_lm(model, device)
        if layout is not None and layout != lm.config.layout:
            if weights == "trained":
                raise UsageError(f"{lm.config.name} was trained with the {lm.config.layout} layout, not {layout}")
            lm = PyramidLM(replace(lm.config, layout=layout)).eval().to(device).requires_grad_(False)
        config = lm.config
        frames = config.coarse_frames_for(seconds)
        plan = make_layout(config).piece(frames)
        to_sample = int((plan.tokens < 0).sum())
        tokens, cached = _timed_generate(lm, plan, plain, seed, device)
        compiled: dict[str, Any] = {}
        if compile:
            fast = DecodeSettings(dtype=dtype, compile=True, threads=threads or SAMPLING_THREADS)
            first_tokens, first = _timed_generate(lm, plan, fast, seed, device)
            warm_tokens, warm = _timed_generate(lm, plan, fast, seed, device)
            compiled = dict(compiled_first_seconds=first, compiled_seconds=warm,
                            compiled_tokens_per_second=to_sample / max(warm, 1e-9),
                            compiled_first_tokens_per_second=to_sample / max(first, 1e-9),
                            compiled_same_tokens=bool(np.array_equal(first_tokens, tokens)
                                                      and np.array_equal(warm_tokens, tokens)))
        if device.type == "cpu":
            with busy_process():
                _, contended = _timed_generate(lm, plan, plain, seed, device)
            compiled["contended_tokens_per_second"] = to_sample / max(contended, 1e-9)
        generator = torch.Generator(device=device)
        sampled, naive = naive_generate(lm, plan, tokens[0], naive_tokens, generator.manual_seed(seed),
                                        compute_dtype)
        piece = frames / config.coarse_frame_rate
        cached_rate, naive_rate = to_sample / max(cached, 1e-9), sampled / max(naive, 1e-9)
        return LMResult(
            key=model or DEFAULT_LM_KEY, name=config.name, weights=weights, parameters=lm.num_parameters(),
            layout=config.layout, piece_seconds=piece, tokens=to_sample, cached_seconds=cached,
            cached_tokens_per_second=cached_rate, realtime_factor=piece / max(cached, 1e-9), naive_tokens=sampled,
            naive_seconds=naive, naive_tokens_per_second=naive_rate, speedup=cached_rate / max(naive_rate, 1e-9),
            threads=torch.get_num_threads(), device=str(device), note=note, dtype=dtype_name(compute_dtype),
            **compiled,
        )
    finally:
        torch.set_num_threads(previous)
