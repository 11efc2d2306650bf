"""Release bundles (bundle.py, release.py): checksums, verification, export, installs into the cache."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import safetensors.torch
import torch
from hub_helpers import (  # the Hub cache layout huggingface_hub writes; an LM config
    TINY,
    flip_byte,
    lay_out_hub_cache,
)

from pyramid_cli.codec import PyramidCodec
from pyramid_cli.errors import FormatError, InputError, UsageError
from pyramid_cli.hub import bundle, hf, registry

pytestmark = pytest.mark.usefixtures("bundle_home")


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


# ---- the user cache ------------------------------------------------------------------------------------


def test_install_list_and_remove(exported: Path, bundle_home: Path):
    installed = bundle.install(exported, "tiny", force=False)
    assert installed == registry.cache_root() / "tiny" and bundle.verify(installed).ok
    assert registry.locate_model("tiny").origin == "cache"
    with pytest.raises(InputError, match="already exists"):
        bundle.install(exported, "tiny", force=False)
    bundle.install(exported, "tiny", force=True)
    with pytest.raises(UsageError, match="a model name uses"):
        bundle.install(exported, "../escape", force=False)
    PyramidCodec(TINY).save_pretrained(bundle_home / "bundled-one")
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


def test_a_broken_folder_does_not_hide_the_others(exported: Path, bundle_home: Path):
    bundle.install(exported, "good", force=False)
    broken = registry.cache_root() / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{")
    (broken / "model.safetensors").write_bytes(b"")
    rows = {e.name: e for e in bundle.list_models()}
    assert rows["good"].kind == "codec" and rows["broken"].kind is None
    assert rows["broken"].structure.startswith("unreadable")
