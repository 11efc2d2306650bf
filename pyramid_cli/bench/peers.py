"""The peer codecs, built with random weights from their own model classes (optional: ``pip install
'pyramid-cli[bench]'``).

Their pretrained weights are never downloaded: speed and memory do not depend on the weights, only
on the architecture, which the published hyper-parameters below fix. Each peer runs its own
``encode`` / ``decode`` (codes to audio, as a user of the library would), with weight norm folded
as ours is, on consecutive chunks of the same length as pyramid's chunks. The peers have no
chunked inference of their own that keeps the codes independent of the chunking (dac#39), so they
run without overlap: slightly less work than pyramid's overlap-and-discard, never more.

Sources of the hyper-parameters: ``conf/final/{16khz,24khz,44khz}.yml`` of descript-audio-codec
1.0.0; the ``config.json`` of ``hubertsiuzdak/snac_{24,32,44}khz``; ``EncodecModel.encodec_model_24khz``
at its default 6 kbps (8 codebooks).
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pyramid_cli.errors import DependencyError

BENCH_EXTRA = "pip install 'pyramid-cli[bench]'"


@dataclass(frozen=True)
class PeerSpec:
    """A peer configuration: which package builds it, and its published hyper-parameters."""

    family: str  # "dac" | "snac" | "encodec"
    module: str  # the import name of the package
    package: str  # its name on PyPI
    name: str  # how tables call it
    kwargs: dict[str, Any] = field(default_factory=dict)


_DAC_16_24 = {"encoder_dim": 64, "encoder_rates": [2, 4, 5, 8], "decoder_dim": 1536, "decoder_rates": [8, 5, 4, 2],
              "codebook_size": 1024, "codebook_dim": 8}
_SNAC_32_44 = {"encoder_dim": 64, "encoder_rates": [2, 3, 8, 8], "decoder_dim": 1536, "decoder_rates": [8, 8, 3, 2],
               "attn_window_size": 32, "codebook_size": 4096, "codebook_dim": 8, "vq_strides": [8, 4, 2, 1],
               "noise": True, "depthwise": True}

PEERS: dict[str, PeerSpec] = {
    "dac_16k": PeerSpec("dac", "dac", "descript-audio-codec", "DAC 16 kHz",
                        {**_DAC_16_24, "sample_rate": 16000, "n_codebooks": 12}),
    "dac_24k": PeerSpec("dac", "dac", "descript-audio-codec", "DAC 24 kHz",
                        {**_DAC_16_24, "sample_rate": 24000, "n_codebooks": 32}),
    "dac_44k": PeerSpec("dac", "dac", "descript-audio-codec", "DAC 44 kHz",
                        {"encoder_dim": 64, "encoder_rates": [2, 4, 8, 8], "decoder_dim": 1536,
                         "decoder_rates": [8, 8, 4, 2], "codebook_size": 1024, "codebook_dim": 8,
                         "sample_rate": 44100, "n_codebooks": 9}),
    "snac_24k": PeerSpec("snac", "snac", "snac", "SNAC 24 kHz",
                         {"sampling_rate": 24000, "encoder_dim": 48, "encoder_rates": [2, 4, 8, 8], "decoder_dim": 1024,
                          "decoder_rates": [8, 8, 4, 2], "attn_window_size": None, "codebook_size": 4096,
                          "codebook_dim": 8, "vq_strides": [4, 2, 1], "noise": True, "depthwise": True}),
    "snac_32k": PeerSpec("snac", "snac", "snac", "SNAC 32 kHz", {**_SNAC_32_44, "sampling_rate": 32000}),
    "snac_44k": PeerSpec("snac", "snac", "snac", "SNAC 44 kHz", {**_SNAC_32_44, "sampling_rate": 44100}),
    "encodec_24k": PeerSpec("encodec", "encodec", "encodec", "EnCodec 24 kHz 6 kbps", {"bandwidth": 6.0}),
}


def peer_available(key: str) -> str | None:
    """None when the package of peer ``key`` can be found, else why it cannot run (a one-line reason)."""
    spec = PEERS[key]
    if importlib.util.find_spec(spec.module) is None:
        return f"{spec.package} is not installed ({BENCH_EXTRA})"
    return None


def fold_weight_norm(module: nn.Module) -> nn.Module:
    """Bake weight norm into plain weights, in both torch styles (parametrizations and the old hooks)."""
    from torch.nn.utils import parametrize

    for child in module.modules():
        if parametrize.is_parametrized(child, "weight"):
            parametrize.remove_parametrizations(child, "weight", leave_parametrized=True)
        elif hasattr(child, "weight_g") and hasattr(child, "weight_v"):
            torch.nn.utils.remove_weight_norm(child)
    return module


@dataclass
class PeerCodec:
    """A peer model ready to time: encode ``(1, 1, T)`` audio to codes, decode codes back to audio."""

    model: nn.Module
    sample_rate: int
    frame: int  # samples per indivisible step (a chunk is a whole number of them)
    tokens_per_second: float
    encode: Callable[[torch.Tensor], Any]
    decode: Callable[[Any], torch.Tensor]

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def _import(spec: PeerSpec) -> Any:
    try:
        return importlib.import_module(spec.module)
    except Exception as error:  # a broken install raises anything: report it, do not crash the bench
        raise DependencyError(f"{spec.package} cannot be imported ({type(error).__name__}: {error})") from None


def _build_dac(module: Any, kwargs: dict[str, Any]) -> PeerCodec:
    model = module.DAC(**kwargs)
    hop, rate = int(math.prod(kwargs["encoder_rates"])), int(kwargs["sample_rate"])

    def encode(audio: torch.Tensor) -> torch.Tensor:
        return model.encode(model.preprocess(audio, rate))[1]

    def decode(codes: torch.Tensor) -> torch.Tensor:
        return model.decode(model.quantizer.from_codes(codes)[0])

    return PeerCodec(model, rate, hop, kwargs["n_codebooks"] * rate / hop, encode, decode)


def _build_snac(module: Any, kwargs: dict[str, Any]) -> PeerCodec:
    model = module.SNAC(**kwargs)
    hop, rate, strides = int(math.prod(kwargs["encoder_rates"])), int(kwargs["sampling_rate"]), kwargs["vq_strides"]
    frame = hop * math.lcm(strides[0], kwargs["attn_window_size"] or 1)  # what SNAC.preprocess pads to
    return PeerCodec(model, rate, frame, sum(rate / (hop * s) for s in strides), model.encode, model.decode)


def _build_encodec(module: Any, kwargs: dict[str, Any]) -> PeerCodec:
    model = module.EncodecModel.encodec_model_24khz(pretrained=False)  # random weights: nothing is downloaded
    model.set_target_bandwidth(kwargs["bandwidth"])
    n_q = model.quantizer.get_num_quantizers_for_bandwidth(model.frame_rate, model.bandwidth)
    hop = int(model.encoder.hop_length)
    return PeerCodec(model, model.sample_rate, hop, n_q * model.frame_rate, model.encode, model.decode)


_BUILDERS: dict[str, Callable[[Any, dict[str, Any]], PeerCodec]] = {
    "dac": _build_dac, "snac": _build_snac, "encodec": _build_encodec}


def build_peer(key: str, device: torch.device | str = "cpu", seed: int = 0) -> PeerCodec:
    """Peer ``key`` of ``PEERS`` with random weights, weight norm folded, in eval mode on ``device``.

    Raises:
        DependencyError: its package is missing or cannot be imported.
    """
    spec = PEERS[key]
    reason = peer_available(key)
    if reason is not None:
        raise DependencyError(reason)
    module = _import(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        codec = _BUILDERS[spec.family](module, dict(spec.kwargs))
    fold_weight_norm(codec.model).eval().to(device)
    for parameter in codec.model.parameters():
        parameter.requires_grad_(False)
    return codec
