"""The stages of ``tools/gpu_check.py``; each runs in its own child process and returns a summary.

A stage function takes the ``Context`` and returns ``(summary, checks)``: figures for the report,
and named pass/fail checks (all must hold for the stage to pass). Raising ``Skip`` marks the stage
skipped with a reason; any other exception fails it. Imports of torch and pyramid_cli are inside
the functions, so the stages that only drive a command (``pyramid generate``, ``pyramid bench``,
pytest) do not pay for them twice.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SAMPLE_RATE = 22050
Result = tuple[dict[str, Any], dict[str, bool]]


class Skip(Exception):
    """The stage does not apply here (the reason goes into the report)."""


@dataclass(frozen=True)
class Profile:
    """Sizes of one run: ``gpu`` (the real check, minutes on one CUDA device) or ``cpu`` (the dry run)."""

    name: str
    pieces: int  # procedural pieces written (3/4 train, 1/4 valid)
    piece_seconds: float
    codec_model: str  # codec preset trained (or "tiny": a toy p111 geometry)
    codec_steps: int  # steps of the straight run; the resume check runs half, then the rest
    codec_batch: int
    codec_crop: float
    lm_model: str  # LM preset trained ("micro": a toy one)
    lm_steps: int
    lm_batch: int
    paper_preset: str  # the "paper-size" LM generated with ("paper"; the CPU dry run stands in a tiny flat one)
    generate_seconds: float  # length of the generated pieces
    compile: bool  # time the compiled decode step
    bench_seconds: str
    bench_models: str
    bench_lm_seconds: float
    bench_naive_tokens: int


PROFILES = {
    "gpu": Profile("gpu", pieces=8, piece_seconds=20.0, codec_model="p111_small", codec_steps=300, codec_batch=8,
                   codec_crop=1.0, lm_model="small", lm_steps=300, lm_batch=16, paper_preset="paper",
                   generate_seconds=180.0, compile=True, bench_seconds="10,60", bench_models="default,p111",
                   bench_lm_seconds=30.0, bench_naive_tokens=50),
    "cpu": Profile("cpu", pieces=4, piece_seconds=3.0, codec_model="tiny", codec_steps=8, codec_batch=2,
                   codec_crop=0.3, lm_model="micro", lm_steps=12, lm_batch=4, paper_preset="tiny",
                   generate_seconds=3.0, compile=False, bench_seconds="2", bench_models="default",
                   bench_lm_seconds=2.0, bench_naive_tokens=4),
}


@dataclass(frozen=True)
class Context:
    device: str  # "cuda" or "cpu"
    profile: Profile
    work: Path  # scratch folder shared by the stages (corpus, tokens, runs, pieces)


# ---- helpers ---------------------------------------------------------------------------------------


def run_command(args: list[str], timeout: float | None = None, env: dict[str, str] | None = None
                ) -> tuple[int, str, str, float]:
    """Run a command of this repository; (exit code, stdout, stderr tail, seconds)."""
    started = time.perf_counter()
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    return done.returncode, done.stdout, done.stderr[-4000:], time.perf_counter() - started


def pyramid(*args: str) -> list[str]:
    return [sys.executable, "-m", "pyramid_cli", *args]


def train_records(run: Path) -> list[dict[str, Any]]:
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if r.get("kind") == "train"]


def weights_difference(a: Path, b: Path) -> float:
    """Largest absolute difference between two safetensors files' tensors (inf if keys differ)."""
    import safetensors.torch

    left, right = safetensors.torch.load_file(a), safetensors.torch.load_file(b)
    if left.keys() != right.keys():
        return float("inf")
    return max(float((left[k].double() - right[k].double()).abs().max()) if left[k].numel() else 0.0
               for k in left)


def deterministic_torch() -> list[str]:
    """Ask torch for deterministic kernels (a resume can only be exact if a rerun is); returns a list
    that collects the warnings of ops without a deterministic version."""
    import torch

    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    caught: list[str] = []
    previous = warnings.showwarning

    def record(message: Any, category: Any, *args: Any, **kwargs: Any) -> None:
        text = str(message).splitlines()[0][:200]
        if "deterministic" in text and text not in caught:
            caught.append(text)
        previous(message, category, *args, **kwargs)

    warnings.showwarning = record
    return caught


def resume_check(train: Callable[..., Any], run_root: Path, last: Callable[[Path], Path], steps: int) -> dict[str, Any]:
    """Train ``steps`` straight, then half and a resumed rest; compare the two final checkpoints."""
    started = time.perf_counter()
    straight = train(run_root / "straight", None)
    straight_seconds = time.perf_counter() - started
    half = train(run_root / "resumed", steps // 2)
    rest = train(run_root / "resumed", None)
    difference = weights_difference(last(run_root / "straight"), last(run_root / "resumed"))
    records = train_records(run_root / "straight")
    return {"straight": straight, "half": half, "rest": rest, "difference": difference, "records": records,
            "straight_seconds": straight_seconds}


def last_checkpoint_weights(run: Path) -> Path:
    from pyramid_cli.train.checkpoint import latest_checkpoint

    folder = latest_checkpoint(run / "checkpoints")
    if folder is None:
        raise RuntimeError(f"{run}: no checkpoint was written")
    return folder / "model.safetensors"


# ---- procedural data ---------------------------------------------------------------------------------


def synth_piece(seconds: float, seed: int) -> Any:
    """A few seconds of music-like audio without FluidSynth: a pentatonic melody of decaying
    harmonic notes over a bass line, with noise-burst drums. (T,) float32 in [-1, 1]."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    out = np.zeros(n, dtype=np.float64)
    beat = int(SAMPLE_RATE * 60 / rng.uniform(90, 140))
    root = 48 + int(rng.integers(0, 12))
    scale = np.array([0, 2, 4, 7, 9, 12, 14, 16])

    def note(start: int, midi: float, length: int, gain: float, harmonics: int) -> None:
        length = min(length, n - start)
        if length <= 0:
            return
        t = np.arange(length) / SAMPLE_RATE
        f0 = 440.0 * 2 ** ((midi - 69) / 12)
        tone = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, harmonics + 1))
        out[start:start + length] += gain * tone * np.exp(-3.0 * t) * np.minimum(1.0, t * 200)

    for k, start in enumerate(range(0, n, beat // 2)):
        note(start, root + 12 + float(rng.choice(scale)), beat, 0.15, 5)
        if k % 4 == 0:
            note(start, root - 12 + float(scale[(k // 4) % 4]), 2 * beat, 0.25, 3)
        if k % 2 == 0:
            hit = min(beat // 4, n - start)
            out[start:start + hit] += 0.2 * rng.standard_normal(hit) * np.exp(-np.arange(hit) / 400)
    return (0.9 * out / max(1e-9, float(np.abs(out).max()))).astype(np.float32)


def stage_data(ctx: Context) -> Result:
    """Procedural corpus (FLAC + manifest), its token shards from the default codec on the device,
    and the random-weight paper-size LM folder that the generation stages load."""
    from dataclasses import replace

    import soundfile as sf
    import torch

    import pyramid_cli
    from pyramid_cli.codec.api import load_codec
    from pyramid_cli.data.tokenize import tokenize_corpus
    from pyramid_cli.data.tokens import TokenSet
    from pyramid_cli.hub.registry import DEFAULT_CODEC
    from pyramid_cli.lm.config import preset
    from pyramid_cli.lm.model import PyramidLM

    p = ctx.profile
    corpus = ctx.work / "corpus"
    records = []
    for k in range(p.pieces):
        split = "valid" if k % 4 == 3 else "train"
        rel = f"audio/{split}/piece{k}.flac"
        (corpus / rel).parent.mkdir(parents=True, exist_ok=True)
        wav = synth_piece(p.piece_seconds, k)
        sf.write(corpus / rel, wav, SAMPLE_RATE)
        records.append({"id": f"piece{k}", "source": "procedural", "split": split, "audio": rel,
                        "duration": len(wav) / SAMPLE_RATE, "num_samples": len(wav)})
    (corpus / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    codec = load_codec(DEFAULT_CODEC, ctx.device)
    started = time.perf_counter()
    summary = tokenize_corpus(corpus, codec, ctx.work / "tokens")
    tokenize_seconds = time.perf_counter() - started
    meta = TokenSet.open(ctx.work / "tokens").meta
    config = preset(p.paper_preset).with_codec(meta.codec_name, meta.codec_hash, meta.sample_rate,
                                                meta.hop_lengths, meta.n_codebooks, meta.codebook_size)
    if p.paper_preset != "paper":  # the dry run's stand-in keeps the paper's flat layout
        config = replace(config, name="pyramid-lm-paper-standin", layout="flat", flat_window=4096)
    torch.manual_seed(0)
    paper = PyramidLM(config)
    paper.save_pretrained(ctx.work / "paper-lm")
    size = sum(f.stat().st_size for f in corpus.rglob("*.flac"))
    return ({"pieces": p.pieces, "audio_seconds": p.pieces * p.piece_seconds, "corpus_mb": size / 1e6,
             "codec": f"{codec.name}@{codec.hash}", "tokenize_seconds": tokenize_seconds,
             "tokenize_failures": summary.failed, "paper_lm": config.name,
             "paper_lm_parameters": paper.num_parameters(), "package": str(Path(pyramid_cli.__file__).parent)},
            {"tokenized every piece": summary.failed == 0})


# ---- training ------------------------------------------------------------------------------------------


def _falls(records: list[dict[str, Any]], key: str = "loss") -> tuple[float, float]:
    return float(records[0][key]), float(records[-1][key])


def stage_train_codec(ctx: Context) -> Result:
    """The codec for a few hundred steps (bf16 autocast on CUDA): the loss falls, a resume is exact."""
    from pyramid_cli.codec import CodecConfig
    from pyramid_cli.train import CodecTrainConfig, train_codec

    p = ctx.profile
    nondeterministic = deterministic_torch()
    model: str | dict[str, Any] = p.codec_model
    if p.codec_model == "tiny":
        model = CodecConfig(name="tiny", encoder_dim=4, encoder_rates=(2, 2), decoder_dim=16, pyramid_rates=(2, 2, 2),
                            latent_dim=16, n_codebooks=(1, 1, 1), codebook_size=32, codebook_dim=4).to_dict()
    # The mel weight stays at its first value (the warm-up outlasts the run), so the loss is comparable.
    config = CodecTrainConfig(model=model, steps=p.codec_steps, batch_size=p.codec_batch, crop_seconds=p.codec_crop,
                              lr=1e-3 if p.codec_model == "tiny" else 3e-4, warmup_steps=min(50, p.codec_steps // 4),
                              mel_warmup_steps=p.codec_steps + 1, eval_every=0, checkpoint_every=0,
                              log_every=max(1, p.codec_steps // 10), reseed_dead_codes_every=0, device=ctx.device,
                              bf16=True, seed=1)

    def train(run: Path, max_steps: int | None) -> Any:
        return train_codec(run, config, ctx.work / "corpus", max_steps_this_call=max_steps)

    done = resume_check(train, ctx.work / "codec-runs", last_checkpoint_weights, p.codec_steps)
    first, last = _falls(done["records"])
    return ({"model": p.codec_model, "steps": p.codec_steps, "bf16_autocast": ctx.device == "cuda",
             "loss_first": first, "loss_last": last, "steps_per_second": p.codec_steps / done["straight_seconds"],
             "resumed_from": done["rest"].resumed_from, "resume_max_weight_difference": done["difference"],
             "nondeterministic_ops": nondeterministic},
            {"loss falls": last < first, "resumed from the half-way checkpoint": done["rest"].resumed_from
             == p.codec_steps // 2, "resume is exact": done["difference"] == 0.0})


def stage_train_lm(ctx: Context) -> Result:
    """The LM on the token shards (bf16 autocast on CUDA): the loss falls, a resume is exact."""
    from dataclasses import replace

    from pyramid_cli.lm.config import tiny
    from pyramid_cli.train.config import LMTrainConfig
    from pyramid_cli.train.lm import train_lm

    p = ctx.profile
    nondeterministic = deterministic_torch()
    model: str | dict[str, Any] = p.lm_model
    if p.lm_model == "micro":
        model = replace(tiny(), n_layer=1, d_model=32, coarse_window=16, train_detail_frames=6,
                        flat_window=48).to_dict()
    config = LMTrainConfig(model=model, steps=p.lm_steps, batch_size=p.lm_batch, lr=3e-3 if p.lm_model == "micro"
                           else 1e-3, warmup_steps=min(30, p.lm_steps // 4), eval_every=0, checkpoint_every=0,
                           log_every=max(1, p.lm_steps // 10), device=ctx.device, bf16=True, seed=1)

    def train(run: Path, max_steps: int | None) -> Any:
        return train_lm(run, config, ctx.work / "tokens", max_steps_this_call=max_steps)

    done = resume_check(train, ctx.work / "lm-runs", last_checkpoint_weights, p.lm_steps)
    first, last = _falls(done["records"])
    return ({"model": p.lm_model, "steps": p.lm_steps, "bf16_autocast": ctx.device == "cuda",
             "loss_first": first, "loss_last": last, "steps_per_second": p.lm_steps / done["straight_seconds"],
             "tokens_per_second": done["records"][-1].get("tokens_per_s"),
             "resumed_from": done["rest"].resumed_from, "resume_max_weight_difference": done["difference"],
             "nondeterministic_ops": nondeterministic},
            {"loss falls": last < first, "resumed from the half-way checkpoint": done["rest"].resumed_from
             == p.lm_steps // 2, "resume is exact": done["difference"] == 0.0})


# ---- generation ---------------------------------------------------------------------------------------


def _generate(ctx: Context, name: str, lm: str | None, dtype: str) -> Result:
    out = ctx.work / "pieces"
    out.mkdir(exist_ok=True)
    args = ["generate", "--seconds", f"{ctx.profile.generate_seconds:g}", "--seed", "0", "--device", ctx.device,
            "--dtype", dtype, "--json", "--force", "-o", str(out / f"{name}.wav"), "--save-tokens",
            str(out / f"{name}.pyr")]
    code, stdout, stderr, seconds = run_command(pyramid(*args, *(["--lm", lm] if lm else [])))
    if code != 0:
        raise RuntimeError(f"pyramid generate exited with {code}: {stderr.strip()[-1500:]}")
    result = json.loads(stdout)
    return ({"lm": result["lm"], "seconds_of_audio": result["seconds"], "dtype": result["dtype"],
             "compiled": result["compiled"], "tokens": result["tokens_generated"],
             "sampling_seconds": result["sampling_seconds"], "tokens_per_second": result["tokens_per_second_generated"],
             "real_time_factor": result["real_time_factor"], "command_seconds": seconds},
            {"a piece was written": (out / f"{name}.wav").is_file()})


def stage_generate_paper(ctx: Context) -> Result:
    """`pyramid generate` with the random paper-size LM at batch 1 in bfloat16 (eager)."""
    return _generate(ctx, "paper", str(ctx.work / "paper-lm"), "bfloat16")


def stage_generate_small(ctx: Context) -> Result:
    """`pyramid generate` with the bundled default LM (dtype auto: bfloat16 on CUDA)."""
    return _generate(ctx, "small", None, "auto")


def stage_generate_paper_compiled(ctx: Context) -> Result:
    """The paper-size LM's piece with the compiled decode step (`--compile`: CUDA graphs), twice in
    one process (compilation included, then warm), against the eager piece's tokens."""
    if not ctx.profile.compile:
        raise Skip("the CPU dry run does not compile (tens of seconds; tests/lm covers the compiled step on the CPU)")
    import numpy as np

    from pyramid_cli.codec.api import load_codec
    from pyramid_cli.lm.api import generate_pieces, load_lm
    from pyramid_cli.lm.decode import DecodeSettings
    from pyramid_cli.lm.sampling import SamplingSettings
    from pyramid_cli.pyr.file import PyrFile

    lm = load_lm(ctx.work / "paper-lm", ctx.device)
    codec = load_codec(lm.model.config.codec_name, ctx.device)
    sampling = SamplingSettings(temperature=1.0, top_k=100)  # pyramid generate's defaults
    runs = [generate_pieces(lm, codec, ctx.profile.generate_seconds, sampling=sampling, seed=0,
                            decode=DecodeSettings(dtype="bfloat16", compile=True)) for _ in range(2)]
    summary: dict[str, Any] = {"first_seconds": runs[0].seconds, "warm_seconds": runs[1].seconds,
                               "tokens": runs[1].tokens_generated,
                               "warm_tokens_per_second": runs[1].tokens_per_second,
                               "seconds_of_audio": runs[1].coarse_frames * lm.model.config.coarse_hop
                               / lm.model.config.sample_rate}
    eager_path = ctx.work / "pieces" / "paper.pyr"
    if eager_path.is_file():
        eager = PyrFile.read(eager_path)
        same = [float(np.mean(a.codes == b.codes)) for a, b in zip(eager.levels, runs[1].pieces[0].levels,
                                                                    strict=True)]
        summary["share_of_eager_codes_per_level"] = same
    warm_same = all(np.array_equal(a.codes, b.codes) for a, b in zip(runs[0].pieces[0].levels,
                                                                     runs[1].pieces[0].levels, strict=True))
    return summary, {"the two compiled runs sample the same piece": warm_same}


# ---- tests and bench -----------------------------------------------------------------------------------


def stage_cuda_tests(ctx: Context) -> Result:
    """pytest -m cuda. On the CPU dry run the tests run their CPU stand-in (PYRAMID_CUDA_TESTS_ON_CPU=1)."""
    import xml.etree.ElementTree as ET

    report = ctx.work / "cuda-tests.xml"
    env = {"PYRAMID_CUDA_TESTS_ON_CPU": "1"} if ctx.device == "cpu" else {}
    code, stdout, stderr, seconds = run_command([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "tests/cuda",
                                                 "-p", "no:cacheprovider", f"--junitxml={report}"], env=env)
    suite = ET.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    failed = [case.get("name", "?") for case in suite.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    summary = {**counts, "failed": failed, "seconds": seconds, "output_tail": stdout.strip()[-1500:]}
    if ctx.device == "cpu":
        summary["note"] = "CPU stand-in: the same tests with the CPU in place of CUDA"
    return summary, {"pytest exit code 0": code == 0, "some tests ran": counts["tests"] > counts["skipped"]}


def stage_bench(ctx: Context) -> Result:
    """`pyramid bench --device D` on short inputs: the default codec (and p111 on a GPU), the default LM."""
    p = ctx.profile
    code, stdout, stderr, seconds = run_command(pyramid(
        "bench", "--device", ctx.device, "--seconds", p.bench_seconds, "--models", p.bench_models, "--skip-peers",
        "--skip-memory", "--in-process", "--lm-seconds", f"{p.bench_lm_seconds:g}", "--naive-tokens",
        str(p.bench_naive_tokens), "--json"))
    if not stdout.strip():
        raise RuntimeError(f"pyramid bench exited with {code} and no report: {stderr.strip()[-1500:]}")
    report = json.loads(stdout)
    codecs = [{"model": c["name"], "key": c["key"], "weights": c["weights"], "audio_seconds": c["audio_seconds"],
               "encode_rtf": c["encode"]["realtime_factor"], "decode_rtf": c["decode"]["realtime_factor"],
               "encode_gpu_peak_mb": c["encode"].get("gpu_peak_mb"),
               "decode_gpu_peak_mb": c["decode"].get("gpu_peak_mb")} for c in report["codecs"]]
    lm = report.get("lm") or {}
    summary = {"codecs": codecs, "lm": {k: lm.get(k) for k in ("name", "weights", "parameters", "dtype",
                                                               "piece_seconds", "cached_tokens_per_second",
                                                               "realtime_factor", "naive_tokens_per_second")},
               "skipped": report.get("skipped", []), "command_seconds": seconds}
    return summary, {"pyramid bench exit code 0": code == 0, "every codec measured": len(codecs) > 0,
                     "the LM measured": bool(lm)}


STAGES: dict[str, Callable[[Context], Result]] = {
    "cuda-tests": stage_cuda_tests,
    "data": stage_data,
    "train-codec": stage_train_codec,
    "train-lm": stage_train_lm,
    "generate-small": stage_generate_small,
    "generate-paper": stage_generate_paper,
    "generate-paper-compiled": stage_generate_paper_compiled,
    "bench": stage_bench,
}
