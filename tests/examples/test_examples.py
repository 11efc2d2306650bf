"""The examples run as documented (with a tiny random-weight codec standing in for the bundled one)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest
import torch

from pyramid_cli.codec.config import CodecConfig
from pyramid_cli.codec.model import PyramidCodec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, *args: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run ``examples/NAME`` as ``python examples/NAME ARGS`` would, in this process."""
    monkeypatch.setattr(sys, "argv", [str(EXAMPLES / name), *args])
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")


def test_codec_demo_writes_every_level(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model_dir = tmp_path / "tiny"
    PyramidCodec(CodecConfig(name="tiny", encoder_dim=4, decoder_dim=128, latent_dim=8)).save_pretrained(model_dir)
    out = tmp_path / "demo"
    run_example("codec_demo.py", "--model", str(model_dir), "--out-dir", str(out), monkeypatch=monkeypatch)
    result = capsys.readouterr()
    assert "note F1" in result.err and "chroma" in result.err and result.out == ""
    assert sorted(p.name for p in out.iterdir()) == ["example.l1.wav", "example.l2.wav", "example.l3.wav",
                                                      "example.pyr"]


def test_generate_demo_writes_a_piece(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from pyramid_cli.hub.identity import codec_identity
    from pyramid_cli.lm.config import tiny
    from pyramid_cli.lm.model import PyramidLM

    torch.manual_seed(0)
    codec_dir = tmp_path / "codec"
    PyramidCodec(CodecConfig(name="tiny", encoder_dim=4, decoder_dim=32, latent_dim=8,
                             codebook_size=64)).save_pretrained(codec_dir)
    name, digest = codec_identity(codec_dir)
    lm = PyramidLM(tiny().with_codec(name, digest, 22050, (2048, 1024, 512), (1, 1, 1), 64))
    lm.save_pretrained(tmp_path / "lm")
    out = tmp_path / "demo"
    run_example("generate_demo.py", "--lm", str(tmp_path / "lm"), "--model", str(codec_dir), "--seconds", "2",
                "--out-dir", str(out), monkeypatch=monkeypatch)
    result = capsys.readouterr()
    assert "3 minutes here" in result.err and result.out == ""
    assert sorted(p.name for p in out.iterdir()) == ["generated.l1.wav", "generated.pyr", "generated.wav"]
