"""One prepared GPU check (issue 14): `make gpu-check` (CUDA) or `make gpu-check DEVICE=cpu` (dry run).

    python tools/gpu_check.py --out gpu-check [--device cuda|cpu] [--stages a,b] [--work DIR]

Prints the machine (device, driver, torch/CUDA versions, free memory), then runs each stage of
``gpu_check_stages.STAGES`` in a child process of its own with a time budget: the tests marked
``cuda``; a procedural corpus, its token shards and a random paper-size LM; codec and LM training
under bf16 (the loss falls, a resume is exact); 3-minute pieces from the paper-size LM (eager and
compiled) and the bundled LM; ``pyramid bench`` on short inputs. A stage that fails or runs out
of time is recorded and the next one starts. ``OUT/gpu-check.json`` and ``OUT/gpu-check.md`` are
written after every stage, so they exist whatever happens. Exit code 0 when no stage failed.

``--device cpu`` runs the same stages at tiny sizes (well under a minute): the default test suite
runs it, so the script works the day a GPU is lent.

On a GPU machine that cannot run ``make install`` (no network), run the script with a Python that
has torch and pyramid's runtime dependencies; the stages import this checkout's package through
PYTHONPATH, and ``machine.missing_modules`` in the report names any dependency not found.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check_stages import PROFILES, REPO, STAGES, Context, Skip  # noqa: E402

TOTAL_BUDGET_S = {"gpu": 465.0, "cpu": 240.0}  # the 8 minutes, less start-up and the reports
# Each stage's own ceiling (GPU profile; the CPU dry run scales them down by CPU_SCALE).
BUDGET_S = {"cuda-tests": 70.0, "data": 25.0, "train-codec": 75.0, "train-lm": 35.0, "generate-small": 45.0,
            "generate-paper": 85.0, "generate-paper-compiled": 95.0, "bench": 35.0}
CPU_SCALE = 0.5
REPORT_NAME = "gpu-check"


def machine(device: str) -> dict[str, Any]:
    """The device, driver, torch/CUDA versions and free memory."""
    import importlib.util

    import torch

    needed = ("numpy", "typer", "rich", "julius", "soundfile", "safetensors", "huggingface_hub", "pytest")
    info: dict[str, Any] = {"host": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
                            "torch_cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()
                            if torch.backends.cudnn.is_available() else None,
                            "cpu_count": os.cpu_count(), "cuda_available": torch.cuda.is_available(),
                            "missing_modules": [m for m in needed if importlib.util.find_spec(m) is None]}
    if device == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        free, total = torch.cuda.mem_get_info(0)
        info.update(device=props.name, capability=f"{props.major}.{props.minor}", gpu_memory_gib=total / 2**30,
                    gpu_free_gib=free / 2**30, bf16_supported=torch.cuda.is_bf16_supported())
        if shutil.which("nvidia-smi"):
            done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                  capture_output=True, text=True, timeout=30)
            info["driver"] = done.stdout.strip().splitlines()[0] if done.stdout.strip() else None
    else:
        cpuinfo = Path("/proc/cpuinfo")
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")] if cpuinfo.is_file() else []
        info["device"] = names[0] if names else (platform.processor() or platform.machine())
    return info


def run_stage(name: str, ctx: Context, budget: float) -> dict[str, Any]:
    """Run one stage in a child process group; killed (with its own children) past ``budget``."""
    result_path = ctx.work / "stages" / f"{name}.json"
    result_path.parent.mkdir(parents=True, exist_ok=True)
    result_path.unlink(missing_ok=True)
    # PYTHONPATH: the stage, pytest and `python -m pyramid_cli` all import this checkout's package
    # (installed or not); CUBLAS_WORKSPACE_CONFIG lets cuBLAS run deterministically (exact resumes).
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "CUBLAS_WORKSPACE_CONFIG": ":4096:8", "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, __file__, "--stage", name, "--device", ctx.device, "--profile", ctx.profile.name,
            "--work", str(ctx.work)]
    log_path = ctx.work / "stages" / f"{name}.log"
    started = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        child = subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code: int | None = child.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)  # the stage's whole process group: pyramid, pytest, compilers
            child.wait()
            code = None
    seconds = time.perf_counter() - started
    tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
    record: dict[str, Any] = {"name": name, "seconds": round(seconds, 2), "budget_seconds": budget}
    if code is None:
        return {**record, "status": "timeout", "error": f"stopped after its budget of {budget:.0f} s", "log": tail}
    if not result_path.is_file():
        return {**record, "status": "failed", "error": f"the stage exited with {code} and no result", "log": tail}
    outcome = json.loads(result_path.read_text(encoding="utf-8"))
    if "skipped" in outcome:
        return {**record, "status": "skipped", "reason": outcome["skipped"]}
    if "error" in outcome:
        return {**record, "status": "failed", "error": outcome["error"], "log": tail}
    checks = outcome["checks"]
    status = "passed" if code == 0 and all(checks.values()) else "failed"
    return {**record, "status": status, "checks": checks, "summary": outcome["summary"],
            **({"log": tail} if status == "failed" else {})}


def child_main(name: str, ctx: Context) -> int:
    """Inside the child: run the stage and write its outcome as JSON (error text included)."""
    path = ctx.work / "stages" / f"{name}.json"
    try:
        summary, checks = STAGES[name](ctx)
        outcome: dict[str, Any] = {"summary": summary, "checks": checks}
    except Skip as skip:
        outcome = {"skipped": str(skip)}
    except Exception as exc:  # any failure is the report's to show
        traceback.print_exc()
        outcome = {"error": f"{type(exc).__name__}: {str(exc)[:2000]}"}
    path.write_text(json.dumps(outcome, indent=1, default=str), encoding="utf-8")
    return 1 if "error" in outcome else 0


# ---- the report --------------------------------------------------------------------------------------


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's speed targets, judged only on a CUDA run with the full sizes."""
    stages = {s["name"]: s for s in report["stages"]}
    gpu = report["profile"] == "gpu"
    found: list[dict[str, Any]] = []
    times = [s["summary"][k] for s, k in ((stages.get("generate-paper-compiled"), "warm_seconds"),
                                          (stages.get("generate-paper"), "sampling_seconds"))
             if s and s.get("status") == "passed"]
    found.append({"target": "3-minute piece from the paper-size LM, batch 1, <= 5 s",
                  "measured_seconds": min(times) if times else None,
                  "met": (min(times) <= 5.0) if (times and gpu) else None})
    bench = stages.get("bench", {}).get("summary", {})
    default = [c for c in bench.get("codecs", []) if c["key"] == "default"]
    rtf = None
    if default:
        longest = max(default, key=lambda c: c["audio_seconds"])
        rtf = 1.0 / (1.0 / longest["encode_rtf"] + 1.0 / longest["decode_rtf"])
    found.append({"target": "default codec encode + decode >= 1,000x real time", "measured_rtf": rtf,
                  "met": (rtf >= 1000.0) if (rtf is not None and gpu) else None})
    return found


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "(" + ", ".join(f"{k} {_cell(v)}" for k, v in value.items()) + ")"
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value) or "none"
    return str(value)


def to_markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [f"# pyramid GPU check ({report['profile']} profile, device {report['device']})", "",
             f"{report['date']} · {m.get('device')} · driver {m.get('driver', '-')} · torch {m.get('torch')} "
             f"(CUDA {m.get('torch_cuda')}, cuDNN {m.get('cudnn')}) · free GPU memory "
             f"{_cell(m.get('gpu_free_gib', '-'))} GiB · {report['wall_seconds']:.0f} s in all", "",
             *([f"Missing Python modules: {', '.join(m['missing_modules'])}", ""] if m.get("missing_modules") else []),
             "| stage | status | seconds | budget s | detail |", "|---|---|---:|---:|---|"]
    for s in report["stages"]:
        detail = s.get("reason") or s.get("error") or "; ".join(f"{k}: {'yes' if v else 'NO'}"
                                                               for k, v in s.get("checks", {}).items())
        lines.append(f"| {s['name']} | {s['status']} | {s['seconds']:.1f} | {s['budget_seconds']:.0f} | "
                     f"{detail.replace('|', '/').splitlines()[0] if detail else ''} |")
    lines += ["", "## Figures", ""]
    for s in report["stages"]:
        for key, value in (s.get("summary") or {}).items():
            if key != "output_tail":
                lines.append(f"- {s['name']} · {key}: {_cell(value)}")
    lines += ["", "## Targets (issue 14)", "", "| target | measured | met |", "|---|---:|---|"]
    for t in report["targets"]:
        measured = t.get("measured_seconds", t.get("measured_rtf"))
        met = "n/a (not a CUDA run)" if t["met"] is None else ("yes" if t["met"] else "no")
        lines.append(f"| {t['target']} | {_cell(measured) if measured is not None else '-'} | {met} |")
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: dict[str, Any]) -> None:
    report["targets"] = targets(report)
    report["ok"] = not any(s["status"] in ("failed", "timeout") for s in report["stages"])
    for suffix, text in (("json", json.dumps(report, indent=2, default=str) + "\n"), ("md", to_markdown(report))):
        temporary = out / f".{REPORT_NAME}.{suffix}.tmp"
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, out / f"{REPORT_NAME}.{suffix}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder for gpu-check.json and gpu-check.md")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--profile", choices=tuple(PROFILES), help="sizes (default: gpu on cuda, cpu on cpu)")
    parser.add_argument("--stages", help="comma-separated subset of: " + ", ".join(STAGES))
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one, removed afterwards)")
    parser.add_argument("--stage", help=argparse.SUPPRESS)  # internal: run one stage (the child process)
    args = parser.parse_args(argv)
    profile = PROFILES[args.profile or ("gpu" if args.device == "cuda" else "cpu")]
    if args.stage:
        return child_main(args.stage, Context(args.device, profile, args.work))
    if args.out is None:
        parser.error("--out is required")
    names = [n.strip() for n in args.stages.split(",")] if args.stages else list(STAGES)
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        parser.error(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="pyramid-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    ctx = Context(args.device, profile, work.resolve())
    started = time.perf_counter()
    report: dict[str, Any] = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              "device": args.device, "profile": profile.name, "command": " ".join(sys.argv),
                              "stages": [], "wall_seconds": 0.0}
    try:
        report["machine"] = machine(args.device)
    except Exception as exc:
        report["machine"] = {"error": f"{type(exc).__name__}: {exc}"}
    print("machine: " + json.dumps(report["machine"]), flush=True)
    write_report(args.out, report)
    scale = 1.0 if profile.name == "gpu" else CPU_SCALE
    try:
        for name in names:
            left = TOTAL_BUDGET_S[profile.name] - (time.perf_counter() - started)
            budget = min(BUDGET_S[name] * scale, left)
            if budget < 5:
                record = {"name": name, "status": "skipped", "seconds": 0.0, "budget_seconds": 0.0,
                          "reason": "the check's total time budget is spent"}
            else:
                print(f"stage {name} (budget {budget:.0f} s) ...", flush=True)
                record = run_stage(name, ctx, budget)
            report["stages"].append(record)
            report["wall_seconds"] = time.perf_counter() - started
            write_report(args.out, report)
            what = record.get("reason") or record.get("error") or record.get("checks", "")
            print(f"stage {name}: {record['status']} in {record['seconds']:.1f} s {what}", flush=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"report: {args.out / (REPORT_NAME + '.md')} ({'ok' if report['ok'] else 'FAILED'}, "
          f"{report['wall_seconds']:.0f} s)", flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
