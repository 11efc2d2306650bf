"""Reading built corpora: statistics, and merging shards built on several machines."""

from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

from pyramid_cli.data.build import SETTINGS_FILE
from pyramid_cli.data.manifest import FAILURES, MANIFEST, SPLITS, load_manifest, read_jsonl, write_jsonl
from pyramid_cli.errors import InputError, UsageError


def corpus_stats(corpus: Path) -> dict[str, Any]:
    """Files and hours per split and per instrument group, and the failure count."""
    records = load_manifest(corpus)
    per_split = {split: {"files": 0, "hours": 0.0} for split in SPLITS}
    per_group: dict[str, dict[str, float]] = defaultdict(lambda: {"files": 0, "hours": 0.0})
    for record in records:
        hours = record["duration"] / 3600.0
        entry = per_split.setdefault(record["split"], {"files": 0, "hours": 0.0})
        entry["files"] += 1
        entry["hours"] += hours
        for group in record.get("groups", []):
            per_group[group]["files"] += 1
            per_group[group]["hours"] += hours
    failures = read_jsonl(corpus / FAILURES) + [r for p in sorted(corpus.glob("failures.shard-*.jsonl"))
                                                 for r in read_jsonl(p)]
    return {
        "corpus": str(corpus),
        "files": len(records),
        "hours": sum(r["duration"] for r in records) / 3600.0,
        "splits": per_split,
        "groups": dict(per_group),
        "failures": len({f["id"] for f in failures} - {r["id"] for r in records}),
        "sample_rates": sorted({r.get("sample_rate") for r in records if r.get("sample_rate")}),
    }


def _manifests_of(folder: Path) -> list[Path]:
    return sorted(p for p in [folder / MANIFEST, *folder.glob("manifest.shard-*.jsonl")] if p.exists())


def merge_corpora(out_dir: Path, inputs: list[Path]) -> dict[str, int]:
    """Combine shard manifests (and their audio, when they live elsewhere) into one corpus.

    `out_dir` may itself hold shards (several shards built into one folder); every input's
    audio is copied into `out_dir` unless it is already there. The merged `manifest.jsonl`
    is written atomically, sorted by id; an id found twice must describe the same item.
    """
    folders = list(dict.fromkeys([out_dir, *inputs]))
    merged: dict[str, dict[str, Any]] = {}
    failures: dict[str, dict[str, Any]] = {}
    settings_seen: dict[str, bytes] = {}
    for folder in folders:
        if not folder.is_dir():
            if folder == out_dir:
                out_dir.mkdir(parents=True)
                continue
            raise InputError(f"{folder}: not a directory")
        if (folder / SETTINGS_FILE).exists():
            settings_seen[str(folder)] = (folder / SETTINGS_FILE).read_bytes()
        for manifest in _manifests_of(folder):
            for record in read_jsonl(manifest):
                if record["id"] in merged and merged[record["id"]]["audio"] != record["audio"]:
                    raise UsageError(f"{record['id']} appears in two inputs with different splits or files")
                source_audio = folder / record["audio"]
                target_audio = out_dir / record["audio"]
                if not source_audio.exists():
                    raise InputError(f"{manifest}: {record['audio']} is listed but missing")
                if source_audio.resolve() != target_audio.resolve() and not target_audio.exists():
                    target_audio.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(source_audio, target_audio)
                merged[record["id"]] = record
        for path in [folder / FAILURES, *folder.glob("failures.shard-*.jsonl")]:
            for record in read_jsonl(path):
                failures[record["id"]] = record
    if len(set(settings_seen.values())) > 1:
        raise UsageError("the inputs were built with different settings (corpus.json differs); cannot merge")
    if settings_seen and not (out_dir / SETTINGS_FILE).exists():
        (out_dir / SETTINGS_FILE).write_bytes(next(iter(settings_seen.values())))
    write_jsonl(out_dir / MANIFEST, [merged[key] for key in sorted(merged)])
    write_jsonl(out_dir / FAILURES, [failures[key] for key in sorted(failures) if key not in merged])
    return {"files": len(merged), "failures": len(set(failures) - set(merged)), "inputs": len(folders)}
