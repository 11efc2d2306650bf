"""The `pyramid` command line: one Typer app per command group, errors mapped to exit codes here."""

from __future__ import annotations

import os
import sys
from typing import Annotated

try:
    import click
    import typer
    from rich.markup import escape

    from pyramid_cli import __version__
    from pyramid_cli.cli import bench, codec, dataset, doctor, edit, evaluate, generate, models, train
    from pyramid_cli.cli._shared import console
    from pyramid_cli.errors import PyramidError
    from pyramid_cli.runtime.allocator import keep_freed_memory
except KeyboardInterrupt:
    # Ctrl-C while `pyramid` starts up (before main() can catch it) would print an import traceback.
    sys.stderr.write("interrupted: nothing was written\n")
    sys.exit(130)

app = typer.Typer(
    name="pyramid",
    help="Long-form music generation in the audio domain with PyramidCodec.\n\n"
    "Build a corpus from MIDI, encode audio into hierarchical tokens, decode at 1-3 levels, "
    "and generate pieces of minutes. Progress and logs go to stderr; stdout carries data only.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command("encode")(codec.encode)
app.command("decode")(codec.decode)
app.command("info")(codec.info)
app.command("strip")(edit.strip)
app.command("slice")(edit.slice_)
app.command("generate")(generate.generate)
app.add_typer(dataset.app, name="dataset")
app.add_typer(train.app, name="train")
app.add_typer(evaluate.app, name="eval")
app.command("plot")(evaluate.plot)
app.command("doctor")(doctor.doctor)
app.add_typer(models.app, name="models")
app.command("download")(models.download)
app.command("export")(models.export)
app.command("upload")(models.upload)
app.command("bench")(bench.bench)

_debug = {"enabled": bool(os.environ.get("PYRAMID_DEBUG"))}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"pyramid {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    if debug:
        _debug["enabled"] = True
    keep_freed_memory()  # the codecs' chunk-sized activations reuse memory instead of page-faulting it in


# Settings whose flag is not their name with dashes (``UsageError.option`` → flag).
_FLAGS = {"audio_format": "--format", "timeout_seconds": "--timeout", "memory_limit_mb": "--memory-limit"}


def error_message(error: PyramidError) -> str:
    """The one line a command prints for ``error``: the setting the library names by its Python name
    (``PyramidError.option``) is shown as the flag that sets it, in place at the start of the
    message, else after it."""
    text = str(error)
    if not error.option:
        return text
    flag = _FLAGS.get(error.option, "--" + error.option.replace("_", "-"))
    return flag + text[len(error.option):] if text.startswith(error.option) else f"{text} ({flag})"


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so that ``finally``/``except BaseException`` blocks
    (``fileio.atomic_write``) remove partial outputs; not an Exception, so nothing swallows it."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated()


def main(args: list[str] | None = None) -> None:
    """Entry point: run the app; a PyramidError becomes one line on stderr and its exit code."""
    import signal
    import threading

    from pyramid_cli.runtime.threads import choose_wait_policy

    choose_wait_policy(sys.argv[1:] if args is None else args)
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        # Non-standalone mode lets this function own every exit path (click would print
        # "Aborted!" on Ctrl-C and let library errors escape as tracebacks).
        code = app(args=args, prog_name="pyramid", standalone_mode=False)
    except typer.TyperException as error:  # usage errors: bad option values, missing arguments
        show = getattr(error, "show", None)
        if show is not None:
            show()
        else:
            console.print(f"[red]error:[/red] {error.format_message()}", soft_wrap=True)
        sys.exit(error.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        console.print("[yellow]interrupted[/yellow]: finished outputs are kept, partial ones removed")
        sys.exit(130)
    except _Terminated:
        console.print("[yellow]terminated[/yellow]: finished outputs are kept, partial ones removed")
        sys.exit(143)
    except click.exceptions.Exit as error:  # Typer turns Ctrl-C into Exit(130) before it reaches us
        if isinstance(error.__cause__, KeyboardInterrupt):
            console.print("[yellow]interrupted[/yellow]: finished outputs are kept, partial ones removed")
        sys.exit(error.exit_code)
    except PyramidError as error:
        if _debug["enabled"]:
            console.print_exception()
        console.print(f"[red]error:[/red] {escape(error_message(error))}", soft_wrap=True)
        sys.exit(error.exit_code)
    except Exception as error:  # a bug: still one line, unless --debug asks for the traceback
        if _debug["enabled"]:
            console.print_exception()
        console.print(f"[red]internal error:[/red] {type(error).__name__}: {escape(str(error))} "
                      "(rerun with --debug for details)", soft_wrap=True)
        sys.exit(1)
    if code == 130:  # Typer turned Ctrl-C into Exit(130), which click returns in non-standalone mode
        console.print("[yellow]interrupted[/yellow]: finished outputs are kept, partial ones removed")
    sys.exit(code if isinstance(code, int) else 0)
