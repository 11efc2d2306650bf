"""One writer per output folder: an advisory lock file that names the process holding it.

``dataset build``, ``dataset tokenize`` and ``train`` write into one folder for a long time; a
second run into the same folder would interleave manifests, token shards or checkpoints. The lock
is ``fcntl.flock`` on ``<folder>/.pyramid.lock``: the kernel releases it when the holder exits,
SIGKILL included, so a stale file never blocks the next run (the file itself is left in place).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from pyramid_cli.errors import InputError

LOCK_NAME = ".pyramid.lock"


class LockedError(InputError):
    """Another process is writing into the folder (exit code 1)."""


@contextlib.contextmanager
def folder_lock(folder: str | Path, what: str = "folder") -> Iterator[Path]:
    """Hold the writer's lock on ``folder`` (created if missing) for the duration of the block.

    Args:
        what: how the message calls the folder ("corpus folder", "run folder").

    Raises:
        LockedError: another process holds it; the message names its PID.
        InputError: the folder cannot be created or the lock file written.
    """
    folder = Path(folder)
    path = folder / LOCK_NAME
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise InputError(f"{folder}: cannot write the {what} ({error.strerror or error})") from None
    try:
        if not _try_lock(fd):
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            raise LockedError(f"{folder}: another pyramid process (PID {holder}) is writing this {what}; "
                              "wait for it to finish or stop it, then rerun")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield folder
    finally:
        os.close(fd)  # closing releases the lock


def _try_lock(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here; a single writer is the user's business
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
