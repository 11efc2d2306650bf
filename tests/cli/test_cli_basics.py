"""The command line as users meet it: exit codes, one-line errors, stdout kept for data (in-process,
except one test of the real entry point)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pyramid_cli import __version__


def test_version_and_help_from_the_real_command() -> None:
    """The installed entry point itself (``python -m pyramid_cli``): the other tests run it in-process."""
    result = subprocess.run([sys.executable, "-m", "pyramid_cli", "--version"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == f"pyramid {__version__}"
    result = subprocess.run([sys.executable, "-m", "pyramid_cli", "dataset", "build", "--help"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0 and "--midi-dir" in result.stdout and "--shard" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["dataset", "build", "--out", "x"], "nothing to build"),
        (["dataset", "build", "--out", "x", "--procedural", "1", "--split", "8:1"], "--split"),
        (["dataset", "build", "--out", "x", "--procedural", "1", "--shard", "3/2"], "--shard"),
        (["dataset", "build", "--out", "x", "--procedural", "1", "--format", "mp3"], "--format"),
        (["dataset", "build", "--out", "x", "--procedural", "1", "--workers", "0"], "--workers"),
        (["dataset", "build"], "--out"),
        (["no-such-command"], "No such command"),
    ],
)
def test_usage_errors_exit_2(pyramid, args: list[str], message: str, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = pyramid(*args)
    assert result.code == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == b""
    assert not (tmp_path / "x").exists()


def test_failures_exit_1_with_one_line(pyramid, tmp_path: Path) -> None:
    result = pyramid("dataset", "build", "--midi-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "o"))
    assert result.code == 1
    assert result.stderr.strip().count("\n") == 0 and "not a directory" in result.stderr
    result = pyramid("dataset", "info", str(tmp_path))
    assert result.code == 1 and "no manifest.jsonl" in result.stderr and "Traceback" not in result.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    result = pyramid("dataset", "build", "--midi-dir", str(empty), "--out", str(tmp_path / "o"))
    assert result.code == 2 and "no .mid or .midi files" in result.stderr


def test_build_info_merge_json_end_to_end(pyramid, tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    common = ["--procedural", "4", "--procedural-seconds", "6", "--max-seconds", "4", "--out", str(out), "--json"]
    shard0 = pyramid("dataset", "build", *common, "--shard", "0/2")
    shard1 = pyramid("dataset", "build", *common, "--shard", "1/2")
    assert shard0.code == 0 and shard1.code == 0, shard0.stderr + shard1.stderr
    built = json.loads(shard0.stdout)["rendered"] + json.loads(shard1.stdout)["rendered"]
    assert built == 4
    assert pyramid("dataset", "info", str(out)).code == 1  # shards not merged yet
    merged = pyramid("dataset", "merge", str(out), "--json")
    assert merged.code == 0 and json.loads(merged.stdout)["files"] == 4
    info = pyramid("dataset", "info", str(out), "--json")
    stats = json.loads(info.stdout)
    assert stats["files"] == 4 and sum(s["files"] for s in stats["splits"].values()) == 4
    assert stats["groups"]["drums"]["files"] == 4
    table = pyramid("dataset", "info", str(out))
    assert table.code == 0 and table.stdout == b"" and "train" in table.stderr


def test_doctor_reports_fluidsynth(pyramid) -> None:
    result = pyramid("doctor", "--json")
    assert result.code == 0, result.text + result.stderr
    report = json.loads(result.stdout)
    assert report["fluidsynth"]["ok"] and report["sound font"]["ok"]
