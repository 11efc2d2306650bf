"""``pyramid bench`` as a library call: every model on every input length, then the LM, in one run.

Each measurement runs in a fresh Python process (``worker``) unless ``isolate`` is off, so memory
peaks are clean and the allocator can be chosen per measurement (jemalloc is preloaded with
``LD_PRELOAD``; the system allocator runs with any inherited jemalloc preload removed). All
measurements share the device, the thread count and the input definition.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pyramid_cli.bench.codecs import DEFAULT_KEY, CodecResult
from pyramid_cli.bench.lm import LMResult
from pyramid_cli.bench.machine import JEMALLOC_HINT, MachineInfo, find_jemalloc, jemalloc_environment, machine_info
from pyramid_cli.bench.memory import MemoryResult, measure_memory
from pyramid_cli.bench.peers import PEERS, peer_available
from pyramid_cli.codec.inference import DEFAULT_CHUNK_SECONDS
from pyramid_cli.errors import PyramidError, UsageError

OWN_MODELS = (DEFAULT_KEY, "p111", "dac_n2")  # pyramid's bundled codec, the paper's p111, the DAC-n2 baseline
ALLOCATORS = ("system", "jemalloc", "both")
Progress = Callable[[str], None]


def model_keys() -> dict[str, str]:
    """Every name ``--models`` knows, with what it measures."""
    from pyramid_cli.codec.config import PRESETS
    from pyramid_cli.hub.registry import DEFAULT_CODEC

    keys = {DEFAULT_KEY: f"the bundled default codec {DEFAULT_CODEC} (random-weight p111_notes if not installed)"}
    keys.update({name: f"codec preset {name}, random weights" for name in PRESETS})
    keys.update({name: f"{spec.name} ({spec.package}), random weights" for name, spec in PEERS.items()})
    return keys


@dataclass(frozen=True)
class BenchSettings:
    """What to measure; the defaults are what ``pyramid bench`` runs."""

    seconds: tuple[float, ...] = (10.0, 180.0)
    models: tuple[str, ...] | None = None  # None = OWN_MODELS and every peer
    device: str = "auto"
    threads: int | None = None  # None = torch's default
    skip_peers: bool = False
    skip_lm: bool = False
    lm: str | None = None  # None = the default LM (a random "small" when it is not installed)
    lm_seconds: float = 180.0
    naive_tokens: int = 200
    lm_dtype: str = "auto"  # the LM's compute dtype (auto: bfloat16 on a CUDA GPU that has it)
    lm_compile: bool = False  # also time the compiled decode step
    allocator: str = "system"  # system | jemalloc | both
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS
    isolate: bool = True  # one fresh process per measurement
    memory_seconds: tuple[float, ...] = (10.0, 3600.0)  # `pyramid encode`/`decode` peak RSS per input length
    skip_memory: bool = False

    def __post_init__(self) -> None:
        if not self.seconds or any(not (s > 0 and math.isfinite(s)) for s in self.seconds):
            raise UsageError(f"seconds: give positive lengths in seconds, got {list(self.seconds)}", option="seconds")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"threads must be at least 1, got {self.threads}", option="threads")
        if self.allocator not in ALLOCATORS:
            raise UsageError(f"allocator must be one of {', '.join(ALLOCATORS)}, got {self.allocator!r}",
                             option="allocator")
        if self.allocator != "system" and not self.isolate:
            raise UsageError("allocator jemalloc/both needs a fresh process per measurement "
                             "(it cannot be measured in-process)",
                             option="allocator")
        if not (self.lm_seconds > 0 and math.isfinite(self.lm_seconds)):
            raise UsageError(f"lm_seconds must be a positive number, got {self.lm_seconds}", option="lm_seconds")
        from pyramid_cli.lm.decode import DTYPE_CHOICES

        if self.lm_dtype not in DTYPE_CHOICES:
            raise UsageError(f"lm_dtype must be one of {', '.join(DTYPE_CHOICES)}, got {self.lm_dtype!r}",
                             option="lm_dtype")
        if self.naive_tokens < 1:
            raise UsageError(f"naive_tokens must be at least 1, got {self.naive_tokens}", option="naive_tokens")
        if any(not (s > 0 and math.isfinite(s)) for s in self.memory_seconds):
            raise UsageError(f"memory_seconds: give positive lengths in seconds, got {list(self.memory_seconds)}",
                             option="memory_seconds")
        if not (self.chunk_seconds > 0 and math.isfinite(self.chunk_seconds)):
            raise UsageError(f"chunk_seconds must be a positive number, got {self.chunk_seconds}",
                             option="chunk_seconds")

    def command(self) -> str:
        """The ``pyramid bench`` command line that asks for these settings."""
        default = BenchSettings()
        parts = ["pyramid bench", "--seconds " + ",".join(f"{s:g}" for s in self.seconds)]
        if self.memory_seconds != default.memory_seconds and not self.skip_memory:
            parts.append("--memory-seconds " + ",".join(f"{s:g}" for s in self.memory_seconds))
        if self.models is not None:
            parts.append("--models " + ",".join(self.models))
        for flag, value, base in (("--device", self.device, default.device), ("--threads", self.threads, None),
                                  ("--allocator", self.allocator, default.allocator), ("--lm", self.lm, None),
                                  ("--lm-seconds", self.lm_seconds, default.lm_seconds),
                                  ("--naive-tokens", self.naive_tokens, default.naive_tokens),
                                  ("--lm-dtype", self.lm_dtype, default.lm_dtype),
                                  ("--chunk-seconds", self.chunk_seconds, default.chunk_seconds)):
            if value is not None and value != base:
                parts.append(f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}")
        parts += [flag for flag, on in (("--skip-peers", self.skip_peers), ("--skip-lm", self.skip_lm),
                                        ("--skip-memory", self.skip_memory), ("--lm-compile", self.lm_compile),
                                        ("--in-process", not self.isolate)) if on]
        return " ".join(parts)


@dataclass(frozen=True)
class Skipped:
    """A measurement that did not run: ``unavailable`` (a peer not installed) or ``failed`` (an error)."""

    model: str
    status: str
    reason: str


@dataclass
class BenchReport:
    """Everything one ``pyramid bench`` run measured, and on what."""

    date: str  # UTC, ISO 8601
    command: str
    machine: MachineInfo
    settings: BenchSettings
    codecs: list[CodecResult] = field(default_factory=list)
    lm: LMResult | None = None
    memory: list[MemoryResult] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0

    @property
    def failed(self) -> list[Skipped]:
        return [s for s in self.skipped if s.status == "failed"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "date": self.date, "command": self.command, "machine": asdict(self.machine),
            "settings": asdict(self.settings), "codecs": [c.to_dict() for c in self.codecs],
            "lm": self.lm.to_dict() if self.lm else None, "memory": [m.to_dict() for m in self.memory],
            "skipped": [asdict(s) for s in self.skipped],
            "notes": list(self.notes), "wall_seconds": self.wall_seconds,
        }


# ---- running measurements ---------------------------------------------------------------------------


def _environment(allocator: str, library: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    if allocator == "jemalloc" and library is not None:
        env.update(jemalloc_environment(library))
    else:  # the system allocator: drop an inherited jemalloc preload
        kept = [p for p in env.get("LD_PRELOAD", "").replace(":", " ").split() if "jemalloc" not in p]
        env.pop("MALLOC_CONF", None)
        if kept:
            env["LD_PRELOAD"] = " ".join(kept)
        else:
            env.pop("LD_PRELOAD", None)
    return env


def _run_isolated(job: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """Run ``job`` in ``python -m pyramid_cli.bench.worker`` and return its answer."""
    with tempfile.TemporaryDirectory(prefix="pyramid-bench-") as folder:
        output = Path(folder) / "answer.json"
        process = subprocess.run([sys.executable, "-m", "pyramid_cli.bench.worker"],
                                 input=json.dumps({**job, "output": str(output)}), text=True,
                                 capture_output=True, env=env, check=False)
        if output.is_file():
            answer: dict[str, Any] = json.loads(output.read_text(encoding="utf-8"))
            return answer
    lines = [line for line in process.stderr.strip().splitlines() if line.strip()]
    why = lines[-1] if lines else f"exit status {process.returncode}"
    if process.returncode < 0:
        why = f"killed by signal {-process.returncode} (out of memory?); {why}"
    return {"error": f"the measuring process failed: {why}"}


def _run_in_process(job: dict[str, Any]) -> dict[str, Any]:
    from pyramid_cli.bench.worker import run_job

    return run_job(job)


def _allocators(settings: BenchSettings, notes: list[str]) -> tuple[list[str], Path | None]:
    if settings.allocator == "system":
        return ["system"], None
    library = find_jemalloc()
    if library is None:
        notes.append(f"jemalloc was asked for but not found ({JEMALLOC_HINT}); measured with the system "
                     "allocator only")
        return ["system"], None
    notes.append(f"jemalloc: {library} preloaded with MALLOC_CONF={jemalloc_environment(library)['MALLOC_CONF']}")
    return (["system", "jemalloc"] if settings.allocator == "both" else ["jemalloc"]), library


def _selected_models(settings: BenchSettings, skipped: list[Skipped], notes: list[str]) -> list[str]:
    from pyramid_cli.codec.config import PRESETS
    from pyramid_cli.hub.registry import locate_model

    keys = list(settings.models) if settings.models is not None else [*OWN_MODELS, *PEERS]
    selected: list[str] = []
    for key in dict.fromkeys(keys):  # in order, without repeats
        if key in PEERS:
            if settings.skip_peers:
                continue
            reason = peer_available(key)
            if reason is not None:
                skipped.append(Skipped(key, "unavailable", reason))
                continue
        elif key != DEFAULT_KEY and key not in PRESETS:
            try:
                locate_model(key, kind="codec", download=False)
            except PyramidError as error:
                raise UsageError(f"models: {key!r} is neither a known model ({', '.join(model_keys())}) nor a "
                                 f"codec that loads ({error})", option="models") from None
        selected.append(key)
    if settings.skip_peers:
        notes.append("peers skipped (--skip-peers)")
    return selected


def run_bench(settings: BenchSettings, on_progress: Progress | None = None) -> BenchReport:
    """Measure every selected model on every input length (and the LM), one fresh process each.

    Args:
        on_progress: called with a line saying what is measured next (the CLI shows it on stderr).

    Returns:
        The report; models that could not run are listed in ``skipped`` with the reason.

    Raises:
        UsageError: unknown models or impossible settings.
    """
    from pyramid_cli.runtime.devices import resolve_device

    started = time.perf_counter()
    device = str(resolve_device(settings.device))
    skipped: list[Skipped] = []
    notes: list[str] = []
    models = _selected_models(settings, skipped, notes)
    allocators, library = _allocators(settings, notes)
    if "system" in allocators and any(key not in PEERS for key in models):
        notes.append("system allocator: pyramid's own models run with glibc malloc set to keep freed memory "
                     "(pyramid_cli.runtime.allocator), as the pyramid command does; the peers with glibc's defaults")
    if settings.threads is not None:
        import torch

        torch.set_num_threads(settings.threads)
    report = BenchReport(date=datetime.now(timezone.utc).isoformat(timespec="seconds"), command=settings.command(),
                         machine=machine_info(device), settings=settings, skipped=skipped, notes=notes)

    def run(job: dict[str, Any], allocator: str) -> dict[str, Any]:
        job = {**job, "device": device, "threads": settings.threads}
        return _run_isolated(job, _environment(allocator, library)) if settings.isolate else _run_in_process(job)

    _measure_codecs(settings, models, allocators, run, report, on_progress)
    if not settings.skip_lm:
        if on_progress is not None:
            on_progress(f"LM: a {settings.lm_seconds:g} s piece, cached and naive sampling")
        answer = run({"kind": "lm", "model": settings.lm, "seconds": settings.lm_seconds,
                      "naive_tokens": settings.naive_tokens, "dtype": settings.lm_dtype,
                      "compile": settings.lm_compile}, "system")
        if "result" in answer:
            report.lm = LMResult.from_dict(answer["result"])
            if report.lm.note:
                notes.append(report.lm.note)
        else:
            skipped.append(Skipped("lm", "failed", answer.get("error") or answer.get("unavailable", "")))
    if not settings.skip_memory:
        _measure_memory(settings, device, report, on_progress)
    report.wall_seconds = time.perf_counter() - started
    return report


def _measure_codecs(settings: BenchSettings, models: list[str], allocators: list[str],
                    run: Callable[[dict[str, Any], str], dict[str, Any]], report: BenchReport,
                    on_progress: Progress | None) -> None:
    """Every model on every input length and allocator; a model that cannot run here is skipped once."""
    notes, skipped = report.notes, report.skipped
    unavailable: set[str] = set()
    for key in models:
        for seconds in settings.seconds:
            for allocator in allocators:
                if key in unavailable:
                    continue
                if on_progress is not None:
                    on_progress(f"{key}: {seconds:g} s of audio, {allocator} allocator")
                answer = run({"kind": "codec", "key": key, "seconds": seconds,
                              "chunk_seconds": settings.chunk_seconds}, allocator)
                if "result" in answer:
                    result = CodecResult.from_dict(answer["result"])
                    report.codecs.append(result)
                    if result.note and result.note not in notes:
                        notes.append(result.note)
                    if allocator == "jemalloc" and result.allocator != "jemalloc":
                        note = "jemalloc was preloaded but not mapped by the measuring process"
                        if note not in notes:
                            notes.append(note)
                elif "unavailable" in answer:
                    unavailable.add(key)
                    skipped.append(Skipped(key, "unavailable", answer["unavailable"]))
                else:
                    skipped.append(Skipped(f"{key} ({seconds:g} s, {allocator})", "failed", answer["error"]))


def _measure_memory(settings: BenchSettings, device: str, report: BenchReport, on_progress: Progress | None) -> None:
    """``pyramid encode`` / ``decode`` peak memory for each of ``settings.memory_seconds``."""
    for seconds in settings.memory_seconds:
        if on_progress is not None:
            on_progress(f"memory: pyramid encode and decode of a {seconds:g} s WAV")
        try:
            report.memory.append(measure_memory(seconds, device=device, threads=settings.threads,
                                                env=_environment("system", None)))
        except PyramidError as error:
            report.skipped.append(Skipped(f"memory ({seconds:g} s)", "failed", str(error)))


def check_peers() -> dict[str, str | None]:
    """Peer key → None when it can run here, else the reason (for ``pyramid bench --list``)."""
    return {key: peer_available(key) for key in PEERS}
