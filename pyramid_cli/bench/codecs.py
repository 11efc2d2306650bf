"""Encode and decode speed and peak memory of one codec on one input, measured in this process.

Every model encodes then decodes the same signal (``bench_signal``, generated at its own sample rate
so that no resampling is timed) through its real inference path: for PyramidCodec
``pyramid_cli.codec.api.encode_waveform`` then ``pyramid_cli.codec.inference.decode_codes`` (chunked,
weight norm folded, ``torch.inference_mode``), for the peers their own ``encode`` / ``decode`` on
chunks of the same length (``peers``). A short warm-up run comes first, so one-time costs
(measuring the receptive field, first-call kernel set-up) are not timed.

Real-time factor (RTF) = seconds of audio per second of wall time (higher is faster); the CPU RTF
divides by the process CPU time over all threads instead, which says more than wall time on a
machine shared with other jobs. Memory is the peak growth of the resident set over its level once the
model was loaded, before any audio ran (``machine.PeakMemory``): what the process needs beyond the
weights, including what its allocator keeps from earlier passes (jemalloc keeps freed pages by
design). On CUDA, the peak of torch's allocator too.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from pyramid_cli.bench.machine import PeakMemory, jemalloc_loaded, rss_mb
from pyramid_cli.bench.peers import PEERS, PeerCodec, build_peer
from pyramid_cli.codec.inference import DEFAULT_CHUNK_SECONDS
from pyramid_cli.errors import PyramidError, UsageError

DEFAULT_KEY = "default"  # the bundled default codec (a random p111_notes when it is not installed)
FALLBACK_PRESET = "p111_notes"
RANDOM_HASH = "0" * 16  # the identity a random-weight model reports (nothing is written with it)


@dataclass(frozen=True)
class PhaseResult:
    """One pass (encode or decode) over the whole input."""

    wall_seconds: float
    cpu_seconds: float  # process CPU time, all threads
    realtime_factor: float  # audio seconds / wall seconds
    cpu_realtime_factor: float  # audio seconds / CPU seconds
    peak_rss_mb: float | None  # the process's peak resident set during the pass
    rss_growth_mb: float | None  # that peak minus the resident set of the loaded model and input (model_rss_mb)
    gpu_peak_mb: float | None = None  # torch's CUDA allocator peak during the pass


@dataclass(frozen=True)
class CodecResult:
    """Speed and memory of one codec on one input length, with what the figures depend on."""

    key: str  # what --models named
    name: str  # the model's own name
    family: str  # "pyramid", "dac", "snac" or "encodec"
    weights: str  # "trained" or "random" (speed does not depend on them)
    parameters: int
    sample_rate: int
    tokens_per_second: float  # tokens per second of audio: what a language model over the codes pays
    audio_seconds: float
    chunk_seconds: float
    allocator: str  # "system" or "jemalloc" (what the measuring process actually ran with)
    threads: int
    device: str
    model_rss_mb: float | None  # resident set with the model loaded and the input made, before any audio ran
    encode: PhaseResult
    decode: PhaseResult
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CodecResult:
        fields = dict(data)
        fields["encode"], fields["decode"] = PhaseResult(**data["encode"]), PhaseResult(**data["decode"])
        return cls(**fields)


@dataclass
class BenchCodec:
    """A model ready to time: ``encode`` takes (1, T) float32 audio, ``decode`` what ``encode`` returned."""

    name: str
    family: str
    weights: str
    parameters: int
    sample_rate: int
    tokens_per_second: float
    encode: Callable[[np.ndarray], Any]
    decode: Callable[[Any], Any]
    note: str = ""


def bench_signal(seconds: float, sample_rate: int, seed: int = 0) -> np.ndarray:
    """(1, T) float32 music-like audio: a new two-partial note every half second, plus a little noise.

    The same definition is generated at each codec's own rate (speed does not depend on content,
    but silence is refused by the encoder)."""
    rng = np.random.default_rng(seed)
    t = np.arange(max(1, round(seconds * sample_rate)), dtype=np.float64) / sample_rate
    note = (t / 0.5).astype(np.int64)
    pitch = 110.0 * 2.0 ** (rng.integers(0, 36, size=int(note[-1]) + 1) / 12.0)
    phase = 2 * np.pi * pitch[note] * t
    wav = 0.4 * np.sin(phase) + 0.15 * np.sin(2 * phase) + 0.02 * rng.standard_normal(t.shape)
    return wav.astype(np.float32)[None]


# ---- the models -----------------------------------------------------------------------------------


def _pyramid(codec: Any, weights: str, chunk_seconds: float, note: str = "") -> BenchCodec:
    from pyramid_cli.codec.api import encode_waveform
    from pyramid_cli.codec.inference import decode_codes
    from pyramid_cli.runtime.allocator import keep_freed_memory

    keep_freed_memory()  # what the `pyramid` command does at start; a no-op under jemalloc
    model, config = codec.model, codec.model.config

    def encode(wav: np.ndarray) -> Any:
        return encode_waveform(wav, config.sample_rate, codec, chunk_seconds=chunk_seconds)

    def decode(pyr: Any) -> torch.Tensor:
        codes = [torch.from_numpy(level.codes) for level in pyr.levels]
        return decode_codes(model, codes, num_samples=pyr.num_samples, chunk_seconds=chunk_seconds)

    parameters = sum(p.numel() for p in model.parameters())
    return BenchCodec(codec.name, "pyramid", weights, parameters, config.sample_rate, config.tokens_per_second(),
                      encode, decode, note)


def _random_pyramid(preset_name: str, device: torch.device, chunk_seconds: float, note: str = "") -> BenchCodec:
    from pyramid_cli.codec.api import LoadedCodec
    from pyramid_cli.codec.config import preset
    from pyramid_cli.codec.model import PyramidCodec

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = PyramidCodec(preset(preset_name))
    model.fold_weight_norm().eval().to(device)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return _pyramid(LoadedCodec(model, model.config.name, RANDOM_HASH), "random", chunk_seconds, note)


def _to(value: Any, device: torch.device | str) -> Any:
    """Tensors (in lists, tuples, EnCodec's frames) moved to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(_to(item, device) for item in value)
    return value


def _chunked_peer(peer: PeerCodec, device: torch.device, chunk_seconds: float) -> tuple[Callable, Callable]:
    step = max(1, round(chunk_seconds * peer.sample_rate / peer.frame)) * peer.frame

    def encode(wav: np.ndarray) -> list[Any]:
        audio = torch.from_numpy(np.ascontiguousarray(wav))
        with torch.inference_mode():
            return [_to(peer.encode(piece[None].to(device)), "cpu") for piece in audio.split(step, dim=-1)]

    def decode(chunks: list[Any]) -> torch.Tensor:
        with torch.inference_mode():
            return torch.cat([peer.decode(_to(codes, device)).cpu() for codes in chunks], dim=-1)

    return encode, decode


def load_bench_codec(key: str, device: torch.device | str = "cpu",
                     chunk_seconds: float = DEFAULT_CHUNK_SECONDS) -> BenchCodec:
    """The model that ``--models`` calls ``key``, ready to time on ``device``.

    ``key`` is ``default`` (the bundled default codec; a random-weight ``p111_notes``, with a note,
    when it is not installed), a codec preset (``p111``, ``dac_n2``, ... with random weights), a peer
    of ``peers.PEERS`` (random weights), or any reference ``hub.load_codec`` accepts.

    Raises:
        DependencyError: a peer whose package is missing.
        PyramidError: a reference that does not load.
    """
    from pyramid_cli.codec.api import load_codec
    from pyramid_cli.codec.config import PRESETS
    from pyramid_cli.hub.registry import DEFAULT_CODEC

    device = torch.device(device)
    if key == DEFAULT_KEY:
        try:
            return _pyramid(load_codec(DEFAULT_CODEC, device=device), "trained", chunk_seconds)
        except PyramidError:
            note = (f"the default codec {DEFAULT_CODEC} is not installed: a random-weight {FALLBACK_PRESET} "
                    "(its architecture) stands in")
            return _random_pyramid(FALLBACK_PRESET, device, chunk_seconds, note)
    if key in PRESETS:
        return _random_pyramid(key, device, chunk_seconds)
    if key in PEERS:
        peer = build_peer(key, device)
        encode, decode = _chunked_peer(peer, device, chunk_seconds)
        return BenchCodec(PEERS[key].name, PEERS[key].family, "random", peer.parameters, peer.sample_rate,
                          peer.tokens_per_second, encode, decode)
    return _pyramid(load_codec(key, device=device), "trained", chunk_seconds)


# ---- the measurement ---------------------------------------------------------------------------------


def _timed_phase(run: Callable[[], Any], seconds: float, device: torch.device,
                 baseline_mb: float | None) -> tuple[Any, PhaseResult]:
    cuda = device.type == "cuda"
    gc.collect()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    memory = PeakMemory(baseline_mb)
    memory.start()
    wall, cpu = time.perf_counter(), time.process_time()
    result = run()
    if cuda:
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak, growth = memory.stop()
    gpu = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None
    phase = PhaseResult(wall, cpu, seconds / max(wall, 1e-9), seconds / max(cpu, 1e-9), peak, growth, gpu)
    return result, phase


def measure_codec(key: str, seconds: float, *, device: torch.device | str = "cpu", threads: int | None = None,
                  chunk_seconds: float = DEFAULT_CHUNK_SECONDS, warmup_seconds: float = 1.0) -> CodecResult:
    """Time encoding then decoding ``seconds`` of ``bench_signal`` with model ``key`` (see ``load_bench_codec``).

    Args:
        threads: torch intra-op threads for the measurement (restored afterwards); None = torch's default.
        warmup_seconds: length of the untimed warm-up run (at most ``seconds``).

    For clean memory peaks run it in a fresh process (``runner`` does); in a process that has run
    other models the allocator's retained memory hides part of the growth.
    """
    if not (seconds > 0 and math.isfinite(seconds)):
        raise UsageError(f"the input length must be a positive number of seconds, got {seconds}")
    device = torch.device(device)
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        codec = load_bench_codec(key, device, chunk_seconds)
        wav = bench_signal(seconds, codec.sample_rate)
        gc.collect()
        model_rss = rss_mb()  # the model and the input: the baseline of both passes
        with torch.inference_mode():
            codec.decode(codec.encode(wav[:, : max(1, round(min(seconds, warmup_seconds) * codec.sample_rate))]))
            encoded, encode = _timed_phase(lambda: codec.encode(wav), seconds, device, model_rss)
            _, decode = _timed_phase(lambda: codec.decode(encoded), seconds, device, model_rss)
        return CodecResult(
            key=key, name=codec.name, family=codec.family, weights=codec.weights, parameters=codec.parameters,
            sample_rate=codec.sample_rate, tokens_per_second=codec.tokens_per_second,
            audio_seconds=wav.shape[-1] / codec.sample_rate, chunk_seconds=chunk_seconds,
            allocator="jemalloc" if jemalloc_loaded() else "system", threads=torch.get_num_threads(),
            device=str(device), model_rss_mb=model_rss, encode=encode, decode=decode, note=codec.note,
        )
    finally:
        torch.set_num_threads(previous)
