"""Model folders as release bundles: recorded checksums, verification, structure, atomic installs.

A bundle is ``config.json`` + ``model.safetensors`` + ``README.md`` + ``checksums.json``. The
checksums file records the full SHA-256 of the files that define the model (the README, a model
card people may edit, is left out) so that ``pyramid models verify`` can tell a damaged or
tampered copy from the one that was exported (EnCodec checks its weights' hashes, DAC does not):

    {"format": "pyramid-checksums", "version": 1, "algorithm": "sha256",
     "files": {"config.json": "<64 hex>", "model.safetensors": "<64 hex>"}}

A Hub snapshot without this file is checked against the SHA-256 that names its weights' blob in
the Hub cache (Git LFS files are stored under their SHA-256). Folders are written whole into a
hidden temporary folder beside the target and renamed into place, so an interrupted copy is never
a usable model.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyramid_cli.errors import FormatError, InputError, PyramidError, UsageError
from pyramid_cli.hub import hf, registry
from pyramid_cli.hub.files import (
    CONFIG_NAME,
    README_NAME,
    WEIGHTS_NAME,
    ModelKind,
    is_model_dir,
    model_kind,
    read_config,
    safetensors_header,
)
from pyramid_cli.hub.identity import CHECKSUMS_NAME, HASHED_FILES, SHA256, file_sha256, read_checksums, write_checksums

BUNDLE_FILES = [*HASHED_FILES, README_NAME, CHECKSUMS_NAME]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


# ---- Hub blobs -------------------------------------------------------------------------------------


def _hub_blob_sha256(path: Path) -> str | None:
    """The SHA-256 in the name of the Hub-cache blob that ``path`` links to (LFS files only)."""
    if not path.is_symlink():
        return None
    name = path.resolve().name
    return name if SHA256.match(name) and path.resolve().parent.name == "blobs" else None


# ---- verification ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileCheck:
    name: str
    expected: str | None  # recorded SHA-256, None when nothing was recorded
    actual: str

    @property
    def ok(self) -> bool:
        return self.expected == self.actual


@dataclass(frozen=True)
class VerifyReport:
    """What ``verify`` found: per-file hashes against the record, and structural problems."""

    path: Path
    source: str  # where the expected hashes came from: "checksums.json", "hub blob" or "none"
    files: tuple[FileCheck, ...]
    problems: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return self.source != "none" and not self.problems and all(f.ok for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "ok": self.ok, "source": self.source, "problems": list(self.problems),
                "files": [{"name": f.name, "expected": f.expected, "sha256": f.actual, "ok": f.ok} for f in self.files]}


def check_safetensors(path: Path) -> int:
    """Check a safetensors file's header against its size (no tensor is loaded); returns the parameter count.

    Raises:
        FormatError: truncated, oversized header, unknown dtype, or data offsets that do not tile the file.
    """
    return sum(math.prod(entry.shape) for entry in safetensors_header(path).values())


def verify(folder: Path) -> VerifyReport:
    """Hash the model files of ``folder`` and compare them with the recorded SHA-256; check structure too."""
    problems: list[str] = []
    recorded = read_checksums(folder)
    source = "checksums.json"
    if recorded is None:
        blob = _hub_blob_sha256(folder / WEIGHTS_NAME)
        recorded, source = ({WEIGHTS_NAME: blob}, "hub blob") if blob else ({}, "none")
    checks = tuple(FileCheck(name, recorded.get(name), file_sha256(folder / name))
                   for name in HASHED_FILES if name in recorded or name == WEIGHTS_NAME)
    for action in (lambda: check_safetensors(folder / WEIGHTS_NAME), lambda: describe(folder)):
        try:
            action()
        except PyramidError as error:
            problems.append(str(error))
    return VerifyReport(folder, source, checks, tuple(problems))


# ---- structure -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """A model's kind, name and a one-line structure, with the figures behind it."""

    kind: ModelKind
    name: str
    structure: str
    details: dict[str, Any]


def _first(config: Mapping[str, Any], *keys: str) -> Any:
    return next((config[k] for k in keys if config.get(k) is not None), None)


def describe(folder: Path) -> Summary:
    """Read and validate ``folder/config.json`` (``CodecConfig.from_dict`` for codecs) and summarise it."""
    config = read_config(folder)
    kind = model_kind(folder)
    if kind == "codec":
        from pyramid_cli.codec.config import CodecConfig

        codec = CodecConfig.from_dict(config)
        details: dict[str, Any] = {
            "levels": codec.n_levels, "n_codebooks": list(codec.n_codebooks), "codebook_size": codec.codebook_size,
            "frame_rates": [round(r, 2) for r in codec.frame_rates], "sample_rate": codec.sample_rate,
            "tokens_per_second": round(codec.tokens_per_second(), 2)}
        structure = (f"{codec.n_levels} level{'s' * (codec.n_levels > 1)}, "
                     f"{'+'.join(map(str, codec.n_codebooks))} × {codec.codebook_size} codes, "
                     f"{'/'.join(f'{r:.1f}' for r in codec.frame_rates)} Hz, "
                     f"{codec.tokens_per_second():.1f} tok/s")
        return Summary(kind, codec.name, structure, details)
    return _describe_lm(folder, config)


def _describe_lm(folder: Path, config: dict[str, Any]) -> Summary:
    """Validate with ``LMConfig.from_dict`` where the LM package is present, else check the keys we read."""
    try:
        from pyramid_cli.lm.config import LMConfig
    except ImportError:  # a tree without the LM package: check only the keys read below
        pass
    else:
        config = LMConfig.from_dict(config).to_dict()
    name = config.get("name")
    if not isinstance(name, str) or not name:
        raise FormatError(f"{folder / CONFIG_NAME}: the language model config has no name")
    for key in ("codec_name", "codec_hash"):
        if key in config and not isinstance(config[key], str):
            raise FormatError(f"{folder / CONFIG_NAME}: {key} must be a string")
    details = {"layers": _first(config, "n_layer", "n_layers"), "width": _first(config, "d_model", "n_embd"),
               "heads": _first(config, "n_head", "n_heads"), "layout": config.get("layout"),
               "levels": len(config["n_codebooks"]) if isinstance(config.get("n_codebooks"), list) else None,
               "codec_name": config.get("codec_name") or None, "codec_hash": config.get("codec_hash") or None}
    parts = [f"{details['layers']} layers" if details["layers"] is not None else "",
             f"width {details['width']}" if details["width"] is not None else "",
             f"{details['layout']}" if details["layout"] else "",
             f"on {details['codec_name']}" if details["codec_name"] else ""]
    return Summary("lm", name, ", ".join(p for p in parts if p) or "language model", details)


def folder_size(folder: Path) -> int:
    """Bytes of the files in ``folder`` (links followed: Hub snapshots link to blobs)."""
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


@dataclass(frozen=True)
class ModelEntry:
    """One row of ``pyramid models list``."""

    name: str
    origin: str
    path: Path
    size_bytes: int
    kind: str | None
    structure: str  # or the reason the folder could not be read

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "origin": self.origin, "path": str(self.path), "size_bytes": self.size_bytes,
                "kind": self.kind, "structure": self.structure}


def list_models() -> list[ModelEntry]:
    """Every model reachable without the network: bundled, then the user cache, then the Hub cache."""
    found = [(name, "bundled", path) for name, path in registry.bundled_models().items()]
    found += [(name, "cache", path) for name, path in registry.cached_models().items()]
    found += [(str(snap.ref), "hf", snap.path) for snap in hf.cached_snapshots()]
    entries = []
    for name, origin, path in found:
        try:
            summary = describe(path)
            kind, structure = summary.kind, summary.structure
        except PyramidError as error:  # one broken folder must not hide the others
            kind, structure = None, f"unreadable: {error}"
        entries.append(ModelEntry(name, origin, path, folder_size(path), kind, structure))
    return entries


# ---- atomic folders ------------------------------------------------------------------------------------


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise UsageError(f"{name!r}: a model name uses letters, digits, '.', '_' and '-' (no paths)")
    return name


def write_folder(target: Path, files: Mapping[str, Path | bytes], *, force: bool,
                 finish: Callable[[Path], None] | None = None) -> Path:
    """Create ``target`` holding ``files`` (name → source file or bytes) all at once.

    Everything is written into a hidden temporary folder beside ``target``; ``finish(tmp)`` may
    add or check files there; only then does a rename put it in place. An existing ``target`` is
    replaced only with ``force`` and only when it is a model folder or empty, never any other folder.

    Raises:
        InputError: ``target`` exists (without ``force``) or is not a model folder.
    """
    if target.exists():
        if not target.is_dir():
            raise InputError(f"{target}: exists and is not a folder")
        if not force:
            raise InputError(f"{target} already exists; replacing it must be forced",
                             option="force")
        entries = list(target.iterdir())
        # A run folder has a config.json too: a model folder also has weights and no sub-folders.
        if entries and not (is_model_dir(target) and not any(p.is_dir() for p in entries)):
            raise InputError(f"{target}: not a model folder; refusing to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        for name, source in files.items():
            if isinstance(source, bytes):
                (tmp / name).write_bytes(source)
            else:
                shutil.copyfile(source, tmp / name)  # follows links: Hub snapshots link to blobs
        if finish is not None:
            finish(tmp)
        for path in tmp.iterdir():  # data on disk before the rename makes the folder visible
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700 folders; give the mode mkdir would
        old = None
        if target.exists():  # rename() cannot replace a non-empty folder: move it aside first
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.replace(target, old / "x")
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def install(source: Path, name: str, *, force: bool) -> Path:
    """Copy a model folder into the user cache as ``$PYRAMID_HOME/models/<name>``, with checksums.

    A recorded ``checksums.json`` (or the Hub blob's hash) is checked on the copy before it is
    put in place; without one, the copy's hashes are recorded.
    """
    check_name(name)
    if name in registry.bundled_models():
        raise UsageError(f"{name} is the name of a bundled model, which would hide the cached copy; choose "
                         "another name")
    expected = verify(source)
    if expected.source != "none" and not expected.ok:
        raise FormatError(f"{source}: fails verification before copying ({failure_reason(expected)})")
    names = [n for n in BUNDLE_FILES if (source / n).is_file() and n != CHECKSUMS_NAME]

    def finish(tmp: Path) -> None:
        actual = write_checksums(tmp)
        for check in expected.files:
            if check.expected is not None and actual[check.name] != check.expected:
                raise FormatError(f"{check.name}: the copy does not match the recorded sha256")

    return write_folder(registry.cache_root() / name, {n: source / n for n in names}, force=force, finish=finish)


def remove(name: str) -> str:
    """Delete a cached model: ``$PYRAMID_HOME/models/<name>``, or ``hf://org/repo[@rev]`` from the Hub cache.

    Bundled models and explicit folders are never touched. Returns what was removed, for people.
    """
    if hf.is_hub_ref(name):
        ref = hf.parse_hub_ref(name)
        freed = hf.remove_cached(ref)
        return f"{ref} from the Hugging Face cache ({freed / 2**20:.1f} MiB freed)"
    location = registry.locate_model(name, download=False)
    if location.origin != "cache":
        where = {"bundled": "it is bundled with pyramid", "path": "it is a folder, not a cached model",
                 "hf": "it is in the Hugging Face cache"}[location.origin]
        raise InputError(f"{name}: cannot remove it: {where}")
    aside = location.path.with_name(f".{location.path.name}.removing")
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(aside)
    os.replace(location.path, aside)  # gone from the registry at once, even if the delete is interrupted
    shutil.rmtree(aside)
    return str(location.path)


def failure_reason(report: VerifyReport) -> str:
    """One line saying why ``report`` is not ok."""
    if report.source == "none":
        return (f"no recorded sha256 to verify against (no {CHECKSUMS_NAME}; `pyramid export` writes one); "
                f"{WEIGHTS_NAME} sha256 is {report.files[0].actual}")
    bad = [f"{f.name} sha256 {f.actual[:16]}… ≠ recorded {(f.expected or '?')[:16]}…" for f in report.files if not f.ok]
    return "; ".join(bad + list(report.problems))
