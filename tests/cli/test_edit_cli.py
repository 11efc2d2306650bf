"""`pyramid strip | slice`: a .pyr edited without decoding, by path or through pipes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pyramid_cli.pyr.file import PyrFile, PyrLevel

HOPS = (2048, 1024, 512)


@pytest.fixture
def song(tmp_path: Path) -> Path:
    """A 3-level file of 10 coarse frames (about 0.93 s at 22,050 Hz)."""
    rng = np.random.default_rng(0)
    levels = [PyrLevel(hop, rng.integers(0, 1024, (1, 10 * 2048 // hop))) for hop in HOPS]
    pyr = PyrFile(codec_name="tiny", codec_hash="ab" * 8, sample_rate=22050, num_samples=10 * 2048,
                  original_sample_rate=44100, original_channels=2, levels=levels)
    pyr.write(tmp_path / "song.pyr")
    return tmp_path / "song.pyr"


def test_strip_keeps_the_coarse_levels(pyramid, song: Path) -> None:
    result = pyramid("strip", str(song), "--levels", "1")
    assert result.code == 0, result.stderr
    stripped, whole = PyrFile.read(song.with_suffix(".l1.pyr")), PyrFile.read(song)
    assert stripped.n_levels == 1 and stripped.num_samples == whole.num_samples
    np.testing.assert_array_equal(stripped.levels[0].codes, whole.levels[0].codes)
    assert pyramid("strip", str(song), "--levels", "1").one_line_error("already exists")
    too_many = pyramid("strip", str(song), "--levels", "4")
    assert too_many.code == 2 and too_many.one_line_error("--levels 4: cannot keep 4 levels of a file with 3")


def test_slice_keeps_a_span_and_records_its_offset(pyramid, song: Path, tmp_path: Path) -> None:
    result = pyramid("slice", str(song), "--start", "0.2", "--end", "0.5", "-o", str(tmp_path / "part.pyr"),
                     "--json")
    assert result.code == 0, result.stderr
    summary = json.loads(result.stdout)
    part = PyrFile.read(tmp_path / "part.pyr")
    offset = part.provenance["offset_samples"]
    assert offset % 2048 == 0 and offset / 22050 <= 0.2 and summary["offset_seconds"] == offset / 22050
    first = offset // 2048
    np.testing.assert_array_equal(part.levels[0].codes, PyrFile.read(song).levels[0].codes[:, first:first + 4])
    bad = pyramid("slice", str(song), "--start", "0.5", "--end", "0.2", "-o", str(tmp_path / "bad.pyr"))
    assert bad.code == 2 and bad.one_line_error("bad time range")


def test_strip_reads_stdin_and_writes_stdout(pyramid, song: Path) -> None:
    result = pyramid("strip", "-", "--levels", "2", "-o", "-", stdin=song.read_bytes())
    assert result.code == 0, result.stderr
    assert PyrFile.from_bytes(result.stdout).n_levels == 2
    refused = pyramid("strip", "-", "--levels", "2", "-o", "-", "--json", stdin=song.read_bytes())
    assert refused.code == 2 and refused.one_line_error("--json prints on stdout")
