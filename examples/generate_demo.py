"""Generate a short piece with the bundled LM and codec, and say what 3 minutes would take here.

Writes OUT_DIR/generated.wav (all levels), OUT_DIR/generated.l1.wav (the coarse skeleton alone)
and OUT_DIR/generated.pyr (tokens + seed + settings), then prints a table: tokens per level,
sampling speed, and the 3-minute estimate from the measured tokens/s (the cached sampler's cost
per token does not grow with the length of the piece, so the estimate is linear).

Run: .venv/bin/python examples/generate_demo.py [--seconds 20] [--seed 7] [--out-dir demo]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from pyramid_cli.audio.io import save_audio
from pyramid_cli.codec.api import decode_pyr
from pyramid_cli.hub.registry import DEFAULT_LM
from pyramid_cli.lm.api import generate_audio
from pyramid_cli.lm.sampling import SamplingSettings
from pyramid_cli.metrics import music_stats, transcribe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--lm", default=DEFAULT_LM)
    parser.add_argument("--model", default=None, help="codec (default: the one the LM was trained on)")
    parser.add_argument("--out-dir", type=Path, default=Path("demo"))
    args = parser.parse_args()
    console = Console(stderr=True)
    # Decoded below instead, each level count timed on its own.
    made = generate_audio(args.seconds, lm=args.lm, codec=args.model, sampling=SamplingSettings(args.temperature, 100),
                          seed=args.seed, device="cpu", decode_audio=False)
    lm, codec, result = made.lm, made.codec, made.result
    piece = result.pieces[0]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    piece.write(args.out_dir / "generated.pyr")
    started = time.perf_counter()
    for levels, name in ((piece.n_levels, "generated.wav"), (1, "generated.l1.wav")):
        save_audio(args.out_dir / name, decode_pyr(piece, codec, levels), piece.sample_rate)
    decode_seconds = time.perf_counter() - started
    config = lm.model.config
    table = Table(title=f"{lm.name} ({config.layout}) + {codec.name}, seed {args.seed}, {torch.get_num_threads()} "
                        "CPU threads")
    table.add_column("")
    table.add_column("value", justify="right")
    for i, count in enumerate(result.tokens_per_level):
        table.add_row(f"level {i} tokens ({config.tokens_per_second(i):.2f}/s)", str(count))
    audio_seconds = piece.duration_seconds
    table.add_row("audio", f"{audio_seconds:.1f} s")
    table.add_row("sampling", f"{result.seconds:.1f} s ({result.tokens_per_second:.0f} tokens/s)")
    table.add_row("decoding (all levels + level 0 alone)", f"{decode_seconds:.1f} s")
    minutes3 = sum(config.tokens_per_second(i) for i in range(config.n_levels)) * 180
    table.add_row("3 minutes here (estimate)", f"{minutes3 / result.tokens_per_second:.0f} s of sampling "
                  f"for {minutes3:.0f} tokens")
    console.print(table)
    if transcribe.available():
        console.print(music_table(args.out_dir / "generated.wav", lm.folder / REFERENCE_STATS))
    console.print(f"files in {args.out_dir}/: generated.wav, generated.l1.wav, generated.pyr")


# `pyramid eval music corpus/audio/test --json` of the corpus the LM was trained on, kept in its folder.
REFERENCE_STATS = "corpus-music-stats.json"
STAT_ROWS = (("notes per second", "notes_per_second", ".1f"), ("distinct pitches", "distinct_pitches", ".1f"),
             ("pitch-class entropy (bits)", "pitch_class_entropy", ".2f"), ("key clarity", "key_clarity", ".2f"),
             ("share of time a note sounds", "sounding_fraction", ".2f"), ("repetition", "repetition", ".2f"),
             ("quiet windows (30 dB down)", "quiet_windows", ".0f"))


def music_table(wav_path: Path, reference_path: Path) -> Table:
    """The piece's transcription statistics (one window per 30 s) beside the corpus's means."""
    from pyramid_cli.audio.io import load_mono

    wav = load_mono(wav_path, transcribe.SAMPLE_RATE)[0]
    notes = transcribe.Transcriber().transcribe(wav, transcribe.SAMPLE_RATE)
    windows = music_stats.window_stats(notes.notes, notes.duration, wav=wav, sample_rate=transcribe.SAMPLE_RATE)
    piece = music_stats.summarise(windows)
    reference, label = {}, "corpus (no figures in the LM folder)"
    if reference_path.is_file():
        record = json.loads(reference_path.read_text())
        reference, label = record["mean"], f"the LM's corpus, test split ({len(record['pieces'])} songs)"
    table = Table(title="is it music? (pyramid eval music, means over 30 s windows)")
    table.add_column("")
    table.add_column(wav_path.name, justify="right")
    table.add_column(label, justify="right")
    for label, key, fmt in STAT_ROWS:
        table.add_row(label, format(piece.get(key, float("nan")), fmt),
                      format(reference[key], fmt) if key in reference else "-")
    table.add_row("key", windows[0].key if windows else "-", "-")
    return table


if __name__ == "__main__":
    main()
