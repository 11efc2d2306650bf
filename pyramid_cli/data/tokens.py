"""Token shards: a corpus encoded by one codec into flat, memory-mappable uint16 files.

``tokenize_corpus`` (``pyramid dataset tokenize``, in ``pyramid_cli.data.tokenize``) writes them;
``TokenSet`` reads them for the LM trainer. No pickles and no framing: each level of a split is one
raw array that ``np.memmap`` maps as is, so a trainer can sample windows from hours of tokens without
loading them.

Format "pyramid-tokens", version 1. A token folder TOKENS holds::

    TOKENS/tokens.json     UTF-8 JSON object, written once (atomically) before any tokens:
        {"format": "pyramid-tokens", "version": 1,
         "codec": {"name": str, "hash": str},   # the codec's identity, as .pyr files record it
         "sample_rate": int,                    # Hz, the codec's rate
         "hop_lengths": [int, ...],             # samples per frame per level, level 0 (coarsest) first
         "frame_rates": [float, ...],           # sample_rate / hop_lengths[i], exact
         "n_codebooks": [int, ...],             # codebooks per level
         "codebook_size": int,                  # every code lies in [0, codebook_size); at most 65,536
         "corpus": str,                         # the corpus path as given to the first run
         "levels": int}                         # number of levels = len(hop_lengths)

    TOKENS/<split>/level<i>.u16     for i in 0 .. levels-1. Raw little-endian uint16, no header,
        an array shaped (total_frames_i, n_codebooks[i]) in row-major order: bytes
        2*(frame*n_codebooks[i] + q) and 2*(frame*n_codebooks[i] + q) + 1 are the low and high
        byte of the code of codebook q (residual order) at frame `frame`. The items of the split
        follow one another, in index order. Size: exactly 2 * total_frames_i * n_codebooks[i].

    TOKENS/<split>/index.jsonl      one JSON object per item, one "\\n"-terminated line each, in
        file order (items sorted by id when they were encoded):
        {"id": str,              # the corpus manifest's id
         "source": str,          # the audio file that was encoded, relative to the corpus
         "duration": float,      # seconds of audio encoded, at the codec's rate
         "frames": [f_0, ...],   # the item's frames per level; f_i * hop_lengths[i] is the same for all i
         "offsets": [o_0, ...]}  # its first row in level<i>.u16: o_i of an item = o_i + f_i of the one before

The item's level-i codes are rows o_i .. o_i + f_i - 1 of level<i>.u16, transposed to
(n_codebooks[i], f_i): exactly ``PyrFile.levels[i].codes`` of ``pyramid encode`` on its audio
(encoding is chunk-invariant). Splits are those of the corpus manifest.

Resume: an item's level data is appended and fsynced before its index line, which is appended and
fsynced last; the index is the truth. A rerun drops a torn last index line, truncates every level
file to the end that the index implies (an item caught half-written) and skips the ids it lists.

Shards (``tokenize --shard i/n``, then ``merge-tokens``) are ordinary token folders; how items are
dealt to shards and merged back is documented in ``pyramid_cli.data.tokenize``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pyramid_cli.codec.api import LoadedCodec
from pyramid_cli.data.manifest import SPLITS, read_jsonl
from pyramid_cli.errors import FormatError, InputError, UsageError
from pyramid_cli.runtime.fileio import read_json_object

FORMAT = "pyramid-tokens"
VERSION = 1
META_NAME = "tokens.json"
INDEX_NAME = "index.jsonl"
DTYPE = np.dtype("<u2")  # little-endian on every host
MAX_CODEBOOK_SIZE = 2**16


def level_name(level: int) -> str:
    return f"level{level}.u16"


def _is_int_list(value: Any, length: int, low: int = 0) -> bool:
    return (isinstance(value, list) and len(value) == length
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= low for v in value))


@dataclass(frozen=True)
class TokenMeta:
    """The content of ``tokens.json`` (see the module docstring)."""

    codec_name: str
    codec_hash: str
    sample_rate: int
    hop_lengths: tuple[int, ...]
    frame_rates: tuple[float, ...]
    n_codebooks: tuple[int, ...]
    codebook_size: int
    corpus: str

    @property
    def levels(self) -> int:
        return len(self.hop_lengths)

    @classmethod
    def for_codec(cls, codec: LoadedCodec, corpus: str | Path) -> TokenMeta:
        config = codec.model.config
        if config.codebook_size > MAX_CODEBOOK_SIZE:
            raise UsageError(f"{codec.name} has {config.codebook_size} codes per codebook; "
                             f"uint16 token files hold at most {MAX_CODEBOOK_SIZE}")
        return cls(codec.name, codec.hash, config.sample_rate, tuple(config.hop_lengths),
                   tuple(float(r) for r in config.frame_rates), tuple(config.n_codebooks),
                   config.codebook_size, str(corpus))

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "codec": {"name": self.codec_name, "hash": self.codec_hash},
                "sample_rate": self.sample_rate, "hop_lengths": list(self.hop_lengths),
                "frame_rates": list(self.frame_rates), "n_codebooks": list(self.n_codebooks),
                "codebook_size": self.codebook_size, "corpus": self.corpus, "levels": self.levels}

    @classmethod
    def from_dict(cls, data: Any, name: str) -> TokenMeta:
        """Validate a parsed ``tokens.json``; every defect is a FormatError naming ``name``."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise FormatError(f"{name}: not a pyramid token set (format is not {FORMAT!r})")
        if data.get("version") != VERSION:
            raise FormatError(f"{name}: token format version {data.get('version')!r}; this pyramid reads {VERSION}")
        codec, levels = data.get("codec"), data.get("levels")
        if not (isinstance(codec, dict) and isinstance(codec.get("name"), str) and isinstance(codec.get("hash"), str)):
            raise FormatError(f"{name}: 'codec' must be {{\"name\": str, \"hash\": str}}")
        if not (isinstance(levels, int) and levels >= 1 and _is_int_list(data.get("hop_lengths"), levels, 1)
                and _is_int_list(data.get("n_codebooks"), levels, 1)
                and isinstance(data.get("frame_rates"), list) and len(data["frame_rates"]) == levels):
            raise FormatError(f"{name}: hop_lengths, frame_rates and n_codebooks need one entry per level")
        size, rate = data.get("codebook_size"), data.get("sample_rate")
        if not (isinstance(size, int) and 1 <= size <= MAX_CODEBOOK_SIZE and isinstance(rate, int) and rate > 0):
            raise FormatError(f"{name}: codebook_size must be in 1..{MAX_CODEBOOK_SIZE} and sample_rate positive")
        return cls(codec["name"], codec["hash"], rate, tuple(data["hop_lengths"]),
                   tuple(float(r) for r in data["frame_rates"]), tuple(data["n_codebooks"]), size,
                   str(data.get("corpus", "")))


def read_meta(folder: Path) -> TokenMeta:
    """A token folder's ``tokens.json``, validated (also read by ``tokenize`` when it appends or merges)."""
    path = folder / META_NAME
    if not path.exists():
        raise InputError(f"{folder}: not a token folder (no {META_NAME}; made by `pyramid dataset tokenize`)")
    return TokenMeta.from_dict(read_json_object(path, "token metadata"), str(path))


def read_index(path: Path, meta: TokenMeta) -> tuple[list[dict[str, Any]], list[int]]:
    """The index entries, checked to tile the level files, and the frame count they imply per level."""
    records = read_jsonl(path)  # a torn last line (killed mid-append) is dropped
    ends, seen = [0] * meta.levels, set()
    for number, record in enumerate(records, start=1):
        frames: Any = record.get("frames")
        offsets: Any = record.get("offsets")
        valid = (isinstance(record.get("id"), str) and record["id"] not in seen
                 and isinstance(record.get("source"), str) and isinstance(record.get("duration"), (int, float))
                 and _is_int_list(frames, meta.levels) and offsets == ends
                 and len({f * h for f, h in zip(frames, meta.hop_lengths, strict=True)}) == 1)
        if not valid:
            raise FormatError(f"{path}: entry {number} ({record.get('id', '?')}) is inconsistent (expected a new "
                              f"id, a source, a duration, offsets {ends} and frames for equal lengths)")
        seen.add(record["id"])
        ends = [o + f for o, f in zip(ends, frames, strict=True)]
    return records, ends


def expected_bytes(meta: TokenMeta, level: int, frames: int) -> int:
    """Size of a level file holding ``frames`` frames of that level."""
    return frames * meta.n_codebooks[level] * DTYPE.itemsize


@dataclass(frozen=True)
class TokenItem:
    """One encoded item; ``levels()`` views its codes in the memory-mapped level files."""

    id: str
    source: str
    duration: float
    frames: list[int]
    offsets: list[int]
    arrays: list[np.ndarray] = field(repr=False, compare=False)  # the split's (total_frames_i, n_codebooks_i)

    def levels(self) -> list[np.ndarray]:
        """Per level, level 0 first, a read-only uint16 view shaped (n_codebooks_i, frames_i) (no copy)."""
        return [a[o:o + f].T for a, o, f in zip(self.arrays, self.offsets, self.frames, strict=True)]


class TokenSet:
    """A token folder opened for reading; use ``TokenSet.open(path)``."""

    def __init__(self, path: Path, meta: TokenMeta) -> None:
        self.path = path
        self.meta = meta
        self._cache: dict[str, tuple[list[dict[str, Any]], list[np.ndarray]]] = {}

    @classmethod
    def open(cls, path: str | Path) -> TokenSet:
        """Read and validate ``tokens.json`` (format, version, fields).

        Raises:
            InputError: no such token folder. FormatError: a bad or newer tokens.json.
        """
        return cls(Path(path), read_meta(Path(path)))

    @property
    def codec_name(self) -> str:
        return self.meta.codec_name

    @property
    def codec_hash(self) -> str:
        return self.meta.codec_hash

    def splits(self) -> list[str]:
        """Splits present (train, valid, test first, then any other), each a folder with an index."""
        found = {p.parent.name for p in self.path.glob(f"*/{INDEX_NAME}")}
        return [s for s in SPLITS if s in found] + sorted(found - set(SPLITS))

    def arrays(self, split: str) -> list[np.ndarray]:
        """Per level the whole split as a read-only (total_frames_i, n_codebooks_i) uint16 memmap."""
        return self._load(split)[1]

    def items(self, split: str) -> list[TokenItem]:
        """The items of ``split`` in file order; sizes are checked against the index first.

        Raises:
            InputError: no such split. FormatError: an inconsistent index or a level file whose size
                does not match it (truncated, or an interrupted run that was never resumed).
        """
        records, arrays = self._load(split)
        return [TokenItem(r["id"], r["source"], float(r["duration"]), r["frames"], r["offsets"], arrays)
                for r in records]

    def _load(self, split: str) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
        if split not in self._cache:
            folder = self.path / split
            if not (folder / INDEX_NAME).is_file():
                raise InputError(f"{self.path}: no split {split!r} (splits: {', '.join(self.splits()) or 'none'})")
            records, ends = read_index(folder / INDEX_NAME, self.meta)
            arrays = []
            for level, end in enumerate(ends):
                path, n_q = folder / level_name(level), self.meta.n_codebooks[level]
                size = path.stat().st_size if path.exists() else -1
                if size != expected_bytes(self.meta, level, end):
                    raise FormatError(f"{path}: {max(size, 0)} bytes, but its index lists {end} frames x {n_q} "
                                      f"codebooks = {expected_bytes(self.meta, level, end)} bytes (truncated or "
                                      "interrupted; rerun `pyramid dataset tokenize` to finish it)")
                # np.memmap refuses empty files; an empty split is an empty array.
                arrays.append(np.memmap(path, dtype=DTYPE, mode="r", shape=(end, n_q)) if end
                              else np.zeros((0, n_q), dtype=DTYPE))
            self._cache[split] = (records, arrays)
        return self._cache[split]


def token_stats(tokens: TokenSet) -> dict[str, Any]:
    """Per split: items, hours and, per level and codebook, frames, codes used and perplexity.

    How much of each codebook the data really uses (issue 10 asks for 90%): measured on a whole
    split, it is not limited by the sample size as a few evaluation clips are.
    """
    import torch

    from pyramid_cli.codec.quantize import codebook_usage

    size = tokens.meta.codebook_size
    splits: dict[str, Any] = {}
    for split in tokens.splits():
        items = tokens.items(split)
        levels = []
        for level, array in enumerate(tokens.arrays(split)):
            counts = np.stack([np.bincount(array[:, book], minlength=size) for book in range(array.shape[1])])
            levels.append({"level": level, "frames": int(array.shape[0]), "codebooks": [
                {"used": u.used, "size": size, "perplexity": u.perplexity}
                for u in codebook_usage(torch.from_numpy(counts))]})
        splits[split] = {"items": len(items), "hours": sum(i.duration for i in items) / 3600, "levels": levels}
    return {"codec": f"{tokens.codec_name}@{tokens.codec_hash}", "codebook_size": size, "splits": splits}
