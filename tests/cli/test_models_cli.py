"""`pyramid models list | show | verify | path | rm`, `download`, `export`, `upload`: exit codes and output.

Commands run in-process through `pyramid_cli.cli.main` (the installed command's error mapping);
two run the real entry point in a subprocess. Everything is offline: a Hub cache is laid out on
disk and `HF_HUB_OFFLINE=1` is set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hub_helpers import lay_out_hub_cache  # the layout huggingface_hub writes (tests/hub_helpers.py)

from pyramid_cli.cli import main
from pyramid_cli.codec import CodecConfig, PyramidCodec
from pyramid_cli.hub import identity, registry

TINY = CodecConfig(name="tiny-p111", encoder_dim=4, latent_dim=8, decoder_dim=32, codebook_size=64)


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def one_line_error(self, text: str) -> bool:
        return (self.stderr.strip().count("\n") == 0 and text in self.stderr and "Traceback" not in self.stderr
                and self.stderr.startswith("error:"))


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Private caches, offline, an empty bundled-models folder; the variables for a subprocess too."""
    variables = {"PYRAMID_HOME": str(tmp_path / "pyramid-home"), "HF_HOME": str(tmp_path / "hf-home"),
                 "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    root = tmp_path / "bundled"
    root.mkdir()
    monkeypatch.setattr(registry, "model_roots", lambda: [root])
    return variables


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], env: dict[str, str]) -> Callable[..., Result]:
    def run(*args: str) -> Result:
        with pytest.raises(SystemExit) as exit_info:
            main(list(args))
        out, err = capsys.readouterr()
        return Result(int(exit_info.value.code or 0), out, err)

    return run


def make_run(run: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    PyramidCodec(TINY).save_pretrained(run / "export", fp16=True)
    (run / "config.json").write_text(json.dumps({"model": "p111", "steps": 10}))
    (run / "metrics.jsonl").write_text(json.dumps({"kind": "eval", "step": 10, "mel": 1.5}) + "\n")
    return run


@pytest.fixture
def release_dir(cli: Callable[..., Result], tmp_path: Path) -> Path:
    result = cli("export", str(make_run(tmp_path / "run")), str(tmp_path / "release"))
    assert result.code == 0, result.stderr
    return tmp_path / "release"


def test_commands_are_listed(cli):
    result = cli("--help")
    assert result.code == 0 and all(name in result.stdout for name in ("models", "download", "export", "upload"))
    result = cli("models", "--help")
    assert result.code == 0 and all(name in result.stdout for name in ("list", "show", "verify", "path", "rm"))


def test_export_writes_a_bundle_and_refuses_to_overwrite(cli, release_dir: Path, tmp_path: Path):
    assert sorted(p.name for p in release_dir.iterdir()) == [
        "README.md", "checksums.json", "config.json", "model.safetensors"]
    again = cli("export", str(tmp_path / "run"), str(release_dir))
    assert again.code == 1 and again.one_line_error("already exists; replacing it must be forced (--force)")
    forced = cli("export", str(make_run(tmp_path / "run2", seed=1)), str(release_dir), "--force", "--json")
    assert forced.code == 0, forced.stderr
    summary = json.loads(forced.stdout)
    assert summary["sha256"] == identity.file_sha256(release_dir / "model.safetensors")
    assert (summary["kind"], summary["step"], summary["last_eval"]["mel"]) == ("codec", 10, 1.5)
    missing = cli("export", str(tmp_path / "no-run"), str(tmp_path / "out"))
    assert missing.code == 1 and missing.one_line_error("no such run folder")


def test_list_show_path(cli, release_dir: Path, env: dict[str, str]):
    empty = cli("models", "list")
    assert empty.code == 0 and "no models installed" in empty.stderr and empty.stdout == ""
    assert cli("download", str(release_dir), "--name", "mine").code == 0
    lay_out_hub_cache(Path(env["HF_HOME"]) / "hub", "org/tiny", release_dir)
    listed = cli("models", "list", "--json")
    assert listed.code == 0, listed.stderr
    rows = {(r["name"], r["origin"], r["kind"]) for r in json.loads(listed.stdout)}
    assert rows == {("mine", "cache", "codec"), ("hf://org/tiny", "hf", "codec")}
    assert all("3 levels" in r["structure"] and r["size_bytes"] > 0 for r in json.loads(listed.stdout))
    table = cli("models", "list")
    assert table.code == 0 and "mine" in table.stderr and "origin" in table.stderr and table.stdout == ""

    shown = cli("models", "show", "mine", "--json")
    assert shown.code == 0, shown.stderr
    details = json.loads(shown.stdout)
    assert details["sha256"] == details["recorded_sha256"] == identity.file_sha256(release_dir / "model.safetensors")
    digest = identity.weights_hash(Path(details["path"]) / "model.safetensors")
    assert details["identity"] == f"tiny-p111@{digest}" and details["config"]["name"] == "tiny-p111"
    assert details["readme_head"][0] == "# tiny-p111"
    human = cli("models", "show", "hf://org/tiny")
    assert human.code == 0 and "config.json" in human.stderr and "# tiny-p111" in human.stderr

    path = cli("models", "path", "mine")
    assert path.code == 0 and path.stdout == f"{registry.cache_root() / 'mine'}\n" and path.stderr == ""
    unknown = cli("models", "path", "nope")
    assert unknown.code == 1 and unknown.one_line_error("unknown model 'nope'")


def test_verify(cli, release_dir: Path):
    ok = cli("models", "verify", str(release_dir))
    assert ok.code == 0 and "verified" in ok.stderr
    report = cli("models", "verify", str(release_dir), "--json")
    assert report.code == 0 and json.loads(report.stdout)["ok"] is True
    weights = release_dir / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01
    weights.write_bytes(bytes(data))
    bad = cli("models", "verify", str(release_dir), "--json")
    assert bad.code == 1 and json.loads(bad.stdout)["ok"] is False
    assert "error:" in bad.stderr and "model.safetensors sha256" in bad.stderr and "Traceback" not in bad.stderr
    (release_dir / "checksums.json").unlink()
    unrecorded = cli("models", "verify", str(release_dir))
    assert unrecorded.code == 1 and "no recorded sha256 to verify against" in unrecorded.stderr


def test_rm_only_touches_caches(cli, release_dir: Path, env: dict[str, str], tmp_path: Path):
    assert cli("download", str(release_dir), "--name", "mine").code == 0
    lay_out_hub_cache(Path(env["HF_HOME"]) / "hub", "org/tiny", release_dir)
    PyramidCodec(TINY).save_pretrained(tmp_path / "bundled" / "shipped")
    result = cli("models", "rm", "mine")
    assert result.code == 0 and "removed" in result.stderr and not (registry.cache_root() / "mine").exists()
    assert cli("models", "rm", "hf://org/tiny").code == 0
    assert not (Path(env["HF_HOME"]) / "hub" / "models--org--tiny").exists()
    for name, message in [("shipped", "bundled with pyramid"), (str(release_dir), "a folder, not a cached model"),
                          ("mine", "unknown model"), ("hf://org/tiny", "not in the Hugging Face cache")]:
        refused = cli("models", "rm", name)
        assert refused.code == 1 and refused.one_line_error(message), refused.stderr
    assert (tmp_path / "bundled" / "shipped").is_dir() and release_dir.is_dir()


def test_download_from_the_hub_cache_offline(cli, release_dir: Path, env: dict[str, str]):
    snapshot = lay_out_hub_cache(Path(env["HF_HOME"]) / "hub", "org/tiny", release_dir, refs=("main", "v1"))
    result = cli("download", "hf://org/tiny")
    assert result.code == 0 and "already cached" in result.stderr and "sha256 verified" in result.stderr
    result = cli("download", "hf://org/tiny", "--revision", "v1", "--name", "tiny-v1", "--json")
    assert result.code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["downloaded"] is False and Path(summary["path"]).resolve() == snapshot.resolve()
    assert summary["installed"] == str(registry.cache_root() / "tiny-v1")
    assert summary["checksum_source"] == "checksums.json"
    assert registry.locate_model("tiny-v1").origin == "cache"
    again = cli("download", "hf://org/tiny", "--name", "tiny-v1")
    assert again.code == 1 and again.one_line_error("already exists; replacing it must be forced (--force)")
    forced = cli("download", "hf://org/tiny", "--name", "tiny-v1", "--force")
    assert forced.code == 1 and forced.one_line_error("needs the network, which HF_HUB_OFFLINE=1 forbids")
    miss = cli("download", "hf://org/other")
    assert miss.code == 1 and miss.one_line_error("run `pyramid download hf://org/other` with network access")


@pytest.mark.parametrize(("args", "message"), [
    (["download", "hf://not-a-repo"], "hf://ORG/REPO"),
    (["download", "hf://org/tiny@v1", "--revision", "v2"], "the revision asked for is 'v2' (--revision)"),
    (["download"], "Missing argument"),
    (["download", "org/tiny"], "write hf://org/tiny"),
    (["download", "hf://org/tiny", "--name", "../x"], "a model name uses"),
    (["upload", "x", "not a repo"], "hf://ORG/REPO"),
    (["upload", "x", "org/repo@v1"], "main branch"),
    (["export", "only-one"], "Missing argument"),
    (["models", "show"], "Missing argument"),
])
def test_usage_errors_exit_2(cli, args: list[str], message: str):
    result = cli(*args)
    assert result.code == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_upload_checks_the_bundle_first(cli, release_dir: Path, tmp_path: Path):
    missing = cli("upload", str(tmp_path / "nope"), "org/repo")
    assert missing.code == 1 and missing.one_line_error("no such folder")
    (release_dir / "README.md").rename(tmp_path / "README.md")
    partial = cli("upload", str(release_dir), "org/repo")
    assert partial.code == 1 and partial.one_line_error("not a release bundle (missing README.md)")
    (tmp_path / "README.md").rename(release_dir / "README.md")
    (release_dir / "config.json").write_text((release_dir / "config.json").read_text() + " ")
    tampered = cli("upload", str(release_dir), "org/repo")
    assert tampered.code == 1 and tampered.one_line_error("config.json sha256")


def test_real_entry_point_without_a_token(release_dir: Path, env: dict[str, str], tmp_path: Path):
    """No token: one line, exit 1, before any network access; stdout stays empty."""
    variables = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    done = subprocess.run([sys.executable, "-m", "pyramid_cli", "upload", str(release_dir), "hf://org/repo"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, env={**variables, **env})
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("error: uploading needs a Hugging Face token") and "Traceback" not in done.stderr
    listed = subprocess.run([sys.executable, "-m", "pyramid_cli", "models", "list", "--json"], capture_output=True,
                            text=True, timeout=300, cwd=tmp_path, env={**variables, **env})
    assert listed.returncode == 0 and listed.stderr == ""
    assert [m for m in json.loads(listed.stdout) if m["origin"] != "bundled"] == [], "the cache stays empty"
