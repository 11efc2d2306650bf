"""Track merging into the paper's six instrument groups (after MuseFormer / PopMAG).

Every pitched track goes to a group by its General MIDI program family (program // 8); drum
tracks go to `drums`. Each group is rendered with one fixed program, so a corpus has six
timbres whatever the source arrangement.

    GM family (programs)            group      note
    0   piano          (0-7)        piano
    1   chromatic perc (8-15)       piano      celesta, vibraphone, marimba... keyboard-like
    2   organ          (16-23)      piano      sustained keyboards
    3   guitar         (24-31)      guitar
    4   bass           (32-39)      bass
    5   strings        (40-47)      strings
    6   ensemble       (48-55)      strings    string ensembles, choirs
    7   brass          (56-63)      lead
    8   reed           (64-71)      lead
    9   pipe           (72-79)      lead
    10  synth lead     (80-87)      lead
    11  synth pad      (88-95)      strings    pads are sustained harmonic beds
    12  synth effects  (96-103)     lead
    13  ethnic         (104-111)    guitar     mostly plucked (sitar, banjo, koto, shamisen)
    14  percussive     (112-119)    dropped    tuned percussion / sound effects: noise as any group
    15  sound effects  (120-127)    dropped
    drum tracks (channel 10)        drums

Only notes are merged: per-track pitch bends and controllers cannot be combined into one
track without one track's bend detuning another's notes.
"""

from __future__ import annotations

from pyramid_cli.data.midi_libs import pretty_midi

GROUPS: tuple[str, ...] = ("lead", "piano", "guitar", "strings", "bass", "drums")

# The program each group is rendered with (MuseFormer's choice: square lead, acoustic grand,
# steel-string guitar, string ensemble, electric finger bass; drums use the GM drum kit).
GROUP_PROGRAMS: dict[str, int] = {"lead": 80, "piano": 0, "guitar": 25, "strings": 48, "bass": 33, "drums": 0}

_FAMILY_GROUPS: tuple[str | None, ...] = (
    "piano", "piano", "piano", "guitar", "bass", "strings", "strings", "lead",
    "lead", "lead", "lead", "strings", "lead", "guitar", None, None,
)


def group_of(program: int, is_drum: bool) -> str | None:
    """The instrument group of a track, or None for tracks that are dropped."""
    if is_drum:
        return "drums"
    if not 0 <= program <= 127:
        raise ValueError(f"MIDI program out of range: {program}")
    return _FAMILY_GROUPS[program // 8]


def merge_tracks(midi: pretty_midi.PrettyMIDI, max_seconds: float | None = None) -> pretty_midi.PrettyMIDI:
    """One instrument per group present, holding every note of the tracks mapped to it.

    Note times are in seconds, so the merged file needs no tempo map. With `max_seconds`, notes
    starting later are dropped and longer ones are cut at the limit.
    """
    merged: dict[str, pretty_midi.Instrument] = {}
    for track in midi.instruments:
        group = group_of(track.program, track.is_drum)
        if group is None:
            continue
        target = merged.get(group)
        if target is None:
            target = pretty_midi.Instrument(program=GROUP_PROGRAMS[group], is_drum=group == "drums", name=group)
            merged[group] = target
        for note in track.notes:
            if note.end <= note.start or note.velocity <= 0:
                continue
            if max_seconds is not None:
                if note.start >= max_seconds:
                    continue
                note = pretty_midi.Note(note.velocity, note.pitch, note.start, min(note.end, max_seconds))
            target.notes.append(note)
    result = pretty_midi.PrettyMIDI()
    result.instruments = [merged[group] for group in GROUPS if group in merged and merged[group].notes]
    for instrument in result.instruments:
        instrument.notes.sort(key=lambda n: (n.start, n.pitch))
    return result


def groups_present(midi: pretty_midi.PrettyMIDI) -> list[str]:
    """Names of the groups of a merged file, in canonical order."""
    names = {instrument.name for instrument in midi.instruments}
    return [group for group in GROUPS if group in names]


def initial_tempo(midi: pretty_midi.PrettyMIDI) -> float:
    """The first tempo of the file in BPM (120 when the file declares none)."""
    _, tempi = midi.get_tempo_changes()
    return float(tempi[0]) if len(tempi) else 120.0
