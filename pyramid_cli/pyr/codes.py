"""The ``.pyr`` payload's code packing: codes of ``bits_per_code`` bits, MSB-first, padded to a byte."""

from __future__ import annotations

import numpy as np


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
