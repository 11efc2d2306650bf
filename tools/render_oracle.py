"""Do the gates or the rendering cap a note codec's decoded notes? Decodes with parts swapped for the truth.

A note codec's decoder lights keys (the note head's gates) and renders each lit key as harmonic
partials (the head's amplitudes) over its free magnitudes, then Griffin-Lim. For the first N songs
of a corpus split built from MIDI, one 10 s clip from the middle of each (as ``pyramid eval
codec``), this decodes each clip once per variant and scores it as the eval does (Basic Pitch
note onset F1 against the input's transcription, tune kept, extra notes). A variant can

- blend the gates with the MIDI roll: gate = a x roll + (1 - a) x the head's gate (``a=1``: every
  note right);
- swap the head's partial amplitudes for the input's own (``spectral.partial_amplitudes`` of its
  STFT, frame by frame): all of them (``amp=input``), only each key's level per frame
  (``amp=input-level``, the head's profile over the partials), only the profile
  (``amp=input-profile``, the head's level), or the profile averaged per key over the clip's
  sounding frames (``amp=input-clip-profile``: a static timbre);
- leave out the free magnitudes (``free=0``), take the re-strike cuts from the MIDI onsets
  (``onsets=midi``) or drop them (``onsets=none``), or smooth the head's amplitudes over W frames
  (``smooth=W``).

The input's amplitudes also say which keys sound (a key lit by mistake fits near zero), so those
variants mix rendering with notes; the per-clip profile does not. Findings: the codec card's
"What the targets need".

Example:
    python tools/render_oracle.py --corpus ~/corpus --midi-dir ../shared/data/midi/dev --split valid \\
        --clips 16 --levels 3 --variant a=0 --variant a=1 --variant a=0,amp=input
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pyramid_cli.codec.api import load_codec
from pyramid_cli.codec.evaluate import read_middle, split_records
from pyramid_cli.codec.model import PyramidCodec
from pyramid_cli.codec.spectral import (
    LOG_FLOOR,
    MAX_LOG_MAGNITUDE,
    PIANO_KEYS,
    NoteHead,
    partial_amplitudes,
    stft_magnitude,
)
from pyramid_cli.data.notes import midi_notes, onset_roll, piano_roll
from pyramid_cli.hub.registry import DEFAULT_CODEC
from pyramid_cli.metrics.transcribe import Transcriber, note_errors, onset_f1, top_line

AMPLITUDES = ("head", "input", "input-level", "input-profile", "input-clip-profile")
ONSETS = ("head", "midi", "none")


@dataclass(frozen=True)
class Variant:
    """What a decode takes from the truth (module docstring)."""

    a: float = 0.0
    amp: str = "head"
    free: bool = True
    onsets: str = "head"
    smooth: int = 1

    def __str__(self) -> str:
        return f"a={self.a:g},amp={self.amp},free={int(self.free)},onsets={self.onsets},smooth={self.smooth}"


def parse_variant(text: str) -> Variant:
    """``"a=1,amp=input,free=0"`` → a ``Variant``; unnamed fields keep their defaults."""
    fields: dict[str, object] = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if key == "a":
            fields[key] = float(value)
        elif key in ("free", "smooth"):
            fields[key] = bool(int(value)) if key == "free" else int(value)
        elif key == "amp" and value in AMPLITUDES or key == "onsets" and value in ONSETS:
            fields[key] = value
        else:
            raise argparse.ArgumentTypeError(f"not a variant field: {item!r} (a, amp {AMPLITUDES}, free, "
                                             f"onsets {ONSETS}, smooth)")
    return Variant(**fields)  # type: ignore[arg-type]


@dataclass
class Truth:
    """A clip's truth at the decoder's frames: (T, 88) MIDI roll and onsets, (T, 88, K) input amplitudes."""

    roll: torch.Tensor
    onsets: torch.Tensor
    amplitudes: torch.Tensor


def _frames(x: torch.Tensor, frames: int) -> torch.Tensor:
    """Trim or zero-pad dim 0 to ``frames``."""
    return nn.functional.pad(x[:frames], [0, 0] * (x.dim() - 1) + [0, max(0, frames - x.shape[0])])


def _moving_average(x: torch.Tensor, width: int) -> torch.Tensor:
    """(T, ...) → its centred moving average over ``width`` frames (edges repeated)."""
    flat = x.flatten(1).T[None]  # (1, J, T)
    flat = nn.functional.pad(flat, (width // 2, width // 2), mode="replicate")
    return nn.functional.avg_pool1d(flat, width, 1)[0].T.reshape(x.shape)


def amplitudes(head_amplitudes: torch.Tensor, truth: Truth, variant: Variant) -> torch.Tensor:
    """(T, 88, K) partial amplitudes for ``variant``: the head's, the input's, or a mix of the two."""
    head = head_amplitudes if variant.smooth <= 1 else _moving_average(head_amplitudes, variant.smooth)
    if variant.amp == "head":
        return head
    fitted = _frames(truth.amplitudes, head.shape[0]).clamp(min=0)
    head_level, fitted_level = head.sum(-1, keepdim=True), fitted.sum(-1, keepdim=True)
    head_profile = head / head_level.clamp(min=1e-8)
    fitted_profile = fitted / fitted_level.clamp(min=1e-8)
    if variant.amp == "input":
        return fitted
    if variant.amp == "input-level":
        return head_profile * fitted_level
    if variant.amp == "input-profile":
        return fitted_profile * head_level
    sounding = _frames(truth.roll, head.shape[0])[..., None]  # (T, 88, 1)
    clip_profile = (fitted_profile * sounding).sum(0) / sounding.sum(0).clamp(min=1)
    clip_profile = clip_profile / clip_profile.sum(-1, keepdim=True).clamp(min=1e-8)
    has_notes = sounding.sum(0) > 0  # (88, 1): keys the MIDI plays in this clip
    return torch.where(has_notes, clip_profile, head_profile) * head_level


def note_magnitudes(head: NoteHead, hidden: torch.Tensor, bins: int, truth: Truth, variant: Variant) -> torch.Tensor:
    """(1, T, dim) decoder features → (1, F, T) the notes' magnitudes, as ``NoteHead.forward`` in eval
    mode renders them, with the variant's parts swapped in."""
    logits, ungated = head.logits_and_partials(hidden)
    rendered = amplitudes(ungated[0], truth, variant)[None]
    gate = torch.sigmoid(logits).pow(head.gate_power)
    frames = gate.shape[1]
    gate = variant.a * _frames(truth.roll, frames)[None] + (1 - variant.a) * gate
    if variant.onsets == "head" and head.onsets is not None:
        gate = gate * torch.sigmoid(-head.onsets(hidden))
    elif variant.onsets == "midi":  # the re-strike logit at frame t means "struck at t + 1": cut frame t
        gate = gate * (1 - _frames(truth.onsets[1:], frames)[None])
    magnitude = (gate[..., None] * rendered).flatten(2) @ head.templates[:, :bins]
    return nn.functional.pad(magnitude, (0, head.templates.shape[1] - bins)).transpose(1, 2)


@torch.inference_mode()
def decode_with(codec: PyramidCodec, codes: list[torch.Tensor], levels: int, length: int, truth: Truth,
                variant: Variant) -> torch.Tensor:
    """``codec.decode(codes, levels, length)`` (in float32) with the variant's parts swapped in → (1, 1, length)."""
    decoder = codec.decoder
    hidden = decoder.net.hidden(codec.codes_to_latent(codes, levels))
    free = decoder.net.out(hidden).transpose(1, 2).clamp(max=MAX_LOG_MAGNITUDE)
    bins = max(1, round(codec.band(levels - 1) * free.shape[1]))
    notes = note_magnitudes(decoder.note_head, hidden, bins, truth, variant)
    magnitude = (free.exp() if variant.free else 0.0) + notes
    return codec.spectrum_to_audio(magnitude.clamp(min=LOG_FLOOR).log().clamp(max=MAX_LOG_MAGNITUDE), length)


def clip_truth(codec: PyramidCodec, wav: torch.Tensor, notes: np.ndarray, start: int) -> Truth:
    """The truth of a (1, 1, T) clip that starts at sample ``start`` of a song with MIDI ``notes``."""
    c, hop = codec.config, codec.config.hop_lengths[-1]
    frames = wav.shape[-1] // hop + 8  # a few past the end: the decoder pads to whole coarse frames
    roll = torch.from_numpy(piano_roll(notes, start, frames, hop, c.sample_rate)).T
    onsets = torch.from_numpy(onset_roll(notes, start, frames, hop, c.sample_rate)).T
    fitted = partial_amplitudes(stft_magnitude(wav, c.n_fft, hop), codec.decoder.note_head.templates)[0]
    return Truth(roll, onsets, fitted.unflatten(-1, (PIANO_KEYS, c.harmonics)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--midi-dir", type=Path, required=True, help="the MIDI folder the corpus was built from")
    parser.add_argument("--split", default="valid")
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--levels", default="3", help="comma-separated numbers of levels to decode")
    parser.add_argument("--model", default=DEFAULT_CODEC, help="a note codec: name or folder")
    parser.add_argument("--variant", type=parse_variant, action="append",
                        help="e.g. a=1,amp=input (repeat; default: a=0 and a=1)")
    args = parser.parse_args()
    os.environ.setdefault("PYRAMID_CPU_BF16", "0")  # float32, as the codec card's figures
    torch.set_num_threads(1)
    codec = load_codec(args.model, "cpu").model
    if getattr(codec.decoder, "note_head", None) is None:
        parser.error(f"{args.model}: not a codec with a note head")
    variants = args.variant or [Variant(a=0.0), Variant(a=1.0)]
    levels = [int(x) for x in args.levels.split(",")]
    transcriber = Transcriber(threads=1)
    rate, hop = codec.config.sample_rate, codec.config.hop_lengths[-1]
    scores: dict[tuple[str, int], list[list[float]]] = {(str(v), k): [] for v in variants for k in levels}
    for record in split_records(args.corpus, args.split)[: args.clips]:
        clip, start = read_middle(args.corpus, record, 10.0, rate)
        wav = clip[None, ..., : clip.shape[-1] // hop * hop]
        truth = clip_truth(codec, wav, midi_notes(args.midi_dir / record["source"]), start)
        reference = transcriber.transcribe(wav[0, 0].numpy(), rate).notes
        codes = codec.encode(wav)
        for variant in variants:
            for k in levels:
                decoded = decode_with(codec, codes, k, wav.shape[-1], truth, variant)
                estimate = transcriber.transcribe(decoded[0, 0].numpy(), rate).notes
                precision, recall, f1 = onset_f1(reference, estimate)
                errors = note_errors(reference, estimate)
                tune_kept = onset_f1(top_line(reference), estimate)[1]
                scores[(str(variant), k)].append([f1, precision, recall, tune_kept, errors.extra,
                                                  errors.extra_octave, errors.extra_fragment])
        print(f"{record['id']}: done", flush=True)
    print("variant | levels | note F1 | precision | recall | tune kept | extra notes (octaves, fragments)")
    for (name, k), rows in scores.items():
        m = np.mean(rows, axis=0)
        print(f"{name} | {k} | {m[0]:.3f} | {m[1]:.3f} | {m[2]:.3f} | {m[3]:.3f} | "
              f"{m[4]:.1f} ({m[5]:.1f}, {m[6]:.1f})")


if __name__ == "__main__":
    main()
