"""A model folder on disk: ``config.json`` + ``model.safetensors``, and the strict JSON → config step.

Shared by the codec and the LM, so that both read, validate and write their folders the same way.
Nothing is ever unpickled: weights come from safetensors, configs from JSON checked key by key.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pyramid_cli.errors import FormatError, InputError, UsageError
from pyramid_cli.runtime.fileio import read_json_object, write_bytes_atomic, write_text_atomic

if TYPE_CHECKING:
    import torch

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
README_NAME = "README.md"

ModelKind = Literal["codec", "lm"]
KIND_NAMES: dict[str, str] = {"codec": "codec", "lm": "language model"}
# The "model_type" of each kind's config.json, and the newest config version this code reads. A
# config without them predates them: a codec (told by its encoder_rates) or an LM, at version 1.
MODEL_TYPES: dict[ModelKind, str] = {"codec": "pyramid-codec", "lm": "pyramid-lm"}
LM_MODEL_TYPE = MODEL_TYPES["lm"]
CONFIG_VERSION = 1

Config = TypeVar("Config")


MAX_STRING = 256  # characters in a string field (names, hashes, layouts)
MAX_TUPLE = 16  # entries in a tuple field (strides, codebooks per level)
DEFAULT_MAX_INT = 2**20  # an integer field without its own bound in ``limits``


def config_from_dict(cls: type[Config], data: Any, what: str, added_later: dict[str, Any] | None = None,
                     limits: dict[str, int] | None = None) -> Config:
    """Build the dataclass ``cls`` from a JSON object that names every field, and nothing else.

    Every value must have its field's JSON type (an int is not a bool or a float, a float is finite,
    strings and tuples are short) and every integer (or tuple entry) is bounded, before ``cls``
    sees it: a config read from a file cannot ask for an absurd model.

    Args:
        what: how messages call the config ("codec config", "LM config").
        added_later: fields added after models were published, with the value every earlier model
            implicitly had; a config without them still loads.
        limits: the largest value of each integer field (tuple fields: of each entry); the others
            are bounded by ``DEFAULT_MAX_INT``.

    Raises:
        FormatError: not an object, unknown or missing keys, or values of the wrong type, out of
            bounds or refused by the dataclass.
    """
    if not isinstance(data, dict):
        raise FormatError(f"{what} must be a JSON object, got {type(data).__name__}")
    kinds = {f.name: str(f.type) for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(kinds))
    if unknown:
        shown = ", ".join(key if len(key) <= 40 else f"{key[:40]}..." for key in unknown[:5])
        raise FormatError(f"{what} has unknown keys: {shown}{' ...' if len(unknown) > 5 else ''}")
    data = {**(added_later or {}), **data}
    missing = sorted(set(kinds) - set(data))
    if missing:
        raise FormatError(f"{what} is missing keys: {', '.join(missing)}")
    for key, value in data.items():
        problem = _type_problem(kinds[key], value, (limits or {}).get(key, DEFAULT_MAX_INT))
        if problem:
            raise FormatError(f"invalid {what}: {key} {problem}")
    try:
        return cls(**data)
    except (UsageError, TypeError, ValueError) as exc:
        raise FormatError(f"invalid {what}: {exc}") from exc


def _type_problem(kind: str, value: Any, limit: int) -> str | None:
    """Why ``value`` cannot be a field of type ``kind`` (as the dataclass annotates it), or None."""

    def integer(item: Any) -> str | None:
        if not isinstance(item, int) or isinstance(item, bool):
            return f"must be an integer, got {_shown(item)}"
        return f"must be at most {limit:,}, got {item:,}" if item > limit else None

    if kind == "int":
        return integer(value)
    if kind == "bool":
        return None if isinstance(value, bool) else f"must be true or false, got {_shown(value)}"
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"must be a finite number, got {_shown(value)}"
        return None
    if kind == "str":
        if not isinstance(value, str):
            return f"must be a string, got {_shown(value)}"
        return f"is too long ({len(value):,} characters; at most {MAX_STRING})" if len(value) > MAX_STRING else None
    if kind.startswith("tuple[int"):
        if not isinstance(value, (list, tuple)):
            return f"must be a list of integers, got {_shown(value)}"
        if len(value) > MAX_TUPLE:
            return f"has {len(value):,} entries; at most {MAX_TUPLE}"
        return next((f"entry {problem}" for problem in map(integer, value) if problem), None)
    if kind.startswith("tuple[str"):
        if not isinstance(value, (list, tuple)) or len(value) > MAX_TUPLE:
            return f"must be a list of at most {MAX_TUPLE} strings, got {_shown(value)}"
        return next((f"entry {_type_problem('str', item, limit)}" for item in value
                     if _type_problem("str", item, limit)), None)
    return None


def _shown(value: Any) -> str:
    """A short description of a JSON value for a message (never the whole of a huge one)."""
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


# Bytes per element of each safetensors dtype (the format's own names).
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
               "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
MAX_HEADER_BYTES = 100 * 2**20


@dataclass(frozen=True)
class TensorEntry:
    """One tensor as a safetensors header describes it; ``begin``/``end`` are absolute file offsets."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def safetensors_header(path: str | Path) -> dict[str, TensorEntry]:
    """The tensors a safetensors file holds, from its header alone (nothing is loaded).

    Checks the header against the file size, so the offsets can be trusted by a reader.

    Raises:
        InputError: the file cannot be read. FormatError: not a consistent safetensors file.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(8)
            length = int.from_bytes(head, "little") if len(head) == 8 else -1
            if length < 2 or length > min(size - 8, MAX_HEADER_BYTES):
                raise FormatError(f"{path}: unreadable safetensors file (bad header length)")
            raw = handle.read(length)
    except OSError as error:
        raise InputError(f"{path}: cannot read ({error.strerror or error})") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise FormatError(f"{path}: unreadable safetensors file (unreadable header)") from None
    if not isinstance(header, dict):
        raise FormatError(f"{path}: unreadable safetensors file (header is not an object)")
    entries: dict[str, TensorEntry] = {}
    start, end = 8 + length, 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            begin, stop = (int(n) for n in entry["data_offsets"])
            shape = tuple(int(n) for n in entry["shape"])
            nbytes = math.prod(shape) * DTYPE_BYTES[entry["dtype"]]
        except (KeyError, TypeError, ValueError):
            raise FormatError(f"{path}: malformed header entry {key[:80]!r}") from None
        if not 0 <= begin <= stop or stop - begin != nbytes or any(n < 0 for n in shape):
            raise FormatError(f"{path}: tensor {key[:80]!r} has inconsistent offsets")
        entries[key] = TensorEntry(entry["dtype"], shape, start + begin, start + stop)
        end = max(end, stop)
    if start + end != size:
        raise FormatError(f"{path}: {'truncated' if start + end > size else 'trailing bytes'} "
                          f"({size} bytes, the header describes {start + end})")
    return entries


def check_weight_shapes(path: str | Path, expected: dict[str, tuple[int, ...]], what: str) -> None:
    """Compare the shapes a config implies with the safetensors header, before any weight is allocated.

    Raises:
        FormatError: one line naming the first missing, unexpected or mis-shaped tensor.
    """
    found = {key: entry.shape for key, entry in safetensors_header(path).items()}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(key for key in set(expected) & set(found) if tuple(expected[key]) != found[key])
    if missing or unexpected or wrong:
        if wrong:
            key = wrong[0]
            detail = f"{key} is {list(found[key])} in the file, the config needs {list(expected[key])}"
        elif missing:
            detail = f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}"
        else:
            detail = f"unexpected {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}"
        raise FormatError(f"{path}: the weights do not match the {what} config ({detail})")


def read_model_config(folder: str | Path, what: str) -> dict[str, Any]:
    """The JSON object in ``folder/config.json`` (``what``: "codec", "LM" for messages).

    Raises:
        InputError: the file is missing. FormatError: unreadable, or not a JSON object.
    """
    config_path = Path(folder) / CONFIG_NAME
    if not config_path.is_file():
        raise InputError(f"{config_path}: no such file (a {what} folder holds {CONFIG_NAME} and {WEIGHTS_NAME})")
    return read_json_object(config_path, f"{what} config")


def read_weights(folder: str | Path, what: str) -> dict[str, torch.Tensor]:
    """The safetensors weights of a model folder.

    Raises:
        InputError: the file is missing. FormatError: the file is unreadable.
    """
    import safetensors.torch

    weights_path = Path(folder) / WEIGHTS_NAME
    if not weights_path.is_file():
        raise InputError(f"{weights_path}: no such file (a {what} folder holds {CONFIG_NAME} and {WEIGHTS_NAME})")
    try:
        return safetensors.torch.load_file(weights_path)
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise FormatError(f"{weights_path}: unreadable safetensors file ({str(exc).splitlines()[0]})") from None


def read_model_folder(folder: str | Path, what: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The JSON config and the safetensors weights of a model folder (``what``: "codec", "LM").

    Raises:
        InputError: a file is missing. FormatError: a file is unreadable.
    """
    import safetensors.torch

    folder = Path(folder)
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.is_file():
            raise InputError(f"{path}: no such file (a {what} folder holds {CONFIG_NAME} and {WEIGHTS_NAME})")
    config = read_json_object(config_path, f"{what} config")
    try:
        state = safetensors.torch.load_file(weights_path)
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise FormatError(f"{weights_path}: unreadable safetensors file ({exc})") from None
    return config, state


def write_model_folder(folder: str | Path, config: dict[str, Any], state: dict[str, torch.Tensor],
                       metadata: dict[str, str], fp16: bool = False) -> None:
    """Write ``config.json`` and ``model.safetensors`` atomically (floating weights as fp16 when ``fp16``)."""
    import safetensors.torch

    folder = Path(folder)
    state = {key: value.detach().to("cpu").contiguous() for key, value in state.items()}
    if fp16:
        state = {key: value.half() if value.is_floating_point() else value for key, value in state.items()}
    metadata = {**metadata, "format": "pt", "dtype": "float16" if fp16 else "float32"}
    write_bytes_atomic(folder / WEIGHTS_NAME, safetensors.torch.save(state, metadata=metadata))
    write_text_atomic(folder / CONFIG_NAME, json.dumps(config, indent=2) + "\n")


def is_model_dir(path: Path) -> bool:
    """True when ``path`` holds a ``config.json`` and a ``model.safetensors``."""
    return (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file()


def read_config(folder: str | Path) -> dict[str, Any]:
    """The JSON object in ``folder/config.json`` (never anything but JSON is parsed)."""
    return read_json_object(Path(folder) / CONFIG_NAME, "model config")


def model_kind(folder: str | Path) -> ModelKind:
    """``"lm"`` for a config with ``"model_type": "pyramid-lm"``, ``"codec"`` for ``"pyramid-codec"`` (or, before
    configs carried a type, one with ``encoder_rates``)."""
    config = read_config(folder)
    if config.get("model_type") == LM_MODEL_TYPE:
        return "lm"
    if config.get("model_type") == MODEL_TYPES["codec"] or "encoder_rates" in config:
        return "codec"
    raise FormatError(f"{Path(folder) / CONFIG_NAME}: neither a codec config (encoder_rates) nor a "
                      f"language model config (model_type {LM_MODEL_TYPE!r})")


def check_model_header(data: dict[str, Any], kind: ModelKind, what: str) -> dict[str, Any]:
    """Check a config's ``model_type`` and ``version`` before its fields are read; return ``data`` with
    both filled in (a config written before they existed is of its kind, at version 1).

    Raises:
        FormatError: a config of another type, or of a version newer than this code reads.
    """
    model_type = data.get("model_type", MODEL_TYPES[kind])
    if model_type != MODEL_TYPES[kind]:
        raise FormatError(f"{what}: model_type is {str(model_type)[:40]!r}, not {MODEL_TYPES[kind]!r}")
    version = data.get("version", CONFIG_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise FormatError(f"{what}: version must be a positive integer, got {str(version)[:40]!r}")
    if version > CONFIG_VERSION:
        raise FormatError(f"{what} is version {version}, newer than this pyramid reads ({CONFIG_VERSION}): "
                          "upgrade pyramid-cli")
    return {**data, "model_type": model_type, "version": version}
