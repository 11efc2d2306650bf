"""Registry fixtures: no test sees the user's caches or reaches the network; a tiny codec folder."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from hub_helpers import make_run, save

from pyramid_cli.hub import registry, release


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


@pytest.fixture
def bundle_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Private caches and bundled-models folder, offline (the bundle and release tests use it)."""
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
