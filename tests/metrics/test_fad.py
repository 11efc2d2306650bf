"""Fréchet distance, the built-in note- and mel-statistics embeddings, the user-embedding hook and
`pyramid eval fad`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from pyramid_cli.audio.io import load_mono
from pyramid_cli.codec.targets import band_limited_targets
from pyramid_cli.errors import UsageError
from pyramid_cli.metrics import transcribe
from pyramid_cli.metrics.fad import (
    MEL_STATS_DIM,
    NOTE_STATS_DIM,
    embed_files,
    fad,
    fad_from_embeddings,
    frechet_distance,
    load_embedding,
    mel_statistics,
    note_statistics_from_posteriors,
)

needs_transcription = pytest.mark.skipif(not transcribe.available(),
                                         reason="needs the evaluation packages (make install)")
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "example.flac"

RATE = 16000


def tone(seconds: float, frequency: float, rate: int = RATE, seed: int = 0) -> np.ndarray:
    """A sine tone with a little noise and a slow tremolo, so windows are not all identical."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    wav = 0.5 * (1 + 0.3 * np.sin(2 * np.pi * 0.7 * t)) * np.sin(2 * np.pi * frequency * t)
    return (wav + 0.001 * rng.standard_normal(t.size)).astype(np.float32)


def noise(seconds: float, rate: int = RATE, seed: int = 0) -> np.ndarray:
    return (0.3 * np.random.default_rng(seed).standard_normal(int(seconds * rate))).astype(np.float32)


def test_frechet_distance_basic_properties() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 4))
    b = rng.standard_normal((4, 4))
    s1, s2 = a @ a.T + 0.1 * np.eye(4), b @ b.T + 0.1 * np.eye(4)
    mu1, mu2 = rng.standard_normal(4), rng.standard_normal(4)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-9)
    assert frechet_distance(mu1, s1, mu1 + 1.0, s1) == pytest.approx(4.0, rel=1e-6)  # ||1||² in 4-D
    assert frechet_distance(mu1, s1, mu2, s2) > 0


def test_frechet_distance_closed_form_for_diagonal_covariances() -> None:
    # 1-D: (m1 - m2)² + (s1 - s2)² with s the standard deviations.
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[9.0]])) == \
        pytest.approx((1 - 3) ** 2 + (2 - 3) ** 2, rel=1e-6)
    std1, std2 = np.array([1.0, 2.0, 0.5]), np.array([3.0, 2.0, 1.5])
    mu1, mu2 = np.zeros(3), np.array([1.0, -1.0, 2.0])
    expected = float(((mu1 - mu2) ** 2).sum() + ((std1 - std2) ** 2).sum())
    assert frechet_distance(mu1, np.diag(std1**2), mu2, np.diag(std2**2)) == pytest.approx(expected, rel=1e-6)
    # Rank-deficient covariances (zero variance) stay finite thanks to the ridge.
    assert frechet_distance(np.zeros(2), np.zeros((2, 2)), np.zeros(2), np.zeros((2, 2))) == pytest.approx(0.0)


def test_mel_statistics_shape_and_finiteness() -> None:
    stats = mel_statistics(tone(3.0, 440.0), RATE)
    assert stats.shape == (4, MEL_STATS_DIM)  # 1 s windows with 0.5 s hop over 3 s
    assert np.all(np.isfinite(stats))
    assert mel_statistics(np.zeros(RATE // 4, dtype=np.float32), RATE).shape == (1, MEL_STATS_DIM)
    assert mel_statistics(np.zeros(0, dtype=np.float32), RATE).shape == (0, MEL_STATS_DIM)


def test_tones_are_closer_to_tones_than_to_noise() -> None:
    tones_a = [mel_statistics(tone(3.0, f, seed=i), RATE) for i, f in enumerate((220.0, 330.0, 440.0))]
    tones_b = [mel_statistics(tone(3.0, f, seed=9 + i), RATE) for i, f in enumerate((247.0, 370.0, 415.0))]
    noises = [mel_statistics(noise(3.0, seed=i), RATE) for i in range(3)]
    tone_vs_tone = fad_from_embeddings(tones_a, tones_b, "mel-stats").distance
    tone_vs_noise = fad_from_embeddings(tones_a, noises, "mel-stats").distance
    assert tone_vs_noise > 2 * tone_vs_tone


def test_note_statistics_layout() -> None:
    """A sustained C major triad for 1 s, then an A minor triad: pitch classes, octave, onsets, change."""
    frames = 172  # 2 s at 86.13 frames/s: windows at 0, 0.5 and 1 s
    note, onset = np.zeros((frames, 88)), np.zeros((frames, 88))
    c_major, a_minor = [60, 64, 67], [57, 60, 64]
    for keys, span in ((c_major, slice(0, 86)), (a_minor, slice(86, frames))):
        for key in keys:
            note[span, key - 21] = 1.0
            onset[span.start, key - 21] = 1.0
    stats = note_statistics_from_posteriors(note, onset)
    assert stats.shape == (3, NOTE_STATS_DIM)
    first, middle = stats[0], stats[1]
    assert set(np.flatnonzero(first[:12])) == {0, 4, 7}  # C, E, G
    assert first[12:20].argmax() == (60 - 21) // 12  # the octave holding keys 60-67
    assert set(np.flatnonzero(first[20:32])) == {0, 4, 7}  # the three onsets at frame 0
    assert first[34] == pytest.approx(3.0)  # three notes sound at once
    assert first[36] == pytest.approx(0.0) and middle[36] > 0.3  # the chord changes inside the middle window
    assert not note_statistics_from_posteriors(np.zeros((100, 88)), np.zeros((100, 88))).any()
    assert note_statistics_from_posteriors(np.zeros((0, 88)), np.zeros((0, 88))).shape == (0, NOTE_STATS_DIM)


@needs_transcription
def test_note_embedding_puts_a_buzz_far_from_music() -> None:
    """Against the example's first 7 s, its last 7 s and a low-pass copy are close; the buzz that the
    first bundled codec decoded everything into, and silence, are far (mel-stats could not tell a
    drone from music)."""
    rate = 22050
    x = load_mono(EXAMPLE, rate)[0]
    reference = x[: 7 * rate]
    t = np.arange(7 * rate) / rate
    buzz = (0.1 * sum(np.sin(2 * np.pi * 10.77 * k * t) / k for k in range(1, 200))).astype(np.float32)
    low_pass = band_limited_targets(torch.from_numpy(x[None, None, 7 * rate: 14 * rate].copy()), 3)[0][0, 0].numpy()
    name, embed = load_embedding(None)
    assert name == "notes"

    def distance(wav: np.ndarray) -> float:
        return fad_from_embeddings([embed(wav, rate)], [embed(reference, rate)], name).distance

    music = max(distance(x[7 * rate: 14 * rate]), distance(low_pass))
    assert distance(buzz) > 5 * music
    assert distance(np.zeros(7 * rate, np.float32)) > 5 * music


def test_load_embedding_user_function_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_embedding("mel-stats") == ("mel-stats", mel_statistics)
    (tmp_path / "my_embedding_mod.py").write_text(
        "import numpy as np\n"
        "def embed(wav, sample_rate):\n"
        "    frames = wav[: wav.size // 1000 * 1000].reshape(-1, 1000)\n"
        "    return np.stack([frames.mean(axis=1), frames.std(axis=1)], axis=1)\n"
        "not_callable = 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    name, fn = load_embedding("my_embedding_mod:embed")
    assert name == "my_embedding_mod:embed"
    for item, wav in (("a", tone(1.0, 440.0)), ("b", noise(1.0))):
        sf.write(tmp_path / f"{item}.wav", wav, RATE)
    result = fad([tmp_path / "a.wav"], [tmp_path / "b.wav"], fn, name=name)
    assert result.dim == 2 and result.n_generated_frames == 16 and result.distance > 0
    for bad in ("no_colon", "my_embedding_mod:", "no_such_module_xyz:f", "my_embedding_mod:missing",
                "my_embedding_mod:not_callable"):
        with pytest.raises(UsageError):
            load_embedding(bad)


def test_embed_files_names_unreadable_file(tmp_path: Path) -> None:
    from pyramid_cli.errors import InputError

    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"not audio")
    with pytest.raises(InputError, match="broken.wav"):
        embed_files([bad], mel_statistics)


def _corpus(root: Path) -> Path:
    lines = []
    for index, (split, frequency) in enumerate((("test", 220.0), ("test", 330.0), ("train", 440.0))):
        audio = f"audio/{split}/s{index}.flac"
        (root / audio).parent.mkdir(parents=True, exist_ok=True)
        wav = tone(2.0, frequency, seed=index)
        sf.write(root / audio, wav, RATE)
        lines.append(json.dumps({"id": f"s{index}", "source": f"s{index}.mid", "split": split, "audio": audio,
                                 "duration": 2.0, "num_samples": wav.size, "sample_rate": RATE}))
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_cli_json_and_missing_file(pyramid, tmp_path: Path) -> None:
    corpus = _corpus(tmp_path / "corpus")
    generated = tmp_path / "generated"
    generated.mkdir()
    sf.write(generated / "g.wav", tone(2.0, 262.0, seed=5), RATE)
    done = pyramid("eval", "fad", str(generated), "--data", str(corpus), "--max-seconds", "1.5", "--embedding",
                   "mel-stats", "--json")
    assert done.code == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["embedding"] == "mel-stats" and record["dim"] == MEL_STATS_DIM
    assert record["n_generated_files"] == 1 and record["n_reference_files"] == 2
    assert record["distance"] >= 0 and record["reference_self_distance"] >= 0
    missing = pyramid("eval", "fad", str(tmp_path / "nope.wav"), "--data", str(corpus))
    assert missing.code == 1
    assert "nope.wav" in missing.stderr and "Traceback" not in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
