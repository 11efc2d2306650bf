"""`pyramid models list | show | verify | path | rm`, `pyramid download`, `pyramid export`, `pyramid upload`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from pyramid_cli.cli._shared import JsonOption, console, print_json
from pyramid_cli.errors import FormatError, InputError, UsageError
from pyramid_cli.hub import bundle, hf, identity, registry
from pyramid_cli.hub.files import README_NAME, WEIGHTS_NAME, read_config

app = typer.Typer(help="List, inspect, verify and remove models: bundled, cached, and from the Hugging Face Hub.",
                  no_args_is_help=True)

ModelArgument = Annotated[str, typer.Argument(
    help="A model: a bundled or cached NAME, a folder, or hf://ORG/REPO\\[@REV] (already downloaded).",
    show_default=False)]
README_HEAD_LINES = 12


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.1f} MiB" if n_bytes >= 2**20 else f"{n_bytes / 2**10:.0f} KiB"


@app.command("list")
def list_models(json_output: JsonOption = False) -> None:
    """List the models usable offline: bundled with pyramid, in the user cache, and in the Hugging Face cache.

    The user cache is $PYRAMID_HOME/models (default ~/.cache/pyramid/models); the Hugging Face
    cache is $HF_HUB_CACHE (default ~/.cache/huggingface/hub).
    """
    entries = bundle.list_models()
    if json_output:
        print_json([entry.to_dict() for entry in entries])
        return
    if not entries:
        console.print("no models installed: `pyramid download hf://ORG/REPO` fetches one, "
                      "or pass --model DIR to the commands that need one")
        return
    table = Table(title="models")
    for column in ("name", "kind", "structure", "size", "origin"):
        table.add_column(column, overflow="fold")
    for entry in entries:
        table.add_row(escape(entry.name), entry.kind or "[red]?[/red]", escape(entry.structure),
                      _size(entry.size_bytes), entry.origin)
    console.print(table)


def _readme_head(path: Path) -> list[str]:
    """The first lines of a model card after its YAML front matter."""
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    if lines and lines[0].strip() == "---":
        closing = next((i for i, line in enumerate(lines[1:], start=1) if line.strip() == "---"), 0)
        lines = lines[closing + 1:]
    while lines and not lines[0].strip():
        lines = lines[1:]
    return lines[:README_HEAD_LINES]


@app.command()
def show(name: ModelArgument, json_output: JsonOption = False) -> None:
    """Show a model's config, the head of its model card and the hash of its weights."""
    location = registry.locate_model(name, download=False)
    summary = bundle.describe(location.path)
    sha256 = identity.file_sha256(location.path / WEIGHTS_NAME)
    recorded = identity.read_checksums(location.path) or {}
    config, size = read_config(location.path), bundle.folder_size(location.path)
    readme = _readme_head(location.path / README_NAME)
    rows: dict[str, str | None] = {
        "name": location.name, "kind": summary.kind, "structure": summary.structure,
        "identity": f"{summary.name}@{identity.weights_hash(location.path / WEIGHTS_NAME)}", "sha256": sha256,
        "recorded_sha256": recorded.get(WEIGHTS_NAME), "origin": location.origin, "path": str(location.path)}
    if json_output:
        print_json({**rows, "model_name": summary.name, "details": summary.details, "size_bytes": size,
                    "config": config, "readme_head": readme})
        return
    table = Table(show_header=False, box=None)
    for key, value in rows.items():
        table.add_row(f"[bold]{key.replace('_', ' ')}[/bold]", escape(value or "not recorded"))
    table.add_row("[bold]size[/bold]", _size(size))
    console.print(table)
    settings = Table(title="config.json", title_justify="left", show_header=False, box=None)
    for key, value in config.items():
        settings.add_row(f"  {escape(key)}", escape(json.dumps(value)))
    console.print(settings)
    if readme:
        console.print("[bold]README.md[/bold] (head)")
        console.print(escape("\n".join(readme)), soft_wrap=True)


@app.command()
def verify(name: ModelArgument, json_output: JsonOption = False) -> None:
    """Check a model's weights against their recorded sha256 (checksums.json); exit 1 on a mismatch.

    Also checks that config.json is valid for its kind and that the safetensors file is whole. A
    Hub download without checksums.json is checked against the sha256 the Hub cache stores it under.
    """
    location = registry.locate_model(name, download=False)
    report = bundle.verify(location.path)
    if json_output:
        print_json(report.to_dict())
    else:
        table = Table(title=f"{escape(location.name)} (recorded in: {report.source})")
        for column in ("file", "sha256", "status"):
            table.add_column(column, overflow="fold")
        for check in report.files:
            status = ("[green]ok[/green]" if check.ok else f"[red]MISMATCH[/red] (recorded {check.expected[:16]}…)"
                      if check.expected else "[yellow]unrecorded[/yellow]")
            table.add_row(check.name, check.actual, status)
        console.print(table)
        for problem in report.problems:
            console.print(f"[red]problem[/red]: {escape(problem)}", soft_wrap=True)
    if not report.ok:
        raise FormatError(f"{location.name}: {bundle.failure_reason(report)}")
    if not json_output:
        console.print(f"[green]verified[/green]: {escape(location.name)} matches its recorded checksums")


@app.command()
def path(name: ModelArgument) -> None:
    """Print a model's folder on stdout (for scripts: `ls $(pyramid models path NAME)`)."""
    sys.stdout.write(f"{registry.resolve_model(name, download=False)}\n")


@app.command("rm")
def rm(name: Annotated[str, typer.Argument(
        help="A model in the user cache (NAME) or in the Hugging Face cache (hf://ORG/REPO\\[@REV]).",
        show_default=False)]) -> None:
    """Remove a downloaded model from the cache; bundled models and other folders are never removed."""
    console.print(f"removed {escape(bundle.remove(name))}")


# ---- top-level commands: download, export, upload ----------------------------------------------------


def download(
    ref: Annotated[str, typer.Argument(
        help="hf://ORG/REPO\\[@REV] (a Hugging Face model), or a local model folder to install into the cache.",
        show_default=False)],
    revision: Annotated[str | None, typer.Option(help="Branch, tag or commit to fetch (same as @REV).")] = None,
    name: Annotated[str | None, typer.Option(
        help="Also copy the model into the user cache under NAME, so that --model NAME finds it.")] = None,
    force: Annotated[bool, typer.Option("--force", "-f", help="Download again even if cached, and replace an "
                                        "existing --name copy.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Download a model from the Hugging Face Hub into its cache, checked and ready to use offline.

    An already-cached model is not fetched again (nothing touches the network); --force fetches
    it anew and replaces an existing --name copy. Downloads are atomic: an interrupted one is
    never used. Afterwards, with HF_HUB_OFFLINE=1, the model works as --model hf://ORG/REPO.

    Examples:

      pyramid download hf://org/pyramid-22k-p111

      pyramid download hf://org/pyramid-22k-p111@v1.0 --name p111-v1   # then --model p111-v1
    """
    from pyramid_cli.hub.release import download_model

    result = download_model(ref, revision=revision, name=name, force=force)
    summary, report = result.summary, result.report
    if json_output:
        print_json({"ref": result.ref, "path": str(result.path), "downloaded": result.downloaded,
                    "kind": summary.kind, "model_name": summary.name, "structure": summary.structure,
                    "verified": report.ok, "checksum_source": report.source,
                    "installed": str(result.installed) if result.installed else None})
        return
    state = ("downloaded" if result.downloaded else "already cached") if result.from_hub else "a local model folder"
    console.print(f"{escape(result.ref)}: {state} → {escape(str(result.path))}")
    console.print(f"  {summary.kind} {escape(summary.name)}: {escape(summary.structure)}; "
                  + ("[green]sha256 verified[/green]" if report.ok else "[yellow]no recorded sha256[/yellow]"))
    if result.installed:
        console.print(f"  installed as [bold]{escape(result.installed.name)}[/bold] → {escape(str(result.installed))}")


def export(
    run_dir: Annotated[Path, typer.Argument(help="A training run folder (holds export/ and metrics.jsonl).",
                                            show_default=False)],
    out_dir: Annotated[Path, typer.Argument(help="The release bundle folder to create.", show_default=False)],
    force: Annotated[bool, typer.Option("--force", "-f", help="Replace OUT_DIR if it is an existing model "
                                        "folder.")] = False,
    name: Annotated[str | None, typer.Option("--name", help="Name the model NAME in its config (default: the "
                                             "run's; a codec fine-tuned with its encoder training makes other "
                                             "tokens, so give it a name of its own).", show_default=False)] = None,
    json_output: JsonOption = False,
) -> None:
    """Make a release bundle from a training run: weights, config, checksums.json and a README.md model card.

    The card records the model's structure, the training settings and steps, and the last
    validation figures. The folder is written atomically; an existing one is replaced only with
    --force (and only if it is a model folder).

    Examples:

      pyramid export runs/p111-small release/pyramid-22k-p111-small

      pyramid export runs/retrained release/my-codec-v2 --name my-codec-v2

      pyramid upload release/pyramid-22k-p111-small org/pyramid-22k-p111-small
    """
    from pyramid_cli.hub.release import export_run

    result = export_run(run_dir, out_dir, force=force, name=name)
    if json_output:
        print_json({"path": str(result.path), "kind": result.summary.kind, "model_name": result.summary.name,
                    "structure": result.summary.structure, "sha256": result.sha256, "parameters": result.parameters,
                    "step": result.log.step, "last_eval": result.log.last_eval})
        return
    step = f"step {result.log.step}" if result.log.step is not None else "step unknown"
    console.print(f"{escape(str(run_dir))} → {escape(str(result.path))}: {result.summary.kind} "
                  f"{escape(result.summary.name)} at {step}, {result.parameters / 1e6:.2f} M parameters")
    console.print(f"  sha256 {result.sha256} (checksums.json); model card README.md"
                  + ("" if result.log.last_eval else " [yellow](no validation record)[/yellow]"))


def upload(
    folder: Annotated[Path, typer.Argument(help="A release bundle made by `pyramid export`.", show_default=False)],
    repo: Annotated[str, typer.Argument(help="The Hub model repository: ORG/REPO or hf://ORG/REPO.",
                                        show_default=False)],
    private: Annotated[bool, typer.Option(help="Create the repository as private.")] = False,
    message: Annotated[str, typer.Option(help="Commit message.")] = "Upload pyramid model",
) -> None:
    """Upload a release bundle to a Hugging Face model repository (created if needed; needs a token).

    The bundle is verified first; only its config.json, model.safetensors, checksums.json and
    README.md are sent. Log in once with `hf auth login`, or set HF_TOKEN.
    """
    hub_ref = hf.parse_hub_ref(repo)
    if hub_ref.revision:
        raise UsageError(f"{repo}: uploads go to the main branch; leave out @{hub_ref.revision}")
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder")
    missing = [n for n in bundle.BUNDLE_FILES if not (folder / n).is_file()]
    if missing:
        raise InputError(f"{folder}: not a release bundle (missing {', '.join(missing)}); make one with "
                         "`pyramid export RUN_DIR OUT_DIR`")
    report = bundle.verify(folder)
    if not report.ok:
        raise FormatError(f"{folder}: {bundle.failure_reason(report)}")
    url = hf.upload_bundle(folder, hub_ref, private=private, message=message, files=bundle.BUNDLE_FILES)
    console.print(f"uploaded {escape(str(folder))} → {escape(url)}; fetch it with `pyramid download {hub_ref}`")
