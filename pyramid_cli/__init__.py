"""pyramid: long-form music generation in the audio domain with PyramidCodec.

Packages (README "Architecture" has the map):
    codec       PyramidCodec: the model, its training losses, chunked inference, audio ↔ .pyr calls
    lm          the LM over codec tokens: layouts, the model, sampling, generation calls
    data        MIDI → rendered corpus (manifest, splits, shards) → token sets
    train       the one training loop and the codec's and LM's steps
    hub         the model registry: model folders, identities, Hugging Face Hub, bundles
    pyr         the .pyr token file
    audio       audio in and out, streaming reads, spectra
    metrics     distances, transcription, music statistics, FAD, ViSQOL, plots
    runtime     devices, threads, the allocator, atomic files, folder locks
    bench       `pyramid bench`
    cli         the `pyramid` command line (thin Typer layer over the library)
    errors      the error types the CLI maps to one line and an exit code
"""

__version__ = "0.1.0"
