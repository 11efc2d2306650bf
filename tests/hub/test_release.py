"""Release bundles (``pyramid_cli.hub.release``): ``pyramid export`` from a training run, atomic and
refusing to overwrite; ``pyramid download`` is exercised with the Hub tests (tests/hub/test_hf.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch
from hub_helpers import (  # the Hub cache layout huggingface_hub writes; an LM config
    LM_CONFIG,
    make_run,
    no_temporaries,
)

from pyramid_cli.codec.api import load_codec
from pyramid_cli.errors import FormatError, InputError, UsageError
from pyramid_cli.hub import bundle, identity, registry, release

pytestmark = pytest.mark.usefixtures("bundle_home")


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


def test_export_can_name_the_model(tmp_path: Path):
    make_run(tmp_path / "run")
    result = release.export_run(tmp_path / "run", tmp_path / "out", name="tiny-p111-v2")
    out = tmp_path / "out"
    assert result.summary.name == "tiny-p111-v2" and bundle.verify(out).ok
    assert identity.codec_identity(out) == ("tiny-p111-v2", identity.codec_identity(tmp_path / "run" / "export")[1])
    assert "# tiny-p111-v2" in (out / "README.md").read_text()
    with pytest.raises(UsageError, match="a model name uses letters"):
        release.export_run(tmp_path / "run", tmp_path / "out2", name="../x")
    assert not (tmp_path / "out2").exists() and no_temporaries(tmp_path)


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


