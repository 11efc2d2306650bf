"""Errors the library raises. The CLI turns each into a one-line message and an exit code."""


class PyramidError(Exception):
    """Base class: an expected failure with a message fit for a user (exit code 1).

    ``option`` names, by its Python name (``"num_samples"``), the setting the message is about, so
    that the library's messages name no command-line flags: the CLI shows a message that starts
    with it as starting with its flag (``--num-samples``), and names the flag after any other
    (``pyramid_cli.cli.error_message``).
    """

    exit_code = 1

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


class InputError(PyramidError):
    """A missing, unreadable or unsuitable input file (silent, too short, wrong format)."""


class FormatError(PyramidError):
    """A file that claims a pyramid format but is corrupt, truncated or of another version."""


class CodecMismatchError(PyramidError):
    """Tokens made by one codec handed to another."""


class UsageError(PyramidError):
    """Settings that cannot work (exit code 2, like a command-line parse error)."""

    exit_code = 2


class DependencyError(PyramidError):
    """A system library or file the operation needs is missing (e.g. libfluidsynth)."""


class ResourceError(PyramidError):
    """The environment failed the operation (a full disk, an unreadable file it needs, a limit):
    no fault of the input, so batch commands stop instead of recording it against the input."""
