"""Issue 13: bad inputs, races and environment failures give one clean line, never a traceback.

In-process (``pyramid_cli.cli.main``) runs with a tiny random-weight codec and LM.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from pyramid_cli.cli import main
from pyramid_cli.codec import CodecConfig, PyramidCodec
from pyramid_cli.hub import codec_identity
from pyramid_cli.lm.config import tiny
from pyramid_cli.lm.model import PyramidLM

TINY = CodecConfig(name="tiny-p111", encoder_dim=8, latent_dim=16, decoder_dim=32)
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
    """(codec folder, untrained LM folder fitted to that codec)."""
    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    PyramidCodec(TINY).save_pretrained(folder / "codec")
    name, digest = codec_identity(folder / "codec")
    config = TINY
    lm_config = tiny().with_codec(name, digest, config.sample_rate, config.hop_lengths, config.n_codebooks,
                                  config.codebook_size)
    PyramidLM(lm_config).save_pretrained(folder / "lm")
    return folder / "codec", folder / "lm"


@pytest.fixture
def cli(capsysbinary: pytest.CaptureFixture[bytes], monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    """Run `pyramid ARGS` in-process; stdin is a terminal unless bytes are given."""

    def run(*args: str, stdin: bytes | None = None) -> Result:
        stream = _Terminal() if stdin is None else io.BytesIO(stdin)
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(stream))
        with pytest.raises(SystemExit) as exit_info:
            main(list(args))
        out, err = capsysbinary.readouterr()
        return Result(int(exit_info.value.code or 0), out, err.decode())

    return run


def tone(seconds: float, rate: int = RATE) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def clean(result: Result) -> bool:
    """One line on stderr, no traceback, no 'internal error'."""
    return "Traceback" not in result.stderr and "internal error" not in result.stderr


# ---- 1. non-finite audio ----------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["one", "all"])
def test_non_finite_audio_is_refused(cli, models, tmp_path: Path, bad: float, where: str):
    wav = tone(3.0)
    if where == "all":
        wav[:] = bad
    else:
        wav[1000] = bad
    sf.write(tmp_path / "bad.wav", wav, RATE, subtype="FLOAT")
    result = cli("encode", str(tmp_path / "bad.wav"), "--model", str(models[0]), "--device", "cpu")
    assert result.code == 1, result.stderr
    assert "non-finite" in result.stderr and "silent" not in result.stderr and clean(result)
    assert not (tmp_path / "bad.pyr").exists()


def test_non_finite_prompt_is_refused(cli, models, tmp_path: Path):
    sf.write(tmp_path / "nan.wav", np.full(RATE * 2, np.nan, dtype=np.float32), RATE, subtype="FLOAT")
    result = cli("generate", "--seconds", "3", "--prompt", str(tmp_path / "nan.wav"), "-o", str(tmp_path / "x.wav"),
                 "--lm", str(models[1]), "--model", str(models[0]), "--device", "cpu")
    assert result.code == 1, result.stderr
    assert "non-finite" in result.stderr and clean(result)
    assert not (tmp_path / "x.wav").exists()


# ---- 4. one writer per output folder ----------------------------------------------------------------


@pytest.mark.parametrize("command", ["build", "tokenize", "train"])
def test_second_writer_is_refused_naming_the_holder(cli, models, tmp_path: Path, command: str):
    import os

    from pyramid_cli.locking import folder_lock

    out = tmp_path / "out"
    args = {"build": ["dataset", "build", "--procedural", "1", "--procedural-seconds", "2", "--out", str(out)],
            "tokenize": ["dataset", "tokenize", str(tmp_path / "corpus"), "--out", str(out), "--model",
                         str(models[0]), "--device", "cpu"],
            "train": ["train", "lm", "--tokens", str(tmp_path / "tokens"), "--run", str(out), "--preset", "tiny",
                      "--steps", "1", "--device", "cpu"]}[command]
    if command == "tokenize":
        (tmp_path / "corpus").mkdir()
        (tmp_path / "corpus" / "manifest.jsonl").write_text("")
    if command == "train":
        from token_sets import write_token_set

        name, digest = codec_identity(models[0])
        write_token_set(tmp_path / "tokens", name, digest, {"train": [40], "valid": [30], "test": [30]})
    with folder_lock(out):
        result = cli(*args)
    assert result.code == 1, result.stderr
    assert f"PID {os.getpid()}" in result.stderr and clean(result)


def test_lock_is_released_and_reusable(tmp_path: Path):
    from pyramid_cli.locking import LockedError, folder_lock

    with folder_lock(tmp_path / "x"):
        with pytest.raises(LockedError, match="PID"):
            with folder_lock(tmp_path / "x"):
                pass
    with folder_lock(tmp_path / "x"):  # released on exit
        pass


# ---- 10. without --force the output is created exclusively ------------------------------------------


def test_encode_does_not_replace_a_file_written_meanwhile(cli, models, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch):
    from pyramid_cli.pyrfile import PyrFile

    sf.write(tmp_path / "a.wav", tone(1.0), RATE)
    target = tmp_path / "a.pyr"
    real = PyrFile.to_bytes

    def racing(self: PyrFile) -> bytes:
        target.write_bytes(b"the other writer's")  # another encode finished first
        return real(self)

    monkeypatch.setattr(PyrFile, "to_bytes", racing)
    result = cli("encode", str(tmp_path / "a.wav"), "--model", str(models[0]), "--device", "cpu")
    assert result.code == 1 and "already exists" in result.stderr and clean(result)
    assert target.read_bytes() == b"the other writer's"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    result = cli("encode", str(tmp_path / "a.wav"), "--model", str(models[0]), "--device", "cpu", "--force")
    assert result.code == 0 and target.read_bytes() != b"the other writer's"


def test_exclusive_atomic_write(tmp_path: Path):
    from pyramid_cli.fileio import write_bytes_atomic

    write_bytes_atomic(tmp_path / "f", b"one", exclusive=True)
    with pytest.raises(FileExistsError):
        write_bytes_atomic(tmp_path / "f", b"two", exclusive=True)
    assert (tmp_path / "f").read_bytes() == b"one" and sorted(p.name for p in tmp_path.iterdir()) == ["f"]
