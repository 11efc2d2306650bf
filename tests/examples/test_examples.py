"""The examples run as documented (with a tiny random-weight codec standing in for the bundled one)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from pyramid_cli.codec.config import CodecConfig
from pyramid_cli.codec.model import PyramidCodec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_codec_demo_writes_every_level(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model_dir = tmp_path / "tiny"
    PyramidCodec(CodecConfig(name="tiny", encoder_dim=4, decoder_dim=128, latent_dim=8)).save_pretrained(model_dir)
    out = tmp_path / "demo"
    result = subprocess.run([sys.executable, str(EXAMPLES / "codec_demo.py"), "--model", str(model_dir),
                             "--out-dir", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "mel vs input" in result.stderr and result.stdout == ""
    assert sorted(p.name for p in out.iterdir()) == ["example.l1.wav", "example.l2.wav", "example.l3.wav",
                                                      "example.pyr"]
