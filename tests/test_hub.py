"""Finding, identifying and loading codecs (hub.py), and choosing the device (devices.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from pyramid_cli import hub
from pyramid_cli.codec import CodecConfig, PyramidCodec
from pyramid_cli.codec.layers import is_weight_norm_folded
from pyramid_cli.devices import resolve_device
from pyramid_cli.errors import InputError, UsageError

TINY = CodecConfig(name="tiny-p111", encoder_dim=4, latent_dim=8, decoder_dim=32, codebook_size=64)



def save(folder: Path, seed: int = 0) -> PyramidCodec:
    torch.manual_seed(seed)
    model = PyramidCodec(TINY).eval()
    model.save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def codec_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("codec")
    save(folder)
    return folder


@pytest.fixture
def bundled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty bundled-models folder standing in for the checkout's models/."""
    root = tmp_path / "models"
    root.mkdir()
    monkeypatch.setattr(hub, "model_roots", lambda: [root, tmp_path / "absent"])
    return root


def test_resolve_a_folder(codec_dir: Path):
    assert hub.resolve_model(codec_dir) == codec_dir
    assert hub.resolve_model(str(codec_dir)) == codec_dir


def test_resolve_refuses_incomplete_or_missing_folders(tmp_path: Path, codec_dir: Path):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(InputError, match="not a codec folder \\(missing model.safetensors\\)"):
        hub.resolve_model(tmp_path / "half")
    with pytest.raises(InputError, match="no such folder"):
        hub.resolve_model(str(tmp_path / "nope"))
    with pytest.raises(InputError, match="a file, not a folder"):
        hub.resolve_model(str(codec_dir / "config.json"))


def test_bundled_names(bundled: Path):
    save(bundled / "pyramid-test")
    (bundled / "incomplete").mkdir()  # a model still being trained: not listed
    assert hub.bundled_models() == {"pyramid-test": bundled / "pyramid-test"}
    assert hub.resolve_model("pyramid-test") == bundled / "pyramid-test"
    with pytest.raises(InputError, match="unknown model 'other'.*bundled models: pyramid-test"):
        hub.resolve_model("other")


def test_missing_default_says_so(bundled: Path):
    with pytest.raises(InputError) as error:
        hub.resolve_model(hub.DEFAULT_CODEC)
    message = str(error.value)
    assert "pyramid-22k-p111-small is not installed" in message and "--model DIR" in message
    assert "no models are bundled" in message


def test_default_roots_are_the_checkout_then_the_wheel():
    package = Path(hub.__file__).resolve().parent
    assert hub.model_roots() == [package.parent / "models", package / "models"]


def test_identity_is_name_and_weights_hash(codec_dir: Path, tmp_path: Path):
    name, digest = hub.codec_identity(codec_dir)
    expected = hashlib.sha256((codec_dir / "model.safetensors").read_bytes()).hexdigest()[:16]
    assert (name, digest) == ("tiny-p111", expected)
    save(tmp_path / "other", seed=1)
    assert hub.codec_identity(tmp_path / "other")[1] != digest  # same name, other weights


def test_load_codec_is_ready_for_inference(codec_dir: Path):
    reference = PyramidCodec.from_pretrained(codec_dir)
    model, name, digest = hub.load_codec(str(codec_dir), device="cpu")
    assert (name, digest) == hub.codec_identity(codec_dir)
    assert not model.training and is_weight_norm_folded(model)
    assert not any(p.requires_grad for p in model.parameters())
    wav = 0.1 * torch.randn(1, 1, 4096, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        codes = reference.encode(wav)
        assert all(torch.equal(a, b) for a, b in zip(model.encode(wav), codes, strict=True))
        torch.testing.assert_close(model.decode(codes), reference.decode(codes), rtol=1e-5, atol=1e-5)


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
