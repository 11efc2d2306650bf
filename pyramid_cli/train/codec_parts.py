"""Pieces of codec training (``pyramid_cli.train.codec``): the hierarchical loss (plus the GAN
terms of ``codec_gan.Adversary`` when on), code usage counting, dead-code reseeding under DDP,
validation and fine-tuning initialisation. Kept apart so that the codec's step reads top to bottom.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.utils import parametrize

from pyramid_cli.audio.spectra import CLAMP_EPS, MEL_BANDS, MEL_WINDOWS, mel_magnitude
from pyramid_cli.codec import CodecConfig, CodecOutput, PyramidCodec
from pyramid_cli.codec.losses import MultiScaleMelLoss, MultiScaleSTFTLoss, waveform_l1
from pyramid_cli.codec.quantize import ResidualVectorQuantize, codebook_usage
from pyramid_cli.codec.spectral import LOG_FLOOR, harmonic_templates, partial_amplitudes, stft_magnitude
from pyramid_cli.codec.spectral import log_magnitude as log_magnitude_of
from pyramid_cli.codec.targets import band_limited_targets
from pyramid_cli.data.audio_dataset import RandomCropDataset, fixed_clips
from pyramid_cli.errors import FormatError, InputError, UsageError
from pyramid_cli.metrics.distances import mel_distance
from pyramid_cli.runtime.fileio import read_json_object
from pyramid_cli.train.codec_gan import Adversary
from pyramid_cli.train.common import DistInfo
from pyramid_cli.train.config import CodecTrainConfig


def level_targets(wav: torch.Tensor, levels: list[int], n_levels: int) -> dict[int, torch.Tensor]:
    """Eq. 2: per decoded level i, the float32 input (B, 1, T) band-limited to 1/2^(N-1-i) of its band."""
    wav = wav.float()
    # Level i of N keeps 1/2^(N-1-i) of the band = level 0 of an (N - i)-level pyramid.
    return {i: band_limited_targets(wav, n_levels - i)[0] for i in levels}


def codec_loss(
    out: CodecOutput,
    targets: dict[int, torch.Tensor],
    cfg: CodecTrainConfig,
    mel_weight: float,
    mel_loss: MultiScaleMelLoss,
    stft_loss: MultiScaleSTFTLoss | None,
    adversary: Adversary | None = None,
    rolls: torch.Tensor | None = None,
    onsets: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Eq. 3: the sum over decoded levels of the losses of Y[i] against its band-limited target.

    Args:
        out: the model output; ``out.reconstructions`` holds the levels that ``targets`` has.
        targets: ``level_targets`` of the input, per decoded level.
        adversary: when given, adds its adversarial and feature-matching losses (summed over
            the decoded levels, like the mel terms).
        rolls: (B, 88, frames) MIDI piano rolls of the crops; with a note head, its logits at
            every decoded level learn them (binary cross-entropy, weight ``note_weight``).
        onsets: (B, 88, frames) MIDI onset rolls; with ``note_onsets``, the head's re-strike logits
            at frame t learn the onsets of frame t + 1 (binary cross-entropy, weight ``onset_weight``).

    Returns:
        The scalar training loss (float32) and its named parts (per level ``mel_l{i}`` ...).
    """
    parts = {"commitment": out.commitment_loss.float(), "codebook": out.codebook_loss.float()}
    total = cfg.commitment_weight * parts["commitment"] + cfg.codebook_weight * parts["codebook"]
    if cfg.diversity_weight:
        parts["diversity"] = out.diversity_loss.float()
        total = total + cfg.diversity_weight * parts["diversity"]
    if out.spectra is not None:
        for i, target in targets.items():
            level_parts = spectral_losses(out.spectra[i].float(), target, mel_loss.sample_rate, out.frame_hop)
            parts.update({f"{name}_l{i}": value for name, value in level_parts.items()})
            total = (total + mel_weight * level_parts["mel"] + level_parts["log_mag"] + level_parts["convergence"]
                     + cfg.pitch_weight * level_parts["pitch"])
        key_weights = None
        if rolls is not None:
            key_weights = octave_weights(rolls, cfg.note_octave_weight) if cfg.note_octave_weight != 1 else None
            if cfg.note_top_weight != 1:
                key_weights = top_key_weights(rolls, cfg.note_top_weight) * (1 if key_weights is None else key_weights)
        if out.note_logits is not None and rolls is not None:
            for i in targets:
                parts[f"notes_l{i}"] = roll_loss(out.note_logits[i], rolls, key_weights, cfg.note_pos_weight)
                level_weight = cfg.note_level_weights[i] if cfg.note_level_weights else 1.0
                total = total + cfg.note_weight * level_weight * parts[f"notes_l{i}"]
                if cfg.partial_weight and out.partials is not None:
                    band = 0.5 ** (len(out.codes) - 1 - i)
                    parts[f"partials_l{i}"] = partial_loss(out.partials[i].float(), rolls, targets[i],
                                                           2 * (out.spectra[i].shape[1] - 1), out.frame_hop, band,
                                                           mel_loss.sample_rate)
                    total = total + cfg.partial_weight * parts[f"partials_l{i}"]
                if cfg.onset_weight and out.onset_logits is not None and onsets is not None:
                    logits = out.onset_logits[i].float()[..., : onsets.shape[-1] - 1]
                    parts[f"onsets_l{i}"] = F.binary_cross_entropy_with_logits(
                        logits, onsets[..., 1:], pos_weight=torch.tensor(cfg.onset_pos_weight, device=logits.device))
                    total = total + cfg.onset_weight * parts[f"onsets_l{i}"]
        probe_weights = {"code_notes": cfg.code_note_weight, "encoder_notes": cfg.encoder_note_weight}
        for name, loss in probe_losses(out, cfg, rolls, key_weights).items():
            parts[name] = loss
            total = total + probe_weights[name] * loss
        return total, parts
    estimates = {i: out.reconstructions[i].float() for i in targets}  # losses in float32 even under bf16
    for i, target in targets.items():
        estimate = estimates[i]
        parts[f"mel_l{i}"] = mel_loss(estimate, target)
        total = total + mel_weight * parts[f"mel_l{i}"]
        if stft_loss is not None:
            parts[f"stft_l{i}"] = stft_loss(estimate, target)
            total = total + cfg.stft_weight * parts[f"stft_l{i}"]
        if cfg.waveform_weight:
            parts[f"waveform_l{i}"] = waveform_l1(estimate, target)
            total = total + cfg.waveform_weight * parts[f"waveform_l{i}"]
    if adversary is not None:
        gan = adversary.generator_losses(targets, estimates)
        parts.update(gan)
        total = total + cfg.adv_weight * gan["adv"] + cfg.feat_weight * gan["feat"]
    return total, parts


def probe_losses(out: CodecOutput, cfg: CodecTrainConfig, rolls: torch.Tensor | None,
                 key_weights: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The BCE of each training-only note probe against the MIDI rolls, unweighted: ``code_notes``
    (summed over the probed levels' pyramid latents, the roll pooled to each level's rate) and
    ``encoder_notes`` (the finest features before quantization, at the roll's rate, with the note
    head's key weights)."""
    parts: dict[str, torch.Tensor] = {}
    if rolls is None:
        return parts
    if cfg.code_note_weight and out.code_note_logits is not None and out.spectra is not None:
        finest_frames = next(iter(out.spectra.values())).shape[-1]  # of the padded crop
        levels = [code_note_loss(logits.float(), rolls, finest_frames // logits.shape[-1], cfg.note_pos_weight)
                  for logits in out.code_note_logits]
        parts["code_notes"] = torch.stack(levels).sum()
    if cfg.encoder_note_weight and out.encoder_note_logits is not None:
        parts["encoder_notes"] = roll_loss(out.encoder_note_logits, rolls, key_weights, cfg.note_pos_weight)
    return parts


def roll_loss(logits: torch.Tensor, rolls: torch.Tensor, key_weights: torch.Tensor | None,
              pos_weight: float) -> torch.Tensor:
    """BCE of (B, 88, T') key logits at the roll's rate against (B, 88, T) MIDI rolls, in float32:
    the note head's loss and the encoder probe's, so both weigh keys alike. T' >= T: the model pads
    the crop, so its extra frames are cut."""
    return F.binary_cross_entropy_with_logits(
        logits.float()[..., : rolls.shape[-1]], rolls, weight=key_weights,
        pos_weight=torch.tensor(pos_weight, device=logits.device))


def octave_weights(rolls: torch.Tensor, weight: float) -> torch.Tensor:
    """(B, 88, T) → per key and frame: ``weight`` where the key is silent but a key one or two octaves
    away sounds, 1 elsewhere. The note head's extra notes are often octaves of true ones (the codec
    card), and a plain BCE counts such a mistake no more than any other silent key."""
    near = torch.zeros_like(rolls)
    for shift in (12, 24):
        near[:, shift:] = torch.maximum(near[:, shift:], rolls[:, :-shift])
        near[:, :-shift] = torch.maximum(near[:, :-shift], rolls[:, shift:])
    return 1 + (weight - 1) * near * (1 - rolls)


def highest_sounding_key(rolls: torch.Tensor, key_dim: int = 1) -> torch.Tensor:
    """Piano rolls → the index of the highest sounding key in each frame (where the tune mostly
    lies), -1 in a silent frame; ``key_dim`` is removed."""
    keys = torch.arange(rolls.shape[key_dim], device=rolls.device).view(-1, *[1] * (rolls.dim() - key_dim - 1))
    return torch.where(rolls > 0.5, keys, -1).amax(key_dim)


def top_key_weights(rolls: torch.Tensor, weight: float) -> torch.Tensor:
    """(B, 88, T) → per key and frame: ``weight`` at the highest sounding key of each frame, 1
    elsewhere. The codecs kept that key least (the codec card, *The tune*)."""
    keys = torch.arange(rolls.shape[1], device=rolls.device)[:, None]
    return 1 + (weight - 1) * (keys == highest_sounding_key(rolls)[:, None]).to(rolls.dtype)


PARTIAL_FLOOR = 0.1  # magnitude below which partials count as silent (about -50 dB under a loud note's)


@functools.lru_cache(maxsize=4)
def _templates(n_fft: int, sample_rate: int, harmonics: int, device: torch.device) -> torch.Tensor:
    return harmonic_templates(n_fft, sample_rate, harmonics).flatten(0, 1).to(device)


def code_note_loss(logits: torch.Tensor, rolls: torch.Tensor, factor: int, pos_weight: float) -> torch.Tensor:
    """BCE of level 0's code probe (B, 88, T_0) against the MIDI rolls (B, 88, frames), ``factor`` roll
    frames per level-0 frame: a key sounds in a level-0 frame when it sounds in any of its roll frames."""
    pooled = F.max_pool1d(rolls, factor, ceil_mode=True)
    steps = min(pooled.shape[-1], logits.shape[-1])
    return F.binary_cross_entropy_with_logits(logits[..., :steps], pooled[..., :steps],
                                              pos_weight=torch.tensor(pos_weight, device=logits.device))


def partial_loss(partials: torch.Tensor, rolls: torch.Tensor, target: torch.Tensor, n_fft: int, hop: int,
                 band: float, sample_rate: int) -> torch.Tensor:
    """L1 of log amplitudes: the note head's partials (``NoteHead``'s ungated ones) against those
    fitted to the target's magnitudes (``spectral.partial_amplitudes``), at the keys the MIDI roll
    says sound and the partials inside the level's band.

    Why: the spectral losses see a note's partials as 2% of the bins, so its gains and profiles
    stayed far from the input's; rendering the MIDI roll with amplitudes fitted to the input keeps
    note F1 0.59-0.65 against 0.47 with the head's own (codec card, 8 test clips).

    Args:
        partials: (B, T, 88, K); rolls: (B, 88, T' <= T); target: (B, 1, <= T * hop) band-limited audio;
        hop: the samples between frames (``CodecOutput.frame_hop``).
    """
    frames, keys, harmonics = partials.shape[1:]
    magnitude = stft_magnitude(F.pad(target, (0, frames * hop - target.shape[-1])), n_fft, hop)
    templates = _templates(n_fft, sample_rate, harmonics, magnitude.device)
    fitted = partial_amplitudes(magnitude, templates).unflatten(-1, (keys, harmonics))
    in_band = (templates.argmax(-1) < round(band * templates.shape[-1])) & (templates.amax(-1) > 0)
    sounding = rolls.transpose(1, 2)[..., None] > 0.5  # (B, T', 88, 1)
    mask = sounding & in_band.view(keys, harmonics)
    error = (partials[:, : rolls.shape[-1]].clamp(min=PARTIAL_FLOOR).log()
             - fitted[:, : rolls.shape[-1]].clamp(min=PARTIAL_FLOOR).log()).abs()
    return error[mask].mean() if bool(mask.any()) else partials.sum() * 0.0


@functools.lru_cache(maxsize=4)
def semitone_filterbank(n_fft: int, sample_rate: int, low: int = 36, high: int = 108) -> torch.Tensor:
    """(high - low + 1, n_fft/2+1) triangular filters centred on the MIDI pitches low..high, each
    reaching the neighbouring semitones (at least one FFT bin either side), unit peak."""
    bins = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * sample_rate / n_fft
    bin_width = sample_rate / n_fft
    rows = []
    for pitch in range(low, high + 1):
        centre = 440.0 * 2 ** ((pitch - 69) / 12)
        below = max(centre - 440.0 * 2 ** ((pitch - 70) / 12), bin_width)
        above = max(440.0 * 2 ** ((pitch - 68) / 12) - centre, bin_width)
        rows.append(torch.clamp(torch.minimum(1 - (centre - bins) / below, 1 - (bins - centre) / above), min=0))
    return torch.stack(rows).float()


def spectral_losses(log_magnitude: torch.Tensor, target: torch.Tensor, sample_rate: int, hop: int
                    ) -> dict[str, torch.Tensor]:
    """The losses of a spectral codec's level: its predicted log-magnitudes against the target's STFT.

    ``log_mag``: L1 of the floored natural-log magnitudes (every bin counts alike, so the harmonics
    that carry pitch count as much as the envelope); ``convergence``: spectral convergence
    (Frobenius norm of the magnitude error over the target's, which the loud partials dominate);
    ``mel``: the mel distance's term at this window length (2,048 points: log10, 320 Slaney
    bands), computed from the same magnitudes; ``pitch``: L1 of log10 magnitudes summed into semitone bands (MIDI 36 to
    108, ``semitone_filterbank``), where a note's partials are a large share of the bins, not the
    2% of 1,025 linear bins they are (trained without it, the codes kept rhythm and envelope but
    hardly any notes: onset F1 0.10 after 2,000 steps).

    Args:
        log_magnitude: (B, F, frames) decoder output.
        target: (B, 1, T) band-limited target audio, T <= frames * hop (zero-padded to it, as the
            model pads its input).
        hop: the samples between frames (``CodecOutput.frame_hop``). Given, not inferred from T:
            until December 2026 it was ceil(T / frames), 502 instead of 512 for 2 s crops, so
            the targets drifted 10 samples a frame against the predictions (39 ms by a crop's end).
    """
    n_fft = 2 * (log_magnitude.shape[1] - 1)
    frames = log_magnitude.shape[-1]
    target = F.pad(target, (0, frames * hop - target.shape[-1]))
    magnitude = stft_magnitude(target, n_fft, hop)
    estimate = log_magnitude.exp()
    n_mels = MEL_BANDS[MEL_WINDOWS.index(n_fft)]
    mel_estimate = mel_magnitude(estimate, n_mels, sample_rate).clamp(min=CLAMP_EPS).log10()
    mel_target = mel_magnitude(magnitude, n_mels, sample_rate).clamp(min=CLAMP_EPS).log10()
    bands = semitone_filterbank(n_fft, sample_rate).to(magnitude.device)
    pitch_estimate = (bands @ estimate).clamp(min=LOG_FLOOR).log10()
    pitch_target = (bands @ magnitude).clamp(min=LOG_FLOOR).log10()
    return {
        "pitch": (pitch_estimate - pitch_target).abs().mean(),
        "log_mag": (log_magnitude.clamp(min=math.log(LOG_FLOOR)) - log_magnitude_of(magnitude)).abs().mean(),
        "convergence": torch.linalg.vector_norm(estimate - magnitude) / torch.linalg.vector_norm(magnitude).clamp(
            min=1e-6),
        "mel": (mel_estimate - mel_target).abs().mean(),
    }


class CodeCounter:
    """Counts of every code per level and codebook over a logging window (on the model's device)."""

    def __init__(self, config: CodecConfig) -> None:
        self.size = config.codebook_size
        self.counts: list[torch.Tensor | None] = [None] * config.n_levels

    def add(self, codes: list[torch.Tensor]) -> None:
        """``codes``: per level (B, n_q, T_i) long codes."""
        for level, c in enumerate(codes):
            n_q = c.shape[1]
            offsets = torch.arange(n_q, device=c.device).view(1, n_q, 1) * self.size
            counts = torch.bincount((c + offsets).reshape(-1), minlength=n_q * self.size).view(n_q, self.size)
            previous = self.counts[level]
            self.counts[level] = counts if previous is None else previous + counts

    def summary(self) -> dict[str, list[float]]:
        """Per level: distinct codes used and perplexity (exp entropy) of each codebook; resets."""
        result: dict[str, list[float]] = {}
        for level, counts in enumerate(self.counts):
            if counts is None:
                continue
            usage = codebook_usage(counts)
            result[f"codes_used_l{level}"] = [u.used for u in usage]
            result[f"perplexity_l{level}"] = [round(u.perplexity, 2) for u in usage]
        self.counts = [None] * len(self.counts)
        return result


@torch.no_grad()
def reseed_dead_codes(model: PyramidCodec, wav: torch.Tensor, info: DistInfo, generator: torch.Generator) -> int:
    """Replace codebook entries no rank used since the last reseed (quantize.py's remedy), level by level.

    Every level's RVQ is reseeded from the inputs it sees for ``wav`` (B, 1, T): F[i] + U_i(Q[i-1])
    (Alg. 1), recomputed after the coarser levels changed. Under DDP the usage counts are summed
    over ranks first and rank 0's new codebooks are broadcast, so the replicas stay identical.

    Returns:
        The number of entries replaced (as rank 0 counts them).
    """
    stages = [stage for rvq in model.level_quantizers for stage in rvq.stages]
    if info.distributed:
        for stage in stages:
            dist.all_reduce(stage.code_counts)
    replaced = 0
    if info.is_main:

        def reseed(level: int, rvq: ResidualVectorQuantize, inputs: torch.Tensor) -> None:
            nonlocal replaced
            replaced += rvq.reseed_dead_codes(inputs, generator=generator)

        # Alg. 1 as encoding runs it, with each level reseeded just before it quantizes its inputs.
        model.quantize(model.features(model.pad_to_frames(wav.float())), dropout=False, before_level=reseed)
    else:
        for stage in stages:
            stage.code_counts.zero_()
    if info.distributed:
        for stage in stages:
            dist.broadcast(stage.codebook.weight.data, src=0)
    return replaced


@dataclass
class Evaluator:
    """Mel distance of every level on fixed validation clips, against band-limited and full targets."""

    clips: torch.Tensor  # (n, 1, T) on the training device
    targets: list[torch.Tensor]  # per level (n, 1, T)
    batch_size: int
    sample_rate: int

    @property
    def count(self) -> int:
        return self.clips.shape[0]

    @classmethod
    def build(cls, corpus: Path, cfg: CodecTrainConfig, config: CodecConfig, info: DistInfo) -> Evaluator | None:
        """Clips from the "valid" split; None (evaluation off) when it has no song long enough."""
        if not cfg.eval_every:
            return None
        try:
            valid = RandomCropDataset(corpus, "valid", cfg.eval_seconds, config.sample_rate, seed=cfg.seed,
                                      silence_db=cfg.silence_db)
        except InputError:
            return None
        clips = fixed_clips(valid, cfg.eval_clips)
        targets = band_limited_targets(clips, config.n_levels)
        return cls(clips.to(info.device), [t.to(info.device) for t in targets], cfg.batch_size, config.sample_rate)

    @torch.no_grad()
    def run(self, model: PyramidCodec, step: int) -> dict[str, Any]:
        """An "eval" metrics record; ``mel`` (the best-checkpoint criterion) averages the levels."""
        was_training = model.training
        model.eval()  # no quantizer dropout, no usage counting
        n_levels = len(self.targets)
        band: list[list[torch.Tensor]] = [[] for _ in range(n_levels)]
        full: list[list[torch.Tensor]] = [[] for _ in range(n_levels)]
        for start in range(0, self.count, self.batch_size):
            batch = self.clips[start:start + self.batch_size]
            out = model(batch, levels_to_decode=range(n_levels))
            for i in range(n_levels):
                estimate = out.reconstructions[i]
                band[i].append(mel_distance(estimate, self.targets[i][start:start + len(batch)],
                                            self.sample_rate, reduction="none"))
                full[i].append(mel_distance(estimate, batch, self.sample_rate, reduction="none"))
        model.train(was_training)
        record: dict[str, Any] = {"kind": "eval", "step": step, "clips": self.count}
        for i in range(n_levels):
            record[f"mel_l{i}"] = float(torch.cat(band[i]).mean())
            record[f"mel_full_l{i}"] = float(torch.cat(full[i]).mean())
        record["mel"] = sum(record[f"mel_l{i}"] for i in range(n_levels)) / n_levels
        return record


def read_model_config(directory: Path) -> CodecConfig:
    """The CodecConfig of a model folder (config.json + model.safetensors)."""
    path = directory / "config.json"
    if not path.is_file():
        raise InputError(f"{path}: no such file (fine-tuning starts from a model folder with config.json)")
    return CodecConfig.from_dict(read_json_object(path, "codec config"))


def added_parts(source: CodecConfig, target: CodecConfig) -> tuple[str, ...] | None:
    """The weight-name prefixes ``target`` has beyond ``source`` when it is ``source`` plus a note head,
    or plus per-key partials or re-strike logits in its note head, or plus the code probes
    (``code_notes``) or the encoder's (``encoder_notes``): fine-tuning may add those, nothing else.
    A new FSQ grid (``fsq_levels``, same codebook size) is the one part that is replaced rather than
    grown: ``quantizers.`` start afresh around the source's encoder and decoder (new codes, so a new
    tokenizer). () for the same architecture; None when it is another model. Names and
    ``same_tokens_as`` do not count, nor ``note_gate_power``, which shapes the rendering but no weight."""
    def bare(config: CodecConfig, **changes: Any) -> CodecConfig:
        config = replace(config, name="", same_tokens_as=(), note_gate_power=1.0, **changes)
        return config if config.code_notes else replace(config, code_note_levels=1)  # no probe: no count

    if bare(source) == bare(target):
        return ()
    if source.fsq_levels and target.fsq_levels and source.fsq_levels != target.fsq_levels:
        rest = added_parts(replace(source, fsq_levels=target.fsq_levels), target)
        return None if rest is None else ("quantizers.", *rest)
    if target.harmonics and not source.harmonics and bare(source) == bare(target, harmonics=0, key_partials=False,
                                                                          note_onsets=False):
        return ("decoder.note_head.",)
    if source.harmonics:  # parts of the note head, each grown alone or together
        parts = {"key_partials": "decoder.note_head.key_partials.", "note_onsets": "decoder.note_head.onsets.",
                 "code_notes": "code_note_heads.", "encoder_notes": "encoder_note_head."}
        grown = [name for name in parts if getattr(target, name) and not getattr(source, name)]
        if grown and bare(source) == bare(target, **{name: False for name in grown}):
            return tuple(parts[name] for name in grown)
    return None


def load_init_weights(model: PyramidCodec, directory: Path) -> None:
    """Copy the weights of a model folder into ``model`` (fine-tuning start; optimizer stays fresh).

    A folder saved with folded weight norm (plain ``weight`` keys) is accepted too: assigning a
    weight to a weight-norm parametrized module goes through its ``right_inverse``, which
    recovers magnitude and direction, so training keeps its weight-norm parametrization.
    """
    source = PyramidCodec.from_pretrained(directory)
    grown = added_parts(source.config, model.config)
    if grown is None:
        raise UsageError(f"{directory}: holds a {source.config.name!r} model, not the one being trained")
    # Grown parts start from their initialisation; a replaced grid's quantizers differ in shape.
    state = {key: value for key, value in source.state_dict().items() if not key.startswith(grown)}
    folded = not any(".parametrizations." in key for key in state)
    with torch.no_grad():
        if folded:
            for name, module in model.named_modules():
                if parametrize.is_parametrized(module, "weight") and not f"{name}.".startswith(grown):
                    module.weight = state.pop(f"{name}.weight")
        missing, unexpected = model.load_state_dict(state, strict=False)
    if folded:  # the parametrizations were set above, not through the state dict
        missing = [key for key in missing if ".parametrizations." not in key]
    missing = [key for key in missing if not key.startswith(grown)]
    if missing or unexpected:
        raise FormatError(f"{directory}: weights do not fit the model (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]})")
