"""The `.pyr` token file in memory (``PyrFile``): codes per level, writing, reading, editing without
decoding (strip levels, slice time), and the figures ``pyramid info`` shows (``pyr_summary``).
The header and its checks live in ``pyr.header``, the bit packing in ``pyr.codes``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from pyramid_cli.errors import FormatError, InputError
from pyramid_cli.pyr.codes import pack_codes, unpack_codes
from pyramid_cli.pyr.header import (
    FORMAT_VERSION,
    MAGIC,
    MAX_CODEBOOKS,
    MAX_HOP,
    MAX_LEVELS,
    PREAMBLE,
    Figures,
    ProvenanceValue,
    PyrHeader,
    PyrLevelInfo,
    check_int,
    parse_header,
    validate_scalars,
)
from pyramid_cli.runtime.fileio import write_bytes_atomic


@dataclasses.dataclass(eq=False)
class PyrLevel:
    """One pyramid level: `codes` (n_codebooks, frames) int64; frame k starts at sample k*hop_length."""

    hop_length: int
    codes: np.ndarray

    def __post_init__(self) -> None:
        self.hop_length = check_int("hop_length", self.hop_length, 1, MAX_HOP)
        codes = np.asarray(self.codes)
        if codes.ndim != 2 or not (np.issubdtype(codes.dtype, np.integer) or codes.size == 0):
            raise ValueError(f"codes must be a 2-D integer array (n_codebooks, frames), got {codes.shape}")
        check_int("n_codebooks", codes.shape[0], 1, MAX_CODEBOOKS)
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
class PyrFile(Figures):
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
        validate_scalars(self)
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
        preamble = PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(header_bytes), zlib.crc32(header_bytes))
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


def _parse(data: bytes) -> PyrFile:
    header, shapes = parse_header(data, len(data))
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


