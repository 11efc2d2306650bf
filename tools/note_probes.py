"""Where does a note codec lose the notes? Probes of the MIDI piano roll from each stage of the codec.

For crops of a corpus built from MIDI (``pyramid dataset build``), the features of each stage are
taken at the roll's rate (the codec's finest hop; coarser levels repeated): the input's log-magnitude
STFT, the encoder's output, each level's quantizer input and quantized latent (levels 0..k
concatenated), and the decoder's features (what the note head reads). A probe per stage (88 logistic
regressions, or with ``--mlp`` one hidden layer of 512) is trained on train-split crops and scored on
test-split crops: frame F1 at threshold 0.5, and the best of 0.2-0.5. A stage that scores well below
the one before it is where the notes are lost (the codec card's "Where the encoder loses the notes").
With ``--context K`` each frame's probe also sees the K frames on either side (the decoder reads about
27), which tells notes spread over time in the codes from notes absent from them. It multiplies the
features' memory by 2K + 1: with K = 4, probe a few stages at a time (``--only``); all of them
need more than 24 GB.
With ``--bands``, also frame F1 per register and the recall of each frame's top sounding key (the
tune), with the note head's own gates (sigmoid of its logits, no probe) as the last row.

Example:
    python tools/note_probes.py --corpus ~/corpus --midi-dir ../shared/data/midi/dev --train-crops 600 \\
        --test-crops 120 [--model DIR] [--mlp]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from pyramid_cli.codec.api import load_codec
from pyramid_cli.codec.model import PyramidCodec
from pyramid_cli.codec.spectral import PIANO_KEYS, PIANO_LOW, log_magnitude, stft_magnitude
from pyramid_cli.data.audio_dataset import NoteCropDataset
from pyramid_cli.hub.registry import DEFAULT_CODEC
from pyramid_cli.train.codec_parts import highest_sounding_key


@torch.inference_mode()
def stage_features(codec: PyramidCodec, crop: torch.Tensor, frames: int) -> dict[str, torch.Tensor]:
    """(1, T) crop → stage name → (frames, dims) features at the finest hop."""
    c = codec.config
    hop = c.hop_lengths[-1]
    wav = codec.pad_to_frames(crop[None])
    features = {"input log-STFT": log_magnitude(stft_magnitude(wav, c.n_fft, hop))[0]}
    captured: list[torch.Tensor] = []  # the encoder's output, as codec.features computes it on the way
    hook = codec.encoder.register_forward_hook(lambda module, args, output: captured.append(output))
    try:
        levels = codec.features(wav)
    finally:
        hook.remove()
    base = captured[0][0]  # at the encoder's hop, a fraction of the finest one
    features["encoder output"] = base.unflatten(-1, (-1, base.shape[-1] // features["input log-STFT"].shape[-1])
                                                ).mean(-1)
    inputs: list[torch.Tensor] = []  # each level's quantizer input F[i] + U_i(Q[i-1]), from quantize itself
    outputs = codec.quantize(levels, dropout=False, before_level=lambda level, rvq, x: inputs.append(x))

    def at_finest(x: torch.Tensor, level: int) -> torch.Tensor:
        return x[0].repeat_interleave(c.hop_lengths[level] // hop, -1)

    for k in range(c.n_levels):
        features[f"quantizer input, levels 0..{k}"] = torch.cat([at_finest(inputs[j], j) for j in range(k + 1)])
        features[f"quantized, levels 0..{k}"] = torch.cat([at_finest(outputs[j].z_q, j) for j in range(k + 1)])
    if codec.spectral:
        latent = codec.lift(codec.pyramid_latents([o.z_q for o in outputs])[-1], c.n_levels - 1)
        hidden = codec.decoder.net.hidden(latent)
        features["decoder features"] = hidden[0].T
        if codec.decoder.note_head is not None:  # not a probe's input: scored as it is
            features[HEAD] = torch.sigmoid(codec.decoder.note_head(hidden, 1).logits[0])
    return {name: x[..., :frames].float().T for name, x in features.items()}


def with_context(x: torch.Tensor, k: int) -> torch.Tensor:
    """(frames, dims) → (frames, (2k + 1) * dims): each frame with the k before and after it (edges repeated)."""
    if k == 0:
        return x
    padded = torch.cat([x[:1].expand(k, -1), x, x[-1:].expand(k, -1)])
    return torch.cat([padded[i: i + x.shape[0]] for i in range(2 * k + 1)], dim=1)


def collect(codec: PyramidCodec, corpus: str, midi_dir: str, split: str, crops: int, seed: int,
            context: int = 0, only: str = "") -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    data = NoteCropDataset(corpus, split, 4.0, midi_dir, codec.config.hop_lengths[-1],
                           sample_rate=codec.config.sample_rate, seed=seed)
    features: dict[str, list[torch.Tensor]] = {}
    rolls = []
    for i in range(crops):
        crop, roll, _ = data[i]
        for name, x in stage_features(codec, crop, roll.shape[-1]).items():
            if name == HEAD or only in name:
                features.setdefault(name, []).append(x if name == HEAD else with_context(x, context))
        rolls.append(roll.T.float())
    return {name: torch.cat(x) for name, x in features.items()}, torch.cat(rolls)


HEAD = "note head's gates (no probe)"
BANDS = ((21, 47), (48, 59), (60, 71), (72, 83), (84, 108))  # MIDI pitches, inclusive


def band_scores(probabilities: torch.Tensor, roll: torch.Tensor, threshold: float) -> str:
    """Frame F1 per register, and the recall of each frame's highest sounding key."""
    scores = [frame_f1(probabilities[:, low - PIANO_LOW: high + 1 - PIANO_LOW],
                       roll[:, low - PIANO_LOW: high + 1 - PIANO_LOW], threshold) for low, high in BANDS]
    top = highest_sounding_key(roll)
    sounding = top >= 0
    top_recall = (probabilities[sounding, top[sounding]] > threshold).float().mean().item()
    bands = "  ".join(f"{low}-{high} {score:.3f}" for (low, high), score in zip(BANDS, scores, strict=True))
    return f"{bands}  top key {top_recall:.3f}"


def frame_f1(probabilities: torch.Tensor, roll: torch.Tensor, threshold: float) -> float:
    predicted, sounding = probabilities > threshold, roll > 0
    return 2 * (predicted & sounding).sum().item() / max(predicted.sum().item() + sounding.sum().item(), 1)


def train_probe(x: torch.Tensor, y: torch.Tensor, mlp: bool, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    probe = (nn.Sequential(nn.Linear(x.shape[1], 512), nn.GELU(), nn.Linear(512, PIANO_KEYS)) if mlp
             else nn.Linear(x.shape[1], PIANO_KEYS))
    optimizer = torch.optim.Adam(probe.parameters(), lr=1e-3 if mlp else 3e-3)
    for _ in range(1500 if mlp else 400):
        batch = torch.randint(0, x.shape[0], (8192,))
        loss = nn.functional.binary_cross_entropy_with_logits(probe(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return probe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--midi-dir", required=True, help="the MIDI folder the corpus was built from")
    parser.add_argument("--model", default=DEFAULT_CODEC, help="codec name or folder")
    parser.add_argument("--train-crops", type=int, default=600)
    parser.add_argument("--test-crops", type=int, default=120)
    parser.add_argument("--mlp", action="store_true", help="one hidden layer of 512 instead of a linear probe")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bands", action="store_true", help="also frame F1 per register and of the top key")
    parser.add_argument("--context", type=int, default=0, help="frames on either side each probe also sees")
    parser.add_argument("--only", default="", help="probe only the stages whose name contains this")
    args = parser.parse_args()

    codec = load_codec(args.model).model
    start = time.time()
    train_x, train_y = collect(codec, args.corpus, args.midi_dir, "train", args.train_crops, args.seed,
                               args.context, args.only)
    test_x, test_y = collect(codec, args.corpus, args.midi_dir, "test", args.test_crops, args.seed + 1,
                             args.context, args.only)
    print(f"features in {time.time() - start:.0f} s: {len(train_y)} train frames, {len(test_y)} test frames, "
          f"{test_y.sum(1).mean():.1f} sounding keys per test frame")
    for name in train_x:
        if name == HEAD:
            continue
        mean, std = train_x[name].mean(0), train_x[name].std(0) + 1e-5
        probe = train_probe((train_x[name] - mean) / std, train_y, args.mlp, args.seed)
        with torch.no_grad():
            probabilities = torch.sigmoid(probe((test_x[name] - mean) / std))
        best, at = max((frame_f1(probabilities, test_y, t), t) for t in (0.2, 0.3, 0.4, 0.5))
        print(f"{name:32s} {train_x[name].shape[1]:5d} dims  test frame F1 {frame_f1(probabilities, test_y, 0.5):.3f}"
              f"  (best {best:.3f} at {at})")
        if args.bands:
            print(f"{'':32s} {band_scores(probabilities, test_y, 0.5)}")
    if HEAD in test_x and args.bands:
        print(f"{HEAD:32s} test frame F1 {frame_f1(test_x[HEAD], test_y, 0.5):.3f}\n{'':32s} "
              f"{band_scores(test_x[HEAD], test_y, 0.5)}")


if __name__ == "__main__":
    main()
