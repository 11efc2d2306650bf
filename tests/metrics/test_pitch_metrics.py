"""Pitch-content metrics must tell music from a buzz: chroma similarity (always available) and note
onset F1 from Basic Pitch transcriptions (the evaluation extra; skipped when it is not installed).

The reference is the bundled example (rendered MIDI). A low-pass copy to a quarter of the band keeps
the notes; a buzz with partials at the coarse frame rate (what the first bundled codec decoded
everything into), silence, and the same music half a second late do not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pyramid_cli.audio.io import load_mono
from pyramid_cli.codec.targets import band_limited_targets
from pyramid_cli.metrics import transcribe
from pyramid_cli.metrics.distances import chroma_similarity

RATE = 22050
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "example.flac"


@pytest.fixture(scope="module")
def signals() -> dict[str, torch.Tensor]:
    x = torch.from_numpy(load_mono(EXAMPLE, RATE)[0, : 10 * RATE]).float()
    t = torch.arange(x.numel()) / RATE
    buzz = 0.1 * sum(torch.sin(2 * np.pi * 10.77 * k * t) / k for k in range(1, 200))
    return {
        "reference": x,
        "low-pass": band_limited_targets(x[None, None], 3)[0][0, 0],
        "buzz": torch.as_tensor(buzz, dtype=torch.float32),
        "silence": torch.zeros_like(x),
        "half a second late": torch.roll(x, RATE // 2),
    }


@pytest.mark.parametrize("name", ["buzz", "silence", "half a second late"])
def test_chroma_similarity_scores_non_music_badly(signals: dict[str, torch.Tensor], name: str) -> None:
    reference = signals["reference"]
    assert chroma_similarity(signals["low-pass"], reference, RATE).item() > 0.95
    assert chroma_similarity(signals[name], reference, RATE).item() < 0.7
    assert chroma_similarity(reference, reference, RATE).item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.skipif(not transcribe.available(), reason="needs the evaluation extra (make install-eval)")
@pytest.mark.parametrize("name", ["buzz", "silence", "half a second late"])
def test_note_f1_scores_non_music_badly(signals: dict[str, torch.Tensor], name: str) -> None:
    transcriber = transcribe.Transcriber()
    reference = transcriber.transcribe(signals["reference"].numpy(), RATE).notes
    assert len(reference) > 50  # the example is dense music
    low = transcriber.transcribe(signals["low-pass"].numpy(), RATE).notes
    assert transcribe.onset_f1(reference, low)[2] > 0.8
    other = transcriber.transcribe(signals[name].numpy(), RATE).notes
    assert transcribe.onset_f1(reference, other)[2] < 0.25
    tune = transcribe.top_line(reference)  # the melody: its notes survive the low-pass, not the others
    assert transcribe.onset_f1(tune, low)[1] > 0.5
    assert transcribe.onset_f1(tune, other)[1] < 0.25


@pytest.mark.skipif(not transcribe.available(), reason="needs the evaluation extra (make install-eval)")
def test_transcription_finds_a_synthetic_melody() -> None:
    """Four harmonic tones of known pitch and onset come back as those notes (recall 1; this bare
    additive timbre also yields a weaker note on its 5th partial, so precision is not asserted)."""
    pitches, starts = [60, 64, 67, 72], [0.25, 0.75, 1.25, 1.75]
    t = np.arange(int(2.5 * RATE)) / RATE
    audio = np.zeros_like(t)
    for pitch, start in zip(pitches, starts, strict=True):
        f0 = 440.0 * 2 ** ((pitch - 69) / 12)
        on = (t >= start) & (t < start + 0.45)
        envelope = np.where(on, np.exp(-3 * (t - start)), 0.0)
        audio += envelope * sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
    notes = transcribe.Transcriber().transcribe((0.3 * audio).astype(np.float32), RATE).notes
    expected = [transcribe.Note(s, s + 0.45, p, 1.0) for s, p in zip(starts, pitches, strict=True)]
    assert transcribe.onset_f1(expected, notes)[1] == 1.0


def test_onset_f1_edge_cases() -> None:
    note = transcribe.Note(0.5, 1.0, 60, 0.5)
    assert transcribe.onset_f1([], []) == (1.0, 1.0, 1.0)
    assert transcribe.onset_f1([note], []) == (0.0, 0.0, 0.0)
    assert transcribe.onset_f1([], [note]) == (0.0, 0.0, 0.0)


def test_note_errors_name_octaves_shared_partials_fragments_and_notes_lost_inside_held_notes() -> None:
    pytest.importorskip("mir_eval")
    Note = transcribe.Note
    reference = [Note(0.0, 0.4, 60, 1.0), Note(0.5, 0.9, 60, 1.0),  # C4 struck twice
                 Note(1.0, 1.5, 64, 1.0), Note(2.0, 2.5, 67, 1.0)]
    estimate = [Note(0.0, 0.9, 60, 1.0),  # matches the first C4 and holds through the second: one miss inside it
                Note(1.01, 1.5, 64, 1.0),  # a match
                Note(1.02, 1.5, 76, 1.0),  # an octave above the E4: an extra octave note
                Note(2.01, 2.5, 86, 1.0),  # a twelfth above the G4 (its 3rd partial)
                Note(1.6, 1.9, 64, 1.0),  # starts 0.1 s after the matched E4 ends: that note broken in two
                Note(3.0, 3.2, 50, 1.0)]  # an extra note nowhere near the input's
    errors = transcribe.note_errors(reference, estimate)
    assert errors == transcribe.NoteErrors(extra=4, extra_octave=1, missed=2, missed_in_sustain=1,
                                           extra_partial=1, extra_fragment=1)
    assert transcribe.note_errors([], estimate) == transcribe.NoteErrors(6, 0, 0, 0, 0, 1)  # E4's fragment
    assert transcribe.note_errors(reference, []) == transcribe.NoteErrors(0, 0, 4, 0)
    perfect = transcribe.note_errors(reference, reference)
    assert perfect.extra == perfect.missed == 0


def test_top_line_keeps_the_tune_above_the_accompaniment() -> None:
    Note = transcribe.Note
    tune = [Note(0.0, 0.5, 72, 1.0), Note(0.5, 1.0, 74, 1.0), Note(1.0, 2.0, 76, 1.0), Note(2.0, 2.4, 79, 1.0)]
    chords = [Note(0.0, 1.0, 60, 1.0), Note(0.02, 1.0, 64, 1.0),  # a chord under the first two tune notes
              Note(1.5, 2.4, 67, 1.0),  # starts while the E5 is held: covered
              Note(2.45, 3.0, 65, 1.0)]  # after the tune ends: the top line again
    assert transcribe.top_line(tune + chords) == tune + [chords[3]]
    struck = [Note(0.0, 1.0, 60, 1.0), Note(0.03, 1.0, 67, 1.0)]  # a fifth struck 30 ms late: one chord
    assert transcribe.top_line(struck) == [struck[1]]
    assert transcribe.top_line([]) == []


def test_missing_model_is_a_clear_dependency_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(transcribe.MODEL_ENV, str(tmp_path / "absent.onnx"))
    assert not transcribe.available()
    with pytest.raises(transcribe.DependencyError, match="make install-eval"):
        transcribe.model_path()
