"""Peak memory of ``pyramid encode`` and ``pyramid decode`` against the input's length (issue target:
flat, within 20%, from a 10 s to a 60-minute input).

Each length is a real file run through the real commands in fresh processes, so the figure is
the user's: a 44.1 kHz stereo 16-bit WAV (a CD rip), encoded with the default codec to ``.pyr``,
then decoded at all levels to a WAV. Each process's peak resident set comes from the kernel
(``os.wait4``'s rusage ``ru_maxrss``): the whole process, including Python, torch and the model.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from pyramid_cli.bench.codecs import bench_signal
from pyramid_cli.errors import PyramidError

FILE_RATE = 44100
FILE_CHANNELS = 2
BLOCK_SECONDS = 60.0


@dataclass(frozen=True)
class CommandRun:
    """One command on one file: wall time and the process's peak resident set."""

    wall_seconds: float
    peak_rss_mb: float

    def realtime_factor(self, audio_seconds: float) -> float:
        return audio_seconds / max(self.wall_seconds, 1e-9)


@dataclass(frozen=True)
class MemoryResult:
    """``pyramid encode`` then ``pyramid decode`` on one input length."""

    audio_seconds: float
    file_mb: float  # the input WAV's size on disk
    encode: CommandRun
    decode: CommandRun

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MemoryResult:
        return cls(data["audio_seconds"], data["file_mb"], CommandRun(**data["encode"]), CommandRun(**data["decode"]))


def write_bench_wav(path: Path, seconds: float) -> None:
    """A ``seconds``-long 44.1 kHz stereo 16-bit WAV of ``bench_signal`` music, written a minute at a time."""
    total = round(seconds * FILE_RATE)
    with sf.SoundFile(path, mode="w", samplerate=FILE_RATE, channels=FILE_CHANNELS, subtype="PCM_16") as out:
        for index, start in enumerate(range(0, total, round(BLOCK_SECONDS * FILE_RATE))):
            block = bench_signal(min(BLOCK_SECONDS, (total - start) / FILE_RATE), FILE_RATE, seed=index)
            out.write(np.repeat(block.T, FILE_CHANNELS, axis=1))


def _run(arguments: list[str], env: dict[str, str]) -> CommandRun:
    """Run ``python -m pyramid_cli ARGS``; its wall time and peak RSS. Raises PyramidError when it fails."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "pyramid_cli", *arguments], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert process.stderr is not None
    error = process.stderr.read()  # drained while it runs, so a full pipe cannot block the child
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if process.returncode != 0:
        lines = error.decode(errors="replace").strip().splitlines()
        raise PyramidError(f"pyramid {arguments[0]} failed ({process.returncode}): {lines[-1] if lines else ''}")
    return CommandRun(wall, usage.ru_maxrss / 1024)  # ru_maxrss is in KiB on Linux


def measure_memory(seconds: float, *, model: str | None = None, device: str = "cpu", threads: int | None = None,
                   env: dict[str, str] | None = None) -> MemoryResult:
    """Write a ``seconds``-long WAV, then time ``pyramid encode`` and ``pyramid decode`` on it, one process each."""
    env = dict(os.environ if env is None else env)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)  # torch's default intra-op thread count follows it
    options = ["--device", device, *(["--model", model] if model else [])]
    with tempfile.TemporaryDirectory(prefix="pyramid-bench-memory-") as folder:
        wav, pyr, out = Path(folder) / "input.wav", Path(folder) / "input.pyr", Path(folder) / "output.wav"
        write_bench_wav(wav, seconds)
        encode = _run(["encode", str(wav), "-o", str(pyr), *options], env)
        decode = _run(["decode", str(pyr), "-o", str(out), "--device", device,
                       *(["--model", model] if model else [])], env)
        return MemoryResult(seconds, wav.stat().st_size / 2**20, encode, decode)
