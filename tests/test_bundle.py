"""Release bundles (bundle.py, release.py): checksums, verification, export, installs into the cache."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import safetensors.torch
import torch
from test_hub import LM_CONFIG, lay_out_hub_cache  # the Hub cache layout huggingface_hub writes; an LM config

from pyramid_cli.codec import CodecConfig, PyramidCodec
from pyramid_cli.codec.api import load_codec
from pyramid_cli.errors import FormatError, InputError, UsageError
from pyramid_cli.hub import bundle, hf, identity, registry, release

TINY = CodecConfig(name="tiny-p111", encoder_dim=4, latent_dim=8, decoder_dim=32, codebook_size=64)


def make_run(run: Path, seed: int = 0, evals: bool = True) -> PyramidCodec:
    """A training run folder as `pyramid train codec` leaves it (fp16 export, metrics with a torn last line)."""
    torch.manual_seed(seed)
    model = PyramidCodec(TINY).eval()
    model.save_pretrained(run / "export", fp16=True)
    (run / "checkpoints").mkdir()
    (run / "config.json").write_text(json.dumps({"model": "p111", "steps": 40, "batch_size": 2, "lr": 1e-4}))
    records = [{"kind": "start", "step": 0, "total_steps": 40, "device": "cpu", "world_size": 1},
               {"kind": "train", "step": 20, "loss": 3.5, "elapsed_s": 36.0},
               {"kind": "eval", "step": 20, "clips": 4, "mel": 1.25, "mel_l0": 1.5, "si_sdr": -3.0}]
    lines = [json.dumps(r) for r in (records if evals else records[:2])]
    (run / "metrics.jsonl").write_text("\n".join(lines) + '\n{"kind": "train", "st')  # killed mid-write
    return model


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Private caches and bundled-models folder; offline."""
    monkeypatch.setenv("PYRAMID_HOME", str(tmp_path / "pyramid-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root = tmp_path / "bundled"
    root.mkdir()
    monkeypatch.setattr(registry, "model_roots", lambda: [root])
    return root


@pytest.fixture
def exported(tmp_path: Path) -> Path:
    make_run(tmp_path / "run")
    return release.export_run(tmp_path / "run", tmp_path / "release").path


def flip_byte(path: Path, offset_from_end: int = 10) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0xFF
    path.write_bytes(bytes(data))


def no_temporaries(folder: Path) -> bool:
    return not any(p.name.endswith((".tmp", ".old")) for p in folder.rglob("*"))


# ---- safetensors structure and checksums ---------------------------------------------------------------


def test_safetensors_header_check(tmp_path: Path):
    path = tmp_path / "m.safetensors"
    tensors = {"a": torch.zeros(3, 4), "b": torch.ones(5, dtype=torch.float16), "c": torch.arange(2)}
    safetensors.torch.save_file(tensors, path, metadata={"format": "pt"})
    assert bundle.check_safetensors(path) == 12 + 5 + 2
    data = path.read_bytes()
    for broken, message in [(data[:-1], "truncated"), (data + b"\0", "trailing bytes"),
                            (b"\x05" + data[1:], "bad header length|unreadable header"),
                            (b"not a safetensors file at all", "unreadable safetensors file")]:
        path.write_bytes(broken)
        with pytest.raises(FormatError, match=message):
            bundle.check_safetensors(path)


def test_checksums_round_trip_and_strict_reading(exported: Path):
    recorded = bundle.read_checksums(exported)
    assert recorded == {name: hashlib.sha256((exported / name).read_bytes()).hexdigest()
                        for name in ("config.json", "model.safetensors")}
    payload = json.loads((exported / "checksums.json").read_text())
    assert (payload["format"], payload["version"], payload["algorithm"]) == ("pyramid-checksums", 1, "sha256")
    for files in ({"../model.safetensors": "0" * 64}, {"model.safetensors": "XYZ"}, {"config.json": "0" * 64}):
        (exported / "checksums.json").write_text(json.dumps({**payload, "files": files}))
        with pytest.raises(FormatError):
            bundle.read_checksums(exported)
    (exported / "checksums.json").write_text(json.dumps({**payload, "extra": 1}))
    with pytest.raises(FormatError, match="unknown keys"):
        bundle.read_checksums(exported)


def test_verify_passes_then_detects_tampering(exported: Path):
    report = bundle.verify(exported)
    assert report.ok and report.source == "checksums.json" and [f.name for f in report.files] == [
        "config.json", "model.safetensors"]
    flip_byte(exported / "model.safetensors")  # same size, header intact: only the hash can tell
    report = bundle.verify(exported)
    assert not report.ok and report.problems == ()
    assert [f.ok for f in report.files] == [True, False]
    assert "model.safetensors sha256" in bundle.failure_reason(report)


def test_verify_reports_structure_problems(exported: Path):
    config = json.loads((exported / "config.json").read_text())
    (exported / "config.json").write_text(json.dumps({**config, "surprise": 1}))
    bundle.write_checksums(exported)  # recorded as is: the hashes match but the config is invalid
    report = bundle.verify(exported)
    assert not report.ok and all(f.ok for f in report.files)
    assert any("unknown keys: surprise" in p for p in report.problems)


def test_verify_without_a_record_is_not_ok(exported: Path):
    (exported / "checksums.json").unlink()
    report = bundle.verify(exported)
    assert report.source == "none" and not report.ok and report.files[0].expected is None
    assert "no recorded sha256 to verify against" in bundle.failure_reason(report)


def test_hub_snapshots_verify_against_their_blob_names(exported: Path, tmp_path: Path):
    (exported / "checksums.json").unlink()
    snapshot = lay_out_hub_cache(hf.hub_cache_dir(), "org/tiny", exported)
    report = bundle.verify(snapshot)
    assert report.ok and report.source == "hub blob"
    blob = (snapshot / "model.safetensors").resolve()
    os.chmod(blob, 0o644)
    flip_byte(blob)
    assert not bundle.verify(snapshot).ok


# ---- export --------------------------------------------------------------------------------------------


def test_export_round_trip(tmp_path: Path):
    model = make_run(tmp_path / "run")
    result = release.export_run(tmp_path / "run", tmp_path / "out")
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "checksums.json", "config.json", "model.safetensors"]
    assert result.sha256 == identity.file_sha256(out / "model.safetensors") and bundle.verify(out).ok
    assert result.log.step == 20 and result.log.last_eval is not None and result.log.last_eval["mel"] == 1.25
    assert result.parameters == sum(p.numel() for p in model.state_dict().values())
    loaded, name, digest = load_codec(out)
    reference, _, reference_digest = load_codec(tmp_path / "run" / "export")
    # The same tensors written by another process: the identity is the same (issue 13).
    assert (name, digest) == ("tiny-p111", reference_digest)
    wav = 0.1 * torch.randn(1, 1, 2048, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        codes = reference.encode(wav)
        assert all(torch.equal(a, b) for a, b in zip(loaded.encode(wav), codes, strict=True))
    card = (out / "README.md").read_text()
    for text in ("# tiny-p111", "| kind | codec |", "| levels | 3 |", "| tokens per second |", "steps: 20 of 40",
                 '"batch_size": 2', "Last validation record (step 20)", "| mel | 1.25 |", result.sha256,
                 "training time: 0.6 min", "hardware: cpu × 1"):
        assert text in card, text
    assert no_temporaries(tmp_path)


def test_export_refuses_to_overwrite_and_guards_other_folders(tmp_path: Path, exported: Path):
    run = tmp_path / "run"
    with pytest.raises(InputError, match="already exists; replacing it must be forced"):
        release.export_run(run, exported)
    before = identity.file_sha256(exported / "model.safetensors")
    make_run(tmp_path / "run2", seed=1, evals=False)
    release.export_run(tmp_path / "run2", exported, force=True)
    assert identity.file_sha256(exported / "model.safetensors") != before and bundle.verify(exported).ok
    assert "No validation record" in (exported / "README.md").read_text()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    for target in (tmp_path / "notes", run, run / "export", tmp_path, tmp_path / "run2"):
        with pytest.raises(InputError):
            release.export_run(run, target, force=True)
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me" and no_temporaries(tmp_path)
    assert (tmp_path / "run2" / "metrics.jsonl").is_file() and (tmp_path / "run2" / "checkpoints").is_dir()


def test_export_needs_a_finished_run(tmp_path: Path):
    with pytest.raises(InputError, match="no such run folder"):
        release.export_run(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "run").mkdir()
    with pytest.raises(InputError, match="no export/"):
        release.export_run(tmp_path / "run", tmp_path / "out")
    make_run(tmp_path / "bad")
    (tmp_path / "bad" / "export" / "model.safetensors").write_bytes(b"\x08" + b"\0" * 7 + b"{}garbage")
    with pytest.raises(FormatError):
        release.export_run(tmp_path / "bad", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_interrupted_export_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    make_run(tmp_path / "run")

    def interrupted(folder: Path) -> dict[str, str]:
        raise KeyboardInterrupt

    monkeypatch.setattr(release, "write_checksums", interrupted)
    with pytest.raises(KeyboardInterrupt):
        release.export_run(tmp_path / "run", tmp_path / "out")
    assert not (tmp_path / "out").exists() and no_temporaries(tmp_path)


def test_language_model_bundles(tmp_path: Path):
    run = tmp_path / "lm-run"
    (run / "export").mkdir(parents=True)
    config = LM_CONFIG
    (run / "export" / "config.json").write_text(json.dumps(config))
    safetensors.torch.save_file({"wte.weight": torch.zeros(8, 16)}, run / "export" / "model.safetensors")
    result = release.export_run(run, tmp_path / "out")
    structure = result.summary.structure
    assert result.summary.kind == "lm" and structure.startswith("2 layers, width 64") and structure.endswith(
        "on tiny-p111")
    assert "| kind | language model |" in (tmp_path / "out" / "README.md").read_text()
    assert registry.resolve_model(tmp_path / "out", kind="lm") == tmp_path / "out"
    (run / "export" / "config.json").write_text(json.dumps({**config, "codec_hash": 7}))
    with pytest.raises(FormatError, match="codec_hash must be a string"):
        release.export_run(run, tmp_path / "out2")


# ---- the user cache ------------------------------------------------------------------------------------


def test_install_list_and_remove(exported: Path, isolated: Path):
    installed = bundle.install(exported, "tiny", force=False)
    assert installed == registry.cache_root() / "tiny" and bundle.verify(installed).ok
    assert registry.locate_model("tiny").origin == "cache"
    with pytest.raises(InputError, match="already exists"):
        bundle.install(exported, "tiny", force=False)
    bundle.install(exported, "tiny", force=True)
    with pytest.raises(UsageError, match="a model name uses"):
        bundle.install(exported, "../escape", force=False)
    PyramidCodec(TINY).save_pretrained(isolated / "bundled-one")
    with pytest.raises(UsageError, match="bundled model"):
        bundle.install(exported, "bundled-one", force=False)
    lay_out_hub_cache(hf.hub_cache_dir(), "org/tiny", exported)
    rows = {(e.name, e.origin, e.kind) for e in bundle.list_models()}
    assert rows == {("bundled-one", "bundled", "codec"), ("tiny", "cache", "codec"), ("hf://org/tiny", "hf", "codec")}
    with pytest.raises(InputError, match="bundled with pyramid"):
        bundle.remove("bundled-one")
    with pytest.raises(InputError, match="a folder, not a cached model"):
        bundle.remove(str(exported))
    assert bundle.remove("tiny").endswith("tiny") and not (registry.cache_root() / "tiny").exists()
    assert "hf://org/tiny" in bundle.remove("hf://org/tiny")
    assert bundle.list_models()[0].name == "bundled-one" and len(bundle.list_models()) == 1


def test_install_refuses_a_copy_that_fails_verification(exported: Path):
    flip_byte(exported / "model.safetensors")
    with pytest.raises(FormatError, match="fails verification before copying"):
        bundle.install(exported, "tiny", force=False)
    assert not (registry.cache_root() / "tiny").exists()


def test_a_broken_folder_does_not_hide_the_others(exported: Path, isolated: Path):
    bundle.install(exported, "good", force=False)
    broken = registry.cache_root() / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{")
    (broken / "model.safetensors").write_bytes(b"")
    rows = {e.name: e for e in bundle.list_models()}
    assert rows["good"].kind == "codec" and rows["broken"].kind is None
    assert rows["broken"].structure.startswith("unreadable")
