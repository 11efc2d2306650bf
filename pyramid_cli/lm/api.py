"""Generation as a library call: lay out a piece, place a prompt, sample, and return ``.pyr`` files
(``generate_pieces``), or all of it from model references to decoded audio (``generate_audio``).

The CLI's ``pyramid generate`` is ``generate_audio`` plus option parsing and file handling. A generated ``PyrFile``
records in its provenance everything needed to make it again: the LM's and the codec's
identities, the seed and the sampling settings (UX §6).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pyramid_cli.codec.api import LoadedCodec
from pyramid_cli.errors import InputError, UsageError
from pyramid_cli.hub.files import WEIGHTS_NAME
from pyramid_cli.hub.identity import check_checksums, check_codec_identity, weights_hash
from pyramid_cli.hub.registry import DEFAULT_LM, locate_model
from pyramid_cli.lm.decode import DecodeSettings, dtype_name
from pyramid_cli.lm.layout import TokenSequence, make_layout
from pyramid_cli.lm.model import PyramidLM, check_codec
from pyramid_cli.lm.sampling import ProgressCallback, SamplingSettings, generate
from pyramid_cli.pyr.file import PyrFile, PyrLevel
from pyramid_cli.pyr.header import ProvenanceValue

MAX_SECONDS = 3600.0


@dataclass(frozen=True)
class LoadedLM:
    """An LM ready for sampling and its identity (name + 16-hex weights hash)."""

    model: PyramidLM
    name: str
    hash: str
    folder: Path


def load_lm(ref: str | Path = DEFAULT_LM, device: str | torch.device = "cpu", *, download: bool = True) -> LoadedLM:
    """Load an LM for sampling on ``device``.

    Args:
        ref: a folder (config.json + model.safetensors), a bundled or cached name, or
            ``hf://org/repo[@rev]`` (see ``hub.registry.locate_model``).
        device: a ``torch.device`` or a name for ``pyramid_cli.runtime.devices.resolve_device``.
        download: allow fetching an ``hf://`` reference missing from the cache.

    Raises:
        InputError: no such model, or a codec where an LM is needed. FormatError: the files differ
        from the folder's ``checksums.json``, or do not fit each other.
    """
    from pyramid_cli.runtime.devices import resolve_device

    folder = locate_model(ref, kind="lm", download=download).path
    check_checksums(folder)
    model = PyramidLM.from_pretrained(folder, device=resolve_device(device))
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return LoadedLM(model, model.config.name, weights_hash(folder / WEIGHTS_NAME), folder)


@dataclass
class GenerationResult:
    """Generated pieces and how long they took."""

    pieces: list[PyrFile]
    seed: int
    coarse_frames: int
    tokens_generated: int  # over all samples
    seconds: float  # wall time of sampling
    prompt_seconds: float = 0.0
    tokens_per_level: list[int] = field(default_factory=list)  # per sample
    dtype: str = "float32"  # the LM's compute dtype
    compiled: bool = False

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_generated / max(self.seconds, 1e-9)


def plan_piece(lm: PyramidLM, seconds: float, prompt: PyrFile | None = None,
               prompt_seconds: float | None = None) -> tuple[TokenSequence, int, float]:
    """The layout of a ``seconds``-long piece with the prompt's codes in place.

    Returns:
        (plan, coarse frames, seconds of prompt used). The prompt keeps its own time: it is the
        start of the piece and is continued, never re-based.
    """
    config = lm.config
    if not 0 < seconds <= MAX_SECONDS:
        raise UsageError(f"the length must be in (0, {MAX_SECONDS:.0f}] seconds, got {seconds:g}")
    frames = config.coarse_frames_for(seconds)
    plan = make_layout(config).piece(frames)
    used = 0.0
    if prompt is not None:
        if prompt.n_levels != config.n_levels:
            raise InputError(f"the prompt holds {prompt.n_levels} level(s); continuing needs all {config.n_levels}")
        # Whole level-0 frames only: the last frame of an encoding covers zero padding.
        prompt_frames = prompt.num_samples // config.coarse_hop
        if prompt_seconds is not None:
            prompt_frames = min(prompt_frames, int(prompt_seconds * config.coarse_frame_rate))
        if prompt_frames < 1:
            raise InputError("the prompt is shorter than one level-0 frame "
                             f"({config.coarse_hop / config.sample_rate * 1000:.0f} ms)")
        if prompt_frames >= frames:
            raise UsageError(f"the piece ({seconds:g} s) must be longer than its prompt "
                             f"({prompt_frames / config.coarse_frame_rate:.1f} s)")
        for i, (ratio, level) in enumerate(zip(config.frames_per_coarse, prompt.levels, strict=True)):
            where = np.where((plan.level == i) & (plan.frame < prompt_frames * ratio))[0]
            plan.tokens[where] = level.codes[plan.codebook[where], plan.frame[where]]
        used = prompt_frames / config.coarse_frame_rate
    return plan, frames, used


def generate_pieces(lm: LoadedLM, codec: LoadedCodec, seconds: float, *, sampling: SamplingSettings,
                    seed: int, num_samples: int = 1, levels: int | None = None, prompt: PyrFile | None = None,
                    prompt_seconds: float | None = None, prompt_name: str | None = None,
                    on_progress: ProgressCallback | None = None,
                    decode: DecodeSettings | None = None) -> GenerationResult:
    """Sample ``num_samples`` pieces of ``seconds`` seconds as ``.pyr`` files.

    Args:
        levels: generate only what decoding ``levels`` levels needs (a quick sketch with 1);
            the files then hold that many levels. Default: all.
        seed: with the same LM, codec, settings and device the tokens are identical.
        decode: the LM's dtype and compilation (``DecodeSettings``; default ``auto``: bfloat16 on
            a CUDA GPU that has it, float32 elsewhere). Both are recorded in the provenance.
    """
    config = lm.model.config
    check_codec(config, codec.identity)
    if prompt is not None:
        check_codec_identity((prompt.codec_name, prompt.codec_hash), codec.identity, "the prompt was encoded with",
                             "the LM models")
    if num_samples < 1:
        raise UsageError(f"num_samples must be at least 1, got {num_samples}", option="num_samples")
    keep = config.n_levels if levels is None else levels
    if not 1 <= keep <= config.n_levels:
        raise UsageError(f"levels must be in 1..{config.n_levels}, got {levels}", option="levels")
    plan, frames, used = plan_piece(lm.model, seconds, prompt, prompt_seconds)
    stop = int(np.where((plan.level >= 0) & (plan.level < keep))[0].max()) + 1
    device = next(lm.model.parameters()).device
    decode = decode or DecodeSettings()
    dtype = decode.resolve(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    started = time.perf_counter()
    tokens = generate(lm.model, plan, num_samples=num_samples, sampling=sampling, generator=generator, stop=stop,
                      on_progress=on_progress, decode=decode)
    elapsed = time.perf_counter() - started
    generated = int(((plan.tokens[:stop] < 0)).sum()) * num_samples
    layout = make_layout(config)
    hops = [config.coarse_hop // r for r in config.frames_per_coarse]
    provenance: dict[str, ProvenanceValue] = {
        "generated_by": lm.name, "lm_hash": lm.hash, "seed": seed, "temperature": sampling.temperature,
        "top_k": sampling.top_k, "top_p": sampling.top_p, "layout": config.layout,
        "prompt": prompt_name, "prompt_seconds": round(used, 6),
        # Reduced precision (and, by rounding, compilation) can change sampled tokens: record both.
        "lm_dtype": dtype_name(dtype), "lm_compiled": decode.compile}
    pieces = []
    for sample in range(num_samples):
        plan.tokens = tokens[sample]
        codes = layout.to_levels(plan)[:keep]
        pieces.append(PyrFile(
            codec_name=codec.name, codec_hash=codec.hash, sample_rate=config.sample_rate,
            num_samples=frames * config.coarse_hop, original_sample_rate=config.sample_rate, original_channels=1,
            codebook_size=config.codebook_size, levels=[PyrLevel(h, c) for h, c in zip(hops, codes, strict=False)],
            provenance={**provenance, "sample": sample}))
    return GenerationResult(pieces, seed, frames, generated, elapsed, used,
                            [frames * n for n in config.tokens_per_coarse_frame[:keep]], dtype_name(dtype),
                            decode.compile)


# ---- the whole of `pyramid generate` -------------------------------------------------------------------


@dataclass(frozen=True)
class GenerationStart:
    """What ``generate_audio`` is about to do, once both models are loaded (the CLI prints it)."""

    seed: int
    lm: LoadedLM
    codec: LoadedCodec
    seconds: float
    device: torch.device
    dtype: str  # the LM's compute dtype
    compiled: bool


@dataclass
class GeneratedAudio:
    """What ``generate_audio`` made: the pieces as tokens and as audio, and how fast it went."""

    lm: LoadedLM
    codec: LoadedCodec
    result: GenerationResult  # the .pyr pieces, the seed, sampling time and token counts
    audio: list[np.ndarray]  # per piece (1, samples) float32 at ``sample_rate``; empty unless decoded
    sampling: SamplingSettings

    @property
    def pieces(self) -> list[PyrFile]:
        return self.result.pieces

    @property
    def sample_rate(self) -> int:
        return self.lm.model.config.sample_rate

    @property
    def seconds(self) -> float:
        """Length of each piece in seconds of audio."""
        config = self.lm.model.config
        return self.result.coarse_frames * config.coarse_hop / config.sample_rate

    @property
    def real_time_factor(self) -> float:
        """Seconds of audio (all pieces) generated per second of sampling."""
        return self.seconds * len(self.pieces) / max(self.result.seconds, 1e-9)

    def summary(self) -> dict[str, object]:
        """A JSON-ready account: seed, models, settings, speeds (``pyramid generate --json``)."""
        config, result, levels = self.lm.model.config, self.result, self.pieces[0].n_levels
        return {"ok": True, "seed": result.seed, "lm": f"{self.lm.name}@{self.lm.hash}",
                "codec": f"{self.codec.name}@{self.codec.hash}", "layout": config.layout, "seconds": self.seconds,
                "prompt_seconds": result.prompt_seconds, "num_samples": len(self.pieces), "levels": levels,
                "temperature": self.sampling.temperature, "top_k": self.sampling.top_k, "top_p": self.sampling.top_p,
                "dtype": result.dtype, "compiled": result.compiled, "tokens_generated": result.tokens_generated,
                "sampling_seconds": result.seconds, "tokens_per_second_generated": result.tokens_per_second,
                "real_time_factor": self.real_time_factor,
                "tokens_per_second_of_audio": [config.tokens_per_second(i) for i in range(levels)]}


def generate_audio(
    seconds: float,
    *,
    lm: str | Path | LoadedLM = DEFAULT_LM,
    codec: str | Path | LoadedCodec | None = None,
    sampling: SamplingSettings | None = None,
    seed: int | None = None,
    num_samples: int = 1,
    levels: int | None = None,
    prompt: str | Path | PyrFile | None = None,
    prompt_seconds: float | None = None,
    decode: DecodeSettings | None = None,
    device: str | torch.device = "auto",
    decode_audio: bool = True,
    on_start: Callable[[GenerationStart], None] | None = None,
    on_progress: ProgressCallback | None = None,
    warn: Callable[[str], None] | None = None,
) -> GeneratedAudio:
    """Generate pieces of music: load the models, encode the prompt, sample, decode.

    Args:
        seconds: length of each piece (a prompt is its start, at its own time).
        lm, codec: references or loaded models; the codec defaults to the one the LM was trained
            on, found by its name among local models (a name read from a file never downloads).
        seed: default a fresh one (recorded in the pieces and the result).
        prompt: audio to encode with the codec, or a ``.pyr`` (a path or a ``PyrFile``);
            ``prompt_seconds`` keeps only its first seconds.
        decode_audio: also decode each piece to audio (``GeneratedAudio.audio``).
        on_start: called once the models are loaded, before sampling.
        on_progress: called with (tokens done, tokens in all, level) while sampling.
        warn: called with a one-line message about a prompt that is used but deserves a word (a
            truncated WAV: only the part the file holds is the prompt).

    Raises:
        UsageError: a length or prompt length that is not a positive finite number of seconds,
        impossible settings. CodecMismatchError: models or a prompt of different codecs.
    """
    import secrets

    from pyramid_cli.codec.api import decode_pyr, encode_file, load_codec
    from pyramid_cli.hub.registry import resolve_recorded
    from pyramid_cli.runtime.devices import resolve_device

    if not math.isfinite(seconds):
        raise UsageError(f"the length must be a finite number of seconds, got {seconds}")
    if prompt_seconds is not None and prompt is None:
        raise UsageError("prompt_seconds needs a prompt", option="prompt_seconds")
    if prompt_seconds is not None and not (math.isfinite(prompt_seconds) and prompt_seconds > 0):
        raise UsageError(f"prompt_seconds must be a positive number of seconds, got {prompt_seconds}",
                         option="prompt_seconds")
    sampling = sampling or SamplingSettings()
    decode = decode or DecodeSettings()
    seed = secrets.randbelow(2**31) if seed is None else seed
    torch_device = resolve_device(device)
    compute_dtype = decode.resolve(torch_device)  # a dtype this device cannot run fails before any loading
    loaded = lm if isinstance(lm, LoadedLM) else load_lm(lm, torch_device)
    config = loaded.model.config
    if not isinstance(codec, LoadedCodec):
        # The codec named in the LM's config may only be a local model; a download needs a reference.
        codec = load_codec(codec if codec is not None else resolve_recorded(config.codec_name, "codec"), torch_device)
    prompt_pyr = prompt if isinstance(prompt, PyrFile) or prompt is None else None
    if prompt_pyr is None and prompt is not None:
        path = Path(prompt)  # type: ignore[arg-type]  # not a PyrFile here
        if path.suffix.lower() == ".pyr":
            prompt_pyr = PyrFile.read(path)
        else:
            prompt_pyr = encode_file(path, codec, name=str(path), warn=warn)
    if on_start is not None:
        on_start(GenerationStart(seed, loaded, codec, seconds, torch_device, dtype_name(compute_dtype),
                                 decode.compile))
    prompt_name = None if prompt is None or isinstance(prompt, PyrFile) else Path(prompt).name
    result = generate_pieces(loaded, codec, seconds, sampling=sampling, seed=seed, num_samples=num_samples,
                             levels=levels, prompt=prompt_pyr, prompt_seconds=prompt_seconds, prompt_name=prompt_name,
                             on_progress=on_progress, decode=decode)
    audio = [decode_pyr(piece, codec, piece.n_levels) for piece in result.pieces] if decode_audio else []
    return GeneratedAudio(loaded, codec, result, audio, sampling)
