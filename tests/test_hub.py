"""Finding, identifying and loading models (pyramid_cli.hub), and choosing the device (devices.py).

Hugging Face tests run the real ``huggingface_hub`` code against a Hub cache laid out here, offline,
with sockets disabled: a cached model must resolve without touching the network.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import safetensors.torch
import torch

import pyramid_cli
from pyramid_cli.codec import CodecConfig, PyramidCodec
from pyramid_cli.codec.api import load_codec
from pyramid_cli.codec.layers import is_weight_norm_folded
from pyramid_cli.errors import FormatError, InputError, UsageError
from pyramid_cli.hub import files, hf, identity, registry
from pyramid_cli.runtime.devices import resolve_device

TINY = CodecConfig(name="tiny-p111", encoder_dim=4, latent_dim=8, decoder_dim=32, codebook_size=64)
COMMIT = "0123456789abcdef0123456789abcdef01234567"
try:
    from pyramid_cli.lm.config import tiny as tiny_lm

    LM_CONFIG = {**tiny_lm().to_dict(), "codec_name": "tiny-p111", "codec_hash": "0" * 16}
except ImportError:  # a tree without the LM package: the keys the registry reads
    LM_CONFIG = {"model_type": "pyramid-lm", "name": "pyramid-lm-tiny", "codec_name": "tiny-p111",
                 "codec_hash": "0" * 16, "n_layer": 2, "d_model": 64}


def save(folder: Path, seed: int = 0) -> PyramidCodec:
    torch.manual_seed(seed)
    model = PyramidCodec(TINY).eval()
    model.save_pretrained(folder)
    return model


def save_lm(folder: Path) -> Path:
    """A stand-in language model folder: the config keys the LM writes, and a tiny weights file."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(LM_CONFIG))
    safetensors.torch.save_file({"wte.weight": torch.zeros(8, 16)}, folder / "model.safetensors")
    return folder


def lay_out_hub_cache(cache: Path, repo_id: str, source: Path, commit: str = COMMIT,
                      refs: tuple[str, ...] = ("main",), skip: tuple[str, ...] = ()) -> Path:
    """Put ``source``'s files in a Hub cache as huggingface_hub does: blobs named by their LFS sha256
    (weights) or git blob sha1 (small files), snapshot entries as relative links, refs holding the commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True)
    for path in sorted(source.iterdir()):
        if path.name in skip:
            continue
        data = path.read_bytes()
        blob = (hashlib.sha256(data).hexdigest() if path.suffix == ".safetensors"
                else hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest())
        (repo / "blobs" / blob).write_bytes(data)
        (snapshot / path.name).symlink_to(Path("../../blobs") / blob)
    for ref in refs:
        (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)  # no newline, as huggingface_hub writes it
    return snapshot


@pytest.fixture(scope="module")
def codec_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("codec")
    save(folder)
    return folder


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the user's caches or reaches the network."""
    monkeypatch.setenv("PYRAMID_HOME", str(tmp_path / "pyramid-home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Record (and refuse) every attempt to open a connection."""
    attempts: list[object] = []

    def refuse(self: socket.socket, address: object) -> None:
        attempts.append(address)
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


@pytest.fixture
def bundled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty bundled-models folder standing in for the checkout's models/."""
    root = tmp_path / "models"
    root.mkdir()
    monkeypatch.setattr(registry, "model_roots", lambda: [root, tmp_path / "absent"])
    return root


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
    assert "pyramid-22k-p111-notes is not installed" in message and "name a codec folder" in message
    assert "no models are bundled" in message
    with pytest.raises(InputError, match="default language model pyramid-lm-small is not installed"):
        registry.resolve_model(registry.DEFAULT_LM)


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


# ---- Hugging Face Hub references and cache ------------------------------------------------------------


@pytest.mark.parametrize(("text", "repo", "revision"), [
    ("hf://org/repo", "org/repo", None), ("hf://org/repo@v1.0", "org/repo", "v1.0"),
    (f"hf://Org-1/my.model_2@{COMMIT}", "Org-1/my.model_2", COMMIT), ("org/repo", "org/repo", None)])
def test_parse_hub_refs(text: str, repo: str, revision: str | None):
    ref = hf.parse_hub_ref(text)
    assert (ref.repo_id, ref.revision) == (repo, revision)
    assert str(ref) == ("hf://" + text.removeprefix("hf://"))


@pytest.mark.parametrize("text", ["hf://", "hf://repo", "hf://a/b/c", "hf://org/re po", "hf://org/a--b",
                                  "hf://org/repo@", "hf://-org/repo"])
def test_bad_hub_refs_are_usage_errors(text: str):
    with pytest.raises(UsageError):
        hf.parse_hub_ref(text)


def test_revision_option_and_pin_must_agree():
    assert hf.parse_hub_ref("hf://org/repo", revision="v2").revision == "v2"
    assert hf.parse_hub_ref("hf://org/repo@v2", revision="v2").revision == "v2"
    with pytest.raises(UsageError, match="pins revision 'v1' but the revision asked for is 'v2'"):
        hf.parse_hub_ref("hf://org/repo@v1", revision="v2")


def test_hub_cache_dir_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    assert hf.hub_cache_dir() == tmp_path / "hf-home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    assert hf.hub_cache_dir() == tmp_path / "hub-cache"
    assert hf.offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert not hf.offline()


def test_offline_hub_hits_resolve_through_huggingface_hub(codec_dir: Path, no_network: list[object]):
    cache = hf.hub_cache_dir()
    snapshot = lay_out_hub_cache(cache, "org/tiny", codec_dir, refs=("main", "v1"))
    for ref in ("hf://org/tiny", "hf://org/tiny@v1", f"hf://org/tiny@{COMMIT}"):
        location = registry.locate_model(ref, kind="codec")
        assert location.path.resolve() == snapshot.resolve() and location.origin == "hf"
    assert registry.locate_model("hf://org/tiny").name == "hf://org/tiny"
    model, name, digest = load_codec("hf://org/tiny")
    assert (name, digest) == identity.codec_identity(codec_dir)
    assert no_network == []


def test_offline_miss_names_the_command_to_run(codec_dir: Path, no_network: list[object]):
    lay_out_hub_cache(hf.hub_cache_dir(), "org/tiny", codec_dir)
    with pytest.raises(InputError, match="HF_HUB_OFFLINE=1.*run `pyramid download hf://org/other` with network"):
        registry.resolve_model("hf://org/other")
    with pytest.raises(InputError, match="run `pyramid download hf://org/tiny@v9`"):
        registry.resolve_model("hf://org/tiny@v9")
    assert no_network == []


def test_an_interrupted_download_is_not_a_model(codec_dir: Path, no_network: list[object]):
    """config.json linked but the weights never arrived: a miss, not a half model."""
    lay_out_hub_cache(hf.hub_cache_dir(), "org/tiny", codec_dir, skip=("model.safetensors",))
    with pytest.raises(InputError, match="is not in the Hugging Face cache"):
        registry.resolve_model("hf://org/tiny")


def test_online_a_cache_hit_does_not_download(codec_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                              no_network: list[object]):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    calls: list[str] = []

    def fake_download(ref: hf.HubRef, cache: Path, force: bool) -> Path:  # what snapshot_download leaves
        calls.append(str(ref))
        return lay_out_hub_cache(cache, ref.repo_id, codec_dir)

    monkeypatch.setattr(hf, "_download", fake_download)
    with pytest.raises(InputError, match="is not downloaded.*run `pyramid download hf://org/tiny`"):
        registry.resolve_model("hf://org/tiny", download=False)
    first = hf.fetch(hf.parse_hub_ref("hf://org/tiny"))
    again = hf.fetch(hf.parse_hub_ref("hf://org/tiny"))
    assert first.downloaded and not again.downloaded and first.path == again.path
    assert calls == ["hf://org/tiny"] and no_network == []


def test_cached_snapshots_and_removal(codec_dir: Path, tmp_path: Path):
    cache = hf.hub_cache_dir()
    (tmp_path / "empty").mkdir()
    lay_out_hub_cache(cache, "org/tiny", codec_dir)
    lay_out_hub_cache(cache, "org/pinned", codec_dir, commit="1" * 40, refs=("v1",))
    lay_out_hub_cache(cache, "org/not-a-model", tmp_path / "empty", commit="2" * 40)
    found = {str(s.ref): s for s in hf.cached_snapshots()}
    assert set(found) == {"hf://org/tiny", "hf://org/pinned@v1"}
    assert found["hf://org/tiny"].commit == COMMIT and found["hf://org/tiny"].size_bytes > 0
    assert hf.remove_cached(hf.parse_hub_ref("hf://org/tiny")) > 0
    assert not (cache / "models--org--tiny").exists() and (cache / "models--org--pinned").is_dir()
    with pytest.raises(InputError, match="not in the Hugging Face cache"):
        hf.remove_cached(hf.parse_hub_ref("hf://org/tiny"))


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


# ---- devices ------------------------------------------------------------------------------------


def test_cpu_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    auto = resolve_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else auto.type)
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        assert auto == torch.device("cpu")


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "cuda:-1", "tpu", ""])
def test_unknown_devices_are_usage_errors(spec: str):
    with pytest.raises(UsageError, match="unknown device"):
        resolve_device(spec)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_cuda_without_cuda_is_a_clear_usage_error():
    with pytest.raises(UsageError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(UsageError, match="CUDA is not available"):
        resolve_device("cuda:1")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_index_out_of_range():
    count = torch.cuda.device_count()
    assert resolve_device("cuda") == torch.device("cuda", 0)
    with pytest.raises(UsageError, match=f"has {count} CUDA device"):
        resolve_device(f"cuda:{count}")


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="checks the message on machines without MPS")
def test_mps_without_mps():
    with pytest.raises(UsageError, match="MPS is not available"):
        resolve_device("mps")
