"""What every command shares: the stderr console, progress bars, option types, JSON output."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from pyramid_cli.errors import InputError
from pyramid_cli.runtime.fileio import write_bytes_atomic

# stdout carries data only (audio, tokens, --json); everything for people goes to stderr.
console = Console(stderr=True, highlight=False)

JsonOption = Annotated[bool, typer.Option("--json", help="Print a machine-readable JSON summary on stdout.")]


def make_progress(*extra_columns: Any) -> Progress:
    """A progress display on stderr; silent when stderr is not a terminal (logs, CI)."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), *extra_columns,
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
        console=console, disable=not console.is_terminal, transient=False,
    )


def print_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def format_hours(hours: float) -> str:
    return f"{hours:.2f} h" if hours >= 1 else f"{hours * 60:.1f} min"


# ---- options shared by the commands that run a model ------------------------------------------

DeviceOption = Annotated[str, typer.Option(
    "--device", help="Where to run: auto (CUDA, then Apple MPS, then CPU), cpu, cuda, cuda:N or mps.")]
ForceOption = Annotated[bool, typer.Option("--force", "-f", help="Overwrite output files that already exist.")]
ThreadsOption = Annotated[int | None, typer.Option(
    "--threads", min=1, help="CPU threads for torch [default: one per core for the codec; one for sampling "
    "tokens, which is fastest idle and keeps its speed when other processes are busy].")]


def apply_threads(threads: int | None) -> None:
    """Set torch's CPU threads for this command when ``--threads`` was given."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)

# ---- "-" names stdin/stdout; outputs are checked first and written atomically -------------------

STDIO = "-"


def is_stdio(name: str | Path | None) -> bool:
    return name is not None and str(name) == STDIO


def stdin_is_piped() -> bool:
    """True when stdin is a pipe or a file rather than a terminal (or absent)."""
    return sys.stdin is not None and not sys.stdin.isatty()


def stdout_is_piped() -> bool:
    return sys.stdout is not None and not sys.stdout.isatty()


def read_stdin_bytes() -> bytes:
    """All of stdin as bytes (tokens and whole audio files are buffered; UX §2)."""
    stream = getattr(sys.stdin, "buffer", sys.stdin)
    data = stream.read()
    return data.encode() if isinstance(data, str) else data


def check_output(path: str | Path, force: bool, inputs: tuple[Path, ...] = ()) -> None:
    """Refuse to overwrite an existing file without --force, a folder, or one of the inputs.

    Raises:
        InputError: with a one-line reason (exit code 1).
    """
    if is_stdio(path):
        return
    target = Path(path)
    if target.is_dir():
        raise InputError(f"{target}: is a folder; give a file name for the output")
    if any(target.resolve() == Path(source).resolve() for source in inputs):
        raise InputError(f"{target}: the output would overwrite its own input")
    if target.exists() and not force:
        raise InputError(f"{target} already exists; pass --force to overwrite it")


def _write_all(stream: Any, data: bytes) -> None:
    """Write all of ``data`` to a binary stream, however many calls it takes.

    With ``PYTHONUNBUFFERED=1`` or ``python -u``, ``sys.stdout.buffer`` is a raw ``FileIO`` whose
    ``write`` may write only part of the data and return the count: when the reader of a pipe exits
    (`| head -c 100`) the kernel returns the bytes the pipe took instead of an error. Only the next
    write fails with ``BrokenPipeError``, so without this loop the loss went unnoticed (exit 0).
    """
    view = memoryview(data)
    while view:
        written = stream.write(view)
        if written is None:  # a non-blocking stream that would block: wait until it can take more
            import select

            select.select([], [stream], [])
            continue
        if written <= 0:  # no progress and no error: give up rather than spin
            raise BrokenPipeError("stdout accepted no more data")
        view = view[written:]


def write_output(path: str | Path, data: bytes, force: bool = True) -> None:
    """Write ``data`` to stdout for "-", else atomically (temporary file + rename) to ``path``.

    Without ``force`` the file is created exclusively: if another process wrote ``path`` after
    ``check_output`` ran, this write fails instead of replacing it.
    """
    if is_stdio(path):
        stream = getattr(sys.stdout, "buffer", None)
        if stream is None:
            raise InputError("stdout does not accept binary data")
        try:
            _write_all(stream, data)
            stream.flush()
        except OSError as error:
            # The reader went away (`| head -c 100`) or the disk behind `> file` is full: say the output
            # is incomplete, and point stdout at /dev/null so that Python's own flush at exit does not
            # fail again (a second message and exit code 120).
            with contextlib.suppress(OSError, ValueError, AttributeError):  # stdout may have no descriptor
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            if isinstance(error, BrokenPipeError):
                raise InputError("stdout was closed before all the data was written; "
                                 "the output is incomplete") from None
            raise InputError(f"stdout: cannot write ({error.strerror or error}); the output is incomplete") from None
        return
    try:
        write_bytes_atomic(path, data, exclusive=not force)
    except FileExistsError:
        raise InputError(f"{path} already exists (written meanwhile by another process); "
                         "pass --force to overwrite it") from None
    except OSError as error:
        raise InputError(f"{path}: cannot write ({error.strerror or error})") from None
