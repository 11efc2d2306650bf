"""`pyramid doctor`: check the things a first run trips over, before a long job does."""

from __future__ import annotations

import platform
import shutil
from pathlib import Path

import typer
from rich.table import Table

from pyramid_cli import __version__
from pyramid_cli.cli._shared import JsonOption, console, print_json


def _checks() -> list[tuple[str, bool, str]]:
    import soundfile

    from pyramid_cli.data.midi_libs import load_fluidsynth
    from pyramid_cli.data.render import default_soundfont
    from pyramid_cli.errors import DependencyError

    results: list[tuple[str, bool, str]] = [("python", True, platform.python_version()),
                                            ("pyramid", True, __version__)]
    try:
        fluidsynth = load_fluidsynth()
        results.append(("fluidsynth", True, f"pyfluidsynth {getattr(fluidsynth, '__version__', '')}".strip()))
    except DependencyError as error:
        results.append(("fluidsynth", False, str(error)))
    font = default_soundfont()
    results.append(("sound font", font.is_file(), str(font) if font.is_file() else f"missing: {font}"))
    formats = soundfile.available_formats()
    results.append(("audio formats", "FLAC" in formats, ", ".join(sorted(f for f in formats if f in
                                                                       {"WAV", "FLAC", "OGG", "MP3"}))))
    free = shutil.disk_usage(Path.cwd()).free / 2**30
    results.append(("free disk", free > 1.0, f"{free:.1f} GiB in {Path.cwd()}"))
    return results


def doctor(json_output: JsonOption = False) -> None:
    """Check FluidSynth, the sound font, audio formats and disk space; exit 1 if something is missing."""
    results = _checks()
    if json_output:
        print_json({name: {"ok": ok, "detail": detail} for name, ok, detail in results})
    else:
        table = Table(title="pyramid doctor")
        for column in ("check", "status", "detail"):
            table.add_column(column)
        for name, ok, detail in results:
            table.add_row(name, "[green]ok[/green]" if ok else "[red]missing[/red]", detail)
        console.print(table)
    if not all(ok for _, ok, _ in results):
        raise typer.Exit(code=1)
