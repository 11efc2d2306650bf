"""`pyramid encode | decode | info`: audio ↔ hierarchical tokens in `.pyr` files.

Thin commands: parse, check the outputs before any work, call `pyramid_cli.codec.api`, render on
stderr. `-` names stdin/stdout. Audio files are read and written chunk by chunk, so memory does not
grow with their length; stdin and stdout are buffered whole (a 3-minute .pyr is ~17 KB).
"""

from __future__ import annotations

import glob
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.markup import escape
from rich.progress import TextColumn
from rich.table import Table

from pyramid_cli.cli._shared import (
    STDIO,
    DeviceOption,
    ForceOption,
    JsonOption,
    ThreadsOption,
    apply_threads,
    check_output,
    console,
    is_stdio,
    make_progress,
    print_json,
    read_stdin_bytes,
    stdin_is_piped,
    stdout_is_piped,
    write_output,
)
from pyramid_cli.errors import InputError, PyramidError, UsageError
from pyramid_cli.hub.registry import DEFAULT_CODEC
from pyramid_cli.runtime.fileio import atomic_write

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".mp3", ".aif", ".aiff", ".au", ".w64", ".caf"}
WRITE_SUFFIXES = {".wav": "WAV", ".flac": "FLAC"}

# codec.inference.DEFAULT_CHUNK_SECONDS, spelled out so that `--help` does not import torch (a test checks).
DEFAULT_CHUNK_SECONDS = 30.0
ChunkOption = Annotated[float, typer.Option(
    "--chunk-seconds", min=0.1, help="Audio processed per step; bounds the memory on long files. The tokens and "
    "the audio do not depend on it (chunks overlap by the codec's measured receptive field).")]
LevelsOption = Annotated[int | None, typer.Option("--levels", min=1, help=(
    "Number of levels, coarsest first: 1 = the skeleton (10.8 tokens/s for p111), 2 = 32.3, 3 = 75.4 (all)."))]


@dataclass
class _Job:
    source: Path | None  # None = stdin
    label: str
    output: str = ""


def _expand(inputs: list[str], out_dir: Path | None) -> list[_Job]:
    """Files, folders (recursive audio files, tree mirrored under out_dir) and globs → jobs."""
    jobs: list[_Job] = []
    for item in inputs:
        if is_stdio(item):
            jobs.append(_Job(None, "<stdin>"))
            continue
        path = Path(item)
        if not path.exists() and any(ch in item for ch in "*?["):
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True))
            if not matches:
                raise UsageError(f"no file matches {item!r}")
            jobs += _expand([str(m) for m in matches if m.is_file()], out_dir)
            for folder in (m for m in matches if m.is_dir()):
                jobs += _expand([str(folder)], out_dir)
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
            if not files:
                raise UsageError(f"{item}: no audio files ({', '.join(sorted(AUDIO_SUFFIXES))}) in this folder")
            for file in files:
                target = (out_dir / file.relative_to(path)) if out_dir else file
                jobs.append(_Job(file, str(file), str(target.with_suffix(".pyr"))))
        else:  # a file, or a missing one: it fails on its own and the batch goes on
            target = (out_dir / path.name) if out_dir else path
            jobs.append(_Job(path, item, str(target.with_suffix(".pyr"))))
    return jobs


def _plan_encode(inputs: list[str], output: str | None, out_dir: Path | None, json_output: bool) -> list[_Job]:
    if output is not None and out_dir is not None:
        raise UsageError("give either -o OUT (one input) or --out-dir DIR (any number), not both")
    if not inputs:
        if not stdin_is_piped():
            raise UsageError("no input: give audio files, folders or globs, or pipe audio on stdin")
        inputs = [STDIO]
    jobs = _expand(inputs, out_dir)
    if sum(job.source is None for job in jobs) > 1:
        raise UsageError("stdin ('-') can be read only once")
    if output is not None:
        if len(jobs) != 1:
            raise UsageError(f"-o names one output but there are {len(jobs)} inputs; use --out-dir DIR")
        jobs[0].output = output
    for job in jobs:
        if job.source is None and not job.output:
            if out_dir is not None or not stdout_is_piped():
                raise UsageError("reading stdin: give -o OUT.pyr, or pipe stdout ('-o -')")
            job.output = STDIO
    if json_output and any(is_stdio(job.output) for job in jobs):
        raise UsageError("--json prints on stdout, which already carries the .pyr; write it with -o FILE")
    seen: dict[str, str] = {}
    for job in jobs:
        key = job.output if is_stdio(job.output) else str(Path(job.output).resolve())
        if key in seen:
            raise UsageError(f"{seen[key]} and {job.label} would both write {job.output}; use --out-dir on folders")
        seen[key] = job.label
    return jobs


def encode(
    inputs: Annotated[list[str] | None, typer.Argument(
        help="Audio files, folders (searched recursively) or glob patterns. '-' (or nothing, with audio piped "
        "in) reads stdin.", show_default=False)] = None,
    output: Annotated[str | None, typer.Option(
        "--output", "-o", help="The .pyr to write for a single input; '-' writes it to stdout. "
        "Default: song.wav → song.pyr beside it (stdout when reading stdin into a pipe). Missing folders are "
        "created.")] = None,
    out_dir: Annotated[Path | None, typer.Option(
        "--out-dir", help="Folder for the outputs of a batch (created if missing); folder inputs have their tree "
        "mirrored in it.")] = None,
    levels: LevelsOption = None,
    model: Annotated[str, typer.Option(
        "--model", help="Codec: a bundled model name or a folder with config.json + model.safetensors.")
    ] = DEFAULT_CODEC,
    device: DeviceOption = "auto",
    threads: ThreadsOption = None,
    force: ForceOption = False,
    chunk_seconds: ChunkOption = DEFAULT_CHUNK_SECONDS,
    json_output: JsonOption = False,
) -> None:
    """Encode audio into hierarchical tokens (.pyr), in bounded memory.

    Input is mixed down to mono and resampled to the codec's rate; its rate, channels and length are stored.

    A failed file is reported and the batch goes on; the exit code is 1 if any file failed.

    Examples:

      pyramid encode song.wav                      # → song.pyr

      pyramid encode music/ --out-dir tokens/      # mirrors the tree

      pyramid encode song.wav -o - | pyramid decode --levels 1 -o - > skeleton.wav
    """
    from pyramid_cli.codec.api import encode_file, load_codec

    jobs = _plan_encode(list(inputs or []), output, out_dir, json_output)
    apply_threads(threads)
    codec = load_codec(model, device)
    if levels is not None and levels > codec.model.config.n_levels:
        raise UsageError(f"--levels {levels}: {codec.name} has levels 1..{codec.model.config.n_levels}")
    results: list[dict[str, Any]] = []
    errors: list[PyramidError] = []
    rate = codec.model.config.sample_rate
    with make_progress(TextColumn("{task.fields[unit]}")) as progress:
        overall = progress.add_task("encoding", total=len(jobs), unit="files", visible=len(jobs) > 1)
        for job in jobs:
            task = progress.add_task(escape(job.label), total=None, unit="s of audio")

            def report(done: int, total: int, task: Any = task) -> None:
                progress.update(task, completed=done // rate, total=-(-total // rate))

            warnings: list[str] = []

            def warn(message: str, warnings: list[str] = warnings) -> None:
                warnings.append(message)
                if not json_output:
                    progress.console.print(f"[yellow]warning:[/yellow] {escape(message)}", soft_wrap=True)

            try:
                check_output(job.output, force, () if job.source is None else (job.source,))
                source = io.BytesIO(read_stdin_bytes()) if job.source is None else job.source
                pyr = encode_file(source, codec, name=job.label, levels=levels, chunk_seconds=chunk_seconds,
                                  progress=report, warn=warn)
                data = pyr.to_bytes()
                write_output(job.output, data, force)
            except PyramidError as error:
                errors.append(error)
                results.append({"input": job.label, "ok": False, "error": str(error), "warnings": warnings})
                if len(jobs) > 1 and not json_output:
                    progress.console.print(f"[red]error:[/red] {escape(str(error))}", soft_wrap=True)
            else:
                results.append({"input": job.label, "output": job.output, "ok": True, "bytes": len(data),
                                "seconds": pyr.duration_seconds, "levels": pyr.n_levels,
                                "tokens_per_second": pyr.cumulative_tokens_per_second[-1], "warnings": warnings})
                if not json_output:
                    progress.console.print(
                        f"{job.label} → {'stdout' if is_stdio(job.output) else job.output}: "
                        f"{pyr.duration_seconds:.1f} s, {pyr.n_levels} levels, "
                        f"{pyr.cumulative_tokens_per_second[-1]:.1f} tokens/s, {len(data):,} bytes",
                        soft_wrap=True, markup=False)
            progress.update(task, visible=False)
            progress.advance(overall)
    if json_output:
        print_json({"ok": not errors, "codec": {"name": codec.name, "hash": codec.hash},
                    "files": results, "failed": len(errors)})
    if len(jobs) == 1 and errors and not json_output:
        raise errors[0]  # one input: main() reports it like any other error, with its own exit code
    if errors:
        if not json_output:
            console.print(f"[red]{len(errors)} of {len(jobs)} files failed[/red]")
        raise typer.Exit(1)


def _read_pyr(source: str | None, header_only: bool = False) -> tuple[Any, str, int]:
    """(PyrFile, name for messages, size in bytes) from a path or stdin; ``header_only``: a
    PyrHeader instead (the payload is not unpacked, so any size of file is quick)."""
    from pyramid_cli.pyr.file import PyrFile
    from pyramid_cli.pyr.header import PyrHeader

    reader: Any = PyrHeader if header_only else PyrFile
    if source is None and not stdin_is_piped():
        raise UsageError("no input: give a .pyr file, or pipe one on stdin")
    if source is None or is_stdio(source):
        data = read_stdin_bytes()
        return reader.from_bytes(data, name="<stdin>"), "<stdin>", len(data)
    return reader.read(source), source, Path(source).stat().st_size


def decode(
    source: Annotated[str | None, typer.Argument(
        metavar="INPUT", help="A .pyr file; '-' (or nothing, with a .pyr piped in) reads stdin.",
        show_default=False)] = None,
    levels: LevelsOption = None,
    output: Annotated[str | None, typer.Option(
        "--output", "-o", help="Audio to write, .wav or .flac; '-' writes WAV to stdout. Default: "
        "<stem>.l<K>.wav beside the input (stdout when reading stdin into a pipe). Missing folders are "
        "created.")] = None,
    model: Annotated[str | None, typer.Option(
        "--model", help="Codec: a bundled model name or a folder. Default: the codec named in the .pyr.")] = None,
    device: DeviceOption = "auto",
    threads: ThreadsOption = None,
    force: ForceOption = False,
    chunk_seconds: ChunkOption = DEFAULT_CHUNK_SECONDS,
    json_output: JsonOption = False,
) -> None:
    """Decode a .pyr to audio at 1, 2 or 3 levels (default: all the file stores).

    The output has exactly the length of the encoded audio, at the codec's sample rate.

    The file must have been made by the codec given: its name and weights hash are checked.

    Examples:

      pyramid decode song.pyr --levels 2           # → song.l2.wav

      cat song.pyr | pyramid decode --levels 1 -o - | aplay
    """
    from pyramid_cli.audio.io import write_audio_pieces
    from pyramid_cli.codec.api import decoded_levels, iter_decode_pyr, load_codec_for

    pyr, name, _ = _read_pyr(source)
    k = decoded_levels(pyr, levels, name)
    if output is None:
        if name == "<stdin>":
            if not stdout_is_piped():
                raise UsageError("reading stdin: give -o OUT.wav, or pipe stdout ('-o -')")
            output = STDIO
        else:
            output = str(Path(name).with_suffix(f".l{k}.wav"))
    fmt = "WAV" if is_stdio(output) else WRITE_SUFFIXES.get(Path(output).suffix.lower())
    if fmt is None:
        raise UsageError(f"-o {output}: audio is written as .wav or .flac")
    if json_output and is_stdio(output):
        raise UsageError("--json prints on stdout, which already carries the audio; write it with -o FILE")
    check_output(output, force, () if name == "<stdin>" else (Path(name),))
    apply_threads(threads)
    codec = load_codec_for(pyr, model, device, name)
    with make_progress() as progress:
        task = progress.add_task(f"decoding {k} level{'s' * (k > 1)}", total=pyr.num_samples)
        pieces = iter_decode_pyr(pyr, codec, k, name=name, chunk_seconds=chunk_seconds,
                                 progress=lambda done, total: progress.update(task, completed=done))
        # A file is written piece by piece as the chunks are decoded (an hour needs no more memory
        # than a song); stdout is not seekable, so its WAV is assembled in memory (16-bit) first.
        if is_stdio(output):
            buffer = io.BytesIO()
            samples = write_audio_pieces(buffer, pieces, pyr.sample_rate, fmt)
            write_output(output, buffer.getvalue())
        else:
            try:
                with atomic_write(output, exclusive=not force) as handle:
                    samples = write_audio_pieces(handle, pieces, pyr.sample_rate, fmt)
            except FileExistsError:
                raise InputError(f"{output} already exists (written meanwhile by another process); "
                                 "pass --force to overwrite it") from None
            except OSError as error:
                raise InputError(f"{output}: cannot write ({error.strerror or error})") from None
    if json_output:
        print_json({"ok": True, "input": name, "output": output, "levels": k, "samples": samples,
                    "sample_rate": pyr.sample_rate, "seconds": pyr.duration_seconds})
    else:
        console.print(f"{name} → {'stdout' if is_stdio(output) else output}: {k} level{'s' * (k > 1)}, "
                      f"{pyr.duration_seconds:.2f} s at {pyr.sample_rate} Hz", soft_wrap=True, markup=False)


def info(
    source: Annotated[str | None, typer.Argument(
        metavar="FILE", help="A .pyr file; '-' (or nothing, with a .pyr piped in) reads stdin.",
        show_default=False)] = None,
    json_output: JsonOption = False,
) -> None:
    """Show a .pyr's codec, length, and exact tokens/s, bits/s and compression per level.

    Reads and checks the header only, so it is instant at any size; decode verifies the codes.

    Example: pyramid info song.pyr --json
    """
    from pyramid_cli.pyr.file import pyr_summary

    pyr, name, size = _read_pyr(source, header_only=True)
    summary = pyr_summary(pyr, size, name)
    if json_output:
        print_json(summary)
        return
    title = f"{name}: {pyr.codec_name}@{pyr.codec_hash[:8]}, {pyr.duration_seconds:.2f} s, {size:,} bytes"
    table = Table(title=escape(title), title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("level", "hop", "codebooks", "frames", "tokens/s", "total\ntokens/s", "total\nbits/s", "vs PCM"):
        table.add_column(column, justify="right", no_wrap=True)
    for level in summary["levels"]:
        table.add_row(str(level["level"]), str(level["hop_length"]), str(level["n_codebooks"]), f"{level['frames']:,}",
                      f"{level['tokens_per_second']:.2f}", f"{level['cumulative_tokens_per_second']:.2f}",
                      f"{level['cumulative_bits_per_second']:,.0f}", f"{level['compression_ratio']:,.0f}:1")
    console.print(table)
    console.print(f"audio: {summary['num_samples']:,} samples at {summary['sample_rate']} Hz "
                  f"(input was {summary['original_channels']} ch at {summary['original_sample_rate']} Hz); "
                  f"file vs 16-bit PCM at the input's rate: {summary['compression_ratio']:,.0f}:1; "
                  f"written by pyramid {summary['pyramid_version']}", soft_wrap=True, markup=False)
    if summary["provenance"]:
        console.print("provenance: " + ", ".join(f"{k}={v}" for k, v in summary["provenance"].items()),
                      soft_wrap=True, markup=False)
