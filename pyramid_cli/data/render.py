"""FluidSynth rendering of merged MIDI to mono audio.

One synthesiser renders all groups on their own channels in a single pass over the sorted
note events, which is several times faster than pretty_midi's one-synth-per-instrument
`fluidsynth()` and lets us stop exactly at a length cap.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pyramid_cli.data.midi_libs import load_fluidsynth, pretty_midi
from pyramid_cli.errors import DependencyError

DRUM_CHANNEL = 9
DRUM_BANK = 128
TAIL_SECONDS = 2.0  # let the last notes ring out; trailing silence is trimmed afterwards


def default_soundfont() -> Path:
    """TimGM6mb.sf2, the General MIDI sound font shipped inside the pretty_midi package."""
    return Path(pretty_midi.__file__).parent / "TimGM6mb.sf2"


def render_midi(midi: pretty_midi.PrettyMIDI, sample_rate: int, soundfont: Path,
                max_seconds: float | None = None) -> np.ndarray:
    """Render every instrument of `midi` with its own program. Returns mono float32 (T,) in [-1, 1].

    Drum instruments play on the GM drum channel (bank 128); the others get a channel each.
    """
    fluidsynth = load_fluidsynth()
    if not soundfont.is_file():
        raise DependencyError(f"sound font not found: {soundfont}")
    synth = fluidsynth.Synth(samplerate=float(sample_rate), gain=0.5)
    try:
        font = synth.sfload(str(soundfont))
        if font == -1:
            raise DependencyError(f"FluidSynth could not load the sound font {soundfont}")
        events: list[tuple[float, int, int, int, int]] = []  # (time, on?, channel, pitch, velocity)
        melodic_channels = iter(c for c in range(16) if c != DRUM_CHANNEL)
        for instrument in midi.instruments:
            if instrument.is_drum:
                channel = DRUM_CHANNEL
                synth.program_select(channel, font, DRUM_BANK, 0)
            else:
                channel = next(melodic_channels)
                synth.program_select(channel, font, 0, instrument.program)
            for note in instrument.notes:
                events.append((note.start, 1, channel, note.pitch, note.velocity))
                events.append((note.end, 0, channel, note.pitch, 0))
        # Note-offs sort before note-ons at the same instant so a repeated note is re-struck.
        events.sort(key=lambda event: (event[0], event[1]))
        end_time = (events[-1][0] if events else 0.0) + TAIL_SECONDS
        if max_seconds is not None:
            end_time = min(end_time, max_seconds)
        total = int(round(end_time * sample_rate))
        blocks: list[np.ndarray] = []
        rendered = 0
        for time, is_on, channel, pitch, velocity in events:
            position = min(int(round(time * sample_rate)), total)
            if position > rendered:
                blocks.append(synth.get_samples(position - rendered))
                rendered = position
            if is_on:
                synth.noteon(channel, pitch, velocity)
            else:
                synth.noteoff(channel, pitch)
        if total > rendered:
            blocks.append(synth.get_samples(total - rendered))
    finally:
        synth.delete()
    if not blocks:
        return np.zeros(0, dtype=np.float32)
    stereo = np.concatenate(blocks).astype(np.float32).reshape(-1, 2)  # interleaved int16 L/R
    return (stereo.mean(axis=1) / 32768.0).astype(np.float32)
