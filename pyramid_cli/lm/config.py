"""LMConfig: the one dataclass that describes a pyramid language model and its token layout.

The LM reads the codes of one codec. Its config records that codec's identity (name + weights
hash, as `.pyr` files do) and the shape of its levels, so that generation refuses another
codec's tokens and can lay out a piece of any length without the codec at hand.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

from pyramid_cli.errors import UsageError
from pyramid_cli.hub.files import CONFIG_VERSION, MODEL_TYPES, check_model_header, config_from_dict

MODEL_TYPE = MODEL_TYPES["lm"]
LAYOUTS = ("time_aligned", "flat")


@dataclass(frozen=True)
class LMConfig:
    # Marks config.json as an LM (the model registry tells codecs and LMs apart by it).
    model_type: str = MODEL_TYPE
    # Version of this config's layout (hub.files.CONFIG_VERSION); loading refuses a newer one.
    version: int = CONFIG_VERSION
    # Identity of this model, recorded in generated .pyr files.
    name: str = "pyramid-lm-small"
    # Identity of the codec whose tokens it models (name + 16-hex weights hash, see hub.py).
    codec_name: str = ""
    codec_hash: str = ""
    # Codec sample rate and hop of level 0, so a piece of N seconds can be laid out.
    sample_rate: int = 22050
    coarse_hop: int = 2048
    # Frames of each level per level-0 frame (p111: 1, 2, 4) and codebooks per level.
    frames_per_coarse: tuple[int, ...] = (1, 2, 4)
    n_codebooks: tuple[int, ...] = (1, 1, 1)
    # Entries per codebook; the vocabulary adds PAD, BOS, EOS, SEP after the codes.
    codebook_size: int = 1024
    # "time_aligned" (default: windowed, seamless on long pieces) or "flat" (the paper's layout).
    layout: str = "time_aligned"
    # Transformer size (GPT-2 style, pre-norm, rotary positions).
    n_layer: int = 6
    n_head: int = 4
    d_model: int = 256
    dropout: float = 0.0
    # time_aligned: a level-0 token attends to the previous coarse_window level-0 tokens.
    coarse_window: int = 256
    # time_aligned: a detail token attends to level-0 tokens from detail_lookback frames before
    # its own level-0 frame to detail_lookahead frames after it (the skeleton is complete by then) ...
    detail_lookback: int = 8
    detail_lookahead: int = 4
    # ... and to detail tokens of the last detail_window level-0 frames.
    detail_window: int = 16
    # time_aligned training windows: detail tokens of this many level-0 frames per window.
    train_detail_frames: int = 24
    # flat: causal attention over the last flat_window tokens (training windows are this long).
    flat_window: int = 512
    # Rotary embedding base.
    rope_base: float = 10000.0

    def __post_init__(self) -> None:
        for key in ("frames_per_coarse", "n_codebooks"):
            if not isinstance(getattr(self, key), tuple):
                object.__setattr__(self, key, tuple(getattr(self, key)))
        if self.model_type != MODEL_TYPE:
            raise UsageError(f"LM config: model_type must be {MODEL_TYPE!r}, got {self.model_type!r}")
        if not 1 <= self.version <= CONFIG_VERSION:
            raise UsageError(f"LM config: version must be in 1..{CONFIG_VERSION}, got {self.version}")
        if self.layout not in LAYOUTS:
            raise UsageError(f"LM config: layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if len(self.frames_per_coarse) != len(self.n_codebooks) or not self.n_codebooks:
            raise UsageError("LM config: frames_per_coarse and n_codebooks need one entry per level")
        if self.frames_per_coarse[0] != 1 or any(r < 1 for r in self.frames_per_coarse):
            raise UsageError(f"LM config: frames_per_coarse must start at 1, got {self.frames_per_coarse}")
        if any(n < 1 for n in self.n_codebooks):
            raise UsageError(f"LM config: n_codebooks must be positive, got {self.n_codebooks}")
        positive = ("sample_rate", "coarse_hop", "codebook_size", "n_layer", "n_head", "d_model",
                    "coarse_window", "detail_window", "train_detail_frames", "flat_window")
        for key in positive:
            if getattr(self, key) < 1:
                raise UsageError(f"LM config: {key} must be positive, got {getattr(self, key)}")
        if self.detail_lookback < 0 or self.detail_lookahead < 0:
            raise UsageError("LM config: detail_lookback and detail_lookahead must not be negative")
        if self.d_model % self.n_head or (self.d_model // self.n_head) % 2:
            raise UsageError("LM config: d_model / n_head must be an even integer (rotary embeddings)")
        if not 0.0 <= self.dropout < 1.0:
            raise UsageError(f"LM config: dropout must be in [0, 1), got {self.dropout}")

    # ---- derived quantities -------------------------------------------------------------------

    @property
    def n_levels(self) -> int:
        return len(self.n_codebooks)

    @property
    def vocab_size(self) -> int:
        """Codes plus the four special tokens."""
        return self.codebook_size + 4

    @property
    def n_streams(self) -> int:
        """Stream embeddings: 0 for special tokens, then one per (level, codebook)."""
        return 1 + sum(self.n_codebooks)

    @property
    def coarse_frame_rate(self) -> float:
        return self.sample_rate / self.coarse_hop

    @property
    def tokens_per_coarse_frame(self) -> list[int]:
        """Tokens each level adds per level-0 frame."""
        return [r * n for r, n in zip(self.frames_per_coarse, self.n_codebooks, strict=True)]

    def tokens_per_second(self, level: int) -> float:
        return self.tokens_per_coarse_frame[level] * self.coarse_frame_rate

    def coarse_frames_for(self, seconds: float) -> int:
        """Level-0 frames that cover ``seconds`` of audio (at least one)."""
        return max(1, math.ceil(seconds * self.coarse_frame_rate - 1e-9))

    def parameters_estimate(self) -> int:
        """Approximate parameter count (embeddings, blocks and the output head)."""
        d = self.d_model
        return self.vocab_size * d * 2 + self.n_streams * d + self.n_layer * 12 * d * d

    # ---- serialisation ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LMConfig:
        """Build a config from ``to_dict`` output; unknown, missing or invalid keys raise FormatError."""
        if isinstance(data, dict):
            data = check_model_header(data, "lm", "LM config")
        return config_from_dict(cls, data, "LM config", limits=LIMITS)

    def with_codec(self, name: str, digest: str, sample_rate: int, hop_lengths: tuple[int, ...] | list[int],
                   n_codebooks: tuple[int, ...] | list[int], codebook_size: int) -> LMConfig:
        """This config, fitted to a codec's identity and level structure."""
        hops = list(hop_lengths)
        if any(hops[0] % hop for hop in hops):
            raise UsageError(f"codec hops {hops} are not divisors of the level-0 hop")
        return replace(self, codec_name=name, codec_hash=digest, sample_rate=sample_rate, coarse_hop=hops[0],
                       frames_per_coarse=tuple(hops[0] // hop for hop in hops), n_codebooks=tuple(n_codebooks),
                       codebook_size=codebook_size)


# The largest value a config file may give each integer field (tuples: each entry), far above any
# real model; a file cannot make the loader build an absurd model (issue 13).
LIMITS: dict[str, int] = {"sample_rate": 384_000, "coarse_hop": 2**20, "frames_per_coarse": 4096, "n_codebooks": 64,
                          "codebook_size": 65_536, "n_layer": 256, "n_head": 256, "d_model": 32_768,
                          "coarse_window": 2**20, "detail_lookback": 2**16, "detail_lookahead": 2**16,
                          "detail_window": 2**16, "train_detail_frames": 2**16, "flat_window": 2**20}


# ---- presets -------------------------------------------------------------------------------------


def small() -> LMConfig:
    """CPU-sized default: 4 layers x 256 wide (~3.7 M parameters), 12 s of skeleton context and
    windows of about 320 tokens (flat: 320), sized for training on two CPU cores."""
    return LMConfig(n_layer=4, coarse_window=128, train_detail_frames=32, flat_window=320)


def tiny() -> LMConfig:
    """For tests and smoke runs: 2 layers x 64 wide."""
    return LMConfig(name="pyramid-lm-tiny", n_layer=2, n_head=2, d_model=64, coarse_window=64,
                    detail_window=8, train_detail_frames=12, flat_window=128)


def paper() -> LMConfig:
    """The paper's GPT: 6 layers, 8 heads, 768 wide (~40 M parameters), 14,000-token flat context."""
    return LMConfig(name="pyramid-lm-paper", layout="flat", n_layer=6, n_head=8, d_model=768, dropout=0.1,
                    flat_window=14_000, coarse_window=2048)


PRESETS: dict[str, Callable[[], LMConfig]] = {"small": small, "tiny": tiny, "paper": paper}


def preset(name: str) -> LMConfig:
    if name not in PRESETS:
        raise UsageError(f"unknown LM preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]()
