"""``hf://org/repo[@rev]`` references and the Hugging Face Hub cache (``pyramid_cli.hub.hf``): the real
``huggingface_hub`` code against a cache laid out here, offline, with sockets disabled: a cached
model resolves without touching the network, a miss names the command to run."""

from __future__ import annotations

from pathlib import Path

import pytest
from hub_helpers import COMMIT, lay_out_hub_cache

from pyramid_cli.codec.api import load_codec
from pyramid_cli.errors import InputError, UsageError
from pyramid_cli.hub import hf, identity, registry


@pytest.mark.parametrize(("text", "repo", "revision"), [
    ("hf://org/repo", "org/repo", None), ("hf://org/repo@v1.0", "org/repo", "v1.0"),
    (f"hf://Org-1/my.model_2@{COMMIT}", "Org-1/my.model_2", COMMIT), ("org/repo", "org/repo", None)])
def test_parse_hub_refs(text: str, repo: str, revision: str | None):
    ref = hf.parse_hub_ref(text)
    assert (ref.repo_id, ref.revision) == (repo, revision)
    assert str(ref) == ("hf://" + text.removeprefix("hf://"))


@pytest.mark.parametrize("text", ["hf://", "hf://repo", "hf://a/b/c", "hf://org/re po", "hf://org/a--b",
                                  "hf://org/repo@", "hf://-org/repo"])
def test_bad_hub_refs_are_usage_errors(text: str):
    with pytest.raises(UsageError):
        hf.parse_hub_ref(text)


def test_revision_option_and_pin_must_agree():
    assert hf.parse_hub_ref("hf://org/repo", revision="v2").revision == "v2"
    assert hf.parse_hub_ref("hf://org/repo@v2", revision="v2").revision == "v2"
    with pytest.raises(UsageError, match="pins revision 'v1' but the revision asked for is 'v2'"):
        hf.parse_hub_ref("hf://org/repo@v1", revision="v2")


def test_hub_cache_dir_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    assert hf.hub_cache_dir() == tmp_path / "hf-home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    assert hf.hub_cache_dir() == tmp_path / "hub-cache"
    assert hf.offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert not hf.offline()


def test_offline_hub_hits_resolve_through_huggingface_hub(codec_dir: Path, no_network: list[object]):
    cache = hf.hub_cache_dir()
    snapshot = lay_out_hub_cache(cache, "org/tiny", codec_dir, refs=("main", "v1"))
    for ref in ("hf://org/tiny", "hf://org/tiny@v1", f"hf://org/tiny@{COMMIT}"):
        location = registry.locate_model(ref, kind="codec")
        assert location.path.resolve() == snapshot.resolve() and location.origin == "hf"
    assert registry.locate_model("hf://org/tiny").name == "hf://org/tiny"
    model, name, digest = load_codec("hf://org/tiny")
    assert (name, digest) == identity.codec_identity(codec_dir)
    assert no_network == []


def test_offline_miss_names_the_command_to_run(codec_dir: Path, no_network: list[object]):
    lay_out_hub_cache(hf.hub_cache_dir(), "org/tiny", codec_dir)
    with pytest.raises(InputError, match="HF_HUB_OFFLINE=1.*run `pyramid download hf://org/other` with network"):
        registry.resolve_model("hf://org/other")
    with pytest.raises(InputError, match="run `pyramid download hf://org/tiny@v9`"):
        registry.resolve_model("hf://org/tiny@v9")
    assert no_network == []


def test_an_interrupted_download_is_not_a_model(codec_dir: Path, no_network: list[object]):
    """config.json linked but the weights never arrived: a miss, not a half model."""
    lay_out_hub_cache(hf.hub_cache_dir(), "org/tiny", codec_dir, skip=("model.safetensors",))
    with pytest.raises(InputError, match="is not in the Hugging Face cache"):
        registry.resolve_model("hf://org/tiny")


def test_online_a_cache_hit_does_not_download(codec_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                              no_network: list[object]):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    calls: list[str] = []

    def fake_download(ref: hf.HubRef, cache: Path, force: bool) -> Path:  # what snapshot_download leaves
        calls.append(str(ref))
        return lay_out_hub_cache(cache, ref.repo_id, codec_dir)

    monkeypatch.setattr(hf, "_download", fake_download)
    with pytest.raises(InputError, match="is not downloaded.*run `pyramid download hf://org/tiny`"):
        registry.resolve_model("hf://org/tiny", download=False)
    first = hf.fetch(hf.parse_hub_ref("hf://org/tiny"))
    again = hf.fetch(hf.parse_hub_ref("hf://org/tiny"))
    assert first.downloaded and not again.downloaded and first.path == again.path
    assert calls == ["hf://org/tiny"] and no_network == []


def test_cached_snapshots_and_removal(codec_dir: Path, tmp_path: Path):
    cache = hf.hub_cache_dir()
    (tmp_path / "empty").mkdir()
    lay_out_hub_cache(cache, "org/tiny", codec_dir)
    lay_out_hub_cache(cache, "org/pinned", codec_dir, commit="1" * 40, refs=("v1",))
    lay_out_hub_cache(cache, "org/not-a-model", tmp_path / "empty", commit="2" * 40)
    found = {str(s.ref): s for s in hf.cached_snapshots()}
    assert set(found) == {"hf://org/tiny", "hf://org/pinned@v1"}
    assert found["hf://org/tiny"].commit == COMMIT and found["hf://org/tiny"].size_bytes > 0
    assert hf.remove_cached(hf.parse_hub_ref("hf://org/tiny")) > 0
    assert not (cache / "models--org--tiny").exists() and (cache / "models--org--pinned").is_dir()
    with pytest.raises(InputError, match="not in the Hugging Face cache"):
        hf.remove_cached(hf.parse_hub_ref("hf://org/tiny"))
