"""The corpus builder: parallel, resumable, shardable rendering of MIDI into audio.

Each item is parsed and rendered in its own forked worker process, under a time limit and a
memory cap: some MIDI files make pretty_midi hang or allocate huge arrays (pretty-midi#112,
#263, PR #249), and such a file must cost one failure record, not the build. Only the parent
writes the manifests; workers write their audio atomically, so an interrupted build leaves
no half-written audio and no corrupt manifest, and rerunning it skips finished items.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import multiprocessing as mp
import os
import resource
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, cast

from pyramid_cli.data.manifest import (
    append_jsonl,
    failures_name,
    manifest_name,
    read_jsonl,
    repair_jsonl,
)
from pyramid_cli.data.sources import Source, shard_of, split_of
from pyramid_cli.errors import DependencyError, ResourceError, UsageError
from pyramid_cli.runtime.fileio import read_json_object, write_text_atomic

AUDIO_FORMATS = ("flac", "wav")


MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1000, 192_000  # what FluidSynth renders at
MIN_MEMORY_MB = 256  # below this every item would fail for want of memory, not for its own fault


@dataclass(frozen=True)
class BuildOptions:
    out_dir: Path
    soundfont: Path
    sample_rate: int = 22050
    audio_format: str = "flac"
    split_weights: tuple[int, int, int] = (8, 1, 1)
    shard: tuple[int, int] = (0, 1)
    workers: int = 1
    timeout_seconds: float = 120.0  # per item: parse + render + write
    memory_limit_mb: int = 4096  # per worker (address space)
    max_seconds: float | None = None  # cap on rendered length
    max_source_seconds: float = 3600.0  # longer MIDI files are treated as broken
    min_seconds: float = 1.0  # shorter renders are rejected
    procedural_seconds: float = 30.0
    retry_failed: bool = False

    def __post_init__(self) -> None:
        if self.audio_format not in AUDIO_FORMATS:
            raise UsageError(f"audio_format must be one of {', '.join(AUDIO_FORMATS)}, got '{self.audio_format}'",
                             option="audio_format")
        if self.workers < 1:
            raise UsageError("workers must be at least 1", option="workers")
        if not math.isfinite(self.timeout_seconds) or self.timeout_seconds <= 0:
            raise UsageError(f"timeout_seconds must be a positive number of seconds, got {self.timeout_seconds}",
                             option="timeout_seconds")
        if not math.isfinite(self.procedural_seconds) or self.procedural_seconds <= 0:
            raise UsageError(f"procedural_seconds must be positive, got {self.procedural_seconds}",
                             option="procedural_seconds")
        if not MIN_SAMPLE_RATE <= self.sample_rate <= MAX_SAMPLE_RATE:
            raise UsageError(f"sample_rate must be in {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz, "
                             f"got {self.sample_rate}", option="sample_rate")
        if self.memory_limit_mb < MIN_MEMORY_MB:
            raise UsageError(f"memory_limit_mb must be at least {MIN_MEMORY_MB} MB (a worker cannot render in less), "
                             f"got {self.memory_limit_mb}", option="memory_limit_mb")
        max_seconds = self.max_seconds
        if max_seconds is not None and not (math.isfinite(max_seconds) and max_seconds >= self.min_seconds):
            raise UsageError(f"max_seconds must be at least {self.min_seconds}", option="max_seconds")


@dataclass
class ItemResult:
    """What happened to one source: rendered (`record`), failed (`error`) or skipped (already done)."""

    source: Source
    status: str  # "rendered" | "failed" | "skipped"
    record: dict[str, Any] | None = None
    error: str | None = None


@dataclass
class BuildSummary:
    total: int = 0
    rendered: int = 0
    skipped: int = 0
    failed: int = 0
    rendered_seconds: float = 0.0
    wall_seconds: float = 0.0
    failures: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _render_item(source: Source, options: BuildOptions, split: str, soundfont_id: str) -> dict[str, Any]:
    """Parse or compose, merge, render and write one item. Runs inside a worker process."""
    from pyramid_cli.audio.io import is_silent, peak_normalize, save_audio, trim_trailing_silence
    from pyramid_cli.data.compose import compose_piece
    from pyramid_cli.data.midi import groups_present, initial_tempo, merge_tracks
    from pyramid_cli.data.midi_libs import (
        pretty_midi,  # imported here, and preloaded by the fork server, to keep the parent light
    )
    from pyramid_cli.data.render import render_midi

    if source.path is not None:
        try:
            midi = pretty_midi.PrettyMIDI(str(source.path))
        except Exception as error:  # pretty_midi/mido raise many types on corrupt files
            raise ValueError(f"unreadable MIDI ({_reason(error, source.path)})") from None
    else:
        midi = compose_piece(int(source.seed or 0), options.procedural_seconds)
    source_seconds = float(midi.get_end_time())
    if source_seconds > options.max_source_seconds:
        raise ValueError(f"absurd length: {source_seconds:.0f} s (limit {options.max_source_seconds:.0f} s)")
    merged = merge_tracks(midi, options.max_seconds)
    n_notes = sum(len(instrument.notes) for instrument in merged.instruments)
    if n_notes == 0:
        raise ValueError("no notes in any renderable instrument")
    with _captured_stderr() as log:  # FluidSynth prints its warnings on the C-level stderr
        wav = render_midi(merged, options.sample_rate, options.soundfont, options.max_seconds)
    wav = trim_trailing_silence(wav, options.sample_rate)
    if is_silent(wav):
        raise ValueError("the render is silent")
    duration = len(wav) / options.sample_rate
    if duration < options.min_seconds:
        raise ValueError(f"too short: {duration:.2f} s (minimum {options.min_seconds} s)")
    relative = Path("audio") / split / f"{source.id}.{options.audio_format}"
    try:
        save_audio(options.out_dir / relative, peak_normalize(wav), options.sample_rate)
    except OSError as error:  # a full disk or a read-only folder: the environment's fault, not the file's
        raise ResourceError(f"cannot write {options.out_dir / relative} ({error.strerror or error})") from None
    messages = log
    return {
        "id": source.id,
        "source": source.label,
        "song_group": source.song_group,
        "split": split,
        "audio": relative.as_posix(),
        "duration": round(duration, 4),
        "num_samples": len(wav),
        "sample_rate": options.sample_rate,
        "groups": groups_present(merged),
        "n_notes": n_notes,
        "tempo": round(initial_tempo(midi), 3),
        "source_duration": round(source_seconds, 3),
        "truncated": options.max_seconds is not None and source_seconds > options.max_seconds,
        "render": {"soundfont": options.soundfont.name, "soundfont_sha256": soundfont_id,
                   "peak": 0.95, "trim_db": -60.0,
                   **({"synth_messages": len(messages), "synth_log": messages[:MAX_LOG_LINES]} if messages else {})},
    }


MAX_LOG_LINES = 20  # FluidSynth messages kept in an item's record (a 10,000-track file prints thousands)


def _reason(error: BaseException, path: Path) -> str:
    """``Type: message``, with a reason even where the parser gave none (mido's bare EOFError)."""
    text = str(error).strip()
    if not text:
        size = path.stat().st_size if path.is_file() else -1
        text = "the file is empty" if size == 0 else "the file ends early (truncated)" \
            if isinstance(error, EOFError) else "no details given"
    return f"{type(error).__name__}: {text}"


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Redirect file descriptor 2 (C libraries' stderr) for the block; the list receives its lines after it."""
    import tempfile

    lines: list[str] = []
    with tempfile.TemporaryFile() as capture:
        saved = os.dup(2)
        try:
            os.dup2(capture.fileno(), 2)
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", "replace")
            lines.extend(line for line in text.splitlines() if line.strip())


def _mapped_bytes() -> int:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[0]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return 0


def _worker_main(source: Source, options: BuildOptions, split: str, soundfont_id: str, conn: Connection) -> None:
    # pretty_midi warns about many harmless irregularities of real files; on a shared stderr
    # they would bury the progress display.
    warnings.simplefilter("ignore")
    # The cap counts from what the forked worker already maps: a parent that imported torch
    # (tests, notebooks) maps gigabytes of address space before a MIDI file is even opened.
    limit = _mapped_bytes() + options.memory_limit_mb * 1024 * 1024
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        conn.send(("ok", _render_item(source, options, split, soundfont_id)))
    except MemoryError:
        conn.send(("error", f"memory limit of {options.memory_limit_mb} MB exceeded"))
    except (ResourceError, DependencyError) as error:  # the environment's fault: stop the build
        conn.send(("environment", str(error)))
    except Exception as error:
        message = str(error) if isinstance(error, ValueError) else traceback.format_exception_only(error)[-1]
        conn.send(("error", message.strip()))
    finally:
        conn.close()


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _remove_stale_temporaries(out_dir: Path) -> None:
    """Temporary audio of workers killed mid-write (timeouts, Ctrl-C) is never a result."""
    for tmp in (out_dir / "audio").glob("*/.*.tmp"):
        tmp.unlink(missing_ok=True)


SETTINGS_FILE = "corpus.json"


def _check_settings(options: BuildOptions) -> None:
    """Record the settings that shape every item; refuse to mix items built with others."""
    settings = {"sample_rate": options.sample_rate, "audio_format": options.audio_format,
                "split_weights": list(options.split_weights), "max_seconds": options.max_seconds,
                "soundfont": options.soundfont.name, "procedural_seconds": options.procedural_seconds}
    path = options.out_dir / SETTINGS_FILE
    if path.exists():
        previous = read_json_object(path, "corpus settings file")
        changed = [key for key, value in settings.items() if previous.get(key) != value]
        if changed:
            details = ", ".join(f"{key} {previous.get(key)!r} → {settings[key]!r}" for key in changed)
            raise UsageError(f"{options.out_dir} was built with other settings ({details}); "
                             "use the same settings or another output folder")
    else:
        write_text_atomic(path, json.dumps(settings, indent=2) + "\n")


def select_pending(sources: list[Source], options: BuildOptions) -> tuple[list[Source], list[Source]]:
    """(to render, already done) for this shard, from the manifests a previous run left."""
    index, count = options.shard
    mine = [s for s in sources if shard_of(s.id, count) == index]
    done_ids = {r["id"] for r in read_jsonl(options.out_dir / manifest_name(options.shard))
                if (options.out_dir / r["audio"]).exists()}
    if not options.retry_failed:
        done_ids |= {r["id"] for r in read_jsonl(options.out_dir / failures_name(options.shard))}
    return [s for s in mine if s.id not in done_ids], [s for s in mine if s.id in done_ids]


def build_corpus(sources: list[Source], options: BuildOptions,
                 on_result: Callable[[ItemResult], None] | None = None,
                 on_start: Callable[[int], None] | None = None) -> BuildSummary:
    """Render `sources` (this shard's part) into `options.out_dir`.

    Args:
        sources: every source of the collection; the builder keeps this shard's part.
        options: the build settings.
        on_result: called in the parent after each item (progress display).
        on_start: called once with the number of items this run will process.

    Returns:
        A summary of this run. Failures are also appended to the failures file.
    """
    ids = [s.id for s in sources]
    if len(set(ids)) != len(ids):
        raise UsageError("two sources map to the same id; give distinct file names")
    options.out_dir.mkdir(parents=True, exist_ok=True)
    _check_settings(options)
    manifest_path = options.out_dir / manifest_name(options.shard)
    failures_path = options.out_dir / failures_name(options.shard)
    for path in (manifest_path, failures_path):
        repair_jsonl(path)
    _remove_stale_temporaries(options.out_dir)
    pending, done = select_pending(sources, options)
    soundfont_id = _file_sha256(options.soundfont)[:16]
    summary = BuildSummary(total=len(pending) + len(done), skipped=len(done))
    if on_start:
        on_start(len(pending) + len(done))
    for source in done:
        if on_result:
            on_result(ItemResult(source, "skipped"))
    start = time.monotonic()
    # A fork server, not plain fork: a parent that has run torch (tests, notebooks) holds thread
    # pools whose locks a forked child inherits locked, and that child hangs. The server starts
    # clean, imports the renderer once, and forks each worker from itself.
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(["pyramid_cli.data.build", "pyramid_cli.data.midi_libs"])
    running: dict[Connection, tuple[Source, Any, float]] = {}
    queue = list(reversed(pending))

    def finish(source: Source, status: Any, payload: Any) -> None:
        if status == "environment":  # never recorded as the file's failure; the next run retries it
            raise ResourceError(f"stopped: {payload} ({source.label} and the rest are left for the next run)")
        try:
            _record(source, status, payload)
        except OSError as error:
            raise ResourceError(f"stopped: cannot write to {options.out_dir} ({error.strerror or error})") from None

    def _record(source: Source, status: Any, payload: Any) -> None:
        if status == "ok":
            append_jsonl(manifest_path, payload)
            summary.rendered += 1
            summary.rendered_seconds += payload["duration"]
            result = ItemResult(source, "rendered", record=payload)
        else:
            failure = {"id": source.id, "source": source.label, "error": str(payload)}
            append_jsonl(failures_path, failure)
            summary.failed += 1
            summary.failures.append(failure)
            result = ItemResult(source, "failed", error=str(payload))
        if on_result:
            on_result(result)

    try:
        while queue or running:
            while queue and len(running) < options.workers:
                source = queue.pop()
                split = split_of(source.split_key, options.split_weights)
                parent_end, child_end = context.Pipe(duplex=False)
                process = context.Process(target=_worker_main, args=(source, options, split, soundfont_id, child_end),
                                          daemon=True)
                process.start()
                child_end.close()
                running[parent_end] = (source, process, time.monotonic())
            _collect_finished(running, finish)
            _kill_overdue(running, options.timeout_seconds, finish)
    finally:
        for conn, (_, process, _) in running.items():
            process.kill()
            process.join()
            conn.close()
        _remove_stale_temporaries(options.out_dir)
        summary.wall_seconds = time.monotonic() - start
    return summary


def _collect_finished(running: dict[Connection, tuple[Source, Any, float]],
                      finish: Callable[[Source, Any, Any], None]) -> None:
    """Wait up to 0.5 s for workers to answer; hand each answer (or a dead worker's error) to ``finish``."""
    for ready in wait(list(running), timeout=0.5):
        conn = cast(Connection, ready)
        source, process, _ = running.pop(conn)
        try:
            status, payload = conn.recv()
        except EOFError:
            process.join()
            status, payload = "error", f"worker died (exit code {process.exitcode}; out of memory?)"
        conn.close()
        process.join()
        finish(source, status, payload)


def _kill_overdue(running: dict[Connection, tuple[Source, Any, float]], timeout_seconds: float,
                  finish: Callable[[Source, Any, Any], None]) -> None:
    """Kill the workers that have run longer than ``timeout_seconds`` and record each as a failure."""
    now = time.monotonic()
    for conn, (source, process, started) in list(running.items()):
        if now - started > timeout_seconds:
            process.kill()
            process.join()
            conn.close()
            del running[conn]
            finish(source, "error", f"timeout after {timeout_seconds:.0f} s")


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
