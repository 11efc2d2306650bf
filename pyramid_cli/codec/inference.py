"""Chunked encoding and decoding of long audio in bounded memory, invariant to the chunk size.

Kept out of ``model.py`` (as DAC keeps its chunking out of the network): the model sees short
pieces; this module cuts, pads with context and stitches.

Method (overlap-and-discard). Chunks start and end on coarse-frame boundaries (multiples of the
coarsest hop, which every other hop and every stride divides), so every conv sees the same
sample alignment as in a whole-signal pass. Each chunk is processed with ``context`` coarse frames
of real signal (or codes) on both sides and only its own central frames (or samples) are kept.
When the context covers the network's receptive field, the kept frames cannot see the chunk
edges and equal the whole-signal result; at the true ends of the signal a chunk ends exactly where
the whole signal does, so the ends are equal too. The tokens therefore do not depend on the chunk
size (DAC's do, dac#39) and the decoded audio has no seams and exactly the requested length
(dac#37: 8 samples short; snac#33: too long).

The receptive field is measured, not assumed: ``receptive_field`` back-propagates from one frame
(and from one frame's worth of output samples) through a narrow random-weight copy of the
codec's geometry and reads off the support of the gradient.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from pyramid_cli.codec.config import CodecConfig
from pyramid_cli.codec.model import PyramidCodec
from pyramid_cli.errors import InputError, UsageError

# Short enough that the peak memory of a 30 s input and of an hour are the same (one chunk is all
# that is ever in flight), long enough that the context (~1.3 s each side when decoding) and the
# per-operation overheads cost little: with 10 s chunks the note codec decoded 3 minutes 30%
# slower on 2 idle cores, for 0.1-0.2 GB less peak memory (README, Performance).
DEFAULT_CHUNK_SECONDS = 30.0
Progress = Callable[[int, int], None]  # (samples done, samples in total)


@dataclass(frozen=True)
class ReceptiveField:
    """How far codes and audio reach, in whole coarse frames (hop = ``config.hop_lengths[0]``).

    Attributes:
        encode_frames: the codes of coarse frame k (every level's frames inside it) depend only on
            audio within ``encode_frames`` coarse frames of it on either side.
        decode_frames: the audio of coarse frame k depends only on codes (of any level) within
            ``decode_frames`` coarse frames of it on either side.
        hop_length: the coarsest hop in samples.
        sample_rate: the codec's sample rate.
    """

    encode_frames: int
    decode_frames: int
    hop_length: int
    sample_rate: int

    @property
    def encode_seconds(self) -> float:
        return self.encode_frames * self.hop_length / self.sample_rate

    @property
    def decode_seconds(self) -> float:
        return self.decode_frames * self.hop_length / self.sample_rate


def _probe_config(config: CodecConfig) -> CodecConfig:
    """Same strides and levels (the geometry), narrowest widths: a cheap model to measure reach.

    No note head: it maps each decoder frame to that frame's magnitudes, so it reaches no further,
    and its harmonic templates would cost a fifth of the probe's time.
    """
    return dataclasses.replace(
        config, encoder_dim=2, latent_dim=4, decoder_dim=2 ** (len(config.decoder_rates) + 1),
        codebook_size=4, codebook_dim=2, n_codebooks=(1,) * config.n_levels, quantizer_dropout=0.0,
        fsq_levels=(2, 2) if config.fsq_levels else (), harmonics=0, key_partials=False, note_onsets=False,
        note_gate_power=1.0, code_notes=False, encoder_notes=False,
    )


def _reach(support: torch.Tensor, first: int, last: int, unit: int) -> tuple[int, bool]:
    """Coarse frames (``unit`` indices each) by which the non-zero ``support`` (T,) spills past
    indices [first, last]; and whether it touches either end (then the probe was too short)."""
    nonzero = support.nonzero().squeeze(1)
    lo, hi = int(nonzero.min()), int(nonzero.max())
    touches = lo == 0 or hi == support.numel() - 1
    return max(math.ceil((first - lo) / unit), math.ceil((hi - last) / unit), 0), touches


def _random_sum(x: torch.Tensor) -> torch.Tensor:
    """A random linear combination of the entries of ``x``: no two gradients can cancel."""
    return (x * torch.randn_like(x)).sum()


def _measure_encode(probe: PyramidCodec, frames: int) -> tuple[int, bool]:
    """Coarse frames of audio that the codes of the middle coarse frame of a ``frames``-frame probe
    reach on either side, and whether they touched an end of the probe (then it was too short)."""
    hops, hop, k = probe.config.hop_lengths, probe.config.hop_lengths[0], frames // 2
    wav = (0.1 * torch.randn(1, 1, frames * hop)).requires_grad_(True)
    outputs = probe.quantize(probe.features(wav), dropout=False)
    target = torch.stack([_random_sum(out.z_q[..., k * hop // h:(k + 1) * hop // h])
                          for out, h in zip(outputs, hops, strict=True)]).sum()
    (grad,) = torch.autograd.grad(target, wav)
    return _reach(grad[0, 0].abs(), k * hop, (k + 1) * hop - 1, hop)


def _measure_decode(probe: PyramidCodec, frames: int) -> tuple[int, bool]:
    """As ``_measure_encode``, for the samples of the middle coarse frame ← the quantised latents of
    every level (Eq. 1)."""
    config = probe.config
    hops, hop, k = config.hop_lengths, config.hop_lengths[0], frames // 2
    latents = [torch.randn(1, config.latent_dim, frames * hop // h, requires_grad=True) for h in hops]
    audio = probe.decode_latent(probe.lift(probe.pyramid_latents(latents)[-1], config.n_levels - 1))
    grads = torch.autograd.grad(_random_sum(audio[..., k * hop:(k + 1) * hop]), latents)
    decode, touches = 0, False
    for g, h in zip(grads, hops, strict=True):
        reach, edge = _reach(g[0].abs().sum(0), k * hop // h, (k + 1) * hop // h - 1, hop // h)
        decode, touches = max(decode, reach), touches or edge
    return decode, touches


def _probe_reach(config: CodecConfig, measure: Callable[[PyramidCodec, int], tuple[int, bool]]) -> int:
    frames = max(16, math.ceil(2**16 / config.hop_lengths[0]))  # ~3 s at 22 kHz: enough for DAC strides
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the probe is tiny: one thread beats contending for busy cores
    try:
        with torch.inference_mode(False), torch.enable_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            probe = PyramidCodec(_probe_config(config)).eval().requires_grad_(False)
            while True:
                reach, touches = measure(probe, frames)
                if not touches:
                    return reach
                frames *= 2  # the probe was shorter than the reach: try a longer one
    finally:
        torch.set_num_threads(threads)


@functools.lru_cache(maxsize=16)
def encode_reach(config: CodecConfig) -> int:
    """Coarse frames of audio on either side that chunked encoding must add (``receptive_field``)."""
    return _probe_reach(config, _measure_encode)


@functools.lru_cache(maxsize=16)
def decode_reach(config: CodecConfig) -> int:
    """Coarse frames of codes on either side that chunked decoding must add (``receptive_field``)."""
    return _probe_reach(config, _measure_decode)


def receptive_field(config: CodecConfig) -> ReceptiveField:
    """Measure how many coarse frames of context chunked encoding and decoding need.

    Gradients of a random-weight probe with ``config``'s geometry flow through the
    straight-through quantisers, so their support is exactly the set of inputs a code or a sample
    depends on. The result depends on the architecture (strides, kernels, residual units), not on
    the widths or the weights. Each half is measured when first needed and cached per config
    (``encode_reach``: 0.05 s for the note codec; ``decode_reach``: 0.2 s, through Griffin-Lim):
    a process that only encodes never measures the decoder.
    """
    return ReceptiveField(encode_reach(config), decode_reach(config), config.hop_lengths[0], config.sample_rate)


def _chunk_frames(chunk_seconds: float, hop: int, sample_rate: int) -> int:
    if not (chunk_seconds > 0 and math.isfinite(chunk_seconds)):
        raise UsageError(f"chunk length must be a positive number of seconds, got {chunk_seconds}")
    return max(1, round(chunk_seconds * sample_rate / hop))


def _device(model: PyramidCodec) -> torch.device:
    return next(model.parameters()).device


class Signal(Protocol):
    """Audio that can be read range by range (``pyramid_cli.audio.stream.AudioReader`` is one)."""

    num_samples: int

    def read(self, start: int, stop: int) -> np.ndarray:
        """Samples [start, stop) at the codec rate, zeros past the end: (1, stop - start)."""
        ...


def _window(signal: torch.Tensor | Signal, start: int, stop: int) -> torch.Tensor:
    """(1, stop - start) float32 samples of ``signal``, zero-padded past its end as ``model.encode`` pads."""
    if isinstance(signal, torch.Tensor):
        piece = signal[:, start:stop].float()
        return torch.nn.functional.pad(piece, (0, stop - start - piece.shape[1]))
    return torch.from_numpy(np.ascontiguousarray(signal.read(start, stop), dtype=np.float32))


def encode_audio(
    model: PyramidCodec,
    wav: torch.Tensor | Signal,
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
    progress: Progress | None = None,
) -> list[torch.Tensor]:
    """Encode a long mono signal chunk by chunk; the codes equal ``model.encode`` on the whole.

    Args:
        model: the codec (eval mode), on any device; chunks are moved there one at a time.
        wav: (1, T) audio at ``model.config.sample_rate`` (may stay on the CPU), or a ``Signal``
            read one chunk at a time, so that only one chunk of a long file is ever in memory.
        chunk_seconds: audio per chunk (rounded to whole coarse frames); bounds the memory.
        progress: called with (samples done, total samples) after each chunk.

    Returns:
        Per level, level 0 first, (n_codebooks[i], T_i) long codes on the CPU, with
        T_i = ``model.frame_counts(T)[i]``.
    """
    length = wav.shape[1] if isinstance(wav, torch.Tensor) else wav.num_samples
    if isinstance(wav, torch.Tensor) and (wav.dim() != 2 or wav.shape[0] != 1) or length == 0:
        shape = tuple(wav.shape) if isinstance(wav, torch.Tensor) else (1, length)
        raise InputError(f"expected mono audio shaped (1, T) with T > 0, got {shape}")
    config = model.config
    hops, hop, rate = config.hop_lengths, config.hop_lengths[0], config.sample_rate
    context = encode_reach(config)  # each chunk sees all the audio its codes depend on
    step = _chunk_frames(chunk_seconds, hop, rate)
    total = model.frame_counts(length)[0]  # coarse frames
    pieces: list[list[torch.Tensor]] = [[] for _ in hops]
    device = _device(model)
    with torch.inference_mode():
        for start in range(0, total, step):
            end = min(total, start + step)
            a, b = max(0, start - context), min(total, end + context)
            codes = model.encode(_window(wav, a * hop, b * hop)[None].to(device))  # per level (1, n_q, frames)
            for i, (level_codes, h) in enumerate(zip(codes, hops, strict=True)):
                scale = hop // h  # level-i frames per coarse frame
                pieces[i].append(level_codes[0, :, (start - a) * scale:(end - a) * scale].cpu())
            if progress is not None:
                progress(min(end * hop, length), length)
    return [torch.cat(level, dim=-1) for level in pieces]


def iter_decode_codes(
    model: PyramidCodec,
    codes: Sequence[torch.Tensor],
    levels: int | None = None,
    num_samples: int | None = None,
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
    progress: Progress | None = None,
) -> Iterator[torch.Tensor]:
    """Decode long codes chunk by chunk, yielding consecutive (1, n) float32 CPU pieces of the audio.

    Their concatenation is ``decode_codes``'s result; a caller that writes each piece as it comes
    (``pyramid decode``, through ``audio.write_audio_pieces``) holds one chunk of audio at a time.
    Arguments as ``decode_codes``; they are checked before the first piece is decoded.
    """
    config = model.config
    levels = len(codes) if levels is None else levels
    if not 1 <= levels <= min(len(codes), config.n_levels):
        raise UsageError(f"cannot decode {levels} levels from codes for {len(codes)} "
                         f"(the codec has {config.n_levels})")
    hop, rate = config.hop_lengths[0], config.sample_rate
    if any(c.dim() != 2 for c in codes[:levels]):
        raise InputError(f"codes must be (n_q, T_i) per level, got {[tuple(c.shape) for c in codes[:levels]]}")
    total = codes[0].shape[-1]  # coarse frames
    num_samples = total * hop if num_samples is None else num_samples
    if not 0 <= num_samples <= total * hop:
        raise InputError(f"{num_samples} samples asked for, the codes hold {total * hop}")
    context = decode_reach(config)  # each chunk sees all the codes its audio depends on
    step = _chunk_frames(chunk_seconds, hop, rate)
    return _decode_pieces(model, codes[:levels], num_samples, context, step, progress)


def _decode_pieces(model: PyramidCodec, codes: Sequence[torch.Tensor], num_samples: int, context: int, step: int,
                   progress: Progress | None) -> Iterator[torch.Tensor]:
    hops, hop, levels = model.config.hop_lengths, model.config.hop_lengths[0], len(codes)
    total, device = codes[0].shape[-1], _device(model)
    with torch.inference_mode():
        # Frames past num_samples (the encoder's right padding) are decoded only as context.
        for start in range(0, math.ceil(num_samples / hop), step):
            end = min(total, start + step)
            a, b = max(0, start - context), min(total, end + context)
            window = [c[None, :, a * hop // h:b * hop // h].to(device) for c, h in zip(codes, hops[:levels],
                                                                                       strict=True)]
            audio = model.decode(window, levels=levels)  # (1, 1, (b - a) * hop)
            keep = min(end * hop, num_samples) - start * hop
            yield audio[0, :, (start - a) * hop:(start - a) * hop + keep].float().cpu()
            if progress is not None:
                progress(min(end * hop, num_samples), num_samples)


def decode_codes(
    model: PyramidCodec,
    codes: Sequence[torch.Tensor],
    levels: int | None = None,
    num_samples: int | None = None,
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Decode long codes chunk by chunk; equals ``model.decode`` on the whole, with no seams.

    Args:
        model: the codec (eval mode), on any device.
        codes: per level, level 0 first, (n_q_i, T_i) integer codes (as ``encode_audio`` returns);
            levels past ``levels`` are never read.
        levels: how many levels to decode (default ``len(codes)``).
        num_samples: output length (default every sample the codes cover, T_0 * coarsest hop).
        chunk_seconds: audio per chunk (rounded to whole coarse frames); bounds the memory.
        progress: called with (samples done, num_samples) after each chunk.

    Returns:
        (1, num_samples) float32 audio on the CPU.
    """
    pieces = list(iter_decode_codes(model, codes, levels, num_samples, chunk_seconds, progress))
    return torch.cat(pieces, dim=-1) if pieces else torch.zeros(1, 0)
