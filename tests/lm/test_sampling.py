"""Sampling (``pyramid_cli.lm.sampling``): seeds, batches, prefixes, the top-k / top-p filters and the
settings' checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_lm_model import model_for

from pyramid_cli.errors import UsageError
from pyramid_cli.lm.layout import make_layout
from pyramid_cli.lm.sampling import SamplingSettings, generate, sample_next, top_k_filter, top_p_filter


def test_seeded_sampling_is_reproducible_and_batched():
    model = model_for("time_aligned")
    plan = make_layout(model.config).piece(6)
    settings = SamplingSettings(temperature=1.3, top_k=10, top_p=0.9)
    a = generate(model, plan, num_samples=3, sampling=settings, generator=torch.Generator().manual_seed(7))
    b = generate(model, plan, num_samples=3, sampling=settings, generator=torch.Generator().manual_seed(7))
    c = generate(model, plan, num_samples=3, sampling=settings, generator=torch.Generator().manual_seed(8))
    assert a.shape == (3, len(plan)) and (a >= 0).all() and (a[:, plan.level >= 0] < 32).all()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a[0], a[1]), "samples of a batch are drawn independently"


def test_stop_generates_only_a_prefix():
    model = model_for("time_aligned")
    plan = make_layout(model.config).piece(6)
    coarse_end = int(np.where(plan.level == 0)[0].max()) + 1
    tokens = generate(model, plan, stop=coarse_end, sampling=SamplingSettings(temperature=0))[0]
    assert (tokens[:coarse_end] >= 0).all() and (tokens[coarse_end:] == -1).all()


def test_filters():
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0, 0.0]])
    assert torch.isinf(top_k_filter(logits, 2)).tolist() == [[True, False, False, True, True]]
    assert torch.equal(top_k_filter(logits, 0), logits)
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = ~torch.isinf(top_p_filter(probs.log(), 0.8))
    assert kept.tolist() == [[True, True, False, False]]
    assert (~torch.isinf(top_p_filter(probs.log(), 0.1))).sum() == 1, "the top token is always kept"
    assert sample_next(logits, temperature=0).item() == 1
    generator = torch.Generator().manual_seed(0)
    draws = {sample_next(logits, 1.0, top_k=2, generator=generator).item() for _ in range(50)}
    assert draws == {1, 2}


@pytest.mark.parametrize(("changes", "option"), [({"temperature": -1.0}, "temperature"),
                                                 ({"temperature": math.nan}, "temperature"),
                                                 ({"top_k": -1}, "top_k"), ({"top_p": 0.0}, "top_p"),
                                                 ({"top_p": 1.5}, "top_p")])
def test_settings_refuse_impossible_values_naming_the_setting(changes: dict, option: str):
    with pytest.raises(UsageError) as error:
        SamplingSettings(**changes)
    assert error.value.option == option and str(error.value).startswith(option)


def test_temperature_zero_is_greedy_whatever_the_generator():
    logits = torch.tensor([[0.1, 2.0, 1.9]])
    draws = {sample_next(logits, 0.0, generator=torch.Generator().manual_seed(seed)).item() for seed in range(5)}
    assert draws == {1}
