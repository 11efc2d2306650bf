"""The GPT: cached generation equals full forward passes, prompts are kept, checkpoints round-trip."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from pyramid_cli.errors import CodecMismatchError, FormatError, InputError
from pyramid_cli.hub.identity import CodecIdentity
from pyramid_cli.lm.config import LMConfig, tiny
from pyramid_cli.lm.layout import make_layout
from pyramid_cli.lm.model import PyramidLM, check_codec
from pyramid_cli.lm.sampling import SamplingSettings, generate

SMALL = replace(tiny(), codebook_size=32, coarse_window=5, detail_window=3, detail_lookback=2, detail_lookahead=1,
                train_detail_frames=4, flat_window=20)


def model_for(layout: str, **changes) -> PyramidLM:
    torch.manual_seed(0)
    return PyramidLM(replace(SMALL, layout=layout, **changes)).eval()


def full_forward_logits(model: PyramidLM, tokens: np.ndarray, layout_name: str, frames: int) -> torch.Tensor:
    seq = make_layout(model.config).piece(frames)
    logits, _ = model(torch.from_numpy(tokens)[None], torch.from_numpy(seq.positions),
                      torch.from_numpy(seq.streams), mask=seq.attention_mask())
    return logits[0]


@pytest.mark.parametrize("layout", ["time_aligned", "flat"])
@pytest.mark.parametrize("n_codebooks", [(1, 1, 1), (2, 1, 2)])
def test_cached_greedy_generation_equals_full_forward(layout: str, n_codebooks: tuple):
    """Greedy decoding with the KV cache picks, at every step, the argmax of a full forward pass
    over the finished sequence with the layout's dense mask: no step recomputes the prefix, and
    the cache changes nothing."""
    model = model_for(layout, n_codebooks=n_codebooks)
    plan = make_layout(model.config).piece(9)
    tokens = generate(model, plan, sampling=SamplingSettings(temperature=0))[0]
    logits = full_forward_logits(model, tokens, layout, 9)
    sampled = np.where(plan.tokens < 0)[0]
    assert len(sampled) > 0
    expected = logits[sampled - 1, : model.config.codebook_size].argmax(-1).numpy()
    np.testing.assert_array_equal(tokens[sampled], expected)


@pytest.mark.parametrize("layout", ["time_aligned", "flat"])
def test_prompt_tokens_are_kept_and_fed_in_chunks(layout: str):
    model = model_for(layout)
    lay = make_layout(model.config)
    rng = np.random.default_rng(0)
    prompt = [rng.integers(0, 32, (1, 3 * r)) for r in model.config.frames_per_coarse]
    plan = lay.piece(8)
    known = lay.piece(3, prompt)
    # place the prompt's codes at the start of every level
    lookup = {(lv, f, cb): t for lv, f, cb, t in zip(known.level, known.frame, known.codebook, known.tokens,
                                                     strict=True) if lv >= 0}
    for i in range(len(plan)):
        key = (plan.level[i], plan.frame[i], plan.codebook[i])
        if key in lookup:
            plan.tokens[i] = lookup[key]
    tokens = generate(model, plan, sampling=SamplingSettings(temperature=0))[0]
    assert (tokens[plan.tokens >= 0] == plan.tokens[plan.tokens >= 0]).all()
    logits = full_forward_logits(model, tokens, layout, 8)
    sampled = np.where(plan.tokens < 0)[0]
    np.testing.assert_array_equal(tokens[sampled], logits[sampled - 1, :32].argmax(-1).numpy())


def test_checkpoint_round_trip_and_codec_check(tmp_path: Path):
    model = model_for("flat", codec_name="codec-x", codec_hash="abcd")
    model.save_pretrained(tmp_path / "m", fp16=True)
    loaded = PyramidLM.from_pretrained(tmp_path / "m")
    assert loaded.config == model.config
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3, msg=name)
    check_codec(loaded.config, CodecIdentity("codec-x", "abcd"))
    with pytest.raises(CodecMismatchError, match="trained on tokens of codec-x@abcd; the codec given is codec-y@abcd"):
        check_codec(loaded.config, CodecIdentity("codec-y", "abcd"))
    (tmp_path / "m" / "config.json").write_text('{"model_type": "pyramid-lm"}')
    with pytest.raises(FormatError, match="missing keys"):
        PyramidLM.from_pretrained(tmp_path / "m")
    with pytest.raises(InputError, match="no such file"):
        PyramidLM.from_pretrained(tmp_path / "absent")


def test_config_validation():
    with pytest.raises(Exception, match="layout must be one of"):
        LMConfig(layout="spiral")
    with pytest.raises(Exception, match="frames_per_coarse must start at 1"):
        LMConfig(frames_per_coarse=(2, 4, 8))
    assert LMConfig.from_dict(LMConfig().to_dict()) == LMConfig()
    assert abs(LMConfig().tokens_per_second(2) - 4 * 22050 / 2048) < 1e-9
