from pathlib import Path

import pytest

from pyramid_cli.data.manifest import append_jsonl, load_manifest, read_jsonl, repair_jsonl
from pyramid_cli.errors import FormatError


def test_torn_last_line_is_ignored_then_repaired(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    append_jsonl(path, {"id": "a"})
    with open(path, "a") as handle:
        handle.write('{"id": "b", "dur')  # a writer killed mid-line
    assert read_jsonl(path) == [{"id": "a"}]
    repair_jsonl(path)
    append_jsonl(path, {"id": "c"})
    assert read_jsonl(path) == [{"id": "a"}, {"id": "c"}]


def test_corrupt_line_in_the_middle_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('{"id": "a"}\nnot json\n{"id": "b"}\n')
    with pytest.raises(FormatError, match="line 2"):
        read_jsonl(path)


def test_load_manifest_requires_a_corpus(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="no manifest.jsonl"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.shard-0-of-2.jsonl").write_text("")
    with pytest.raises(FormatError, match="dataset merge"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.jsonl").write_text('{"id": "a"}\n')
    with pytest.raises(FormatError, match="lacks"):
        load_manifest(tmp_path)
