"""How a library error reaches the command line: one line, the setting shown as its flag."""

from __future__ import annotations

from pyramid_cli.cli import error_message
from pyramid_cli.errors import InputError, UsageError


def test_a_setting_at_the_start_becomes_its_flag() -> None:
    assert error_message(UsageError("num_samples must be at least 1, got 0", option="num_samples")) == \
        "--num-samples must be at least 1, got 0"
    assert error_message(UsageError("timeout_seconds must be positive", option="timeout_seconds")) == \
        "--timeout must be positive"


def test_a_setting_elsewhere_is_named_after_the_message() -> None:
    assert error_message(InputError("out already exists; replacing it must be forced", option="force")) == \
        "out already exists; replacing it must be forced (--force)"


def test_a_message_without_a_setting_is_unchanged() -> None:
    assert error_message(InputError("song.wav: no such file")) == "song.wav: no such file"
