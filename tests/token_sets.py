"""A synthetic token set with learnable structure, written in the format of ``pyramid dataset tokenize``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pyramid_cli.data.tokens import TokenMeta, level_name

HOPS = (2048, 1024, 512)


def pattern_levels(coarse_frames: int, seed: int, codebook_size: int = 64) -> list[np.ndarray]:
    """Codes with structure every piece shares: the coarse level mostly steps through a cycle of 8
    codes, and each detail code is a fixed function of the code above it."""
    rng = np.random.default_rng(seed)
    coarse = (int(rng.integers(0, 8)) + np.arange(coarse_frames)) % 8
    jumps = rng.random(coarse_frames) < 0.1
    coarse = np.where(jumps, rng.integers(0, 8, coarse_frames), coarse)
    level1 = (np.repeat(coarse, 2) * 2 + np.tile([0, 1], coarse_frames)) % codebook_size
    level2 = (np.repeat(level1, 2) * 3 + np.tile([0, 1], 2 * coarse_frames)) % codebook_size
    return [coarse[None], level1[None], level2[None]]


def write_token_set(folder: Path, codec_name: str, codec_hash: str, items: dict[str, list[int]],
                    codebook_size: int = 64) -> Path:
    """items: split -> coarse frames of each item."""
    meta = TokenMeta(codec_name, codec_hash, 22050, HOPS, tuple(22050 / h for h in HOPS), (1, 1, 1),
                     codebook_size, "synthetic")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokens.json").write_text(json.dumps(meta.to_dict()))
    seed = 0
    for split, lengths in items.items():
        (folder / split).mkdir()
        offsets = [0, 0, 0]
        lines = []
        handles = [open(folder / split / level_name(i), "wb") for i in range(3)]
        for n, coarse_frames in enumerate(lengths):
            levels = pattern_levels(coarse_frames, seed, codebook_size)
            seed += 1
            for handle, codes in zip(handles, levels, strict=True):
                handle.write(codes.T.astype("<u2").tobytes())
            frames = [c.shape[1] for c in levels]
            lines.append(json.dumps({"id": f"{split}-{n}", "source": "x.flac", "duration": coarse_frames * 2048 / 22050,
                                     "frames": frames, "offsets": list(offsets)}))
            offsets = [o + f for o, f in zip(offsets, frames, strict=True)]
        for handle in handles:
            handle.close()
        (folder / split / "index.jsonl").write_text("".join(line + "\n" for line in lines))
    return folder
