"""End-to-end corpus builds on procedural pieces and real MIDI files (short renders)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pyramid_cli.data.build import BuildOptions, ItemResult, build_corpus
from pyramid_cli.data.corpus import corpus_stats, merge_corpora
from pyramid_cli.data.manifest import load_manifest, read_jsonl
from pyramid_cli.data.render import default_soundfont
from pyramid_cli.data.sources import midi_sources, procedural_sources
from pyramid_cli.errors import UsageError


def _options(out: Path, **overrides) -> BuildOptions:
    settings = dict(out_dir=out, soundfont=default_soundfont(), workers=2, max_seconds=6.0,
                    procedural_seconds=8.0, timeout_seconds=60.0)
    settings.update(overrides)
    return BuildOptions(**settings)


def _check_corpus(out: Path) -> list[dict]:
    records = load_manifest(out)
    for record in records:
        data, rate = sf.read(out / record["audio"], dtype="float32", always_2d=True)
        assert rate == 22050 and data.shape[1] == 1, "audio must be 22,050 Hz mono"
        assert data.shape[0] == record["num_samples"]
        assert np.abs(data).max() > 0.5, "peak-normalised audio is not silent"
        assert record["split"] in {"train", "valid", "test"}
        assert record["audio"].startswith(f"audio/{record['split']}/")
        assert 1.0 <= record["duration"] <= 6.0 + 1e-6
        assert record["groups"] and set(record["groups"]) <= {"lead", "piano", "guitar", "strings", "bass", "drums"}
    assert not list(out.rglob("*.tmp")), "no temporary files may be left behind"
    return records


def test_procedural_build_resume_and_stable_split(tmp_path: Path) -> None:
    sources = procedural_sources(6)
    first = build_corpus(sources, _options(tmp_path / "a"))
    assert (first.rendered, first.failed, first.skipped) == (6, 0, 0)
    records = _check_corpus(tmp_path / "a")
    assert sorted(r["id"] for r in records) == sorted(s.id for s in sources)

    again = build_corpus(sources, _options(tmp_path / "a"))
    assert (again.rendered, again.skipped) == (0, 6), "a rerun resumes: nothing is rendered twice"

    build_corpus(sources, _options(tmp_path / "b", workers=1))
    splits_a = {r["id"]: r["split"] for r in load_manifest(tmp_path / "a")}
    splits_b = {r["id"]: r["split"] for r in load_manifest(tmp_path / "b")}
    assert splits_a == splits_b


def test_changed_settings_are_refused_on_resume(tmp_path: Path) -> None:
    build_corpus(procedural_sources(1), _options(tmp_path))
    with pytest.raises(UsageError, match="max_seconds"):
        build_corpus(procedural_sources(1), _options(tmp_path, max_seconds=5.0))


def test_interrupted_build_resumes_to_the_full_corpus(tmp_path: Path) -> None:
    sources = procedural_sources(5)

    def interrupt(result: ItemResult) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_corpus(sources, _options(tmp_path), on_result=interrupt)
    partial = read_jsonl(tmp_path / "manifest.jsonl")
    assert 1 <= len(partial) < 5
    assert not list(tmp_path.rglob("*.tmp"))
    summary = build_corpus(sources, _options(tmp_path))
    assert summary.skipped == len(partial) and summary.rendered == 5 - len(partial)
    assert len(_check_corpus(tmp_path)) == 5


def test_killed_cli_build_resumes(tmp_path: Path) -> None:
    """SIGKILL the whole CLI mid-build (no cleanup runs), then rerun the same command."""
    out = tmp_path / "corpus"
    command = [sys.executable, "-m", "pyramid_cli", "dataset", "build", "--procedural", "8",
               "--procedural-seconds", "8", "--max-seconds", "6", "--workers", "1", "--out", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.monotonic() + 60
    manifest = out / "manifest.jsonl"
    while time.monotonic() < deadline and (not manifest.exists() or manifest.read_text().count("\n") < 2):
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done_before = len(read_jsonl(manifest))
    assert done_before < 8, "the build finished before it could be killed"
    rerun = subprocess.run([*command, "--json"], capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["skipped"] == done_before and summary["rendered"] == 8 - done_before
    assert len(_check_corpus(out)) == 8


def test_bad_files_are_reported_and_the_build_goes_on(tmp_path: Path) -> None:
    midi_dir = tmp_path / "midi"
    midi_dir.mkdir()
    (midi_dir / "corrupt.mid").write_bytes(b"MThd\x00\x00\x00\x06garbage" + os.urandom(64))
    (midi_dir / "empty.mid").write_bytes(b"")
    os.mkfifo(midi_dir / "hangs.mid")  # opening it blocks forever: a worker that never answers
    sources = midi_sources(midi_dir) + procedural_sources(1)
    summary = build_corpus(sources, _options(tmp_path / "out", timeout_seconds=3.0))
    assert summary.rendered == 1 and summary.failed == 3
    failures = {f["id"]: f["error"] for f in read_jsonl(tmp_path / "out" / "failures.jsonl")}
    assert "timeout" in failures["hangs"]
    assert "unreadable MIDI" in failures["corrupt"] and "unreadable MIDI" in failures["empty"]
    assert corpus_stats(tmp_path / "out")["failures"] == 3
    # failed files are not retried by a plain rerun
    assert build_corpus(sources, _options(tmp_path / "out", timeout_seconds=3.0)).skipped == 4


def test_shards_merge_into_the_full_build(tmp_path: Path) -> None:
    sources = procedural_sources(6)
    build_corpus(sources, _options(tmp_path / "full"))
    build_corpus(sources, _options(tmp_path / "merged", shard=(0, 2)))
    build_corpus(sources, _options(tmp_path / "other", shard=(1, 2)))
    result = merge_corpora(tmp_path / "merged", [tmp_path / "other"])
    assert result["files"] == 6
    full = {r["id"]: (r["split"], r["audio"], r["num_samples"]) for r in load_manifest(tmp_path / "full")}
    merged = {r["id"]: (r["split"], r["audio"], r["num_samples"]) for r in load_manifest(tmp_path / "merged")}
    assert merged == full
    _check_corpus(tmp_path / "merged")


def test_real_midi_files(few_real_midi: Path, tmp_path: Path) -> None:
    summary = build_corpus(midi_sources(few_real_midi), _options(tmp_path))
    assert summary.rendered == 3 and summary.failed == 0
    records = _check_corpus(tmp_path)
    assert all(r["truncated"] and r["source_duration"] > 6 for r in records)
    assert all(r["id"].startswith(("0__", "1__", "2__")) for r in records)
