"""Rendering throughput of the corpus builder: seconds of audio rendered per wall second.

Renders the same sources with 1 worker and with every core, into temporary folders, and prints
the figures (per core and total). Uses ../shared/data/midi/dev when present, else procedural
pieces. Run: `make bench` or `.venv/bin/python examples/bench_render.py [--files N]`.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from pyramid_cli.data.build import BuildOptions, build_corpus, default_workers
from pyramid_cli.data.render import default_soundfont
from pyramid_cli.data.sources import midi_sources, procedural_sources

SHARED_MIDI = Path(__file__).resolve().parents[2] / "shared" / "data" / "midi" / "dev"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=8, help="number of sources to render")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="cap per render")
    args = parser.parse_args()
    if SHARED_MIDI.is_dir():
        sources, origin = midi_sources(SHARED_MIDI)[: args.files], f"real MIDI from {SHARED_MIDI}"
    else:
        sources, origin = procedural_sources(args.files), "procedural pieces"
    print(f"{len(sources)} sources ({origin}), renders capped at {args.max_seconds:.0f} s")
    cores = default_workers()
    for workers in sorted({1, cores}):
        with tempfile.TemporaryDirectory() as folder:
            options = BuildOptions(out_dir=Path(folder), soundfont=default_soundfont(), workers=workers,
                                   max_seconds=args.max_seconds)
            summary = build_corpus(sources, options)
        rate = summary.rendered_seconds / summary.wall_seconds
        print(f"workers={workers}: {summary.rendered_seconds:7.1f} s of audio in {summary.wall_seconds:6.1f} s wall"
              f" = {rate:6.1f}x real time total, {rate / workers:6.1f}x per worker"
              f" ({summary.failed} failed)")


if __name__ == "__main__":
    main()
