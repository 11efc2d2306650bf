"""Does a continuation keep its prompt's key? (issue 11's prompt target, with the data's own yardstick)

For each of the first N songs of a corpus split: a prompt of ``--prompt-seconds`` from the middle of
the song is continued by ``pyramid generate --prompt`` to ``--seconds``; the prompt and the
continuation (the generated part only) are transcribed (Basic Pitch) and each gets its best
Krumhansl-Kessler key (``music_stats.best_key``). Reported beside it, so the figure has a scale:

- ``song``: the song's own next seconds, i.e. how often real music keeps the key by this measure
  (a 10 s prompt's key estimate is itself noisy, and songs modulate);
- ``decoded prompt``: the codec's decode of the prompt (the first seconds of the output), i.e. how
  often the codec alone keeps the key.

"Related" counts the same key, its relative major/minor, and the keys a fifth above or below in the
same mode: a neighbour on the circle of fifths, which a key-finder confuses easily.

Example:
    python tools/key_keeping.py --corpus ~/corpus --prompts 16 --temperature 1.0 --json out.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import soundfile as sf

from pyramid_cli.data.manifest import load_manifest
from pyramid_cli.metrics.music_stats import best_key, pitch_class_histogram, related_keys
from pyramid_cli.metrics.transcribe import Transcriber


def key_of(transcriber: Transcriber, audio, rate: int, start: float, end: float) -> str:  # noqa: ANN001
    notes = transcriber.transcribe(audio, rate).notes
    return best_key(pitch_class_histogram(notes, start, end))[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--prompt-seconds", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each output, prompt included")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--lm", default=None, help="LM name or folder [default: the bundled one]")
    parser.add_argument("--json", type=Path, default=None, help="write the per-prompt results here")
    args = parser.parse_args()

    records = sorted((r for r in load_manifest(args.corpus) if r["split"] == args.split), key=lambda r: str(r["id"]))
    transcriber = Transcriber(threads=1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for index, record in enumerate(records[: args.prompts]):
            wav, rate = sf.read(args.corpus / record["audio"], dtype="float32")
            wav = wav.mean(axis=1) if wav.ndim == 2 else wav
            start = len(wav) // 2
            prompt_len, total_len = int(args.prompt_seconds * rate), int(args.seconds * rate)
            if len(wav) < start + total_len:
                start = max(0, len(wav) - total_len)
            prompt, song = wav[start:start + prompt_len], wav[start:start + total_len]
            sf.write(Path(tmp) / "prompt.wav", prompt, rate)
            command = [sys.executable, "-m", "pyramid_cli", "generate", "--seconds", str(args.seconds),
                       "--prompt", str(Path(tmp) / "prompt.wav"), "--seed", str(index),
                       "--temperature", str(args.temperature), "-o", str(Path(tmp) / "out.wav"), "--force",
                       "--threads", "1"] + (["--lm", args.lm] if args.lm else [])
            subprocess.run(command, check=True, capture_output=True)
            out, out_rate = sf.read(Path(tmp) / "out.wav", dtype="float32")
            row = {
                "song": record["id"],
                "prompt_key": key_of(transcriber, prompt, rate, 0, args.prompt_seconds),
                "song_key": key_of(transcriber, song, rate, args.prompt_seconds, args.seconds),
                "decoded_prompt_key": key_of(transcriber, out, out_rate, 0, args.prompt_seconds),
                "continuation_key": key_of(transcriber, out, out_rate, args.prompt_seconds, args.seconds),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = {}
    for other in ("continuation_key", "song_key", "decoded_prompt_key"):
        summary[f"{other}_same"] = sum(r["prompt_key"] == r[other] for r in rows) / len(rows)
        summary[f"{other}_related"] = sum(related_keys(r["prompt_key"], r[other]) for r in rows) / len(rows)
    summary.update(prompts=len(rows), temperature=args.temperature, lm=args.lm or "bundled")
    print(json.dumps(summary, indent=1))
    if args.json is not None:
        args.json.write_text(json.dumps({"summary": summary, "prompts": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
