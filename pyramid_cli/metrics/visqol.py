"""ViSQOL v3 in audio mode (Chinen et al., "ViSQOL v3: An Open Source Production Ready Objective
Speech and Audio Metric", QoMEX 2020), the music-codec score of the literature: MOS-LQO from 1
(bad) to 5 (identical), computed at 48 kHz with the SVR model that ``visqol-python`` ships.

Optional (the ``[eval]`` extra, ``make install-eval``); with numba (``visqol-python[accel]``) a 10 s
clip takes about 1 s after a first call that compiles (about 10 s), without it 80-100 s.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np

from pyramid_cli.errors import DependencyError

SAMPLE_RATE = 48000


def available() -> bool:
    """True when visqol-python is installed."""
    return importlib.util.find_spec("visqol") is not None


class Visqol:
    """``Visqol().score(estimate, reference, sample_rate)`` → MOS-LQO (1-5)."""

    def __init__(self) -> None:
        try:
            from visqol import VisqolApi
        except ImportError as exc:
            raise DependencyError("ViSQOL needs the evaluation extra: make install-eval") from exc
        self._api: Any = VisqolApi()
        self._api.create(mode="audio")

    def score(self, estimate: np.ndarray, reference: np.ndarray, sample_rate: int) -> float | None:
        """MOS-LQO of mono ``estimate`` against ``reference`` (same length, any rate; resampled to 48 kHz).

        None for clips too short for ViSQOL's patches (about a second).
        """
        from pyramid_cli.audio.io import resample

        def prepare(wav: np.ndarray) -> np.ndarray:
            wav = np.asarray(wav, dtype=np.float32).reshape(1, -1)
            return resample(wav, sample_rate, SAMPLE_RATE)[0].astype(np.float64)

        try:
            result = self._api.measure_from_arrays(prepare(reference), prepare(estimate), SAMPLE_RATE)
        except ValueError:  # "Reference spectrum size ... smaller than minimum patch size"
            return None
        return float(result.moslqo)
