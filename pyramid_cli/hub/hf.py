"""The Hugging Face Hub side of the registry: ``hf://org/repo[@rev]`` references, the Hub cache, uploads.

Models are kept in the Hub's own cache (``models--org--repo/{refs,snapshots,blobs}``), shared with
every other Hub client, so nothing is stored twice and ``huggingface_hub`` keeps downloads atomic
(files land in ``blobs/`` under a temporary name and are linked into the snapshot once complete).
The cache location and offline mode are read from the environment at each call rather than from
``huggingface_hub.constants`` (frozen when it is first imported), so they can change at run time:
``HF_HUB_CACHE``, else ``$HF_HOME/hub``; ``HF_HUB_OFFLINE=1`` forbids any network access.

A cache hit never touches the network: ``snapshot_download(local_files_only=True)`` is tried first
and the Hub is asked only on a miss (UX §5; snac#25, audiocraft#513).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from pyramid_cli.errors import InputError, UsageError
from pyramid_cli.hub.files import is_model_dir

SCHEME = "hf://"
# Only what a model folder holds is fetched (a repo may also carry training logs or samples).
MODEL_FILES = ["config.json", "model.safetensors", "README.md", "checksums.json"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class HubRef:
    """A Hub model: ``repo_id`` (``org/repo``) and an optional revision (branch, tag or commit)."""

    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return f"{SCHEME}{self.repo_id}" + (f"@{self.revision}" if self.revision else "")


@dataclass(frozen=True)
class Fetched:
    """A snapshot folder and whether this call downloaded it (False: it was already cached)."""

    path: Path
    downloaded: bool


@dataclass(frozen=True)
class CachedSnapshot:
    """One cached revision of a Hub model repository."""

    ref: HubRef
    path: Path
    commit: str
    size_bytes: int


def is_hub_ref(text: str) -> bool:
    return text.startswith(SCHEME)


def looks_like_repo_id(text: str) -> bool:
    """``org/repo`` written without ``hf://`` (the CLI suggests the scheme when no such folder exists)."""
    return bool(_REPO_ID.match(text))


def parse_hub_ref(text: str, revision: str | None = None) -> HubRef:
    """``hf://org/repo[@rev]`` (the scheme is optional here) → ``HubRef``; ``revision`` overrides none.

    Raises:
        UsageError: a malformed repository id, or two different revisions.
    """
    body = text[len(SCHEME):] if is_hub_ref(text) else text
    repo_id, _, pinned = body.partition("@")
    repo_id = repo_id.strip("/")
    if not _REPO_ID.match(repo_id) or "--" in repo_id or ".." in repo_id:
        raise UsageError(f"{text}: a Hugging Face model is named hf://ORG/REPO[@REVISION]")
    if "@" in body and not pinned.strip():
        raise UsageError(f"{text}: empty revision after '@'")
    if pinned and revision and pinned != revision:
        raise UsageError(f"{text}: the reference pins revision {pinned!r} but the revision asked for is {revision!r}",
                         option="revision")
    return HubRef(repo_id, pinned or revision or None)


def hub_cache_dir() -> Path:
    """The Hub cache: ``HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    home = os.environ.get("HF_HOME")
    if home:
        return Path(home).expanduser() / "hub"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "huggingface" / "hub"


def offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set to 1/true/yes/on."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().lower() in _TRUE


def _cached(ref: HubRef) -> Path | None:
    """The complete cached snapshot of ``ref``, or None; reads the disk only."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import LocalEntryNotFoundError

    try:
        path = Path(snapshot_download(ref.repo_id, revision=ref.revision, cache_dir=hub_cache_dir(),
                                      allow_patterns=MODEL_FILES, local_files_only=True))
    except LocalEntryNotFoundError:  # IncompleteSnapshotError (huggingface_hub >= 1.x) is a subclass
        return None
    # An interrupted download can leave config.json linked but not the weights: not a model yet.
    return path if is_model_dir(path) else None


def fetch(ref: HubRef, *, download: bool = True, force: bool = False) -> Fetched:
    """The local snapshot folder of ``ref``: from the cache if complete there, else downloaded.

    Args:
        download: allowed to download on a miss (never when ``offline()``).
        force: download again even when cached (repairs a damaged cache).

    Raises:
        InputError: a miss that may not be downloaded (naming the command to run), an unknown
            repository or revision, a network failure, or a repository that is not a model folder.
    """
    cache = hub_cache_dir()
    if not force:
        path = _cached(ref)
        if path is not None:
            return Fetched(path, downloaded=False)
    if offline() and force:
        raise InputError(f"{ref}: downloading again needs the network, which HF_HUB_OFFLINE=1 forbids")
    if offline():
        raise InputError(f"{ref} is not in the Hugging Face cache ({cache}) and HF_HUB_OFFLINE=1 forbids "
                         f"downloading it: run `pyramid download {ref}` with network access")
    if not download:
        raise InputError(f"{ref} is not downloaded (Hugging Face cache: {cache}): run `pyramid download {ref}`")
    path = _download(ref, cache, force)
    if not is_model_dir(path):
        raise InputError(f"{ref}: the repository holds no config.json and model.safetensors (not a pyramid model)")
    return Fetched(path, downloaded=True)


def _download(ref: HubRef, cache: Path, force: bool) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return Path(snapshot_download(ref.repo_id, revision=ref.revision, cache_dir=cache,
                                      allow_patterns=MODEL_FILES, force_download=force))
    except GatedRepoError:
        raise InputError(f"{ref}: a gated repository; accept its terms on huggingface.co and log in "
                         "(`hf auth login`)") from None
    except RepositoryNotFoundError:
        raise InputError(f"{ref}: no such model repository on the Hugging Face Hub (or it is private: "
                         "log in with `hf auth login` or set HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise InputError(f"{ref}: {ref.repo_id} has no revision {ref.revision!r}") from None
    except LocalEntryNotFoundError:
        raise InputError(f"{ref}: cannot reach the Hugging Face Hub and the model is not cached ({cache}); "
                         "check the network and retry") from None
    except HfHubHTTPError as error:
        raise InputError(f"{ref}: the Hugging Face Hub refused ({str(error).splitlines()[0]})") from None
    except OSError as error:
        raise InputError(f"{ref}: download failed ({error.strerror or error})") from None


def cached_snapshots() -> list[CachedSnapshot]:
    """Every cached revision of a Hub repository that holds a model folder (for ``models list``)."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.utils import CacheNotFound

    cache = hub_cache_dir()
    if not cache.is_dir():
        return []
    try:
        info = scan_cache_dir(cache)
    except CacheNotFound:
        return []
    found: list[CachedSnapshot] = []
    for repo in sorted(info.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model":
            continue
        for revision in sorted(repo.revisions, key=lambda r: r.commit_hash):
            if not is_model_dir(Path(revision.snapshot_path)):
                continue
            refs = sorted(revision.refs)
            pinned = None if "main" in refs else (refs[0] if refs else revision.commit_hash)
            found.append(CachedSnapshot(HubRef(repo.repo_id, pinned), Path(revision.snapshot_path),
                                        revision.commit_hash, revision.size_on_disk))
    return found


def remove_cached(ref: HubRef) -> int:
    """Delete ``ref`` from the Hub cache (every revision, or only the pinned one); returns the bytes freed.

    Uses ``huggingface_hub``'s own delete strategy, so blobs shared with other revisions stay.
    """
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.utils import CacheNotFound

    cache = hub_cache_dir()
    try:
        info = scan_cache_dir(cache) if cache.is_dir() else None
    except CacheNotFound:
        info = None
    hashes = [revision.commit_hash
              for repo in (info.repos if info else ()) if repo.repo_id == ref.repo_id and repo.repo_type == "model"
              for revision in repo.revisions
              if ref.revision in (None, revision.commit_hash) or ref.revision in revision.refs]
    if info is None or not hashes:
        raise InputError(f"{ref} is not in the Hugging Face cache ({cache})")
    strategy = info.delete_revisions(*hashes)
    strategy.execute()
    return int(strategy.expected_freed_size)


def upload_bundle(folder: Path, ref: HubRef, *, private: bool, message: str, files: list[str]) -> str:
    """Upload ``files`` of ``folder`` to the model repository ``ref`` (created if needed); returns its URL.

    Raises:
        InputError: no token, offline mode, or a refusal by the Hub.
    """
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.utils import HfHubHTTPError

    token = get_token()
    if not token:
        raise InputError("uploading needs a Hugging Face token with write access: run `hf auth login` "
                         "or set HF_TOKEN")
    if offline():
        raise InputError("HF_HUB_OFFLINE=1 forbids network access; unset it to upload")
    api = HfApi(token=token)
    try:
        url = api.create_repo(ref.repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(repo_id=ref.repo_id, folder_path=folder, revision=ref.revision, commit_message=message,
                          allow_patterns=files)
    except HfHubHTTPError as error:
        raise InputError(f"{ref}: the Hugging Face Hub refused the upload ({str(error).splitlines()[0]})") from None
    except OSError as error:
        raise InputError(f"{ref}: upload failed ({error.strerror or error})") from None
    return str(url)
