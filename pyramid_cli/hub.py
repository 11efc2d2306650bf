"""Find and load codec checkpoints: ``--model NAME | DIR``.

A checkpoint is a folder with ``config.json`` and ``model.safetensors`` (safetensors only, no
pickles). ``NAME`` is a model bundled with pyramid: ``models/<NAME>/`` beside the package in a
source checkout, or ``pyramid_cli/models/<NAME>/`` inside an installed wheel, so a fresh install
works offline (UX §5). A later version adds a download cache and the Hugging Face Hub here.

A codec's identity is its name (from the config) and the first 16 hex digits of the SHA-256 of
its weights file. ``.pyr`` files record it, so tokens are never decoded with another codec's
weights (DAC leaves this check to the user).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import pyramid_cli
from pyramid_cli.errors import FormatError, InputError

if TYPE_CHECKING:  # torch is heavy: imported only when a model is actually loaded
    import torch

    from pyramid_cli.codec.model import PyramidCodec

DEFAULT_CODEC = "pyramid-22k-p111-small"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
HASH_DIGITS = 16


class LoadedCodec(NamedTuple):
    """A codec ready for inference and its identity; unpacks as ``model, name, hash``."""

    model: PyramidCodec
    name: str
    hash: str


def model_roots() -> list[Path]:
    """Folders that hold bundled models: the checkout's ``models/``, then the wheel's ``pyramid_cli/models``."""
    package = Path(pyramid_cli.__file__).resolve().parent
    return [package.parent / "models", package / "models"]


def is_model_dir(path: Path) -> bool:
    """True when ``path`` holds a ``config.json`` and a ``model.safetensors``."""
    return (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file()


def bundled_models() -> dict[str, Path]:
    """Name → folder of every complete bundled model (the checkout's copy wins over the wheel's)."""
    found: dict[str, Path] = {}
    for root in model_roots():
        if root.is_dir():
            for folder in sorted(root.iterdir()):
                if folder.is_dir() and is_model_dir(folder):
                    found.setdefault(folder.name, folder)
    return found


def _looks_like_path(ref: str) -> bool:
    return "/" in ref or "\\" in ref or ref.startswith(".") or ref.startswith("~")


def resolve_model(ref: str | Path) -> Path:
    """The checkpoint folder that ``ref`` names.

    Args:
        ref: a folder with config.json + model.safetensors, or the name of a bundled model.

    Raises:
        InputError: an incomplete folder, or an unknown name (the message lists the bundled ones).
    """
    text = str(ref)
    path = Path(text).expanduser()
    if path.is_dir():
        missing = [name for name in (CONFIG_NAME, WEIGHTS_NAME) if not (path / name).is_file()]
        if missing:
            raise InputError(f"{text}: not a codec folder (missing {' and '.join(missing)})")
        return path
    if isinstance(ref, Path) or _looks_like_path(text) or path.exists():
        what = "a file, not a folder" if path.exists() else "no such folder"
        raise InputError(f"{text}: {what} (a codec folder holds {CONFIG_NAME} and {WEIGHTS_NAME})")
    bundled = bundled_models()
    if text in bundled:
        return bundled[text]
    listed = f"bundled models: {', '.join(bundled)}" if bundled else "no models are bundled with this install"
    if text == DEFAULT_CODEC:
        raise InputError(f"the default codec {DEFAULT_CODEC} is not installed ({listed}; it is still being "
                         f"trained); pass --model DIR with a folder holding {CONFIG_NAME} and {WEIGHTS_NAME}")
    raise InputError(f"unknown model {text!r}: not a folder and not a bundled model ({listed})")


def weights_hash(path: Path) -> str:
    """The first 16 hex digits of the SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(2**20), b""):
                digest.update(block)
    except OSError as error:
        raise InputError(f"{path}: cannot read ({error.strerror or error})") from None
    return digest.hexdigest()[:HASH_DIGITS]


def codec_identity(model_dir: str | Path) -> tuple[str, str]:
    """(name from config.json, hash of model.safetensors) of a checkpoint folder."""
    folder = Path(model_dir)
    config_path = folder / CONFIG_NAME
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{config_path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise FormatError(f"{config_path}: unreadable codec config ({error})") from None
    name = config.get("name") if isinstance(config, dict) else None
    if not isinstance(name, str) or not name:
        raise FormatError(f"{config_path}: the codec config has no name")
    return name, weights_hash(folder / WEIGHTS_NAME)


def load_codec(ref: str | Path = DEFAULT_CODEC, device: str | torch.device = "cpu") -> LoadedCodec:
    """Load a codec for inference: eval mode, weight norm folded, on ``device``.

    Args:
        ref: a checkpoint folder or a bundled model name (see ``resolve_model``).
        device: a ``torch.device`` or a name for ``pyramid_cli.devices.resolve_device``.

    Returns:
        ``LoadedCodec(model, name, hash)``; name and hash are what ``.pyr`` files record.
    """
    from pyramid_cli.codec.model import PyramidCodec
    from pyramid_cli.devices import resolve_device

    folder = resolve_model(ref)
    name, digest = codec_identity(folder)
    model = PyramidCodec.from_pretrained(folder, device=resolve_device(device))
    model.fold_weight_norm().eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return LoadedCodec(model, name, digest)
