"""Corpus building: MIDI → six instrument groups → FluidSynth renders → manifest and splits."""
