"""Token shards: the same codes as `pyramid encode`, resumable, codec-checked, validated on read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from pyramid_cli.codec import CodecConfig, PyramidCodec
from pyramid_cli.codec.api import LoadedCodec, encode_file, load_codec
from pyramid_cli.data.tokenize import merge_token_sets, tokenize_corpus
from pyramid_cli.data.tokens import INDEX_NAME, TokenSet, level_name
from pyramid_cli.errors import CodecMismatchError, FormatError, InputError, UsageError

TINY = CodecConfig(name="tiny-p111", encoder_dim=4, latent_dim=8, decoder_dim=32, codebook_size=64)
# (id, split, seconds, sample rate): one file at 16 kHz exercises the resampling path.
ITEMS = [("a", "train", 1.3, 22050), ("b", "train", 0.8, 22050), ("c", "valid", 1.0, 22050), ("d", "test", 0.6, 16000)]


def _tone(seconds: float, rate: int, seed: int) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    return (0.3 * np.sin(2 * np.pi * (220 + 50 * seed) * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two codec folders: same name and architecture, different weights (so different hashes)."""
    folder = tmp_path_factory.mktemp("models")
    for seed in (0, 1):
        torch.manual_seed(seed)
        PyramidCodec(TINY).eval().save_pretrained(folder / f"tiny{seed}")
    return folder / "tiny0", folder / "tiny1"


@pytest.fixture(scope="module")
def codec(models: tuple[Path, Path]) -> LoadedCodec:
    return load_codec(models[0])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hand-made corpus in the layout of `pyramid dataset build` (manifest + FLAC files)."""
    root = tmp_path_factory.mktemp("corpus")
    lines = []
    for seed, (item_id, split, seconds, rate) in enumerate(ITEMS):
        audio = f"audio/{split}/{item_id}.flac"
        (root / audio).parent.mkdir(parents=True, exist_ok=True)
        wav = _tone(seconds, rate, seed)
        sf.write(root / audio, wav, rate)
        lines.append(json.dumps({"id": item_id, "source": f"{item_id}.mid", "split": split, "audio": audio,
                                 "duration": seconds, "num_samples": wav.size, "sample_rate": rate}))
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, corpus: Path, codec: LoadedCodec) -> Path:
    """The corpus tokenized once, in one uninterrupted run."""
    out = tmp_path_factory.mktemp("ref") / "tokens"
    summary = tokenize_corpus(corpus, codec, out)
    assert (summary.encoded, summary.skipped, summary.failed) == (4, 0, 0)
    return out


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_tokens_equal_encode_file_and_meta(reference: Path, corpus: Path, codec: LoadedCodec) -> None:
    tokens = TokenSet.open(reference)
    config = codec.model.config
    assert (tokens.codec_name, tokens.codec_hash) == (codec.name, codec.hash)
    assert tokens.meta.hop_lengths == config.hop_lengths and tokens.meta.frame_rates == config.frame_rates
    assert tokens.meta.n_codebooks == config.n_codebooks and tokens.meta.codebook_size == 64
    assert tokens.meta.sample_rate == 22050 and tokens.meta.levels == 3 and tokens.meta.corpus == str(corpus)
    raw = json.loads((reference / "tokens.json").read_text())
    assert raw["format"] == "pyramid-tokens" and raw["version"] == 1 and raw["codec"]["hash"] == codec.hash
    assert tokens.splits() == ["train", "valid", "test"]
    for split in tokens.splits():
        items = tokens.items(split)
        assert [item.id for item in items] == sorted(i for i, s, *_ in ITEMS if s == split)
        for item in items:
            pyr = encode_file(corpus / item.source, codec, chunk_seconds=0.5)  # chunk-invariant codes
            assert item.frames == pyr.frames and item.duration == pytest.approx(pyr.duration_seconds)
            for got, level in zip(item.levels(), pyr.levels, strict=True):
                assert got.dtype == np.uint16 and got.shape == level.codes.shape
                np.testing.assert_array_equal(got.astype(np.int64), level.codes)
        # The level files are exactly the items' rows one after another, (frames, n_codebooks) row-major.
        for i, array in enumerate(tokens.arrays(split)):
            assert isinstance(array, np.memmap) and not array.flags.writeable
            assert array.shape == (sum(item.frames[i] for item in items), config.n_codebooks[i])
            assert (reference / split / level_name(i)).stat().st_size == array.size * 2


def test_resume_after_crash_gives_identical_files(reference: Path, corpus: Path, codec: LoadedCodec,
                                                  tmp_path: Path) -> None:
    out = tmp_path / "tokens"
    shutil.copytree(reference, out)
    index = out / "train" / INDEX_NAME
    lines = index.read_text().splitlines(keepends=True)
    # A crash while item "b" was being written: its tokens partly on disk, its index line torn.
    index.write_text(lines[0] + lines[1][:15])
    for i in range(3):
        with open(out / "train" / level_name(i), "r+b") as handle:
            handle.truncate(handle.seek(0, 2) - 2)
    summary = tokenize_corpus(corpus, codec, out)
    assert (summary.encoded, summary.skipped, summary.failed) == (1, 3, 0)
    assert summary.items == {"train": 2, "valid": 1, "test": 1}
    assert _files(out) == _files(reference)
    again = tokenize_corpus(corpus, codec, out, splits=["train"])
    assert (again.encoded, again.skipped) == (0, 2)
    assert _files(out) == _files(reference)


def test_another_codec_is_refused(reference: Path, corpus: Path, models: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "tokens"
    shutil.copytree(reference, out)
    with pytest.raises(CodecMismatchError, match="another folder"):
        tokenize_corpus(corpus, load_codec(models[1]), out)
    assert _files(out) == _files(reference)


def test_bad_audio_is_reported_and_skipped(corpus: Path, codec: LoadedCodec, tmp_path: Path) -> None:
    damaged = tmp_path / "corpus"
    shutil.copytree(corpus, damaged)
    (damaged / "audio/train/a.flac").unlink()
    (damaged / "audio/valid/c.flac").write_bytes(b"not a flac file")
    reports = []
    summary = tokenize_corpus(damaged, codec, tmp_path / "tokens", on_item=reports.append)
    assert sorted(f.id for f in summary.failures) == ["a", "c"] and summary.encoded == 2
    assert "no such file" in summary.failures[0].error
    assert [r.status for r in reports] == ["failed", "encoded", "failed", "encoded"]
    assert [r.done for r in reports] == [1, 2, 3, 4] and {r.total for r in reports} == {4}
    tokens = TokenSet.open(tmp_path / "tokens")
    assert [item.id for item in tokens.items("train")] == ["b"] and tokens.items("valid") == []
    assert tokens.arrays("valid")[0].shape == (0, 1)


def test_reader_rejects_damaged_sets(reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "tokens"
    shutil.copytree(reference, out)
    with open(out / "valid" / level_name(1), "r+b") as handle:
        handle.truncate(handle.seek(0, 2) - 2)
    tokens = TokenSet.open(out)
    with pytest.raises(FormatError, match="level1.u16: .*bytes, but its index lists"):
        tokens.items("valid")
    assert len(tokens.items("train")) == 2  # the other splits stay readable
    with pytest.raises(InputError, match="no split"):
        tokens.items("holdout")
    index = out / "train" / INDEX_NAME
    first, second = index.read_text().splitlines()
    index.write_text(first + "\n" + second.replace('"offsets": [', '"offsets": [1') + "\n")
    with pytest.raises(FormatError, match="entry 2 .b. is inconsistent"):
        TokenSet.open(out).items("train")
    meta = json.loads((out / "tokens.json").read_text())
    (out / "tokens.json").write_text(json.dumps({**meta, "version": 2}))
    with pytest.raises(FormatError, match="version 2"):
        TokenSet.open(out)
    with pytest.raises(InputError, match="not a token folder"):
        TokenSet.open(tmp_path)


def test_usage_errors(corpus: Path, codec: LoadedCodec, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown split 'holdout'"):
        tokenize_corpus(corpus, codec, tmp_path / "tokens", splits=["train", "holdout"])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="not a token folder"):
        tokenize_corpus(corpus, codec, tmp_path / "other")


def test_cli_end_to_end(pyramid, corpus: Path, models: tuple[Path, Path], reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "new" / "tokens"
    done = pyramid("dataset", "tokenize", str(corpus), "--out", str(out), "--model", str(models[0]), "--device", "cpu",
                    "--threads", "1", "--splits", "train,test", "--json")
    assert done.code == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["encoded"] == 3 and summary["failed"] == 0 and summary["items"] == {"train": 2, "test": 1}
    assert TokenSet.open(out).splits() == ["train", "test"]
    for split in ("train", "test"):
        assert _files(out / split) == _files(reference / split)

    info = pyramid("dataset", "info", str(out), "--json")
    assert info.code == 0, info.stderr
    stats = json.loads(info.stdout)["splits"]
    for split in ("train", "test"):
        for level, array in enumerate(TokenSet.open(out).arrays(split)):
            book = stats[split]["levels"][level]["codebooks"][0]
            assert book["used"] == len(np.unique(array[:, 0])) and 1 <= book["perplexity"] <= book["used"]
    assert "codes used" in pyramid("dataset", "info", str(out)).stderr  # tables go to the console (stderr)

    missing = pyramid("dataset", "tokenize", str(tmp_path / "nowhere"), "--out", str(out), "--model", str(models[0]))
    assert missing.code == 1 and "Traceback" not in missing.stderr
    assert missing.stderr.strip().count("\n") == 0 and "nowhere" in missing.stderr
    other = pyramid("dataset", "tokenize", str(corpus), "--out", str(out), "--model", str(models[1]), "--device", "cpu")
    assert other.code == 1 and "another folder" in other.stderr and "Traceback" not in other.stderr
    usage = pyramid("dataset", "tokenize", str(corpus), "--out", str(out), "--model", str(models[0]),
                    "--splits", "holdout")
    assert usage.code == 2 and "unknown split" in usage.stderr and "Traceback" not in usage.stderr


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory, corpus: Path, codec: LoadedCodec) -> tuple[Path, Path]:
    """The corpus tokenized as shards 0/2 and 1/2, each into its own folder."""
    root = tmp_path_factory.mktemp("shards")
    for i in (0, 1):
        summary = tokenize_corpus(corpus, codec, root / f"part{i}", shard=(i, 2))
        assert summary.shard == (i, 2) and summary.failed == 0 and summary.to_dict()["shard"] == (i, 2)
    return root / "part0", root / "part1"


def test_sharded_tokenize_merges_into_the_reference(shards: tuple[Path, Path], reference: Path,
                                                     tmp_path: Path) -> None:
    ids = [{item.id for split in TokenSet.open(part).splits() for item in TokenSet.open(part).items(split)}
           for part in shards]
    assert ids[0] & ids[1] == set() and ids[0] | ids[1] == {"a", "b", "c", "d"}
    assert ids == [{"a", "c", "d"}, {"b"}]  # greedy by duration: a (1.3 s) to shard 0, b (0.8 s) to shard 1
    out = tmp_path / "merged"
    summary = merge_token_sets(out, [shards[1], shards[0]])  # part order does not matter: items sorted by id
    assert (summary.merged, summary.skipped) == (4, 0) and summary.items == {"train": 2, "valid": 1, "test": 1}
    merged, ref = TokenSet.open(out), TokenSet.open(reference)
    assert merged.splits() == ref.splits()
    for split in ref.splits():
        got, want = merged.items(split), ref.items(split)
        assert [i.id for i in got] == [i.id for i in want]
        for a, b in zip(got, want, strict=True):
            for x, y in zip(a.levels(), b.levels(), strict=True):
                np.testing.assert_array_equal(x, y)
    assert _files(out) == _files(reference)  # byte for byte, index included
    again = merge_token_sets(out, shards)  # appending what OUT already has is a no-op
    assert (again.merged, again.skipped) == (0, 4) and _files(out) == _files(reference)


def test_merge_refuses_other_codecs_and_folders(shards: tuple[Path, Path], corpus: Path, models: tuple[Path, Path],
                                                tmp_path: Path) -> None:
    other = tmp_path / "other-codec"
    tokenize_corpus(corpus, load_codec(models[1]), other, splits=["train"], shard=(1, 2))
    with pytest.raises(CodecMismatchError, match="only parts of one codec"):
        merge_token_sets(tmp_path / "out", [shards[0], other])
    assert not (tmp_path / "out").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="not a token folder"):
        merge_token_sets(tmp_path / "mine", [shards[0]])
    with pytest.raises(UsageError, match="shard must be i/n"):
        tokenize_corpus(corpus, load_codec(models[0]), tmp_path / "t", shard=(2, 2))


def test_cli_shard_and_merge_tokens(pyramid, corpus: Path, models: tuple[Path, Path], shards: tuple[Path, Path],
                                    reference: Path, tmp_path: Path) -> None:
    usage = pyramid("dataset", "tokenize", str(corpus), "--out", str(tmp_path / "t"), "--model", str(models[0]),
                    "--shard", "2/2")
    assert usage.code == 2 and "--shard must be i/n" in usage.stderr and "Traceback" not in usage.stderr
    assert not (tmp_path / "t").exists()
    done = pyramid("dataset", "merge-tokens", str(tmp_path / "m"), *map(str, shards), "--json")
    assert done.code == 0, done.stderr
    assert json.loads(done.stdout)["merged"] == 4 and _files(tmp_path / "m") == _files(reference)
