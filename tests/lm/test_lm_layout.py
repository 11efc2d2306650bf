"""Token layouts: round trips, attention ranges, and windows that match generation's context."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from pyramid_cli.errors import InputError
from pyramid_cli.lm.config import LMConfig, tiny
from pyramid_cli.lm.layout import FlatLayout, TimeAlignedLayout, make_layout, special_tokens

SMALL = replace(tiny(), codebook_size=32, coarse_window=6, detail_window=3, detail_lookback=2, detail_lookahead=1,
                train_detail_frames=4, flat_window=24)


def random_levels(config: LMConfig, coarse_frames: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, config.codebook_size, (n_q, coarse_frames * r))
            for r, n_q in zip(config.frames_per_coarse, config.n_codebooks, strict=True)]


STRUCTURES = [((1, 2, 4), (1, 1, 1)), ((1, 2, 4), (2, 1, 3)), ((1,), (2,)), ((1, 3), (1, 2))]


@pytest.mark.parametrize("layout", ["time_aligned", "flat"])
@pytest.mark.parametrize(("ratios", "n_codebooks"), STRUCTURES)
@pytest.mark.parametrize("frames", [1, 5, 17])
def test_piece_round_trip(layout: str, ratios: tuple, n_codebooks: tuple, frames: int):
    config = replace(SMALL, layout=layout, frames_per_coarse=ratios, n_codebooks=n_codebooks)
    lay = make_layout(config)
    levels = random_levels(config, frames)
    seq = lay.piece(frames, levels)
    back = lay.to_levels(seq)
    assert all(np.array_equal(a, b) for a, b in zip(levels, back, strict=True))
    specials = 2 + len(ratios) - 1 if layout == "flat" else 1 + (len(ratios) > 1)
    assert len(seq) == sum(n.size for n in levels) + specials
    # every code token carries its level's stream; specials carry stream 0
    assert ((seq.streams == 0) == (seq.level < 0)).all()
    unknown = lay.piece(frames)
    assert (unknown.tokens[unknown.level >= 0] == -1).all() and (unknown.tokens[unknown.level < 0] >= 0).all()


def test_flat_order_is_the_papers():
    config = replace(SMALL, layout="flat")
    sp = special_tokens(config.codebook_size)
    levels = random_levels(config, 2)
    seq = FlatLayout(config).piece(2, levels)
    expected = [sp["BOS"], *levels[0][0], sp["SEP"], *levels[1][0], sp["SEP"], *levels[2][0], sp["EOS"]]
    assert seq.tokens.tolist() == expected
    assert seq.positions.tolist() == list(range(len(expected)))


def test_time_aligned_order_and_positions():
    config = SMALL
    levels = random_levels(config, 2)
    seq = TimeAlignedLayout(config).piece(2, levels)
    sp = special_tokens(config.codebook_size)
    a, b, c = (lv[0] for lv in levels)
    # skeleton first, then details of each moment, coarser first at equal times
    expected = [sp["BOS"], a[0], a[1], sp["SEP"], b[0], c[0], c[1], b[1], c[2], c[3],
                b[2], c[4], c[5], b[3], c[6], c[7]]
    assert seq.tokens.tolist() == expected
    assert seq.positions.tolist() == [-4, 0, 4, 0, 0, 0, 1, 2, 2, 3, 4, 4, 5, 6, 6, 7]


def test_time_aligned_attention_is_time_local():
    config = SMALL
    seq = TimeAlignedLayout(config).piece(20)
    mask = seq.attention_mask().numpy()
    assert not np.triu(mask, 1).any(), "attention must stay causal in sequence order"
    coarse_frame = np.where(seq.level == 0, seq.frame, -1)
    cframe = np.where(seq.level > 0, seq.frame // np.array(config.frames_per_coarse)[np.maximum(seq.level, 0)], -1)
    for q in np.where(seq.level > 0)[0]:
        seen_coarse = coarse_frame[mask[q] & (seq.level == 0)]
        assert seen_coarse.min() >= cframe[q] - config.detail_lookback
        assert seen_coarse.max() == min(cframe[q] + config.detail_lookahead, 19)
        seen_detail = cframe[mask[q] & (seq.level > 0)]
        assert seen_detail.min() > cframe[q] - config.detail_window
    for q in np.where(seq.level == 0)[0]:
        seen = coarse_frame[mask[q] & (seq.level == 0)]
        assert len(seen) == min(coarse_frame[q] + 1, config.coarse_window)
    # the number of keys any token sees is bounded, whatever the length of the piece
    assert mask.sum(axis=1).max() == TimeAlignedLayout(config).piece(60).attention_mask().sum(axis=1).max()


@pytest.mark.parametrize("layout", ["time_aligned", "flat"])
def test_windows_are_consistent_slices(layout: str):
    """A training window's tokens are the piece's tokens at the same positions, and away from the
    piece's ends every detail token sees as many keys as in the whole piece."""
    config = replace(SMALL, layout=layout)
    lay = make_layout(config)
    levels = random_levels(config, 40)
    piece = lay.piece(40, levels)
    lookup = {(int(lv), int(f), int(cb)): int(t) for lv, f, cb, t in
              zip(piece.level, piece.frame, piece.codebook, piece.tokens, strict=True) if lv >= 0}
    rng = np.random.default_rng(3)
    for _ in range(20):
        window = lay.window(levels, rng)
        codes = window.level >= 0
        assert all(lookup[(int(lv), int(f), int(cb))] == int(t) for lv, f, cb, t in
                   zip(window.level[codes], window.frame[codes], window.codebook[codes], window.tokens[codes],
                       strict=True))
        assert window.targets.sum() > 0
        if layout == "flat":
            assert len(window) == config.flat_window


def test_shape_mismatch_is_refused():
    with pytest.raises(InputError, match="level 1 has shape"):
        TimeAlignedLayout(SMALL).window([np.zeros((1, 4), int), np.zeros((1, 7), int), np.zeros((1, 16), int)],
                                        np.random.default_rng(0))
