"""CodecConfig: the one dataclass that describes a PyramidCodec (or, with one level, a DAC).

Level 0 is the coarsest level (paper notation). The backbone encoder down-samples by
prod(encoder_rates) (the *base hop*); the pyramid then down-samples the base features
pyramid_rates[0] times to get the finest level N-1, pyramid_rates[1] more for level N-2, and so
on up to level 0 (DESIGN §2, Alg. 1). With no pyramid rates the base features are the single
level and the model is exactly a DAC.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

from pyramid_cli.errors import UsageError
from pyramid_cli.hub.files import CONFIG_VERSION, MODEL_TYPES, check_model_header, config_from_dict

CODEC_MODEL_TYPE = MODEL_TYPES["codec"]


@dataclass(frozen=True)
class CodecConfig:
    # Marks config.json as a codec (hub.files.MODEL_TYPES) and the version of its layout; loading
    # refuses another type or a newer version. Configs written before these existed have neither.
    model_type: str = CODEC_MODEL_TYPE
    version: int = CONFIG_VERSION
    # Identity of the architecture; recorded in checkpoints and .pyr files.
    name: str = "pyramid-22k-p111"
    # Audio sample rate in Hz (the paper's corpus is 22,050 Hz mono).
    sample_rate: int = 22050
    # Channels after the 7-tap input conv; doubled by every encoder block (DAC uses 64).
    encoder_dim: int = 64
    # Strides of the backbone encoder blocks; their product is the base hop.
    encoder_rates: tuple[int, ...] = (4, 4, 4, 4)
    # Channels after the decoder's input conv; halved by every decoder block (DAC uses 1536).
    decoder_dim: int = 1536
    # Strides of the pyramid down-sampling blocks, finest first; () = a single-level DAC.
    pyramid_rates: tuple[int, ...] = (2, 2, 2)
    # Width of the continuous latent that every level is quantised from (DAC: 64 * 2**4).
    latent_dim: int = 1024
    # Residual codebooks per level, level 0 (coarsest) first.
    n_codebooks: tuple[int, ...] = (1, 1, 1)
    # Entries per codebook (10-bit codes).
    codebook_size: int = 1024
    # Dimension of the factorised code space the lookup runs in (DAC: 8).
    codebook_dim: int = 8
    # Fraction of a batch trained with a random number of codebooks per level (DAC: 0.5).
    quantizer_dropout: float = 0.0
    # Bias in each VQ stage's input projection (DAC has one; see quantize.VectorQuantize).
    codebook_projection_bias: bool = True
    # Residual units (dilations 1, 3, 9) in each pyramid down-sampling block.
    pyramid_residual_units: int = 1
    # "waveform": DAC's convolutional encoder and decoder at the audio rate (the paper's);
    # "spectral": frame-rate ConvNeXt encoder and decoder on 2,048-point log-magnitude STFTs, with
    # phase reconstructed at decode time (codec/spectral.py). Spectral: encoder_rates is the one
    # STFT hop of the encoder, encoder_dim / decoder_dim the ConvNeXt widths.
    architecture: str = "waveform"
    # Spectral only: STFT size of the encoder input and the decoder output.
    n_fft: int = 2048
    # Spectral only: ConvNeXt blocks in the encoder and in the decoder.
    encoder_layers: int = 4
    decoder_layers: int = 8
    # Spectral only: Griffin-Lim iterations of the phase reconstruction at decode time. 16 keeps
    # the note codec's note F1, chroma, ViSQOL and mel of 32 at half the cost (20 test clips); 8
    # loses 0.02 of note F1.
    griffin_lim_iters: int = 16
    # Values per dimension of finite scalar quantisation (quantize.ScalarQuantize) instead of the
    # cosine-lookup VQ; their product must equal codebook_size. () = VQ (DAC's).
    fsq_levels: tuple[int, ...] = ()
    # Spectral only: > 0 adds a note head (codec/spectral.py NoteHead) whose notes sound through this
    # many harmonic partials each; trained against MIDI piano rolls, so the codes must carry the notes.
    harmonics: int = 0
    # Note head only: each key gets its own partial profile besides the shared one (spectral.NoteHead).
    key_partials: bool = False
    # Note head only: a logit per key and frame that the key is struck again in the next frame, which
    # silences its partials for that frame (spectral.NoteHead); without it a repeated note or a
    # unison of two instruments decodes as one held note.
    note_onsets: bool = False
    # Note head only, decoding only: a key's gate is sigmoid(logit) ** note_gate_power. The magnitude
    # losses fit the expected spectrum, so the head renders a note it is unsure of (an octave, say)
    # at partial level, and the transcription hears those as extra notes. Above 1, unsure notes
    # render more quietly (p = 0.5 gives 0.35 at 1.5) and sure ones keep their level. Training
    # renders with 1, the spectrum the losses fit; a fine-tune keeps its start model's value.
    note_gate_power: float = 1.0
    # Note head only, training only: a linear probe from level 0's quantized latent (and the finer
    # levels', code_note_levels) to the 88 keys (``PyramidCodec.code_note_heads``), trained against the
    # MIDI roll (train setting code_note_weight), so that the coarsest codes carry the notes
    # themselves, as Mimi distils a semantic model into its first codebook. Linear probes found the
    # encoder's output keeps less of the notes than its input STFT (codec card); the decoder's note
    # loss reaches level 0 only through the whole decoder.
    code_notes: bool = False
    # With code_notes: how many levels, from level 0, have a code probe, each reading its pyramid latent
    # R[i] (what the decoder reads from levels 0..i). Level 0's 10 bits per 93 ms cannot hold every
    # note (13.7 notes/s struck), and the decoder's note loss alone left the finer levels' bits on the
    # upper bands (codec card, "Encoder notes"); a probe per level asks each to add the notes it can.
    code_note_levels: int = 1
    # Note head only, training only: a linear probe from the finest level's features (the encoder's
    # output once down-sampled to the roll's rate, before any quantizer) to the 88 keys
    # (``PyramidCodec.encoder_note_head``; train setting encoder_note_weight). Probes found the
    # encoder's output keeps 0.16 of the input STFT's 0.58 frame F1 at MIDI 72-83, where the tune
    # lies (codec card), and losses through the quantizer and the decoder move it slowly.
    encoder_notes: bool = False
    # Weights hashes (hub.identity.weights_hash) of codecs whose encoder and quantizers this one has
    # unchanged: a decoder fine-tuned with a frozen tokenizer (train setting freeze_tokenizer). Their
    # tokens are this codec's tokens, so their .pyr files, token sets and LMs are accepted.
    same_tokens_as: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.model_type != CODEC_MODEL_TYPE or not 1 <= self.version <= CONFIG_VERSION:
            raise UsageError(f"codec config: model_type must be {CODEC_MODEL_TYPE!r} and version in "
                             f"1..{CONFIG_VERSION}, got {self.model_type!r} version {self.version}")
        for key in ("encoder_rates", "pyramid_rates", "n_codebooks", "fsq_levels", "same_tokens_as"):
            value = getattr(self, key)
            if not isinstance(value, tuple):
                # Frozen dataclass: normalise lists from JSON or callers to tuples once, here.
                object.__setattr__(self, key, tuple(value))
        positive = (
            "sample_rate",
            "encoder_dim",
            "decoder_dim",
            "latent_dim",
            "codebook_size",
            "codebook_dim",
        )
        for key in positive:
            if int(getattr(self, key)) <= 0:
                raise UsageError(f"codec config: {key} must be positive, got {getattr(self, key)}")
        if not self.encoder_rates or any(r < 2 for r in self.encoder_rates + self.pyramid_rates):
            raise UsageError("codec config: encoder_rates must be non-empty and every stride at least 2")
        if len(self.n_codebooks) != self.n_levels or any(n < 1 for n in self.n_codebooks):
            raise UsageError(
                f"codec config: n_codebooks needs one positive entry per level ({self.n_levels}), "
                f"got {self.n_codebooks}"
            )
        if not 0.0 <= self.quantizer_dropout <= 1.0:
            raise UsageError(
                f"codec config: quantizer_dropout must be in [0, 1], got {self.quantizer_dropout}"
            )
        if self.fsq_levels and (math.prod(self.fsq_levels) != self.codebook_size or min(self.fsq_levels) < 2):
            raise UsageError(f"codec config: fsq_levels {self.fsq_levels} must each be >= 2 and multiply to "
                             f"codebook_size ({self.codebook_size})")
        self._check_architecture()

    def _check_architecture(self) -> None:
        """The fields that only some architectures use (split from __post_init__ to keep each check short)."""
        if self.architecture not in ARCHITECTURES:
            raise UsageError(f"codec config: architecture must be one of {', '.join(ARCHITECTURES)}, "
                             f"got {self.architecture!r}")
        if self.architecture == "waveform" and self.decoder_dim >> len(self.decoder_rates) < 1:
            raise UsageError("codec config: decoder_dim is too small to halve at every decoder block")
        if self.architecture == "spectral":
            if len(self.encoder_rates) != 1:
                raise UsageError("codec config: a spectral encoder has one stride (its STFT hop)")
            if self.n_fft < 2 * self.hop_lengths[-1] or self.n_fft % 2:
                raise UsageError("codec config: n_fft must be even and at least twice the finest hop")
            if min(self.encoder_layers, self.decoder_layers, self.griffin_lim_iters, self.harmonics) < 0:
                raise UsageError("codec config: layer, iteration and harmonic counts must be >= 0")
        elif self.harmonics:
            raise UsageError("codec config: harmonics (a note head) needs architecture 'spectral'")
        head_parts = {"key_partials": self.key_partials, "note_onsets": self.note_onsets,
                      "code_notes": self.code_notes, "encoder_notes": self.encoder_notes,
                      "note_gate_power": self.note_gate_power != 1.0}
        for name, used in head_parts.items():
            if used and not self.harmonics:
                raise UsageError(f"codec config: {name} needs a note head (harmonics > 0)")
        if not 1 <= self.code_note_levels <= self.n_levels:
            raise UsageError(f"codec config: code_note_levels must be in 1..{self.n_levels}, "
                             f"got {self.code_note_levels}")
        if not 0.25 <= self.note_gate_power <= 8.0:
            raise UsageError(f"codec config: note_gate_power must be in [0.25, 8], got {self.note_gate_power}")
        if any(not isinstance(h, str) or not re.fullmatch(r"[0-9a-f]{16}", h) for h in self.same_tokens_as):
            raise UsageError("codec config: same_tokens_as must list 16-hex-digit weights hashes")
        if self.pyramid_residual_units < 0:
            raise UsageError("codec config: pyramid_residual_units must be >= 0")

    # ---- derived quantities -------------------------------------------------------------------

    @property
    def n_levels(self) -> int:
        """Number of token levels N (1 for a DAC)."""
        return max(1, len(self.pyramid_rates))

    @property
    def base_hop(self) -> int:
        """Samples per frame of the backbone's base features."""
        return math.prod(self.encoder_rates)

    @property
    def hop_lengths(self) -> tuple[int, ...]:
        """Samples per frame for each level, level 0 (coarsest) first."""
        n = self.n_levels
        if not self.pyramid_rates:
            return (self.base_hop,)
        return tuple(self.base_hop * math.prod(self.pyramid_rates[: n - i]) for i in range(n))

    @property
    def frame_rates(self) -> tuple[float, ...]:
        """Frames per second for each level (exact: sample_rate / hop), level 0 first."""
        return tuple(self.sample_rate / hop for hop in self.hop_lengths)

    @property
    def decoder_rates(self) -> tuple[int, ...]:
        """Strides of the decoder blocks: finest level rate → samples (mirror of the encoder)."""
        return self.pyramid_rates[:1] + tuple(reversed(self.encoder_rates))

    @property
    def level_rates(self) -> tuple[int, ...]:
        """level_rates[i-1] = hop[i-1] / hop[i], the up-sampling factor from level i-1 to level i."""
        return tuple(self.hop_lengths[i - 1] // self.hop_lengths[i] for i in range(1, self.n_levels))

    def tokens_per_second(self, levels: int | None = None) -> float:
        """Tokens per second of audio when the first ``levels`` levels are kept (default all)."""
        levels = self.n_levels if levels is None else levels
        if not 1 <= levels <= self.n_levels:
            raise UsageError(f"levels must be in 1..{self.n_levels}, got {levels}")
        return sum(
            n * rate for n, rate in zip(self.n_codebooks[:levels], self.frame_rates[:levels], strict=True)
        )

    # ---- serialisation ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        return {
            key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CodecConfig:
        """Build a config from ``to_dict`` output; unknown, missing or invalid keys raise FormatError."""
        if isinstance(data, dict):
            data = check_model_header(data, "codec", "codec config")
        return config_from_dict(cls, data, "codec config", added_later=ADDED_LATER, limits=LIMITS)


# Keys added after codecs were published, with the value every earlier codec implicitly had.
ADDED_LATER: dict[str, Any] = {
    "codebook_projection_bias": True,
    "architecture": "waveform",
    "n_fft": 2048,
    "encoder_layers": 4,
    "decoder_layers": 8,
    "griffin_lim_iters": 32,
    "fsq_levels": [],
    "harmonics": 0,
    "key_partials": False,
    "note_onsets": False,
    "note_gate_power": 1.0,
    "code_notes": False,
    "code_note_levels": 1,
    "encoder_notes": False,
    "same_tokens_as": [],
}
ARCHITECTURES = ("waveform", "spectral")

# The largest value a config file may give each integer field (tuples: each entry), far above any
# real codec; a file cannot make the loader build an absurd model (issue 13).
LIMITS: dict[str, int] = {"sample_rate": 384_000, "encoder_dim": 4096, "encoder_rates": 4096, "decoder_dim": 65_536,
                          "pyramid_rates": 16, "latent_dim": 16_384, "n_codebooks": 64, "codebook_size": 65_536,
                          "codebook_dim": 1024, "pyramid_residual_units": 16, "n_fft": 65_536, "encoder_layers": 64,
                          "decoder_layers": 64, "griffin_lim_iters": 1024, "fsq_levels": 1024,
                          "harmonics": 256}


# ---- presets (DESIGN §2 table) ----------------------------------------------------------------


def p111() -> CodecConfig:
    """Pyramid-22k-p111, the paper's generation codec: 1 codebook at 10.77 / 21.53 / 43.07 Hz."""
    return CodecConfig(name="pyramid-22k-p111")


def p555() -> CodecConfig:
    """Pyramid-22k-p555 (high fidelity): 5 codebooks per level, 377 tokens/s."""
    return CodecConfig(name="pyramid-22k-p555", n_codebooks=(5, 5, 5), quantizer_dropout=0.5)


def dac_n2() -> CodecConfig:
    """DAC-22k-n2, the paper's baseline: one level at hop 512 (43.07 Hz), 2 codebooks."""
    return CodecConfig(
        name="dac-22k-n2",
        encoder_rates=(4, 4, 4, 4, 2),
        pyramid_rates=(),
        n_codebooks=(2,),
        latent_dim=1024,
        quantizer_dropout=0.5,
    )


def dac_n9() -> CodecConfig:
    """DAC-22k-n9: one level at hop 512, 9 codebooks (388 tokens/s)."""
    return CodecConfig(
        name="dac-22k-n9",
        encoder_rates=(4, 4, 4, 4, 2),
        pyramid_rates=(),
        n_codebooks=(9,),
        latent_dim=1024,
        quantizer_dropout=0.5,
    )


def p111_small() -> CodecConfig:
    """CPU-sized p111: same strides and token rates, narrow widths (1.9 M parameters).

    Sized with examples/bench_codec.py for encode + decode at 20x real time or more on two CPU
    cores. The audio-rate layers dominate CPU time, above all the encoder's first block, whose
    width is encoder_dim: 12 there is ~1.5x faster than 16 (decoder_dim 128 ends at 4 channels).
    """
    return CodecConfig(name="pyramid-22k-p111-small", encoder_dim=12, decoder_dim=128, latent_dim=128)


def p111_spectral() -> CodecConfig:
    """p111 with the frame-domain encoder and decoder (``architecture="spectral"``), CPU-sized.

    Same levels, frame rates and tokens per second as p111. The encoder reads 2,048-point
    log-magnitude STFTs at hop 256 (the base rate); the decoder predicts log-magnitudes at the
    finest rate (hop 512) and Griffin-Lim restores the phase.
    """
    return CodecConfig(name="pyramid-22k-p111-spectral", architecture="spectral", encoder_rates=(256,),
                       encoder_dim=384, decoder_dim=512, latent_dim=256, encoder_layers=4, decoder_layers=8,
                       fsq_levels=(4, 4, 4, 4, 4))


def p111_notes() -> CodecConfig:
    """p111_spectral with a note head (24 harmonic partials per key): codes trained to carry the notes.

    Training needs piano rolls: a corpus built from MIDI and ``note_midi_dir`` (``--notes-from``).
    """
    return replace(p111_spectral(), name="pyramid-22k-p111-notes", harmonics=24)


PRESETS: dict[str, Callable[[], CodecConfig]] = {
    "p111": p111,
    "p555": p555,
    "dac_n2": dac_n2,
    "dac_n9": dac_n9,
    "p111_small": p111_small,
    "p111_spectral": p111_spectral,
    "p111_notes": p111_notes,
}


def preset(name: str) -> CodecConfig:
    """The preset config called ``name`` (one of PRESETS)."""
    if name not in PRESETS:
        raise UsageError(f"unknown codec preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]()
