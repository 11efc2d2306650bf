"""A model's identity and integrity: weights hashes, ``checksums.json``, and the one codec-identity check.

A codec's identity is its name and the first 16 hex digits of a SHA-256 over its tensors
(``weights_hash``); ``.pyr`` files, token folders and LM configs record it, so tokens are never
decoded or modelled with another codec's weights (DAC leaves this check to the user), and
``check_codec_identity`` is the one place that compares two identities.

``checksums.json`` records the full SHA-256 of the files that define a model (the README, a model
card people may edit, is left out), so a damaged or tampered copy is refused before loading:

    {"format": "pyramid-checksums", "version": 1, "algorithm": "sha256",
     "files": {"config.json": "<64 hex>", "model.safetensors": "<64 hex>"}}
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyramid_cli.errors import CodecMismatchError, FormatError, InputError
from pyramid_cli.hub.files import CONFIG_NAME, WEIGHTS_NAME, read_config, safetensors_header
from pyramid_cli.hub.registry import RETIRED_CODECS, retired_codec_hint
from pyramid_cli.runtime.fileio import read_json_object, write_text_atomic

HASH_DIGITS = 16
CHECKSUMS_NAME = "checksums.json"
CHECKSUMS_FORMAT = "pyramid-checksums"
CHECKSUMS_VERSION = 1
HASHED_FILES = (CONFIG_NAME, WEIGHTS_NAME)
SHA256 = re.compile(r"^[0-9a-f]{64}$")


# ---- hashes ------------------------------------------------------------------------------------------


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


# ---- codec identity ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CodecIdentity:
    """A codec's name and weights hash; ``aliases`` are other hashes of the same weights that earlier
    versions recorded (the SHA-256 of the whole file, see ``weights_hash``), still accepted."""

    name: str
    hash: str
    aliases: tuple[str, ...] = ()

    def matches(self, name: str, digest: str) -> bool:
        """True when (name, digest), e.g. read from a ``.pyr``, is this codec's identity."""
        return name == self.name and digest.lower() in (self.hash.lower(), *(a.lower() for a in self.aliases))


def check_codec_identity(recorded: tuple[str, str], given: CodecIdentity, recorded_as: str, given_as: str) -> None:
    """Refuse tokens (or a model of tokens) made by one codec where ``given`` is used, naming both.

    Args:
        recorded: (name, hash) as a file records it (a ``.pyr``, an LM config, a token folder).
        recorded_as, given_as: how the message introduces each: "song.pyr was made with", "the codec
            given is" → "song.pyr was made with A@1234abcd; the codec given is B@9876fedc".

    Raises:
        CodecMismatchError: the identities differ.
    """
    name, made = recorded[0], recorded[1].lower()
    if given.matches(name, made):
        return
    given_hash = given.hash.lower()
    shown = 8  # widen the shown hash prefixes until they differ, so the message never reads X@a = X@a
    while made != given_hash and made[:shown] == given_hash[:shown] and shown < max(len(made), len(given_hash)):
        shown += 1
    retired = f" ({name} is {retired_codec_hint(name)})" if name in RETIRED_CODECS and name != given.name else ""
    raise CodecMismatchError(f"{recorded_as} {name}@{made[:shown]}; {given_as} {given.name}@{given_hash[:shown]}"
                             + retired)


# ---- checksums.json ------------------------------------------------------------------------------------


def checksums_payload(folder: Path) -> dict[str, Any]:
    """The ``checksums.json`` content for the model files in ``folder`` (hashed now)."""
    return {"format": CHECKSUMS_FORMAT, "version": CHECKSUMS_VERSION, "algorithm": "sha256",
            "files": {name: file_sha256(folder / name) for name in HASHED_FILES}}


def write_checksums(folder: Path) -> dict[str, str]:
    """Hash the model files of ``folder`` and record them in ``folder/checksums.json`` (atomically)."""
    payload = checksums_payload(folder)
    write_text_atomic(folder / CHECKSUMS_NAME, json.dumps(payload, indent=2) + "\n")
    return dict(payload["files"])


def read_checksums(folder: Path) -> dict[str, str] | None:
    """File name → recorded SHA-256 from ``folder/checksums.json``; None when the file is absent."""
    path = folder / CHECKSUMS_NAME
    if not path.is_file():
        return None
    data = read_json_object(path, "checksums file")
    if data.get("format") != CHECKSUMS_FORMAT:
        raise FormatError(f"{path}: not a pyramid checksums file")
    if data.get("version") != CHECKSUMS_VERSION or data.get("algorithm") != "sha256":
        raise FormatError(f"{path}: unsupported checksums version {data.get('version')!r} "
                          f"or algorithm {data.get('algorithm')!r}")
    unknown = sorted(set(data) - {"format", "version", "algorithm", "files"})
    files = data.get("files")
    if unknown or not isinstance(files, dict) or WEIGHTS_NAME not in files:
        raise FormatError(f"{path}: malformed (unknown keys {unknown} or no {WEIGHTS_NAME} entry)")
    for name, digest in files.items():
        # Plain file names only: a recorded "../x" must never make verify read outside the folder.
        if name not in HASHED_FILES or not isinstance(digest, str) or not SHA256.match(digest):
            raise FormatError(f"{path}: bad entry {name!r}")
    return dict(files)


def check_checksums(folder: str | Path) -> None:
    """Refuse a model folder whose files differ from its ``checksums.json`` (when it has one).

    The weights' SHA-256 is computed once per process and file state (see ``_hashes``), so loading
    a checked model again costs a ``stat``.

    Raises:
        FormatError: a recorded file's SHA-256 differs (tampered or damaged), or checksums.json is unreadable.
    """
    folder = Path(folder)
    recorded = read_checksums(folder)
    if not recorded:
        return
    for name, expected in sorted(recorded.items()):
        actual = _hashes(folder / name)[0] if name == WEIGHTS_NAME else file_sha256(folder / name)
        if actual != expected:
            raise FormatError(f"{folder / name}: its SHA-256 {actual[:12]}... differs from {expected[:12]}... recorded "
                              f"in {CHECKSUMS_NAME}; the model was modified or damaged (reinstall or re-download it)")
