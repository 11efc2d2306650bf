"""What a benchmark ran on, and how much memory it took: machine facts, resident-set peaks, jemalloc.

Peak memory is the process's resident set (RSS), read from ``/proc/self/status``: ``tracemalloc``
sees only Python objects, not the tensors torch allocates in C++. The peak of one phase is measured
by resetting the kernel's high-water mark (``VmHWM``, reset by writing ``5`` to
``/proc/self/clear_refs``, Linux 4.0+) before it and reading it after; where that cannot be done the
lifetime peak of ``getrusage`` stands in, and the growth of a later phase is then overstated.
"""

from __future__ import annotations

import ctypes.util
import os
import platform
import resource
import sys
from dataclasses import dataclass
from pathlib import Path

JEMALLOC_ENV = "PYRAMID_JEMALLOC"  # an explicit path to libjemalloc.so.2
# Keep freed pages (no decay to the OS): a codec's audio-rate activations are freed and re-allocated at
# every layer and chunk; glibc returns them to the kernel and page-faults them back every time.
JEMALLOC_CONF = "background_thread:true,dirty_decay_ms:-1,muzzy_decay_ms:-1"
JEMALLOC_PATHS = (
    "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
    "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
    "/usr/lib64/libjemalloc.so.2",
    "/usr/lib/libjemalloc.so.2",
    "/usr/local/lib/libjemalloc.so.2",
)
JEMALLOC_HINT = ("install it with `apt-get install libjemalloc2` (Debian/Ubuntu) or set "
                 "PYRAMID_JEMALLOC=/path/to/libjemalloc.so.2")
_MB = 2**20


# ---- the allocator ---------------------------------------------------------------------------------


def find_jemalloc() -> Path | None:
    """The jemalloc shared library to preload: ``$PYRAMID_JEMALLOC``, the usual places, then the linker's cache."""
    explicit = os.environ.get(JEMALLOC_ENV)
    if explicit:
        return Path(explicit) if Path(explicit).is_file() else None
    for candidate in JEMALLOC_PATHS:
        if Path(candidate).is_file():
            return Path(candidate)
    found = ctypes.util.find_library("jemalloc")
    if found and Path(found).is_absolute() and Path(found).is_file():
        return Path(found)
    return None


def jemalloc_environment(library: Path) -> dict[str, str]:
    """Environment variables that make a child process allocate with ``library`` (Linux ``LD_PRELOAD``)."""
    preload = " ".join(part for part in (str(library), os.environ.get("LD_PRELOAD", "")) if part)
    return {"LD_PRELOAD": preload, "MALLOC_CONF": JEMALLOC_CONF}


def jemalloc_loaded() -> bool:
    """True when this process has jemalloc mapped (it was preloaded, or something linked it)."""
    try:
        return "libjemalloc" in Path("/proc/self/maps").read_text()
    except OSError:
        return False


# ---- resident memory ------------------------------------------------------------------------------------


def _status_mb(field: str) -> float | None:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM) in MiB; None off Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024 / _MB
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_mb() -> float | None:
    """The resident set of this process now, in MiB (None where /proc is missing)."""
    return _status_mb("VmRSS")


def _lifetime_peak_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / _MB if sys.platform == "darwin" else peak * 1024 / _MB  # bytes on macOS, kB elsewhere


def reset_peak() -> bool:
    """Reset the kernel's RSS high-water mark of this process; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """The peak resident set of one phase, and its growth over a baseline (by default the resident set
    when the phase started).

    Call ``start()`` before the phase and ``stop()`` after it; ``stop`` returns
    ``(peak MiB, growth MiB)``, either None where it cannot be read.
    """

    def __init__(self, baseline_mb: float | None = None) -> None:
        self._baseline = baseline_mb
        self._reset = False

    def start(self) -> None:
        if self._baseline is None:
            self._baseline = rss_mb()
        self._reset = reset_peak()

    def stop(self) -> tuple[float | None, float | None]:
        peak = _status_mb("VmHWM") if self._reset else None
        if peak is None:
            peak = _lifetime_peak_mb()
        growth = None if self._baseline is None else max(0.0, peak - self._baseline)
        return peak, growth


# ---- the machine -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MachineInfo:
    """Where a benchmark ran (recorded beside every figure)."""

    cpu_model: str
    cpu_features: str  # the vector extensions torch's CPU kernels use, when present
    logical_cores: int
    usable_cores: int
    torch_threads: int
    torch_version: str
    device: str
    device_name: str
    python_version: str
    platform: str
    load_average: tuple[float, float, float] | None
    pyramid_version: str
    jemalloc: str | None  # the library found (whether or not it was used)


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "cpu model") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


_FEATURES = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile", "amx_bf16", "asimd", "sve")


def cpu_features() -> str:
    """The vector extensions among ``_FEATURES`` that /proc/cpuinfo lists ("" elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "Features"):
                present = set(value.split())
                return " ".join(f for f in _FEATURES if f in present)
    except OSError:
        pass
    return ""


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask; what a container allows)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def machine_info(device: str) -> MachineInfo:
    """Facts about this machine and torch; ``device`` is a resolved device name (``cpu``, ``cuda:0``)."""
    import torch

    import pyramid_cli

    if device.startswith("cuda"):
        device_name = torch.cuda.get_device_name(torch.device(device))
    elif device == "mps":
        device_name = "Apple MPS"
    else:
        device_name = cpu_model()
    try:
        load = os.getloadavg()
        load_average: tuple[float, float, float] | None = (round(load[0], 2), round(load[1], 2), round(load[2], 2))
    except OSError:
        load_average = None
    library = find_jemalloc()
    return MachineInfo(
        cpu_model=cpu_model(),
        cpu_features=cpu_features(),
        logical_cores=os.cpu_count() or 1,
        usable_cores=usable_cores(),
        torch_threads=torch.get_num_threads(),
        torch_version=torch.__version__,
        device=device,
        device_name=device_name,
        python_version=platform.python_version(),
        platform=platform.platform(terse=True),
        load_average=load_average,
        pyramid_version=pyramid_cli.__version__,
        jemalloc=str(library) if library else None,
    )
