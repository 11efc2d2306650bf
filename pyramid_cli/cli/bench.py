"""`pyramid bench`: codec and generation speed against named baselines (``pyramid_cli.bench``)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pyramid_cli.cli._shared import DeviceOption, JsonOption, console, print_json
from pyramid_cli.errors import UsageError

if TYPE_CHECKING:
    from pyramid_cli.bench.runner import BenchReport


def _floats(text: str, option: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UsageError(f"{option}: expected comma-separated numbers of seconds, got {text!r}") from None


def _show_list(json_output: bool) -> None:
    from pyramid_cli.bench import check_peers, model_keys

    peers = check_peers()
    entries = {key: {"measures": what, "available": peers.get(key) is None, "reason": peers.get(key)}
               for key, what in model_keys().items()}
    if json_output:
        print_json(entries)
        return
    table = Table(title="pyramid bench --models")
    for column in ("name", "measures", "status"):
        table.add_column(column)
    for key, entry in entries.items():
        status = "[green]ok[/green]" if entry["available"] else f"[yellow]{escape(str(entry['reason']))}[/yellow]"
        table.add_row(key, escape(str(entry["measures"])), status)
    console.print(table)


def bench(
    seconds: Annotated[str, typer.Option(help="Input lengths in seconds, comma-separated: each model encodes and "
                                         "decodes each length.")] = "10,180",
    models: Annotated[str | None, typer.Option(help="Comma-separated models to measure (see --list): default, "
                                               "codec presets, peers, or codec folders "
                                               "(default: default,p111,dac_n2 and every installed peer).")] = None,
    device: DeviceOption = "auto",
    threads: Annotated[int | None, typer.Option(min=1, help="Torch threads for every measurement "
                                                "(default: torch's choice).")] = None,
    allocator: Annotated[str, typer.Option(help="system, jemalloc or both (side by side): jemalloc keeps freed "
                                           "memory, which speeds up convolutional codecs on the CPU; needs "
                                           "libjemalloc2.")] = "system",
    skip_peers: Annotated[bool, typer.Option("--skip-peers", help="Measure only pyramid's own models.")] = False,
    skip_lm: Annotated[bool, typer.Option("--skip-lm", help="Do not measure generation.")] = False,
    lm: Annotated[str | None, typer.Option("--lm", help="LM to time: a folder, a bundled name or a preset (tiny, "
                                           "small, paper) (default: the default LM, else a random small).")] = None,
    lm_seconds: Annotated[float, typer.Option(help="Length of the generated piece in seconds.")] = 180.0,
    naive_tokens: Annotated[int, typer.Option(help="Tokens sampled naively (full prefix each; slow) from the "
                                              "middle of the piece.")] = 200,
    lm_dtype: Annotated[str, typer.Option(help="The LM's precision: auto (bfloat16 on a CUDA GPU that has it, "
                                          "else float32), float32, bfloat16 or float16.")] = "auto",
    lm_compile: Annotated[bool, typer.Option("--lm-compile", help="Also time generation with the compiled decode "
                                             "step (`pyramid generate --compile`), compilation included and "
                                             "warm.")] = False,
    chunk_seconds: Annotated[float, typer.Option(help="Chunk length of chunked encoding and decoding "
                                                 "(the peers run on chunks of the same length).")] = 10.0,
    memory_seconds: Annotated[str, typer.Option(help="Input lengths for the memory check: `pyramid encode` and "
                                                "`pyramid decode` run on a WAV of each length, and their peak "
                                                "memory is compared.")] = "10,3600",
    skip_memory: Annotated[bool, typer.Option("--skip-memory", help="Skip the memory check (it writes a WAV of "
                                              "the longest length to the temporary folder: 600 MB for an "
                                              "hour).")] = False,
    in_process: Annotated[bool, typer.Option("--in-process", help="Measure in this process instead of a fresh "
                                             "one per measurement (quicker; memory peaks not clean).")] = False,
    list_models: Annotated[bool, typer.Option("--list", help="List the models --models knows and exit.")] = False,
    json_output: JsonOption = False,
    markdown: Annotated[bool, typer.Option("--markdown", help="Print Markdown tables (for the README) on "
                                           "stdout.")] = False,
) -> None:
    """Measure encode/decode real-time factors, peak memory and tokens per second of audio for pyramid's
    codecs and the peers (DAC, SNAC, EnCodec with random weights, when installed), and LM generation
    speed against naive sampling, all in one run on the same input and threads.

    Example: pyramid bench --seconds 10 --models default,dac_44k --threads 2 --skip-lm
    """
    from pyramid_cli.bench import BenchSettings, run_bench
    from pyramid_cli.bench.report import to_markdown

    if list_models:
        _show_list(json_output)
        return
    if json_output and markdown:
        raise UsageError("--json and --markdown both write to stdout: choose one")
    settings = BenchSettings(
        seconds=_floats(seconds, "--seconds"),
        models=tuple(m.strip() for m in models.split(",") if m.strip()) if models else None,
        device=device, threads=threads, skip_peers=skip_peers, skip_lm=skip_lm, lm=lm, lm_seconds=lm_seconds,
        naive_tokens=naive_tokens, lm_dtype=lm_dtype.strip().lower(), lm_compile=lm_compile,
        allocator=allocator.strip().lower(), chunk_seconds=chunk_seconds,
        isolate=not in_process, memory_seconds=_floats(memory_seconds, "--memory-seconds"), skip_memory=skip_memory,
    )
    report = run_bench(settings, on_progress=lambda line: console.print(f"[dim]measuring {escape(line)}[/dim]"))
    _print_tables(report)
    for note in report.notes:
        console.print(f"[yellow]note:[/yellow] {escape(note)}", soft_wrap=True)
    for skipped in report.skipped:
        colour = "red" if skipped.status == "failed" else "yellow"
        console.print(f"[{colour}]{skipped.status}:[/{colour}] {escape(skipped.model)}: {escape(skipped.reason)}",
                      soft_wrap=True)
    if json_output:
        print_json(report.to_dict())
    elif markdown:
        sys.stdout.write(to_markdown(report))
        sys.stdout.flush()
    if report.failed:
        raise typer.Exit(code=1)


def _print_tables(report: BenchReport) -> None:
    """The machine line and the codec, LM and memory tables, on stderr."""
    from pyramid_cli.bench.report import (
        LM_COLUMNS,
        MEMORY_COLUMNS,
        codec_columns,
        codec_rows,
        lm_row,
        machine_line,
        memory_rows,
        memory_spread,
    )

    # In logs (stderr not a terminal) rich would squeeze the tables into 80 columns.
    tables = console if console.is_terminal else Console(stderr=True, highlight=False, width=160)
    console.print(f"[bold]{machine_line(report)}[/bold]", soft_wrap=True)
    if report.codecs:
        table = Table(title="codecs: RTF = seconds of audio per second (wall; CPU = process CPU time), "
                            "MB = peak RSS growth over the loaded model")
        for column in codec_columns(report):
            table.add_column(column, justify="left" if column in ("model", "weights", "allocator") else "right")
        for row in codec_rows(report):
            table.add_row(*(escape(cell) for cell in row))
        tables.print(table)
    lm_cells = lm_row(report)
    if lm_cells is not None:
        table = Table(title=f"generation: cached sampler vs naive full-prefix sampling "
                            f"({report.lm.naive_tokens if report.lm else 0} tokens)")
        for column in LM_COLUMNS:
            table.add_column(column, justify="left" if column in ("LM", "weights", "layout", "dtype") else "right")
        table.add_row(*(escape(cell) for cell in lm_cells))
        tables.print(table)
    if report.memory:
        table = Table(title="memory: pyramid encode / decode of a 44.1 kHz stereo WAV, whole-process peak RSS")
        for column in MEMORY_COLUMNS:
            table.add_column(column, justify="left" if column == "input" else "right")
        for row in memory_rows(report):
            table.add_row(*row)
        tables.print(table)
        spread = memory_spread(report)
        if spread:
            console.print(spread)
