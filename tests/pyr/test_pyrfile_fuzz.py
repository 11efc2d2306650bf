"""The .pyr reader under a few thousand seeded mutations of a valid file: every one is either a clean
FormatError or a well-formed file (codes inside the codebook, levels consistent); nothing else escapes.

The payload carries a CRC, so mutations inside it are caught; mutations of the header are caught
by its CRC first, so a second family rewrites the header and recomputes that CRC, to reach the
field checks behind it.
"""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest
from test_pyrfile import make_pyr

from pyramid_cli.errors import FormatError
from pyramid_cli.pyr.codes import pack_codes, unpack_codes
from pyramid_cli.pyr.file import PyrFile
from pyramid_cli.pyr.header import PyrHeader

PREAMBLE = struct.Struct("<4sHII")  # magic, version, header length, header CRC (pyr.header.PREAMBLE)


def _mutate(data: bytes, rng: np.random.Generator) -> bytes:
    buf = bytearray(data)
    kind = int(rng.integers(5))
    if kind == 0:  # flip one to eight random bytes
        for _ in range(int(rng.integers(1, 9))):
            buf[int(rng.integers(len(buf)))] ^= int(rng.integers(1, 256))
    elif kind == 1:  # truncate
        del buf[int(rng.integers(len(buf))):]
    elif kind == 2:  # insert random bytes
        at = int(rng.integers(len(buf) + 1))
        buf[at:at] = rng.integers(0, 256, int(rng.integers(1, 16)), dtype=np.uint8).tobytes()
    elif kind == 3:  # delete a run
        at = int(rng.integers(len(buf)))
        del buf[at:at + int(rng.integers(1, 16))]
    else:  # append garbage
        buf += rng.integers(0, 256, int(rng.integers(1, 16)), dtype=np.uint8).tobytes()
    return bytes(buf)


def _rewrite_header(data: bytes, rng: np.random.Generator) -> bytes:
    """Change one header field to a hostile value and recompute the header CRC."""
    magic, version, length, _ = PREAMBLE.unpack_from(data)
    header = json.loads(data[PREAMBLE.size:PREAMBLE.size + length])
    hostile = [-1, 0, 1, 2**31, 2**63, 1.5, "x", None, [], {}, True, 10**30]
    target = header["levels"][int(rng.integers(len(header["levels"])))] if rng.random() < 0.5 else header
    key = sorted(target)[int(rng.integers(len(target)))]
    target[key] = hostile[int(rng.integers(len(hostile)))]
    raw = json.dumps(header).encode()
    return PREAMBLE.pack(magic, version, len(raw), zlib.crc32(raw)) + raw + data[PREAMBLE.size + length:]


def _check(data: bytes) -> bool:
    """True when the reader accepted ``data`` (and what it returned is well-formed).

    The header-only reader (`pyramid info`) must refuse cleanly too, and agree with the whole-file
    reader on every file that one accepts.
    """
    try:
        header: PyrHeader | None = PyrHeader.from_bytes(data, name="fuzz")
    except FormatError:
        header = None
    try:
        pyr = PyrFile.from_bytes(data, name="fuzz")
    except FormatError:
        return False
    assert header is not None and header.frames == pyr.frames and header.codec_hash == pyr.codec_hash
    pyr.validate()
    for level in pyr.levels:
        assert level.codes.min(initial=0) >= 0 and level.codes.max(initial=0) < pyr.codebook_size
    return True


@pytest.mark.parametrize("family", ["bytes", "header"])
def test_mutated_files_are_rejected_cleanly_or_well_formed(family: str) -> None:
    original = make_pyr(frames=(6, 12, 24), seed=3).to_bytes()
    rng = np.random.default_rng(0 if family == "bytes" else 1)
    accepted = 0
    for _ in range(2000):
        data = _mutate(original, rng) if family == "bytes" else _rewrite_header(original, rng)
        accepted += _check(data)
    assert accepted < 200  # the CRCs and field checks reject nearly every mutation


def test_unpacking_in_chunks_equals_one_pass() -> None:
    rng = np.random.default_rng(5)
    for count in (0, 1, 7, 8, 65_535, 65_536, 65_537, 200_003):
        codes = rng.integers(0, 1024, count)
        assert np.array_equal(unpack_codes(pack_codes(codes, 10), count, 10), codes)
