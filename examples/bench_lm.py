"""Generation speed of the pyramid LM: KV-cached sampling against naive full-prefix sampling.

Prints a table (asserts nothing). Naive sampling re-runs the model over the whole prefix for
every new token, as nanoGPT's ``sample.py`` does; the cached sampler (``pyramid_cli.lm.sampling``)
feeds one token per step and reads only the cache slots its layout allows. Both run in the same
process on the same model; speed does not depend on the weights, so a random model of the
default size stands in when no trained LM is given.

    .venv/bin/python examples/bench_lm.py                          # small preset, both layouts
    .venv/bin/python examples/bench_lm.py --lm models/pyramid-lm-small --seconds 180
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch

from pyramid_cli.lm.config import preset
from pyramid_cli.lm.layout import make_layout
from pyramid_cli.lm.model import PyramidLM
from pyramid_cli.lm.sampling import SamplingSettings, generate, sample_next


@torch.inference_mode()
def naive_generate(model: PyramidLM, plan, tokens: np.ndarray, count: int, generator: torch.Generator) -> float:
    """Re-sample ``count`` tokens from the middle of a finished piece, each with a full forward pass
    over its whole prefix; returns seconds. A naive step's cost grows with its prefix, so the middle
    of the piece gives its average rate over the piece."""
    positions, streams = torch.from_numpy(plan.positions), torch.from_numpy(plan.streams)
    mask = plan.attention_mask()
    tokens = tokens.copy()
    start = len(tokens) // 2
    started = time.perf_counter()
    for i in range(start, min(start + count, len(tokens))):
        logits, _ = model(torch.from_numpy(tokens[:i])[None], positions[:i], streams[:i], mask=mask[:i, :i])
        tokens[i] = int(sample_next(logits[:, -1, : model.config.codebook_size], 1.0, 100, None, generator))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lm", help="a trained LM folder (default: a random model of --preset)")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--layouts", default="time_aligned,flat")
    parser.add_argument("--seconds", type=float, default=180.0, help="piece length for the cached sampler")
    parser.add_argument("--naive-tokens", type=int, default=300, help="tokens sampled naively (it is slow)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    print(f"{'layout':>13} {'params':>7} {'piece s':>8} {'tokens':>7} {'cached s':>9} {'cached tok/s':>13} "
          f"{'x real time':>11} {'naive tok/s':>12} {'speed-up':>9}")
    for layout in args.layouts.split(","):
        torch.manual_seed(0)
        if args.lm:
            model = PyramidLM.from_pretrained(args.lm)
            if model.config.layout != layout:
                continue
        else:
            model = PyramidLM(replace(preset(args.preset), layout=layout)).eval()
        config = model.config
        plan = make_layout(config).piece(config.coarse_frames_for(args.seconds))
        to_sample = int((plan.tokens < 0).sum())
        started = time.perf_counter()
        tokens = generate(model, plan, sampling=SamplingSettings(1.0, 100), generator=torch.Generator().manual_seed(0))
        cached = time.perf_counter() - started
        naive = naive_generate(model, plan, tokens[0], args.naive_tokens, torch.Generator().manual_seed(0))
        audio = config.coarse_frames_for(args.seconds) / config.coarse_frame_rate
        cached_rate, naive_rate = to_sample / cached, args.naive_tokens / naive
        print(f"{layout:>13} {model.num_parameters() / 1e6:>6.1f}M {audio:>8.1f} {to_sample:>7} "
              f"{cached:>9.1f} {cached_rate:>13.0f} {audio / cached:>11.2f} {naive_rate:>12.1f} "
              f"{cached_rate / naive_rate:>8.0f}x")
    print(f"naive: {args.naive_tokens} tokens re-sampled from the middle of the piece, i.e. at its average prefix")


if __name__ == "__main__":
    main()
