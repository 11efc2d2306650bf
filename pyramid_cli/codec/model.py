"""PyramidCodec (Chen et al., EMNLP Findings 2024): a DAC backbone with hierarchical token levels.

Level 0 is the coarsest. Encoding (Alg. 1): the backbone gives base features; N down-sampling
blocks give F[N-1] (finest) … F[0] (coarsest); level i quantises F[i] + U_i(Q[i-1]) with its own
RVQ, U_i a learned transposed-conv up-sampler. Decoding (Alg. 2, Eq. 1): R[0] = Q[0] and
R[i] = D_i(R[i-1]) + Q[i] at level i's rate (D_i another learned up-sampler); R[k-1], brought on
to the finest rate by D_k … D_{N-1}, goes through one shared decoder. Decoding k levels therefore
reads only the codes of levels 0..k-1. With no pyramid strides there is one level, no
down-sampling, projection or up-sampler, and the model is exactly a DAC.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from torch import nn

from pyramid_cli.codec.config import CodecConfig
from pyramid_cli.codec.layers import (
    Chain,
    DecoderBlock,
    EncoderBlock,
    Snake1d,
    WNConv1d,
    fold_weight_norm,
    is_weight_norm_folded,
    parametrized_shapes,
    strided_conv_transpose,
)
from pyramid_cli.codec.quantize import QuantizerOutput, ResidualVectorQuantize
from pyramid_cli.codec.spectral import (
    PIANO_KEYS,
    Downsample,
    Project,
    SpectralDecoder,
    SpectralEncoder,
    griffin_lim,
)
from pyramid_cli.errors import CodecMismatchError, FormatError, InputError, UsageError
from pyramid_cli.hub.files import (
    WEIGHTS_NAME,
    check_weight_shapes,
    read_model_config,
    read_weights,
    safetensors_header,
    write_model_folder,
)
from pyramid_cli.runtime.devices import cpu_bf16_decoding

# Called with (level, RVQ_i, its inputs) before each level quantizes (``PyramidCodec.quantize``).
LevelHook = Callable[[int, ResidualVectorQuantize, torch.Tensor], None]


@dataclass
class CodecOutput:
    """What ``PyramidCodec.forward`` returns for training.

    Attributes:
        reconstructions: level index i → Y[i] (B, 1, T), decoded from levels 0..i (Eq. 1). A
            spectral codec in training mode returns none: its losses read ``spectra``.
        spectra: spectral codecs only: level index i → the natural log of Y[i]'s STFT magnitude
            (B, n_fft/2+1, T / finest hop) as the decoder predicts it.
        note_logits: codecs with a note head (``harmonics`` > 0) only: level index i → (B, 88,
            T / finest hop) logits of MIDI keys 21..108 sounding, as decoded from levels 0..i.
        partials: codecs with a note head only: level index i → (B, T / finest hop, 88, harmonics),
            each key's partial amplitudes were it sounding (``spectral.NoteHead``).
        onset_logits: codecs whose note head has ``note_onsets`` only: level index i → (B, 88,
            T / finest hop) logits of each key being struck again in the next frame.
        code_note_logits: codecs with ``code_notes`` only: per probed level i (``code_note_levels``),
            (B, 88, T_i) logits of MIDI keys sounding, a linear probe of its pyramid latent R[i].
        encoder_note_logits: codecs with ``encoder_notes`` only: (B, 88, T / finest hop) logits of MIDI
            keys sounding, a linear probe of the finest level's features before quantization.
        codes: per level (B, n_codebooks[i], T_i) long codes, level 0 first.
        frame_hop: samples between the frames of ``spectra``, ``note_logits``, ...: the finest hop.
            Frame t is centred at sample t * frame_hop of the input (``spectral.stft_magnitude``).
        commitment_loss: scalar, summed over levels (weight it 0.25, DAC).
        codebook_loss: scalar, summed over levels (weight it 1.0, DAC).
        diversity_loss: scalar, summed over levels and stages (``VectorQuantize.diversity``).
    """

    reconstructions: dict[int, torch.Tensor]
    codes: list[torch.Tensor]
    commitment_loss: torch.Tensor
    codebook_loss: torch.Tensor
    diversity_loss: torch.Tensor
    spectra: dict[int, torch.Tensor] | None = None
    note_logits: dict[int, torch.Tensor] | None = None
    partials: dict[int, torch.Tensor] | None = None
    onset_logits: dict[int, torch.Tensor] | None = None
    code_note_logits: list[torch.Tensor] | None = None
    encoder_note_logits: torch.Tensor | None = None
    frame_hop: int = 0


class PyramidCodec(nn.Module):
    """Hierarchical neural audio codec; ``PyramidCodec(config)``. Audio is (B, 1, T) in [-1, 1]."""

    def __init__(self, config: CodecConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.spectral = c.architecture == "spectral"
        self.encoder = (SpectralEncoder(c.n_fft, c.base_hop, c.encoder_dim, c.latent_dim, c.encoder_layers)
                        if self.spectral else self._waveform_encoder(c))
        # Pyramid (Alg. 1): down-sampling blocks, finest first, and a projection per level.
        pyramid = len(c.pyramid_rates) > 0
        self.down = nn.ModuleList(
            Downsample(c.latent_dim, s) if self.spectral
            else EncoderBlock(c.latent_dim, c.latent_dim, s, n_units=c.pyramid_residual_units)
            for s in c.pyramid_rates
        )
        self.project = nn.ModuleList(
            Project(c.latent_dim) if self.spectral
            else Chain(Snake1d(c.latent_dim), WNConv1d(c.latent_dim, c.latent_dim, kernel_size=3, padding=1))
            for _ in range(c.n_levels if pyramid else 0)
        )
        self.quantizers = nn.ModuleList(
            ResidualVectorQuantize(c.latent_dim, n, c.codebook_size, c.codebook_dim, c.quantizer_dropout,
                                  c.codebook_projection_bias, c.fsq_levels)
            for n in c.n_codebooks
        )
        # up_encode[i-1] = U_i (Alg. 1), up_decode[i-1] = D_i (Eq. 1): level i-1 rate → level i rate.
        self.up_encode = nn.ModuleList(
            strided_conv_transpose(c.latent_dim, c.latent_dim, s) for s in c.level_rates
        )
        self.up_decode = nn.ModuleList(
            strided_conv_transpose(c.latent_dim, c.latent_dim, s) for s in c.level_rates
        )
        self.decoder = (SpectralDecoder(c.n_fft, c.latent_dim, c.decoder_dim, c.decoder_layers, c.harmonics,
                                        c.sample_rate, c.key_partials, c.note_onsets, c.note_gate_power)
                        if self.spectral else self._waveform_decoder(c))
        self.code_note_heads = nn.ModuleList(nn.Linear(c.latent_dim, PIANO_KEYS)
                                             for _ in range(c.code_note_levels if c.code_notes else 0))
        self.encoder_note_head = nn.Linear(c.latent_dim, PIANO_KEYS) if c.encoder_notes else None

    @staticmethod
    def _waveform_encoder(c: CodecConfig) -> nn.Module:
        """Backbone encoder (DAC): 7-tap conv, blocks doubling the width, Snake + 3-tap conv."""
        dim = c.encoder_dim
        encoder: list[nn.Module] = [WNConv1d(1, dim, kernel_size=7, padding=3)]
        for stride in c.encoder_rates:
            encoder.append(EncoderBlock(dim, 2 * dim, stride))
            dim *= 2
        encoder += [Snake1d(dim), WNConv1d(dim, c.latent_dim, kernel_size=3, padding=1)]
        return Chain(*encoder)

    @staticmethod
    def _waveform_decoder(c: CodecConfig) -> nn.Module:
        """Shared decoder (DAC): finest level rate → samples, halving the width at every block."""
        decoder: list[nn.Module] = [WNConv1d(c.latent_dim, c.decoder_dim, kernel_size=7, padding=3)]
        for i, stride in enumerate(c.decoder_rates):
            decoder.append(DecoderBlock(c.decoder_dim >> i, c.decoder_dim >> (i + 1), stride))
        out_dim = c.decoder_dim >> len(c.decoder_rates)
        decoder += [Snake1d(out_dim), WNConv1d(out_dim, 1, kernel_size=7, padding=3), nn.Tanh()]
        return Chain(*decoder)

    @property
    def level_quantizers(self) -> list[ResidualVectorQuantize]:
        """RVQ_i per level, typed (``nn.ModuleList`` items are plain modules to a type checker)."""
        return [cast(ResidualVectorQuantize, q) for q in self.quantizers]

    # ---- frames ---------------------------------------------------------------------------------

    def frame_counts(self, num_samples: int) -> list[int]:
        """Frames per level (level 0 first) that ``encode`` returns for ``num_samples`` samples.

        The input is zero-padded on the right to a multiple of the coarsest hop, so every level
        has exactly padded_length / hop_length frames.
        """
        hops = self.config.hop_lengths
        padded = math.ceil(num_samples / hops[0]) * hops[0]
        return [padded // hop for hop in hops]

    # ---- encoding (Alg. 1) ------------------------------------------------------------------------

    def _check_audio(self, wav: torch.Tensor) -> None:
        if wav.dim() != 3 or wav.shape[1] != 1 or wav.shape[2] == 0:
            raise InputError(f"expected mono audio shaped (B, 1, T) with T > 0, got {tuple(wav.shape)}")

    def features(self, wav: torch.Tensor) -> list[torch.Tensor]:
        """Multi-scale features F[i] (B, latent_dim, T_i), level 0 (coarsest) first.

        ``wav`` (B, 1, T) must already be a multiple of the coarsest hop long.
        """
        base = self.encoder(wav)  # (B, latent_dim, T / base_hop)
        if not self.down:
            return [base]  # single level: exactly DAC
        fine_to_coarse = []
        h = base
        for block in self.down:
            h = block(h)
            fine_to_coarse.append(h)
        return [proj(f) for proj, f in zip(self.project, reversed(fine_to_coarse), strict=True)]

    def quantize(self, features: Sequence[torch.Tensor], dropout: bool | None = None,
                 before_level: LevelHook | None = None) -> list[QuantizerOutput]:
        """Alg. 1, coarse → fine: Q[i], C[i] = RVQ_i(F[i] + U_i(Q[i-1])), no U term at level 0.

        ``before_level(i, RVQ_i, inputs)`` runs just before each level quantizes its inputs (dead-code
        reseeding uses it, so that a level's inputs follow the coarser levels' new codebooks).
        """
        outputs: list[QuantizerOutput] = []
        for i, (feature, rvq) in enumerate(zip(features, self.level_quantizers, strict=True)):
            if i > 0:
                feature = feature + self.up_encode[i - 1](outputs[-1].z_q)
            if before_level is not None:
                before_level(i, rvq, feature)
            outputs.append(rvq(feature, dropout=dropout))
        return outputs

    def pad_to_frames(self, wav: torch.Tensor) -> torch.Tensor:
        """(B, 1, T) → (B, 1, T') zero-padded on the right to a multiple of the coarsest hop."""
        hop = self.config.hop_lengths[0]
        return nn.functional.pad(wav, (0, math.ceil(wav.shape[-1] / hop) * hop - wav.shape[-1]))

    def encode(self, wav: torch.Tensor) -> list[torch.Tensor]:
        """Audio → hierarchical codes (no quantizer dropout, whatever the module's mode).

        Args:
            wav: (B, 1, T) audio at ``config.sample_rate``; zero-padded on the right to a
                multiple of the coarsest hop (``frame_counts`` gives the resulting sizes).

        Returns:
            Per level, level 0 first, (B, n_codebooks[i], T_i) long codes.
        """
        self._check_audio(wav)
        return [out.codes for out in self.quantize(self.features(self.pad_to_frames(wav)), dropout=False)]

    # ---- decoding (Alg. 2, Eq. 1) -----------------------------------------------------------------

    def lift(self, latent: torch.Tensor, level: int) -> torch.Tensor:
        """Bring a level-``level`` latent (B, D, T_level) to the finest rate with D_{level+1} …."""
        for up in self.up_decode[level:]:
            latent = up(latent)
        return latent

    def pyramid_latents(self, quantized: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Eq. 1: R[0] = Q[0], R[i] = D_i(R[i-1]) + Q[i]; each R[i] at level i's rate (B, D, T_i)."""
        r = [quantized[0]]
        for i in range(1, len(quantized)):
            r.append(self.up_decode[i - 1](r[-1]) + quantized[i])
        return r

    def band(self, level: int) -> float:
        """Eq. 2: the fraction of the spectrum that level ``level`` (from levels 0..level) reproduces."""
        return 0.5 ** (self.config.n_levels - 1 - level)

    def decode_latent(self, latent: torch.Tensor, length: int | None = None, level: int | None = None) -> torch.Tensor:
        """The shared decoder: (B, latent_dim, T_finest) → (B, 1, T_finest * finest hop)[..., :length].

        ``level``: the level ``latent`` is R[level] of (default the finest); a note head leaves out
        the partials above that level's band.
        """
        if not self.spectral:
            return self.decoder(latent)[..., :length]
        level = self.config.n_levels - 1 if level is None else level
        fast = not self.training and cpu_bf16_decoding(latent.device)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=fast):
            log_magnitude = self.decoder(latent, self.band(level)).log_magnitude
        return self.spectrum_to_audio(log_magnitude.float(), length)

    def spectrum_to_audio(self, log_magnitude: torch.Tensor, length: int | None = None) -> torch.Tensor:
        """Spectral codecs: decoder output (B, F, frames) → (B, 1, frames * finest hop)[..., :length] audio."""
        c = self.config
        full = log_magnitude.shape[-1] * c.hop_lengths[-1]
        audio = griffin_lim(log_magnitude.exp(), c.n_fft, c.hop_lengths[-1], c.griffin_lim_iters, full)
        return audio[..., :length].clamp(-1.0, 1.0)

    def _check_codes(self, codes: Sequence[torch.Tensor], levels: int) -> None:
        c = self.config
        if not 1 <= levels <= c.n_levels:
            raise UsageError(f"levels must be in 1..{c.n_levels}, got {levels}")
        if len(codes) < levels:
            raise UsageError(f"asked to decode {levels} levels but got codes for {len(codes)}")
        for i, level_codes in enumerate(codes[:levels]):
            if level_codes.dim() != 3 or level_codes.dtype.is_floating_point:
                raise CodecMismatchError(
                    f"level {i}: codes must be integer (B, n_q, T), got {tuple(level_codes.shape)}"
                )
            expected_frames = codes[0].shape[-1] * c.hop_lengths[0] // c.hop_lengths[i]
            if level_codes.shape[0] != codes[0].shape[0] or level_codes.shape[-1] != expected_frames:
                raise CodecMismatchError(
                    f"level {i}: expected (B={codes[0].shape[0]}, n_q, T={expected_frames}) "
                    f"codes, got {tuple(level_codes.shape)}"
                )
            if not 1 <= level_codes.shape[1] <= c.n_codebooks[i]:
                raise CodecMismatchError(
                    f"level {i}: {level_codes.shape[1]} codebooks, codec has {c.n_codebooks[i]}"
                )
            if level_codes.numel() and (level_codes.min() < 0 or level_codes.max() >= c.codebook_size):
                raise CodecMismatchError(f"level {i}: codes outside [0, {c.codebook_size})")

    def codes_to_latent(self, codes: Sequence[torch.Tensor], levels: int) -> torch.Tensor:
        """Checked codes → what the decoder reads: R[levels-1] (Alg. 2) lifted to the finest rate."""
        quantizers = self.level_quantizers[:levels]
        quantized = [rvq.from_codes(c.long()) for rvq, c in zip(quantizers, codes[:levels], strict=True)]
        return self.lift(self.pyramid_latents(quantized)[-1], levels - 1)

    def decode(
        self, codes: Sequence[torch.Tensor], levels: int | None = None, length: int | None = None
    ) -> torch.Tensor:
        """Codes → audio using only levels 0..levels-1 (Alg. 2): the decoding of R[levels-1].

        Args:
            codes: per level (B, n_q_i, T_i) codes, level 0 first; a level may use its first
                n_q_i ≤ n_codebooks[i] codebooks; levels past ``levels`` are never read.
            levels: number of levels to use (default ``len(codes)``).
            length: trim the output to this many samples (default: all, a multiple of the hop).

        Returns:
            (B, 1, length) audio.
        """
        levels = len(codes) if levels is None else levels
        self._check_codes(codes, levels)
        latent = self.codes_to_latent(codes, levels)
        if length is not None and length > latent.shape[-1] * self.config.hop_lengths[-1]:
            raise UsageError(
                f"length {length} is longer than the {latent.shape[-1] * self.config.hop_lengths[-1]} "
                "samples these codes hold"
            )
        return self.decode_latent(latent, length, levels - 1)

    # ---- training ---------------------------------------------------------------------------------

    def forward(self, wav: torch.Tensor, levels_to_decode: Sequence[int] | None = None) -> CodecOutput:
        """Encode, quantise (with quantizer dropout in training mode) and decode Y[i] per level.

        Args:
            wav: (B, 1, T) audio.
            levels_to_decode: level indices i whose reconstruction Y[i] (from levels 0..i) to
                decode; default every level. Targets for Y[i]: ``band_limited_targets`` (Eq. 2–3).
        """
        self._check_audio(wav)
        # With a frozen encoder (decoder-only fine-tuning: the codes stay the same) no graph is kept for it.
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.tokenizer_trainable):
            features = self.features(self.pad_to_frames(wav))
            outputs = self.quantize(features)
            encoder_note_logits = (None if self.encoder_note_head is None
                                   else self.encoder_note_head(features[-1].transpose(1, 2)).transpose(1, 2))
        levels = range(self.config.n_levels) if levels_to_decode is None else levels_to_decode
        if any(not 0 <= i < self.config.n_levels for i in levels):
            raise UsageError(f"levels_to_decode must be level indices in 0..{self.config.n_levels - 1}")
        r = self.pyramid_latents([out.z_q for out in outputs])
        spectra = note_logits = partials = onset_logits = None
        if self.spectral:
            decoded = {i: self.decoder(self.lift(r[i], i), self.band(i)) for i in levels}
            spectra = {i: d.log_magnitude for i, d in decoded.items()}
            if self.config.harmonics:
                note_logits = {i: d.note_logits for i, d in decoded.items()}
                partials = {i: d.partials for i, d in decoded.items()}
            if self.config.note_onsets:
                onset_logits = {i: d.onset_logits for i, d in decoded.items()}
            # Phase reconstruction only outside training: the losses compare magnitudes.
            reconstructions = {} if self.training else {
                i: self.spectrum_to_audio(s, wav.shape[-1]) for i, s in spectra.items()}
        else:
            reconstructions = {i: self.decode_latent(self.lift(r[i], i), wav.shape[-1]) for i in levels}
        code_note_logits = [head(latent.transpose(1, 2)).transpose(1, 2)
                            for head, latent in zip(self.code_note_heads, r, strict=False)] or None
        return CodecOutput(
            code_note_logits=code_note_logits,
            encoder_note_logits=encoder_note_logits,
            spectra=spectra,
            note_logits=note_logits,
            partials=partials,
            onset_logits=onset_logits,
            reconstructions=reconstructions,
            codes=[out.codes for out in outputs],
            commitment_loss=torch.stack([out.commitment_loss for out in outputs]).sum(),
            codebook_loss=torch.stack([out.codebook_loss for out in outputs]).sum(),
            diversity_loss=torch.stack([out.diversity_loss for out in outputs]).sum(),
            frame_hop=self.config.hop_lengths[-1],
        )

    # ---- weights ----------------------------------------------------------------------------------

    def tokenizer_modules(self) -> list[nn.Module]:
        """The modules that decide the codes (Alg. 1): encoder, pyramid down path, quantizers.

        Freezing them (``freeze_tokenizer``) leaves the codes of any input unchanged, so a decoder
        fine-tuned that way reads every ``.pyr`` file and token set of the codec it started from.
        """
        return [self.encoder, self.down, self.project, self.quantizers, self.up_encode]

    @property
    def tokenizer_trainable(self) -> bool:
        return any(p.requires_grad for m in self.tokenizer_modules() for p in m.parameters())

    def freeze_tokenizer(self) -> PyramidCodec:
        """Stop training the modules of ``tokenizer_modules`` (in place); the decoder stays trainable.

        They also stay in eval mode from then on (``train``): the scalar quantizer's BatchNorm
        would otherwise update its running statistics, which decide the codes.
        """
        for module in self.tokenizer_modules():
            module.requires_grad_(False)
        self.tokenizer_frozen = True
        return self.train(self.training)

    def train(self, mode: bool = True) -> PyramidCodec:
        super().train(mode)
        if getattr(self, "tokenizer_frozen", False):
            for module in self.tokenizer_modules():
                module.eval()
        return self

    def fold_weight_norm(self) -> PyramidCodec:
        """Bake the weight-norm parametrizations into plain weights (faster inference), in place."""
        fold_weight_norm(self)
        return self

    def save_pretrained(self, directory: str | Path, fp16: bool = False) -> None:
        """Write ``config.json`` and ``model.safetensors`` (safetensors, never pickle) into ``directory``.

        Weights are saved as they are: weight-norm parametrizations as ``…original0/1`` (so that
        training can resume), or plain weights after ``fold_weight_norm``; ``from_pretrained``
        accepts both. ``fp16`` halves the file; loading casts back to float32.
        """
        metadata = {  # safetensors metadata values must be str
            "pyramid_format_version": str(self.config.version),  # the config carries it too; loading checks that
            "codec": self.config.name,
            "weight_norm": "folded" if is_weight_norm_folded(self) else "parametrized",
        }
        write_model_folder(directory, self.config.to_dict(), self.state_dict(), metadata, fp16)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> PyramidCodec:
        """Load a codec written by ``save_pretrained`` onto ``device``, in eval mode (float32)."""
        weights_path = Path(directory) / WEIGHTS_NAME
        config = CodecConfig.from_dict(read_model_config(directory, "codec"))
        folded = not any(".parametrizations." in key for key in safetensors_header(weights_path))
        with torch.device("meta"):  # the shapes the config implies, checked before anything is allocated
            probe = cls(config)
        shapes = {k: tuple(v.shape) for k, v in probe.state_dict().items()} if folded else parametrized_shapes(probe)
        check_weight_shapes(weights_path, shapes, "codec")
        state = read_weights(directory, "codec")
        model = cls(config)
        if folded:
            model.fold_weight_norm()  # the checkpoint was saved folded
        state = {key: value.float() if value.is_floating_point() else value for key, value in state.items()}
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:  # not expected after the header check; still one line
            raise FormatError(f"{weights_path}: weights do not match the config "
                              f"({str(exc).splitlines()[-1].strip()})") from None
        return model.to(device).eval()
