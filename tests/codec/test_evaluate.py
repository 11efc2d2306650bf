import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from pyramid_cli.codec.config import CodecConfig
from pyramid_cli.codec.evaluate import codebook_reports, evaluate_codec, load_clips
from pyramid_cli.codec.model import PyramidCodec
from pyramid_cli.errors import InputError


def _tiny_codec() -> PyramidCodec:
    torch.manual_seed(0)
    config = CodecConfig(name="tiny", encoder_dim=4, decoder_dim=128, latent_dim=8, codebook_size=16)
    return PyramidCodec(config).eval()


def _corpus(folder: Path) -> Path:
    records = []
    for index, split in enumerate(["test", "test", "train"]):
        t = np.arange(22050 * 2) / 22050
        wav = (0.3 * np.sin(2 * np.pi * (220 + 110 * index) * t)).astype(np.float32)
        relative = f"audio/{split}/song{index}.flac"
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        sf.write(folder / relative, wav, 22050)
        records.append({"id": f"song{index}", "split": split, "audio": relative, "duration": 2.0})
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def test_load_clips_takes_the_middle_of_each_song(tmp_path: Path) -> None:
    clips = load_clips(_corpus(tmp_path), "test", clips=5, clip_seconds=1.0, sample_rate=22050)
    assert len(clips) == 2 and all(c.shape == (1, 22050) for c in clips)
    with pytest.raises(InputError, match="'valid' split is empty"):
        load_clips(tmp_path, "valid", 1, 1.0, 22050)


def test_evaluate_scores_every_level(tmp_path: Path) -> None:
    codec = _tiny_codec()
    clips = load_clips(_corpus(tmp_path), "test", clips=2, clip_seconds=1.0, sample_rate=22050)
    result = evaluate_codec(codec, clips)
    assert [s.levels for s in result.levels] == [1, 2, 3]
    assert [round(s.tokens_per_second, 2) for s in result.levels] == [10.77, 32.3, 75.37]
    for scores in result.levels:
        assert scores.mel_vs_full > 0 and math.isfinite(scores.si_sdr_vs_full)
    assert len(result.codebooks) == 3 and all(1 <= u.used <= 16 for u in result.codebooks)


def test_codebook_usage_perplexity() -> None:
    uniform = [[torch.full((8,), 5)]]
    single = [[torch.tensor([10, 0, 0, 0, 0, 0, 0, 0])]]
    assert codebook_reports(uniform, 8)[0].perplexity == pytest.approx(8.0)
    assert codebook_reports(single, 8)[0].perplexity == pytest.approx(1.0)
    assert codebook_reports(single, 8)[0].used == 1


def test_eval_codec_cli_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pyramid_cli.cli import main

    model_dir = tmp_path / "model"
    _tiny_codec().save_pretrained(model_dir)
    corpus = _corpus(tmp_path / "corpus")
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "codec", "--data", str(corpus), "--model", str(model_dir), "--clips", "1",
              "--clip-seconds", "0.5", "--device", "cpu", "--json"])
    assert exit_info.value.code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == "tiny" and report["clips"] == 1 and len(report["levels"]) == 3
    from pyramid_cli.metrics import transcribe
    if transcribe.available():  # the wrong notes, counted per level, and their kinds in the table's notes
        level = report["levels"][0]
        assert level["extra_notes"] >= level["extra_octave_notes"] + level["extra_partial_notes"] + \
            level["extra_fragment_notes"]
        assert min(level["extra_octave_notes"], level["extra_partial_notes"], level["extra_fragment_notes"]) >= 0
        assert level["missed_notes"] >= level["missed_in_sustain_notes"] >= 0
        with pytest.raises(SystemExit) as exit_info:
            main(["eval", "codec", "--data", str(corpus), "--model", str(model_dir), "--clips", "1",
                  "--clip-seconds", "0.5", "--device", "cpu", "--no-visqol"])
        assert exit_info.value.code == 0
        assert "the missed notes inside a held" in capsys.readouterr().err  # the table's stream
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "codec", "--data", str(corpus), "--model", str(model_dir), "--split", "valid"])
    assert exit_info.value.code == 1 and "'valid' split is empty" in capsys.readouterr().err


def test_plot_cli_writes_a_png_and_respects_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pyramid_cli.cli import main

    model_dir = tmp_path / "model"
    _tiny_codec().save_pretrained(model_dir)
    audio = _corpus(tmp_path / "corpus") / "audio" / "test" / "song0.flac"
    args = ["plot", str(audio), "--model", str(model_dir), "--device", "cpu", "--seconds", "1", "-o",
            str(tmp_path / "fig.png")]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 0
    assert (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 1 and "--force" in capsys.readouterr().err
