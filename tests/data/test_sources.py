import collections
from pathlib import Path

import pytest

from pyramid_cli.data.sources import (
    midi_sources,
    parse_shard,
    parse_split,
    procedural_sources,
    read_song_groups,
    shard_of,
    split_of,
)
from pyramid_cli.errors import InputError, UsageError


def test_split_is_stable_and_close_to_its_weights() -> None:
    keys = [f"song-{i}" for i in range(20000)]
    splits = [split_of(k, (8, 1, 1)) for k in keys]
    assert splits == [split_of(k, (8, 1, 1)) for k in keys]
    counts = collections.Counter(splits)
    assert abs(counts["train"] / 20000 - 0.8) < 0.02
    assert abs(counts["valid"] / 20000 - 0.1) < 0.02
    assert abs(counts["test"] / 20000 - 0.1) < 0.02


def test_split_with_zero_weight_is_never_chosen() -> None:
    assert {split_of(f"k{i}", (1, 0, 1)) for i in range(500)} == {"train", "test"}


@pytest.mark.parametrize("spec", ["8:1", "a:b:c", "0:0:0", "8:1:1:1", "-1:1:1"])
def test_parse_split_rejects(spec: str) -> None:
    with pytest.raises(UsageError):
        parse_split(spec)


@pytest.mark.parametrize("spec", ["2/2", "1", "-1/3", "0/0", "a/b"])
def test_parse_shard_rejects(spec: str) -> None:
    with pytest.raises(UsageError):
        parse_shard(spec)


def test_shards_partition_the_sources() -> None:
    ids = [s.id for s in procedural_sources(300)]
    per_shard = [[i for i in ids if shard_of(i, 4) == k] for k in range(4)]
    assert sorted(sum(per_shard, [])) == sorted(ids)
    assert all(len(part) > 40 for part in per_shard)


def test_midi_sources_layout_ids_and_song_groups(tmp_path: Path) -> None:
    for name in ("a/x.mid", "a/b/y.MIDI", "z.midi", "notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    csv = tmp_path / "groups.csv"
    csv.write_text("file,song_group\nx.mid,song-1\nz.midi,song-1\n")
    sources = midi_sources(tmp_path, read_song_groups(csv))
    assert [s.label for s in sources] == ["a/b/y.MIDI", "a/x.mid", "z.midi"]
    assert [s.id for s in sources] == ["a__b__y", "a__x", "z"]
    grouped = [s for s in sources if s.song_group == "song-1"]
    assert len(grouped) == 2 and {s.split_key for s in grouped} == {"song-1"}


def test_song_groups_csv_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        read_song_groups(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("name,group\n")
    with pytest.raises(InputError, match="no column 'file'"):
        read_song_groups(bad)
