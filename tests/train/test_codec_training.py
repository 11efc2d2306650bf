"""Codec training on tiny corpora: learning, exact resume, fine-tuning, the CLI, DDP."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import soundfile as sf
import torch

from pyramid_cli.codec import CodecConfig, PyramidCodec
from pyramid_cli.errors import UsageError
from pyramid_cli.train import CodecTrainConfig, train_codec
from pyramid_cli.train.common import apply_overrides, learning_rate, unwrap

SR = 22050
REPO = Path(__file__).resolve().parents[2]
TINY = CodecConfig(name="tiny", encoder_dim=4, encoder_rates=(2, 2), decoder_dim=16, pyramid_rates=(2, 2, 2),
                   latent_dim=16, n_codebooks=(1, 2, 1), codebook_size=32, codebook_dim=4, quantizer_dropout=0.5)
FAST = dict(model=TINY.to_dict(), crop_seconds=0.3, batch_size=2, lr=3e-3, warmup_steps=0, eval_clips=2,
            eval_seconds=0.3, log_every=1, eval_every=0, checkpoint_every=0, reseed_dead_codes_every=0, seed=1)
TINY_DISCRIMINATOR = dict(periods=[2, 3], period_channels=[4, 8], stft_windows=[256, 128], stft_channels=4)
GAN = dict(FAST, gan=True, discriminator=TINY_DISCRIMINATOR)



def write_corpus(root: Path, seconds: float = 1.5, n_train: int = 3, n_valid: int = 1) -> Path:
    """FLAC tones with a tremolo and a little noise, plus the manifest `dataset build` would write."""
    rng = np.random.default_rng(0)
    records = []
    for split, count in (("train", n_train), ("valid", n_valid)):
        for k in range(count):
            t = np.arange(int(seconds * SR)) / SR
            wav = 0.3 * np.sin(2 * np.pi * (150 + 90 * k) * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
            wav += 0.01 * rng.standard_normal(t.shape)
            rel = f"audio/{split}/{split}{k}.flac"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            sf.write(root / rel, wav.astype(np.float32), SR)
            records.append({"id": f"{split}{k}", "split": split, "audio": rel, "duration": seconds,
                            "num_samples": len(t)})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def records(run: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(folder / "model.safetensors")


def test_config_checks_and_overrides() -> None:
    with pytest.raises(UsageError, match="unknown discriminator preset"):
        CodecTrainConfig(gan=True, discriminator="huge")
    with pytest.raises(UsageError, match="discriminator: unknown key"):
        CodecTrainConfig(discriminator={"width": 2})
    with pytest.raises(UsageError, match="adv_weight"):
        CodecTrainConfig(adv_weight=-1)
    gan = CodecTrainConfig.from_dict(apply_overrides({}, ["gan=true", 'discriminator={"stft_channels": 16}']))
    assert gan.gan and gan.discriminator_config().stft_channels == 16
    assert gan.discriminator_config().periods == (2, 3, 5, 7, 11)  # other fields keep the "small" defaults
    with pytest.raises(UsageError, match="levels_per_step"):
        CodecTrainConfig(levels_per_step="some")
    with pytest.raises(UsageError, match="unknown training setting.*colour"):
        CodecTrainConfig.from_dict({"colour": 1})
    data = apply_overrides(CodecTrainConfig(model=TINY.to_dict()).to_dict(),
                           ["lr=3e-4", "levels_per_step=all", "model.latent_dim=8", "betas=[0.9, 0.95]"])
    config = CodecTrainConfig.from_dict(data)
    assert config.lr == 3e-4 and config.levels_per_step == "all" and config.betas == (0.9, 0.95)
    assert config.codec_config().latent_dim == 8
    with pytest.raises(UsageError):
        apply_overrides({"lr": 1}, ["lr"])


def test_learning_rate_schedules() -> None:
    assert learning_rate(0, 1.0, warmup_steps=4) == 0.25
    assert learning_rate(3, 1.0, warmup_steps=4) == 1.0
    assert learning_rate(6, 1.0, 4, "exponential", decay=0.5) == 0.25
    assert learning_rate(4, 1.0, 4, "cosine", total_steps=14, min_ratio=0.1) == 1.0
    assert math.isclose(learning_rate(14, 1.0, 4, "cosine", total_steps=14, min_ratio=0.1), 0.1)
    assert learning_rate(99, 1.0, 0, "constant") == 1.0


def test_training_lowers_the_loss(tmp_path: Path) -> None:
    # One song exactly one crop long: every step sees the same batch, so the loss must fall.
    single = write_corpus(tmp_path / "one", seconds=0.3, n_train=1, n_valid=0)
    config = CodecTrainConfig(**{**FAST, "steps": 10, "levels_per_step": "all"})
    seen: list[dict] = []
    result = train_codec(tmp_path / "run", config, single, on_log=seen.append)
    losses = [r["loss"] for r in seen if r["kind"] == "train"]
    assert result.finished and len(losses) == 10
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
    assert {"mel_l0", "mel_l1", "mel_l2", "codes_used_l1", "perplexity_l2", "steps_per_s"} <= set(seen[-2])
    assert result.best_step is None  # no valid split: no evaluation, no best


def test_resume_equals_uninterrupted(tmp_path: Path, corpus: Path) -> None:
    # Quantizer dropout, dead-code reseeding, random levels and evaluation all run in between.
    config = CodecTrainConfig(**{**FAST, "steps": 6, "eval_every": 2, "reseed_dead_codes_every": 2})
    straight = train_codec(tmp_path / "a", config, corpus)
    first = train_codec(tmp_path / "b", config, corpus, max_steps_this_call=3)
    assert (first.step, first.finished) == (3, False)
    second = train_codec(tmp_path / "b", config, corpus)
    assert (second.resumed_from, second.step, straight.step) == (3, 6, 6)
    a, b = tmp_path / "a/checkpoints/step-000000006", tmp_path / "b/checkpoints/step-000000006"
    for name, tensor in weights(a).items():
        assert torch.equal(tensor, weights(b)[name]), name
    state_a = safetensors.torch.load_file(a / "training.safetensors")
    state_b = safetensors.torch.load_file(b / "training.safetensors")
    assert state_a.keys() == state_b.keys() and all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    losses = {run: [r["loss"] for r in records(tmp_path / run, "train")] for run in "ab"}
    assert losses["a"] == losses["b"]  # the log was trimmed back to the checkpoint, then redone identically
    assert (tmp_path / "b/export/model.safetensors").is_file()
    assert straight.best_step is not None and (tmp_path / "a/checkpoints/best").is_file()


def test_gan_training_logs_and_resumes_exactly(tmp_path: Path, corpus: Path) -> None:
    # The discriminator joins after one step; evaluation and a resume happen in between.
    config = CodecTrainConfig(**{**GAN, "steps": 4, "gan_start_step": 1, "eval_every": 2})
    straight = train_codec(tmp_path / "a", config, corpus)
    first = train_codec(tmp_path / "b", config, corpus, max_steps_this_call=2)
    second = train_codec(tmp_path / "b", config, corpus)
    assert (first.step, second.resumed_from, second.step, straight.step) == (2, 2, 4, 4)
    a, b = tmp_path / "a/checkpoints/step-000000004", tmp_path / "b/checkpoints/step-000000004"
    for name, tensor in weights(a).items():
        assert torch.equal(tensor, weights(b)[name]), name
    state_a = safetensors.torch.load_file(a / "training.safetensors")
    state_b = safetensors.torch.load_file(b / "training.safetensors")
    assert state_a.keys() == state_b.keys() and all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert any(k.startswith("discriminator.model.") for k in state_a)
    assert any(k.startswith("discriminator.optimizer.") and k.endswith(".exp_avg") for k in state_a)
    assert json.loads((a / "training.json").read_text())["trainer"]["discriminator"]["config"]["periods"] == [2, 3]
    timing = {"steps_per_s", "samples_per_s", "elapsed_s", "eta_s"}
    train = {run: [{k: v for k, v in r.items() if k not in timing} for r in records(tmp_path / run, "train")]
             for run in "ab"}
    assert train["a"] == train["b"]  # every logged value, GAN terms included, redone identically
    assert "d_loss" not in train["a"][0]  # step 0 came before gan_start_step
    assert all({"d_loss", "adv", "feat", "grad_norm_d"} <= set(r) for r in train["a"][1:])
    assert all(math.isfinite(r["d_loss"]) and r["adv"] > 0 and r["feat"] > 0 for r in train["a"][1:])
    # The export is the codec alone: the keys of a bare PyramidCodec, no discriminator.
    exported = weights(tmp_path / "a/export")
    assert set(exported) == set(PyramidCodec(TINY).state_dict())
    assert not any("discriminator" in k or k.startswith(("periods.", "stfts.")) for k in exported)
    PyramidCodec.from_pretrained(tmp_path / "a/export")


def test_gan_joins_a_run_and_fine_tuning_gets_a_fresh_discriminator(tmp_path: Path, corpus: Path) -> None:
    train_codec(tmp_path / "run", CodecTrainConfig(**{**FAST, "steps": 1}), corpus)
    seen: list[dict] = []
    result = train_codec(tmp_path / "run", CodecTrainConfig(**{**GAN, "steps": 2}), corpus, on_log=seen.append)
    assert result.step == 2 and {"kind": "note", "step": 1, "fresh_discriminator": True} in seen
    assert "d_loss" in records(tmp_path / "run", "train")[-1]
    other = CodecTrainConfig(**{**GAN, "steps": 3, "discriminator": {**TINY_DISCRIMINATOR, "stft_channels": 2}})
    with pytest.raises(UsageError, match="discriminator with other settings"):
        train_codec(tmp_path / "run", other, corpus)
    # --init-from: the codec's weights, but the discriminator a fresh run would start with.
    config = CodecTrainConfig(**{**GAN, "steps": 2})
    train_codec(tmp_path / "ft", config, corpus, init_from=tmp_path / "run/export", max_steps_this_call=0)
    train_codec(tmp_path / "new", config, corpus, max_steps_this_call=0)
    tuned, new = (safetensors.torch.load_file(tmp_path / f"{run}/checkpoints/step-000000000/training.safetensors")
                  for run in ("ft", "new"))
    disc = [k for k in tuned if k.startswith("discriminator.")]
    assert disc and all(k.startswith("discriminator.model.") for k in disc)  # no optimizer moments yet
    assert all(torch.equal(tuned[k], new[k]) for k in disc)


def test_resume_refuses_another_model(tmp_path: Path, corpus: Path) -> None:
    train_codec(tmp_path / "run", CodecTrainConfig(**{**FAST, "steps": 1}), corpus)
    other = CodecTrainConfig(**{**FAST, "steps": 2, "model": {**TINY.to_dict(), "latent_dim": 8}})
    with pytest.raises(UsageError, match="another model config"):
        train_codec(tmp_path / "run", other, corpus)


@pytest.mark.parametrize("folded", [False, True])
def test_init_from_loads_weights_with_a_fresh_optimizer(tmp_path: Path, corpus: Path, folded: bool) -> None:
    train_codec(tmp_path / "base", CodecTrainConfig(**{**FAST, "steps": 2}), corpus)
    source = PyramidCodec.from_pretrained(tmp_path / "base/export")
    if folded:  # a shipped model may have its weight norm baked in
        source.fold_weight_norm().save_pretrained(tmp_path / "folded")
    init = tmp_path / ("folded" if folded else "base/export")
    config = CodecTrainConfig(**{**FAST, "steps": 5, "model": "p111_small"})  # the folder's config wins
    result = train_codec(tmp_path / "ft", config, corpus, init_from=init, max_steps_this_call=0)
    assert result.step == 0
    start = tmp_path / "ft/checkpoints/step-000000000"
    model = PyramidCodec(TINY)
    model.load_state_dict(weights(start))
    reference = PyramidCodec.from_pretrained(init)
    for a, b in zip(model.fold_weight_norm().state_dict().values(),
                    reference.fold_weight_norm().state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    meta = json.loads((start / "training.json").read_text())
    assert meta["optimizer"]["scalars"] == {}  # no moments: a fresh optimizer
    assert not any(k.startswith("optimizer.") for k in safetensors.torch.load_file(start / "training.safetensors"))
    assert records(tmp_path / "ft", "start")[0]["init_from"] == str(init)


def test_unwrap_strips_wrappers() -> None:
    class Compiled(torch.nn.Module):  # what torch.compile returns keeps the model as _orig_mod
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self._orig_mod = inner

    model = PyramidCodec(TINY)
    assert unwrap(Compiled(Compiled(model))) is model and unwrap(model) is model


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "pyramid_cli", "train", "codec", *args]


def test_cli_end_to_end_ctrl_c_then_resume(tmp_path: Path, corpus: Path) -> None:
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({**FAST, "checkpoint_every": 0, "discriminator": TINY_DISCRIMINATOR}))
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_cli("--data", str(corpus), "--run", str(run), "--config", str(settings),
                                 "--steps", "1000", "--threads", "1"),
                            cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    lines = []
    deadline = time.monotonic() + 60
    for line in proc.stderr:  # non-TTY: one line per step
        lines.append(line)
        if line.startswith("step 2/") or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=60)
    assert proc.returncode == 130, "".join(lines) + rest
    assert "checkpoint saved" in rest
    stopped_at = int((run / "checkpoints/last").read_text().strip().split("-")[1])
    assert stopped_at >= 2
    # The resume also switches GAN training on (--gan): the discriminator joins, fresh.
    done = subprocess.run(_cli("--data", str(corpus), "--run", str(run), "--steps", str(stopped_at + 2), "--gan",
                               "--json"), cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["resumed_from"] == stopped_at and summary["step"] == stopped_at + 2 and summary["finished"]
    assert {"d_loss", "adv", "feat"} <= set(summary["last"])
    saved = json.loads((run / "config.json").read_text())
    assert saved["steps"] == stopped_at + 2 and saved["gan"] is True
    assert "resuming at step" in done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("gan", [False, True])
def test_ddp_two_cpu_processes(tmp_path: Path, corpus: Path, gan: bool) -> None:
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({**(GAN if gan else FAST), "eval_every": 2, "reseed_dead_codes_every": 2,
                                    "checkpoint_every": 2}))
    run = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "pyramid_cli", "train", "codec", "--data", str(corpus), "--run-dir", str(run),
               "--config", str(settings), "--device", "cpu", "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for steps in (3, 4):  # a run, then a DDP resume
        done = subprocess.run([*command, "--steps", str(steps)], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=180)
        assert done.returncode == 0, done.stderr[-3000:]
    start = records(run, "start")
    assert [r["world_size"] for r in start] == [2, 2] and start[1]["resumed_from"] == 3
    assert [r["step"] for r in records(run, "train")] == [1, 2, 3, 4]
    state = safetensors.torch.load_file(run / "checkpoints/step-000000004/training.safetensors")
    assert "rng.rank1.torch" in state
    assert json.loads((run / "checkpoints/step-000000004/training.json").read_text())["trainer"]["data_position"] == 16
    assert any(k.startswith("discriminator.optimizer.") for k in state) == gan
    assert all(("d_loss" in r) == gan for r in records(run, "train"))


def test_set_edits_a_preset_discriminator_or_model_field_on_a_new_run(tmp_path) -> None:
    from pyramid_cli.cli.train import _settings

    settings = _settings(tmp_path / "run", None, {"model": "p111_small"},
                         ["gan=true", "discriminator.stft_channels=16", "model.latent_dim=64"])
    config = CodecTrainConfig.from_dict(settings)
    assert config.discriminator_config().stft_channels == 16
    assert config.discriminator_config().periods == (2, 3, 5, 7, 11)  # the rest of the "small" preset
    assert config.codec_config().latent_dim == 64 and config.codec_config().encoder_dim == 12
