"""The .pyr container: exact round trips, bit packing, editing, and strict, traceback-free readers."""

from __future__ import annotations

import dataclasses
import json
import math
import struct
import time
import zlib
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyramid_cli.errors import FormatError, InputError
from pyramid_cli.pyr.codes import bits_per_code, pack_codes, unpack_codes
from pyramid_cli.pyr.file import PyrFile, PyrLevel
from pyramid_cli.pyr.header import MAGIC

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def make_pyr(
    frames: tuple[int, ...] = (22, 44, 88),
    hops: tuple[int, ...] = (2048, 1024, 512),
    n_codebooks: int = 1,
    codebook_size: int = 1024,
    seed: int = 0,
    **fields: Any,
) -> PyrFile:
    rng = np.random.default_rng(seed)
    levels = [
        PyrLevel(hop, rng.integers(0, codebook_size, (n_codebooks, n)))
        for hop, n in zip(hops, frames, strict=True)
    ]
    defaults: dict[str, Any] = dict(
        codec_name="pyramid-22k-p111", codec_hash="0123456789abcdef" * 4, sample_rate=22050,
        num_samples=frames[0] * hops[0], original_sample_rate=44100, original_channels=2,
        codebook_size=codebook_size, pyramid_version="0.1.0",
        provenance={"source": "song.wav", "seed": 7, "temperature": 1.3, "prompt": None, "fp16": False},
    )
    return PyrFile(levels=levels, **{**defaults, **fields})


def split(data: bytes) -> tuple[dict[str, Any], bytes]:
    """A valid file's header (as a dict) and payload."""
    length = struct.unpack_from("<I", data, 6)[0]
    return json.loads(data[14 : 14 + length]), data[14 + length :]


def build(header: Any, payload: bytes, version: int = 1, header_text: bytes | None = None) -> bytes:
    """Raw bytes with a correct header CRC, so that the check under test is the one that fires."""
    raw = header_text if header_text is not None else json.dumps(header).encode()
    return MAGIC + struct.pack("<HII", version, len(raw), zlib.crc32(raw)) + raw + payload


def parse(data: bytes) -> PyrFile:
    return PyrFile.from_bytes(data, name="song.pyr")


# -- round trips ---------------------------------------------------------------------------------

printable = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")),
    min_size=1, max_size=20,
).filter(str.isprintable)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20),
)


@st.composite
def pyr_files(draw: st.DrawFn) -> PyrFile:
    codebook_size = draw(st.one_of(st.sampled_from([2, 3, 255, 256, 257, 1000, 1024, 1025, 2**16]),
                                   st.integers(2, 2**24)))
    n_levels = draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    levels = [
        PyrLevel(draw(st.integers(1, 4096)),
                 rng.integers(0, codebook_size, (draw(st.integers(1, 5)), draw(st.integers(0, 60)))))
        for _ in range(n_levels)
    ]
    return PyrFile(
        codec_name=draw(printable), codec_hash=draw(st.text("0123456789abcdef", min_size=1, max_size=64)),
        sample_rate=draw(st.integers(1, 192000)), num_samples=draw(st.integers(0, 2**40)),
        original_sample_rate=draw(st.integers(1, 192000)), original_channels=draw(st.integers(1, 16)),
        levels=levels, codebook_size=codebook_size, pyramid_version=draw(printable),
        provenance=draw(st.dictionaries(st.text(max_size=10), scalars, max_size=5)),
    )


@FAST
@given(pyr_files())
def test_round_trip_is_exact(pyr: PyrFile) -> None:
    data = pyr.to_bytes()
    back = PyrFile.from_bytes(data)
    assert back == pyr
    assert back.to_bytes() == data  # deterministic and canonical
    assert len(split(data)[1]) == pyr.payload_size


def test_write_and_read(tmp_path: Any) -> None:
    pyr = make_pyr()
    path = tmp_path / "sub" / "song.pyr"
    pyr.write(path)
    assert PyrFile.read(path) == pyr
    assert [p.name for p in path.parent.iterdir()] == ["song.pyr"]  # no temporary left behind
    with pytest.raises(InputError, match="no such file"):
        PyrFile.read(tmp_path / "missing.pyr")


def test_codes_are_int64_and_numpy_inputs_are_accepted() -> None:
    pyr = make_pyr(sample_rate=np.int64(22050), provenance={"seed": np.int32(3), "t": np.float32(0.5)})
    assert all(level.codes.dtype == np.int64 for level in pyr.levels)
    assert pyr.provenance == {"seed": 3, "t": 0.5} and type(pyr.provenance["seed"]) is int
    assert parse(pyr.to_bytes()) == pyr


# -- bit packing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [1, 2, 3, 7, 8, 9, 10, 11, 15, 16, 17, 24, 31, 32])
@pytest.mark.parametrize("count", [0, 1, 7, 8, 1001])
def test_pack_round_trip(bits: int, count: int) -> None:
    codes = np.random.default_rng(bits * 1000 + count).integers(0, 2**bits, count, dtype=np.int64)
    codes[: min(count, 2)] = [2**bits - 1, 0][: min(count, 2)]  # the extremes
    data = pack_codes(codes, bits)
    assert len(data) == math.ceil(count * bits / 8)
    np.testing.assert_array_equal(unpack_codes(data, count, bits), codes)


def test_pack_layout_is_msb_first_row_major() -> None:
    # 1 = 0000000001, 1023 = 1111111111, then 4 zero padding bits: 00000000 01111111 11110000
    assert pack_codes(np.array([[1], [1023]]), 10) == bytes([0x00, 0x7F, 0xF0])
    assert pack_codes(np.array([5, 2]), 3) == bytes([0b10101000])


def test_pack_and_unpack_refuse_bad_input() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1024\)"):
        pack_codes(np.array([1024]), 10)
    with pytest.raises(ValueError, match="need 3 bytes"):
        unpack_codes(b"\x00\x00", 2, 10)
    with pytest.raises(ValueError, match="padding"):
        unpack_codes(bytes([0, 0, 0, 0x01]), 3, 10)


def test_three_minutes_pack_in_milliseconds() -> None:
    pyr = make_pyr(frames=(1938, 3876, 7752), num_samples=180 * 22050)  # p111, 13,566 codes
    start = time.perf_counter()
    data = pyr.to_bytes()
    assert parse(data) == pyr
    assert time.perf_counter() - start < 0.1  # ~2 ms in practice; generous for loaded CI machines
    assert pyr.payload_size == math.ceil(1938 * 10 / 8) + math.ceil(3876 * 10 / 8) + 7752 * 10 // 8


# -- figures and editing -------------------------------------------------------------------------


def test_rates_of_the_p111_layout() -> None:
    pyr = make_pyr(frames=(1938, 3876, 7752), num_samples=180 * 22050)
    assert pyr.n_levels == 3 and pyr.frames == [1938, 3876, 7752]
    assert pyr.duration_seconds == 180.0
    assert pyr.frame_rates == pytest.approx([10.7666, 21.5332, 43.0664], abs=1e-4)
    assert pyr.cumulative_tokens_per_second == pytest.approx([10.7666, 32.2998, 75.3662], abs=1e-4)
    assert pyr.bits_per_code == 10 and bits_per_code(1025) == 11 and bits_per_code(2) == 1
    assert pyr.cumulative_bits_per_second[-1] == pytest.approx(753.662, abs=1e-3)
    assert pyr.frame_time(2, 43) == pytest.approx(43 * 512 / 22050)


def test_truncate_levels() -> None:
    pyr = make_pyr(n_codebooks=2)
    coarse = pyr.truncate_levels(1)
    assert coarse.n_levels == 1 and coarse.levels[0] == pyr.levels[0]
    assert coarse.num_samples == pyr.num_samples and coarse.codec_hash == pyr.codec_hash
    assert parse(coarse.to_bytes()) == coarse
    assert pyr.truncate_levels(3) == pyr
    for k in (0, 4):
        with pytest.raises(ValueError, match="levels"):
            pyr.truncate_levels(k)


def test_slices_cut_the_same_time_from_every_level() -> None:
    pyr = make_pyr()
    part = pyr.slice_frames(4, 10)
    assert part.frames == [6, 12, 24] and part.num_samples == 6 * 2048
    for level, original in zip(part.levels, pyr.levels, strict=True):
        scale = 2048 // level.hop_length
        np.testing.assert_array_equal(level.codes, original.codes[:, 4 * scale : 10 * scale])
    assert part.provenance["offset_samples"] == 4 * 2048
    assert part.slice_frames(1).provenance["offset_samples"] == 5 * 2048  # offsets accumulate
    # Times snap outward to whole coarse frames; a frame's own start time maps back to it.
    by_time = pyr.slice_seconds(pyr.frame_time(0, 4), pyr.frame_time(0, 10))
    assert by_time == part
    assert pyr.slice_seconds(0.0) == pyr.slice_frames(0)
    assert pyr.slice_seconds(0.0, math.inf).frames == pyr.frames
    assert pyr.slice_seconds(1000.0).frames == [0, 0, 0]
    assert parse(part.to_bytes()) == part
    with pytest.raises(ValueError, match="frame boundaries"):
        pyr.slice_frames(1, 5, level=2)
    with pytest.raises(ValueError, match="time range"):
        pyr.slice_seconds(2.0, 1.0)


def test_fields_edited_after_construction_are_checked_before_writing() -> None:
    pyr = make_pyr()
    pyr.provenance["t"] = math.inf
    with pytest.raises(ValueError, match="finite"):
        pyr.to_bytes()


def test_constructor_refuses_inconsistent_fields() -> None:
    with pytest.raises(ValueError, match="outside"):
        dataclasses.replace(make_pyr(), codebook_size=10)
    with pytest.raises(ValueError, match="hexadecimal"):
        make_pyr(codec_hash="XYZ")
    with pytest.raises(ValueError, match="finite"):
        make_pyr(provenance={"t": math.nan})
    with pytest.raises(ValueError, match="2-D integer"):
        PyrLevel(512, np.zeros((1, 3), dtype=np.float32))


# -- readers: one clear FormatError for each defect ----------------------------------------------


def _mutate(key: str, value: Any, level: int | None = None) -> bytes:
    header, payload = split(make_pyr(codebook_size=1000).to_bytes())
    target = header if level is None else header["levels"][level]
    if value is KeyError:
        del target[key]
    else:
        target[key] = value
    return build(header, payload)


def _bad_code() -> bytes:
    pyr = make_pyr(codebook_size=1000)
    header, _ = split(pyr.to_bytes())
    codes = [level.codes.copy() for level in pyr.levels]
    codes[1][0, 3] = 1001  # fits in 10 bits, outside the 1000-entry codebook
    payload = b"".join(pack_codes(c, 10) for c in codes)
    header["payload_crc32"] = zlib.crc32(payload)
    return build(header, payload)


VALID = make_pyr().to_bytes()
HEADER_LENGTH = struct.unpack_from("<I", VALID, 6)[0]

BAD_FILES = {
    "empty input, not a .pyr file": b"",
    "not a .pyr file (it starts with b'RIFF'": b"RIFF\x24\x00\x00\x00WAVEfmt ",
    "unsupported .pyr format version 9 (this reads 1); it was written by a newer": VALID[:4] + b"\x09\x00"
    + VALID[6:],
    "truncated .pyr file (9 bytes; the fixed preamble is 14)": VALID[:9],
    "the header is 4294967295 bytes, only": VALID[:6] + b"\xff\xff\xff\xff" + VALID[10:],
    "header checksum mismatch": VALID[:20] + bytes([VALID[20] ^ 1]) + VALID[21:],
    "header is not UTF-8 text": build(None, b"", header_text=b"\xff\xfe"),
    "header is not valid JSON (Expecting": build(None, b"", header_text=b'{"codec_name": '),
    "header is not valid JSON (NaN is not valid JSON)": build(None, b"", header_text=b'{"a": NaN}'),
    "header is not valid JSON (duplicate keys": build(None, b"", header_text=b'{"a": 1, "a": 2}'),
    "header must be a JSON object": build([1, 2], b""),
    "header lacks field 'sample_rate'": _mutate("sample_rate", KeyError),
    "header has unknown field 'colour'": _mutate("colour", "red"),
    "header field 'num_samples' must be an integer, got True": _mutate("num_samples", True),
    "header field 'codec_name' must be a string": _mutate("codec_name", 5),
    "levels[1] lacks field 'frames'": _mutate("frames", KeyError, level=1),
    "levels[0].frames = -3 is out of range": _mutate("frames", -3, level=0),
    "levels[2].n_codebooks = 100000 is out of range": _mutate("n_codebooks", 100000, level=2),
    "codebook_size = 1 is out of range": _mutate("codebook_size", 1),
    "sample_rate = 0 is out of range": _mutate("sample_rate", 0),
    "levels[0].bits_per_code is 16; codebook_size gives 10": _mutate("bits_per_code", 16, level=0),
    "levels[0].bytes is 3, not the 1x22 codes' size": _mutate("bytes", 3, level=0),
    "a .pyr holds 1 to 64 levels, the header lists 0": _mutate("levels", []),
    "codec_hash must be lowercase hexadecimal": _mutate("codec_hash", "not-hex"),
    "provenance['t'] must be finite": build(None, split(VALID)[1], header_text=json.dumps(
        {**split(VALID)[0], "provenance": {"t": "HUGE"}}).replace('"HUGE"', "1e999").encode()),
    "truncated .pyr file: 192 payload bytes, the header says 193": VALID[:-1],
    "2 unexpected trailing bytes after the payload": VALID + b"\x00\x00",
    "payload checksum mismatch": VALID[:-1] + bytes([VALID[-1] ^ 0x80]),
    "level 1 holds code 1001, outside [0, 1000)": _bad_code(),
}


@pytest.mark.parametrize("message", BAD_FILES)
def test_each_defect_has_a_clear_one_line_message(message: str) -> None:
    with pytest.raises(FormatError) as info:
        parse(BAD_FILES[message])
    text = str(info.value)
    assert text.startswith("song.pyr: ") and "\n" not in text
    assert message in text


def test_every_truncation_and_single_byte_corruption_is_refused() -> None:
    small = make_pyr(frames=(2, 4, 8), n_codebooks=2).to_bytes()
    for end in range(len(small)):
        with pytest.raises(FormatError):
            parse(small[:end])
    for position in range(len(small)):
        for mask in (0x01, 0x80, 0xFF):
            corrupted = bytearray(small)
            corrupted[position] ^= mask
            with pytest.raises(FormatError):
                parse(bytes(corrupted))


def _parses_or_format_error(data: bytes) -> PyrFile | None:
    try:
        return parse(data)
    except FormatError:
        return None


@FAST
@given(st.binary(max_size=300))
def test_random_bytes_never_escape_as_another_exception(data: bytes) -> None:
    assert _parses_or_format_error(data) is None
    assert _parses_or_format_error(MAGIC + data) is None


@FAST
@given(st.data())
def test_random_truncations_and_corruptions(data: st.DataObject) -> None:
    pyr = data.draw(pyr_files())
    raw = pyr.to_bytes()
    end = data.draw(st.integers(0, len(raw)))
    assert _parses_or_format_error(raw[:end]) == (pyr if end == len(raw) else None)
    position = data.draw(st.integers(0, len(raw) - 1))
    corrupted = bytearray(raw)
    corrupted[position] = data.draw(st.integers(0, 255))
    assert _parses_or_format_error(bytes(corrupted)) in (None, pyr)


json_values = st.recursive(
    scalars | st.floats(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@FAST
@given(st.data())
def test_checksummed_but_wrong_headers_raise_format_error(data: st.DataObject) -> None:
    """A writer bug (valid CRCs around a wrong header) must still end in FormatError, not a crash."""
    header, payload = split(make_pyr(frames=(2, 4, 8)).to_bytes())
    target = header
    if data.draw(st.booleans()):
        target = header["levels"][data.draw(st.integers(0, 2))]
    key = data.draw(st.sampled_from([*target, "extra"]))
    if data.draw(st.booleans()):
        target.pop(key, None)
    else:
        target[key] = data.draw(json_values)
    result = _parses_or_format_error(build(header, payload))
    assert result is None or isinstance(result, PyrFile)


# -- the header alone (`pyramid info`) ----------------------------------------------------------------------


def test_header_reader_checks_the_header_and_the_payload_length_not_the_codes(tmp_path):
    from pyramid_cli.pyr.file import pyr_summary
    from pyramid_cli.pyr.header import PyrHeader

    pyr = make_pyr(frames=(6, 12, 24), codebook_size=1000, seed=4)
    data = pyr.to_bytes()
    (tmp_path / "a.pyr").write_bytes(data)
    header = PyrHeader.read(tmp_path / "a.pyr")
    assert header == PyrHeader.from_bytes(data)
    assert pyr_summary(header, len(data)) == pyr_summary(pyr, len(data))
    assert [(lv.hop_length, lv.n_codebooks, lv.frames) for lv in header.levels] == [
        (lv.hop_length, lv.n_codebooks, lv.frames) for lv in pyr.levels]

    flipped = bytearray(data)
    flipped[-1] ^= 0x40  # a code changes: only the payload's checksum knows
    (tmp_path / "codes.pyr").write_bytes(flipped)
    with pytest.raises(FormatError, match="payload checksum mismatch"):
        PyrFile.read(tmp_path / "codes.pyr")
    assert PyrHeader.read(tmp_path / "codes.pyr") == header

    header_flip = bytearray(data)
    header_flip[20] ^= 1
    for name, content, message in [
        ("cut.pyr", data[:-3], f"truncated .pyr file: {pyr.payload_size - 3} payload bytes, the header says "
                               f"{pyr.payload_size}"),
        ("long.pyr", data + b"\0", "1 unexpected trailing byte after the payload"),
        ("header.pyr", bytes(header_flip), "header checksum mismatch"),
        ("preamble.pyr", data[:10], "truncated .pyr file (10 bytes; the fixed preamble is 14)"),
        ("empty.pyr", b"", "empty input"),
        ("wav.pyr", b"RIFF" + bytes(40), "not a .pyr file"),
    ]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(FormatError, match=re_escape(f"{tmp_path / name}: {message}")):
            PyrHeader.read(tmp_path / name)
        with pytest.raises(FormatError, match=re_escape(message)):
            PyrFile.read(tmp_path / name)  # the same words as the whole-file reader
    with pytest.raises(InputError, match="no such file"):
        PyrHeader.read(tmp_path / "missing.pyr")


def test_the_header_of_a_large_file_is_read_without_its_payload(tmp_path):
    """A header announcing 2**28 codes (320 MB) over a sparse payload: read in milliseconds."""
    from pyramid_cli.pyr.header import PyrHeader

    header, _ = split(make_pyr(frames=(1,), hops=(512,)).to_bytes())
    frames = 2**28
    header["levels"][0].update(frames=frames, bytes=frames * 10 // 8)
    header["num_samples"] = frames * 512
    path = tmp_path / "large.pyr"
    with open(path, "wb") as handle:
        handle.write(build(header, b""))
        handle.truncate(handle.tell() + frames * 10 // 8)  # sparse: no payload written
    start = time.perf_counter()
    assert PyrHeader.read(path).frames == [frames]
    assert time.perf_counter() - start < 0.5


def re_escape(text: str) -> str:
    import re

    return re.escape(text)
