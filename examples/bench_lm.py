"""Generation speed of the pyramid LM: KV-cached sampling against naive full-prefix sampling, per layout.

A thin wrapper over ``pyramid_cli.bench.measure_lm`` (what ``pyramid bench`` runs for the default LM)
that compares both token layouts. Prints a table (asserts nothing). Naive sampling re-runs the
model over the whole prefix for every new token, as nanoGPT's ``sample.py`` does; it is timed on
tokens from the middle of the piece, i.e. at its average prefix.

    .venv/bin/python examples/bench_lm.py                          # small preset, both layouts
    .venv/bin/python examples/bench_lm.py --lm models/pyramid-lm-small --seconds 180
"""

from __future__ import annotations

import argparse

from pyramid_cli.bench import measure_lm
from pyramid_cli.errors import UsageError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lm", help="a trained LM folder (default: a random model of --preset)")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--layouts", default="time_aligned,flat")
    parser.add_argument("--seconds", type=float, default=180.0, help="piece length for the cached sampler")
    parser.add_argument("--naive-tokens", type=int, default=300, help="tokens sampled naively (it is slow)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    print(f"{'layout':>13} {'params':>7} {'piece s':>8} {'tokens':>7} {'cached s':>9} {'cached tok/s':>13} "
          f"{'x real time':>11} {'naive tok/s':>12} {'speed-up':>9}")
    for layout in args.layouts.split(","):
        try:
            r = measure_lm(args.seconds, model=args.lm or args.preset, layout=layout, naive_tokens=args.naive_tokens,
                           threads=args.threads)
        except UsageError:
            if args.lm:  # a trained LM has one layout: the others are not measured
                continue
            raise
        print(f"{layout:>13} {r.parameters / 1e6:>6.1f}M {r.piece_seconds:>8.1f} {r.tokens:>7} "
              f"{r.cached_seconds:>9.1f} {r.cached_tokens_per_second:>13.0f} {r.realtime_factor:>11.2f} "
              f"{r.naive_tokens_per_second:>12.1f} {r.speedup:>8.0f}x", flush=True)
    print(f"naive: {args.naive_tokens} tokens re-sampled from the middle of the piece, i.e. at its average prefix")


if __name__ == "__main__":
    main()
