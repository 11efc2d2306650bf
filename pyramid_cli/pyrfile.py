"""The `.pyr` token file: hierarchical codec tokens plus everything needed to decode them.

Layout (docs/pyr-format.md has it byte by byte):

    magic b"PYRM" | format version u16 LE | header length u32 LE | header CRC32 u32 LE
    | header: UTF-8 JSON | payload: per level, codes bit-packed MSB-first, padded to a byte

The library holds codes as numpy int64 arrays shaped (n_codebooks, frames), one per level,
level 0 the coarsest. Readers trust nothing: every size, type, range and checksum is checked
and any defect becomes a one-line `FormatError` naming the file (EnCodec's `_read_exactly`
discipline; DAC's pickled `.dac` is what we avoid, dac#53).
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
from typing import Any

import numpy as np

from pyramid_cli.errors import FormatError, InputError
from pyramid_cli.fileio import write_bytes_atomic

MAGIC = b"PYRM"
FORMAT_VERSION = 1
_PREAMBLE = struct.Struct("<4sHII")  # magic, version, header length, header CRC32 (14 bytes)

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


def _int(name: str, value: Any, low: int, high: int) -> int:
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


def _text(name: str, value: Any, max_len: int, hex_only: bool = False) -> str:
    if not isinstance(value, str) or not value or len(value) > max_len or not value.isprintable():
        raise ValueError(f"{name} must be a non-empty printable string of at most {max_len} characters")
    if hex_only and value.strip("0123456789abcdef"):
        raise ValueError(f"{name} must be lowercase hexadecimal, got {value!r:.40}")
    return value


def bits_per_code(codebook_size: int) -> int:
    """ceil(log2(codebook_size)): 10 for 1024, 11 for 1025, 1 for 2."""
    return (codebook_size - 1).bit_length()


def pack_codes(codes: np.ndarray, bits: int) -> bytes:
    """Pack non-negative integers below 2**bits at `bits` bits each, MSB first, zero-padded to a byte.

    Args:
        codes: any shape; packed in C (row-major) order.
        bits: 1..32.
    """
    flat = np.asarray(codes).reshape(-1)
    if flat.size and not np.issubdtype(flat.dtype, np.integer):
        raise ValueError(f"codes must be integers, got {flat.dtype}")
    if not 1 <= bits <= 32:
        raise ValueError(f"bits must be in [1, 32], got {bits}")
    if flat.size and (flat.min() < 0 or flat.max() >= 2**bits):
        raise ValueError(f"codes must lie in [0, {2**bits}) to be packed at {bits} bits")
    # One uint8 per bit, (count, bits), then numpy's packbits (big-endian within each byte):
    # vectorised, a few ms for a million codes, no Python loop per code.
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint64)
    bit_matrix = (flat.astype(np.uint64)[:, None] >> shifts) & np.uint64(1)
    return np.packbits(bit_matrix.astype(np.uint8).reshape(-1)).tobytes()


_UNPACK_CHUNK = 1 << 16  # codes per unpacking step (about 6 MB of temporaries at 10 bits)


def unpack_codes(data: bytes | bytearray | memoryview, count: int, bits: int) -> np.ndarray:
    """Inverse of `pack_codes`: exactly ceil(count*bits/8) bytes → (count,) int64.

    Raises ValueError on a wrong byte count or non-zero padding bits (the canonical form is unique).
    """
    if not 1 <= bits <= 32:
        raise ValueError(f"bits must be in [1, 32], got {bits}")
    n_bytes = -(-count * bits // 8)
    if len(data) != n_bytes:
        raise ValueError(f"{count} codes at {bits} bits need {n_bytes} bytes, got {len(data)}")
    pad = n_bytes * 8 - count * bits
    if pad and data[-1] & ((1 << pad) - 1):
        raise ValueError("non-zero padding bits after the last code")
    weights = np.left_shift(1, np.arange(bits - 1, -1, -1, dtype=np.int64))
    codes = np.empty(count, dtype=np.int64)
    # Chunk by chunk: one byte per bit, widened to int64, is 80 bytes per 10-bit code; whole-file
    # unpacking made a 30 MB file take 3 GB. A chunk's code count is a multiple of 8, so every
    # chunk starts on a byte boundary.
    for start in range(0, count, _UNPACK_CHUNK):
        n = min(_UNPACK_CHUNK, count - start)
        chunk = np.frombuffer(data, dtype=np.uint8, count=-(-n * bits // 8), offset=start * bits // 8)
        codes[start:start + n] = np.unpackbits(chunk, count=n * bits).reshape(n, bits).astype(np.int64) @ weights
    return codes


@dataclasses.dataclass(eq=False)
class PyrLevel:
    """One pyramid level: `codes` (n_codebooks, frames) int64; frame k starts at sample k*hop_length."""

    hop_length: int
    codes: np.ndarray

    def __post_init__(self) -> None:
        self.hop_length = _int("hop_length", self.hop_length, 1, MAX_HOP)
        codes = np.asarray(self.codes)
        if codes.ndim != 2 or not (np.issubdtype(codes.dtype, np.integer) or codes.size == 0):
            raise ValueError(f"codes must be a 2-D integer array (n_codebooks, frames), got {codes.shape}")
        _int("n_codebooks", codes.shape[0], 1, MAX_CODEBOOKS)
        self.codes = np.ascontiguousarray(codes, dtype=np.int64)

    @property
    def n_codebooks(self) -> int:
        return int(self.codes.shape[0])

    @property
    def frames(self) -> int:
        return int(self.codes.shape[1])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PyrLevel):
            return NotImplemented
        return self.hop_length == other.hop_length and self.codes.shape == other.codes.shape and bool(
            np.array_equal(self.codes, other.codes)
        )


@dataclasses.dataclass(frozen=True)
class PyrLevelInfo:
    """One level as the header describes it, without its codes (``PyrHeader``)."""

    hop_length: int
    n_codebooks: int
    frames: int


class _Figures:
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


def _current_version() -> str:
    from pyramid_cli import __version__  # imported late: pyramid_cli/__init__ may re-export PyrFile

    return __version__


@dataclasses.dataclass(kw_only=True)
class PyrFile(_Figures):
    """A `.pyr` file in memory. Fields mirror the JSON header (docs/pyr-format.md)."""

    codec_name: str  # e.g. "pyramid-22k-p111"
    codec_hash: str  # lowercase hex hash of the codec weights/config: its identity
    sample_rate: int  # the codec's rate
    num_samples: int  # encoded length at the codec rate, so decode restores it exactly (dac#37)
    original_sample_rate: int  # of the input before resampling
    original_channels: int  # of the input before mix-down
    levels: list[PyrLevel]  # level 0 is the coarsest
    codebook_size: int = 1024
    pyramid_version: str = dataclasses.field(default_factory=_current_version)
    provenance: dict[str, ProvenanceValue] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check and normalise every field (numpy scalars → int); raises ValueError on the first defect.

        Runs on construction and again before writing, since fields may be edited in between.
        """
        _validate_scalars(self)
        if not isinstance(self.levels, (list, tuple)) or not 1 <= len(self.levels) <= MAX_LEVELS:
            raise ValueError(f"a .pyr holds 1 to {MAX_LEVELS} levels")
        self.levels = list(self.levels)
        for i, level in enumerate(self.levels):
            if not isinstance(level, PyrLevel):
                raise ValueError(f"levels[{i}] must be a PyrLevel")
            if level.codes.size and (level.codes.min() < 0 or level.codes.max() >= self.codebook_size):
                bad = level.codes.min() if level.codes.min() < 0 else level.codes.max()
                raise ValueError(f"level {i} holds code {bad}, outside [0, {self.codebook_size})")

    # -- serialisation --

    def to_bytes(self) -> bytes:
        """The whole file. Deterministic: equal objects give equal bytes."""
        self.validate()
        bits = self.bits_per_code
        payload = b"".join(pack_codes(level.codes, bits) for level in self.levels)
        header = {
            "codec_name": self.codec_name,
            "codec_hash": self.codec_hash,
            "sample_rate": self.sample_rate,
            "num_samples": self.num_samples,
            "original_sample_rate": self.original_sample_rate,
            "original_channels": self.original_channels,
            "codebook_size": self.codebook_size,
            "levels": [
                {"hop_length": lv.hop_length, "n_codebooks": lv.n_codebooks, "frames": lv.frames,
                 "bits_per_code": bits, "bytes": n_bytes}
                for lv, n_bytes in zip(self.levels, self.level_payload_bytes, strict=True)
            ],
            "payload_crc32": zlib.crc32(payload),
            "pyramid_version": self.pyramid_version,
            "provenance": self.provenance,
        }
        text = json.dumps(header, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        header_bytes = text.encode("utf-8")
        preamble = _PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(header_bytes), zlib.crc32(header_bytes))
        return preamble + header_bytes + payload

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview, name: str = "<stdin>") -> PyrFile:
        """Parse a whole `.pyr`; any defect raises FormatError("NAME: reason"), never anything else."""
        try:
            return _parse(bytes(data))
        except ValueError as error:  # every check below reports through ValueError
            raise FormatError(f"{name}: {error}") from error

    def write(self, path: str | Path) -> None:
        """Write atomically (temporary file + rename): an interrupted write leaves no partial file."""
        write_bytes_atomic(path, self.to_bytes())

    @classmethod
    def read(cls, path: str | Path) -> PyrFile:
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            raise InputError(f"{path}: no such file") from None
        except OSError as error:
            raise InputError(f"{path}: cannot read ({error.strerror or error})") from None
        return cls.from_bytes(data, name=str(path))

    # -- editing without decoding (UX §1: strip and slice) --

    def truncate_levels(self, k: int) -> PyrFile:
        """Keep levels 0..k-1, like a scalable codec: the coarse levels decode on their own.

        The new file shares the kept `PyrLevel` objects (and their code arrays) with this one.
        """
        if not 1 <= k <= self.n_levels:
            raise ValueError(f"cannot keep {k} levels of a file with {self.n_levels}")
        return dataclasses.replace(self, levels=self.levels[:k], provenance=dict(self.provenance))

    def slice_frames(self, start: int, end: int | None = None, level: int = 0) -> PyrFile:
        """Keep frames [start, end) of `level` and the same span of time from every other level.

        The span must start on a frame boundary of every level (always true for level 0 of a
        pyramid, whose hop is a multiple of the finer hops); `end=None` runs to the end.
        """
        if not 0 <= level < self.n_levels:
            raise ValueError(f"level {level} does not exist (the file has {self.n_levels})")
        hop, n_frames = self.levels[level].hop_length, self.levels[level].frames
        end = n_frames if end is None else min(end, n_frames)
        if not 0 <= start <= end:
            raise ValueError(f"bad frame range [{start}, {end})")
        common = math.lcm(*(lv.hop_length for lv in self.levels))
        if (start * hop) % common or (end < n_frames and (end * hop) % common):
            raise ValueError(
                f"frames [{start}, {end}) of level {level} do not fall on frame boundaries of every level "
                f"(multiples of {common} samples); use slice_seconds"
            )
        return self._slice_samples(start * hop, None if end == n_frames else end * hop)

    def slice_seconds(self, start: float, end: float | None = None) -> PyrFile:
        """Keep the time span [start, end) seconds, widened outward to whole frames of every level."""
        if not (math.isfinite(start) and start >= 0) or (end is not None and not end >= start):
            raise ValueError(f"bad time range [{start}, {end})")
        end = None if end == math.inf else end
        # Round to the nearest sample first so that frame_time() values map back to their own frame.
        common = math.lcm(*(lv.hop_length for lv in self.levels))
        first = round(start * self.sample_rate) // common * common
        last = None if end is None else -(-round(end * self.sample_rate) // common) * common
        return self._slice_samples(first, last)

    def _slice_samples(self, first: int, last: int | None) -> PyrFile:
        """Cut at sample `first` (a multiple of every hop) up to `last` (None: the end)."""
        levels = []
        for lv in self.levels:
            a = min(first // lv.hop_length, lv.frames)
            b = lv.frames if last is None else max(a, min(last // lv.hop_length, lv.frames))
            levels.append(PyrLevel(lv.hop_length, lv.codes[:, a:b].copy()))
        end_sample = self.num_samples if last is None else min(last, self.num_samples)
        provenance = dict(self.provenance)
        # Continuation and re-assembly need the absolute time of the cut (UX §6, audiocraft#287).
        offset = provenance.get("offset_samples")
        offset = offset if isinstance(offset, int) and not isinstance(offset, bool) else 0
        provenance["offset_samples"] = offset + first
        return dataclasses.replace(
            self, num_samples=max(0, end_sample - first), levels=levels, provenance=provenance
        )


def pyr_summary(pyr: PyrFile | PyrHeader, file_bytes: int, name: str = "the .pyr file") -> dict[str, Any]:
    """The figures ``pyramid info`` shows: exact rates per level, alone and cumulative (UX §2).

    They come from the header alone: a ``PyrHeader`` (no codes unpacked) gives what the file gives.
    It lives here, not beside the codec, so that ``pyramid info`` never imports torch (2 s, 600 MB).

    Compression ratios compare with 16-bit PCM at the input's original rate and channel count:
    per level from the bit rates, for the whole file from its size in bytes.
    """
    pcm_bits_per_second = pyr.original_sample_rate * pyr.original_channels * 16
    pcm_bytes = round(pyr.duration_seconds * pyr.original_sample_rate) * pyr.original_channels * 2
    levels = []
    shapes: list[PyrLevel | PyrLevelInfo] = list(pyr.levels)
    for i, level in enumerate(shapes):
        cumulative_bits = pyr.cumulative_bits_per_second[i]
        levels.append({
            "level": i,
            "hop_length": level.hop_length,
            "frame_rate": pyr.frame_rates[i],
            "n_codebooks": level.n_codebooks,
            "frames": level.frames,
            "tokens_per_second": pyr.tokens_per_second[i],
            "cumulative_tokens_per_second": pyr.cumulative_tokens_per_second[i],
            "bits_per_second": pyr.bits_per_second[i],
            "cumulative_bits_per_second": cumulative_bits,
            "payload_bytes": pyr.level_payload_bytes[i],
            "compression_ratio": pcm_bits_per_second / cumulative_bits if cumulative_bits else None,
        })
    return {
        "file": name,
        "bytes": file_bytes,
        "codec": {"name": pyr.codec_name, "hash": pyr.codec_hash},
        "pyramid_version": pyr.pyramid_version,
        "sample_rate": pyr.sample_rate,
        "num_samples": pyr.num_samples,
        "duration_seconds": pyr.duration_seconds,
        "original_sample_rate": pyr.original_sample_rate,
        "original_channels": pyr.original_channels,
        "codebook_size": pyr.codebook_size,
        "bits_per_code": pyr.bits_per_code,
        "levels": levels,
        "tokens_per_second": pyr.cumulative_tokens_per_second[-1],
        "bits_per_second": pyr.cumulative_bits_per_second[-1],
        "pcm_bits_per_second": pcm_bits_per_second,
        "compression_ratio": pcm_bytes / file_bytes if file_bytes else None,
        "provenance": dict(pyr.provenance),
    }


def _validate_scalars(pyr: PyrFile | PyrHeader) -> None:
    """Check and normalise the fields besides the levels (shared by ``PyrFile`` and ``PyrHeader``)."""
    pyr.codec_name = _text("codec_name", pyr.codec_name, 200)
    pyr.codec_hash = _text("codec_hash", pyr.codec_hash, 128, hex_only=True)
    pyr.sample_rate = _int("sample_rate", pyr.sample_rate, 1, MAX_RATE)
    pyr.num_samples = _int("num_samples", pyr.num_samples, 0, MAX_SAMPLES)
    pyr.original_sample_rate = _int("original_sample_rate", pyr.original_sample_rate, 1, MAX_RATE)
    pyr.original_channels = _int("original_channels", pyr.original_channels, 1, 1024)
    pyr.codebook_size = _int("codebook_size", pyr.codebook_size, 2, MAX_CODEBOOK_SIZE)
    pyr.pyramid_version = _text("pyramid_version", pyr.pyramid_version, 64)
    pyr.provenance = _check_provenance(pyr.provenance)


@dataclasses.dataclass(kw_only=True)
class PyrHeader(_Figures):
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
        _validate_scalars(self)

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview, name: str = "<stdin>") -> PyrHeader:
        """The header of a whole `.pyr` held in memory; a defect raises FormatError("NAME: reason")."""
        try:
            return _parse_header(bytes(data[:_PREAMBLE.size + MAX_HEADER_BYTES]), len(data))[0]
        except ValueError as error:
            raise FormatError(f"{name}: {error}") from error

    @classmethod
    def read(cls, path: str | Path) -> PyrHeader:
        """Read the preamble and the header of the file at ``path`` (at most 16 MiB), not its payload."""
        try:
            with open(path, "rb") as handle:
                total = os.fstat(handle.fileno()).st_size
                prefix = handle.read(_PREAMBLE.size)
                if len(prefix) == _PREAMBLE.size:
                    header_length = _PREAMBLE.unpack(prefix)[2]
                    # Only a length the checks will accept is worth reading; the others fail on the preamble.
                    if header_length <= min(total - _PREAMBLE.size, MAX_HEADER_BYTES):
                        prefix += handle.read(header_length)
        except FileNotFoundError:
            raise InputError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise InputError(f"{path}: is a directory, not a .pyr file") from None
        except OSError as error:
            raise InputError(f"{path}: cannot read ({error.strerror or error})") from None
        try:
            return _parse_header(prefix, total)[0]
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


def _parse(data: bytes) -> PyrFile:
    header, shapes = _parse_header(data, len(data))
    payload = memoryview(data)[len(data) - header.payload_size :]
    if zlib.crc32(payload) != header.payload_crc32:
        raise ValueError("payload checksum mismatch: the codes are corrupted")
    bits = header.bits_per_code
    levels, offset = [], 0
    for info, (n_codebooks, frames, n_bytes) in zip(header.levels, shapes, strict=True):
        codes = unpack_codes(payload[offset : offset + n_bytes], n_codebooks * frames, bits)
        levels.append(PyrLevel(info.hop_length, codes.reshape(n_codebooks, frames)))
        offset += n_bytes
    fields = {field.name: getattr(header, field.name) for field in dataclasses.fields(PyrHeader)
              if field.name not in ("levels", "payload_crc32")}
    return PyrFile(levels=levels, **fields)


def _parse_header(data: bytes, total: int) -> tuple[PyrHeader, list[tuple[int, int, int]]]:
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
    if total < _PREAMBLE.size:
        raise ValueError(f"truncated .pyr file ({total} bytes; the fixed preamble is {_PREAMBLE.size})")
    _, version, header_length, header_crc = _PREAMBLE.unpack_from(data)
    if version != FORMAT_VERSION:
        newer = "; it was written by a newer pyramid, upgrade to read it" if version > FORMAT_VERSION else ""
        raise ValueError(f"unsupported .pyr format version {version} (this reads {FORMAT_VERSION}){newer}")
    available = total - _PREAMBLE.size
    if header_length > available:
        raise ValueError(f"truncated .pyr file: the header is {header_length} bytes, only {available} follow")
    if header_length > MAX_HEADER_BYTES:
        raise ValueError(f"header length {header_length} bytes exceeds the {MAX_HEADER_BYTES}-byte limit")
    header_bytes = data[_PREAMBLE.size : _PREAMBLE.size + header_length]
    if zlib.crc32(header_bytes) != header_crc:
        raise ValueError("header checksum mismatch: the file is corrupted")
    header = _load_json(header_bytes)
    _check_fields(header, _HEADER_FIELDS, "header")
    codebook_size = _int("codebook_size", header["codebook_size"], 2, MAX_CODEBOOK_SIZE)
    bits = bits_per_code(codebook_size)
    if not 1 <= len(header["levels"]) <= MAX_LEVELS:
        raise ValueError(f"a .pyr holds 1 to {MAX_LEVELS} levels, the header lists {len(header['levels'])}")
    shapes = []
    for i, entry in enumerate(header["levels"]):
        where = f"levels[{i}]"
        _check_fields(entry, _LEVEL_FIELDS, where)
        _int(f"{where}.hop_length", entry["hop_length"], 1, MAX_HOP)
        n_codebooks = _int(f"{where}.n_codebooks", entry["n_codebooks"], 1, MAX_CODEBOOKS)
        frames = _int(f"{where}.frames", entry["frames"], 0, MAX_FRAMES)
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
