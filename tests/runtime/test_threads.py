"""Threads per phase (pyramid_cli.runtime.threads): sampling runs on its own thread count and restores torch's."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from pyramid_cli.errors import UsageError
from pyramid_cli.lm.decode import DecodeSettings
from pyramid_cli.runtime.threads import SAMPLING_THREADS, torch_threads


def test_torch_threads_sets_and_restores() -> None:
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before


def test_decode_settings_default_to_one_sampling_thread() -> None:
    assert DecodeSettings().threads == SAMPLING_THREADS == 1
    with pytest.raises(UsageError, match="threads"):
        DecodeSettings(threads=0)


def test_generation_samples_on_the_settings_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    from pyramid_cli.lm import sampling
    from pyramid_cli.lm.config import LMConfig
    from pyramid_cli.lm.layout import make_layout
    from pyramid_cli.lm.model import PyramidLM

    seen: list[int] = []
    original = sampling._generate

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(torch.get_num_threads())
        return original(*args, **kwargs)

    monkeypatch.setattr(sampling, "_generate", spy)
    torch.manual_seed(0)
    config = LMConfig(n_layer=1, n_head=2, d_model=16)
    model = PyramidLM(config).eval()
    plan = make_layout(config).piece(2)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        sampling.generate(model, plan, generator=torch.Generator().manual_seed(0))
        sampling.generate(model, plan, generator=torch.Generator().manual_seed(0), decode=DecodeSettings(threads=2))
        assert seen == [1, 2] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)


def test_every_command_but_training_waits_passively(monkeypatch: pytest.MonkeyPatch) -> None:
    from pyramid_cli.runtime.threads import WAIT_POLICY_ENV, choose_wait_policy

    monkeypatch.delenv(WAIT_POLICY_ENV, raising=False)
    choose_wait_policy(["train", "codec", "--data", "corpus"])
    assert WAIT_POLICY_ENV not in os.environ
    choose_wait_policy(["decode", "song.pyr"])
    assert os.environ[WAIT_POLICY_ENV] == "PASSIVE"
    monkeypatch.setenv(WAIT_POLICY_ENV, "ACTIVE")  # the user's choice wins
    choose_wait_policy(["generate"])
    assert os.environ[WAIT_POLICY_ENV] == "ACTIVE"


def test_the_command_line_sets_the_policy_before_torch_starts() -> None:
    code = ("import os, sys\n"
            "from pyramid_cli.cli import main\n"
            "assert 'torch' not in sys.modules\n"
            "try:\n    main(['info', '--help'])\nexcept SystemExit:\n    pass\n"
            "print(os.environ.get('OMP_WAIT_POLICY'))\n")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "PASSIVE"
