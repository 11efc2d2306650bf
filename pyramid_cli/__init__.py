"""pyramid: long-form music generation in the audio domain with PyramidCodec.

Modules:
    errors      the exception hierarchy the CLI maps to exit codes
    audio       load/save (soundfile), mono mix-down, resampling (julius), atomic writes
    data        MIDI → six instrument groups → FluidSynth renders → corpus (manifest, splits, shards)
    cli         the `pyramid` command line (thin Typer layer over the library)
"""

__version__ = "0.1.0"
