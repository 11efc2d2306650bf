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
