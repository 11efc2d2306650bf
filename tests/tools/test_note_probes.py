"""tools/note_probes.py: frame F1 per register and the recall of each frame's top sounding key."""

from __future__ import annotations

import torch
from tool_scripts import load_tool

note_probes = load_tool("note_probes")


def test_band_scores_split_frame_f1_by_register_and_follow_the_top_key() -> None:
    roll = torch.zeros(4, 88)  # (frames, keys): a bass (MIDI 40) under a tune (MIDI 76) in every frame
    roll[:, 40 - 21] = 1
    roll[:, 76 - 21] = 1
    probabilities = torch.zeros(4, 88)
    probabilities[:, 40 - 21] = 0.9  # the bass found throughout
    probabilities[:2, 76 - 21] = 0.9  # the tune in half of the frames
    probabilities[:, 65 - 21] = 0.9  # and a wrong note in 60-71
    scores = note_probes.band_scores(probabilities, roll, 0.5)
    assert scores == "21-47 1.000  48-59 0.000  60-71 0.000  72-83 0.667  84-108 0.000  top key 0.500"


def test_with_context_puts_each_frames_neighbours_beside_it_and_repeats_the_edges() -> None:
    x = torch.arange(4.0)[:, None] * torch.tensor([[1.0, 10.0]])  # frames 0..3, two dims each
    stacked = note_probes.with_context(x, 1)
    assert stacked.shape == (4, 6)
    assert stacked[0].tolist() == [0, 0, 0, 0, 1, 10]  # frame -1 is frame 0 again
    assert stacked[2].tolist() == [1, 10, 2, 20, 3, 30]
    assert stacked[3].tolist() == [2, 20, 3, 30, 3, 30]
    assert torch.equal(note_probes.with_context(x, 0), x)
