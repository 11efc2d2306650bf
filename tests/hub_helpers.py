"""Model folders and Hub caches for the registry tests (tests/hub/)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import safetensors.torch
import torch

from pyramid_cli.codec import CodecConfig, PyramidCodec

TINY = CodecConfig(name="tiny-p111", encoder_dim=4, latent_dim=8, decoder_dim=32, codebook_size=64)
COMMIT = "0123456789abcdef0123456789abcdef01234567"
try:
    from pyramid_cli.lm.config import tiny as tiny_lm

    LM_CONFIG = {**tiny_lm().to_dict(), "codec_name": "tiny-p111", "codec_hash": "0" * 16}
except ImportError:  # a tree without the LM package: the keys the registry reads
    LM_CONFIG = {"model_type": "pyramid-lm", "name": "pyramid-lm-tiny", "codec_name": "tiny-p111",
                 "codec_hash": "0" * 16, "n_layer": 2, "d_model": 64}


def save(folder: Path, seed: int = 0) -> PyramidCodec:
    torch.manual_seed(seed)
    model = PyramidCodec(TINY).eval()
    model.save_pretrained(folder)
    return model


def save_lm(folder: Path) -> Path:
    """A stand-in language model folder: the config keys the LM writes, and a tiny weights file."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(LM_CONFIG))
    safetensors.torch.save_file({"wte.weight": torch.zeros(8, 16)}, folder / "model.safetensors")
    return folder


def lay_out_hub_cache(cache: Path, repo_id: str, source: Path, commit: str = COMMIT,
                      refs: tuple[str, ...] = ("main",), skip: tuple[str, ...] = ()) -> Path:
    """Put ``source``'s files in a Hub cache as huggingface_hub does: blobs named by their LFS sha256
    (weights) or git blob sha1 (small files), snapshot entries as relative links, refs holding the commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True)
    for path in sorted(source.iterdir()):
        if path.name in skip:
            continue
        data = path.read_bytes()
        blob = (hashlib.sha256(data).hexdigest() if path.suffix == ".safetensors"
                else hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest())
        (repo / "blobs" / blob).write_bytes(data)
        (snapshot / path.name).symlink_to(Path("../../blobs") / blob)
    for ref in refs:
        (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)  # no newline, as huggingface_hub writes it
    return snapshot


def make_run(run: Path, seed: int = 0, evals: bool = True) -> PyramidCodec:
    """A training run folder as `pyramid train codec` leaves it (fp16 export, metrics with a torn last line)."""
    torch.manual_seed(seed)
    model = PyramidCodec(TINY).eval()
    model.save_pretrained(run / "export", fp16=True)
    (run / "checkpoints").mkdir()
    (run / "config.json").write_text(json.dumps({"model": "p111", "steps": 40, "batch_size": 2, "lr": 1e-4}))
    records = [{"kind": "start", "step": 0, "total_steps": 40, "device": "cpu", "world_size": 1},
               {"kind": "train", "step": 20, "loss": 3.5, "elapsed_s": 36.0},
               {"kind": "eval", "step": 20, "clips": 4, "mel": 1.25, "mel_l0": 1.5, "si_sdr": -3.0}]
    lines = [json.dumps(r) for r in (records if evals else records[:2])]
    (run / "metrics.jsonl").write_text("\n".join(lines) + '\n{"kind": "train", "st')  # killed mid-write
    return model


def flip_byte(path: Path, offset_from_end: int = 10) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0xFF
    path.write_bytes(bytes(data))


def no_temporaries(folder: Path) -> bool:
    return not any(p.name.endswith((".tmp", ".old")) for p in folder.rglob("*"))
