"""Finding, identifying and loading models (``pyramid_cli.hub``: registry, files, identity).

Hub caches are laid out here and read offline, with sockets disabled (``tests/hub/conftest.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from hub_helpers import save, save_lm

import pyramid_cli
from pyramid_cli.codec import PyramidCodec
from pyramid_cli.codec.api import load_codec
from pyramid_cli.codec.layers import is_weight_norm_folded
from pyramid_cli.errors import FormatError, InputError
from pyramid_cli.hub import files, identity, registry


def test_resolve_a_folder(codec_dir: Path):
    assert registry.resolve_model(codec_dir) == codec_dir
    assert registry.resolve_model(str(codec_dir)) == codec_dir
    assert registry.locate_model(str(codec_dir)).origin == "path"


def test_resolve_refuses_incomplete_or_missing_folders(tmp_path: Path, codec_dir: Path):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(InputError, match="not a model folder \\(missing model.safetensors\\)"):
        registry.resolve_model(tmp_path / "half")
    with pytest.raises(InputError, match="not a codec folder \\(missing model.safetensors\\)"):
        registry.resolve_model(tmp_path / "half", kind="codec")
    with pytest.raises(InputError, match="no such folder"):
        registry.resolve_model(str(tmp_path / "nope"))
    with pytest.raises(InputError, match="a file, not a folder"):
        registry.resolve_model(str(codec_dir / "config.json"))


def test_bundled_names(bundled: Path):
    save(bundled / "pyramid-test")
    (bundled / "incomplete").mkdir()  # a model still being trained: not listed
    assert registry.bundled_models() == {"pyramid-test": bundled / "pyramid-test"}
    assert registry.resolve_model("pyramid-test") == bundled / "pyramid-test"
    with pytest.raises(InputError, match="unknown model 'other'.*bundled models: pyramid-test.*hf://org/repo"):
        registry.resolve_model("other")


def test_missing_default_says_so(bundled: Path):
    with pytest.raises(InputError) as error:
        registry.resolve_model(registry.DEFAULT_CODEC)
    message = str(error.value)
    assert "pyramid-22k-p111-notes-v3 is not installed" in message and "name a codec folder" in message
    assert "no models are bundled" in message
    with pytest.raises(InputError, match="default language model pyramid-lm-small is not installed"):
        registry.resolve_model(registry.DEFAULT_LM)


@pytest.mark.parametrize(("name", "commit"), [("pyramid-22k-p111-notes", "22e70605d7fb"),
                                              ("pyramid-22k-p111-notes-v2", "a8a72e21916d")])
def test_a_retired_default_codec_says_where_to_get_it(bundled: Path, name: str, commit: str):
    with pytest.raises(InputError, match=rf"{name} is the name of an earlier default codec, no "
                       rf"longer bundled.*git archive {commit} models/{name} "):
        registry.resolve_model(name, kind="codec")


def test_default_roots_are_the_checkout_then_the_wheel():
    package = Path(pyramid_cli.__file__).resolve().parent
    assert registry.model_roots() == [package.parent / "models", package / "models"]


def test_pyramid_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    assert registry.cache_root() == tmp_path / "pyramid-home" / "models"
    monkeypatch.delenv("PYRAMID_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert registry.pyramid_home() == tmp_path / "xdg" / "pyramid"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert registry.pyramid_home() == tmp_path / "home" / ".cache" / "pyramid"


def test_resolution_order(bundled: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An explicit folder, then bundled, then the user cache; hidden folders (copies in flight) never count."""
    cache = registry.cache_root()
    save(bundled / "both")
    save(cache / "both", seed=1)
    save(cache / "cached-only")
    save(cache / ".cached-only.x.tmp")
    assert registry.locate_model("both") == registry.ModelLocation("both", bundled / "both", "bundled")
    assert registry.locate_model("cached-only") == registry.ModelLocation("cached-only", cache / "cached-only", "cache")
    assert registry.cached_models() == {"both": cache / "both", "cached-only": cache / "cached-only"}
    work = tmp_path / "work"
    save(work / "both", seed=2)
    monkeypatch.chdir(work)
    assert registry.locate_model("both").origin == "path"
    with pytest.raises(InputError, match="unknown model.*cached: both, cached-only"):
        registry.resolve_model("absent")


def test_kinds(codec_dir: Path, tmp_path: Path):
    lm = save_lm(tmp_path / "lm")
    assert files.model_kind(codec_dir) == "codec" and files.model_kind(lm) == "lm"
    assert registry.resolve_model(lm, kind="lm") == lm
    with pytest.raises(InputError, match="is a language model, but a codec is needed"):
        registry.resolve_model(lm, kind="codec")
    with pytest.raises(InputError, match="is a language model, but a codec is needed"):
        load_codec(lm)
    with pytest.raises(InputError, match="is a codec, but a language model is needed"):
        registry.resolve_model(codec_dir, kind="lm")
    (lm / "config.json").write_text('{"name": "x"}')
    with pytest.raises(FormatError, match="neither a codec config"):
        files.model_kind(lm)
    (lm / "config.json").write_text("{not json")
    with pytest.raises(FormatError, match="unreadable model config"):
        registry.resolve_model(lm, kind="lm")
    (lm / "config.json").write_text("[1, 2]")
    with pytest.raises(FormatError, match="must be a JSON object"):
        files.model_kind(lm)


def test_identity_is_name_and_weights_hash(codec_dir: Path, tmp_path: Path):
    name, digest = identity.codec_identity(codec_dir)
    full = hashlib.sha256((codec_dir / "model.safetensors").read_bytes()).hexdigest()
    assert (name, digest) == ("tiny-p111", identity.weights_hash(codec_dir / "model.safetensors"))
    assert len(digest) == 16 and digest != full[:16]  # the tensors' hash, not the file's (issue 13)
    assert identity.legacy_weights_hash(codec_dir / "model.safetensors") == full[:16]
    assert identity.file_sha256(codec_dir / "model.safetensors") == full
    save(tmp_path / "other", seed=1)
    assert identity.codec_identity(tmp_path / "other")[1] != digest  # same name, other weights


def test_load_codec_is_ready_for_inference(codec_dir: Path):
    reference = PyramidCodec.from_pretrained(codec_dir)
    model, name, digest = load_codec(str(codec_dir), device="cpu")
    assert (name, digest) == identity.codec_identity(codec_dir)
    assert not model.training and is_weight_norm_folded(model)
    assert not any(p.requires_grad for p in model.parameters())
    wav = 0.1 * torch.randn(1, 1, 4096, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        codes = reference.encode(wav)
        assert all(torch.equal(a, b) for a, b in zip(model.encode(wav), codes, strict=True))
        torch.testing.assert_close(model.decode(codes), reference.decode(codes), rtol=1e-5, atol=1e-5)


def test_corrupt_weights_are_a_format_error(codec_dir: Path, tmp_path: Path):
    folder = tmp_path / "corrupt"
    folder.mkdir()
    (folder / "config.json").write_bytes((codec_dir / "config.json").read_bytes())
    (folder / "model.safetensors").write_bytes((codec_dir / "model.safetensors").read_bytes()[:100])
    with pytest.raises(FormatError, match="unreadable safetensors"):
        load_codec(folder)


# ---- packaging ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_wheel_ships_models_as_package_data(tmp_path: Path):
    """Build the wheel from a copy of the project (with and without models/) and use the bundled model
    from the unpacked wheel, outside the checkout. Needs hatchling importable (no download is made)."""
    builder = pytest.importorskip("hatchling.builders.wheel", reason="building offline needs hatchling installed")
    checkout = Path(pyramid_cli.__file__).resolve().parents[1]
    project = tmp_path / "project"
    shutil.copytree(checkout / "pyramid_cli", project / "pyramid_cli", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(checkout / name, project / name)

    def build(out: Path) -> list[str]:
        wheel = next(builder.WheelBuilder(str(project)).build(directory=str(out), versions=["standard"]))
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(tmp_path / "site")
            return archive.namelist()

    assert not any("/models/" in name for name in build(tmp_path / "dist0"))  # no models/: still builds
    shutil.rmtree(tmp_path / "site")
    save(project / "models" / "tiny-bundled")
    names = build(tmp_path / "dist1")
    assert {"pyramid_cli/models/tiny-bundled/config.json", "pyramid_cli/models/tiny-bundled/model.safetensors"} <= set(
        names)
    code = ("import pyramid_cli, json; from pyramid_cli.hub import registry; "
            "location = registry.locate_model('tiny-bundled'); "
            "print(json.dumps([pyramid_cli.__file__, str(location.path), location.origin]))")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "PYRAMID_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    package, path, origin = json.loads(done.stdout)
    site = (tmp_path / "site").resolve()
    assert Path(package).resolve().is_relative_to(site) and origin == "bundled"
    assert Path(path).resolve() == site / "pyramid_cli" / "models" / "tiny-bundled"
