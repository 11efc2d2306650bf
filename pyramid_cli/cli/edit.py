"""`pyramid strip | slice`: edit a `.pyr` without decoding it (fewer levels, a span of time).

Both read the tokens, cut them (``PyrFile.truncate_levels``, ``PyrFile.slice_seconds``) and write
a new `.pyr`; no model is loaded, so they take no time and need no codec (docs/pyr-format.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from pyramid_cli.cli._shared import (
    STDIO,
    ForceOption,
    JsonOption,
    check_output,
    console,
    is_stdio,
    print_json,
    stdout_is_piped,
    write_output,
)
from pyramid_cli.cli.codec import _read_pyr
from pyramid_cli.errors import UsageError

InputArgument = Annotated[str | None, typer.Argument(
    metavar="INPUT", help="A .pyr file; '-' (or nothing, with a .pyr piped in) reads stdin.", show_default=False)]


def _output(output: str | None, name: str, suffix: str) -> str:
    """The file to write: ``output``, else ``<stem><suffix>`` beside the input (stdout for stdin into a pipe)."""
    if output is not None:
        return output
    if name == "<stdin>":
        if not stdout_is_piped():
            raise UsageError("reading stdin: give -o OUT.pyr, or pipe stdout ('-o -')")
        return STDIO
    return str(Path(name).with_suffix(suffix))


def _write(pyr: Any, name: str, output: str, force: bool, json_output: bool, what: str) -> None:
    if not is_stdio(output) and Path(output).suffix.lower() != ".pyr":
        raise UsageError(f"-o {output}: token files end in .pyr")
    if json_output and is_stdio(output):
        raise UsageError("--json prints on stdout, which already carries the tokens; write them with -o FILE")
    check_output(output, force, () if name == "<stdin>" else (Path(name),))
    write_output(output, pyr.to_bytes(), force)
    offset = pyr.provenance.get("offset_samples", 0)
    if json_output:
        print_json({"ok": True, "input": name, "output": output, "levels": pyr.n_levels,
                    "seconds": pyr.duration_seconds, "offset_seconds": offset / pyr.sample_rate})
    else:
        console.print(f"{name} → {'stdout' if is_stdio(output) else output}: {what}", soft_wrap=True, markup=False)


def strip(
    source: InputArgument = None,
    levels: Annotated[int, typer.Option("--levels", min=1, help="Levels to keep, coarsest first.")] = 1,
    output: Annotated[str | None, typer.Option(
        "--output", "-o", help="The .pyr to write; '-' writes to stdout. Default: <stem>.l<K>.pyr beside the "
        "input.")] = None,
    force: ForceOption = False,
    json_output: JsonOption = False,
) -> None:
    """Keep only the coarsest levels of a .pyr (no decoding): a smaller file that decodes on its own.

    Example: pyramid strip song.pyr --levels 1      # → song.l1.pyr, the 10.8 tokens/s skeleton
    """
    pyr, name, _ = _read_pyr(source)
    try:
        stripped = pyr.truncate_levels(levels)
    except ValueError as error:
        raise UsageError(f"--levels {levels}: {error}") from None
    _write(stripped, name, _output(output, name, f".l{levels}.pyr"), force, json_output,
           f"{levels} of {pyr.n_levels} level{'s' * (pyr.n_levels > 1)} kept")


def slice_(
    source: InputArgument = None,
    start: Annotated[float, typer.Option("--start", min=0.0, help="Start of the span in seconds.")] = 0.0,
    end: Annotated[float | None, typer.Option("--end", help="End of the span in seconds (default: the end).")
                   ] = None,
    output: Annotated[str | None, typer.Option(
        "--output", "-o", help="The .pyr to write; '-' writes to stdout. Default: <stem>.<start>-<end>s.pyr "
        "beside the input.")] = None,
    force: ForceOption = False,
    json_output: JsonOption = False,
) -> None:
    """Keep a span of time of a .pyr (no decoding), widened outward to whole frames of every level.

    The new file records where it starts (provenance offset_samples), so continuing it keeps time.

    Example: pyramid slice song.pyr --start 30 --end 60      # → song.30-60s.pyr
    """
    pyr, name, _ = _read_pyr(source)
    try:
        sliced = pyr.slice_seconds(start, end)
    except ValueError as error:
        raise UsageError(f"--start {start:g} --end {end}: {error}") from None
    span = f"{start:g}-{'end' if end is None else f'{end:g}'}s"
    _write(sliced, name, _output(output, name, f".{span}.pyr"), force, json_output,
           f"{sliced.duration_seconds:.2f} s from {start:g} s")
