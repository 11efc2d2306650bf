"""A procedural composer: seedable multi-track pieces for offline demos and tests.

A piece has a form of sections (e.g. A A B A C), each with its own chord progression, drum
groove and melodic motif; repeated section letters repeat their material, so pieces have the
long-range structure a music LM should learn. Instruments use ordinary GM programs, so they go
through the same track merging as real MIDI files.
"""

from __future__ import annotations

import numpy as np

from pyramid_cli.data.midi_libs import pretty_midi

FORMS = ("AABA", "ABAB", "AABAC", "ABACAB", "AABB", "ABCA")
# Diatonic progressions as scale degrees (0 = tonic).
PROGRESSIONS = ((0, 4, 5, 3), (0, 5, 3, 4), (1, 4, 0, 5), (0, 3, 4, 4), (5, 3, 0, 4), (0, 2, 3, 4))
MAJOR = (0, 2, 4, 5, 7, 9, 11)
MINOR = (0, 2, 3, 5, 7, 8, 10)
KICK, SNARE, CLOSED_HAT, OPEN_HAT, CRASH = 36, 38, 42, 46, 49
PIANOS, LEADS, GUITARS, PADS = (0, 1, 4, 5), (80, 81, 73, 56, 65), (24, 25, 27), (48, 49, 89)


def _scale_pitch(key: int, scale: tuple[int, ...], degree: int, octave: int) -> int:
    """MIDI pitch of a scale degree (any integer; wraps into neighbouring octaves)."""
    octave_shift, index = divmod(degree, len(scale))
    return 12 * (octave + octave_shift) + key + scale[index]


def _chord(key: int, scale: tuple[int, ...], degree: int, octave: int) -> list[int]:
    return [_scale_pitch(key, scale, degree + step, octave) for step in (0, 2, 4)]


def compose_piece(seed: int, seconds: float = 30.0) -> pretty_midi.PrettyMIDI:
    """A multi-track piece of about `seconds` (whole bars), fully determined by `seed`."""
    rng = np.random.default_rng(seed)
    tempo = float(rng.integers(84, 141))
    beat = 60.0 / tempo
    bar = 4 * beat
    key = int(rng.integers(0, 12))
    scale = MAJOR if rng.random() < 0.6 else MINOR
    form = FORMS[int(rng.integers(len(FORMS)))]
    bars_per_section = 4 if seconds / bar / len(form) < 6 else 8
    n_sections = max(1, int(np.ceil(seconds / (bar * bars_per_section))))
    sections = (form * (n_sections // len(form) + 1))[:n_sections]
    materials = {letter: _section_material(rng, scale) for letter in sorted(set(sections))}

    midi = pretty_midi.PrettyMIDI(initial_tempo=tempo)
    piano = pretty_midi.Instrument(int(rng.choice(PIANOS)), name="piano")
    bass = pretty_midi.Instrument(int(rng.integers(32, 40)), name="bass")
    lead = pretty_midi.Instrument(int(rng.choice(LEADS)), name="lead")
    guitar = pretty_midi.Instrument(int(rng.choice(GUITARS)), name="guitar")
    pad = pretty_midi.Instrument(int(rng.choice(PADS)), name="pad")
    drums = pretty_midi.Instrument(0, is_drum=True, name="drums")

    for index, letter in enumerate(sections):
        material = materials[letter]
        start = index * bars_per_section * bar
        for bar_index in range(bars_per_section):
            t0 = start + bar_index * bar
            degree = material["progression"][bar_index % 4]
            chord = _chord(key, scale, degree, 4)
            for hit in material["comp"]:
                _add(piano, chord, t0 + hit * beat, t0 + hit * beat + 0.9 * beat, 70)
            root = _scale_pitch(key, scale, degree, 2)
            for step, hit in enumerate(material["bass"]):
                pitch = root + (7 if step % 4 == 2 else 0)
                _add(bass, [pitch], t0 + hit * beat, t0 + hit * beat + 0.45 * beat, 95)
            if material["pad"]:
                _add(pad, _chord(key, scale, degree, 3), t0, t0 + bar, 55)
            if material["arpeggio"]:
                for step in range(8):
                    _add(guitar, [chord[step % 3] + 12 * (step // 3 % 2)], t0 + step * beat / 2,
                         t0 + (step + 1) * beat / 2, 60)
            _drum_bar(drums, material, t0, beat, crash=bar_index == 0)
            for offset, length, degree_step in material["motif"][bar_index % 2]:
                pitch = _scale_pitch(key, scale, degree + degree_step, 5)
                _add(lead, [pitch], t0 + offset * beat, t0 + (offset + length) * beat, 90)
    midi.instruments = [i for i in (piano, bass, lead, guitar, pad, drums) if i.notes]
    return midi


def _section_material(rng: np.random.Generator, scale: tuple[int, ...]) -> dict:
    """What makes a section recognisable when it comes back: harmony, groove and motif."""
    motif = []
    for _ in range(2):  # a two-bar phrase
        notes, position = [], 0.0
        degree = int(rng.integers(0, len(scale)))
        while position < 4.0:
            length = float(rng.choice([0.5, 0.5, 1.0, 1.0, 1.5, 2.0]))
            length = min(length, 4.0 - position)
            if rng.random() > 0.15:  # leave some rests
                notes.append((position, length * 0.95, degree))
            degree += int(rng.choice([-2, -1, -1, 0, 1, 1, 2, 3]))
            degree = int(np.clip(degree, -3, 9))
            position += length
        motif.append(notes)
    return {
        "progression": PROGRESSIONS[int(rng.integers(len(PROGRESSIONS)))],
        "comp": (0.0, 2.0) if rng.random() < 0.5 else (0.0, 1.0, 2.0, 3.0),
        "bass": (0.0, 1.5, 2.0, 3.0) if rng.random() < 0.5 else (0.0, 1.0, 2.0, 3.0),
        "hats": 8 if rng.random() < 0.6 else 16,
        "pad": bool(rng.random() < 0.5),
        "arpeggio": bool(rng.random() < 0.5),
        "motif": motif,
    }


def _drum_bar(drums: pretty_midi.Instrument, material: dict, t0: float, beat: float, crash: bool) -> None:
    if crash:
        _add(drums, [CRASH], t0, t0 + beat, 100)
    for kick in (0.0, 2.0, 2.5) if material["bass"][1] == 1.5 else (0.0, 2.0):
        _add(drums, [KICK], t0 + kick * beat, t0 + kick * beat + 0.1, 110)
    for snare in (1.0, 3.0):
        _add(drums, [SNARE], t0 + snare * beat, t0 + snare * beat + 0.1, 100)
    step = 4.0 / material["hats"]
    for index in range(material["hats"]):
        hat = OPEN_HAT if index == material["hats"] - 1 else CLOSED_HAT
        _add(drums, [hat], t0 + index * step * beat, t0 + index * step * beat + 0.05, 70)


def _add(instrument: pretty_midi.Instrument, pitches: list[int], start: float, end: float, velocity: int) -> None:
    for pitch in pitches:
        if 0 <= pitch <= 127:
            instrument.notes.append(pretty_midi.Note(velocity, pitch, start, end))
