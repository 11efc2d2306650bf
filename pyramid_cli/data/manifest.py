"""JSON-lines manifests that survive interruption.

The builder appends one JSON object per finished item and fsyncs it, so a killed build loses
at most the line being written; `read_jsonl` drops such a torn last line, and
`repair_jsonl` cuts it off before the next append.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pyramid_cli.errors import FormatError
from pyramid_cli.runtime.fileio import write_text_atomic

MANIFEST = "manifest.jsonl"
FAILURES = "failures.jsonl"
SPLITS = ("train", "valid", "test")


def shard_suffix(shard: tuple[int, int]) -> str:
    index, count = shard
    return "" if count == 1 else f".shard-{index}-of-{count}"


def manifest_name(shard: tuple[int, int] = (0, 1)) -> str:
    return f"manifest{shard_suffix(shard)}.jsonl"


def failures_name(shard: tuple[int, int] = (0, 1)) -> str:
    return f"failures{shard_suffix(shard)}.jsonl"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """All complete records of a JSON-lines file ([] when it does not exist).

    A torn final line (no newline: the writer was killed) is ignored; a corrupt line elsewhere
    is an error, since it cannot come from an interrupted append.
    """
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    complete, torn = lines[:-1], lines[-1]
    records = []
    for number, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise FormatError(f"{path}: line {number} is not valid JSON") from None
        if not isinstance(record, dict):
            raise FormatError(f"{path}: line {number} is not a JSON object")
        records.append(record)
    del torn  # an incomplete line from an interrupted write
    return records


def repair_jsonl(path: Path) -> None:
    """Cut a torn last line off so that appends start on a fresh line."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one record durably (flush + fsync) so a crash cannot lose finished work."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Replace a JSON-lines file atomically."""
    write_text_atomic(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def load_manifest(corpus: Path) -> list[dict[str, Any]]:
    """The records of a built corpus (`manifest.jsonl`), checked for the fields every reader needs."""
    path = corpus / MANIFEST
    if not corpus.is_dir():
        raise FormatError(f"{corpus}: not a directory")
    if not path.exists():
        shards = sorted(corpus.glob("manifest.shard-*.jsonl"))
        hint = f"; merge its shards first: pyramid dataset merge {corpus}" if shards else ""
        raise FormatError(f"{corpus}: no {MANIFEST} (not a corpus built by `pyramid dataset build`){hint}")
    records = read_jsonl(path)
    for record in records:
        missing = {"id", "split", "audio", "duration"} - record.keys()
        if missing:
            raise FormatError(f"{path}: record {record.get('id', '?')} lacks {', '.join(sorted(missing))}")
    return records
