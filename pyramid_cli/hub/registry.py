"""The model registry: ``--model PATH | NAME | hf://org/repo[@rev]`` → a local checkpoint folder.

A checkpoint is a folder with ``config.json`` and ``model.safetensors`` (safetensors only, no
pickles), usually with a ``README.md`` model card and a ``checksums.json`` (see ``bundle``). A
reference is resolved in this order, the first match winning:

1. ``hf://org/repo[@rev]``: a Hugging Face Hub repository, read from the standard Hub cache
   (``HF_HUB_CACHE``, else ``$HF_HOME/hub``); a cache hit never touches the network, a miss is
   downloaded unless ``HF_HUB_OFFLINE=1`` (then the error names the ``pyramid download`` to run).
2. an explicit folder (anything that exists, or looks like a path: ``./x``, ``~/x``, ``a/b``);
3. a bundled model: ``models/<NAME>/`` beside the package in a source checkout, or
   ``pyramid_cli/models/<NAME>/`` inside an installed wheel, so a fresh install works offline;
4. the user cache: ``$PYRAMID_HOME/models/<NAME>/`` (default ``~/.cache/pyramid``), filled by
   ``pyramid download --name``.

Two kinds of model share this layout: codecs, and language models over codec tokens, told apart
by ``config.json`` (``files.model_kind``). Loading lives with each model (``codec.api.load_codec``,
``lm.api.load_lm``); identities and checksums in ``identity``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyramid_cli
from pyramid_cli.errors import InputError, UsageError
from pyramid_cli.hub import hf
from pyramid_cli.hub.files import CONFIG_NAME, KIND_NAMES, WEIGHTS_NAME, ModelKind, is_model_dir, model_kind

DEFAULT_CODEC = "pyramid-22k-p111-notes-v3"
DEFAULT_LM = "pyramid-lm-small"
# Codecs bundled once and no longer, which old `.pyr` files still name → the commit of this repository
# whose models/ folder last held them (the error for such a file says how to install it from there).
RETIRED_CODECS = {"pyramid-22k-p111-notes": "22e70605d7fb", "pyramid-22k-p111-notes-v2": "a8a72e21916d"}
Origin = Literal["path", "bundled", "cache", "hf"]


@dataclass(frozen=True)
class ModelLocation:
    """Where a reference led: the folder, and by which route (the CLI shows and `models rm` checks it)."""

    name: str  # the bundled/cached name, the hf:// reference, or the folder as given
    path: Path
    origin: Origin


# ---- where models live ----------------------------------------------------------------------------


def model_roots() -> list[Path]:
    """Folders that hold bundled models: the checkout's ``models/``, then the wheel's ``pyramid_cli/models``."""
    package = Path(pyramid_cli.__file__).resolve().parent
    return [package.parent / "models", package / "models"]


def pyramid_home() -> Path:
    """``$PYRAMID_HOME``, else ``$XDG_CACHE_HOME/pyramid``, else ``~/.cache/pyramid`` (read at each call)."""
    explicit = os.environ.get("PYRAMID_HOME")
    if explicit:
        return Path(explicit).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "pyramid"


def cache_root() -> Path:
    """The user cache of installed models: ``$PYRAMID_HOME/models``."""
    return pyramid_home() / "models"


def _complete_models(root: Path) -> dict[str, Path]:
    """Complete model folders under ``root``; hidden ones (temporary copies in flight) are skipped."""
    if not root.is_dir():
        return {}
    return {folder.name: folder for folder in sorted(root.iterdir())
            if folder.is_dir() and not folder.name.startswith(".") and is_model_dir(folder)}


def bundled_models() -> dict[str, Path]:
    """Name → folder of every complete bundled model (the checkout's copy wins over the wheel's)."""
    found: dict[str, Path] = {}
    for root in model_roots():
        for name, folder in _complete_models(root).items():
            found.setdefault(name, folder)
    return found


def cached_models() -> dict[str, Path]:
    """Name → folder of every complete model in the user cache (``$PYRAMID_HOME/models``)."""
    return _complete_models(cache_root())


# ---- resolution ---------------------------------------------------------------------------------------


def _looks_like_path(ref: str) -> bool:
    return "/" in ref or "\\" in ref or ref.startswith(".") or ref.startswith("~")


def _missing_files(path: Path) -> list[str]:
    return [name for name in (CONFIG_NAME, WEIGHTS_NAME) if not (path / name).is_file()]


def retired_codec_hint(name: str) -> str:
    """Says that ``name`` (in ``RETIRED_CODECS``) is no longer bundled, and how to install it."""
    folder = f"models/{name}"
    return (f"the name of an earlier default codec, no longer bundled: re-encode the audio with the current one, "
            f"or install it from pyramid's source repository (`git archive {RETIRED_CODECS[name]} {folder} | "
            f"tar -x -C /tmp && pyramid download /tmp/{folder} --name {name}`)")


def _not_found(text: str) -> InputError:
    bundled, cached = bundled_models(), cached_models()
    listed = f"bundled models: {', '.join(bundled)}" if bundled else "no models are bundled with this install"
    if cached:
        listed += f"; cached: {', '.join(cached)}"
    if text in (DEFAULT_CODEC, DEFAULT_LM):
        what = "codec" if text == DEFAULT_CODEC else "language model"
        return InputError(f"the default {what} {text} is not installed ({listed}); reinstall pyramid with "
                          f"its bundled models, or name a {what} folder (DIR, holding {CONFIG_NAME} and "
                          f"{WEIGHTS_NAME}) instead", option="model" if text == DEFAULT_CODEC else "lm")
    if text in RETIRED_CODECS:
        return InputError(f"{text} is {retired_codec_hint(text)}")
    return InputError(f"unknown model {text!r}: not a folder, a bundled or a cached model ({listed}); "
                      "`pyramid models list` shows them, hf://org/repo names a Hugging Face Hub model")


def locate_model(ref: str | Path, kind: ModelKind | None = None, *, download: bool = True) -> ModelLocation:
    """Find the checkpoint folder that ``ref`` names (see the module docstring for the order).

    Args:
        ref: ``hf://org/repo[@rev]``, a folder, or the name of a bundled or cached model.
        kind: refuse a model of the other kind (a language model where a codec is needed).
        download: fetch an ``hf://`` model missing from the Hub cache (never when ``HF_HUB_OFFLINE=1``).

    Raises:
        InputError: an incomplete folder, an unknown name, an offline miss (naming the command to run).
        FormatError: an unreadable config, or one of neither kind.
    """
    text = str(ref)
    if not isinstance(ref, Path) and hf.is_hub_ref(text):
        hub_ref = hf.parse_hub_ref(text)
        path = hf.fetch(hub_ref, download=download).path
        location = ModelLocation(str(hub_ref), path, "hf")
    else:
        location = _locate_local(ref, text, kind)
    if kind is not None:
        found = model_kind(location.path)
        if found != kind:
            raise InputError(f"{location.name}: is a {KIND_NAMES[found]}, but a {KIND_NAMES[kind]} is needed here")
    return location


def _locate_local(ref: str | Path, text: str, kind: ModelKind | None) -> ModelLocation:
    what = KIND_NAMES[kind] if kind else "model"
    path = Path(text).expanduser()
    if path.is_dir():
        missing = _missing_files(path)
        if missing:
            raise InputError(f"{text}: not a {what} folder (missing {' and '.join(missing)})")
        return ModelLocation(text, path, "path")
    if isinstance(ref, Path) or _looks_like_path(text) or path.exists():
        found = "a file, not a folder" if path.exists() else "no such folder"
        raise InputError(f"{text}: {found} (a {what} folder holds {CONFIG_NAME} and {WEIGHTS_NAME})")
    if not text:
        raise UsageError("empty model name")
    bundled = bundled_models()
    if text in bundled:
        return ModelLocation(text, bundled[text], "bundled")
    cached = cached_models()
    if text in cached:
        return ModelLocation(text, cached[text], "cache")
    raise _not_found(text)


def resolve_recorded(name: str, kind: ModelKind) -> Path:
    """The local folder of a model named *inside a file* (a ``.pyr``'s codec, an LM config's codec).

    A name read from a file never chooses what is downloaded or which folder is read: it may only
    be a bundled or cached model, or an ``hf://`` reference already in the Hub cache. Anything else
    needs an explicit reference (or ``pyramid download``) from the user.

    Raises:
        InputError: the name is a path, or no local model has it (naming what to do instead).
    """
    if not hf.is_hub_ref(name) and (_looks_like_path(name) or not name):
        raise InputError(f"the recorded {KIND_NAMES[kind]} name {name[:80]!r} is a path, not a model name; "
                         "name the folder to use instead", option="model")
    try:
        return locate_model(name, kind, download=False).path
    except UsageError as error:  # a malformed hf:// name in the file
        raise InputError(str(error)) from None


def resolve_model(ref: str | Path, kind: ModelKind | None = None, *, download: bool = True) -> Path:
    """The checkpoint folder that ``ref`` names: ``locate_model(ref, kind, download=download).path``."""
    return locate_model(ref, kind, download=download).path


# ---- identity and loading ---------------------------------------------------------------------------


