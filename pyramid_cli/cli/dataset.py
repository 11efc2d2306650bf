"""`pyramid dataset build | info | merge | tokenize | merge-tokens`: MIDI to audio corpora to token shards."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import TextColumn
from rich.table import Table

from pyramid_cli.cli._shared import DeviceOption, JsonOption, console, format_hours, make_progress, print_json
from pyramid_cli.errors import UsageError
from pyramid_cli.hub.registry import DEFAULT_CODEC
from pyramid_cli.runtime.locking import folder_lock

app = typer.Typer(help="Build and inspect training corpora rendered from MIDI.", no_args_is_help=True)


@app.command()
def build(
    out: Annotated[Path, typer.Option("--out", "-o", help="Corpus folder to create or resume.")],
    midi_dir: Annotated[Path | None, typer.Option(
        help="Folder searched recursively for .mid/.midi files (the Lakh MIDI layout works as is).")] = None,
    procedural: Annotated[int, typer.Option(
        help="Also compose this many pieces with the built-in procedural composer (offline source).")] = 0,
    procedural_seconds: Annotated[float, typer.Option(help="Approximate length of each procedural piece.")] = 30.0,
    seed: Annotated[int, typer.Option(help="Seed of the first procedural piece (the next use seed+1, ...).")] = 0,
    split: Annotated[str, typer.Option(help="train:valid:test weights; the split is a stable hash.")] = "8:1:1",
    groups_csv: Annotated[Path | None, typer.Option(
        help="CSV mapping MIDI file names to song groups, so that arrangements of one song never "
        "straddle splits (e.g. dev_manifest.csv).")] = None,
    group_column: Annotated[str, typer.Option(help="Song-group column of --groups-csv.")] = "song_group",
    file_column: Annotated[str, typer.Option(help="File-name column of --groups-csv.")] = "file",
    shard: Annotated[str, typer.Option(
        help="Build only shard i of n (e.g. 0/4) for multi-machine builds; combine with `dataset merge`.")] = "0/1",
    workers: Annotated[int | None, typer.Option(help="Parallel render processes [default: all cores].")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds allowed per file before it is recorded as failed.")] = 120.0,
    memory_limit: Annotated[int, typer.Option(help="Memory cap per worker, MB.")] = 4096,
    max_seconds: Annotated[float | None, typer.Option(help="Cut renders at this length (seconds).")] = None,
    audio_format: Annotated[str, typer.Option("--format", help="Audio file format: flac or wav.")] = "flac",
    sample_rate: Annotated[int, typer.Option(help="Render sample rate (Hz).")] = 22050,
    soundfont: Annotated[Path | None, typer.Option(
        help="SF2 sound font [default: TimGM6mb.sf2 shipped with pretty_midi].")] = None,
    limit: Annotated[int | None, typer.Option(help="Use only the first N MIDI files (sorted by path).")] = None,
    retry_failed: Annotated[bool, typer.Option(help="Retry files that failed in an earlier run.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Render MIDI files (and/or procedural pieces) into a 22,050 Hz mono audio corpus.

    Tracks are merged into six instrument groups (lead, piano, guitar, strings, bass, drums) and
    rendered with FluidSynth. Output: OUT/audio/<split>/<id>.flac, OUT/manifest.jsonl and
    OUT/failures.jsonl. Rerunning the same command resumes; bad files are listed, not fatal.

    Examples:

      pyramid dataset build --midi-dir lmd_full/ --out corpus

      pyramid dataset build --procedural 50 --out corpus --workers 2
    """
    from pyramid_cli.data.build import BuildOptions, ItemResult, build_corpus, default_workers
    from pyramid_cli.data.render import default_soundfont
    from pyramid_cli.data.sources import (
        midi_sources,
        parse_shard,
        parse_split,
        procedural_sources,
        read_song_groups,
    )

    if midi_dir is None and procedural == 0:
        raise UsageError("nothing to build: give --midi-dir DIR and/or --procedural N")
    if procedural < 0 or (limit is not None and limit < 0):
        raise UsageError("--procedural and --limit must not be negative")
    song_groups = read_song_groups(groups_csv, file_column, group_column) if groups_csv else None
    sources = midi_sources(midi_dir, song_groups) if midi_dir else []
    if midi_dir and not sources:
        raise UsageError(f"{midi_dir}: no .mid or .midi files found")
    sources = sources[:limit] if limit is not None else sources
    sources += procedural_sources(procedural, seed)
    options = BuildOptions(
        out_dir=out, soundfont=soundfont or default_soundfont(), sample_rate=sample_rate,
        audio_format=audio_format, split_weights=parse_split(split), shard=parse_shard(shard),
        workers=default_workers() if workers is None else workers, timeout_seconds=timeout,
        memory_limit_mb=memory_limit, max_seconds=max_seconds,
        procedural_seconds=procedural_seconds, retry_failed=retry_failed,
    )
    if not options.soundfont.is_file():
        raise UsageError(f"--soundfont {options.soundfont}: no such file")

    totals = {"hours": 0.0, "failed": 0}
    with folder_lock(out, "corpus folder"), \
            make_progress(TextColumn("{task.fields[audio]} audio, {task.fields[failed]} failed")) as progress:
        task = progress.add_task("rendering", total=None, audio=format_hours(0), failed=0)

        def on_start(total: int) -> None:
            progress.update(task, total=total)

        def on_result(result: ItemResult) -> None:
            if result.status == "rendered" and result.record:
                totals["hours"] += result.record["duration"] / 3600
            elif result.status == "failed":
                totals["failed"] += 1
                progress.console.print(f"[yellow]skipped[/yellow] {result.source.label}: {result.error}")
            progress.update(task, advance=1, audio=format_hours(totals["hours"]), failed=totals["failed"])

        summary = build_corpus(sources, options, on_result=on_result, on_start=on_start)

    nothing_built = summary.failed > 0 and summary.rendered == 0 and summary.skipped == 0
    if json_output:
        print_json({"out": str(out), **summary.to_dict()})
        if nothing_built:
            raise typer.Exit(1)
        return
    table = Table(title=f"dataset build → {out}", show_header=False)
    rate = summary.rendered_seconds / summary.wall_seconds if summary.wall_seconds else 0.0
    for name, value in (("sources (this shard)", summary.total), ("rendered now", summary.rendered),
                        ("already done", summary.skipped), ("failed", summary.failed),
                        ("audio rendered", format_hours(summary.rendered_seconds / 3600)),
                        ("wall time", f"{summary.wall_seconds:.1f} s"),
                        ("throughput", f"{rate:.1f} s of audio per s ({options.workers} workers)")):
        table.add_row(name, str(value))
    console.print(table)
    if summary.failed:
        console.print(f"failures and reasons: {out / 'failures.jsonl'}")
    if nothing_built:
        console.print(f"[red]error:[/red] nothing was built: all {summary.failed} sources failed", soft_wrap=True)
        raise typer.Exit(1)


@app.command()
def info(
    corpus: Annotated[Path, typer.Argument(
        help="A corpus folder made by `pyramid dataset build`, or a token folder made by `dataset tokenize`.")],
    json_output: JsonOption = False,
) -> None:
    """Files and hours per split and per instrument group; for a token folder, how much of each
    codebook every split uses (codes used, perplexity).

    Examples:

      pyramid dataset info corpus

      pyramid dataset info tokens
    """
    from pyramid_cli.data.corpus import corpus_stats
    from pyramid_cli.data.tokens import META_NAME

    if (corpus / META_NAME).is_file():
        _token_info(corpus, json_output)
        return
    stats = corpus_stats(corpus)
    if json_output:
        print_json(stats)
        return
    table = Table(title=f"{corpus}: {stats['files']} files, {format_hours(stats['hours'])}")
    table.add_column("split / group")
    table.add_column("files", justify="right")
    table.add_column("audio", justify="right")
    for split, entry in stats["splits"].items():
        table.add_row(split, str(entry["files"]), format_hours(entry["hours"]))
    table.add_section()
    for group, entry in sorted(stats["groups"].items(), key=lambda item: -item[1]["hours"]):
        table.add_row(group, str(entry["files"]), format_hours(entry["hours"]))
    console.print(table)
    console.print(f"failed sources: {stats['failures']}   sample rate: {stats['sample_rates']}")


def _token_info(folder: Path, json_output: bool) -> None:
    from pyramid_cli.data.tokens import TokenSet, token_stats

    stats = token_stats(TokenSet.open(folder))
    if json_output:
        print_json(stats)
        return
    table = Table(title=f"{folder}: tokens of {stats['codec']}, {stats['codebook_size']} codes per codebook")
    for column in ("split", "items", "audio", "level", "frames", "codes used", "perplexity"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for split, entry in stats["splits"].items():
        for level in entry["levels"]:
            for book in level["codebooks"]:
                first = level["level"] == 0 and book is level["codebooks"][0]
                table.add_row(split if first else "", str(entry["items"]) if first else "",
                              format_hours(entry["hours"]) if first else "", str(level["level"]),
                              f"{level['frames']:,}", f"{book['used']} ({100 * book['used'] / book['size']:.0f}%)",
                              f"{book['perplexity']:.0f}")
        table.add_section()
    console.print(table)


@app.command()
def merge(
    out: Annotated[Path, typer.Argument(help="Corpus folder that receives the merged manifest.")],
    inputs: Annotated[list[Path] | None, typer.Argument(help="Other shard folders to merge in.")] = None,
    json_output: JsonOption = False,
) -> None:
    """Combine shards built with --shard i/n (in OUT and/or other folders) into one corpus.

    Example: pyramid dataset merge corpus shard1/ shard2/
    """
    from pyramid_cli.data.corpus import merge_corpora

    result = merge_corpora(out, list(inputs or []))
    if json_output:
        print_json(result)
    else:
        console.print(f"merged {result['files']} files from {result['inputs']} folder(s) into {out / 'manifest.jsonl'}"
                      f" ({result['failures']} failed sources)")


@app.command()
def tokenize(
    corpus: Annotated[Path, typer.Argument(
        help="A corpus folder made by `pyramid dataset build` (manifest.jsonl + audio).", show_default=False)],
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Token folder to create, or to resume: a rerun skips the items already encoded.",
        show_default=False)],
    model: Annotated[str, typer.Option(
        "--model", help="Codec: a bundled model name or a folder with config.json + model.safetensors. "
        "The tokens are exactly those `pyramid encode` writes with it.")] = DEFAULT_CODEC,
    splits: Annotated[str | None, typer.Option(
        help="Comma-separated splits to encode, e.g. train,valid (default: every split of the corpus).",
        show_default=False)] = None,
    device: DeviceOption = "auto",
    threads: Annotated[int | None, typer.Option(
        min=1, help="CPU threads for torch (default: torch's choice); fewer leave cores to other jobs.")] = None,
    chunk_seconds: Annotated[float, typer.Option(
        "--chunk-seconds", min=0.1, help="Audio encoded per step; bounds the memory on long songs. "
        "The tokens do not depend on it.")] = 30.0,
    shard: Annotated[str, typer.Option(
        help="Encode only shard i of n (e.g. 0/4) of each split, balanced by duration, into its own --out; "
        "combine the parts with `dataset merge-tokens`.")] = "0/1",
    json_output: JsonOption = False,
) -> None:
    """Encode a corpus into token shards for LM training: one uint16 file per split and level.

    Output: OUT/tokens.json (codec identity, frame rates), OUT/<split>/level<i>.u16 (memory-mappable
    codes) and OUT/<split>/index.jsonl (one line per song); the layout is documented in
    pyramid_cli/data/tokens.py. Rerunning the same command resumes; unreadable songs are listed and
    skipped, not fatal. A folder made with another codec is refused.

    Examples:

      pyramid dataset tokenize corpus --out tokens

      pyramid dataset tokenize corpus --out tokens --model runs/p111/export --splits train,valid --device cuda

      pyramid dataset tokenize corpus --out tokens.0 --shard 0/2   (and --out tokens.1 --shard 1/2 elsewhere)
    """
    from pyramid_cli.codec.api import load_codec
    from pyramid_cli.data.manifest import load_manifest
    from pyramid_cli.data.sources import parse_shard
    from pyramid_cli.data.tokenize import ItemReport, tokenize_corpus

    shard_spec = parse_shard(shard)
    chosen = [s.strip() for s in splits.split(",") if s.strip()] if splits is not None else None
    if chosen is not None and not chosen:
        raise UsageError("--splits names no split; e.g. --splits train,valid")
    load_manifest(corpus)  # a wrong corpus fails here, before a model is loaded
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    codec = load_codec(model, device)

    totals = {"seconds": 0.0, "failed": 0}
    with folder_lock(out, "token folder"), \
            make_progress(TextColumn("{task.fields[audio]} audio, {task.fields[failed]} failed")) as progress:
        task = progress.add_task("tokenizing", total=None, audio=format_hours(0), failed=0)

        def on_item(report: ItemReport) -> None:
            totals["seconds"] += report.seconds
            if report.status == "failed":
                totals["failed"] += 1
                progress.console.print(f"[yellow]skipped[/yellow] {escape(report.split)}/{escape(report.id)}: "
                                       f"{escape(report.error or '')}", soft_wrap=True)
            progress.update(task, completed=report.done, total=report.total, description=f"tokenizing {report.split}",
                            audio=format_hours(totals["seconds"] / 3600), failed=totals["failed"])

        summary = tokenize_corpus(corpus, codec, out, splits=chosen, chunk_seconds=chunk_seconds, on_item=on_item,
                                  shard=shard_spec)

    if json_output:
        print_json(summary.to_dict())
        return
    table = Table(title=f"dataset tokenize → {out}", show_header=False)
    rate = summary.encoded_seconds / summary.wall_seconds if summary.wall_seconds else 0.0
    rows = [("codec", f"{codec.name} ({codec.hash})"), ("shard", f"{shard_spec[0]}/{shard_spec[1]}"),
            ("encoded now", summary.encoded),
            ("already done", summary.skipped), ("failed", summary.failed),
            ("audio encoded", format_hours(summary.encoded_seconds / 3600)),
            ("wall time", f"{summary.wall_seconds:.1f} s"), ("speed", f"{rate:.1f} s of audio per s")]
    rows += [(f"{split} (items, frames per level)", f"{summary.items[split]}, {summary.frames[split]}")
             for split in summary.items]
    for name, value in rows:
        table.add_row(name, str(value))
    console.print(table)


@app.command("merge-tokens")
def merge_tokens(
    out: Annotated[Path, typer.Argument(
        help="Token folder to create, or an existing one to add the parts' missing items to.", show_default=False)],
    parts: Annotated[list[Path], typer.Argument(
        help="Token folders to merge in, e.g. made by `dataset tokenize --shard i/n`.", show_default=False)],
    json_output: JsonOption = False,
) -> None:
    """Combine token folders (shards made with `tokenize --shard i/n`) into one.

    All parts must come from one codec (same tokens.json but for 'corpus'). Per split, items that OUT
    lacks are appended sorted by id (items already present are skipped); a merge into a new OUT equals
    an unsharded `dataset tokenize`. An interrupted merge is finished by rerunning it.

    Example: pyramid dataset merge-tokens tokens tokens.0 tokens.1
    """
    from pyramid_cli.data.tokenize import merge_token_sets

    summary = merge_token_sets(out, parts)
    if json_output:
        print_json(summary.to_dict())
        return
    console.print(f"merged {summary.merged} items from {summary.parts} part(s) into {escape(str(out))} "
                  f"({summary.skipped} already present); items per split: {summary.items}")
