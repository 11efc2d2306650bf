"""``pyramid bench``: speed and memory of codecs and of generation, against named baselines, in one run.

DESIGN §7: real-time factors for encoding and decoding, peak memory, tokens per second of audio
(the cost a language model pays) and generation tokens per second, always beside a baseline
measured in the same run on the same input, thread count and device. The library returns
dataclasses and never prints; ``pyramid_cli.cli.bench`` shows them.

- ``codecs``: one codec on one input length (``measure_codec``);
- ``peers``: DAC, SNAC and EnCodec with random weights (optional extra ``bench``);
- ``lm``: cached against naive sampling (``measure_lm``);
- ``memory``: ``pyramid encode`` / ``decode`` peak memory against the input's length (``measure_memory``);
- ``machine``: machine facts, resident-set peaks, jemalloc;
- ``runner``: everything in fresh processes (``run_bench``), ``report``: tables and Markdown.
"""

from pyramid_cli.bench.codecs import CodecResult, PhaseResult, bench_signal, measure_codec
from pyramid_cli.bench.lm import LMResult, measure_lm
from pyramid_cli.bench.machine import MachineInfo, find_jemalloc, machine_info
from pyramid_cli.bench.peers import PEERS
from pyramid_cli.bench.report import to_markdown
from pyramid_cli.bench.runner import BenchReport, BenchSettings, Skipped, check_peers, model_keys, run_bench

__all__ = [
    "PEERS",
    "BenchReport",
    "BenchSettings",
    "CodecResult",
    "LMResult",
    "MachineInfo",
    "PhaseResult",
    "Skipped",
    "check_peers",
    "find_jemalloc",
    "machine_info",
    "measure_codec",
    "measure_lm",
    "model_keys",
    "run_bench",
    "bench_signal",
    "to_markdown",
]
