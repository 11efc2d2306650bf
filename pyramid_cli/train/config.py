"""The settings of a training run, saved resolved as ``<run>/config.json``: ``CodecTrainConfig`` and
``LMTrainConfig`` over what both share (``TrainSettings``). Kept apart from the loops so that every
part of a trainer (its loss, its GAN, its loop) reads its settings from here, not from each other.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, TypeVar

from pyramid_cli.codec import CodecConfig, preset
from pyramid_cli.codec.discriminators import DiscriminatorConfig, discriminator_preset
from pyramid_cli.errors import FormatError, UsageError
from pyramid_cli.lm.config import LAYOUTS, LMConfig
from pyramid_cli.lm.config import preset as lm_preset
from pyramid_cli.train.common import SCHEDULES, learning_rate

Settings = TypeVar("Settings", bound="TrainSettings")


class TrainSettings:
    """What the training configs (plain dataclasses, saved as ``<run>/config.json``) share:
    JSON round trips that name the valid keys on a typo, range checks with uniform messages, and
    the fields the training loop (``train.loop``) reads, which every subclass defines."""

    steps: int  # total optimisation steps of the run
    lr: float  # peak learning rate
    warmup_steps: int
    schedule: str
    lr_decay: float
    min_lr_ratio: float
    log_every: int  # steps between train records
    eval_every: int  # steps between evaluations (0 = never)
    checkpoint_every: int  # steps between checkpoints (0 = only at the end)
    keep_last: int  # newest checkpoints kept, plus the best
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))  # type: ignore[call-overload]  # subclasses are dataclasses

    @classmethod
    def from_dict(cls: type[Settings], data: dict[str, Any]) -> Settings:
        """Build from a (possibly partial) dict; unknown keys raise UsageError listing the valid ones."""
        names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise UsageError(f"unknown training setting(s) {', '.join(unknown)}; valid: {', '.join(names)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise UsageError(f"bad training setting: {exc}") from exc

    def check_ranges(self, positive: tuple[str, ...], non_negative: tuple[str, ...]) -> None:
        """Raise UsageError naming the first setting outside its range; ``betas`` must hold two values."""
        for key in positive:
            if not getattr(self, key) > 0:
                raise UsageError(f"{key} must be positive, got {getattr(self, key)}")
        for key in non_negative:
            if getattr(self, key) < 0:
                raise UsageError(f"{key} must not be negative, got {getattr(self, key)}")
        betas = getattr(self, "betas", (0.0, 0.0))
        if len(betas) != 2:
            raise UsageError(f"betas needs two values, got {betas}")

    def lr_at(self, step: int) -> float:
        """The learning rate of optimisation step ``step`` under this run's schedule."""
        return learning_rate(step, self.lr, self.warmup_steps, self.schedule, self.steps, self.lr_decay,
                             self.min_lr_ratio)


@dataclass
class CodecTrainConfig(TrainSettings):
    """Everything a codec training run needs; saved resolved as ``<run>/config.json``."""

    model: str | dict[str, Any] = "p111_small"  # preset name or a full CodecConfig dict
    crop_seconds: float = 1.0  # length of each training crop
    batch_size: int = 8  # crops per step and per rank
    steps: int = 10_000  # total optimisation steps of the run (raise it and rerun to extend)
    lr: float = 1e-4  # peak learning rate (DAC: 1e-4)
    betas: tuple[float, float] = (0.8, 0.99)  # AdamW betas (DAC)
    weight_decay: float = 0.01  # AdamW decoupled weight decay
    grad_clip: float = 1000.0  # max global grad norm (DAC clips the generator at 1e3)
    warmup_steps: int = 200  # linear LR warm-up
    schedule: str = "exponential"  # after warm-up: exponential | cosine | constant
    lr_decay: float = 0.999996  # exponential: factor per step (DAC)
    min_lr_ratio: float = 0.1  # cosine: final LR as a fraction of lr
    mel_weight_initial: float = 2.0  # mel loss weight during the mel warm-up (paper: 2)
    mel_weight: float = 10.0  # mel loss weight afterwards (paper: 10)
    mel_warmup_steps: int = 1000  # steps before the mel weight is raised
    stft_weight: float = 0.0  # multi-scale STFT loss weight (0 = off)
    waveform_weight: float = 0.0  # waveform L1 weight (0 = off)
    pitch_weight: float = 0.0  # spectral codecs: semitone-band log-magnitude loss (codec_parts.spectral_losses)
    note_weight: float = 1.0  # codecs with a note head: BCE of its note logits against the MIDI piano roll
    note_pos_weight: float = 1.0  # weight of the sounding keys in that BCE (> 1 trades precision for recall)
    note_octave_weight: float = 1.0  # weight of silent keys an octave or two from a sounding one in that BCE
    note_top_weight: float = 1.0  # weight of each frame's highest sounding key (the tune) in that BCE
    note_level_weights: tuple[float, ...] = ()  # per decoded level, a factor on note_weight (() = 1 each)
    notes_from: str | None = None  # codecs with a note head: the MIDI folder the corpus was built from
    partial_weight: float = 0.0  # note head: L1 of log partial amplitudes vs the target's (sounding keys)
    partials_from_fits_only: bool = False  # note head: only the partial loss (give it a weight) trains the amplitudes
    onset_weight: float = 0.0  # note head with note_onsets: BCE of its re-strike logits against MIDI onsets
    onset_pos_weight: float = 1.0  # weight of the onsets in that BCE (onsets are rare: 1 in ~400 key-frames)
    code_note_weight: float = 0.0  # codec with code_notes: BCE of its code probes vs the MIDI roll, summed
    # over the probed levels (sounding keys weighted by note_pos_weight)
    encoder_note_weight: float = 0.0  # codec with encoder_notes: BCE of its finest-features probe vs the
    # MIDI roll (sounding keys weighted by note_pos_weight, the frame's top key by note_top_weight)
    freeze_tokenizer: bool = False  # decoder only: the start model's codes, .pyr files and LMs stay valid
    commitment_weight: float = 0.25  # RVQ commitment loss (DAC)
    diversity_weight: float = 0.0  # codebook diversity loss against collapse (wav2vec 2.0's; 0 = off)
    codebook_weight: float = 1.0  # RVQ codebook loss (DAC)
    levels_per_step: str = "random"  # "random": decode one random level per step (paper's code); "all"
    eval_every: int = 500  # steps between validation passes (0 = never)
    eval_clips: int = 16  # fixed validation crops
    eval_seconds: float = 2.0  # length of each validation crop
    log_every: int = 10  # steps between metrics.jsonl records
    checkpoint_every: int = 500  # steps between checkpoints (also saved at the end and on stop)
    keep_last: int = 3  # newest checkpoints kept, plus the best
    seed: int = 0  # fixes init, crops, level choice and reseeding
    num_workers: int = 0  # DataLoader worker processes (0: read in the training process)
    reseed_dead_codes_every: int = 200  # steps between dead-code reseeds (0 = never)
    silence_db: float = -45.0  # crops quieter than this RMS (dBFS) are redrawn
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    bf16: bool = True  # bf16 autocast of the model on CUDA (losses stay float32)
    flush_denormal: bool = True  # CPU: denormal floats → 0; quiet music made steps up to 15x slower without it
    gan: bool = False  # adversarial training (multi-period + multi-band STFT discriminators, DAC); ~3x CPU time
    gan_start_step: int = 0  # steps of reconstruction-only training before the discriminator joins
    adv_weight: float = 1.0  # generator's least-squares adversarial loss (DAC: 1)
    feat_weight: float = 2.0  # discriminator feature-matching L1 loss (DAC: 2)
    disc_grad_clip: float = 10.0  # max global grad norm of the discriminator (DAC: 10)
    discriminator: str | dict[str, Any] = "small"  # preset (small | paper = DAC widths) or DiscriminatorConfig fields

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # type: ignore[assignment]  # JSON gives lists
        self.note_level_weights = tuple(self.note_level_weights)
        if any(not isinstance(w, (int, float)) or w < 0 for w in self.note_level_weights):
            raise UsageError(f"note_level_weights must be non-negative numbers, got {self.note_level_weights}")
        self.discriminator_config()  # a bad preset name or key fails here, not mid-run
        if self.levels_per_step not in ("random", "all"):
            raise UsageError(f"levels_per_step must be 'random' or 'all', got {self.levels_per_step!r}")
        if self.schedule not in SCHEDULES:
            raise UsageError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        self.check_ranges(
            positive=("crop_seconds", "batch_size", "lr", "eval_clips", "eval_seconds", "log_every", "keep_last",
                      "note_pos_weight", "onset_pos_weight", "note_octave_weight", "note_top_weight"),
            non_negative=("steps", "warmup_steps", "mel_warmup_steps", "eval_every", "checkpoint_every",
                          "num_workers", "reseed_dead_codes_every", "grad_clip", "gan_start_step", "adv_weight",
                          "feat_weight", "disc_grad_clip", "diversity_weight", "pitch_weight", "note_weight",
                          "partial_weight", "onset_weight", "code_note_weight",
                          "encoder_note_weight"))
        if self.freeze_tokenizer and self.reseed_dead_codes_every:
            raise UsageError("freeze_tokenizer keeps the codebooks as they are: set reseed_dead_codes_every=0")

    def codec_config(self) -> CodecConfig:
        """The model architecture this config names."""
        if isinstance(self.model, str):
            return preset(self.model)
        try:
            return CodecConfig.from_dict(self.model)
        except FormatError as exc:
            raise UsageError(f"model: {exc}") from exc

    def discriminator_config(self) -> DiscriminatorConfig:
        """The GAN discriminator this config names (a preset, or fields over the "small" defaults)."""
        if isinstance(self.discriminator, str):
            return discriminator_preset(self.discriminator)
        return DiscriminatorConfig.from_dict(self.discriminator)


@dataclass
class LMTrainConfig(TrainSettings):
    """Everything an LM training run needs; saved resolved as ``<run>/config.json``."""

    model: str | dict[str, Any] = "small"  # preset name (small, tiny, paper) or a full LMConfig dict
    layout: str | None = None  # override the preset's layout: time_aligned | flat
    batch_size: int = 16  # windows per step and per rank
    steps: int = 5000  # total optimisation steps (raise it and rerun to extend)
    lr: float = 1e-3  # peak AdamW learning rate
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    warmup_steps: int = 200
    schedule: str = "cosine"  # cosine | exponential | constant
    lr_decay: float = 0.9999  # exponential only
    min_lr_ratio: float = 0.1  # cosine: final LR fraction
    eval_every: int = 500  # steps between validation passes (0 = never)
    eval_windows: int = 64  # fixed validation windows
    log_every: int = 10
    checkpoint_every: int = 500
    keep_last: int = 3
    seed: int = 0
    device: str = "auto"
    bf16: bool = True  # bf16 autocast on CUDA

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # type: ignore[assignment]  # JSON gives lists
        if self.layout is not None and self.layout not in LAYOUTS:
            raise UsageError(f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if self.schedule not in SCHEDULES:
            raise UsageError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        self.check_ranges(positive=("batch_size", "lr", "eval_windows", "log_every", "keep_last"),
                          non_negative=("steps", "warmup_steps", "eval_every", "checkpoint_every", "grad_clip"))

    def lm_config(self) -> LMConfig:
        if isinstance(self.model, str):
            config = lm_preset(self.model)
        else:
            try:
                config = LMConfig.from_dict(self.model)
            except FormatError as exc:
                raise UsageError(f"model: {exc}") from exc
        return replace(config, layout=self.layout) if self.layout else config
