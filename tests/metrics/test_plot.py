"""Figures (``pyramid_cli.metrics.plot``): spectrograms of reconstructions and music statistics over time."""

from __future__ import annotations

import math

import pytest
import torch

from pyramid_cli.metrics.plot import music_stats_png, spectrogram_png

PNG = b"\x89PNG\r\n\x1a\n"
RATE = 22050

pytest.importorskip("matplotlib", reason="plots need the plot extra (matplotlib)")


def test_spectrograms_make_one_png_with_a_row_per_signal() -> None:
    t = torch.arange(RATE) / RATE
    tone = (0.5 * torch.sin(2 * math.pi * 440 * t)).reshape(1, -1)
    png = spectrogram_png([("input", tone), ("1 level", 0.5 * tone)], RATE)
    assert png.startswith(PNG) and len(png) > 10_000


def test_music_statistics_make_a_png() -> None:
    windows = [{"start": 30.0 * i, "end": 30.0 * (i + 1), "notes_per_second": 10.0 + i, "distinct_pitches": 20.0,
                "pitch_class_entropy": 2.5, "key_clarity": 0.8, "repetition": 0.1} for i in range(4)]
    png = music_stats_png([("piece", windows), ("reference", windows[:2])])
    assert png.startswith(PNG)
