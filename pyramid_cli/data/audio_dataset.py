"""Random audio crops from a built corpus, for codec training.

Every crop is a pure function of ``(seed, index)``: the song and offset come from a NumPy
generator seeded with both, so a crop never depends on worker count, process or history. That is
what makes training resumable to the bit: the *data position* is a single integer (the next crop
index), which ``CropSampler`` starts from and the checkpoint stores. Songs are drawn in proportion
to their length (uniform over all crop positions of the split), and only the needed frames are
read from disk (``soundfile.read(start=, frames=)``; a FLAC seek costs ~2 ms).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import Dataset, Sampler

from pyramid_cli.data.manifest import SPLITS, load_manifest
from pyramid_cli.data.notes import midi_notes, onset_roll, piano_roll
from pyramid_cli.errors import InputError, UsageError


def rms_db(wav: np.ndarray) -> float:
    """Root-mean-square level of ``wav`` in dB relative to full scale (-inf for digital silence)."""
    power = float(np.mean(np.square(wav, dtype=np.float64))) if wav.size else 0.0
    return 10.0 * math.log10(power) if power > 0 else -math.inf


class RandomCropDataset(Dataset[torch.Tensor]):
    """Crops of ``crop_seconds`` from the songs of one corpus split; ``dataset[i]`` is (1, T) float32.

    The dataset is infinite in effect: any non-negative index is valid and names one crop (pair it
    with ``CropSampler``). ``len(dataset)`` is the number of whole crops the split holds, a
    nominal epoch.

    Args:
        corpus: a folder built by ``pyramid dataset build`` (``manifest.jsonl`` + audio).
        split: "train", "valid" or "test".
        crop_seconds: crop length; T = round(crop_seconds * sample_rate).
        sample_rate: expected sample rate of the audio files (a mismatch raises InputError).
        seed: selects the crop sequence; two datasets with one seed give the same crops.
        silence_db: a crop whose RMS level is below this (dBFS) counts as near-silent and is
            redrawn, up to ``max_tries`` draws; the loudest draw is kept when all are quiet.
        max_tries: draws per index before giving up on finding a non-silent crop.
    """

    def __init__(
        self,
        corpus: str | Path,
        split: str,
        crop_seconds: float,
        sample_rate: int = 22050,
        seed: int = 0,
        silence_db: float = -45.0,
        max_tries: int = 5,
    ) -> None:
        if split not in SPLITS:
            raise UsageError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        if crop_seconds <= 0 or max_tries < 1:
            raise UsageError("crop_seconds must be positive and max_tries at least 1")
        self.corpus = Path(corpus)
        self.split = split
        self.sample_rate = sample_rate
        self.crop_samples = max(1, round(crop_seconds * sample_rate))
        self.seed = seed
        self.silence_db = silence_db
        self.max_tries = max_tries
        # Snapshot the manifest now: a corpus that is still being built may grow meanwhile.
        records = [r for r in load_manifest(self.corpus) if r["split"] == split]
        self.songs: list[tuple[str, int]] = []  # (audio path, number of samples)
        for record in sorted(records, key=lambda r: r["id"]):  # sorted: crops must not depend on build order
            samples = int(record.get("num_samples") or round(record["duration"] * sample_rate))
            if samples >= self.crop_samples:
                self.songs.append((str(self.corpus / record["audio"]), samples))
        if not self.songs:
            raise InputError(
                f"{self.corpus}: no {split} song is at least {crop_seconds:g} s long "
                f"({len(records)} {split} records); build more data or shorten the crops"
            )
        # Cumulative count of crop start positions: picks songs in proportion to their length.
        self._starts: list[int] = []
        total = 0
        for _, samples in self.songs:
            total += samples - self.crop_samples + 1
            self._starts.append(total)
        self.positions = total

    def __len__(self) -> int:
        return max(1, sum(samples for _, samples in self.songs) // self.crop_samples)

    def locate(self, index: int, attempt: int = 0) -> tuple[int, int]:
        """The (song number, first sample) of draw ``attempt`` for crop ``index``."""
        if index < 0:
            raise IndexError(f"crop index must be non-negative, got {index}")
        rng = np.random.default_rng([self.seed, index, attempt])  # SeedSequence mixes all three
        position = int(rng.integers(self.positions))
        song = bisect.bisect_right(self._starts, position)
        offset = position - (self._starts[song - 1] if song else 0)
        return song, offset

    def read(self, song: int, offset: int) -> np.ndarray:
        """(T,) float32 samples of ``song`` from ``offset``, zero-padded if the file is shorter."""
        path, _ = self.songs[song]
        try:
            data, rate = sf.read(path, start=offset, frames=self.crop_samples, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, OSError) as exc:
            raise InputError(f"{path}: cannot read audio ({exc})") from exc
        if rate != self.sample_rate:
            raise InputError(f"{path}: sample rate {rate} Hz, expected {self.sample_rate} Hz")
        mono = data.mean(axis=1)  # (frames,)
        if mono.shape[0] < self.crop_samples:  # the manifest over-stated the length
            mono = np.pad(mono, (0, self.crop_samples - mono.shape[0]))
        return mono

    def draw(self, index: int) -> tuple[int, int, np.ndarray]:
        """(song, offset, (T,) samples) of crop ``index``: redrawn while near-silent (at most
        max_tries draws; the loudest is kept when all are quiet)."""
        best, best_db = None, -math.inf
        for attempt in range(self.max_tries):
            song, offset = self.locate(index, attempt)
            crop = self.read(song, offset)
            level = rms_db(crop)
            if level >= self.silence_db:
                return song, offset, crop
            if best is None or level > best_db:
                best, best_db = (song, offset, crop), level
        assert best is not None
        return best

    def __getitem__(self, index: int) -> torch.Tensor:
        """Crop number ``index``: (1, T) float32 (see ``draw``)."""
        return torch.from_numpy(self.draw(index)[2]).unsqueeze(0)


class CropSampler(Sampler[int]):
    """Infinite crop indices for one rank: start, start+1, ... interleaved over ranks by batch.

    Global step s uses crops ``start + s*B*W + r*B + j`` (j < B) on rank r of W, so the W ranks
    never share a crop and the whole sequence is fixed by ``start`` alone. ``start`` is the data
    position a checkpoint stores (crops consumed by all ranks so far).
    """

    def __init__(self, batch_size: int, start: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if batch_size < 1 or not 0 <= rank < world_size or start < 0:
            raise UsageError(f"bad sampler settings: batch {batch_size}, rank {rank}/{world_size}, start {start}")
        self.batch_size, self.start, self.rank, self.world_size = batch_size, start, rank, world_size

    def __iter__(self) -> Iterator[int]:
        step = 0
        while True:
            first = self.start + (step * self.world_size + self.rank) * self.batch_size
            yield from range(first, first + self.batch_size)
            step += 1

    def position_after(self, steps: int) -> int:
        """The data position once ``steps`` global steps have consumed their crops."""
        return self.start + steps * self.batch_size * self.world_size


def fixed_clips(dataset: RandomCropDataset, count: int) -> torch.Tensor:
    """The first ``count`` crops of ``dataset`` stacked into (count, 1, T): a fixed evaluation set."""
    if count < 1:
        raise UsageError(f"count must be at least 1, got {count}")
    return torch.stack([dataset[i] for i in range(count)])


def describe(dataset: RandomCropDataset) -> dict[str, Any]:
    """Songs, hours and crop length of a dataset, for logs."""
    samples = sum(s for _, s in dataset.songs)
    return {
        "split": dataset.split,
        "songs": len(dataset.songs),
        "hours": samples / dataset.sample_rate / 3600.0,
        "crop_samples": dataset.crop_samples,
    }


class NoteCropDataset(RandomCropDataset):
    """``RandomCropDataset`` whose items are (crop (1, T), piano roll (88, T // hop), onset roll (88,
    T // hop)): the same crops (same seed and index), with the notes of the MIDI files the corpus was
    rendered from (``data.notes``).

    Args:
        midi_dir: the ``--midi-dir`` the corpus was built from (each record's ``source`` is
            relative to it).
        hop: samples per roll frame (the codec's finest hop).
    """

    def __init__(self, corpus: str | Path, split: str, crop_seconds: float, midi_dir: str | Path, hop: int,
                 **kwargs: Any) -> None:
        super().__init__(corpus, split, crop_seconds, **kwargs)
        self.hop = hop
        sources = {str(self.corpus / r["audio"]): r.get("source") for r in load_manifest(self.corpus)}
        self.midi_paths = []
        for path, _ in self.songs:
            source = sources.get(path)
            midi = Path(midi_dir) / source if source else None
            if midi is None or not midi.is_file():
                raise InputError(f"{path}: its MIDI source {source!r} is not in {midi_dir}; note-head "
                                 "training needs the MIDI folder the corpus was built from")
            self.midi_paths.append(midi)
        self._notes: dict[int, np.ndarray] = {}

    def notes(self, song: int) -> np.ndarray:
        """The (start, end, pitch) rows of song number ``song`` (parsed once)."""
        if song not in self._notes:
            self._notes[song] = midi_notes(self.midi_paths[song])
        return self._notes[song]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # type: ignore[override]
        song, offset, crop = self.draw(index)
        notes, frames = self.notes(song), self.crop_samples // self.hop
        roll = piano_roll(notes, offset, frames, self.hop, self.sample_rate)
        onsets = onset_roll(notes, offset, frames, self.hop, self.sample_rate)
        return torch.from_numpy(crop).unsqueeze(0), torch.from_numpy(roll), torch.from_numpy(onsets)
