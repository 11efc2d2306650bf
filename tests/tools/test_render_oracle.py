"""tools/render_oracle.py: decodes with the gates or the partial amplitudes swapped for the truth."""

from __future__ import annotations

import argparse

import pytest
import torch
from tool_scripts import load_tool

from pyramid_cli.codec import CodecConfig, PyramidCodec
from pyramid_cli.codec.spectral import PIANO_KEYS

render_oracle = load_tool("render_oracle")

NOTES = CodecConfig(name="tiny-notes", architecture="spectral", encoder_rates=(256,), encoder_dim=16,
                    decoder_dim=16, latent_dim=16, encoder_layers=1, decoder_layers=1, griffin_lim_iters=2,
                    fsq_levels=(4, 4, 4, 4, 4), harmonics=8, key_partials=True, note_onsets=True,
                    note_gate_power=2.0)


def _codec_and_clip() -> tuple[PyramidCodec, torch.Tensor, list[torch.Tensor]]:
    torch.manual_seed(0)
    codec = PyramidCodec(NOTES).eval()
    with torch.no_grad():  # a fresh head starts with every key nearly off; light some so the gates matter
        codec.decoder.note_head.notes.bias[:PIANO_KEYS].normal_(0.0, 2.0)
    wav = 0.1 * torch.randn(1, 1, 4 * 2048)
    return codec, wav, codec.encode(wav)


def _truth(roll: torch.Tensor) -> object:
    return render_oracle.Truth(roll, torch.zeros_like(roll), torch.rand(roll.shape[0], PIANO_KEYS, NOTES.harmonics))


def test_without_swaps_it_decodes_as_the_codec_does(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYRAMID_CPU_BF16", "0")
    codec, wav, codes = _codec_and_clip()
    truth = _truth(torch.ones(40, PIANO_KEYS))  # the roll is not used when a = 0
    for levels in (1, 3):
        expected = codec.decode(codes, levels=levels, length=wav.shape[-1])
        got = render_oracle.decode_with(codec, codes, levels, wav.shape[-1], truth, render_oracle.Variant())
        torch.testing.assert_close(got, expected)


def test_the_roll_as_the_gates_lights_exactly_its_keys() -> None:
    codec, wav, codes = _codec_and_clip()
    head = codec.decoder.note_head
    hidden = codec.decoder.net.hidden(codec.codes_to_latent(codes, 3))
    frames, bins = hidden.shape[1], head.templates.shape[1]
    truth = _truth(torch.zeros(frames, PIANO_KEYS))
    with torch.no_grad():
        silent = render_oracle.note_magnitudes(head, hidden, bins, truth, render_oracle.Variant(a=1.0, onsets="none"))
        assert silent.abs().max() == 0  # no key in the roll: no partials, whatever the head thinks
        a4 = 69 - 21
        truth.roll[:, a4] = 1.0
        one = render_oracle.note_magnitudes(head, hidden, bins, truth, render_oracle.Variant(a=1.0, onsets="none"))
        own = render_oracle.note_magnitudes(head, hidden, bins, truth, render_oracle.Variant(a=0.0, onsets="none"))
    a4_bins = head.templates.view(PIANO_KEYS, NOTES.harmonics, -1)[a4].sum(0) > 0
    assert one[0, a4_bins].min() > 0 and one[0, ~a4_bins].abs().max() == 0
    assert not torch.allclose(own, one)  # the head's own gates light other keys too


def test_amplitude_swaps_take_the_level_or_the_profile_from_the_input() -> None:
    torch.manual_seed(1)
    head = torch.rand(6, PIANO_KEYS, 4) + 0.1
    fitted = torch.rand(6, PIANO_KEYS, 4) + 0.1
    roll = torch.zeros(6, PIANO_KEYS)
    roll[2:5, 10] = 1.0
    truth = render_oracle.Truth(roll, torch.zeros_like(roll), fitted)

    def swap(amp: str) -> torch.Tensor:
        return render_oracle.amplitudes(head, truth, render_oracle.Variant(amp=amp))

    assert torch.equal(swap("head"), head)
    torch.testing.assert_close(swap("input"), fitted)
    level = swap("input-level")
    torch.testing.assert_close(level.sum(-1), fitted.sum(-1))
    torch.testing.assert_close(level / level.sum(-1, keepdim=True), head / head.sum(-1, keepdim=True))
    profile = swap("input-profile")
    torch.testing.assert_close(profile.sum(-1), head.sum(-1))
    torch.testing.assert_close(profile / profile.sum(-1, keepdim=True), fitted / fitted.sum(-1, keepdim=True))
    clip = swap("input-clip-profile")
    torch.testing.assert_close(clip[:, 11], head[:, 11])  # a key the MIDI does not play keeps the head's
    shape = clip[:, 10] / clip[:, 10].sum(-1, keepdim=True)
    torch.testing.assert_close(shape, shape[:1].expand_as(shape))  # one profile for the whole clip
    expected = (fitted[2:5, 10] / fitted[2:5, 10].sum(-1, keepdim=True)).mean(0)
    torch.testing.assert_close(shape[0], expected / expected.sum())
    smooth = render_oracle.amplitudes(head, truth, render_oracle.Variant(smooth=3))
    torch.testing.assert_close(smooth[3], head[2:5].mean(0))


def test_variants_parse_and_refuse_unknown_fields() -> None:
    variant = render_oracle.parse_variant("a=0.5,amp=input-level,free=0,onsets=midi")
    assert variant == render_oracle.Variant(a=0.5, amp="input-level", free=False, onsets="midi")
    assert render_oracle.parse_variant(str(variant)) == variant
    with pytest.raises(argparse.ArgumentTypeError, match="not a variant field"):
        render_oracle.parse_variant("amp=louder")
