import pytest

from pyramid_cli.data.midi import GROUP_PROGRAMS, GROUPS, group_of, groups_present, initial_tempo, merge_tracks
from pyramid_cli.data.midi_libs import pretty_midi


@pytest.mark.parametrize(
    ("program", "is_drum", "expected"),
    [
        (0, False, "piano"), (7, False, "piano"), (11, False, "piano"), (19, False, "piano"),
        (24, False, "guitar"), (30, False, "guitar"), (105, False, "guitar"),
        (33, False, "bass"), (39, False, "bass"),
        (40, False, "strings"), (48, False, "strings"), (52, False, "strings"), (89, False, "strings"),
        (56, False, "lead"), (65, False, "lead"), (73, False, "lead"), (80, False, "lead"), (99, False, "lead"),
        (114, False, None), (127, False, None),
        (0, True, "drums"), (50, True, "drums"),
    ],
)
def test_group_table(program: int, is_drum: bool, expected: str | None) -> None:
    assert group_of(program, is_drum) == expected


def test_group_of_rejects_bad_program() -> None:
    with pytest.raises(ValueError):
        group_of(128, False)


def _track(program: int, pitches: list[int], start: float = 0.0, is_drum: bool = False) -> pretty_midi.Instrument:
    track = pretty_midi.Instrument(program, is_drum=is_drum)
    for i, pitch in enumerate(pitches):
        track.notes.append(pretty_midi.Note(100, pitch, start + i, start + i + 0.5))
    return track


def test_merge_tracks_groups_and_programs() -> None:
    midi = pretty_midi.PrettyMIDI()
    midi.instruments = [
        _track(1, [60, 62]), _track(17, [64]),  # piano + organ → piano
        _track(81, [72]), _track(57, [70]),  # synth lead + brass → lead
        _track(35, [40]), _track(36, [36], is_drum=True), _track(120, [60]),  # bass, drums, dropped FX
    ]
    merged = merge_tracks(midi)
    assert groups_present(merged) == ["lead", "piano", "bass", "drums"]
    by_name = {instrument.name: instrument for instrument in merged.instruments}
    assert len(by_name["piano"].notes) == 3 and len(by_name["lead"].notes) == 2
    for name, instrument in by_name.items():
        assert instrument.program == GROUP_PROGRAMS[name]
        assert instrument.is_drum == (name == "drums")
    assert [i.name for i in merged.instruments] == [g for g in GROUPS if g in by_name]


def test_merge_tracks_cuts_at_max_seconds() -> None:
    midi = pretty_midi.PrettyMIDI()
    midi.instruments = [_track(0, [60, 61, 62, 63, 64])]  # notes at 0, 1, 2, 3, 4 s, each 0.5 s long
    merged = merge_tracks(midi, max_seconds=2.25)
    notes = merged.instruments[0].notes
    assert [n.pitch for n in notes] == [60, 61, 62]
    assert max(n.end for n in notes) <= 2.25


def test_initial_tempo() -> None:
    assert initial_tempo(pretty_midi.PrettyMIDI(initial_tempo=97.0)) == pytest.approx(97.0)
