"""Training-state checkpoints: exact round trip, no pickle, atomic folders, keep-last + best."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch
from torch import nn

from pyramid_cli.codec.layers import WNConv1d
from pyramid_cli.errors import FormatError
from pyramid_cli.train.checkpoint import (
    best_checkpoint,
    latest_checkpoint,
    list_checkpoints,
    load_training_state,
    save_training_state,
)


class Tiny(nn.Module):
    """A weight-normalised conv, a linear layer and a non-persistent buffer (like codebook usage)."""

    counts: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.conv = WNConv1d(1, 3, kernel_size=3, padding=1)
        self.head = nn.Linear(3, 1)
        self.register_buffer("counts", torch.zeros(4), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).mean(-1))


def make(seed: int = 0) -> tuple[Tiny, torch.optim.AdamW]:
    torch.manual_seed(seed)
    model = Tiny()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.99), weight_decay=0.01)


def train_steps(model: Tiny, optimizer: torch.optim.Optimizer, n: int) -> None:
    for _ in range(n):
        x = torch.randn(4, 1, 8)  # draws from the global RNG: resume must restore it
        loss = (model(x) - x.mean(dim=(1, 2))[:, None]).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.counts += torch.rand(4)


def test_resume_is_bit_identical(tmp_path: Path) -> None:
    model, optimizer = make()
    train_steps(model, optimizer, 3)
    save_training_state(tmp_path, 3, model, optimizer, {"data_position": 12})
    train_steps(model, optimizer, 3)
    random.random(), np.random.rand()  # noqa: B018 - advance the other generators too

    resumed, resumed_opt = make(seed=99)  # different initial weights: all must come from the file
    loaded = load_training_state(tmp_path / "step-000000003", resumed, resumed_opt)
    assert loaded.step == 3 and loaded.state == {"data_position": 12}
    train_steps(resumed, resumed_opt, 3)
    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert torch.equal(model.counts, resumed.counts)
    assert resumed_opt.param_groups[0]["betas"] == (0.8, 0.99)  # a tuple again after JSON


def test_rng_states_are_restored(tmp_path: Path) -> None:
    model, optimizer = make()
    torch.manual_seed(5), random.seed(5), np.random.seed(5)
    save_training_state(tmp_path, 1, model, optimizer, {})
    expected = (torch.rand(3), random.random(), np.random.rand())
    load_training_state(tmp_path / "step-000000001", model, optimizer)
    assert torch.equal(torch.rand(3), expected[0])
    assert random.random() == expected[1] and np.random.rand() == expected[2]


def test_checkpoint_holds_no_pickle(tmp_path: Path) -> None:
    model, optimizer = make()
    train_steps(model, optimizer, 1)
    folder = save_training_state(tmp_path, 1, model, optimizer, {"note": "x"}, model_config={"name": "tiny"})
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["config.json", "model.safetensors", "training.json", "training.safetensors"]
    for path in folder.iterdir():
        data = path.read_bytes()
        assert not data.startswith(b"\x80") and b"PK\x03\x04" not in data[:4]  # pickle / torch.save zip
        if path.suffix == ".json":
            json.loads(data)
        else:
            with safetensors.safe_open(str(path), framework="pt") as handle:
                assert list(handle.keys())
    tensors = safetensors.torch.load_file(folder / "training.safetensors")
    assert tensors["rng.torch"].dtype == torch.uint8
    assert any(k.startswith("optimizer.conv.parametrizations.weight.original1.exp_avg") for k in tensors)
    assert "buffer.counts" in tensors


def test_keep_last_and_best(tmp_path: Path) -> None:
    model, optimizer = make()
    for step in range(1, 7):
        save_training_state(tmp_path, step, model, optimizer, {}, keep_last=2, best=step == 2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000000002", "step-000000005", "step-000000006"]
    assert latest_checkpoint(tmp_path).name == "step-000000006"
    assert best_checkpoint(tmp_path).name == "step-000000002"


def test_interrupted_save_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    model, optimizer = make()
    save_training_state(tmp_path, 1, model, optimizer, {})
    # A crash mid-save leaves only a hidden temporary folder: never mistaken for a checkpoint.
    (tmp_path / ".tmp-step-000000002-123").mkdir()
    (tmp_path / ".tmp-step-000000002-123" / "model.safetensors").write_bytes(b"half")
    assert latest_checkpoint(tmp_path).name == "step-000000001"
    save_training_state(tmp_path, 2, model, optimizer, {})
    assert not list(tmp_path.glob(".tmp-*"))
    (tmp_path / "last").unlink()  # a crash before the pointer was written: newest folder wins
    assert latest_checkpoint(tmp_path).name == "step-000000002"
    save_training_state(tmp_path, 2, model, optimizer, {"again": True})  # same step saved twice
    assert load_training_state(tmp_path / "step-000000002", model, optimizer).state == {"again": True}
    assert latest_checkpoint(tmp_path / "missing") is None


def test_refuses_mismatched_or_corrupt_state(tmp_path: Path) -> None:
    model, optimizer = make()
    train_steps(model, optimizer, 1)
    folder = save_training_state(tmp_path, 1, model, optimizer, {})
    other = nn.Linear(3, 1)
    with pytest.raises(FormatError):
        load_training_state(folder, other, torch.optim.AdamW(other.parameters()))
    meta = json.loads((folder / "training.json").read_text())
    (folder / "training.json").write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(FormatError, match="version"):
        load_training_state(folder, model, optimizer)
    (folder / "training.json").write_text("{not json")
    with pytest.raises(FormatError):
        load_training_state(folder, model, optimizer)
