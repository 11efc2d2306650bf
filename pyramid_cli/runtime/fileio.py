"""Atomic file writes (an interrupted run never leaves a half-written output behind) and the one
strict reader of JSON objects (configs, checksums, training state)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from pyramid_cli.errors import FormatError, InputError, PyramidError


@contextlib.contextmanager
def atomic_write(path: str | Path, *, exclusive: bool = False) -> Iterator[BinaryIO]:
    """Open a temporary file beside `path`; rename it over `path` only if the block succeeds.

    The temporary file lives in the same directory so that `os.replace` is an atomic rename
    on the same file system. On any exception (KeyboardInterrupt included) it is removed.

    Args:
        exclusive: never replace an existing `path` (the commands' default without ``--force``):
            the finished file is hard-linked into place, which fails if `path` appeared meanwhile,
            so of two writers racing for one name exactly one wins.

    Raises:
        FileExistsError: `exclusive` and `path` exists when the write finishes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    # The PID in the name tells a later run whether the writer is still alive (see below).
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600 files; give the output the mode a plain open() would (umask applied).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if exclusive:
            _link_exclusive(tmp_name, path)
        else:
            os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Remove the temporary files of ``path`` left by writers that died (SIGKILL, power loss).

    A temporary file is ``.NAME.PID.RANDOM.tmp``; it is stale when no process PID exists. Files of
    a live writer (a concurrent run) are left alone. Returns the files removed.
    """
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{glob_escape(path.name)}.*.tmp"):
        pid_text = tmp.name[len(path.name) + 2:].split(".", 1)[0]
        if not pid_text.isdigit() or _alive(int(pid_text)):
            continue
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            removed.append(tmp)
    return removed


def glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _link_exclusive(tmp_name: str, path: Path) -> None:
    """Move the finished temporary file to `path` unless `path` exists (atomically where links work)."""
    try:
        os.link(tmp_name, path)  # fails with FileExistsError when another writer got there first
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: claim the name, then replace it
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        os.close(fd)
        os.replace(tmp_name, path)
        return
    os.unlink(tmp_name)


def write_bytes_atomic(path: str | Path, data: bytes, *, exclusive: bool = False) -> None:
    with atomic_write(path, exclusive=exclusive) as handle:
        handle.write(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def read_json_object(path: str | Path, what: str, error: type[PyramidError] = FormatError) -> dict[str, Any]:
    """The JSON object in ``path`` (only JSON is ever parsed).

    Args:
        what: what the file is, for messages ("model config": "unreadable model config (...)").
        error: the error type for a file that is unreadable, not JSON or not an object.

    Raises:
        InputError: no such file. ``error``: anything else wrong with it.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise error(f"{path}: unreadable {what} ({reason})") from None
    if not isinstance(data, dict):
        raise error(f"{path}: a {what} must be a JSON object")
    return data
