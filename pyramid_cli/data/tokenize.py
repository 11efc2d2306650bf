"""Writing token folders (format: ``pyramid_cli.data.tokens``): ``tokenize_corpus`` encodes a corpus
into one, creating or resuming it (``pyramid dataset tokenize``); ``merge_token_sets`` joins several.

Shards (``tokenize --shard i/n``, then ``merge-tokens``): ``shard_records`` deals the items of each
split to n shards greedily by duration, longest first (ties by id), each to the shard with the least
audio so far (ties to the lowest shard): deterministic for a given manifest, so every machine must
run on the same manifest.jsonl. Each shard writes an ordinary token folder; ``merge_token_sets``
appends the parts' items to OUT, new items sorted by id (so a merge into an empty OUT equals an
unsharded run), writing every level's data (fsynced) before the index lines: the resume rule of
``pyramid_cli.data.tokens`` makes an interrupted merge safe to rerun.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from pyramid_cli.codec.api import LoadedCodec
from pyramid_cli.data.manifest import SPLITS, append_jsonl, load_manifest, repair_jsonl
from pyramid_cli.data.tokens import (
    DTYPE,
    INDEX_NAME,
    META_NAME,
    TokenMeta,
    TokenSet,
    expected_bytes,
    level_name,
    read_index,
    read_meta,
)
from pyramid_cli.errors import FormatError, InputError, PyramidError, UsageError
from pyramid_cli.hub.identity import CodecIdentity, check_codec_identity
from pyramid_cli.runtime.fileio import write_text_atomic
from pyramid_cli.runtime.locking import LOCK_NAME

if TYPE_CHECKING:
    from pyramid_cli.pyr.file import PyrFile


@dataclass(frozen=True)
class ItemReport:
    """Progress: one item handled. ``done`` counts items handled so far (this one included) of ``total``."""

    split: str
    id: str
    status: str  # "encoded", "skipped" (already in the index) or "failed"
    done: int
    total: int
    seconds: float = 0.0  # audio encoded now
    error: str | None = None


@dataclass(frozen=True)
class ItemFailure:
    split: str
    id: str
    audio: str
    error: str


@dataclass
class TokenizeSummary:
    out: Path
    codec_name: str
    codec_hash: str
    encoded: int = 0  # items encoded by this run
    skipped: int = 0  # items found in the index
    failures: list[ItemFailure] = field(default_factory=list)
    items: dict[str, int] = field(default_factory=dict)  # per split, items in the index after the run
    frames: dict[str, list[int]] = field(default_factory=dict)  # per split, frames per level after the run
    encoded_seconds: float = 0.0
    wall_seconds: float = 0.0
    shard: tuple[int, int] = (0, 1)  # (i, n): this run encoded shard i of n

    @property
    def failed(self) -> int:
        return len(self.failures)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.update(out=str(self.out), failed=self.failed)
        return data


def shard_records(records: Sequence[dict[str, Any]], shard: tuple[int, int]) -> list[dict[str, Any]]:
    """The records (of one split) that shard ``i`` of ``n`` encodes, sorted by id.

    Greedy by duration: longest first (ties by id), each to the shard with the least audio so far
    (ties to the lowest shard). Deterministic for a given list, whatever its order.
    """
    index, count = shard
    if count == 1:
        return sorted(records, key=lambda r: r["id"])
    loads, mine = [0.0] * count, []
    for record in sorted(records, key=lambda r: (-float(r["duration"]), r["id"])):
        target = min(range(count), key=lambda k: (loads[k], k))
        loads[target] += float(record["duration"])
        if target == index:
            mine.append(record)
    return sorted(mine, key=lambda r: r["id"])


def _check_shard(shard: tuple[int, int]) -> None:
    index, count = shard
    if not (isinstance(index, int) and isinstance(count, int) and 0 <= index < count):
        raise UsageError(f"shard must be i/n with 0 <= i < n, got '{index}/{count}'", option="shard")


def _choose_splits(records: list[dict[str, Any]], splits: Sequence[str] | None) -> list[str]:
    present = {r["split"] for r in records}
    known = list(SPLITS) + sorted(present - set(SPLITS))
    if splits is None:
        return [s for s in known if s in present]
    unknown = [s for s in splits if s not in known]
    if unknown or not splits:
        raise UsageError(f"unknown split {unknown[0]!r}; the corpus has {', '.join(known)}" if unknown
                         else "no split to tokenize")
    return list(dict.fromkeys(splits))


def _prepare(out: Path, meta: TokenMeta, aliases: tuple[str, ...] = ()) -> TokenMeta:
    """Create the folder and tokens.json, or check that an existing one belongs to the same codec.

    Returns the meta to record: an existing folder's, when it names the codec by one of ``aliases``
    (the whole-file hash that earlier versions recorded), so that a resumed folder stays consistent.
    """
    if (out / META_NAME).exists():
        old = read_meta(out)
        if old.codec_hash in aliases:
            meta = dataclasses.replace(meta, codec_hash=old.codec_hash)
        check_codec_identity((old.codec_name, old.codec_hash), CodecIdentity(meta.codec_name, meta.codec_hash),
                             f"tokenize into another folder: {out} holds tokens of", "the codec given is")
        if dataclasses.replace(old, corpus=meta.corpus) != meta:
            raise FormatError(f"{out / META_NAME} differs from this codec's token settings (beyond 'corpus'); "
                              "tokenize into another folder")
        return meta
    if out.exists() and (not out.is_dir() or any(p.name != LOCK_NAME for p in out.iterdir())):
        raise UsageError(f"{out}: exists and is not a token folder (no {META_NAME}); give a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / META_NAME, json.dumps(meta.to_dict(), indent=2) + "\n")
    return meta


def _resume(folder: Path, meta: TokenMeta) -> tuple[list[int], set[str]]:
    """Make the split's files consistent with its index; return (frames per level, ids done)."""
    folder.mkdir(exist_ok=True)
    repair_jsonl(folder / INDEX_NAME)
    records, ends = read_index(folder / INDEX_NAME, meta)
    (folder / INDEX_NAME).touch()
    for level, end in enumerate(ends):
        path, need = folder / level_name(level), expected_bytes(meta, level, end)
        size = path.stat().st_size if path.exists() else 0
        if size < need:
            raise FormatError(f"{path}: {size} bytes, but its index lists {need}; the token set is damaged "
                              f"(delete {folder} and rerun to encode the split again)")
        with open(path, "r+b" if path.exists() else "wb") as handle:
            handle.truncate(need)  # drops the tokens of an item whose index line was never written
    return ends, {r["id"] for r in records}


def _append_item(handles: Sequence[BinaryIO], index: Path, record: dict[str, Any], pyr: PyrFile,
                 ends: list[int]) -> None:
    """Append one item's tokens, then (once they are on disk) its index line; advance ``ends``."""
    try:
        for handle, level in zip(handles, pyr.levels, strict=True):
            handle.write(np.ascontiguousarray(level.codes.T, dtype=DTYPE).tobytes())  # (frames_i, n_codebooks_i)
        for handle in handles:
            handle.flush()
            os.fsync(handle.fileno())  # the tokens reach the disk before the index names them
        append_jsonl(index, {"id": record["id"], "source": record["audio"], "duration": pyr.duration_seconds,
                             "frames": pyr.frames, "offsets": list(ends)})
    except OSError as error:
        raise InputError(f"{index.parent}: cannot write tokens ({error.strerror or error})") from None
    ends[:] = [e + f for e, f in zip(ends, pyr.frames, strict=True)]


def tokenize_corpus(
    corpus: str | Path,
    codec: LoadedCodec,
    out: str | Path,
    *,
    splits: Sequence[str] | None = None,
    chunk_seconds: float = 30.0,
    on_item: Callable[[ItemReport], None] | None = None,
    shard: tuple[int, int] = (0, 1),
) -> TokenizeSummary:
    """Encode every item of a built corpus into token shards under ``out`` (create or resume).

    Args:
        corpus: a folder made by ``pyramid dataset build`` (``manifest.jsonl`` + audio).
        codec: from ``pyramid_cli.hub.load_codec``; the tokens equal ``encode_file``'s codes.
        out: the token folder (see the module docstring); created if missing.
        splits: the splits to encode (default every split of the manifest).
        chunk_seconds: audio per encoder step; bounds memory, does not change the tokens.
        on_item: called after each item (encoded, skipped or failed), for progress.
        shard: (i, n): encode only shard i of n of each split (see ``shard_records``); ``out`` is
            then an ordinary token folder holding that part, for ``merge_token_sets``.

    Returns:
        What was done; items whose audio is missing, unreadable or silent are in ``failures``
        and are retried by the next run.

    Raises:
        CodecMismatchError: ``out`` holds tokens of another codec. UsageError: an unknown split or
        ``out`` is some other folder. FormatError: a bad manifest or damaged token files.
    """
    from pyramid_cli.codec.api import encode_file  # torch is imported only to encode

    started = time.perf_counter()
    _check_shard(shard)
    corpus, out = Path(corpus), Path(out)
    records = load_manifest(corpus)
    chosen = _choose_splits(records, splits)
    meta = _prepare(out, TokenMeta.for_codec(codec, corpus), codec.aliases)
    summary = TokenizeSummary(out, codec.name, codec.hash, shard=(shard[0], shard[1]))
    plans = []
    for split in chosen:
        ends, done = _resume(out / split, meta)
        plans.append((split, ends, done, shard_records([r for r in records if r["split"] == split], shard)))
    total, count = sum(len(todo) for *_, todo in plans), 0
    for split, ends, done, todo in plans:
        folder = out / split
        handles = [open(folder / level_name(level), "ab") for level in range(meta.levels)]
        try:
            for record in todo:
                count += 1
                if record["id"] in done:
                    summary.skipped += 1
                    report = ItemReport(split, record["id"], "skipped", count, total)
                else:
                    try:
                        pyr = encode_file(corpus / record["audio"], codec, chunk_seconds=chunk_seconds)
                    except PyramidError as error:
                        summary.failures.append(ItemFailure(split, record["id"], record["audio"], str(error)))
                        report = ItemReport(split, record["id"], "failed", count, total, error=str(error))
                    else:
                        _append_item(handles, folder / INDEX_NAME, record, pyr, ends)
                        done.add(record["id"])
                        summary.encoded += 1
                        summary.encoded_seconds += pyr.duration_seconds
                        report = ItemReport(split, record["id"], "encoded", count, total, pyr.duration_seconds)
                if on_item is not None:
                    on_item(report)
        finally:
            for handle in handles:
                handle.close()
        summary.items[split] = len(done)
        summary.frames[split] = list(ends)
    summary.wall_seconds = time.perf_counter() - started
    return summary


@dataclass
class MergeSummary:
    out: Path
    codec_name: str
    codec_hash: str
    parts: int
    merged: int = 0  # items appended to ``out`` by this merge
    skipped: int = 0  # items whose id ``out`` (or an earlier part) already had
    items: dict[str, int] = field(default_factory=dict)  # per split, items in ``out`` after the merge
    frames: dict[str, list[int]] = field(default_factory=dict)  # per split, frames per level after the merge

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["out"] = str(self.out)
        return data


def _check_same_meta(meta: TokenMeta, other: TokenMeta, where: Path, first: Path) -> None:
    check_codec_identity((other.codec_name, other.codec_hash), CodecIdentity(meta.codec_name, meta.codec_hash),
                         f"only parts of one codec can be merged: {where} holds tokens of", f"{first} of")
    if dataclasses.replace(other, corpus=meta.corpus) != meta:
        raise FormatError(f"{where / META_NAME} differs from {first / META_NAME} (beyond 'corpus'); "
                          "only parts made by one codec can be merged")


def merge_token_sets(out: str | Path, parts: Sequence[str | Path]) -> MergeSummary:
    """Append the items of token folders ``parts`` (e.g. ``tokenize --shard i/n`` outputs) to ``out``.

    ``out`` is created (with the first part's tokens.json) when missing or empty; an existing token
    folder gets the parts' items it lacks. Per split, the new items (ids not in ``out`` nor in an
    earlier part) are appended sorted by id: all their level data first (fsynced), then their index
    lines (fsynced), so an interrupted merge leaves ``out`` valid after a rerun (see the module docstring).

    Raises:
        UsageError: no parts, or ``out`` is some other non-empty folder. InputError: a part is not a
        token folder. CodecMismatchError: parts (or ``out``) of different codecs. FormatError: other
        tokens.json differences, or a damaged / unfinished part.
    """
    out = Path(out)
    paths = [Path(p) for p in parts]
    if not paths:
        raise UsageError("merge-tokens needs at least one PART")
    sets = [TokenSet.open(p) for p in paths]
    meta = sets[0].meta
    for part in sets[1:]:
        _check_same_meta(meta, part.meta, part.path, paths[0])
    for part in sets:  # refuse a damaged or unfinished part before anything is written
        for split in part.splits():
            part._load(split)
    if (out / META_NAME).exists():
        existing = read_meta(out)
        _check_same_meta(existing, meta, paths[0], out)
        meta = existing
    else:
        _prepare(out, meta)
    summary = MergeSummary(out, meta.codec_name, meta.codec_hash, len(paths))
    found = {s for part in sets for s in part.splits()}
    for split in [s for s in SPLITS if s in found] + sorted(found - set(SPLITS)):
        folder = out / split
        ends, done = _resume(folder, meta)
        new: dict[str, tuple[dict[str, Any], list[np.ndarray]]] = {}
        for part in sets:
            if split not in part.splits():
                continue
            if part.path.resolve() == out.resolve():
                summary.skipped += len(part.items(split))
                continue
            records, arrays = part._load(split)  # checks the part's sizes against its index
            for record in records:
                if record["id"] in done or record["id"] in new:
                    summary.skipped += 1
                else:
                    new[record["id"]] = (record, arrays)
        ends = _append_items(folder, meta, new, ends)
        summary.merged += len(new)
        summary.items[split] = len(done) + len(new)
        summary.frames[split] = list(ends)
    return summary


def _append_items(folder: Path, meta: TokenMeta, new: dict[str, tuple[dict[str, Any], list[np.ndarray]]],
                  ends: list[int]) -> list[int]:
    """Append ``new`` items (id → (index record, the part's level arrays)) to one split folder, sorted by id;
    return the level ends after them. All level data first (fsynced), then the index lines."""
    lines = []
    try:
        for level in range(meta.levels):
            with open(folder / level_name(level), "ab") as handle:
                for item_id in sorted(new):
                    record, arrays = new[item_id]
                    start, count = record["offsets"][level], record["frames"][level]
                    handle.write(np.ascontiguousarray(arrays[level][start:start + count], dtype=DTYPE).tobytes())
                handle.flush()
                os.fsync(handle.fileno())  # the tokens reach the disk before the index names them
        for item_id in sorted(new):
            record = new[item_id][0]
            lines.append(json.dumps({"id": item_id, "source": record["source"], "duration": record["duration"],
                                     "frames": record["frames"], "offsets": list(ends)}, sort_keys=True) + "\n")
            ends = [e + f for e, f in zip(ends, record["frames"], strict=True)]
        with open(folder / INDEX_NAME, "a", encoding="utf-8") as handle:
            handle.write("".join(lines))
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        raise InputError(f"{folder}: cannot write tokens ({error.strerror or error})") from None
    return ends
