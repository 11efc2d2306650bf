"""Device selection: ``--device auto|cpu|cuda|cuda:N|mps`` → ``torch.device``.

``auto`` prefers CUDA, then Apple's MPS, then the CPU (the demucs convention), so that the same
command line works on a laptop, a workstation and a CPU-only CI runner (UX §4; DAC and nanoGPT
default to CUDA and crash without it, nanoGPT#281). Asking for a device that is not there is a
usage error with a one-line reason, not a CUDA traceback.
"""

from __future__ import annotations

import functools
import os
import re

import torch

from pyramid_cli.errors import UsageError

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"
_CUDA = re.compile(r"cuda(?::(\d+))?")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def available_devices() -> list[str]:
    """Device names usable on this machine, best first (``cpu`` is always last)."""
    names = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    if _mps_available():
        names.append("mps")
    return [*names, "cpu"]


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """Turn a device name into a ``torch.device`` that exists on this machine.

    Args:
        spec: ``auto`` (CUDA → MPS → CPU), ``cpu``, ``cuda`` (= ``cuda:0``), ``cuda:N`` or ``mps``;
            case and surrounding spaces are ignored. A ``torch.device`` is checked the same way.

    Raises:
        UsageError: an unknown name, or a device this machine does not have.
    """
    text = str(spec).strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        if not _mps_available():
            raise UsageError(f"device mps: Apple MPS is not available here; use auto or one of "
                             f"{', '.join(available_devices())}", option="device")
        return torch.device("mps")
    match = _CUDA.fullmatch(text)
    if match is None:
        raise UsageError(f"device {spec}: unknown device; use {DEVICE_CHOICES}", option="device")
    if not torch.cuda.is_available():
        built = "this torch has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise UsageError(f"device {spec}: CUDA is not available ({built}); use auto or cpu", option="device")
    index = int(match.group(1) or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise UsageError(f"device {spec}: this machine has {count} CUDA device{'s' * (count != 1)} "
                         f"(cuda:0..cuda:{count - 1})", option="device")
    return torch.device("cuda", index)


BF16_DECODER_ENV = "PYRAMID_CPU_BF16"  # "0" keeps spectral decoders in float32 on CPUs that have bf16


@functools.lru_cache(maxsize=1)
def _cpu_has_native_bf16() -> bool:
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)  # private in torch 2.11: guarded
    try:
        return bool(probe()) if callable(probe) else False
    except Exception:  # noqa: BLE001 - an unknown CPU is treated as one without bf16
        return False


def cpu_bf16_decoding(device: torch.device) -> bool:
    """Whether a spectral decoder may run under bf16 autocast on ``device``.

    Only on CPUs with native bf16 (AVX512-BF16; elsewhere it is emulated and slower), and not
    when ``PYRAMID_CPU_BF16=0``. It halves the decoder's time with the same figures (note F1,
    chroma and mel within 0.003 on 20 test clips; see the codec card); encoders never use it,
    as the codes must be exact.
    """
    return device.type == "cpu" and os.environ.get(BF16_DECODER_ENV, "1") != "0" and _cpu_has_native_bf16()


def normal_unless_meta(*shape: int) -> torch.Tensor:
    """``torch.randn(*shape)`` (the values ``nn.Embedding`` initialises itself with), left empty on the
    meta device: there both ``randn`` and ``normal_`` run Python fallbacks that import sympy or
    ``torch._dynamo`` (0.3-1 s at the start of a command that loads a model)."""
    weight = torch.empty(*shape)
    return weight if weight.is_meta else weight.normal_()
