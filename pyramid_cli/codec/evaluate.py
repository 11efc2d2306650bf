"""Codec evaluation on a corpus split (DESIGN §7): reconstruction per number of decoded levels.

Each clip is encoded once; decoding with k levels is scored against the full signal and against
the band-limited target of level k-1 (Eq. 2-3), the one the codec was trained to produce.
Codebook usage is measured over every code of every clip.

Besides the distances (on the paper's scale: sums over resolutions), pitch content: the chroma
similarity (always) and, when a transcriber is given (``pyramid_cli.metrics.transcribe``, the [eval]
extra), note onset F1 between the transcriptions of the input and of the decode. A decoder that
outputs a buzz with the right spectral envelope can score a good mel distance; it cannot score
note F1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import soundfile as sf
import torch

from pyramid_cli.codec.model import PyramidCodec
from pyramid_cli.codec.quantize import codebook_usage
from pyramid_cli.codec.targets import band_limited_targets
from pyramid_cli.data.manifest import load_manifest
from pyramid_cli.errors import InputError
from pyramid_cli.metrics.distances import chroma_similarity, mel_distance, si_sdr, stft_distance, waveform_distance
from pyramid_cli.metrics.transcribe import note_errors, onset_f1, top_line

if TYPE_CHECKING:
    from pyramid_cli.metrics.transcribe import Transcriber
    from pyramid_cli.metrics.visqol import Visqol


@dataclass
class LevelScores:
    levels: int  # decoded with levels 0..levels-1
    tokens_per_second: float
    mel_vs_target: float  # against the band-limited target of level levels-1
    si_sdr_vs_target: float
    mel_vs_full: float
    stft_vs_full: float
    waveform_vs_full: float
    si_sdr_vs_full: float
    chroma_vs_full: float  # frame-wise pitch-class cosine similarity, 1 = same pitches at the same times
    note_f1: float | None = None  # onset F1 of the decode's notes against the input's (None: no transcriber)
    note_precision: float | None = None
    note_recall: float | None = None
    notes_per_second: float | None = None  # in the decode (the input's: CodecEvaluation.input_notes_per_second)
    # The tune (``transcribe.top_line``, the skyline of the input's transcription): the share of its
    # notes found anywhere in the decode (onset within 50 ms, same pitch), and the onset F1 of the two
    # top lines, which is stricter and brittle: one extra high note in the decode hides a true one.
    melody_recall: float | None = None
    melody_f1: float | None = None
    # ``transcribe.note_errors`` per clip, averaged: the decode's extra notes and how many of them are
    # octaves of an input note, share a partial with one, or break a held note in two; the input's
    # missed notes and how many fall inside a held decode note.
    extra_notes: float | None = None
    extra_octave_notes: float | None = None
    missed_notes: float | None = None
    missed_in_sustain_notes: float | None = None
    extra_partial_notes: float | None = None
    extra_fragment_notes: float | None = None
    visqol: float | None = None  # ViSQOL v3 audio mode, MOS-LQO 1-5 against the full signal (None: not measured)


@dataclass
class CodebookReport:
    """``quantize.codebook_usage`` of one codebook over the evaluation clips, with where it sits."""

    level: int
    codebook: int
    used: int  # distinct codes seen
    size: int
    perplexity: float  # exp(entropy) of the code histogram; `size` when usage is uniform


@dataclass
class CodecEvaluation:
    clips: int
    clip_seconds: float
    levels: list[LevelScores]
    codebooks: list[CodebookReport]
    input_notes_per_second: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def split_records(corpus: Path, split: str) -> list[dict[str, Any]]:
    """The manifest records of ``split``, sorted by id (the order every evaluation takes clips in)."""
    records = sorted((r for r in load_manifest(corpus) if r["split"] == split), key=lambda r: r["id"])
    if not records:
        raise InputError(f"{corpus}: the '{split}' split is empty")
    return records


def read_middle(corpus: Path, record: dict[str, Any], clip_seconds: float, sample_rate: int
                ) -> tuple[torch.Tensor, int]:
    """A record's excerpt of `clip_seconds` from the middle of its song, as (1, T) mono, and the sample it
    starts at; a song shorter than the clip is read whole."""
    info = sf.info(str(corpus / record["audio"]))
    if info.samplerate != sample_rate:
        raise InputError(f"{record['audio']}: {info.samplerate} Hz, but the codec works at {sample_rate} Hz")
    length = min(info.frames, int(clip_seconds * sample_rate))
    start = (info.frames - length) // 2
    data, _ = sf.read(str(corpus / record["audio"]), start=start, frames=length, dtype="float32", always_2d=True)
    return torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))[None], start


def load_clips(
    corpus: Path, split: str, clips: int, clip_seconds: float, sample_rate: int
) -> list[torch.Tensor]:
    """Up to `clips` excerpts of `clip_seconds` from the middle of songs of `split` (sorted by id).

    Middles rather than openings: intros are often sparse and would flatter the codec.
    Returns (1, T) tensors; songs shorter than the clip are used whole.
    """
    return [read_middle(corpus, record, clip_seconds, sample_rate)[0]
            for record in split_records(corpus, split)[:clips]]


@torch.inference_mode()
def evaluate_codec(
    codec: PyramidCodec, clips: list[torch.Tensor], on_clip: Callable[[int], None] | None = None,
    transcriber: Transcriber | None = None, visqol: Visqol | None = None,
) -> CodecEvaluation:
    """Scores per number of decoded levels, averaged over clips, and codebook usage.

    With a ``transcriber``, also note onset precision / recall / F1 (mir_eval, 50 ms), notes per
    second, what the wrong notes are (``transcribe.note_errors``) and whether the tune survives
    (the top lines, ``transcribe.top_line``); F1 is averaged over clips.
    With ``visqol``, ViSQOL's MOS-LQO against the full signal.
    """
    config = codec.config
    device = next(codec.parameters()).device
    sums: dict[int, dict[str, float]] = {k: {} for k in range(config.n_levels + 1)}  # 0: the input
    counts: dict[int, dict[str, int]] = {k: {} for k in sums}  # clips scored, per key (ViSQOL skips short ones)

    def add(k: int, name: str, value: float) -> None:
        sums[k][name] = sums[k].get(name, 0.0) + value
        counts[k][name] = counts[k].get(name, 0) + 1
    histograms = [
        [torch.zeros(config.codebook_size, dtype=torch.long) for _ in range(n)] for n in config.n_codebooks
    ]
    for index, clip in enumerate(clips):
        wav = clip.to(device)[None]  # (1, 1, T)
        codes = codec.encode(wav)
        targets = band_limited_targets(wav, config.n_levels)
        reference_notes = None
        if transcriber is not None:
            reference = transcriber.transcribe(clip[0].cpu().numpy(), config.sample_rate)
            reference_notes = reference.notes
            reference_tune = top_line(reference_notes)
            add(0, "notes_per_second", reference.notes_per_second)
        for level, level_codes in enumerate(codes):
            for book in range(level_codes.shape[1]):
                histograms[level][book] += torch.bincount(
                    level_codes[0, book].cpu(), minlength=config.codebook_size
                )
        for k in range(1, config.n_levels + 1):
            decoded = codec.decode(codes, levels=k, length=wav.shape[-1])
            scores: dict[str, float | torch.Tensor] = {
                "mel_vs_target": mel_distance(decoded, targets[k - 1], config.sample_rate),
                "si_sdr_vs_target": si_sdr(decoded, targets[k - 1]),
                "mel_vs_full": mel_distance(decoded, wav, config.sample_rate),
                "stft_vs_full": stft_distance(decoded, wav),
                "waveform_vs_full": waveform_distance(decoded, wav),
                "si_sdr_vs_full": si_sdr(decoded, wav),
                "chroma_vs_full": chroma_similarity(decoded, wav, config.sample_rate),
            }
            if transcriber is not None and reference_notes is not None:
                estimate = transcriber.transcribe(decoded[0, 0].cpu().numpy(), config.sample_rate)
                precision, recall, f1 = onset_f1(reference_notes, estimate.notes)
                errors = note_errors(reference_notes, estimate.notes)
                melody_f1 = onset_f1(reference_tune, top_line(estimate.notes))[2]
                melody_recall = onset_f1(reference_tune, estimate.notes)[1]
                scores.update(note_f1=f1, note_precision=precision, note_recall=recall,
                              notes_per_second=estimate.notes_per_second, extra_notes=errors.extra,
                              extra_octave_notes=errors.extra_octave, missed_notes=errors.missed,
                              missed_in_sustain_notes=errors.missed_in_sustain,
                              extra_partial_notes=errors.extra_partial, extra_fragment_notes=errors.extra_fragment,
                              melody_f1=melody_f1, melody_recall=melody_recall)
            mos = None if visqol is None else visqol.score(decoded[0, 0].cpu().numpy(), wav[0, 0].cpu().numpy(),
                                                           config.sample_rate)
            if mos is not None:
                scores["visqol"] = mos
            for name, value in scores.items():
                add(k, name, float(value))
        if on_clip:
            on_clip(index)
    levels = [
        LevelScores(
            levels=k,
            tokens_per_second=config.tokens_per_second(k),
            **{name: total / counts[k][name] for name, total in sums[k].items()},
        )
        for k in range(1, config.n_levels + 1)
    ]
    input_rate = sums[0].get("notes_per_second")
    return CodecEvaluation(
        clips=len(clips),
        clip_seconds=max(c.shape[-1] for c in clips) / config.sample_rate,
        levels=levels,
        codebooks=codebook_reports(histograms, config.codebook_size),
        input_notes_per_second=None if input_rate is None else input_rate / counts[0]["notes_per_second"],
    )


def codebook_reports(histograms: list[list[torch.Tensor]], size: int) -> list[CodebookReport]:
    """Per level, per codebook: the usage of its code histogram (``histograms[level][codebook]``, (K,))."""
    return [CodebookReport(level=level, codebook=book, used=usage.used, size=size, perplexity=usage.perplexity)
            for level, books in enumerate(histograms)
            for book, counts in enumerate(books)
            for usage in codebook_usage(counts)]
