"""Token layouts: how the levels of a piece become one token sequence, and who attends to whom.

Two layouts, one interface (``piece``, ``window``, ``to_levels``), both producing a
``TokenSequence`` whose ``ranges`` say, for every query token, which earlier tokens it may attend
to. The same ranges give the dense mask of training and the key slices of cached generation, so
the two cannot drift apart.

**flat** (the paper, Section 3.4)::

    [BOS] l0 l0 l0 ... [SEP] l1 l1 l1 ... [SEP] l2 l2 l2 ... [EOS]        positions 0, 1, 2, ...

Causal attention over the last ``flat_window`` tokens. With a window shorter than the piece
(14,000 tokens for 3 minutes) a level-2 token no longer sees the skeleton it should follow.

**time_aligned** (this project's default)::

    coarse section             detail section
    [BOS] a0 a1 a2 a3 ...      [SEP] b0 c0 c1 b1 c2 c3 | b2 c4 c5 b3 c6 c7 | ...
     -4   0  4  8  12           0    0  0  1  2  2  3  | 4  4  5  6  6  7       (positions)

    a = level 0, b = level 1, c = level 2; a position is a token's time in finest frames.

The whole level-0 skeleton comes first (abstract to detail, as in the paper), then the detail
levels interleaved in time order. A level-0 token attends to the previous ``coarse_window``
level-0 tokens; a detail token attends to the level-0 tokens from ``detail_lookback`` frames
before to ``detail_lookahead`` frames after its own moment, and to the detail tokens of the last
``detail_window`` level-0 frames. Every token therefore sees a bounded, time-local context
whatever the length of the piece: a model trained on short windows sees at generation exactly
the context shapes it was trained on, so 3 minutes and more come out without restarts or seams.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pyramid_cli.errors import InputError
from pyramid_cli.lm.config import LMConfig


def special_tokens(codebook_size: int) -> dict[str, int]:
    """PAD, BOS, EOS and SEP follow the codes in the vocabulary."""
    return {"PAD": codebook_size, "BOS": codebook_size + 1, "EOS": codebook_size + 2, "SEP": codebook_size + 3}


def key_mask(ranges: np.ndarray | torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """The one translation of layout ranges into attention: (Q, 4) ranges (each query sees keys
    [r0, r1) and [r2, r3)) and (K,) key indices → (Q, K) bool, True where the query may attend."""
    r = torch.as_tensor(ranges, device=keys.device)
    j = keys[None, :]
    return ((j >= r[:, :1]) & (j < r[:, 1:2])) | ((j >= r[:, 2:3]) & (j < r[:, 3:4]))


def padded_key_slots(row: torch.Tensor, offsets: torch.Tensor, own: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One query's ranges ``row`` (4,) as a fixed number of cache slots: (W,) slot indices (the keys
    of the first range, then of the second) and (W,) bool, True for a real slot. ``offsets`` is
    ``arange(W)``; padding repeats the query's own slot ``own`` (always written) and is masked out."""
    low, high, low2, high2 = row.unbind()
    first = high - low
    slots = torch.where(offsets < first, low + offsets, low2 + offsets - first)
    visible = offsets < first + (high2 - low2).clamp(min=0)
    return torch.where(visible, slots, own), visible


@dataclass
class TokenSequence:
    """One laid-out sequence; every field is (L,) except ``ranges`` (L, 4).

    ``tokens`` is -1 where a token is still to be generated. ``level``, ``codebook`` and
    ``frame`` (the frame index within its own level) are -1 for special tokens. Query ``i``
    attends to keys ``ranges[i, 0]:ranges[i, 1]`` and ``ranges[i, 2]:ranges[i, 3]``.
    """

    tokens: np.ndarray
    positions: np.ndarray
    streams: np.ndarray
    level: np.ndarray
    codebook: np.ndarray
    frame: np.ndarray
    ranges: np.ndarray

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def targets(self) -> np.ndarray:
        """(L,) bool: codes predicted from the token before them (specials are laid out, not sampled)."""
        keep = self.level >= 0
        keep[0] = False
        return keep

    def attention_mask(self) -> torch.Tensor:
        """(L, L) bool, True where query i may attend to key j."""
        return key_mask(self.ranges, torch.arange(len(self)))

    def slice(self, start: int, end: int) -> TokenSequence:
        """Tokens start:end with ranges re-based (a range clipped at ``start``)."""
        ranges = np.clip(self.ranges[start:end] - start, 0, None)
        return TokenSequence(self.tokens[start:end], self.positions[start:end], self.streams[start:end],
                             self.level[start:end], self.codebook[start:end], self.frame[start:end], ranges)


class _Builder:
    """Appends tokens with their metadata; ``stream`` numbering: 0 special, then (level, codebook)."""

    def __init__(self, config: LMConfig) -> None:
        self.offsets = np.concatenate([[1], 1 + np.cumsum(config.n_codebooks)[:-1]]).astype(np.int64)
        self.specials = special_tokens(config.codebook_size)
        self.cols: dict[str, list[np.ndarray]] = {k: [] for k in ("tokens", "positions", "streams", "level",
                                                                  "codebook", "frame")}

    def special(self, name: str, position: int) -> None:
        self.add(np.array([self.specials[name]]), np.array([position]), np.array([-1]), np.array([-1]),
                 np.array([-1]))

    def add(self, tokens: np.ndarray, positions: np.ndarray, level: np.ndarray, codebook: np.ndarray,
            frame: np.ndarray) -> None:
        streams = np.where(level >= 0, self.offsets[np.maximum(level, 0)] + codebook, 0)
        for key, value in zip(("tokens", "positions", "streams", "level", "codebook", "frame"),
                              (tokens, positions, streams, level, codebook, frame), strict=True):
            self.cols[key].append(np.asarray(value, dtype=np.int64))

    def build(self, ranges: np.ndarray) -> TokenSequence:
        cols = {k: np.concatenate(v) if v else np.zeros(0, np.int64) for k, v in self.cols.items()}
        return TokenSequence(**cols, ranges=ranges)


def _level_tokens(codes: np.ndarray | None, n_codebooks: int, first: int, last: int) -> np.ndarray:
    """Codes of frames first:last, frame-major then codebook: (frames * n_codebooks,); -1 if unknown."""
    if codes is None:
        return np.full((last - first) * n_codebooks, -1, dtype=np.int64)
    return np.asarray(codes[:, first:last], dtype=np.int64).T.reshape(-1)


def _check_levels(config: LMConfig, levels: list[np.ndarray]) -> int:
    """Number of level-0 frames of ``levels``; InputError when their shapes do not fit the config."""
    if len(levels) != config.n_levels:
        raise InputError(f"the LM models {config.n_levels} levels, got {len(levels)}")
    coarse = levels[0].shape[1]
    for i, (codes, ratio, n_q) in enumerate(zip(levels, config.frames_per_coarse, config.n_codebooks, strict=True)):
        if codes.shape != (n_q, coarse * ratio):
            raise InputError(f"level {i} has shape {tuple(codes.shape)}, expected ({n_q}, {coarse * ratio})")
    return coarse


class FlatLayout:
    """The paper's ``[BOS] level 0 [SEP] level 1 [SEP] ... [EOS]`` with sliding-window causal attention."""

    def __init__(self, config: LMConfig) -> None:
        self.config = config

    def piece(self, coarse_frames: int, levels: list[np.ndarray] | None = None) -> TokenSequence:
        """The whole piece (``levels`` None: every code unknown)."""
        cfg = self.config
        b = _Builder(cfg)
        b.special("BOS", 0)
        for i, (ratio, n_q) in enumerate(zip(cfg.frames_per_coarse, cfg.n_codebooks, strict=True)):
            if i:
                b.special("SEP", 0)
            frames = coarse_frames * ratio
            b.add(_level_tokens(None if levels is None else levels[i], n_q, 0, frames), np.zeros(frames * n_q),
                  np.full(frames * n_q, i), np.tile(np.arange(n_q), frames), np.repeat(np.arange(frames), n_q))
        b.special("EOS", 0)
        seq = b.build(np.zeros((0, 4), np.int64))
        seq.positions = np.arange(len(seq), dtype=np.int64)
        seq.ranges = self._ranges(len(seq))
        return seq

    def _ranges(self, length: int) -> np.ndarray:
        i = np.arange(length)
        ranges = np.zeros((length, 4), np.int64)
        ranges[:, 0] = np.maximum(0, i - self.config.flat_window + 1)
        ranges[:, 1] = i + 1
        return ranges

    def window(self, levels: list[np.ndarray], rng: np.random.Generator) -> TokenSequence:
        """A random training crop of ``flat_window`` tokens."""
        seq = self.piece(_check_levels(self.config, levels), levels)
        length = min(len(seq), self.config.flat_window)
        start = int(rng.integers(0, len(seq) - length + 1))
        crop = seq.slice(start, start + length)
        crop.ranges = self._ranges(length)
        return crop

    def to_levels(self, seq: TokenSequence) -> list[np.ndarray]:
        return _to_levels(self.config, seq)


class TimeAlignedLayout:
    """Global level-0 skeleton, then time-interleaved detail levels with time-local attention."""

    def __init__(self, config: LMConfig) -> None:
        self.config = config
        self.finest = max(config.frames_per_coarse)

    def piece(self, coarse_frames: int, levels: list[np.ndarray] | None = None) -> TokenSequence:
        """The whole piece (``levels`` None: every code unknown)."""
        return self._build(levels, (0, coarse_frames), (0, coarse_frames))

    def window(self, levels: list[np.ndarray], rng: np.random.Generator) -> TokenSequence:
        """A training window: ``coarse_window`` level-0 frames and the detail tokens of
        ``train_detail_frames`` of them, placed so that (away from the piece's ends) every detail
        token has its whole look-back and look-ahead of level-0 context, as at generation."""
        cfg = self.config
        total = _check_levels(cfg, levels)
        n_detail = min(cfg.train_detail_frames, total)
        n_coarse = min(cfg.coarse_window, total)
        b = int(rng.integers(0, total - n_detail + 1))
        a_low = max(0, min(b + n_detail + cfg.detail_lookahead, total) - n_coarse)
        a_high = min(max(0, b - cfg.detail_lookback), total - n_coarse)
        a = a_low if a_high < a_low else int(rng.integers(a_low, a_high + 1))
        # The detail span must lie inside the coarse span; shrink it where the piece is too short.
        b, b_end = max(b, a), min(b + n_detail, a + n_coarse)
        return self._build(levels, (a, a + n_coarse), (b, b_end))

    def _build(self, levels: list[np.ndarray] | None, coarse: tuple[int, int],
               detail: tuple[int, int]) -> TokenSequence:
        cfg = self.config
        b = _Builder(cfg)
        first, last = coarse
        coarse_frame = [np.array([-1])] if first == 0 else []
        if first == 0:
            b.special("BOS", -self.finest)
        n_q0 = cfg.n_codebooks[0]
        frames = np.repeat(np.arange(first, last), n_q0)
        b.add(_level_tokens(None if levels is None else levels[0], n_q0, first, last), frames * self.finest,
              np.zeros_like(frames), np.tile(np.arange(n_q0), last - first), frames)
        coarse_frame.append(frames)
        n_coarse = sum(len(f) for f in coarse_frame)

        # Detail tokens sorted by (time, level, codebook): coarser first at equal times.
        parts = []
        for i in range(1, cfg.n_levels):
            ratio, n_q = cfg.frames_per_coarse[i], cfg.n_codebooks[i]
            f = np.repeat(np.arange(detail[0] * ratio, detail[1] * ratio), n_q)
            tokens = _level_tokens(None if levels is None else levels[i], n_q, detail[0] * ratio, detail[1] * ratio)
            parts.append((f * (self.finest // ratio), np.full_like(f, i), np.tile(np.arange(n_q), len(f) // n_q),
                          f, tokens, f // ratio))
        if parts:
            time, level, codebook, frame, tokens, cframe = (np.concatenate(c) for c in zip(*parts, strict=True))
            order = np.lexsort((codebook, level, time))
            time, level, codebook, frame, tokens, cframe = (
                x[order] for x in (time, level, codebook, frame, tokens, cframe))
            b.special("SEP", detail[0] * self.finest)
            b.add(tokens, time, level, codebook, frame)
            detail_frame = np.concatenate([[detail[0]], cframe])
        else:
            detail_frame = np.zeros(0, np.int64)
        all_coarse = np.concatenate(coarse_frame)
        return b.build(self._ranges(all_coarse, detail_frame, n_coarse))

    def _ranges(self, coarse_frame: np.ndarray, detail_frame: np.ndarray, n_coarse: int) -> np.ndarray:
        cfg = self.config
        ranges = np.zeros((n_coarse + len(detail_frame), 4), np.int64)
        i = np.arange(n_coarse)
        ranges[:n_coarse, 0] = np.searchsorted(coarse_frame, coarse_frame - cfg.coarse_window, side="right")
        ranges[:n_coarse, 1] = i + 1
        j = np.arange(n_coarse, n_coarse + len(detail_frame))
        ranges[n_coarse:, 0] = np.searchsorted(coarse_frame, detail_frame - cfg.detail_lookback, side="left")
        ranges[n_coarse:, 1] = np.searchsorted(coarse_frame, detail_frame + cfg.detail_lookahead, side="right")
        ranges[n_coarse:, 2] = n_coarse + np.searchsorted(detail_frame, detail_frame - cfg.detail_window,
                                                          side="right")
        ranges[n_coarse:, 3] = j + 1
        return ranges

    def to_levels(self, seq: TokenSequence) -> list[np.ndarray]:
        return _to_levels(self.config, seq)


def _to_levels(config: LMConfig, seq: TokenSequence) -> list[np.ndarray]:
    """Scatter a whole piece's codes back to per-level (n_codebooks, frames) arrays."""
    out = []
    for i, n_q in enumerate(config.n_codebooks):
        where = seq.level == i
        frames = int(seq.frame[where].max()) + 1 if where.any() else 0
        codes = np.full((n_q, frames), -1, dtype=np.int64)
        codes[seq.codebook[where], seq.frame[where]] = seq.tokens[where]
        out.append(codes)
    return out


Layout = FlatLayout | TimeAlignedLayout


def make_layout(config: LMConfig) -> Layout:
    return FlatLayout(config) if config.layout == "flat" else TimeAlignedLayout(config)
