"""The `.pyr` header: its fields, limits and strict reader (``PyrHeader``, ``parse_header``); the
layout is in the package docstring, byte by byte in docs/pyr-format.md. Every reading function
reports a defect by raising ValueError with a one-line reason, which the callers turn into a
`FormatError` naming the file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import operator
import os
import struct
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pyramid_cli.errors import FormatError, InputError
from pyramid_cli.pyr.codes import bits_per_code

if TYPE_CHECKING:
    from pyramid_cli.pyr.file import PyrFile

MAGIC = b"PYRM"
FORMAT_VERSION = 1
PREAMBLE = struct.Struct("<4sHII")  # magic, version, header length, header CRC32 (14 bytes)

# Bounds that no real file comes near; they turn hostile sizes into clear errors, not MemoryErrors.
MAX_HEADER_BYTES = 16 * 2**20
MAX_CODEBOOK_SIZE = 2**24
MAX_CODEBOOKS = 4096
MAX_LEVELS = 64
MAX_RATE = 10**7
MAX_HOP = 2**24
MAX_SAMPLES = 2**48
MAX_FRAMES = 2**40

ProvenanceValue = str | int | float | bool | None


def check_int(name: str, value: Any, low: int, high: int) -> int:
    """`value` as a plain int in [low, high]; bools and floats are refused (JSON `true` is no size)."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        value = operator.index(value)  # accepts numpy integers, refuses 3.0
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r:.40}") from None
    if not low <= value <= high:
        raise ValueError(f"{name} = {value} is out of range [{low}, {high}]")
    return int(value)


def check_text(name: str, value: Any, max_len: int, hex_only: bool = False) -> str:
    if not isinstance(value, str) or not value or len(value) > max_len or not value.isprintable():
        raise ValueError(f"{name} must be a non-empty printable string of at most {max_len} characters")
    if hex_only and value.strip("0123456789abcdef"):
        raise ValueError(f"{name} must be lowercase hexadecimal, got {value!r:.40}")
    return value


@dataclasses.dataclass(frozen=True)
class PyrLevelInfo:
    """One level as the header describes it, without its codes (``PyrHeader``)."""

    hop_length: int
    n_codebooks: int
    frames: int


class Figures:
    """Rates and sizes computed from the level shapes alone: ``PyrFile`` and ``PyrHeader`` share them."""

    levels: list[Any]  # PyrLevel or PyrLevelInfo: hop_length, n_codebooks, frames
    sample_rate: int
    num_samples: int
    codebook_size: int

    # -- figures for `pyramid info` (UX §2: always the exact rates, never the nominal ones) --

    @property
    def n_levels(self) -> int:
        return len(self.levels)

    @property
    def frames(self) -> list[int]:
        return [level.frames for level in self.levels]

    @property
    def duration_seconds(self) -> float:
        return self.num_samples / self.sample_rate

    @property
    def frame_rates(self) -> list[float]:
        """Frames per second per level: sample_rate / hop_length."""
        return [self.sample_rate / level.hop_length for level in self.levels]

    @property
    def tokens_per_second(self) -> list[float]:
        """Codes per second of audio contributed by each level: frame_rate * n_codebooks."""
        return [rate * level.n_codebooks for rate, level in zip(self.frame_rates, self.levels, strict=True)]

    @property
    def cumulative_tokens_per_second(self) -> list[float]:
        """Entry k-1: tokens per second decoding the first k levels (10.8 / 32.3 / 75.4 for p111)."""
        return list(np.cumsum(self.tokens_per_second).tolist())

    @property
    def bits_per_code(self) -> int:
        return bits_per_code(self.codebook_size)

    @property
    def bits_per_second(self) -> list[float]:
        """Per level, at `bits_per_code` bits per code (what the payload actually spends)."""
        return [tps * self.bits_per_code for tps in self.tokens_per_second]

    @property
    def cumulative_bits_per_second(self) -> list[float]:
        return [tps * self.bits_per_code for tps in self.cumulative_tokens_per_second]

    @property
    def level_payload_bytes(self) -> list[int]:
        return [-(-level.n_codebooks * level.frames * self.bits_per_code // 8) for level in self.levels]

    @property
    def payload_size(self) -> int:
        """Bytes of packed codes (the file adds a preamble and a JSON header)."""
        return sum(self.level_payload_bytes)

    def frame_time(self, level: int, frame: int) -> float:
        """Start time in seconds of `frame` of `level`: frame * hop_length / sample_rate."""
        return frame * self.levels[level].hop_length / self.sample_rate


def validate_scalars(pyr: PyrFile | PyrHeader) -> None:
    """Check and normalise the fields besides the levels (shared by ``PyrFile`` and ``PyrHeader``)."""
    pyr.codec_name = check_text("codec_name", pyr.codec_name, 200)
    pyr.codec_hash = check_text("codec_hash", pyr.codec_hash, 128, hex_only=True)
    pyr.sample_rate = check_int("sample_rate", pyr.sample_rate, 1, MAX_RATE)
    pyr.num_samples = check_int("num_samples", pyr.num_samples, 0, MAX_SAMPLES)
    pyr.original_sample_rate = check_int("original_sample_rate", pyr.original_sample_rate, 1, MAX_RATE)
    pyr.original_channels = check_int("original_channels", pyr.original_channels, 1, 1024)
    pyr.codebook_size = check_int("codebook_size", pyr.codebook_size, 2, MAX_CODEBOOK_SIZE)
    pyr.pyramid_version = check_text("pyramid_version", pyr.pyramid_version, 64)
    pyr.provenance = _check_provenance(pyr.provenance)


@dataclasses.dataclass(kw_only=True)
class PyrHeader(Figures):
    """What a `.pyr` header says, read without its payload: ``pyramid info`` of any size of file.

    Every header check of ``PyrFile.from_bytes`` runs, and the payload's length must match the
    file's; the payload itself (its checksum, its codes) is neither read nor verified.
    """

    codec_name: str
    codec_hash: str
    sample_rate: int
    num_samples: int
    original_sample_rate: int
    original_channels: int
    levels: list[PyrLevelInfo]
    codebook_size: int
    pyramid_version: str
    provenance: dict[str, ProvenanceValue]
    payload_crc32: int

    def __post_init__(self) -> None:
        validate_scalars(self)

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview, name: str = "<stdin>") -> PyrHeader:
        """The header of a whole `.pyr` held in memory; a defect raises FormatError("NAME: reason")."""
        try:
            return parse_header(bytes(data[:PREAMBLE.size + MAX_HEADER_BYTES]), len(data))[0]
        except ValueError as error:
            raise FormatError(f"{name}: {error}") from error

    @classmethod
    def read(cls, path: str | Path) -> PyrHeader:
        """Read the preamble and the header of the file at ``path`` (at most 16 MiB), not its payload."""
        try:
            with open(path, "rb") as handle:
                total = os.fstat(handle.fileno()).st_size
                prefix = handle.read(PREAMBLE.size)
                if len(prefix) == PREAMBLE.size:
                    header_length = PREAMBLE.unpack(prefix)[2]
                    # Only a length the checks will accept is worth reading; the others fail on the preamble.
                    if header_length <= min(total - PREAMBLE.size, MAX_HEADER_BYTES):
                        prefix += handle.read(header_length)
        except FileNotFoundError:
            raise InputError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise InputError(f"{path}: is a directory, not a .pyr file") from None
        except OSError as error:
            raise InputError(f"{path}: cannot read ({error.strerror or error})") from None
        try:
            return parse_header(prefix, total)[0]
        except ValueError as error:
            raise FormatError(f"{path}: {error}") from error


def _check_provenance(provenance: Any) -> dict[str, ProvenanceValue]:
    """A copy with numpy scalars made plain; refuses values JSON cannot carry back unchanged."""
    if not isinstance(provenance, dict):
        raise ValueError("provenance must be an object of names to str/int/float/bool/null")
    clean: dict[str, ProvenanceValue] = {}
    for key, value in provenance.items():
        if isinstance(value, np.generic):
            value = value.item()
        label = f"provenance[{key!r:.40}]"
        if not isinstance(key, str) or not _utf8_ok(key):
            raise ValueError(f"{label}: names must be UTF-8 strings")
        if isinstance(value, str) and not _utf8_ok(value):
            raise ValueError(f"{label}: not encodable as UTF-8")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{label} must be finite, got {value}")
        if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
            raise ValueError(f"{label} does not fit in 64 bits")
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise ValueError(f"{label} must be str, int, float, bool or null, got {type(value).__name__}")
        clean[key] = value
    return clean


def _utf8_ok(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates, e.g. from a JSON "\ud800" escape
        return False
    return True


# -- reading: every function below reports a defect by raising ValueError with a one-line reason --

_HEADER_FIELDS: dict[str, type] = {
    "codec_name": str, "codec_hash": str, "sample_rate": int, "num_samples": int,
    "original_sample_rate": int, "original_channels": int, "codebook_size": int, "levels": list,
    "payload_crc32": int, "pyramid_version": str, "provenance": dict,
}
_LEVEL_FIELDS: dict[str, type] = {
    "hop_length": int, "n_codebooks": int, "frames": int, "bits_per_code": int, "bytes": int,
}
_JSON_TYPE_NAMES = {str: "a string", int: "an integer", list: "an array", dict: "an object"}


def parse_header(data: bytes, total: int) -> tuple[PyrHeader, list[tuple[int, int, int]]]:
    """Check everything but the payload's content.

    Args:
        data: the file's first bytes: at least the preamble and the header when the file has them.
        total: the file's length in bytes, which must be the preamble, header and payload exactly.

    Returns:
        The header, and per level (n_codebooks, frames, payload bytes).
    """
    if data[:4] != MAGIC:
        if not total:
            raise ValueError("empty input, not a .pyr file")
        if MAGIC.startswith(data):
            raise ValueError(f"truncated .pyr file ({total} bytes)")
        raise ValueError(f"not a .pyr file (it starts with {data[:4]!r}, not {MAGIC!r})")
    if total < PREAMBLE.size:
        raise ValueError(f"truncated .pyr file ({total} bytes; the fixed preamble is {PREAMBLE.size})")
    _, version, header_length, header_crc = PREAMBLE.unpack_from(data)
    if version != FORMAT_VERSION:
        newer = "; it was written by a newer pyramid, upgrade to read it" if version > FORMAT_VERSION else ""
        raise ValueError(f"unsupported .pyr format version {version} (this reads {FORMAT_VERSION}){newer}")
    available = total - PREAMBLE.size
    if header_length > available:
        raise ValueError(f"truncated .pyr file: the header is {header_length} bytes, only {available} follow")
    if header_length > MAX_HEADER_BYTES:
        raise ValueError(f"header length {header_length} bytes exceeds the {MAX_HEADER_BYTES}-byte limit")
    header_bytes = data[PREAMBLE.size : PREAMBLE.size + header_length]
    if zlib.crc32(header_bytes) != header_crc:
        raise ValueError("header checksum mismatch: the file is corrupted")
    header = _load_json(header_bytes)
    _check_fields(header, _HEADER_FIELDS, "header")
    codebook_size = check_int("codebook_size", header["codebook_size"], 2, MAX_CODEBOOK_SIZE)
    bits = bits_per_code(codebook_size)
    if not 1 <= len(header["levels"]) <= MAX_LEVELS:
        raise ValueError(f"a .pyr holds 1 to {MAX_LEVELS} levels, the header lists {len(header['levels'])}")
    shapes = []
    for i, entry in enumerate(header["levels"]):
        where = f"levels[{i}]"
        _check_fields(entry, _LEVEL_FIELDS, where)
        check_int(f"{where}.hop_length", entry["hop_length"], 1, MAX_HOP)
        n_codebooks = check_int(f"{where}.n_codebooks", entry["n_codebooks"], 1, MAX_CODEBOOKS)
        frames = check_int(f"{where}.frames", entry["frames"], 0, MAX_FRAMES)
        if entry["bits_per_code"] != bits:
            raise ValueError(f"{where}.bits_per_code is {entry['bits_per_code']}; codebook_size gives {bits}")
        if entry["bytes"] != -(-n_codebooks * frames * bits // 8):
            raise ValueError(f"{where}.bytes is {entry['bytes']}, not the {n_codebooks}x{frames} codes' size")
        shapes.append((n_codebooks, frames, entry["bytes"]))
    payload_length = available - header_length
    expected = sum(n_bytes for _, _, n_bytes in shapes)
    if payload_length < expected:
        raise ValueError(f"truncated .pyr file: {payload_length} payload bytes, the header says {expected}")
    if payload_length > expected:
        extra = payload_length - expected
        raise ValueError(f"{extra} unexpected trailing byte{'s' * (extra > 1)} after the payload")
    levels = [PyrLevelInfo(entry["hop_length"], n_codebooks, frames)
              for entry, (n_codebooks, frames, _) in zip(header["levels"], shapes, strict=True)]
    fields = {key: header[key] for key in _HEADER_FIELDS if key != "levels"}
    return PyrHeader(levels=levels, **fields), shapes


def _load_json(raw: bytes) -> Any:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result = dict(pairs)
        if len(result) != len(pairs):
            raise ValueError("duplicate keys in an object")
        return result

    def no_constants(token: str) -> Any:
        raise ValueError(f"{token} is not valid JSON")

    try:
        text = raw.decode("utf-8")
        return json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constants)
    except UnicodeDecodeError:
        raise ValueError("header is not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"header is not valid JSON ({error.msg} at character {error.pos})") from None
    except ValueError as error:  # the hooks above, or an integer too long to convert
        raise ValueError(f"header is not valid JSON ({error})") from None
    except RecursionError:
        raise ValueError("header is not valid JSON (nested too deeply)") from None


def _check_fields(obj: Any, spec: dict[str, type], where: str) -> None:
    """Exactly the fields of `spec`, each of its JSON type (a bool is not an integer)."""
    if not isinstance(obj, dict):
        raise ValueError(f"{where} must be a JSON object")
    missing = [key for key in spec if key not in obj]
    if missing:
        raise ValueError(f"{where} lacks field{'s' * (len(missing) > 1)} {', '.join(map(repr, missing))}")
    unknown = [key for key in obj if key not in spec]
    if unknown:
        listed = ", ".join(f"{key!r:.40}" for key in unknown[:3])
        raise ValueError(f"{where} has unknown field{'s' * (len(unknown) > 1)} {listed}")
    for key, kind in spec.items():
        value = obj[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ValueError(f"{where} field {key!r} must be {_JSON_TYPE_NAMES[kind]}, got {value!r:.40}")
