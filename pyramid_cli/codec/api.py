"""Audio ↔ ``.pyr`` as library calls: what ``pyramid encode`` and ``pyramid decode`` run.

The library returns values and raises ``PyramidError``s; the command line owns paths, ``--force``
and exit codes (EnCodec's split). Shapes: audio is numpy float32 (channels, samples); codes are
(n_codebooks, frames) per level, level 0 (the coarsest) first.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from pyramid_cli.audio.io import db_to_amplitude, resample, to_mono
from pyramid_cli.audio.stream import AudioReader
from pyramid_cli.codec.inference import (
    DEFAULT_CHUNK_SECONDS,
    Progress,
    encode_audio,
    encode_reach,
    iter_decode_codes,
)
from pyramid_cli.codec.model import PyramidCodec
from pyramid_cli.errors import CodecMismatchError, InputError, UsageError
from pyramid_cli.hub.files import WEIGHTS_NAME
from pyramid_cli.hub.identity import (
    CodecIdentity,
    check_checksums,
    check_codec_identity,
    codec_identity,
    legacy_weights_hash,
)
from pyramid_cli.hub.registry import DEFAULT_CODEC, RETIRED_CODECS, resolve_model, resolve_recorded, retired_codec_hint
from pyramid_cli.pyr.file import PyrFile, PyrLevel

SILENCE_DB = -80.0  # a peak below this (about 3 LSB of 16-bit audio) holds nothing to encode


@dataclass(frozen=True)
class LoadedCodec:
    """A codec ready for inference and its identity; unpacks as ``model, name, hash``.

    ``aliases``: other hashes whose tokens are this codec's: of the same weights as earlier versions
    recorded them (the SHA-256 of the whole file, see ``hub.identity.weights_hash``), and of the codecs
    in its config's ``same_tokens_as`` (same encoder and quantizers); tokens that carry one are accepted.
    """

    model: PyramidCodec
    name: str
    hash: str
    aliases: tuple[str, ...] = ()

    def __iter__(self) -> Iterator[Any]:
        return iter((self.model, self.name, self.hash))

    @property
    def identity(self) -> CodecIdentity:
        return CodecIdentity(self.name, self.hash, self.aliases)

    def matches(self, name: str, digest: str) -> bool:
        """True when (name, digest), e.g. read from a ``.pyr``, is this codec's identity."""
        return self.identity.matches(name, digest)


def load_codec(ref: str | Path = DEFAULT_CODEC, device: str | torch.device = "cpu", *,
               download: bool = True) -> LoadedCodec:
    """Load a codec for inference: eval mode, weight norm folded, on ``device``.

    Args:
        ref: a checkpoint folder, a bundled or cached name, or ``hf://org/repo[@rev]``
            (see ``hub.registry.locate_model``).
        device: a ``torch.device`` or a name for ``pyramid_cli.runtime.devices.resolve_device``.
        download: allow fetching an ``hf://`` reference missing from the cache.

    Returns:
        ``LoadedCodec(model, name, hash, aliases)``; name and hash are what ``.pyr`` files record.

    Raises:
        FormatError: the files differ from the folder's ``checksums.json``, or do not fit each other.
    """
    from pyramid_cli.runtime.devices import resolve_device

    folder = resolve_model(ref, kind="codec", download=download)
    check_checksums(folder)
    name, digest = codec_identity(folder)
    legacy = legacy_weights_hash(folder / WEIGHTS_NAME)
    model = PyramidCodec.from_pretrained(folder, device=resolve_device(device))
    model.fold_weight_norm().eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    # Earlier hashes of these weights, and codecs whose tokens these are (a fine-tuned decoder).
    aliases = ((legacy,) if legacy != digest else ()) + model.config.same_tokens_as
    return LoadedCodec(model, name, digest, aliases)


def encode_file(
    source: str | Path | BinaryIO,
    codec: LoadedCodec,
    *,
    name: str | None = None,
    levels: int | None = None,
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
    progress: Progress | None = None,
    warn: Callable[[str], None] | None = None,
) -> PyrFile:
    """Read an audio file or stream chunk by chunk and encode it (see ``encode_waveform``).

    Only one chunk of the file is in memory at a time (``audio_stream.AudioReader`` mixes it down
    and resamples it range by range), so an hour-long file needs no more memory than a song.

    Args:
        source: a path, or a binary stream holding a whole WAV/FLAC/OGG file (e.g. stdin).
        codec: from ``load_codec``.
        name: how to call the input in messages and provenance (default: the path; ``<stdin>``).
        warn: called with a one-line message about input that is encoded but deserves a word (a
            truncated WAV: only the part the file holds is encoded).
    """
    label = name or (str(source) if isinstance(source, (str, Path)) else "<stdin>")
    kept = _check_levels(codec, levels)
    with AudioReader(source, codec.model.config.sample_rate, name=label) as reader:
        if reader.truncated and warn is not None:
            warn(truncation_message(label, reader.frames, reader.header_frames or 0, reader.original_sample_rate))
        _check_signal(label, reader.peak(), reader.num_samples, codec)
        codes = encode_audio(codec.model, reader, chunk_seconds=chunk_seconds,
                             progress=progress)
        return _pyr(codec, codes[:kept], reader.num_samples, reader.original_sample_rate, reader.channels, label,
                    chunk_seconds)


def truncation_message(name: str, frames: int, header_frames: int, sample_rate: int) -> str:
    """One line saying that ``name`` holds ``frames`` of the ``header_frames`` its header declares."""
    return (f"{name}: the file is truncated: its header declares {header_frames / sample_rate:.2f} s, it holds "
            f"{frames / sample_rate:.2f} s ({100 * frames / header_frames:.0f}%); encoding the readable part")


def encode_waveform(
    wav: np.ndarray,
    sample_rate: int,
    codec: LoadedCodec,
    *,
    name: str = "<audio>",
    levels: int | None = None,
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
    progress: Progress | None = None,
) -> PyrFile:
    """Mix down to mono, resample to the codec's rate and encode chunk by chunk into a ``PyrFile``.

    Args:
        wav: (C, T) float audio in [-1, 1] at ``sample_rate``.
        levels: keep only the first ``levels`` levels (default all the codec has).
        chunk_seconds: see ``pyramid_cli.codec.inference.encode_audio``; the tokens do not depend
            on it.
        progress: called with (samples done, total samples) at the codec rate.

    Returns:
        The ``.pyr`` content: codes, the exact length at the codec rate, the input's original rate
        and channel count, and provenance (source name, chunk and overlap).

    Raises:
        InputError: the audio holds NaN or infinite samples, is silent or is shorter than one coarse frame.
        UsageError: ``levels`` outside 1..n_levels.
    """
    kept = _check_levels(codec, levels)
    if wav.ndim != 2 or wav.shape[1] == 0:
        raise InputError(f"{name}: expected (channels, samples) audio, got shape {wav.shape}")
    mono = resample(to_mono(np.asarray(wav, dtype=np.float32)), sample_rate, codec.model.config.sample_rate)
    _check_signal(name, float(np.max(np.abs(mono))) if mono.size else 0.0, mono.shape[1], codec)
    codes = encode_audio(codec.model, torch.from_numpy(np.ascontiguousarray(mono)), chunk_seconds=chunk_seconds,
                         progress=progress)
    return _pyr(codec, codes[:kept], mono.shape[1], sample_rate, wav.shape[0], name, chunk_seconds)


def _check_levels(codec: LoadedCodec, levels: int | None) -> int:
    n_levels = codec.model.config.n_levels
    if levels is not None and not 1 <= levels <= n_levels:
        raise UsageError(f"cannot keep {levels} levels: {codec.name} has levels 1..{n_levels}")
    return n_levels if levels is None else levels


def _check_signal(name: str, peak: float, num_samples: int, codec: LoadedCodec) -> None:
    """Refuse a mono signal (peak, length at the codec rate) that is not finite, silent or shorter than a frame."""
    if not math.isfinite(peak):
        raise InputError(f"{name} holds non-finite samples (NaN or infinity); nothing sensible can be encoded")
    if peak <= db_to_amplitude(SILENCE_DB):
        raise InputError(f"{name} is silent (peak below {SILENCE_DB:.0f} dBFS after mixing down to mono); "
                         "nothing to encode")
    config = codec.model.config
    hop = config.hop_lengths[0]
    if num_samples < hop:
        raise InputError(f"{name} is too short: {num_samples / config.sample_rate * 1000:.1f} ms; the codec needs "
                         f"at least one coarse frame ({hop} samples, {hop / config.sample_rate * 1000:.1f} ms)")


def _pyr(codec: LoadedCodec, codes: list[torch.Tensor], num_samples: int, original_sample_rate: int,
         original_channels: int, name: str, chunk_seconds: float) -> PyrFile:
    config = codec.model.config
    overlap = encode_reach(config) * config.hop_lengths[0] / config.sample_rate  # each chunk's context
    return PyrFile(
        codec_name=codec.name,
        codec_hash=codec.hash,
        sample_rate=config.sample_rate,
        num_samples=num_samples,
        original_sample_rate=original_sample_rate,
        original_channels=original_channels,
        codebook_size=config.codebook_size,
        levels=[PyrLevel(hop, c.numpy()) for hop, c in zip(config.hop_lengths, codes, strict=False)],
        provenance={
            "source": Path(name).name if name not in ("<stdin>", "-") else "<stdin>",
            "chunk_seconds": float(chunk_seconds),
            "overlap_seconds": round(float(overlap), 6),
        },
    )


def check_pyr_codec(pyr: PyrFile, codec: LoadedCodec, name: str = "the .pyr file") -> None:
    """Refuse a ``.pyr`` made by another codec (identity), or whose layout the codec cannot read.

    Raises:
        CodecMismatchError: naming both codecs, or the first layout difference.
    """
    check_codec_identity((pyr.codec_name, pyr.codec_hash), codec.identity, f"{name} was made with",
                         "the codec given is")
    config = codec.model.config
    problems = []
    if pyr.sample_rate != config.sample_rate:
        problems.append(f"sample rate {pyr.sample_rate} Hz, the codec's is {config.sample_rate} Hz")
    if pyr.codebook_size != config.codebook_size:
        problems.append(f"codebook size {pyr.codebook_size}, the codec's is {config.codebook_size}")
    if pyr.n_levels > config.n_levels:
        problems.append(f"{pyr.n_levels} levels, the codec has {config.n_levels}")
    for i, (level, hop, n_q) in enumerate(zip(pyr.levels, config.hop_lengths, config.n_codebooks, strict=False)):
        if level.hop_length != hop or level.n_codebooks > n_q:
            problems.append(f"level {i} has hop {level.hop_length} and {level.n_codebooks} codebooks, "
                            f"the codec's has hop {hop} and {n_q}")
    frames = codec.model.frame_counts(pyr.num_samples)
    if pyr.frames != frames[: pyr.n_levels]:
        problems.append(f"{pyr.frames} frames per level for {pyr.num_samples} samples; expected {frames}")
    if problems:
        raise CodecMismatchError(f"{name} does not fit {codec.name}: {problems[0]}")


def decoded_levels(pyr: PyrFile, levels: int | None, name: str = "the .pyr file") -> int:
    """How many levels decoding ``pyr`` at ``levels`` reads: all it stores by default.

    Raises:
        UsageError: ``levels`` outside 1..pyr.n_levels.
    """
    k = pyr.n_levels if levels is None else levels
    if not 1 <= k <= pyr.n_levels:
        raise UsageError(f"levels {k}: {name} stores {pyr.n_levels} level(s), so it decodes at 1..{pyr.n_levels}",
                         option="levels")
    return k


def load_codec_for(pyr: PyrFile, model: str | Path | None = None, device: str | torch.device = "cpu",
                   name: str = "the .pyr file") -> LoadedCodec:
    """The codec to decode ``pyr`` with: ``model`` when given, else the one the file names, which may
    only be a local model (a name read from a file never downloads).

    Raises:
        InputError: the named codec is not installed here (saying how to get it).
    """
    if model is not None:
        return load_codec(model, device)
    try:
        folder = resolve_recorded(pyr.codec_name, "codec")
    except InputError as error:
        if pyr.codec_name in RETIRED_CODECS:
            raise InputError(f"{name} was made with {pyr.codec_name}@{pyr.codec_hash[:8]}, "
                             f"{retired_codec_hint(pyr.codec_name)}", option="model") from None
        reason = "a name read from a file never downloads" if "pyramid download" in str(error) else "no local model"
        raise InputError(f"{name} was made with {pyr.codec_name[:80]}@{pyr.codec_hash[:8]}, which is not installed "
                         f"here; name that codec's folder, or fetch it with `pyramid download` ({reason})",
                         option="model") from None
    return load_codec(folder, device)


def iter_decode_pyr(
    pyr: PyrFile,
    codec: LoadedCodec,
    levels: int | None = None,
    *,
    name: str = "the .pyr file",
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
    progress: Progress | None = None,
) -> Iterator[np.ndarray]:
    """Decode the first ``levels`` levels of a ``.pyr`` (default all it stores), one chunk at a time.

    The file is checked before anything is decoded. Yields consecutive (1, n) float32 pieces at
    ``pyr.sample_rate`` that add up to exactly ``pyr.num_samples`` samples; writing each as it comes
    (``audio.write_audio_pieces``) keeps the memory of a long decode to one chunk.

    Raises:
        CodecMismatchError: the file was made by another codec (see ``check_pyr_codec``).
        UsageError: ``levels`` outside 1..pyr.n_levels.
    """
    check_pyr_codec(pyr, codec, name)
    levels = decoded_levels(pyr, levels, name)
    codes = [torch.from_numpy(level.codes) for level in pyr.levels[:levels]]
    pieces = iter_decode_codes(codec.model, codes, levels=levels, num_samples=pyr.num_samples,
                               chunk_seconds=chunk_seconds, progress=progress)
    return (piece.numpy() for piece in pieces)


def decode_pyr(
    pyr: PyrFile,
    codec: LoadedCodec,
    levels: int | None = None,
    *,
    name: str = "the .pyr file",
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
    progress: Progress | None = None,
) -> np.ndarray:
    """The whole of ``iter_decode_pyr`` (same arguments) as one (1, pyr.num_samples) float32 array."""
    pieces = list(iter_decode_pyr(pyr, codec, levels, name=name, chunk_seconds=chunk_seconds, progress=progress))
    return np.concatenate(pieces, axis=-1) if pieces else np.zeros((1, 0), dtype=np.float32)
