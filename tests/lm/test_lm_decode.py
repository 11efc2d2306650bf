"""Fast paths of generation against the plain path: the fixed-shape decode step, reduced precision
(autocast) and the compiled step. Tolerances are stated with each test.

CUDA paths (bfloat16/float16 autocast on a GPU, ``mode="reduce-overhead"`` CUDA graphs) are not
exercised here: these tests run on the CPU; only the dtype rules for CUDA are checked, with a
patched ``torch.cuda``.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from pyramid_cli.errors import DependencyError, UsageError
from pyramid_cli.lm.config import tiny
from pyramid_cli.lm.decode import DecodeSettings, DecodeStep, resolve_dtype, slot_width
from pyramid_cli.lm.layout import TokenSequence, key_mask, make_layout
from pyramid_cli.lm.model import KVCache, PyramidLM
from pyramid_cli.lm.sampling import SamplingSettings, generate, sample_next

SMALL = replace(tiny(), codebook_size=32, coarse_window=5, detail_window=3, detail_lookback=2, detail_lookahead=1,
                train_detail_frames=4, flat_window=20)


def model_for(layout: str, **changes) -> PyramidLM:
    torch.manual_seed(0)
    return PyramidLM(replace(SMALL, layout=layout, **changes)).eval()


def teacher_tokens(plan: TokenSequence, codebook_size: int) -> np.ndarray:
    """The plan with every unknown code filled by a fixed pattern."""
    return np.where(plan.tokens < 0, (np.arange(len(plan)) * 7) % codebook_size, plan.tokens)


@torch.inference_mode()
def step_logits(model: PyramidLM, plan: TokenSequence, tokens: np.ndarray, steps: int,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(steps, codebook_size) logits of the fixed-shape step fed ``tokens`` one at a time."""
    cache = KVCache.empty(model.config, 1, len(plan), dtype=dtype)
    step = DecodeStep(model, cache, plan, len(plan), dtype)
    return torch.stack([step(torch.tensor([[tokens[i]]]), torch.tensor([i]))[0] for i in range(steps)])


@torch.inference_mode()
def reference_generate(model: PyramidLM, plan: TokenSequence, sampling: SamplingSettings,
                       generator: torch.Generator | None = None) -> np.ndarray:
    """The cached sampler as it was before the fixed-shape step: each step reads exactly its own
    slots (a varying count), nothing padded or masked. The plain path must sample what this does."""
    length = len(plan)
    tokens = plan.tokens[None].copy()
    known = tokens[0] >= 0
    cache = KVCache.empty(model.config, 1, length)
    positions, streams = torch.from_numpy(plan.positions), torch.from_numpy(plan.streams)
    start = 0
    while start < length:
        end = start + 1
        while end < length and known[end]:
            end += 1
        r = plan.ranges[start:end]
        if end - start == 1:
            slots = torch.from_numpy(np.concatenate([np.arange(r[0, 0], r[0, 1]), np.arange(r[0, 2], r[0, 3])]))
            mask = None
        else:
            slots = torch.arange(0, end)
            mask = key_mask(r, slots)
        logits, cache = model(torch.from_numpy(tokens[:, start:end]), positions[start:end], streams[start:end],
                              mask=mask, cache=cache, start=start, key_slots=slots)
        if end == length:
            break
        tokens[:, end] = sample_next(logits[:, -1, :model.config.codebook_size], sampling.temperature,
                                     sampling.top_k, sampling.top_p, generator).numpy()
        known[end] = True
        start = end
    return tokens


@pytest.mark.parametrize("layout", ["time_aligned", "flat"])
def test_fixed_shape_step_equals_full_forward(layout: str):
    """Padding every step to the piece's widest slot count and masking the padding changes the
    float32 logits by rounding only: within 1e-5 of a full forward pass with the dense mask."""
    model = model_for(layout)
    plan = make_layout(model.config).piece(9)
    tokens = teacher_tokens(plan, 32)
    assert slot_width(plan, len(plan)) < len(plan), "the fixed width is the layout's window, not the piece"
    ours = step_logits(model, plan, tokens, len(plan))
    with torch.inference_mode():
        full, _ = model(torch.from_numpy(tokens)[None], torch.from_numpy(plan.positions),
                        torch.from_numpy(plan.streams), mask=plan.attention_mask())
    torch.testing.assert_close(ours, full[0, :, :32], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", ["time_aligned", "flat"])
def test_float32_plain_path_samples_what_the_variable_slot_sampler_did(layout: str):
    """float32 output is unchanged by the fixed-shape step: the same seed samples the same tokens
    as the per-step-width sampler it replaced, and ``auto`` is float32 on the CPU."""
    model = model_for(layout)
    plan = make_layout(model.config).piece(9)
    settings = SamplingSettings(temperature=1.0, top_k=10)
    expected = reference_generate(model, plan, settings, torch.Generator().manual_seed(5))
    for decode in (None, DecodeSettings(dtype="float32"), DecodeSettings(dtype="auto")):
        got = generate(model, plan, sampling=settings, generator=torch.Generator().manual_seed(5), decode=decode)
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("layout", ["time_aligned", "flat"])
def test_bfloat16_on_cpu_stays_close_to_float32(layout: str):
    """bfloat16 autocast on the CPU runs, keeps its cache in bfloat16, and its logits over the first
    steps stay within 0.01 * (1 + max |float32 logit|) of float32 (bfloat16 keeps 8 significant
    bits: about 0.4% per rounding); its next-token probabilities within 0.01."""
    model = model_for(layout)
    plan = make_layout(model.config).piece(9)
    tokens = teacher_tokens(plan, 32)
    steps = min(40, len(plan))
    exact = step_logits(model, plan, tokens, steps)
    rounded = step_logits(model, plan, tokens, steps, torch.bfloat16)
    assert rounded.dtype == torch.float32, "sampling always reads float32 logits"
    tolerance = 0.01 * (1.0 + exact.abs().max().item())
    assert (rounded - exact).abs().max().item() <= tolerance
    assert (rounded.softmax(-1) - exact.softmax(-1)).abs().max().item() <= 0.01
    assert not torch.equal(rounded, exact), "autocast really ran in bfloat16"
    out = generate(model, plan, sampling=SamplingSettings(temperature=0), decode=DecodeSettings(dtype="bfloat16"))
    assert out.shape == (1, len(plan)) and (out[0, plan.level >= 0] >= 0).all() and (out < 32 + 4).all()


def test_dtype_rules():
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("float32", cpu) == torch.float32
    assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    with pytest.raises(UsageError, match="float16 needs a CUDA device"):
        resolve_dtype("float16", cpu)
    with pytest.raises(UsageError, match="dtype must be one of auto, float32, bfloat16, float16, got 'half'"):
        resolve_dtype("half", cpu)
    with pytest.raises(UsageError, match="dtype must be one of"):
        DecodeSettings(dtype="float64")
    mps = torch.device("mps")
    assert resolve_dtype("auto", mps) == torch.float32
    with pytest.raises(UsageError, match="reduced precision runs on cpu and cuda"):
        resolve_dtype("bfloat16", mps)
    with pytest.raises(UsageError, match="compile supports cpu and cuda"):
        DecodeSettings(compile=True).resolve(mps)
    assert DecodeSettings(compile=True).resolve(cpu) == torch.float32


@pytest.mark.parametrize("bf16", [True, False])
def test_dtype_rules_on_cuda(monkeypatch: pytest.MonkeyPatch, bf16: bool):
    """auto is bfloat16 on a GPU that has it and float32 on one that has not (float16 only when asked)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    cuda = torch.device("cuda", 0)
    assert resolve_dtype("auto", cuda) == (torch.bfloat16 if bf16 else torch.float32)
    assert resolve_dtype("float16", cuda) == torch.float16
    assert resolve_dtype("float32", cuda) == torch.float32
    if bf16:
        assert resolve_dtype("bfloat16", cuda) == torch.bfloat16
    else:
        with pytest.raises(UsageError, match="no bfloat16 support"):
            resolve_dtype("bfloat16", cuda)


@pytest.mark.slow  # compiling takes about 20 s on a 2-core machine
def test_compiled_step_gives_the_plain_greedy_tokens():
    """torch.compile of the step (CPU: inductor's default mode) picks the same greedy tokens as the
    eager step, and the same seeded samples; logits agree within 1e-4 (fused kernels round differently)."""
    model = model_for("time_aligned")
    plan = make_layout(model.config).piece(9)
    greedy = SamplingSettings(temperature=0)
    compiled = generate(model, plan, sampling=greedy, decode=DecodeSettings(dtype="float32", compile=True))
    np.testing.assert_array_equal(compiled, generate(model, plan, sampling=greedy))
    settings = SamplingSettings(temperature=1.0, top_k=10)
    sampled = [generate(model, plan, sampling=settings, generator=torch.Generator().manual_seed(3),
                        decode=DecodeSettings(compile=flag)) for flag in (False, True)]
    np.testing.assert_array_equal(sampled[0], sampled[1])
    tokens = torch.from_numpy(teacher_tokens(plan, 32))
    with torch.inference_mode():
        eager = DecodeStep(model, KVCache.empty(model.config, 1, len(plan)), plan, len(plan))
        fast = torch.compile(DecodeStep(model, KVCache.empty(model.config, 1, len(plan)), plan, len(plan)),
                             fullgraph=True, dynamic=False)
        for i in range(len(plan)):
            index = torch.tensor([i])
            torch.testing.assert_close(fast(tokens[None, i:i + 1], index), eager(tokens[None, i:i + 1], index),
                                       atol=1e-4, rtol=1e-4)


def test_a_failing_compilation_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch):
    """Without a working compiler (no C++ toolchain, no Triton) --compile fails with a message that
    says what to do, not a traceback from inside inductor."""

    def broken(*args, **kwargs):
        def run(*a, **k):
            raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found\nlong details")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    model = model_for("time_aligned")
    plan = make_layout(model.config).piece(3)
    with pytest.raises(DependencyError, match=r"torch.compile of the decode step failed \(InvalidCxxCompiler: no "
                                              r"working C\+\+ compiler found\); run it uncompiled"):
        generate(model, plan, sampling=SamplingSettings(temperature=0), decode=DecodeSettings(compile=True))


@pytest.mark.slow  # compiles the step of a tiny preset
def test_bench_times_the_compiled_step_and_checks_its_tokens():
    from pyramid_cli.bench.lm import measure_lm

    result = measure_lm(2.0, model="tiny", naive_tokens=4, threads=1, compile=True)
    assert result.dtype == "float32" and result.compiled_same_tokens is True
    assert result.compiled_seconds is not None and result.compiled_first_seconds is not None
    assert result.compiled_tokens_per_second == pytest.approx(result.tokens / result.compiled_seconds)
    assert result.compiled_first_seconds > result.compiled_seconds, "the first compiled run pays for compilation"
