"""The note head of a spectral codec: harmonic templates, band limits, piano rolls, training."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pretty_midi
import pytest
import soundfile as sf
import torch

from pyramid_cli.codec import CodecConfig, CodecOutput, PyramidCodec
from pyramid_cli.codec.api import load_codec
from pyramid_cli.codec.config import p111_notes
from pyramid_cli.codec.inference import decode_codes
from pyramid_cli.codec.losses import MultiScaleMelLoss
from pyramid_cli.codec.spectral import (
    PIANO_KEYS,
    PIANO_LOW,
    NoteHead,
    harmonic_templates,
    partial_amplitudes,
    stft_magnitude,
)
from pyramid_cli.data.audio_dataset import NoteCropDataset, RandomCropDataset
from pyramid_cli.data.notes import midi_notes, onset_roll, piano_roll
from pyramid_cli.errors import InputError, UsageError
from pyramid_cli.hub.identity import weights_hash
from pyramid_cli.train import CodecTrainConfig, train_codec
from pyramid_cli.train.codec_parts import (
    added_parts,
    code_note_loss,
    codec_loss,
    level_targets,
    load_init_weights,
    octave_weights,
    top_key_weights,
)

RATE = 22050
TINY = CodecConfig(name="tiny-notes", architecture="spectral", encoder_rates=(256,), encoder_dim=16,
                   decoder_dim=16, latent_dim=16, encoder_layers=1, decoder_layers=1, griffin_lim_iters=2,
                   fsq_levels=(4, 4, 4, 4, 4), harmonics=8)


def test_templates_put_partials_at_the_harmonics_of_each_key() -> None:
    templates = harmonic_templates(2048, RATE, 8)
    assert templates.shape == (PIANO_KEYS, 8, 1025)
    a4 = 69 - PIANO_LOW
    for k in range(8):
        assert int(templates[a4, k].argmax()) == round((k + 1) * 440 * 2048 / RATE)
    top = PIANO_KEYS - 1  # C8, 4,186 Hz: its 3rd partial is above Nyquist
    assert templates[top, 2:].abs().max() == 0 and templates[top, 1].max() > 0.5  # off the bin grid: below the peak


def test_note_head_renders_only_the_keys_it_turns_on_and_only_within_the_band() -> None:
    head = NoteHead(4, 2048, RATE, 8)
    with torch.no_grad():
        head.notes.weight.zero_()
        head.notes.bias.zero_()
        head.notes.bias[:PIANO_KEYS] = -30.0  # every key off
        head.notes.bias[69 - PIANO_LOW] = 30.0  # A4 on
    logits, magnitude, partials, onsets = head(torch.zeros(1, 5, 4), bins=1025)
    assert onsets is None  # no re-strike logits unless asked for
    assert logits.shape == (1, PIANO_KEYS, 5) and magnitude.shape == (1, 1025, 5)
    peaks = set(torch.topk(magnitude[0, :, 0], 8).indices.tolist())
    assert peaks == {round(k * 440 * 2048 / RATE) for k in range(1, 9)}
    assert partials.shape == (1, 5, PIANO_KEYS, 8) and partials[0, 0, 0].sum() > 0  # ungated: key 0 too
    quarter = head(torch.zeros(1, 5, 4), bins=256).magnitude  # level 0 of 3 keeps a quarter of the band
    assert quarter[0, 256:].abs().max() == 0 and quarter[0, :256].max() > 1


def test_partial_fit_recovers_the_amplitudes_of_a_harmonic_tone() -> None:
    t = torch.arange(RATE) / RATE
    f0, amplitudes = 220.0, (0.2, 0.05, 0.0, 0.1)  # A3: partials 1, 2 and 4
    wav = sum(a * torch.sin(2 * math.pi * f0 * (k + 1) * t) for k, a in enumerate(amplitudes))
    magnitude = stft_magnitude(wav.reshape(1, 1, -1), 2048, 512)
    templates = harmonic_templates(2048, RATE, 8)
    fitted = partial_amplitudes(magnitude, templates.flatten(0, 1)).unflatten(-1, (PIANO_KEYS, 8))
    a3 = fitted[0, 20, 57 - PIANO_LOW, :4] / (2048 / 4)  # a Hann-windowed sine of amplitude A peaks at A n_fft / 4
    torch.testing.assert_close(a3, torch.tensor(amplitudes), atol=0.01, rtol=0.1)
    # A key whose first partial is 6 bins away sees nothing (a semitone here is 1.3 bins: that would overlap).
    assert fitted[0, 20, 62 - PIANO_LOW, 0] < 0.01 * fitted[0, 20, 57 - PIANO_LOW, 0]


def test_key_partials_start_as_the_shared_profile_and_then_differ_per_key() -> None:
    torch.manual_seed(0)
    shared = NoteHead(4, 2048, RATE, 8)
    per_key = NoteHead(4, 2048, RATE, 8, key_partials=True)
    per_key.load_state_dict(shared.state_dict(), strict=False)
    hidden = torch.randn(1, 5, 4)
    for a, b in zip(shared(hidden, 1025)[:3], per_key(hidden, 1025)[:3], strict=True):
        torch.testing.assert_close(a, b)
    with torch.no_grad():
        per_key.key_partials.bias.normal_()
    profiles = per_key(hidden, 1025)[2][0, 0]  # (88, 8)
    profiles = profiles / profiles.sum(-1, keepdim=True)
    assert (profiles[0] - profiles[40]).abs().max() > 0.01
    with pytest.raises(UsageError, match="key_partials"):
        CodecConfig(key_partials=True)  # no note head


def test_onset_logits_start_nearly_off_and_silence_a_key_for_one_frame() -> None:
    torch.manual_seed(0)
    plain = NoteHead(4, 2048, RATE, 8)
    head = NoteHead(4, 2048, RATE, 8, onsets=True)
    head.load_state_dict(plain.state_dict(), strict=False)
    a4, c4 = 69 - PIANO_LOW, 60 - PIANO_LOW
    with torch.no_grad():
        for h in (plain, head):  # A4 and C4 sound in every frame (their partials do not overlap)
            h.notes.weight.zero_()
            h.notes.bias[:PIANO_KEYS] = -30.0
            h.notes.bias[[a4, c4]] = 30.0
    hidden = torch.zeros(1, 5, 4)
    fresh, before = head(hidden, 1025), plain(hidden, 1025)
    assert fresh.onset_logits.shape == (1, PIANO_KEYS, 5)
    torch.testing.assert_close(fresh.magnitude, before.magnitude, rtol=0.003, atol=0.0)  # sigmoid(-6) = 0.0025
    with torch.no_grad():  # A4 is struck again after frame 2: its partials fall silent there, nothing else
        head.onsets.weight[a4, 0] = 60.0
        head.onsets.bias.fill_(-30.0)
    hidden[0, 2, 0] = 1.0
    out = head(hidden, 1025)
    partial = round(440 * 2048 / RATE)
    assert out.magnitude[0, partial, 2] < 0.01 * out.magnitude[0, partial, 1]
    c4_partial = round(261.63 * 2048 / RATE)
    torch.testing.assert_close(out.magnitude[0, c4_partial, 2], out.magnitude[0, c4_partial, 1])
    torch.testing.assert_close(out.logits, fresh.logits)  # the sounding logits are unchanged
    assert out.onset_logits[0, a4].argmax() == 2 and out.onset_logits[0, c4].max() < 0
    with pytest.raises(UsageError, match="note_onsets"):
        CodecConfig(note_onsets=True)  # no note head


def test_partials_from_fits_only_keeps_the_magnitude_losses_off_the_partial_amplitudes() -> None:
    """With ``partials_from_fits_only`` the rendered magnitudes still carry the partials (same
    values), but only the partial loss trains their amplitudes; the gates still learn from both."""
    torch.manual_seed(0)
    head = NoteHead(4, 2048, RATE, 8, key_partials=True).train()
    hidden = torch.randn(1, 5, 4)
    spectrum = head(hidden, 1025).magnitude
    head.render_detached = True
    detached = head(hidden, 1025)
    torch.testing.assert_close(detached.magnitude, spectrum)
    detached.magnitude.sum().backward()  # stands for a magnitude loss
    assert head.key_partials is not None and head.key_partials.weight.grad is None
    grad = head.notes.weight.grad  # rows: the keys' logits, then their levels and the shared profile
    assert grad is not None
    assert grad[:PIANO_KEYS].abs().sum() > 0  # the gates' logits learn
    assert grad[PIANO_KEYS:].abs().sum() == 0  # the levels and the shared profile do not
    head.zero_grad()
    head(hidden, 1025).partials.sum().backward()  # stands for the partial loss
    assert head.key_partials.weight.grad is not None and head.key_partials.weight.grad.abs().sum() > 0


def test_gate_power_quiets_unsure_notes_when_decoding_and_leaves_sure_ones_and_the_logits() -> None:
    torch.manual_seed(0)
    plain = NoteHead(4, 2048, RATE, 8).eval()
    sharp = NoteHead(4, 2048, RATE, 8, gate_power=2.0).eval()
    sharp.load_state_dict(plain.state_dict())
    a4, c4 = 69 - PIANO_LOW, 60 - PIANO_LOW
    with torch.no_grad():  # A4 sure (p ≈ 1), C4 unsure (p = 0.5), every other key off
        for h in (plain, sharp):
            h.notes.weight.zero_()
            h.notes.bias[:PIANO_KEYS] = -30.0
            h.notes.bias[a4], h.notes.bias[c4] = 30.0, 0.0
    hidden = torch.zeros(1, 3, 4)
    before, after = plain(hidden, 1025), sharp(hidden, 1025)
    torch.testing.assert_close(after.logits, before.logits)  # what the BCE reads is unchanged
    a4_partial, c4_partial = round(440 * 2048 / RATE), round(261.63 * 2048 / RATE)
    torch.testing.assert_close(after.magnitude[0, a4_partial], before.magnitude[0, a4_partial])
    torch.testing.assert_close(after.magnitude[0, c4_partial], 0.5 * before.magnitude[0, c4_partial])  # 0.5² / 0.5
    torch.testing.assert_close(sharp.train()(hidden, 1025).magnitude, before.magnitude)  # training renders p


def tiny_forward(**changes: Any) -> tuple[PyramidCodec, torch.Tensor, CodecOutput]:
    """A seeded TINY codec with ``changes``, in training mode, and its forward pass (level 1) on noise."""
    torch.manual_seed(0)
    model = PyramidCodec(replace(TINY, **changes)).train()
    wav = 0.1 * torch.randn(2, 1, RATE)
    return model, wav, model(wav, levels_to_decode=[1])


def test_onset_loss_compares_frame_t_with_the_onsets_of_frame_t_plus_1() -> None:
    model, wav, out = tiny_forward(note_onsets=True)
    frames = out.spectra[1].shape[-1]
    onsets = (torch.rand(2, PIANO_KEYS, frames) < 0.01).float()
    rolls = torch.zeros(2, PIANO_KEYS, frames)
    targets = level_targets(wav, [1], TINY.n_levels)
    cfg = CodecTrainConfig(model=TINY.to_dict(), onset_weight=1.0, onset_pos_weight=5.0)

    def loss_with(logits: torch.Tensor) -> float:
        parts = codec_loss(replace(out, onset_logits={1: logits}), targets, cfg, 1.0, MultiScaleMelLoss(RATE),
                           None, rolls=rolls, onsets=onsets)[1]
        return float(parts["onsets_l1"])

    ahead = torch.full_like(onsets, -20.0)
    ahead[..., :-1] = 40.0 * onsets[..., 1:] - 20.0  # says at t what starts at t + 1
    assert loss_with(ahead) < 1e-6
    assert loss_with(40.0 * onsets - 20.0) > 0.1  # the same frame: wrong by one
    model.eval()
    assert codec_loss(out, targets, replace(cfg, onset_weight=0.0), 1.0, MultiScaleMelLoss(RATE), None,
                      rolls=rolls, onsets=onsets)[1].keys().isdisjoint({"onsets_l1"})


def test_code_note_heads_read_each_levels_pyramid_latent_and_their_loss_pools_the_roll_to_its_rate() -> None:
    model, wav, out = tiny_forward(code_notes=True, code_note_levels=TINY.n_levels)
    assert out.code_note_logits is not None and len(out.code_note_logits) == TINY.n_levels
    for level, logits in enumerate(out.code_note_logits):
        assert logits.shape == (2, PIANO_KEYS, out.codes[level].shape[-1])
    level_0 = out.code_note_logits[0]
    frames = out.spectra[1].shape[-1]
    factor = frames // level_0.shape[-1]
    rolls = torch.zeros(2, PIANO_KEYS, frames)
    rolls[0, 40, factor + 1] = 1.0  # one roll frame inside level-0 frame 1 makes the key sound there
    pooled = torch.zeros_like(level_0)
    pooled[0, 40, 1] = 1.0
    assert code_note_loss(40.0 * pooled - 20.0, rolls, factor, 1.0) < 1e-6
    assert code_note_loss(40.0 * pooled.roll(1, -1) - 20.0, rolls, factor, 1.0) > 0.01  # one frame late: 2 errors of 20
    targets = level_targets(wav, [1], TINY.n_levels)
    cfg = CodecTrainConfig(model=TINY.to_dict(), code_note_weight=1.0)
    parts = codec_loss(out, targets, cfg, 1.0, MultiScaleMelLoss(RATE), None, rolls=rolls)[1]
    each = [code_note_loss(logits.float(), rolls, frames // logits.shape[-1], 1.0) for logits in out.code_note_logits]
    assert float(parts["code_notes"]) == pytest.approx(float(sum(each)))  # summed over the probed levels
    parts["code_notes"].backward()  # reaches the encoder through the quantizer's straight-through path
    assert model.encoder.net.embed.weight.grad is not None
    assert model.encoder.net.embed.weight.grad.abs().sum() > 0
    finest = model.level_quantizers[-1].parameters()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in finest)  # the finest level's probe
    assert len(tiny_forward(code_notes=True)[2].code_note_logits) == 1  # level 0 only by default
    with pytest.raises(UsageError, match="code_notes needs a note head"):
        replace(TINY, harmonics=0, code_notes=True)
    with pytest.raises(UsageError, match="code_note_levels"):
        replace(TINY, code_notes=True, code_note_levels=TINY.n_levels + 1)


def test_encoder_note_head_reads_the_finest_features_at_the_rolls_rate_and_trains_the_encoder() -> None:
    model, wav, out = tiny_forward(encoder_notes=True)
    assert out.encoder_note_logits is not None
    frames = out.spectra[1].shape[-1]
    assert out.encoder_note_logits.shape == (2, PIANO_KEYS, frames)  # one logit per key and roll frame
    rolls = torch.zeros(2, PIANO_KEYS, frames - 1)  # the roll of the unpadded crop is shorter
    rolls[0, [40, 60], 3] = 1.0
    targets = level_targets(wav, [1], TINY.n_levels)
    cfg = CodecTrainConfig(model=TINY.to_dict(), encoder_note_weight=1.0)
    parts = codec_loss(out, targets, cfg, 1.0, MultiScaleMelLoss(RATE), None, rolls=rolls)[1]
    assert parts["encoder_notes"] > 0
    # The frame's top key weighted as in the note head's loss: a miss there costs more.
    heavy = codec_loss(out, targets, replace(cfg, note_top_weight=4.0), 1.0, MultiScaleMelLoss(RATE), None,
                       rolls=rolls)[1]["encoder_notes"]
    assert heavy > parts["encoder_notes"]
    parts["encoder_notes"].backward()
    assert model.encoder.net.embed.weight.grad.abs().sum() > 0
    # the probe skips quantizers and decoder
    assert all(q.grad is None for q in [*model.quantizers.parameters(), *model.decoder.parameters()])
    assert added_parts(TINY, replace(TINY, encoder_notes=True)) == ("encoder_note_head.",)
    with pytest.raises(UsageError, match="encoder_notes needs a note head"):
        replace(TINY, harmonics=0, encoder_notes=True)


def test_octave_weights_single_out_silent_keys_an_octave_or_two_from_a_sounding_one() -> None:
    rolls = torch.zeros(1, PIANO_KEYS, 3)
    rolls[0, 40, 1] = rolls[0, 52, 1] = 1  # two keys an octave apart sound in frame 1
    weights = octave_weights(rolls, 4.0)
    assert [k for k in range(PIANO_KEYS) if weights[0, k, 1] != 1] == [16, 28, 64, 76]  # not 40 or 52: they sound
    assert (weights[0, [16, 28, 64, 76], 1] == 4).all() and (weights[0, :, [0, 2]] == 1).all()
    with pytest.raises(UsageError, match="note_octave_weight"):
        CodecTrainConfig(note_octave_weight=0.0)


def test_top_key_weights_single_out_each_frames_highest_sounding_key() -> None:
    rolls = torch.zeros(1, PIANO_KEYS, 3)
    rolls[0, [40, 52, 60], 0] = 1  # a chord: its top key is 60
    rolls[0, 30, 1] = 1  # one key alone; frame 2 is silent
    weights = top_key_weights(rolls, 4.0)
    assert weights[0, 60, 0] == 4 and weights[0, 30, 1] == 4
    assert (weights.sum() - 2 * 4) == weights.numel() - 2  # every other key and frame (the silent one too) 1
    with pytest.raises(UsageError, match="note_top_weight"):
        CodecTrainConfig(note_top_weight=0.0)


def test_fine_tuning_may_grow_only_note_head_parts() -> None:
    assert added_parts(TINY, TINY) == ()
    assert added_parts(replace(TINY, harmonics=0), replace(TINY, key_partials=True, note_onsets=True)) == (
        "decoder.note_head.",)
    assert added_parts(TINY, replace(TINY, note_onsets=True)) == ("decoder.note_head.onsets.",)
    assert added_parts(TINY, replace(TINY, key_partials=True, note_onsets=True, name="x")) == (
        "decoder.note_head.key_partials.", "decoder.note_head.onsets.")
    assert added_parts(TINY, replace(TINY, note_onsets=True, decoder_layers=2)) is None
    assert added_parts(replace(TINY, note_onsets=True), TINY) is None  # parts are never dropped
    assert added_parts(TINY, replace(TINY, note_gate_power=1.5)) == ()  # a rendering setting, no weights
    assert added_parts(TINY, replace(TINY, code_notes=True, code_note_levels=3)) == ("code_note_heads.",)
    assert added_parts(TINY, replace(TINY, code_note_levels=3)) == ()  # no probe: its level count is moot
    binary = (2,) * 10  # another grid of the same 1,024 codes: new quantizers
    assert added_parts(TINY, replace(TINY, fsq_levels=binary)) == ("quantizers.",)
    assert added_parts(TINY, replace(TINY, fsq_levels=binary, note_onsets=True)) == (
        "quantizers.", "decoder.note_head.onsets.")
    assert added_parts(TINY, replace(TINY, fsq_levels=binary, decoder_layers=2)) is None


@pytest.mark.parametrize("folded", [False, True])
def test_a_new_grid_keeps_encoder_and_decoder_and_starts_its_quantizers_afresh(tmp_path: Path, folded: bool) -> None:
    torch.manual_seed(0)
    source = PyramidCodec(TINY)
    (source.fold_weight_norm() if folded else source).save_pretrained(tmp_path / "start")
    model = PyramidCodec(replace(TINY, fsq_levels=(2,) * 10))
    load_init_weights(model, tmp_path / "start")
    assert model.level_quantizers[0].stages[0].project_in(torch.randn(1, TINY.latent_dim, 4)).shape[1] == 10
    start = PyramidCodec.from_pretrained(tmp_path / "start").fold_weight_norm().state_dict()
    kept = {k: v for k, v in model.fold_weight_norm().state_dict().items() if not k.startswith("quantizers.")}
    assert kept.keys() <= start.keys()
    for key, value in kept.items():
        torch.testing.assert_close(value, start[key], rtol=1e-5, atol=1e-6)


def test_config_and_preset() -> None:
    assert p111_notes().harmonics == 24 and replace(p111_notes(), harmonics=0, name="x").architecture == "spectral"
    with pytest.raises(UsageError, match="spectral"):
        CodecConfig(harmonics=8)  # a waveform codec
    old = {k: v for k, v in TINY.to_dict().items() if k not in ("harmonics", "note_gate_power")}
    assert CodecConfig.from_dict(old).harmonics == 0  # configs written before the fields
    assert CodecConfig.from_dict(old).note_gate_power == 1.0
    with pytest.raises(UsageError, match="note_gate_power needs a note head"):
        replace(TINY, harmonics=0, note_gate_power=1.5)
    with pytest.raises(UsageError, match="note_gate_power must be in"):
        replace(TINY, note_gate_power=0.0)


def test_codec_returns_note_logits_per_level_and_decodes() -> None:
    torch.manual_seed(0)
    model = PyramidCodec(TINY).train()
    wav = 0.1 * torch.randn(2, 1, RATE)
    out = model(wav, levels_to_decode=[0, 2])
    assert out.note_logits is not None and set(out.note_logits) == {0, 2}
    assert out.note_logits[0].shape == (2, PIANO_KEYS, out.spectra[0].shape[-1])
    model.eval()
    with torch.inference_mode():
        codes = model.encode(wav)
        assert model.decode(codes, levels=1, length=RATE).shape == (2, 1, RATE)


def test_chunked_decoding_with_a_note_head_equals_whole_signal_decoding() -> None:
    """The receptive-field probe leaves the note head out (it is frame-local): chunking stays exact."""
    torch.manual_seed(0)
    model = PyramidCodec(replace(TINY, key_partials=True, note_onsets=True, note_gate_power=1.5)).eval()
    with torch.no_grad():  # a head that renders notes in every frame, so that its reach would show
        model.decoder.note_head.notes.bias.normal_()
        model.decoder.note_head.key_partials.weight.normal_(std=0.1)
        model.decoder.note_head.onsets.weight.normal_(std=0.5)
        model.decoder.note_head.onsets.bias.zero_()
    length = 3 * RATE + 333
    wav = 0.2 * torch.randn(1, length)
    with torch.inference_mode():
        codes = [c[0] for c in model.encode(wav[None])]
        reference = model.decode([c[None] for c in codes], length=length)[0]
    audio = decode_codes(model, codes, num_samples=length, chunk_seconds=0.5)
    assert (audio - reference).abs().max() < 1e-4


def test_piano_roll_frames() -> None:
    hop = 512
    notes = np.array([[0.0, 0.5, 60], [1.0, 1.001, 72], [0.2, 0.3, 200 - 100]])
    roll = piano_roll(notes, offset=0, frames=100, hop=hop, sample_rate=RATE)
    c4 = roll[60 - PIANO_LOW]
    assert c4[0] == 1 and c4[math.ceil(0.5 * RATE / hop) - 1] == 1 and c4[math.ceil(0.5 * RATE / hop)] == 0
    assert roll[72 - PIANO_LOW].sum() == 1  # shorter than a frame: still one frame, at its onset
    assert roll[72 - PIANO_LOW, round(RATE / hop)] == 1
    shifted = piano_roll(notes, offset=10 * hop, frames=90, hop=hop, sample_rate=RATE)
    np.testing.assert_array_equal(shifted, roll[:, 10:])


def test_onset_roll_marks_the_first_frame_of_each_note_and_re_struck_keys() -> None:
    hop = 512
    notes = np.array([[0.0, 0.5, 60], [0.5, 1.0, 60], [1.0, 1.001, 72], [0.3, 2.0, 64]])
    roll = piano_roll(notes, offset=0, frames=100, hop=hop, sample_rate=RATE)
    onsets = onset_roll(notes, offset=0, frames=100, hop=hop, sample_rate=RATE)
    c4 = 60 - PIANO_LOW
    assert roll[c4, : math.ceil(RATE / hop)].all()  # a repeated note: one unbroken stretch of the roll...
    assert np.flatnonzero(onsets[c4]).tolist() == [0, math.ceil(0.5 * RATE / hop)]  # ...and two onsets
    for key in (72, 64):
        first = int(np.flatnonzero(roll[key - PIANO_LOW])[0])
        assert np.flatnonzero(onsets[key - PIANO_LOW]).tolist() == [first]
    assert onsets.sum() == 4
    later = onset_roll(notes, offset=20 * hop, frames=80, hop=hop, sample_rate=RATE)
    np.testing.assert_array_equal(later, onsets[:, 20:])  # onsets before the crop are not marked


def write_midi_corpus(root: Path) -> tuple[Path, Path]:
    """Two 3 s songs (C4 then E4; G4 all along) with their MIDI sources, as `dataset build` leaves them."""
    midi_dir, records = root / "midi", []
    midi_dir.mkdir(parents=True)
    for k, melody in enumerate(([(60, 0.0, 1.5), (64, 1.5, 3.0)], [(67, 0.0, 3.0)])):
        midi = pretty_midi.PrettyMIDI()
        piano = pretty_midi.Instrument(program=0)
        drums = pretty_midi.Instrument(program=0, is_drum=True)
        for pitch, start, end in melody:
            piano.notes.append(pretty_midi.Note(100, pitch, start, end))
            drums.notes.append(pretty_midi.Note(100, 36, start, start + 0.1))
        midi.instruments += [piano, drums]
        midi.write(str(midi_dir / f"song{k}.mid"))
        t = np.arange(3 * RATE) / RATE
        pitch = np.where(t < melody[0][2], melody[0][0], melody[-1][0])
        wav = 0.3 * np.sin(2 * np.pi * 440 * 2 ** ((pitch - 69) / 12) * t)
        rel = f"audio/train/song{k}.flac"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / rel, wav.astype(np.float32), RATE)
        records.append({"id": f"song{k}", "split": "train", "audio": rel, "duration": 3.0,
                        "num_samples": len(t), "source": f"song{k}.mid"})
    records.append({**records[0], "id": "valid0", "split": "valid"})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root, midi_dir


def test_note_crops_are_the_plain_crops_with_their_rolls(tmp_path: Path) -> None:
    corpus, midi_dir = write_midi_corpus(tmp_path)
    assert sorted(midi_notes(midi_dir / "song0.mid")[:, 2]) == [60, 64]  # drums left out
    plain = RandomCropDataset(corpus, "train", 1.0, seed=3)
    noted = NoteCropDataset(corpus, "train", 1.0, midi_dir, hop=512, seed=3)
    for index in range(6):
        crop, roll, onsets = noted[index]
        torch.testing.assert_close(crop, plain[index])
        song, offset = noted.locate(index)
        assert roll.shape == onsets.shape == (PIANO_KEYS, RATE // 512)
        assert (onsets <= roll).all()
        keys = {PIANO_LOW + int(k) for k in torch.nonzero(roll.sum(1)).flatten()}
        if song == 1:
            assert keys == {67}
        else:
            assert keys <= {60, 64} and (60 in keys) == (offset < 1.5 * RATE)
    (midi_dir / "song1.mid").unlink()
    with pytest.raises(InputError, match="song1.mid"):
        NoteCropDataset(corpus, "train", 1.0, midi_dir, hop=512)


def test_training_learns_the_roll_and_grows_a_head_on_a_spectral_codec(tmp_path: Path) -> None:
    corpus, midi_dir = write_midi_corpus(tmp_path)
    fast = dict(crop_seconds=0.5, batch_size=4, lr=3e-3, warmup_steps=0, eval_clips=1, eval_seconds=0.5,
                log_every=1, eval_every=0, checkpoint_every=0, reseed_dead_codes_every=0, seed=1,
                levels_per_step="all")
    base = replace(TINY, harmonics=0, name="tiny-spectral")
    train_codec(tmp_path / "base", CodecTrainConfig(**fast, model=base.to_dict(), steps=1), corpus)
    with pytest.raises(UsageError, match="notes_from"):
        train_codec(tmp_path / "x", CodecTrainConfig(**fast, model=TINY.to_dict(), steps=1), corpus)
    config = CodecTrainConfig(**fast, model=TINY.to_dict(), steps=60, notes_from=str(midi_dir))
    train_codec(tmp_path / "notes", config, corpus, init_from=tmp_path / "base/export")
    grown = PyramidCodec.from_pretrained(tmp_path / "notes/export")
    assert grown.config.harmonics == 8
    logs = [json.loads(line) for line in (tmp_path / "notes/metrics.jsonl").read_text().splitlines()]
    bce = [r["notes_l2"] for r in logs if r["kind"] == "train"]
    assert len(bce) == 60 and bce[-1] < 0.5 * bce[0]
    grown.train()  # note logits come with the training outputs
    with torch.no_grad():
        wav = torch.from_numpy(sf.read(corpus / "audio/train/song1.flac", dtype="float32")[0])[None, None]
        logits = grown(wav[..., :RATE], levels_to_decode=[2]).note_logits[2].mean(-1)[0]
    assert PIANO_LOW + int(logits.argmax()) == 67  # the song's one note


def test_a_fine_tune_keeps_its_start_models_gate_power_unless_the_settings_name_another(tmp_path: Path) -> None:
    from pyramid_cli.train.codec import _codec_config

    (tmp_path / "config.json").write_text(json.dumps(replace(TINY, note_gate_power=1.5).to_dict()))

    def power(model: CodecConfig) -> float:
        cfg = CodecTrainConfig(model=model.to_dict())
        return _codec_config(None, cfg, None, tmp_path).note_gate_power  # type: ignore[arg-type]

    assert power(TINY) == 1.5  # the same architecture: the start model's config
    assert power(replace(TINY, note_onsets=True)) == 1.5  # a grown part: the settings' architecture
    assert power(replace(TINY, note_gate_power=2.0)) == 2.0
    assert power(replace(TINY, note_onsets=True, note_gate_power=2.0)) == 2.0


def test_decoder_fine_tune_keeps_the_codes_and_accepts_the_start_models_tokens(tmp_path: Path) -> None:
    corpus, midi_dir = write_midi_corpus(tmp_path)
    fast = dict(crop_seconds=0.5, batch_size=4, lr=3e-3, warmup_steps=0, eval_clips=1, eval_seconds=0.5,
                log_every=1, eval_every=0, checkpoint_every=0, reseed_dead_codes_every=0, seed=1,
                levels_per_step="all", notes_from=str(midi_dir))
    train_codec(tmp_path / "base", CodecTrainConfig(**fast, model=TINY.to_dict(), steps=1), corpus)
    start = tmp_path / "base/export"
    tuned_config = replace(TINY, key_partials=True, note_onsets=True, name="renamed")  # the start's name is kept
    config = CodecTrainConfig(**fast, model=tuned_config.to_dict(), steps=4, freeze_tokenizer=True,
                              partial_weight=1.0, onset_weight=1.0)
    with pytest.raises(UsageError, match="init-from"):
        train_codec(tmp_path / "x", config, corpus)
    with pytest.raises(UsageError, match="reseed"):
        replace(config, reseed_dead_codes_every=10)
    with pytest.raises(UsageError, match="one factor per level"):
        train_codec(tmp_path / "y", replace(config, note_level_weights=(1.0,)), corpus, init_from=start)
    train_codec(tmp_path / "tuned", config, corpus, init_from=start)

    before, after = PyramidCodec.from_pretrained(start), PyramidCodec.from_pretrained(tmp_path / "tuned/export")
    assert after.config.key_partials and after.config.note_onsets and after.config.name == "tiny-notes"
    assert after.config.same_tokens_as == (weights_hash(start / "model.safetensors"),)
    old, new = before.state_dict(), after.state_dict()
    tokenizer = [k for k in old if not k.startswith(("decoder.", "up_decode."))]
    assert tokenizer and all(torch.equal(old[k], new[k]) for k in tokenizer)
    assert not torch.equal(old["decoder.note_head.notes.weight"], new["decoder.note_head.notes.weight"])
    wav = torch.from_numpy(sf.read(corpus / "audio/train/song0.flac", dtype="float32")[0])[None, None]
    with torch.no_grad():
        for a, b in zip(before.encode(wav), after.encode(wav), strict=True):
            assert torch.equal(a, b)
    logs = [json.loads(line) for line in (tmp_path / "tuned/metrics.jsonl").read_text().splitlines()]
    assert all(r["partials_l0"] > 0 and r["onsets_l0"] > 0 for r in logs if r["kind"] == "train")

    # partials_from_fits_only: without a partial loss nothing trains the grown per-key profiles
    only_fits = replace(config, steps=2, partial_weight=0.0, partials_from_fits_only=True)
    for run, settings in (("fits", only_fits), ("free", replace(only_fits, partials_from_fits_only=False))):
        train_codec(tmp_path / run, settings, corpus, init_from=start)
    profiles = {run: PyramidCodec.from_pretrained(tmp_path / run / "export").state_dict()[
        "decoder.note_head.key_partials.weight"] for run in ("fits", "free")}
    assert profiles["fits"].abs().sum() == 0 and profiles["free"].abs().sum() > 0
    retrained = tmp_path / "retrained"  # training the encoder too makes other codes: no claim to the old ones
    train_codec(retrained, replace(config, freeze_tokenizer=False, steps=1), corpus,
                init_from=tmp_path / "tuned/export")
    assert PyramidCodec.from_pretrained(retrained / "export").config.same_tokens_as == ()
    loaded = load_codec(tmp_path / "tuned/export")
    assert loaded.hash != weights_hash(start / "model.safetensors")
    assert loaded.matches("tiny-notes", weights_hash(start / "model.safetensors"))  # its .pyr files still decode
