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
by ``config.json`` (``model_kind``). A codec's identity is its name and the first 16 hex digits
of the SHA-256 of its weights; ``.pyr`` files record it, so tokens are never decoded with another
codec's weights (DAC leaves this check to the user).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pyramid_cli
from pyramid_cli.errors import FormatError, InputError, UsageError
from pyramid_cli.fileio import read_json_object
from pyramid_cli.model_files import CONFIG_NAME, WEIGHTS_NAME

if TYPE_CHECKING:  # torch is heavy: imported only when a model is actually loaded
    import torch

    from pyramid_cli.codec.model import PyramidCodec

DEFAULT_CODEC = "pyramid-22k-p111-notes"
DEFAULT_LM = "pyramid-lm-small"
README_NAME = "README.md"
HASH_DIGITS = 16
LM_MODEL_TYPE = "pyramid-lm"  # the "model_type" of a language model's config.json

ModelKind = Literal["codec", "lm"]
Origin = Literal["path", "bundled", "cache", "hf"]
KIND_NAMES: dict[str, str] = {"codec": "codec", "lm": "language model"}


@dataclass(frozen=True)
class LoadedCodec:
    """A codec ready for inference and its identity; unpacks as ``model, name, hash``.

    ``aliases`` are other hashes of the same weights that earlier versions recorded (the SHA-256
    of the whole file, see ``weights_hash``): tokens that carry one of them are still accepted.
    """

    model: PyramidCodec
    name: str
    hash: str
    aliases: tuple[str, ...] = ()

    def __iter__(self) -> Iterator[Any]:
        return iter((self.model, self.name, self.hash))

    def matches(self, name: str, digest: str) -> bool:
        """True when (name, digest), e.g. read from a ``.pyr``, is this codec's identity."""
        return name == self.name and digest.lower() in (self.hash, *self.aliases)


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


def is_model_dir(path: Path) -> bool:
    """True when ``path`` holds a ``config.json`` and a ``model.safetensors``."""
    return (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file()


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


# ---- what a folder holds ----------------------------------------------------------------------------


def read_config(folder: str | Path) -> dict[str, Any]:
    """The JSON object in ``folder/config.json`` (never anything but JSON is parsed)."""
    return read_json_object(Path(folder) / CONFIG_NAME, "model config")


def model_kind(folder: str | Path) -> ModelKind:
    """``"lm"`` for a config with ``"model_type": "pyramid-lm"``, ``"codec"`` for one with ``encoder_rates``."""
    config = read_config(folder)
    if config.get("model_type") == LM_MODEL_TYPE:
        return "lm"
    if "encoder_rates" in config:
        return "codec"
    raise FormatError(f"{Path(folder) / CONFIG_NAME}: neither a codec config (encoder_rates) nor a "
                      f"language model config (model_type {LM_MODEL_TYPE!r})")


# ---- resolution ---------------------------------------------------------------------------------------


def _looks_like_path(ref: str) -> bool:
    return "/" in ref or "\\" in ref or ref.startswith(".") or ref.startswith("~")


def _missing_files(path: Path) -> list[str]:
    return [name for name in (CONFIG_NAME, WEIGHTS_NAME) if not (path / name).is_file()]


def _not_found(text: str) -> InputError:
    bundled, cached = bundled_models(), cached_models()
    listed = f"bundled models: {', '.join(bundled)}" if bundled else "no models are bundled with this install"
    if cached:
        listed += f"; cached: {', '.join(cached)}"
    if text in (DEFAULT_CODEC, DEFAULT_LM):
        what = "codec" if text == DEFAULT_CODEC else "language model"
        option = "--model" if text == DEFAULT_CODEC else "--lm"
        return InputError(f"the default {what} {text} is not installed ({listed}); reinstall pyramid with "
                          f"its bundled models, or pass {option} DIR with a folder holding {CONFIG_NAME} and "
                          f"{WEIGHTS_NAME}")
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
    from pyramid_cli import hf

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
    needs an explicit ``--model`` (or ``pyramid download``) from the user.

    Raises:
        InputError: the name is a path, or no local model has it (naming what to do instead).
    """
    from pyramid_cli import hf

    if not hf.is_hub_ref(name) and (_looks_like_path(name) or not name):
        raise InputError(f"the recorded {KIND_NAMES[kind]} name {name[:80]!r} is a path, not a model name; "
                         "pass --model with the folder to use")
    try:
        return locate_model(name, kind, download=False).path
    except UsageError as error:  # a malformed hf:// name in the file
        raise InputError(str(error)) from None


def resolve_model(ref: str | Path, kind: ModelKind | None = None, *, download: bool = True) -> Path:
    """The checkpoint folder that ``ref`` names: ``locate_model(ref, kind, download=download).path``."""
    return locate_model(ref, kind, download=download).path


# ---- identity and loading ---------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    """The full SHA-256 (64 hex digits) of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(2**20), b""):
                digest.update(block)
    except OSError as error:
        raise InputError(f"{path}: cannot read ({error.strerror or error})") from None
    return digest.hexdigest()


# (path, size, mtime_ns, inode) → (file SHA-256, canonical hash): a process hashes each file once.
_HASHES: dict[tuple[str, int, int, int], tuple[str, str]] = {}


def _hashes(path: Path) -> tuple[str, str]:
    """(SHA-256 of the whole file, canonical 16-hex weights hash), read in one pass, cached by file state."""
    import mmap

    from pyramid_cli.model_files import safetensors_header

    try:
        stat = path.stat()
    except OSError as error:
        raise InputError(f"{path}: cannot read ({error.strerror or error})") from None
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if key in _HASHES:
        return _HASHES[key]
    entries = safetensors_header(path)
    try:
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            whole = hashlib.sha256(data).hexdigest()
            canonical = hashlib.sha256(b"pyramid-weights-v1\n")
            for name in sorted(entries):
                entry = entries[name]
                described = json.dumps([name, entry.dtype, list(entry.shape)], separators=(",", ":"))
                canonical.update(described.encode("utf-8") + b"\n")
                canonical.update(hashlib.sha256(data[entry.begin:entry.end]).digest())
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: cannot read ({getattr(error, 'strerror', None) or error})") from None
    _HASHES[key] = (whole, canonical.hexdigest()[:HASH_DIGITS])
    return _HASHES[key]


def weights_hash(path: Path) -> str:
    """The identity hash of a safetensors file: 16 hex digits of a SHA-256 over its tensors.

    It covers each tensor's name, dtype, shape and bytes, in name order, and nothing else: the
    header's metadata (whose key order differs between processes that save the same weights) and
    the header's layout do not change it. Files written before this hash existed were identified
    by the SHA-256 of the whole file (``legacy_weights_hash``); loaders still accept that one.
    """
    return _hashes(Path(path))[1]


def legacy_weights_hash(path: Path) -> str:
    """The first 16 hex digits of the SHA-256 of the whole file (the identity before issue 13)."""
    return _hashes(Path(path))[0][:HASH_DIGITS]


def codec_identity(model_dir: str | Path) -> tuple[str, str]:
    """(name from config.json, canonical hash of model.safetensors) of a checkpoint folder."""
    folder = Path(model_dir)
    name = read_config(folder).get("name")
    if not isinstance(name, str) or not name:
        raise FormatError(f"{folder / CONFIG_NAME}: the model config has no name")
    return name, weights_hash(folder / WEIGHTS_NAME)


def check_checksums(folder: str | Path) -> None:
    """Refuse a model folder whose files differ from its ``checksums.json`` (when it has one).

    The weights' SHA-256 is computed once per process and file state (see ``_hashes``), so loading
    a checked model again costs a ``stat``.

    Raises:
        FormatError: a recorded file's SHA-256 differs (tampered or damaged), or checksums.json is unreadable.
    """
    from pyramid_cli.bundle import CHECKSUMS_NAME, read_checksums

    folder = Path(folder)
    recorded = read_checksums(folder)
    if not recorded:
        return
    for name, expected in sorted(recorded.items()):
        actual = _hashes(folder / name)[0] if name == WEIGHTS_NAME else file_sha256(folder / name)
        if actual != expected:
            raise FormatError(f"{folder / name}: its SHA-256 {actual[:12]}... differs from {expected[:12]}... recorded "
                              f"in {CHECKSUMS_NAME}; the model was modified or damaged (reinstall or re-download it)")


def load_codec(ref: str | Path = DEFAULT_CODEC, device: str | torch.device = "cpu", *,
               download: bool = True) -> LoadedCodec:
    """Load a codec for inference: eval mode, weight norm folded, on ``device``.

    Args:
        ref: a checkpoint folder, a bundled or cached name, or ``hf://org/repo[@rev]`` (see ``locate_model``).
        device: a ``torch.device`` or a name for ``pyramid_cli.devices.resolve_device``.
        download: allow fetching an ``hf://`` reference missing from the cache (see ``locate_model``).

    Returns:
        ``LoadedCodec(model, name, hash, aliases)``; name and hash are what ``.pyr`` files record.

    Raises:
        FormatError: the files differ from the folder's ``checksums.json``, or do not fit each other.
    """
    from pyramid_cli.codec.model import PyramidCodec
    from pyramid_cli.devices import resolve_device

    folder = resolve_model(ref, kind="codec", download=download)
    check_checksums(folder)
    name, digest = codec_identity(folder)
    legacy = legacy_weights_hash(folder / WEIGHTS_NAME)
    model = PyramidCodec.from_pretrained(folder, device=resolve_device(device))
    model.fold_weight_norm().eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return LoadedCodec(model, name, digest, (legacy,) if legacy != digest else ())
