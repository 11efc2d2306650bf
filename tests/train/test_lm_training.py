"""LM training: the loss falls on learnable tokens, a resumed run equals an uninterrupted one."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from pyramid_cli.data.tokens import TokenSet
from pyramid_cli.errors import CodecMismatchError
from pyramid_cli.lm.config import tiny
from pyramid_cli.lm.model import PyramidLM
from pyramid_cli.train.config import LMTrainConfig
from pyramid_cli.train.lm import evaluate_lm, train_lm

MODEL = replace(tiny(), n_layer=1, d_model=32, coarse_window=16, train_detail_frames=6, flat_window=48).to_dict()


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory, token_set_writer) -> Path:
    return token_set_writer(tmp_path_factory.mktemp("tokens"), "tiny-codec", "00ff",
                            {"train": [40, 30, 50], "valid": [30]})


def settings(**changes) -> LMTrainConfig:
    base = dict(model=MODEL, batch_size=4, steps=40, lr=3e-3, warmup_steps=5, eval_every=20, eval_windows=8,
                log_every=5, checkpoint_every=20, device="cpu")
    return LMTrainConfig(**{**base, **changes})


@pytest.mark.parametrize("layout", ["time_aligned", "flat"])
def test_training_lowers_the_loss(tmp_path: Path, tokens: Path, layout: str):
    before = evaluate_lm(_fresh(tokens, layout), TokenSet.open(tokens), "valid", 8)
    result = train_lm(tmp_path / "run", settings(layout=layout), tokens)
    assert result.finished and result.step == 40
    model = PyramidLM.from_pretrained(tmp_path / "run" / "export")
    assert model.config.layout == layout and model.config.codec_name == "tiny-codec"
    after = evaluate_lm(model, TokenSet.open(tokens), "valid", 8)
    assert after["nll"] < before["nll"] - 0.3
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in records} >= {"start", "train", "eval", "checkpoint"}
    assert all(np.isfinite(after[f"bits_per_second_l{i}"]) for i in range(3) if after[f"tokens_l{i}"])


def _fresh(tokens: Path, layout: str) -> PyramidLM:
    meta = TokenSet.open(tokens).meta
    torch.manual_seed(0)
    config = settings(layout=layout).lm_config().with_codec(meta.codec_name, meta.codec_hash, meta.sample_rate,
                                                            meta.hop_lengths, meta.n_codebooks, meta.codebook_size)
    return PyramidLM(config)


def test_resume_equals_uninterrupted(tmp_path: Path, tokens: Path):
    train_lm(tmp_path / "straight", settings(steps=20), tokens)
    first = train_lm(tmp_path / "resumed", settings(steps=20), tokens, max_steps_this_call=12)
    assert first.step == 12 and not first.finished
    second = train_lm(tmp_path / "resumed", settings(steps=20), tokens)
    assert second.resumed_from == 12 and second.finished
    a = PyramidLM.from_pretrained(tmp_path / "straight" / "export").state_dict()
    b = PyramidLM.from_pretrained(tmp_path / "resumed" / "export").state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_tokens_of_another_codec_are_refused(tmp_path: Path, tokens: Path, token_set_writer):
    train_lm(tmp_path / "run", settings(steps=2, eval_every=0), tokens)
    other = token_set_writer(tmp_path / "other", "other-codec", "1234", {"train": [20]})
    with pytest.raises(CodecMismatchError, match="tiny-codec@00ff"):
        train_lm(tmp_path / "run", settings(steps=4, eval_every=0), other)


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path: Path, tokens: Path):
    """torchrun with 2 CPU processes (gloo): trains, checkpoints once, resumes under DDP."""
    import os
    import subprocess
    import sys

    (tmp_path / "settings.json").write_text(json.dumps({**settings(steps=1).to_dict(), "eval_every": 2}))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
               "pyramid_cli", "train", "lm", "--tokens", str(tokens), "--run-dir", str(tmp_path / "run"),
               "--config", str(tmp_path / "settings.json"), "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for steps in (2, 4):
        done = subprocess.run([*command, "--steps", str(steps)], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    starts = [r for r in records if r["kind"] == "start"]
    assert [r["world_size"] for r in starts] == [2, 2] and starts[1]["resumed_from"] == 2
    assert PyramidLM.from_pretrained(tmp_path / "run" / "export").config.codec_name == "tiny-codec"


def _two_rank_runs(rank: int, init: str, tokens: str, root: str) -> None:
    """One of two gloo processes: an uninterrupted run, then a run stopped at step 3 and resumed."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        config = settings(model={**MODEL, "dropout": 0.3}, steps=6, eval_every=0, checkpoint_every=0, log_every=1)
        train_lm(Path(root) / "straight", config, tokens)
        train_lm(Path(root) / "resumed", config, tokens, max_steps_this_call=3)
        train_lm(Path(root) / "resumed", config, tokens)
        # Both ranks past all collective work before either tears down: once in a CI run (under load)
        # a rank died in gloo's teardown (SIGABRT, "terminate called without an active exception").
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_two_process_resume_with_dropout_equals_uninterrupted(tmp_path: Path, tokens: Path):
    """Each rank's dropout stream is checkpointed and restored: a resumed 2-process run (gloo, CPU)
    ends with the weights of an uninterrupted one (it would not if every rank got rank 0's stream)."""
    import torch.multiprocessing as mp

    mp.spawn(_two_rank_runs, args=(f"file://{tmp_path / 'rendezvous'}", str(tokens), str(tmp_path)), nprocs=2)
    a = PyramidLM.from_pretrained(tmp_path / "straight" / "export").state_dict()
    b = PyramidLM.from_pretrained(tmp_path / "resumed" / "export").state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    losses = [r["loss"] for r in map(json.loads, (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines())
              if r["kind"] == "train"]
    assert len(losses) == 6
