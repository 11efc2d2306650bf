"""The in-process command line: ``pyramid ARGS`` through ``pyramid_cli.cli.main`` (the installed
command's own error mapping and exit codes) without a new process and its torch import per call."""

from __future__ import annotations

import io
import sys
from collections.abc import Callable

import pytest
from cli_runner import Result, _Terminal

from pyramid_cli.cli import main


@pytest.fixture
def pyramid(capsysbinary: pytest.CaptureFixture[bytes], monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    """Run ``pyramid ARGS`` in-process; stdin is a terminal unless bytes are given."""

    def run(*args: str, stdin: bytes | None = None) -> Result:
        stream = _Terminal() if stdin is None else io.BytesIO(stdin)
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(stream))
        with pytest.raises(SystemExit) as exit_info:
            main(list(args))
        out, err = capsysbinary.readouterr()
        return Result(int(exit_info.value.code or 0), out, err.decode())

    return run
