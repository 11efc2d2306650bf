"""`make gpu-check DEVICE=cpu`: the GPU check's dry run at tiny sizes, so the script cannot rot
while no GPU is at hand (issue 14). One subprocess runs every stage; the reports must record each
stage's outcome, and a failing stage must be recorded without stopping the report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tools" / "gpu_check.py"
STAGES = ["cuda-tests", "data", "train-codec", "train-lm", "generate-small", "generate-paper",
          "generate-paper-compiled", "bench"]


def run_check(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--out", str(out), *extra],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("gpu-check")
    return run_check(out), out


@pytest.mark.slow  # about a minute on 2 cores: every stage of the check runs (`make test-slow`)
def test_the_cpu_dry_run_passes_every_stage(dry_run):
    done, out = dry_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "gpu-check.json").read_text())
    assert report["ok"] and report["profile"] == "cpu" and report["machine"]["torch"]
    stages = {s["name"]: s for s in report["stages"]}
    assert list(stages) == STAGES
    assert stages["generate-paper-compiled"]["status"] == "skipped"
    for name in set(STAGES) - {"generate-paper-compiled"}:
        assert stages[name]["status"] == "passed", stages[name]
        assert stages[name]["checks"] and all(stages[name]["checks"].values())
    assert stages["cuda-tests"]["summary"]["tests"] > stages["cuda-tests"]["summary"]["skipped"]
    for name in ("train-codec", "train-lm"):
        figures = stages[name]["summary"]
        assert figures["loss_last"] < figures["loss_first"] and figures["resume_max_weight_difference"] == 0.0
    assert stages["data"]["summary"]["package"] == str(REPO / "pyramid_cli"), "stages import this checkout"
    assert stages["generate-paper"]["summary"]["dtype"] == "bfloat16"
    assert [c["key"] for c in stages["bench"]["summary"]["codecs"]] == ["default"]
    assert all(t["met"] is None for t in report["targets"]), "targets are judged on CUDA runs only"
    markdown = (out / "gpu-check.md").read_text()
    for name in STAGES:
        assert f"| {name} | {stages[name]['status']} |" in markdown


@pytest.mark.slow  # the check script in a subprocess, like the dry run above
def test_a_failing_stage_is_recorded_and_the_rest_still_runs(tmp_path: Path):
    # No data stage first: codec training finds no corpus and fails; the next stage still runs.
    done = run_check(tmp_path / "out", "--stages", "train-codec,generate-paper-compiled", "--work",
                     str(tmp_path / "work"))
    assert done.returncode == 1
    report = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    failed, skipped = report["stages"]
    assert failed["status"] == "failed" and "corpus" in failed["error"].lower() and failed["log"]
    assert skipped["status"] == "skipped" and not report["ok"]
    assert "| train-codec | failed |" in (tmp_path / "out" / "gpu-check.md").read_text()
