"""`pyramid generate`: sample a piece with the LM, decode it with its codec, write audio and tokens."""

from __future__ import annotations

import math
import secrets
from pathlib import Path
from typing import Annotated

import typer
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


def generate(  # noqa: C901 (issue 12 part 4 moves its work into the library)
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
    from pyramid_cli.audio import encode_audio_bytes, load_audio
    from pyramid_cli.cli._shared import write_output
    from pyramid_cli.codec.api import decode_pyr, encode_waveform, load_codec
    from pyramid_cli.devices import resolve_device
    from pyramid_cli.hub.registry import DEFAULT_LM, resolve_recorded
    from pyramid_cli.lm.api import generate_pieces, load_lm
    from pyramid_cli.lm.decode import DecodeSettings, dtype_name
    from pyramid_cli.lm.sampling import SamplingSettings
    from pyramid_cli.pyrfile import PyrFile
    from pyramid_cli.threads import SAMPLING_THREADS  # imports torch: only when a command runs

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
    if prompt_seconds is not None and prompt is None:
        raise UsageError("--prompt-seconds needs --prompt")
    if prompt_seconds is not None and not (math.isfinite(prompt_seconds) and prompt_seconds > 0):
        raise UsageError(f"--prompt-seconds must be a positive number of seconds, got {prompt_seconds}")
    if not math.isfinite(length):
        raise UsageError(f"the length must be a finite number of seconds, got {length}")
    sampling = SamplingSettings(temperature, top_k or None, top_p)
    decode = DecodeSettings(dtype=dtype.strip().lower(), compile=compile_step,
                            threads=SAMPLING_THREADS if threads is None else threads)
    apply_threads(threads)
    targets = [_numbered(p, i, num_samples) for p in (output, save_tokens) if p is not None for i in range(num_samples)]
    for target in targets:
        check_output(target, force, (prompt,) if prompt else ())
    seed = secrets.randbelow(2**31) if seed is None else seed

    torch_device = resolve_device(device)
    compute_dtype = decode.resolve(torch_device)  # a dtype this device cannot run fails before any loading
    loaded = load_lm(lm or DEFAULT_LM, torch_device)
    config = loaded.model.config
    # The codec named in the LM's config may only be a local model; a download needs --model.
    codec = load_codec(model if model is not None else resolve_recorded(config.codec_name, "codec"), torch_device)
    prompt_pyr = None
    if prompt is not None:
        if prompt.suffix.lower() == ".pyr":
            prompt_pyr = PyrFile.read(prompt)
        else:
            wav, rate = load_audio(prompt)
            prompt_pyr = encode_waveform(wav, rate, codec, name=str(prompt))
    console.print(f"seed {seed} · {loaded.name} ({config.layout}) · codec {codec.name} · {length:g} s "
                  f"on {torch_device} ({dtype_name(compute_dtype)}"
                  f"{', compiled' if decode.compile else ''})", soft_wrap=True)
    progress = make_progress(TextColumn("{task.fields[rate]}"))
    with progress:
        task = progress.add_task("generating", total=None, rate="")

        def on_progress(done: int, total: int, level: int) -> None:
            if done % 50 == 0 or done == total:
                elapsed = progress.tasks[task].elapsed or 1e-9
                progress.update(task, total=total, completed=done,
                                rate=f"level {level} · {done * num_samples / elapsed:.0f} tok/s")

        result = generate_pieces(loaded, codec, length, sampling=sampling, seed=seed, num_samples=num_samples,
                                 levels=levels, prompt=prompt_pyr, prompt_seconds=prompt_seconds,
                                 prompt_name=None if prompt is None else prompt.name, on_progress=on_progress,
                                 decode=decode)
    written: list[str] = []
    for index, piece in enumerate(result.pieces):
        if save_tokens is not None:
            path = _numbered(save_tokens, index, num_samples)
            write_output(path, piece.to_bytes(), force)
            written.append(str(path))
        if output is not None:
            path = _numbered(output, index, num_samples)
            audio = decode_pyr(piece, codec, piece.n_levels)
            data = encode_audio_bytes(audio, piece.sample_rate, AUDIO_SUFFIXES[path.suffix.lower()])
            write_output(path, data, force)
            written.append(str(path))
    audio_seconds = result.coarse_frames * config.coarse_hop / config.sample_rate
    summary = {"ok": True, "seed": seed, "lm": f"{loaded.name}@{loaded.hash}", "codec": f"{codec.name}@{codec.hash}",
               "layout": config.layout, "seconds": audio_seconds, "prompt_seconds": result.prompt_seconds,
               "num_samples": num_samples, "levels": result.pieces[0].n_levels,
               "temperature": sampling.temperature, "top_k": sampling.top_k, "top_p": sampling.top_p,
               "dtype": result.dtype, "compiled": result.compiled,
               "tokens_generated": result.tokens_generated, "sampling_seconds": result.seconds,
               "tokens_per_second_generated": result.tokens_per_second,
               "real_time_factor": audio_seconds * num_samples / max(result.seconds, 1e-9),
               "tokens_per_second_of_audio": [config.tokens_per_second(i) for i in range(result.pieces[0].n_levels)],
               "outputs": written}
    if json_output:
        print_json(summary)
    console.print(f"[green]done[/green]: {audio_seconds:.1f} s x {num_samples} in {result.seconds:.1f} s of sampling "
                  f"({result.tokens_per_second:.0f} tokens/s, {summary['real_time_factor']:.1f}x real time); "
                  f"seed {seed}; wrote {', '.join(written)}", soft_wrap=True)
