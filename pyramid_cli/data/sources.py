"""What a corpus is built from, and where each item goes: stable splits and shards.

Both the split and the shard of an item come from a hash of a stable key, never from listing
order, so adding files to a collection never moves existing ones between splits.
"""

from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from pyramid_cli.data.manifest import SPLITS
from pyramid_cli.errors import InputError, UsageError

MIDI_SUFFIXES = (".mid", ".midi")


@dataclass(frozen=True)
class Source:
    """One item to render: a MIDI file or a procedural piece."""

    id: str  # unique, file-name safe; names the audio file
    label: str  # what the manifest records as `source`
    split_key: str  # hashed to choose the split: the song group when known, else the label
    path: Path | None = None  # the MIDI file, for file sources
    seed: int | None = None  # the composer seed, for procedural sources
    song_group: str | None = None


def _stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big")


def parse_split(spec: str) -> tuple[int, int, int]:
    """'8:1:1' → (8, 1, 1): train, valid and test weights."""
    parts = spec.split(":")
    if len(parts) != 3 or not all(p.isdigit() for p in parts) or sum(int(p) for p in parts) == 0:
        raise UsageError(f"split must look like 8:1:1 (train:valid:test weights), got '{spec}'", option="split")
    return int(parts[0]), int(parts[1]), int(parts[2])


def parse_shard(spec: str) -> tuple[int, int]:
    """'2/8' → (2, 8): build the third of eight deterministic shards (0-based)."""
    match = re.fullmatch(r"(\d+)/(\d+)", spec.strip())
    if not match or int(match[2]) == 0 or int(match[1]) >= int(match[2]):
        raise UsageError(f"shard must be i/n with 0 <= i < n, got '{spec}'", option="shard")
    return int(match[1]), int(match[2])


def split_of(split_key: str, weights: tuple[int, int, int]) -> str:
    """train / valid / test for a key, stable across runs, machines and collection changes."""
    bucket = _stable_hash("split:" + split_key) % sum(weights)
    for name, weight in zip(SPLITS, weights, strict=True):
        if bucket < weight:
            return name
        bucket -= weight
    raise AssertionError("unreachable")


def shard_of(source_id: str, count: int) -> int:
    return _stable_hash("shard:" + source_id) % count


def _safe_id(relative: Path) -> str:
    """'lmd_full/0/abc.mid' → 'lmd_full__0__abc': unique per path and safe as a file name."""
    text = "__".join(relative.with_suffix("").parts)
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


def read_song_groups(csv_path: Path, key_column: str = "file", group_column: str = "song_group") -> dict[str, str]:
    """File name → song group, from a CSV (e.g. several arrangements of one song share a group)."""
    if not csv_path.is_file():
        raise InputError(f"{csv_path}: no such file")
    try:
        with open(csv_path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            for column in (key_column, group_column):
                if column not in columns:
                    shown = ", ".join(c[:40] for c in columns[:10])
                    raise InputError(f"{csv_path}: no column '{column}' (columns: {shown})")
            return {Path(row[key_column]).name: row[group_column] for row in reader if row[group_column]}
    except (UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"{csv_path}: not a UTF-8 CSV file ({type(error).__name__})") from None
    except OSError as error:
        raise InputError(f"{csv_path}: cannot read ({error.strerror or error})") from None


def midi_sources(midi_dir: Path, song_groups: dict[str, str] | None = None) -> list[Source]:
    """Every .mid/.midi file under `midi_dir`, recursively (the Lakh MIDI layout works as is)."""
    if not midi_dir.is_dir():
        raise InputError(f"{midi_dir}: not a directory")
    # Not `is_file()`: a special file (FIFO, device) must reach a worker and fail there, not vanish.
    files = sorted(p for p in midi_dir.rglob("*") if p.suffix.lower() in MIDI_SUFFIXES and not p.is_dir())
    sources = []
    for path in files:
        relative = path.relative_to(midi_dir)
        group = (song_groups or {}).get(path.name)
        label = relative.as_posix()
        sources.append(Source(id=_safe_id(relative), label=label, split_key=group or label,
                              path=path, song_group=group))
    return sources


def procedural_sources(count: int, first_seed: int = 0) -> list[Source]:
    """`count` pieces from the built-in composer, seeds first_seed, first_seed+1, ..."""
    return [Source(id=f"procedural-{seed:06d}", label=f"procedural:{seed}", split_key=f"procedural:{seed}",
                   seed=seed) for seed in range(first_seed, first_seed + count)]
