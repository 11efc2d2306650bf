"""The command line's malloc setting: on for glibc, off when the user chose an allocator or its settings."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

CHECK = "from pyramid_cli.runtime.allocator import keep_freed_memory as k; print(k(), k())"


def _run(**env: str) -> str:
    clean = {key: value for key, value in os.environ.items()
             if key not in ("LD_PRELOAD", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")}
    return subprocess.run([sys.executable, "-c", CHECK], env={**clean, **env}, capture_output=True, text=True,
                          check=True).stdout.split()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting exists only in glibc")
def test_set_once_on_glibc() -> None:
    assert _run() == ["True", "True"]


def test_the_users_choice_wins() -> None:
    assert _run(MALLOC_TRIM_THRESHOLD_="0") == ["False", "False"]
    assert _run(LD_PRELOAD="libjemalloc.so.2-that-does-not-exist") == ["False", "False"]
