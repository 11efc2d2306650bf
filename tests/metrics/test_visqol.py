"""ViSQOL (optional, the [eval] extra): identical audio scores near 5, a quarter-band copy clearly less."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pyramid_cli.audio.io import load_mono
from pyramid_cli.codec.targets import band_limited_targets
from pyramid_cli.metrics import visqol as visqol_score

pytestmark = pytest.mark.skipif(not visqol_score.available(), reason="needs the [eval] extra (make install-eval)")


def test_visqol_ranks_a_low_pass_below_the_original() -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "example.flac"
    x = load_mono(example, 22050)[0, : 5 * 22050]
    low = band_limited_targets(torch.from_numpy(x)[None, None], 3)[0][0, 0].numpy()
    scorer = visqol_score.Visqol()
    same, degraded = scorer.score(x, x, 22050), scorer.score(low, x, 22050)
    assert same > 4.5 and degraded < same - 1.0
