"""`pyramid encode | decode | info` on real small audio files, with a tiny random-weight codec.

Most tests call `pyramid_cli.cli.main` in-process (the same error mapping as the installed
command, without paying torch's import for every call); a few run the real command line.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from pyramid_cli.cli import main
from pyramid_cli.codec import CodecConfig, PyramidCodec
from pyramid_cli.hub import identity, registry
from pyramid_cli.pyr.file import PyrFile

TINY = CodecConfig(name="tiny-p111", encoder_dim=8, latent_dim=16, decoder_dim=32)  # p111 strides
RATE = 22050


@dataclass
class Result:
    code: int
    stdout: bytes
    stderr: str


class _Terminal(io.BytesIO):
    def isatty(self) -> bool:
        return True



@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two codecs with the same name and architecture but different weights."""
    folder = tmp_path_factory.mktemp("models")
    for seed in (0, 1):
        torch.manual_seed(seed)
        PyramidCodec(TINY).save_pretrained(folder / f"tiny{seed}")
    return folder / "tiny0", folder / "tiny1"


@pytest.fixture
def cli(capsysbinary: pytest.CaptureFixture[bytes], monkeypatch: pytest.MonkeyPatch,
        models: tuple[Path, Path]) -> Callable[..., Result]:
    """Run `pyramid ARGS` in-process; stdin is a terminal unless bytes are given."""

    def run(*args: str, stdin: bytes | None = None, model: bool = True) -> Result:
        stream = _Terminal() if stdin is None else io.BytesIO(stdin)
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(stream))
        argv = list(args)
        if model:
            argv += [] if "--device" in args else ["--device", "cpu"]
            argv += [] if "--model" in args else ["--model", str(models[0])]
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        out, err = capsysbinary.readouterr()
        return Result(int(exit_info.value.code or 0), out, err.decode())

    return run


def tone(seconds: float, rate: int = RATE, channels: int = 1, seed: int = 0) -> np.ndarray:
    """(T, C) a chord plus a little noise: real audio, never silent."""
    t = np.arange(round(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    mono = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 331 * t) + 0.02 * rng.standard_normal(t.size)
    return np.stack([mono * (0.5 + 0.5 * c) for c in range(channels)], axis=1).astype(np.float32)


def no_temporaries(folder: Path) -> bool:
    return not any(p.name.endswith(".tmp") for p in folder.rglob("*"))


def one_line_error(result: Result, text: str) -> bool:
    return result.stderr.strip().count("\n") == 0 and text in result.stderr and "Traceback" not in result.stderr


def test_encode_info_decode_every_level(cli, tmp_path: Path):
    sf.write(tmp_path / "song.wav", tone(3.1), RATE)
    sf.write(tmp_path / "noise.flac", tone(2.0, seed=1)[::-1], RATE, subtype="PCM_24")
    result = cli("encode", str(tmp_path / "song.wav"), str(tmp_path / "noise.flac"))
    assert result.code == 0, result.stderr
    assert result.stdout == b"" and "song.wav → " in result.stderr
    pyr = PyrFile.read(tmp_path / "song.pyr")
    assert (pyr.num_samples, pyr.original_sample_rate, pyr.original_channels) == (round(3.1 * RATE), RATE, 1)
    assert pyr.codec_name == "tiny-p111" and pyr.provenance["source"] == "song.wav"
    assert PyrFile.read(tmp_path / "noise.pyr").num_samples == 2 * RATE

    info = cli("info", str(tmp_path / "song.pyr"), "--json", model=False)
    assert info.code == 0, info.stderr
    summary = json.loads(info.stdout)
    assert [round(x, 2) for x in (lv["cumulative_tokens_per_second"] for lv in summary["levels"])] == [
        10.77, 32.30, 75.37]
    assert summary["bits_per_second"] == pytest.approx(753.66, abs=0.01)
    assert summary["bytes"] == (tmp_path / "song.pyr").stat().st_size
    assert summary["compression_ratio"] == pytest.approx(round(3.1 * RATE) * 2 / summary["bytes"])
    table = cli("info", str(tmp_path / "song.pyr"), model=False)
    assert table.code == 0 and table.stdout == b"" and "75.37" in table.stderr

    for levels in (1, 2, 3):
        decoded = cli("decode", str(tmp_path / "song.pyr"), "--levels", str(levels))
        assert decoded.code == 0, decoded.stderr
        audio, rate = sf.read(tmp_path / f"song.l{levels}.wav")
        assert rate == RATE and audio.shape == (pyr.num_samples,)
    assert cli("decode", str(tmp_path / "noise.pyr")).code == 0  # default: all stored levels
    assert sf.info(str(tmp_path / "noise.l3.wav")).frames == 2 * RATE


def test_stereo_44k_is_mixed_down_and_resampled(cli, tmp_path: Path):
    sf.write(tmp_path / "stereo.wav", tone(2.5, rate=44100, channels=2), 44100)
    assert cli("encode", str(tmp_path / "stereo.wav"), "--levels", "2").code == 0
    pyr = PyrFile.read(tmp_path / "stereo.pyr")
    assert (pyr.sample_rate, pyr.num_samples) == (RATE, round(2.5 * RATE))
    assert (pyr.original_sample_rate, pyr.original_channels, pyr.n_levels) == (44100, 2, 2)
    out = tmp_path / "coarse.flac"
    assert cli("decode", str(tmp_path / "stereo.pyr"), "-o", str(out)).code == 0
    assert sf.info(str(out)).frames == pyr.num_samples and sf.info(str(out)).format == "FLAC"
    too_many = cli("decode", str(tmp_path / "stereo.pyr"), "--levels", "3")
    assert too_many.code == 2 and one_line_error(too_many, "stores 2 level(s), so it decodes at 1..2")
    assert not (tmp_path / "stereo.l3.wav").exists()


def test_force_and_atomic_outputs(cli, tmp_path: Path):
    sf.write(tmp_path / "a.wav", tone(1.0), RATE)
    assert cli("encode", str(tmp_path / "a.wav")).code == 0
    before = (tmp_path / "a.pyr").read_bytes()
    (tmp_path / "a.pyr").write_bytes(b"keep me")
    again = cli("encode", str(tmp_path / "a.wav"))
    assert again.code == 1 and one_line_error(again, "a.pyr already exists; pass --force")
    assert (tmp_path / "a.pyr").read_bytes() == b"keep me"
    assert cli("encode", str(tmp_path / "a.wav"), "--force").code == 0
    assert (tmp_path / "a.pyr").read_bytes() == before  # deterministic
    refused = cli("decode", str(tmp_path / "a.pyr"), "-o", str(tmp_path / "a.wav"))
    assert refused.code == 1 and one_line_error(refused, "a.wav already exists; pass --force")
    assert cli("decode", str(tmp_path / "a.pyr"), "-o", str(tmp_path / "a.wav"), "--force").code == 0
    assert sf.info(str(tmp_path / "a.wav")).frames == RATE
    assert no_temporaries(tmp_path)


def test_bad_inputs_fail_with_one_line_and_leave_nothing(cli, tmp_path: Path):
    (tmp_path / "notes.txt").write_text("not audio at all\n")
    (tmp_path / "silence.wav").parent.mkdir(exist_ok=True)
    sf.write(tmp_path / "silence.wav", np.zeros(RATE, dtype=np.float32), RATE)
    sf.write(tmp_path / "blip.wav", tone(0.05), RATE)  # 1,102 samples < one 2,048-sample frame
    for args, message in [
        (["encode", str(tmp_path / "notes.txt")], "not a readable audio file"),
        (["encode", str(tmp_path / "missing.wav")], "missing.wav: no such file"),
        (["encode", str(tmp_path / "silence.wav")], "silence.wav is silent"),
        (["encode", str(tmp_path / "blip.wav")], "blip.wav is too short"),
        (["decode", str(tmp_path / "missing.pyr")], "missing.pyr: no such file"),
    ]:
        result = cli(*args)
        assert result.code == 1 and one_line_error(result, message), (args, result.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blip.wav", "notes.txt", "silence.wav"]


def test_corrupt_pyr(cli, tmp_path: Path):
    sf.write(tmp_path / "a.wav", tone(1.0), RATE)
    assert cli("encode", str(tmp_path / "a.wav")).code == 0
    data = (tmp_path / "a.pyr").read_bytes()
    (tmp_path / "cut.pyr").write_bytes(data[:-3])
    (tmp_path / "junk.pyr").write_bytes(b"RIFF0000WAVE" + bytes(100))
    for name, message in [("cut.pyr", "truncated .pyr file"), ("junk.pyr", "not a .pyr file")]:
        for command in ("decode", "info"):
            result = cli(command, str(tmp_path / name), model=command == "decode")
            assert result.code == 1 and one_line_error(result, f"{name}: {message}"), result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pyr", "a.wav", "cut.pyr", "junk.pyr"]


def test_tokens_from_another_codec_are_refused(cli, tmp_path: Path, models):
    sf.write(tmp_path / "a.wav", tone(1.0), RATE)
    assert cli("encode", str(tmp_path / "a.wav")).code == 0
    result = cli("decode", str(tmp_path / "a.pyr"), "--model", str(models[1]), model=False)
    made, given = (identity.codec_identity(m)[1][:8] for m in models)
    assert result.code == 1
    assert one_line_error(result, f"a.pyr was made with tiny-p111@{made}; the codec given is tiny-p111@{given}")
    assert not (tmp_path / "a.l3.wav").exists()
    # With no --model, decode looks for the codec the file names; it is not installed here.
    missing = cli("decode", str(tmp_path / "a.pyr"), model=False)
    assert missing.code == 1 and one_line_error(missing, "which is not installed here; name that codec's folder")


def test_a_retired_default_codecs_file_says_how_to_install_that_codec(cli, tmp_path: Path):
    sf.write(tmp_path / "a.wav", tone(1.0), RATE)
    assert cli("encode", str(tmp_path / "a.wav")).code == 0
    old = replace(PyrFile.read(tmp_path / "a.pyr"), codec_name="pyramid-22k-p111-notes")
    old.write(tmp_path / "old.pyr")
    result = cli("decode", str(tmp_path / "old.pyr"), model=False)
    assert result.code == 1 and one_line_error(
        result, "old.pyr was made with pyramid-22k-p111-notes@"), result.stderr
    assert ("no longer bundled" in result.stderr and "git archive 22e70605d7fb models/pyramid-22k-p111-notes"
            in result.stderr.replace("\n", " "))
    assert not (tmp_path / "old.l3.wav").exists()
    # Given another codec, the mismatch says the same.
    result = cli("decode", str(tmp_path / "old.pyr"), model=True)
    assert result.code == 1 and one_line_error(result, "old.pyr was made with pyramid-22k-p111-notes@"), result.stderr
    assert "no longer bundled" in result.stderr


def test_batch_continues_past_a_bad_file(cli, tmp_path: Path):
    music = tmp_path / "music"
    (music / "live").mkdir(parents=True)
    sf.write(music / "one.wav", tone(1.0), RATE)
    sf.write(music / "live" / "two.flac", tone(1.2, seed=2), RATE)
    (music / "live" / "broken.wav").write_bytes(b"RIFF\x00\x00")
    (music / "cover.jpg").write_bytes(b"\xff\xd8")  # not an audio suffix: ignored
    result = cli("encode", str(music), "--out-dir", str(tmp_path / "tokens"), "--json")
    assert result.code == 1
    report = json.loads(result.stdout)
    assert report["failed"] == 1 and not report["ok"]
    failed = [f for f in report["files"] if not f["ok"]]
    assert len(failed) == 1 and "broken.wav" in failed[0]["error"]
    assert sorted(str(p.relative_to(tmp_path / "tokens")) for p in (tmp_path / "tokens").rglob("*.pyr")) == [
        "live/two.pyr", "one.pyr"]
    plain = cli("encode", str(music / "*.wav"), str(music / "live" / "*.wav"), "--out-dir", str(tmp_path / "g"))
    assert plain.code == 1 and "1 of 2 files failed" in plain.stderr and "broken.wav" in plain.stderr
    assert [p.name for p in (tmp_path / "g").iterdir()] == ["one.pyr"]


def test_stdin_and_stdout(cli, tmp_path: Path):
    sf.write(tmp_path / "a.flac", tone(1.5), RATE)
    encoded = cli("encode", "-o", "-", stdin=(tmp_path / "a.flac").read_bytes())
    assert encoded.code == 0, encoded.stderr
    pyr = PyrFile.from_bytes(encoded.stdout)
    assert pyr.num_samples == round(1.5 * RATE) and pyr.provenance["source"] == "<stdin>"
    decoded = cli("decode", "-", "--levels", "1", "-o", "-", stdin=encoded.stdout)
    assert decoded.code == 0, decoded.stderr
    audio, rate = sf.read(io.BytesIO(decoded.stdout))
    assert rate == RATE and audio.shape == (pyr.num_samples,)
    info = cli("info", "--json", stdin=encoded.stdout, model=False)
    assert json.loads(info.stdout)["num_samples"] == pyr.num_samples


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["encode"], "no input"),
        (["decode"], "no input"),
        (["encode", "a.wav", "b.wav", "-o", "x.pyr"], "-o names one output"),
        (["encode", "a.wav", "-o", "x.pyr", "--out-dir", "d"], "not both"),
        (["encode", "nothing-*.wav"], "no file matches"),
        (["encode", "a.wav", "--levels", "4"], "levels 1..3"),
        (["encode", "a.wav", "--levels", "0"], "--levels"),
        (["encode", "a.wav", "--device", "tpu"], "unknown device"),
        (["encode", "a.wav", "-o", "-", "--json"], "--json prints on stdout"),
        (["decode", "a.pyr", "-o", "a.mp3"], ".wav or .flac"),
    ],
)
def test_usage_errors_exit_2(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str):
    monkeypatch.chdir(tmp_path)
    sf.write(tmp_path / "a.wav", tone(1.0), RATE)
    if args[0] == "decode" and len(args) > 1:
        assert cli("encode", "a.wav").code == 0
    result = cli(*args)
    assert result.code == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_model_errors(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    sf.write(tmp_path / "a.wav", tone(1.0), RATE)
    monkeypatch.setattr(registry, "model_roots", lambda: [tmp_path / "no-models"])
    result = cli("encode", str(tmp_path / "a.wav"), model=False)
    assert result.code == 1 and one_line_error(result, "the default codec pyramid-22k-p111-notes-v3 is not installed")
    result = cli("encode", str(tmp_path / "a.wav"), "--model", str(tmp_path / "nope"), model=False)
    assert result.code == 1 and one_line_error(result, "no such folder")
    assert not (tmp_path / "a.pyr").exists()


def test_shell_pipeline(tmp_path: Path, models):
    """The design's pipeline through the real entry point: stdin/stdout, no temporary files."""
    sf.write(tmp_path / "song.wav", tone(2.2, rate=44100, channels=2), 44100)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    py, model = sys.executable, str(models[0])
    pipeline = (f"'{py}' -m pyramid_cli encode song.wav --model '{model}' -o - "
                f"| '{py}' -m pyramid_cli decode --levels 2 --model '{model}' -o - > coarse.wav")
    done = subprocess.run(pipeline, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    audio, rate = sf.read(tmp_path / "coarse.wav")
    assert rate == RATE and audio.shape == (round(2.2 * RATE),)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coarse.wav", "song.wav"]
