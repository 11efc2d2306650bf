"""`pyramid train lm`, `pyramid generate` and `pyramid eval lm` end to end with tiny real models, in-process."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from pyramid_cli.codec import CodecConfig, PyramidCodec
from pyramid_cli.hub.identity import codec_identity
from pyramid_cli.pyr.file import PyrFile
from pyramid_cli.train.config import LMTrainConfig
from pyramid_cli.train.lm import train_lm

TINY_CODEC = CodecConfig(name="tiny-p111", encoder_dim=4, latent_dim=8, decoder_dim=32, codebook_size=64)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, token_set_writer) -> tuple[Path, Path, Path]:
    """(codec folder, LM folder, token folder): an LM trained for a few steps on the codec's tokens."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    PyramidCodec(TINY_CODEC).eval().save_pretrained(root / "codec")
    name, digest = codec_identity(root / "codec")
    tokens = token_set_writer(root / "tokens", name, digest, {"train": [40, 30], "valid": [30], "test": [30]})
    result = train_lm(root / "run", LMTrainConfig(model="tiny", steps=6, batch_size=2, device="cpu", eval_every=3,
                                                  eval_windows=4), tokens)
    assert result.finished and result.step == 6
    return root / "codec", root / "run" / "export", tokens


def test_train_lm_command(pyramid, models: tuple[Path, Path, Path], tmp_path: Path):
    _, _, tokens = models
    result = pyramid("train", "lm", "--tokens", str(tokens), "--run", str(tmp_path / "run"), "--preset", "tiny",
                     "--steps", "2", "--batch-size", "2", "--device", "cpu", "--set", "eval_every=2",
                     "--set", "eval_windows=4", "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["finished"] and report["step"] == 2 and (tmp_path / "run" / "export" / "model.safetensors").exists()


def test_generate_writes_audio_and_reproducible_tokens(pyramid, models: tuple[Path, Path, Path], tmp_path: Path):
    codec, lm, _ = models
    args = ["generate", "--seconds", "2", "--lm", str(lm), "--model", str(codec), "--seed", "3",
            "--temperature", "1.3", "--device", "cpu"]
    first = pyramid(*args, "-o", str(tmp_path / "a.wav"), "--save-tokens", str(tmp_path / "a.pyr"), "--json")
    assert first.code == 0, first.stderr
    summary = json.loads(first.stdout)
    assert summary["seed"] == 3 and summary["levels"] == 3 and summary["tokens_generated"] > 0
    audio, rate = sf.read(tmp_path / "a.wav")
    pyr = PyrFile.read(tmp_path / "a.pyr")
    assert rate == 22050 and len(audio) == pyr.num_samples >= 2 * 22050
    assert pyr.frames == [22, 44, 88] and pyr.provenance["seed"] == 3 and pyr.provenance["temperature"] == 1.3
    second = pyramid(*args, "--save-tokens", str(tmp_path / "b.pyr"))
    assert second.code == 0, second.stderr
    assert (tmp_path / "a.pyr").read_bytes() == (tmp_path / "b.pyr").read_bytes(), "same seed, same tokens"
    decoded = pyramid("decode", str(tmp_path / "a.pyr"), "--model", str(codec), "--levels", "1", "--device", "cpu")
    assert decoded.code == 0, decoded.stderr
    again = pyramid(*args, "--save-tokens", str(tmp_path / "a.pyr"))
    assert again.code == 1 and "already exists" in again.stderr


def test_continuation_keeps_the_prompt(pyramid, models: tuple[Path, Path, Path], tmp_path: Path):
    codec, lm, _ = models
    base = ["--lm", str(lm), "--model", str(codec), "--device", "cpu"]
    assert pyramid("generate", "--seconds", "2", *base, "--seed", "1", "--save-tokens", str(tmp_path / "p.pyr"),
                   ).code == 0
    result = pyramid("generate", "--seconds", "3", *base, "--seed", "2", "--prompt", str(tmp_path / "p.pyr"),
                     "--prompt-seconds", "1", "--num-samples", "2", "--save-tokens", str(tmp_path / "c.pyr"), "--json")
    assert result.code == 0, result.stderr
    prompt = PyrFile.read(tmp_path / "p.pyr")
    for name in ("c-1.pyr", "c-2.pyr"):
        continued = PyrFile.read(tmp_path / name)
        assert continued.frames == [33, 66, 132]
        for level, ratio in zip(range(3), (1, 2, 4), strict=True):
            np.testing.assert_array_equal(continued.levels[level].codes[:, :10 * ratio],
                                          prompt.levels[level].codes[:, :10 * ratio])
    assert json.loads(result.stdout)["prompt_seconds"] == pytest.approx(10 * 2048 / 22050)


def test_coarse_sketch_and_eval(pyramid, models: tuple[Path, Path, Path], tmp_path: Path):
    codec, lm, tokens = models
    result = pyramid("generate", "--seconds", "2", "--lm", str(lm), "--model", str(codec), "--levels", "1",
                     "--device", "cpu", "-o", str(tmp_path / "s.wav"), "--save-tokens", str(tmp_path / "s.pyr"))
    assert result.code == 0, result.stderr
    assert PyrFile.read(tmp_path / "s.pyr").n_levels == 1 and "seed" in result.stderr
    evaluated = pyramid("eval", "lm", "--tokens", str(tokens), "--lm", str(lm), "--windows", "4", "--device", "cpu",
                        "--threads", "1", "--json")
    assert evaluated.code == 0, evaluated.stderr
    record = json.loads(evaluated.stdout)
    assert record["split"] == "test" and all(record[f"tokens_l{i}"] > 0 for i in range(3))


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--seconds", "2", "--minutes", "1", "-o", "x.wav"], 2, "one of --minutes or --seconds"),
        (["--seconds", "2"], 2, "-o OUT.wav"),
        (["--seconds", "2", "-o", "x.mp3"], 2, ".wav or .flac"),
        (["--seconds", "2", "-o", "x.wav", "--top-p", "1.5"], 2, "--top-p"),
        (["--seconds", "0", "-o", "x.wav"], 2, "seconds"),
        (["--seconds", "2", "-o", "x.wav", "--prompt", "missing.wav"], 1, "missing.wav"),
        (["--seconds", "2", "-o", "x.wav", "--dtype", "float64"], 2,
         "--dtype must be one of auto, float32, bfloat16, float16, got 'float64'"),
        (["--seconds", "2", "-o", "x.wav", "--dtype", "float16"], 2, "--dtype float16 needs a CUDA device"),
    ],
)
def test_bad_options(pyramid, models: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                     args: list[str], code: int, message: str):
    codec, lm, _ = models
    monkeypatch.chdir(tmp_path)
    result = pyramid("generate", *args, "--lm", str(lm), "--model", str(codec), "--device", "cpu")
    assert result.code == code, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x.wav").exists()


def test_lm_of_another_codec_is_refused(pyramid, models: tuple[Path, Path, Path], tmp_path: Path):
    _, lm, _ = models
    torch.manual_seed(1)
    PyramidCodec(TINY_CODEC).eval().save_pretrained(tmp_path / "other")
    result = pyramid("generate", "--seconds", "1", "--lm", str(lm), "--model", str(tmp_path / "other"),
                     "--device", "cpu", "-o", str(tmp_path / "x.wav"))
    assert result.code == 1 and "was trained on tokens of tiny-p111@" in result.stderr
    assert not (tmp_path / "x.wav").exists()


def test_dtype_is_recorded_and_float32_is_the_cpu_default(pyramid, models: tuple[Path, Path, Path], tmp_path: Path):
    """On the CPU auto is float32 (the same tokens as --dtype float32); bfloat16 runs there too, and
    the provenance and the JSON summary say which dtype made the piece."""
    codec, lm, _ = models
    base = ["generate", "--seconds", "1", "--lm", str(lm), "--model", str(codec), "--seed", "4", "--device", "cpu"]
    auto = pyramid(*base, "--save-tokens", str(tmp_path / "auto.pyr"), "--json")
    assert auto.code == 0, auto.stderr
    assert json.loads(auto.stdout)["dtype"] == "float32" and json.loads(auto.stdout)["compiled"] is False
    explicit = pyramid(*base, "--dtype", "FLOAT32", "--save-tokens", str(tmp_path / "f32.pyr"))
    assert explicit.code == 0, explicit.stderr
    assert (tmp_path / "auto.pyr").read_bytes() == (tmp_path / "f32.pyr").read_bytes()
    bf16 = pyramid(*base, "--dtype", "bfloat16", "--save-tokens", str(tmp_path / "bf16.pyr"), "--json")
    assert bf16.code == 0, bf16.stderr
    pyr = PyrFile.read(tmp_path / "bf16.pyr")
    assert pyr.provenance["lm_dtype"] == "bfloat16" and pyr.provenance["lm_compiled"] is False
    assert PyrFile.read(tmp_path / "auto.pyr").provenance["lm_dtype"] == "float32"
    assert pyr.frames == PyrFile.read(tmp_path / "auto.pyr").frames


@pytest.mark.slow  # torch.compile of the LM step takes about 20 s here
def test_compiled_generation_gives_the_same_piece(pyramid, models: tuple[Path, Path, Path], tmp_path: Path):
    codec, lm, _ = models
    base = ["generate", "--seconds", "1", "--lm", str(lm), "--model", str(codec), "--seed", "9", "--device", "cpu"]
    plain = pyramid(*base, "--save-tokens", str(tmp_path / "plain.pyr"))
    compiled = pyramid(*base, "--compile", "--save-tokens", str(tmp_path / "fast.pyr"), "--json")
    assert plain.code == 0 and compiled.code == 0, compiled.stderr
    assert json.loads(compiled.stdout)["compiled"] is True
    fast, slow = PyrFile.read(tmp_path / "fast.pyr"), PyrFile.read(tmp_path / "plain.pyr")
    assert fast.provenance["lm_compiled"] is True
    for a, b in zip(fast.levels, slow.levels, strict=True):
        np.testing.assert_array_equal(a.codes, b.codes)


def test_a_truncated_wav_prompt_is_used_with_a_warning(pyramid, models: tuple[Path, Path, Path], tmp_path: Path):
    """As `pyramid encode` does: the readable part is the prompt, and one warning says how much that is."""
    codec, lm, _ = models
    t = np.arange(2 * 22050) / 22050
    sf.write(tmp_path / "whole.wav", (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 22050, subtype="PCM_16")
    whole = (tmp_path / "whole.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(whole[: 44 + (len(whole) - 44) // 2])
    result = pyramid("generate", "--seconds", "3", "--lm", str(lm), "--model", str(codec), "--device", "cpu",
                     "--seed", "1", "--prompt", str(tmp_path / "cut.wav"), "--save-tokens", str(tmp_path / "c.pyr"))
    assert result.code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: {tmp_path / 'cut.wav'}: the file is truncated: its header declares 2.00 s, it "
                        "holds 1.00 s (50%); encoding the readable part"], result.stderr
