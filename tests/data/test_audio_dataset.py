"""Random crops from a corpus: shapes, determinism, silence skipping, partial reads, DDP sharding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from pyramid_cli.data import audio_dataset
from pyramid_cli.data.audio_dataset import CropSampler, RandomCropDataset, fixed_clips, rms_db
from pyramid_cli.errors import InputError, UsageError

SR = 22050


def write_corpus(root: Path, songs: dict[str, np.ndarray], splits: dict[str, str] | None = None,
                 rate: int = SR) -> Path:
    """A minimal corpus: one FLAC per song plus manifest.jsonl (what `dataset build` writes)."""
    records = []
    for name, wav in songs.items():
        split = (splits or {}).get(name, "train")
        rel = f"audio/{split}/{name}.flac"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / rel, wav.astype(np.float32), rate)
        records.append({"id": name, "split": split, "audio": rel, "duration": len(wav) / rate,
                        "num_samples": len(wav)})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


def tone(seconds: float, freq: float, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return amp * np.sin(2 * np.pi * freq * t)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path, {"a": tone(2.0, 220), "b": tone(1.0, 330), "v": tone(1.0, 440)},
                        splits={"v": "valid"})


def test_crops_are_mono_float32_and_deterministic(corpus: Path) -> None:
    ds = RandomCropDataset(corpus, "train", crop_seconds=0.25, seed=3)
    crop = ds[0]
    assert crop.shape == (1, round(0.25 * SR)) and crop.dtype == torch.float32
    again = RandomCropDataset(corpus, "train", crop_seconds=0.25, seed=3)
    assert all(torch.equal(ds[i], again[i]) for i in range(5))
    other = RandomCropDataset(corpus, "train", crop_seconds=0.25, seed=4)
    assert not all(torch.equal(ds[i], other[i]) for i in range(5))
    assert len(ds.songs) == 2  # the valid song is not in the train split


def test_crop_is_the_file_slice_it_names(corpus: Path) -> None:
    ds = RandomCropDataset(corpus, "train", crop_seconds=0.1, seed=0)
    for index in range(10):
        song, offset = ds.locate(index)
        whole, _ = sf.read(ds.songs[song][0], dtype="float32")
        assert offset + ds.crop_samples <= len(whole)
        np.testing.assert_array_equal(ds[index][0].numpy(), whole[offset:offset + ds.crop_samples])


def test_reads_only_the_needed_frames(corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_read = sf.read

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_read(*args, **kwargs)

    monkeypatch.setattr(audio_dataset.sf, "read", spy)
    ds = RandomCropDataset(corpus, "train", crop_seconds=0.2)
    ds[7]
    assert calls and all(c["frames"] == ds.crop_samples and "start" in c for c in calls)


def test_near_silent_crops_are_redrawn(tmp_path: Path) -> None:
    # Mostly silence with one loud second: a plain random crop would usually be silent.
    quiet = np.concatenate([np.zeros(2 * SR), tone(1.0, 220), np.zeros(2 * SR)])
    corpus = write_corpus(tmp_path, {"q": quiet})
    ds = RandomCropDataset(corpus, "train", crop_seconds=0.2, max_tries=20)
    levels = [rms_db(ds[i][0].numpy()) for i in range(20)]
    assert min(levels) >= ds.silence_db
    no_retry = RandomCropDataset(corpus, "train", crop_seconds=0.2, max_tries=1)
    assert min(rms_db(no_retry[i][0].numpy()) for i in range(20)) < no_retry.silence_db


def test_all_silent_song_still_yields_a_crop(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path, {"s": np.zeros(SR)})
    crop = RandomCropDataset(corpus, "train", crop_seconds=0.1, max_tries=3)[0]
    assert crop.shape == (1, round(0.1 * SR)) and float(crop.abs().max()) == 0.0


def test_bad_inputs_raise_clear_errors(tmp_path: Path, corpus: Path) -> None:
    with pytest.raises(UsageError):
        RandomCropDataset(corpus, "dev", crop_seconds=0.1)
    with pytest.raises(InputError, match="at least 5 s"):
        RandomCropDataset(corpus, "train", crop_seconds=5.0)
    other_rate = write_corpus(tmp_path / "sr", {"x": tone(1.0, 220)}, rate=16000)
    with pytest.raises(InputError, match="sample rate"):
        RandomCropDataset(other_rate, "train", crop_seconds=0.1, sample_rate=SR)[0]


def test_sampler_splits_ranks_without_overlap() -> None:
    per_rank = []
    for rank in range(3):
        it = iter(CropSampler(batch_size=4, start=10, rank=rank, world_size=3))
        per_rank.append([next(it) for _ in range(8)])  # two steps of 4 crops
    flat = sorted(i for indices in per_rank for i in indices)
    assert flat == list(range(10, 10 + 24))
    assert per_rank[1][:4] == [14, 15, 16, 17]
    assert CropSampler(4, start=10, world_size=3).position_after(2) == 34
    with pytest.raises(UsageError):
        CropSampler(4, rank=3, world_size=3)


@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_batches_do_not_depend_on_workers(corpus: Path, workers: int) -> None:
    ds = RandomCropDataset(corpus, "train", crop_seconds=0.1, seed=1)
    loader = DataLoader(ds, batch_size=3, sampler=CropSampler(3, start=5), num_workers=workers)
    batches = iter(loader)
    first, second = next(batches), next(batches)
    assert first.shape == (3, 1, ds.crop_samples)
    expected = torch.stack([ds[i] for i in range(5, 11)])
    assert torch.equal(torch.cat([first, second]), expected)


def test_fixed_clips_are_stable(corpus: Path) -> None:
    ds = RandomCropDataset(corpus, "valid", crop_seconds=0.5)
    clips = fixed_clips(ds, 3)
    assert clips.shape == (3, 1, ds.crop_samples)
    assert torch.equal(clips, fixed_clips(RandomCropDataset(corpus, "valid", crop_seconds=0.5), 3))
