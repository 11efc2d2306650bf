"""``Result`` of an in-process ``pyramid`` run (the ``pyramid`` fixture of tests/cli/conftest.py)."""

from __future__ import annotations

import io
from dataclasses import dataclass


@dataclass
class Result:
    code: int
    stdout: bytes
    stderr: str

    @property
    def text(self) -> str:
        return self.stdout.decode()

    def one_line_error(self, text: str) -> bool:
        """The command failed with exactly one line on stderr, holding ``text``, and no traceback."""
        return self.stderr.strip().count("\n") == 0 and text in self.stderr and "Traceback" not in self.stderr


class _Terminal(io.BytesIO):
    def isatty(self) -> bool:
        return True
