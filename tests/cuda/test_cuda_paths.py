"""The CUDA paths against the plain ones (issue 14): cached generation, bf16 autocast, the compiled
step (CUDA graphs), chunked encoding, training under autocast and `.pyr` files across devices.

Marked ``cuda`` and skipped without a GPU. ``PYRAMID_CUDA_TESTS_ON_CPU=1`` runs them with the CPU
in place of CUDA (what ``tools/gpu_check.py --device cpu`` does), so they are exercised while no GPU
is at hand; the compiled-step test then skips (``tests/lm`` covers the CPU compiler, marked slow).
Tolerances are stated with each test.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from pyramid_cli.codec import CodecConfig, PyramidCodec
from pyramid_cli.codec.api import decode_pyr, encode_waveform, load_codec
from pyramid_cli.codec.inference import encode_audio
from pyramid_cli.hub.registry import DEFAULT_CODEC
from pyramid_cli.lm.config import tiny
from pyramid_cli.lm.decode import DecodeSettings, DecodeStep
from pyramid_cli.lm.layout import TokenSequence, make_layout
from pyramid_cli.lm.model import KVCache, PyramidLM
from pyramid_cli.lm.sampling import SamplingSettings, generate
from pyramid_cli.pyr.file import PyrFile

pytestmark = pytest.mark.cuda

RATE = 22050
SMALL = replace(tiny(), codebook_size=32, coarse_window=5, detail_window=3, detail_lookback=2, detail_lookahead=1,
                train_detail_frames=4, flat_window=20)
TINY_P111 = CodecConfig(name="tiny-p111", encoder_dim=8, latent_dim=16, decoder_dim=32)


@pytest.fixture(scope="module")
def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", 0)
    if os.environ.get("PYRAMID_CUDA_TESTS_ON_CPU") == "1":
        return torch.device("cpu")
    pytest.skip("no CUDA device (PYRAMID_CUDA_TESTS_ON_CPU=1 runs these tests on the CPU)")


def model_for(layout: str, device: torch.device) -> PyramidLM:
    torch.manual_seed(0)
    return PyramidLM(replace(SMALL, layout=layout)).eval().to(device)


def teacher_tokens(plan: TokenSequence, codebook_size: int) -> np.ndarray:
    return np.where(plan.tokens < 0, (np.arange(len(plan)) * 7) % codebook_size, plan.tokens)


@torch.inference_mode()
def step_logits(model: PyramidLM, plan: TokenSequence, tokens: np.ndarray, steps: int,
                dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(steps, codebook_size) float32 logits of the fixed-shape decode step fed ``tokens`` one by one."""
    cache = KVCache.empty(model.config, 1, len(plan), device=device, dtype=dtype)
    step = DecodeStep(model, cache, plan, len(plan), dtype)
    return torch.stack([step(torch.tensor([[tokens[i]]], device=device), torch.tensor([i], device=device))[0]
                        for i in range(steps)])


@pytest.mark.parametrize("layout", ["time_aligned", "flat"])
def test_cached_generation_equals_the_full_forward_pass(device: torch.device, layout: str):
    """Greedy float32 generation with the KV cache picks, at every step, the argmax of one full
    forward pass over the finished sequence with the layout's dense mask."""
    model = model_for(layout, device)
    plan = make_layout(model.config).piece(9)
    tokens = generate(model, plan, sampling=SamplingSettings(temperature=0), decode=DecodeSettings(dtype="float32"))[0]
    with torch.inference_mode():
        logits, _ = model(torch.from_numpy(tokens)[None].to(device), torch.from_numpy(plan.positions).to(device),
                          torch.from_numpy(plan.streams).to(device), mask=plan.attention_mask().to(device))
    sampled = np.where(plan.tokens < 0)[0]
    expected = logits[0, sampled - 1, :SMALL.codebook_size].argmax(-1).cpu().numpy()
    np.testing.assert_array_equal(tokens[sampled], expected)


@pytest.mark.parametrize("layout", ["time_aligned", "flat"])
def test_bfloat16_logits_stay_close_to_float32(device: torch.device, layout: str):
    """bf16 autocast logits within 0.01 * (1 + max |float32 logit|) of float32 (bf16 keeps 8
    significant bits), next-token probabilities within 0.01."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    model = model_for(layout, device)
    plan = make_layout(model.config).piece(9)
    tokens = teacher_tokens(plan, SMALL.codebook_size)
    steps = min(40, len(plan))
    exact = step_logits(model, plan, tokens, steps, torch.float32, device)
    rounded = step_logits(model, plan, tokens, steps, torch.bfloat16, device)
    assert rounded.dtype == torch.float32, "sampling always reads float32 logits"
    assert (rounded - exact).abs().max().item() <= 0.01 * (1.0 + exact.abs().max().item())
    assert (rounded.softmax(-1) - exact.softmax(-1)).abs().max().item() <= 0.01
    assert not torch.equal(rounded, exact), "autocast really ran in bfloat16"


def test_compiled_step_samples_the_plain_steps_tokens(device: torch.device):
    """The compiled step (CUDA: mode reduce-overhead, a CUDA graph) samples the eager step's tokens
    from the same seed in float32. One compilation only (tens of seconds); the GPU check's
    generate-paper-compiled stage runs the bfloat16 one."""
    if device.type != "cuda":
        pytest.skip("compiling takes tens of seconds on a CPU: tests/lm covers it there (marked slow)")
    model = model_for("time_aligned", device)
    plan = make_layout(model.config).piece(9)
    settings = SamplingSettings(temperature=1.0, top_k=10)
    sampled = [generate(model, plan, sampling=settings, generator=torch.Generator(device=device).manual_seed(3),
                        decode=DecodeSettings(dtype="float32", compile=flag)) for flag in (False, True)]
    np.testing.assert_array_equal(sampled[1], sampled[0])


def test_chunked_encode_equals_a_whole_signal_encode(device: torch.device):
    """Chunks with the measured overlap give the whole-signal codes: at most 0.1% of codes may
    flip where cuDNN picks another convolution algorithm for another length (TF32 off)."""
    torch.manual_seed(0)
    model = PyramidCodec(TINY_P111).eval().fold_weight_norm().to(device)
    generator = torch.Generator().manual_seed(1)
    t = torch.arange(4 * RATE + 1234) / RATE
    wav = (0.3 * torch.sin(2 * torch.pi * 330 * t) + 0.1 * torch.randn(len(t), generator=generator))[None]
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True, allow_tf32=False):
        with torch.inference_mode():
            whole = [c[0].cpu() for c in model.encode(wav[None].to(device))]
        for chunk_seconds in (1.1, 2.3):
            codes = encode_audio(model, wav, chunk_seconds=chunk_seconds)
            for level, (chunked, reference) in enumerate(zip(codes, whole, strict=True)):
                assert chunked.shape == reference.shape
                differ = int((chunked.cpu() != reference).sum())
                assert differ <= 0.001 * reference.numel(), f"level {level}: {differ} of {reference.numel()} differ"


def _corpus(root: Path) -> Path:
    records = []
    for k, split in enumerate(("train", "train", "valid")):
        t = np.arange(RATE) / RATE
        wav = 0.3 * np.sin(2 * np.pi * (150 + 90 * k) * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
        rel = f"audio/{split}/{k}.flac"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / rel, wav.astype(np.float32), RATE)
        records.append({"id": str(k), "split": split, "audio": rel, "duration": 1.0, "num_samples": RATE})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


def _finite_train_losses(run: Path) -> list[float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert losses and all(math.isfinite(x) for x in losses), losses
    return losses


def test_training_steps_under_autocast_give_finite_losses(device: torch.device, tmp_path: Path, token_set_writer):
    """A few codec and LM steps with bf16 autocast (on CUDA; the CPU trains in float32) log finite losses."""
    from pyramid_cli.train import CodecTrainConfig, train_codec
    from pyramid_cli.train.config import LMTrainConfig
    from pyramid_cli.train.lm import train_lm

    codec = CodecConfig(name="tiny", encoder_dim=4, encoder_rates=(2, 2), decoder_dim=16, pyramid_rates=(2, 2, 2),
                        latent_dim=16, n_codebooks=(1, 2, 1), codebook_size=32, codebook_dim=4)
    settings = CodecTrainConfig(model=codec.to_dict(), crop_seconds=0.3, batch_size=2, steps=3, warmup_steps=0,
                                eval_every=0, checkpoint_every=0, log_every=1, reseed_dead_codes_every=0,
                                device=str(device), bf16=True, levels_per_step="all")
    train_codec(tmp_path / "codec", settings, _corpus(tmp_path / "corpus"))
    _finite_train_losses(tmp_path / "codec")
    tokens = token_set_writer(tmp_path / "tokens", "tiny-codec", "00ff", {"train": [40, 30]})
    lm = replace(tiny(), n_layer=1, d_model=32, coarse_window=16, train_detail_frames=6, flat_window=48)
    train_lm(tmp_path / "lm", LMTrainConfig(model=lm.to_dict(), batch_size=4, steps=3, warmup_steps=0, eval_every=0,
                                            checkpoint_every=0, log_every=1, device=str(device), bf16=True), tokens)
    _finite_train_losses(tmp_path / "lm")


def _snr_db(reference: np.ndarray, other: np.ndarray) -> float:
    noise = float(np.mean((reference - other) ** 2))
    return math.inf if noise == 0 else 10 * math.log10(float(np.mean(reference**2)) / noise)


def test_pyr_files_cross_devices(device: torch.device):
    """A .pyr made on CUDA decodes on the CPU to what CUDA decodes, within rounding (SNR >= 40 dB;
    cuDNN convolutions may use TF32), and one made on the CPU decodes on CUDA the same way; the
    two devices' codes agree at >= 90% (nearest-codeword ties may flip under rounding)."""
    cpu_codec = load_codec(DEFAULT_CODEC, "cpu")
    dev_codec = load_codec(DEFAULT_CODEC, device)
    t = np.arange(3 * RATE) / RATE
    wav = (0.3 * np.sin(2 * np.pi * 220 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 2 * t))
           + 0.1 * np.sin(2 * np.pi * 660 * t)).astype(np.float32)[None]
    made = {}
    for where, codec in (("cpu", cpu_codec), ("device", dev_codec)):
        made[where] = PyrFile.from_bytes(encode_waveform(wav, RATE, codec).to_bytes())
    for pyr in made.values():
        on_cpu, on_device = decode_pyr(pyr, cpu_codec), decode_pyr(pyr, dev_codec)
        assert on_cpu.shape == on_device.shape == (1, wav.shape[1])
        assert _snr_db(on_cpu, on_device) >= 40.0
    for a, b in zip(made["cpu"].levels, made["device"].levels, strict=True):
        assert np.mean(a.codes == b.codes) >= 0.9
