"""A ``BenchReport`` as table rows and as Markdown (for the README); no printing here."""

from __future__ import annotations

from pyramid_cli.bench.runner import BenchReport


def _rtf(value: float) -> str:
    return f"{value:.1f}x" if value < 100 else f"{value:.0f}x"


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def codec_columns(report: BenchReport) -> list[str]:
    allocator = ["allocator"] if len({c.allocator for c in report.codecs}) > 1 else []
    return ["model", "weights", "params", "tokens/s", "audio", *allocator, "enc RTF", "dec RTF",
            "enc CPU RTF", "dec CPU RTF", "enc MB", "dec MB"]


def codec_rows(report: BenchReport) -> list[list[str]]:
    """One row per codec and input length (and allocator), in ``codec_columns`` order.

    RTF: seconds of audio per second of wall (CPU: of process CPU) time; MB: peak resident-set growth over the
    process with the model loaded."""
    both = len({c.allocator for c in report.codecs}) > 1
    rows = []
    for c in report.codecs:
        rows.append([c.name, c.weights, f"{c.parameters / 1e6:.1f}M", f"{c.tokens_per_second:.1f}",
                     f"{c.audio_seconds:g} s", *([c.allocator] if both else []),
                     _rtf(c.encode.realtime_factor), _rtf(c.decode.realtime_factor),
                     _rtf(c.encode.cpu_realtime_factor), _rtf(c.decode.cpu_realtime_factor),
                     _mb(c.encode.rss_growth_mb), _mb(c.decode.rss_growth_mb)])
    return rows


LM_COLUMNS = ["LM", "weights", "params", "layout", "dtype", "piece", "tokens", "cached tok/s", "x real time",
              "naive tok/s", "speed-up", "compiled tok/s", "tok/s beside a busy process"]


def lm_row(report: BenchReport) -> list[str] | None:
    lm = report.lm
    if lm is None:
        return None
    compiled = "-"
    if lm.compiled_tokens_per_second is not None and lm.compiled_first_tokens_per_second is not None:
        compiled = f"{lm.compiled_tokens_per_second:,.0f} ({lm.compiled_first_tokens_per_second:,.0f} with compiling)"
    return [lm.name, lm.weights, f"{lm.parameters / 1e6:.1f}M", lm.layout, lm.dtype, f"{lm.piece_seconds:.0f} s",
            f"{lm.tokens:,}", f"{lm.cached_tokens_per_second:,.0f}", f"{lm.realtime_factor:.2f}x",
            f"{lm.naive_tokens_per_second:,.1f}", f"{lm.speedup:.0f}x", compiled,
            "-" if lm.contended_tokens_per_second is None else f"{lm.contended_tokens_per_second:,.0f}"]


MEMORY_COLUMNS = ["input", "WAV MB", "encode s", "encode RTF", "encode peak MB", "decode s", "decode RTF",
                  "decode peak MB"]


def memory_rows(report: BenchReport) -> list[list[str]]:
    """One row per input length: `pyramid encode` and `pyramid decode` wall time and whole-process peak RSS."""
    return [[f"{m.audio_seconds:g} s", _mb(m.file_mb), f"{m.encode.wall_seconds:.1f}",
             _rtf(m.encode.realtime_factor(m.audio_seconds)), _mb(m.encode.peak_rss_mb),
             f"{m.decode.wall_seconds:.1f}", _rtf(m.decode.realtime_factor(m.audio_seconds)),
             _mb(m.decode.peak_rss_mb)] for m in report.memory]


def memory_spread(report: BenchReport) -> str | None:
    """How much the peaks of the longest input exceed those of the shortest (the target: at most 20%)."""
    if len(report.memory) < 2:
        return None
    short, long = min(report.memory, key=lambda m: m.audio_seconds), max(report.memory, key=lambda m: m.audio_seconds)
    encode = long.encode.peak_rss_mb / short.encode.peak_rss_mb - 1
    decode = long.decode.peak_rss_mb / short.decode.peak_rss_mb - 1
    return (f"peak memory from {short.audio_seconds:g} s to {long.audio_seconds:g} s of input: "
            f"encode {encode:+.0%}, decode {decode:+.0%}")


def machine_line(report: BenchReport) -> str:
    m = report.machine
    device = m.device if m.device == "cpu" else f"{m.device} ({m.device_name})"
    load = f", load {m.load_average[0]:.1f}" if m.load_average else ""
    features = f" ({m.cpu_features})" if m.cpu_features else ""
    return (f"{m.cpu_model}{features}, {m.usable_cores} of {m.logical_cores} cores usable, "
            f"{m.torch_threads} torch threads, torch {m.torch_version}, device {device}{load}; "
            f"pyramid {m.pyramid_version}, {report.date}")


def _table(columns: list[str], rows: list[list[str]]) -> list[str]:
    left = ("model", "weights", "layout", "LM", "allocator", "input", "dtype")
    right = {i for i, c in enumerate(columns) if c not in left}
    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join("---:" if i in right else "---" for i in range(len(columns))) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def to_markdown(report: BenchReport) -> str:
    """The report as Markdown: the machine, the command, the codec and LM tables and the notes."""
    lines = [f"Measured with `{report.command}` on {machine_line(report)}.", ""]
    if report.codecs:
        lines += _table(codec_columns(report), codec_rows(report))
        lines += ["", "RTF: seconds of audio per second of wall time (CPU RTF: per second of process CPU time, "
                  "all threads); MB: peak resident-set growth during the pass over the process with the model "
                  "loaded. tokens/s: tokens per second of audio, what a language model over the codes pays.", ""]
    row = lm_row(report)
    if row is not None and report.lm is not None:
        lines += _table(LM_COLUMNS, [row])
        lines += ["", f"Cached: `pyramid_cli.lm.sampling.generate` over the whole piece; naive: the full prefix "
                  f"re-run for each of {report.lm.naive_tokens} tokens from the middle of the piece.", ""]
    if report.memory:
        lines += _table(MEMORY_COLUMNS, memory_rows(report))
        lines += ["", "`pyramid encode` of a 44.1 kHz stereo 16-bit WAV, then `pyramid decode` of its .pyr at all "
                  "levels to a WAV, each in a fresh process; peak MB: the whole process's peak resident set "
                  f"(Python, torch and the model included). {memory_spread(report) or ''}".rstrip(), ""]
    extra = [*report.notes, *(f"{s.model}: {s.status}: {s.reason}" for s in report.skipped)]
    lines += [f"- {note}" for note in extra]
    return "\n".join(lines).rstrip() + "\n"
