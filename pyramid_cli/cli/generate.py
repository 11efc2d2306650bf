"""`pyramid generate`: sample a piece with the LM, decode it with its codec, write audio and tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import TextColumn

from pyramid_cli.cli._shared import (
    DeviceOption,
    ForceOption,
    JsonOption,
    ThreadsOption,
    apply_threads,
    check_output,
    console,
    make_progress,
    print_json,
)
from pyramid_cli.errors import UsageError

AUDIO_SUFFIXES = {".wav": "WAV", ".flac": "FLAC"}


def _numbered(path: Path, index: int, count: int) -> Path:
    """piece.wav → piece-1.wav, piece-2.wav ... when several samples are asked for."""
    return path if count == 1 else path.with_name(f"{path.stem}-{index + 1}{path.suffix}")


def generate(
    minutes: Annotated[float | None, typer.Option(help="Length of the piece in minutes.")] = None,
    seconds: Annotated[float | None, typer.Option(help="Length in seconds (instead of --minutes).")] = None,
    temperature: Annotated[float, typer.Option(help="Sampling temperature; the paper uses 0.8, 1.0 and 1.3 "
                                               "(higher: more varied, less stable). 0 = greedy.")] = 1.0,
    top_k: Annotated[int, typer.Option(help="Sample among the k most likely codes (paper: 100; 0 = off).")] = 100,
    top_p: Annotated[float | None, typer.Option(help="Nucleus sampling: the smallest set of codes whose "
                                                "probability reaches p.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed; the same seed, models, settings and device give "
                                             "the same piece. Default: a fresh one, printed and stored.")] = None,
    num_samples: Annotated[int, typer.Option(help="Pieces generated together as one batch "
                                             "(written as OUT-1.wav, OUT-2.wav, ...).")] = 1,
    prompt: Annotated[Path | None, typer.Option(help="Continue this audio (.wav/.flac/...) or .pyr: it becomes "
                                                "the start of the piece, at its true time.")] = None,
    prompt_seconds: Annotated[float | None, typer.Option(help="Use only the first S seconds of the prompt "
                                                         "(the paper's continuation task: 10).")] = None,
    levels: Annotated[int | None, typer.Option(help="Generate and decode only the first K levels: 1 is a quick "
                                               "sketch of the 10.8 tokens/s skeleton. Default: all.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Audio to write (.wav or .flac). Missing "
                                                "folders are created.")] = None,
    save_tokens: Annotated[Path | None, typer.Option(help="Also write the tokens as a .pyr (with the seed and "
                                                     "settings) to decode or continue later; missing "
                                                     "folders are created.")] = None,
    lm: Annotated[str | None, typer.Option("--lm", help="Language model: a bundled name or a folder "
                                           "[default: the bundled default LM].")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Codec [default: the one the LM was trained "
                                              "on, found by name].")] = None,
    device: DeviceOption = "auto",
    threads: ThreadsOption = None,
    dtype: Annotated[str, typer.Option(help="LM precision: auto, float32, bfloat16 or float16. auto = bfloat16 on a "
                                       "CUDA GPU that supports it (autocast; the piece differs from float32 by "
                                       "rounding), float32 elsewhere. bfloat16 also runs on the CPU, but is not faster "
                                       "there; float16 needs CUDA.")] = "auto",
    compile_step: Annotated[bool, typer.Option("--compile", help="torch.compile the per-token LM step (on CUDA as a "
                                               "CUDA graph); the same tokens up to float rounding. Compiling costs "
                                               "10-30 s per process and piece length, counted in the sampling time; "
                                               "on a 2-core CPU the compiled step is then ~1.8x faster, so there it "
                                               "pays only for pieces of about 5 minutes or more. Off by default.")
                            ] = False,
    force: ForceOption = False,
    json_output: JsonOption = False,
) -> None:
    """Generate music: the whole coarse skeleton first, then the details.

    Examples:

      pyramid generate --minutes 3 --temperature 1.3 --seed 7 -o piece.wav

      pyramid generate --seconds 30 --prompt song.wav --prompt-seconds 10 -o continued.wav

      pyramid generate --minutes 3 --levels 1 -o sketch.wav --save-tokens sketch.pyr

      pyramid generate --minutes 3 --device cuda --compile -o piece.wav   # bfloat16 + CUDA graphs
    """
    from pyramid_cli.audio.io import encode_audio_bytes
    from pyramid_cli.cli._shared import write_output
    from pyramid_cli.hub.registry import DEFAULT_LM
    from pyramid_cli.lm.api import GenerationStart, generate_audio
    from pyramid_cli.lm.decode import DecodeSettings
    from pyramid_cli.lm.sampling import SamplingSettings
    from pyramid_cli.runtime.threads import SAMPLING_THREADS  # imports torch: only when a command runs

    if (minutes is None) == (seconds is None):
        raise UsageError("give the length with one of --minutes or --seconds")
    length = seconds if seconds is not None else 60.0 * float(minutes)  # type: ignore[arg-type]
    if output is None and save_tokens is None:
        raise UsageError("give -o OUT.wav and/or --save-tokens OUT.pyr")
    if output is not None and output.suffix.lower() not in AUDIO_SUFFIXES:
        raise UsageError(f"-o {output}: audio is written as .wav or .flac")
    if save_tokens is not None and save_tokens.suffix.lower() != ".pyr":
        raise UsageError(f"--save-tokens {save_tokens}: token files end in .pyr")
    if num_samples < 1:
        raise UsageError("--num-samples must be at least 1")
    sampling = SamplingSettings(temperature, top_k or None, top_p)
    decode = DecodeSettings(dtype=dtype.strip().lower(), compile=compile_step,
                            threads=SAMPLING_THREADS if threads is None else threads)
    apply_threads(threads)
    targets = [_numbered(p, i, num_samples) for p in (output, save_tokens) if p is not None for i in range(num_samples)]
    for target in targets:
        check_output(target, force, (prompt,) if prompt else ())
    progress = make_progress(TextColumn("{task.fields[rate]}"))
    task = progress.add_task("generating", total=None, rate="")

    def on_start(start: GenerationStart) -> None:
        console.print(f"seed {start.seed} · {start.lm.name} ({start.lm.model.config.layout}) · codec "
                      f"{start.codec.name} · {length:g} s on {start.device} ({start.dtype}"
                      f"{', compiled' if start.compiled else ''})", soft_wrap=True)
        progress.start()

    def warn(message: str) -> None:
        console.print(f"[yellow]warning:[/yellow] {escape(message)}", soft_wrap=True)

    def on_progress(done: int, total: int, level: int) -> None:
        if done % 50 == 0 or done == total:
            elapsed = progress.tasks[task].elapsed or 1e-9
            progress.update(task, total=total, completed=done,
                            rate=f"level {level} · {done * num_samples / elapsed:.0f} tok/s")

    try:
        made = generate_audio(length, lm=lm or DEFAULT_LM, codec=model, sampling=sampling, seed=seed,
                              num_samples=num_samples, levels=levels, prompt=prompt, prompt_seconds=prompt_seconds,
                              decode=decode, device=device, decode_audio=output is not None, on_start=on_start,
                              on_progress=on_progress, warn=warn)
    finally:
        progress.stop()
    written: list[str] = []
    for index, piece in enumerate(made.pieces):
        if save_tokens is not None:
            path = _numbered(save_tokens, index, num_samples)
            write_output(path, piece.to_bytes(), force)
            written.append(str(path))
        if output is not None:
            path = _numbered(output, index, num_samples)
            write_output(path, encode_audio_bytes(made.audio[index], piece.sample_rate,
                                                  AUDIO_SUFFIXES[path.suffix.lower()]), force)
            written.append(str(path))
    summary = {**made.summary(), "outputs": written}
    if json_output:
        print_json(summary)
    result = made.result
    console.print(f"[green]done[/green]: {made.seconds:.1f} s x {num_samples} in {result.seconds:.1f} s of sampling "
                  f"({result.tokens_per_second:.0f} tokens/s, {made.real_time_factor:.1f}x real time); "
                  f"seed {result.seed}; wrote {', '.join(written)}", soft_wrap=True)
