"""Issue 13, library side: model identity, tampered and oversized models, names read from files."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pyramid_cli.codec import CodecConfig, PyramidCodec
from pyramid_cli.codec.api import check_pyr_codec, encode_waveform, load_codec
from pyramid_cli.errors import FormatError, InputError
from pyramid_cli.hub import hf, identity, registry
from pyramid_cli.lm.api import load_lm
from pyramid_cli.lm.config import tiny
from pyramid_cli.lm.model import PyramidLM
from pyramid_cli.lm.model import check_codec as check_lm_codec

TINY = CodecConfig(name="tiny-p111", encoder_dim=8, latent_dim=16, decoder_dim=32)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def codec_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("codec") / "tiny"
    torch.manual_seed(0)
    PyramidCodec(TINY).save_pretrained(folder)
    return folder


def rewrite_header(path: Path, out: Path) -> None:
    """The same tensors with the header's metadata keys reversed and the JSON spaced differently,
    as another process's safetensors writer may order them."""
    data = path.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + length])
    header["__metadata__"] = dict(reversed(list(header["__metadata__"].items())))
    tensors = [k for k in header if k != "__metadata__"]
    text = json.dumps({**{k: header[k] for k in reversed(tensors)}, "__metadata__": header["__metadata__"]}, indent=1)
    encoded = text.encode() + b" " * (-len(text) % 8)
    out.write_bytes(len(encoded).to_bytes(8, "little") + encoded + data[8 + length:])


# ---- 2. the identity is the tensors', not the file's ------------------------------------------------


def test_canonical_hash_ignores_the_header_layout(codec_dir: Path, tmp_path: Path):
    shutil.copytree(codec_dir, tmp_path / "other")
    rewrite_header(codec_dir / "model.safetensors", tmp_path / "other" / "model.safetensors")
    sha256 = identity.file_sha256
    assert sha256(tmp_path / "other" / "model.safetensors") != sha256(codec_dir / "model.safetensors")
    assert identity.codec_identity(tmp_path / "other") == identity.codec_identity(codec_dir)
    assert PyramidCodec.from_pretrained(tmp_path / "other") is not None  # still a valid file


def test_canonical_hash_is_the_same_in_two_processes(codec_dir: Path, tmp_path: Path):
    """Another process saves the same weights and hashes them; both identities agree."""
    script = (
        "import sys, torch; from pyramid_cli.hub import identity\n"
        "from pyramid_cli.codec import CodecConfig, PyramidCodec\n"
        "torch.manual_seed(0)\n"
        "PyramidCodec(CodecConfig(name='tiny-p111', encoder_dim=8, latent_dim=16, decoder_dim=32))"
        ".save_pretrained(sys.argv[1])\n"
        "print(identity.codec_identity(sys.argv[1])[1])\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "again")], capture_output=True, text=True,
                            timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    digest = identity.codec_identity(codec_dir)[1]
    assert result.stdout.strip() == digest == identity.codec_identity(tmp_path / "again")[1]


def test_bundled_models_accept_their_existing_identities():
    """.pyr files and the bundled LM recorded the whole-file hash; the bundled codec still accepts it."""
    codec = load_codec(registry.DEFAULT_CODEC)
    legacy = identity.file_sha256(registry.resolve_model(registry.DEFAULT_CODEC) / "model.safetensors")[:16]
    assert codec.hash != legacy and legacy in codec.aliases
    wav = (0.3 * np.sin(np.arange(22050) / 10)).astype(np.float32)[None]
    pyr = encode_waveform(wav, 22050, codec)
    assert pyr.codec_hash == codec.hash
    check_pyr_codec(dataclasses.replace(pyr, codec_hash=legacy), codec)  # an old .pyr: accepted
    with pytest.raises(Exception, match="was made with"):
        check_pyr_codec(dataclasses.replace(pyr, codec_hash="0" * 16), codec)
    lm = load_lm(registry.DEFAULT_LM)
    check_lm_codec(lm.model.config, codec.identity)


# ---- 5. a name read from a file never downloads ------------------------------------------------------


def test_recorded_names_resolve_only_to_local_models(codec_dir: Path, monkeypatch: pytest.MonkeyPatch):
    calls: list[bool] = []

    def fake_fetch(ref: object, *, download: bool = True, force: bool = False) -> object:
        calls.append(download)
        raise InputError(f"{ref} is not downloaded: run `pyramid download {ref}`")

    monkeypatch.setattr(hf, "fetch", fake_fetch)
    with pytest.raises(InputError, match="pyramid download"):
        registry.resolve_recorded("hf://evil/codec", "codec")
    assert calls == [False]
    with pytest.raises(InputError, match="is a path"):
        registry.resolve_recorded(str(codec_dir), "codec")  # a real folder, but named by the file
    with pytest.raises(InputError, match="is a path"):
        registry.resolve_recorded("../" + codec_dir.name, "codec")
    assert registry.resolve_recorded(registry.DEFAULT_CODEC, "codec") == registry.resolve_model(registry.DEFAULT_CODEC)


# ---- 6. checksums.json is checked on load -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["codec", "lm"])
def test_tampered_weights_are_refused(tmp_path: Path, kind: str):
    from pyramid_cli.hub.bundle import write_checksums

    folder = tmp_path / kind
    shutil.copytree(registry.resolve_model(registry.DEFAULT_CODEC if kind == "codec" else registry.DEFAULT_LM), folder)
    load = load_codec if kind == "codec" else load_lm
    write_checksums(folder)
    load(folder)  # intact: loads
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x40  # a weight changed, header intact
    weights.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="differs from .* recorded in checksums.json"):
        load(folder)


def test_checksums_are_hashed_once_per_file_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    folder = tmp_path / "codec"
    shutil.copytree(registry.resolve_model(registry.DEFAULT_CODEC), folder)
    identity.check_checksums(folder)
    monkeypatch.setattr(identity.hashlib, "sha256", None)  # a second check must not hash the weights again
    monkeypatch.setattr(identity, "file_sha256", lambda path: json.loads((folder / "checksums.json").read_text())
                        ["files"][path.name])
    identity.check_checksums(folder)


# ---- 7. bounded configs; shapes checked against the header before anything is allocated -------------


def _codec_folder(tmp_path: Path, codec_dir: Path, **changes: object) -> Path:
    folder = tmp_path / "bad"
    shutil.copytree(codec_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))
    return folder


@pytest.mark.parametrize(("changes", "message"), [
    ({"sample_rate": 22050.0}, "sample_rate must be an integer"),
    ({"sample_rate": "22050"}, "sample_rate must be an integer"),
    ({"sample_rate": True}, "sample_rate must be an integer"),
    ({"sample_rate": 10**12}, "sample_rate must be at most"),
    ({"encoder_rates": [4.0, 4, 4, 4]}, "encoder_rates entry must be an integer"),
    ({"encoder_rates": [4] * 1000}, "encoder_rates has 1,000 entries"),
    ({"encoder_dim": 10**9}, "encoder_dim must be at most"),
    ({"latent_dim": 2**14}, "weights do not match the codec config"),
    ({"name": "x" * 2**20}, "name is too long"),
    ({"quantizer_dropout": "high"}, "quantizer_dropout must be a finite number"),
])
def test_bad_codec_configs_are_refused_in_one_line(tmp_path: Path, codec_dir: Path, changes: dict, message: str):
    folder = _codec_folder(tmp_path, codec_dir, **changes)
    started = time.perf_counter()
    with pytest.raises(FormatError, match=message) as error:
        load_codec(folder)
    assert "\n" not in str(error.value) and len(str(error.value)) < 400
    assert time.perf_counter() - started < 10  # nothing big was built


def test_deeply_nested_config_is_a_format_error(tmp_path: Path, codec_dir: Path):
    folder = tmp_path / "deep"
    shutil.copytree(codec_dir, folder)
    (folder / "config.json").write_text('{"name": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(FormatError, match="nested too deeply"):
        load_codec(folder)


def test_mismatched_lm_is_refused_before_building(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    folder = tmp_path / "lm"
    PyramidLM(tiny()).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "d_model": 4096, "n_layer": 64}))
    built: list[str] = []
    original = PyramidLM.__init__

    def spy(self: PyramidLM, config: object) -> None:
        built.append(str(torch.empty(0).device))
        original(self, config)  # type: ignore[arg-type]

    monkeypatch.setattr(PyramidLM, "__init__", spy)
    with pytest.raises(FormatError, match="weights do not match the LM config") as error:
        PyramidLM.from_pretrained(folder)
    assert "\n" not in str(error.value)
    assert built == ["meta"]  # only the shape probe was built, on the meta device
    (folder / "config.json").write_text(json.dumps({**config, "d_model": 10**9}))
    with pytest.raises(FormatError, match="d_model must be at most"):
        PyramidLM.from_pretrained(folder)
