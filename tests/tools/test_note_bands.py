"""tools/note_bands.py: the counts per pitch band and the share of the top line kept."""

from __future__ import annotations

import numpy as np
import pytest
from tool_scripts import load_tool

from pyramid_cli.metrics.transcribe import Note

pytest.importorskip("mir_eval")
note_bands = load_tool("note_bands")


def test_counts_split_recall_and_precision_by_register_and_follow_the_top_line() -> None:
    reference = [Note(0.0, 1.0, 50, 1.0), Note(0.0, 0.5, 76, 1.0), Note(0.5, 1.0, 77, 1.0)]  # a bass under a tune
    estimate = [Note(0.01, 1.0, 50, 1.0), Note(0.5, 1.0, 65, 1.0)]  # the bass kept, the tune lost, a wrong note
    totals = np.zeros((len(note_bands.BANDS), 4))
    assert note_bands.count(reference, estimate, totals) == (2, 0)  # the tune: two notes, neither kept
    assert totals[note_bands.band_of(50)].tolist() == [1, 1, 1, 1]
    assert totals[note_bands.band_of(76)].tolist() == [2, 0, 0, 0]
    assert totals[note_bands.band_of(65)].tolist() == [0, 0, 1, 0]
    assert note_bands.count(reference, reference, np.zeros_like(totals)) == (2, 2)
