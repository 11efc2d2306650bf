"""Music statistics per window: key, entropy, repetition, drift (pyramid eval music)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pyramid_cli.metrics import music_stats, transcribe
from pyramid_cli.metrics.transcribe import Note

C_MAJOR_SCALE = [60, 62, 64, 65, 67, 69, 71, 72]


def melody(pitches: list[int], seconds_per_note: float, repeats: int = 1, start: float = 0.0) -> list[Note]:
    notes, t = [], start
    for _ in range(repeats):
        for p in pitches:
            notes.append(Note(t, t + seconds_per_note * 0.9, p, 0.5))
            t += seconds_per_note
    return notes


def test_a_c_major_melody_is_in_c_major_with_a_clear_key() -> None:
    notes = melody(C_MAJOR_SCALE + [67, 64, 60, 67, 60, 64, 67, 60], 0.25, repeats=4)  # tonic-heavy
    stats = music_stats.window_stats(notes, 16.0, window=30.0)
    assert len(stats) == 1
    assert stats[0].key == "C major" and stats[0].key_clarity > 0.7
    assert stats[0].distinct_pitches == 8
    assert 2.0 < stats[0].pitch_class_entropy < 3.0
    assert stats[0].notes_per_second == pytest.approx(4.0)


def test_a_drone_is_flat_and_repetitive() -> None:
    drone = [Note(float(t), t + 0.95, 45, 0.5) for t in range(60)]  # the same note every second
    stats = music_stats.window_stats(drone, 60.0, window=30.0)
    assert [s.distinct_pitches for s in stats] == [1, 1]
    assert all(s.pitch_class_entropy == 0.0 for s in stats)
    assert stats[1].repetition == 1.0 and stats[0].repetition > 0.9


def test_silence_has_no_key_and_no_sounding_time() -> None:
    stats = music_stats.window_stats([], 45.0, window=30.0)
    assert len(stats) == 2 and stats[1].end == 45.0
    assert all(s.key == "" and s.key_clarity == 0.0 and s.sounding_fraction == 0.0 for s in stats)


def test_a_piece_that_collapses_shows_it_in_the_summary() -> None:
    lively = melody(C_MAJOR_SCALE, 0.125, repeats=60)  # 8 notes/s for 60 s
    drone = [Note(60 + float(t), 60 + t + 0.9, 48, 0.5) for t in range(120)]  # then 1 note/s
    stats = music_stats.window_stats(lively + drone, 180.0)
    summary = music_stats.summarise(stats)
    assert summary["min_window_notes_per_second"] == pytest.approx(1.0)
    assert summary["last_vs_first_minute_notes_per_second"] == pytest.approx(-7 / 8)


def test_sounding_fraction_merges_overlapping_notes() -> None:
    notes = [Note(0.0, 10.0, 60, 0.5), Note(5.0, 15.0, 64, 0.5), Note(20.0, 25.0, 67, 0.5)]
    assert music_stats.window_stats(notes, 30.0)[0].sounding_fraction == pytest.approx(20 / 30)


def test_a_near_silent_window_is_quiet_whatever_notes_were_found_in_it() -> None:
    rate = 1000
    t = np.arange(90 * rate) / rate
    wav = 0.1 * np.sin(2 * np.pi * 220 * t)  # -23 dBFS
    wav[: 30 * rate] *= 10 ** (-45 / 20)  # the first window 45 dB down: a normalising transcriber still hears it
    notes = melody(C_MAJOR_SCALE, 0.5, repeats=22)
    stats = music_stats.window_stats(notes, 90.0, wav=wav, sample_rate=rate)
    assert [round(s.loudness_db) for s in stats] == [-68, -23, -23]
    assert stats[0].notes_per_second == stats[1].notes_per_second  # the notes alone cannot tell
    summary = music_stats.summarise(stats)
    assert summary["quiet_windows"] == 1 and summary["quietest_window_below_loudest_db"] == pytest.approx(45, abs=0.1)
    wav[: 30 * rate] *= 10 ** (25 / 20)  # 20 dB down: a quiet intro, not silence
    assert music_stats.summarise(music_stats.window_stats(notes, 90.0, wav=wav, sample_rate=rate))["quiet_windows"] == 0
    assert music_stats.window_stats(notes, 90.0)[0].loudness_db is None  # no audio given
    assert "quiet_windows" not in music_stats.summarise(music_stats.window_stats(notes, 90.0))
    assert music_stats.loudness_db(np.zeros(10)) == music_stats.SILENCE_DBFS


@pytest.mark.skipif(not transcribe.available(), reason="needs the evaluation packages (make install)")
def test_eval_music_cli_on_the_example(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pyramid_cli.cli import app

    example = Path(__file__).resolve().parents[2] / "examples" / "example.flac"
    result = CliRunner().invoke(app, ["eval", "music", str(example), "--json", "--plot", str(tmp_path / "s.png")])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    summary = record["pieces"][0]["summary"]
    assert summary["notes_per_second"] > 5 and summary["distinct_pitches"] > 12 and summary["key_clarity"] > 0.6
    assert summary["quiet_windows"] == 0 and -40 < record["pieces"][0]["windows"][0]["loudness_db"] < -3
    assert record["mean"] == pytest.approx(summary)  # one piece: the mean over pieces is its summary
    assert (tmp_path / "s.png").stat().st_size > 1000
    table = CliRunner().invoke(app, ["eval", "music", str(example), str(example), "--threads", "2"],
                               env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    assert "mean of 2" in table.output


def test_a_sliver_past_the_last_window_joins_it() -> None:
    notes = melody(C_MAJOR_SCALE, 0.125, repeats=23)  # 8 notes/s for 23 s
    sliver = music_stats.window_stats(notes, 20.001, window=10.0)
    assert [(s.start, s.end) for s in sliver] == [(0.0, 10.0), (10.0, 20.001)]  # no 1 ms silent window
    assert min(s.notes_per_second for s in sliver) > 7.9
    longer = music_stats.window_stats(notes, 23.0, window=10.0)  # 3 s: more than a sliver, still joined
    assert [(s.start, s.end) for s in longer] == [(0.0, 10.0), (10.0, 23.0)]
    assert [(s.start, s.end) for s in music_stats.window_stats(notes, 27.0, window=10.0)][-1] == (20.0, 27.0)
    assert len(music_stats.window_stats(notes, 4.0, window=10.0)) == 1  # a short piece is one window


def test_mean_summary_averages_each_statistic_over_the_pieces_that_have_it() -> None:
    a = {"notes_per_second": 2.0, "key_clarity": 0.5, "last_vs_first_minute_notes_per_second": 0.1}
    b = {"notes_per_second": 4.0, "key_clarity": 0.9}
    mean = music_stats.mean_summary([a, b])
    assert mean["notes_per_second"] == pytest.approx(3.0) and mean["key_clarity"] == pytest.approx(0.7)
    assert mean["last_vs_first_minute_notes_per_second"] == pytest.approx(0.1)  # only the piece that has it


@pytest.mark.parametrize(("a", "b", "expected"), [
    ("C major", "C major", True), ("C major", "G major", True), ("C major", "F major", True),
    ("C major", "A minor", True), ("A minor", "C major", True), ("A minor", "E minor", True),
    ("C major", "D major", False), ("C minor", "G# major", False), ("C major", "C minor", False),
    ("", "C major", False),
])
def test_related_keys_are_circle_of_fifths_neighbours(a: str, b: str, expected: bool) -> None:
    assert music_stats.related_keys(a, b) is expected
