"""Generation as library calls (lm/api.py): load_lm by reference, generate_audio from references to audio."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pyramid_cli.errors import CodecMismatchError, InputError, UsageError
from pyramid_cli.lm.api import generate_audio, load_lm


@pytest.fixture(scope="module")
def sketch():
    """A 1 s, one-level piece from the bundled LM and codec (a few seconds on a CPU)."""
    return generate_audio(1.0, seed=3, device="cpu", levels=1)


def test_generate_audio_samples_decodes_and_reports(sketch) -> None:
    piece = sketch.pieces[0]
    assert piece.n_levels == 1 and piece.provenance["seed"] == 3
    assert sketch.audio[0].shape == (1, piece.num_samples) and np.isfinite(sketch.audio[0]).all()
    assert sketch.seconds == pytest.approx(piece.num_samples / sketch.sample_rate)
    summary = sketch.summary()
    assert (summary["seed"], summary["levels"], summary["num_samples"]) == (3, 1, 1)
    assert summary["lm"] == f"{sketch.lm.name}@{sketch.lm.hash}" and summary["real_time_factor"] > 0


def test_the_same_seed_gives_the_same_tokens_and_audio_is_optional(sketch) -> None:
    again = generate_audio(1.0, lm=sketch.lm, codec=sketch.codec, seed=3, device="cpu", levels=1, decode_audio=False)
    np.testing.assert_array_equal(again.pieces[0].levels[0].codes, sketch.pieces[0].levels[0].codes)
    assert again.audio == []


def test_a_prompt_of_another_codec_and_bad_lengths_are_refused(sketch) -> None:
    other = dataclasses.replace(sketch.pieces[0], codec_name="other-codec")
    with pytest.raises(CodecMismatchError, match="the prompt was encoded with other-codec@"):
        generate_audio(2.0, lm=sketch.lm, codec=sketch.codec, prompt=other, device="cpu", decode_audio=False)
    with pytest.raises(UsageError) as error:
        generate_audio(2.0, lm=sketch.lm, codec=sketch.codec, prompt_seconds=1.0, device="cpu")
    assert error.value.option == "prompt_seconds"
    with pytest.raises(UsageError, match="finite number of seconds"):
        generate_audio(float("inf"), lm=sketch.lm, codec=sketch.codec, device="cpu")


def test_load_lm_takes_a_reference_and_refuses_a_codec() -> None:
    lm = load_lm("pyramid-lm-small")
    assert lm.name == "pyramid-lm-small" and len(lm.hash) == 16 and lm.folder.name == "pyramid-lm-small"
    with pytest.raises(InputError, match="is a codec, but a language model is needed"):
        load_lm("pyramid-22k-p111-notes-v3")
