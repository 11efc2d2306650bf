"""Encode a piece, decode it at every level, and print what each level costs and keeps.

The per-level table: tokens/s (cumulative; the caption gives the bits per token); whether the
notes survive (note onset F1 of the decode's Basic Pitch transcription against the input's, when
the evaluation extra is installed; the share of the input's top line, i.e. the tune, found in the
decode; and the chroma similarity); the mel distance (sum over 7 resolutions, the paper's scale) to the input and to
the level's band-limited target (what the level is trained to reproduce); and wall time. The
decoded files are left in OUT_DIR as example.l1.wav, ...

Run: .venv/bin/python examples/codec_demo.py [AUDIO] [--model NAME|DIR] [--out-dir demo]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from pyramid_cli.audio.io import load_mono, save_audio
from pyramid_cli.codec.api import decode_pyr, encode_file, load_codec
from pyramid_cli.codec.targets import band_limited_targets
from pyramid_cli.hub.registry import DEFAULT_CODEC
from pyramid_cli.metrics.distances import chroma_similarity, mel_distance
from pyramid_cli.metrics.transcribe import Transcriber, available, onset_f1, top_line

EXAMPLE = Path(__file__).with_name("example.flac")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("audio", nargs="?", type=Path, default=EXAMPLE, help="audio file [examples/example.flac]")
    parser.add_argument("--model", default=DEFAULT_CODEC, help="codec name or folder")
    parser.add_argument("--out-dir", type=Path, default=Path("demo"), help="where the files go")
    args = parser.parse_args()
    console = Console(stderr=True)
    codec = load_codec(args.model, "cpu")
    rate = codec.model.config.sample_rate

    start = time.perf_counter()
    pyr = encode_file(args.audio, codec)
    encode_seconds = time.perf_counter() - start
    args.out_dir.mkdir(parents=True, exist_ok=True)
    pyr.write(args.out_dir / f"{args.audio.stem}.pyr")

    original = torch.from_numpy(load_mono(args.audio, rate))[None]  # (1, 1, T)
    targets = band_limited_targets(original, pyr.n_levels)
    duration = pyr.num_samples / rate
    table = Table(title=f"{args.audio.name} ({duration:.1f} s) with {codec.name}@{codec.hash[:8]}; "
                        f"encoded in {encode_seconds:.2f} s ({duration / encode_seconds:.0f}x real time)")
    transcriber = Transcriber() if available() else None
    reference = None if transcriber is None else transcriber.transcribe(original[0, 0].numpy(), rate)
    # Short headers: the table must fit an 80-column terminal; the caption explains them.
    for column in ("levels", "tok/s", "note F1", "tune", "notes", "chroma", "mel in", "mel tgt", "decode"):
        table.add_column(column, justify="right")
    table.caption = (f"tok/s: tokens per second ({pyr.bits_per_code} bits each); note F1: onsets of the "
                     "decode's notes vs the input's; tune: the share of the input's top line (the melody) "
                     "found in the decode; mel in / mel tgt: mel distance (sum of 7 resolutions) to the "
                     "input / to the level's band-limited target")
    for levels in range(1, pyr.n_levels + 1):
        start = time.perf_counter()
        wav = decode_pyr(pyr, codec, levels)
        decode_seconds = time.perf_counter() - start
        save_audio(args.out_dir / f"{args.audio.stem}.l{levels}.wav", wav, rate)
        decoded = torch.from_numpy(wav)[None]
        f1, tune, notes = "-", "-", "-"
        if transcriber is not None and reference is not None:
            estimate = transcriber.transcribe(wav[0], rate)
            f1, notes = f"{onset_f1(reference.notes, estimate.notes)[2]:.2f}", str(len(estimate.notes))
            tune = f"{onset_f1(top_line(reference.notes), estimate.notes)[1]:.2f}"
        table.add_row(str(levels), f"{pyr.cumulative_tokens_per_second[levels - 1]:.2f}",
                      f1, tune, notes,
                      f"{float(chroma_similarity(decoded, original, rate)):.3f}",
                      f"{float(mel_distance(decoded, original, rate)):.3f}",
                      f"{float(mel_distance(decoded, targets[levels - 1], rate)):.3f}",
                      f"{decode_seconds:.2f}s")
    console.print(table)
    if reference is None:
        console.print("note F1 needs the evaluation extra (make install-eval)")
    else:
        console.print(f"input: {len(reference.notes)} notes transcribed")
    console.print(f"files in {args.out_dir}/: {args.audio.stem}.pyr and {args.audio.stem}.l1.wav ... "
                  f"{args.audio.stem}.l{pyr.n_levels}.wav")


if __name__ == "__main__":
    main()
