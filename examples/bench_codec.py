"""Encode / decode speed of PyramidCodec presets on the CPU (prints a table, asserts nothing).

A sizing tool: it times raw ``encode`` / ``decode`` calls with config overrides (``--set``), whole
or in plain chunks. For the comparison with the peers and the DAC-n2 baseline through the real
inference path, with peak memory and tokens per second, use ``pyramid bench`` (``make bench``).

Real-time factor (RTF) = seconds of audio per second of wall time; higher is faster. The input
is a 440 Hz sine plus a little noise at the codec's sample rate, run with
``torch.inference_mode`` and weight norm folded, as inference runs it. Weights are random:
speed does not depend on training. Two ways of running the same audio are timed:

- ``piece``: the whole input in one ``encode`` / ``decode`` call;
- ``chunks``: consecutive ``--chunk``-second pieces (no overlap), the way a chunked inference
  loop feeds the model. Long single calls spend much of their time in page faults for the
  audio-rate activations (hundreds of MB each), so chunks are markedly faster.

``cpu`` is the process CPU time: on a busy shared machine wall time says more about the
neighbours than about the model; ``RTF x threads`` of the CPU-time figure is then the better guide.

    .venv/bin/python examples/bench_codec.py                          # p111_small and p111, 3 min
    .venv/bin/python examples/bench_codec.py --presets p111 --seconds 20
    .venv/bin/python examples/bench_codec.py --presets p111_small --set encoder_dim=16 decoder_dim=192
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from pyramid_cli.codec import PRESETS, PyramidCodec

T = TypeVar("T")


def make_input(seconds: float, sample_rate: int, seed: int = 0) -> torch.Tensor:
    """(1, 1, T) sine at 440 Hz plus noise."""
    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * sample_rate)) / sample_rate
    wav = 0.5 * torch.sin(2 * math.pi * 440.0 * t) + 0.05 * torch.randn(t.shape, generator=generator)
    return wav.view(1, 1, -1)


def timed(fn: Callable[[], T]) -> tuple[T, float, float]:
    """(result, wall seconds, process CPU seconds) of fn()."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def bench(model: PyramidCodec, wav: torch.Tensor, chunk: int | None) -> dict[str, float]:
    """Seconds spent encoding then decoding ``wav`` whole (chunk None) or in ``chunk``-sample pieces."""
    pieces = [wav] if chunk is None else list(wav.split(chunk, dim=-1))
    codes, enc_wall, enc_cpu = timed(lambda: [model.encode(p) for p in pieces])
    _, dec_wall, dec_cpu = timed(
        lambda: [model.decode(c, length=p.shape[-1]) for c, p in zip(codes, pieces, strict=True)]
    )
    return {"enc": enc_wall, "dec": dec_wall, "enc_cpu": enc_cpu, "dec_cpu": dec_cpu}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", nargs="+", default=["p111_small", "p111"], choices=sorted(PRESETS))
    parser.add_argument("--seconds", type=float, default=180.0, help="audio length (default 3 minutes)")
    parser.add_argument("--chunk", type=float, default=10.0, help="chunk length in seconds (default 10)")
    parser.add_argument("--modes", nargs="+", default=["chunks", "piece"], choices=["chunks", "piece"])
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per measurement; the fastest is kept")
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="FIELD=INT",
        help="override integer config fields, e.g. --set encoder_dim=16 decoder_dim=192",
    )
    args = parser.parse_args()
    overrides: dict[str, Any] = {key: int(value) for key, value in (item.split("=", 1) for item in args.set)}
    torch.set_num_threads(args.threads)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{args.seconds:.0f} s of audio, {args.threads} threads, torch {torch.__version__}, load {load}")
    header = ("preset", "params", "mode", "encode s", "enc RTF", "decode s", "dec RTF", "both RTF", "cpu RTF")
    print("{:<11} {:>7} {:>12} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}".format(*header))
    for name in args.presets:
        config = dataclasses.replace(PRESETS[name](), **overrides)
        model = PyramidCodec(config).eval().fold_weight_norm()
        params = sum(p.numel() for p in model.parameters()) / 1e6
        wav = make_input(args.seconds, config.sample_rate)
        hop = config.hop_lengths[0]
        chunk = max(hop, round(args.chunk * config.sample_rate / hop) * hop)  # whole coarse frames
        with torch.inference_mode():
            model.decode(model.encode(wav[..., : 4 * hop]))  # warm-up
            for mode in args.modes:
                runs = [bench(model, wav, chunk if mode == "chunks" else None) for _ in range(args.repeats)]
                r = min(runs, key=lambda run: run["enc"] + run["dec"])
                label = f"{mode} {args.chunk:g}s" if mode == "chunks" else mode
                secs = args.seconds
                enc, dec, cpu = secs / r["enc"], secs / r["dec"], secs / (r["enc_cpu"] + r["dec_cpu"])
                both = secs / (r["enc"] + r["dec"])
                row = (
                    f"{name:<11} {params:>6.1f}M {label:>12} {r['enc']:>8.2f} {enc:>7.1f}x "
                    f"{r['dec']:>8.2f} {dec:>7.1f}x {both:>7.1f}x {cpu:>7.1f}x"
                )
                print(row, flush=True)


if __name__ == "__main__":
    main()
