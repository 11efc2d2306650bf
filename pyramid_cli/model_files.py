"""A model folder on disk: ``config.json`` + ``model.safetensors``, and the strict JSON → config step.

Shared by the codec and the LM, so that both read, validate and write their folders the same way.
Nothing is ever unpickled: weights come from safetensors, configs from JSON checked key by key.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pyramid_cli.errors import FormatError, InputError, UsageError
from pyramid_cli.fileio import write_bytes_atomic, write_text_atomic

if TYPE_CHECKING:
    import torch

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

Config = TypeVar("Config")


def config_from_dict(cls: type[Config], data: Any, what: str, added_later: dict[str, Any] | None = None) -> Config:
    """Build the dataclass ``cls`` from a JSON object that names every field, and nothing else.

    Args:
        what: how messages call the config ("codec config", "LM config").
        added_later: fields added after models were published, with the value every earlier model
            implicitly had; a config without them still loads.

    Raises:
        FormatError: not an object, unknown or missing keys, or values the dataclass refuses.
    """
    if not isinstance(data, dict):
        raise FormatError(f"{what} must be a JSON object, got {type(data).__name__}")
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise FormatError(f"{what} has unknown keys: {', '.join(unknown)}")
    data = {**(added_later or {}), **data}
    missing = sorted(names - set(data))
    if missing:
        raise FormatError(f"{what} is missing keys: {', '.join(missing)}")
    try:
        return cls(**data)
    except (UsageError, TypeError, ValueError) as exc:
        raise FormatError(f"invalid {what}: {exc}") from exc


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
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{config_path}: unreadable {what} config ({exc})") from None
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
