"""Release bundles: ``pyramid export`` makes one from a training run, ``pyramid download`` fetches one.

A run folder, as ``pyramid train codec`` (and the LM trainer) leave it, holds ``config.json`` (the
training settings), ``metrics.jsonl`` (one record a line; ``"kind": "eval"`` records carry the
validation figures), ``checkpoints/`` and ``export/`` (config.json + fp16 model.safetensors, ready
to load). The bundle is ``export/`` plus a ``checksums.json`` and a generated ``README.md`` that
says what the model is and how it was trained, so a checkpoint never travels without its story
(the model card the Hub shows). Downloads land in the Hugging Face cache (see ``hf``) and are
verified before use; ``name`` also installs a copy into the user cache (``bundle.install``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyramid_cli.errors import FormatError, InputError, UsageError
from pyramid_cli.hub import bundle, hf, registry
from pyramid_cli.hub.files import CONFIG_NAME, KIND_NAMES, README_NAME, WEIGHTS_NAME, is_model_dir, read_config
from pyramid_cli.hub.identity import HASHED_FILES, write_checksums
from pyramid_cli.runtime.fileio import read_json_object

EXPORT_DIR = "export"
METRICS_NAME = "metrics.jsonl"


@dataclass(frozen=True)
class RunLog:
    """What ``metrics.jsonl`` says about a run: its progress and the last validation figures."""

    step: int | None
    total_steps: int | None
    elapsed_s: float | None
    device: str | None
    world_size: int | None
    last_eval: dict[str, Any] | None


@dataclass(frozen=True)
class ExportResult:
    path: Path
    summary: bundle.Summary
    sha256: str
    parameters: int
    log: RunLog


def read_run_log(run_dir: Path) -> RunLog:
    """Summarise ``run_dir/metrics.jsonl`` (a torn last line from a killed run is ignored)."""
    from pyramid_cli.data.manifest import read_jsonl

    records = [r for r in read_jsonl(run_dir / METRICS_NAME) if isinstance(r, dict)]
    steps = [r["step"] for r in records if isinstance(r.get("step"), int)]
    starts = [r for r in records if r.get("kind") == "start"]
    trains = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    start = starts[-1] if starts else {}
    return RunLog(step=max(steps) if steps else None, total_steps=start.get("total_steps"),
                  elapsed_s=trains[-1].get("elapsed_s") if trains else None, device=start.get("device"),
                  world_size=start.get("world_size"), last_eval=evals[-1] if evals else None)


def read_training_config(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / CONFIG_NAME
    if not path.is_file():
        return None
    return read_json_object(path, "training config")


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(_number(v) for v in value)
    return str(value)


def _structure_rows(summary: bundle.Summary) -> list[tuple[str, str]]:
    d = summary.details
    if summary.kind == "codec":
        return [("levels", str(d["levels"])),
                ("codebooks per level", f"{', '.join(map(str, d['n_codebooks']))} × {d['codebook_size']} codes"),
                ("frame rates", " / ".join(f"{r:.2f}" for r in d["frame_rates"]) + " Hz (coarsest first)"),
                ("tokens per second", f"{d['tokens_per_second']:.2f}"), ("sample rate", f"{d['sample_rate']} Hz")]
    return [(key.replace("_", " "), str(value)) for key, value in d.items() if value is not None]


def model_card(summary: bundle.Summary, sha256: str, parameters: int, training: dict[str, Any] | None,
               log: RunLog) -> str:
    """The README.md of a bundle: Hub front matter, structure, training settings and progress, last eval."""
    what = ("A PyramidCodec checkpoint: a neural audio codec with hierarchical token levels"
            if summary.kind == "codec" else "A language model over PyramidCodec tokens")
    lines = ["---", "tags:", "- pyramid-cli", "- audio", "- music",
             f"- {'neural-audio-codec' if summary.kind == 'codec' else 'music-generation'}", "---", "",
             f"# {summary.name}", "", f"{what}, for the `pyramid` command line.", "", "## Use", "",
             "```sh", "pyramid download hf://ORG/REPO        # once; or pass this folder to --model",
             ("pyramid encode song.wav --model hf://ORG/REPO" if summary.kind == "codec"
              else "pyramid generate --minutes 1 --lm hf://ORG/REPO -o piece.wav   # needs the codec it names"),
             "pyramid models verify hf://ORG/REPO   # sha256 of the weights vs checksums.json", "```", "",
             "## Model", "", "| | |", "|---|---|", f"| kind | {KIND_NAMES[summary.kind]} |"]
    lines += [f"| {key} | {value} |" for key, value in _structure_rows(summary)]
    lines += [f"| parameters | {parameters / 1e6:.2f} M |", f"| weights | `model.safetensors`, sha256 `{sha256}` |",
              "", "## Training", ""]
    if log.step is not None:
        of = f" of {log.total_steps}" if log.total_steps else ""
        lines.append(f"- steps: {log.step}{of}")
    if log.elapsed_s is not None:
        hours = log.elapsed_s / 3600
        lines.append(f"- training time: {hours:.2f} h" if hours >= 1 else f"- training time: {hours * 60:.1f} min")
    if log.device:
        lines.append(f"- hardware: {log.device}" + (f" × {log.world_size}" if log.world_size else ""))
    if training is not None:
        lines += ["", "Settings (`config.json` of the run):", "", "```json", json.dumps(training, indent=2), "```"]
    elif log.step is None:
        lines.append("Not recorded.")
    lines += ["", "## Evaluation", ""]
    if log.last_eval:
        figures = {k: v for k, v in log.last_eval.items() if k not in ("kind", "step")}
        lines += [f"Last validation record (step {log.last_eval.get('step')}):", "", "| metric | value |", "|---|---|"]
        lines += [f"| {key} | {_number(value)} |" for key, value in figures.items()]
    else:
        lines.append("No validation record in the run's metrics.jsonl.")
    lines += ["", "## Files", "", "`config.json` (the model config), `model.safetensors` (weights; no pickles), "
              "`checksums.json` (sha256 of both, checked by `pyramid models verify`), this `README.md`.", ""]
    return "\n".join(lines)


def export_run(run_dir: Path, out_dir: Path, *, force: bool = False, name: str | None = None) -> ExportResult:
    """Write a release bundle for the model in ``run_dir/export`` to ``out_dir``, atomically.

    ``name`` replaces the model's name in its config: a fine-tune keeps its start model's name, and a
    codec whose tokens differ from that model's needs its own (the name is half of the identity that
    ``.pyr`` files and LMs record).

    Raises:
        InputError: no finished export in the run, or ``out_dir`` exists (without ``force``), is the
            run or its export, or is some other folder.
        FormatError: a config of neither kind or failing validation, or corrupt weights.
    """
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: no such run folder")
    source = run_dir / EXPORT_DIR
    if not is_model_dir(source):
        raise InputError(f"{run_dir}: no {EXPORT_DIR}/ with {CONFIG_NAME} and {WEIGHTS_NAME} "
                         "(the trainer writes it at each checkpoint)")
    resolved = out_dir.resolve()
    if resolved in (run_dir.resolve(), source.resolve()) or run_dir.resolve().is_relative_to(resolved):
        raise InputError(f"{out_dir}: would replace the run itself; choose another folder")
    if name is not None:
        bundle.check_name(name)
    summary = bundle.describe(source)
    parameters = bundle.check_safetensors(source / WEIGHTS_NAME)
    training, log = read_training_config(run_dir), read_run_log(run_dir)
    recorded: dict[str, str] = {}

    def finish(tmp: Path) -> None:  # hash the copy: what ships is what is recorded
        nonlocal summary
        if name is not None:
            config = {**read_config(tmp), "name": name}
            (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
            summary = bundle.describe(tmp)
        recorded.update(write_checksums(tmp))
        card = model_card(summary, recorded[WEIGHTS_NAME], parameters, training, log)
        (tmp / README_NAME).write_text(card, encoding="utf-8")

    files = {name: source / name for name in HASHED_FILES}
    bundle.write_folder(out_dir, files, force=force, finish=finish)
    return ExportResult(out_dir, summary, recorded[WEIGHTS_NAME], parameters, log)


@dataclass(frozen=True)
class Downloaded:
    """What ``download_model`` did: the folder, whether it came from the Hub now, and the checks made."""

    ref: str
    path: Path
    from_hub: bool
    downloaded: bool  # False: the Hub cache already held it (no network was used)
    summary: bundle.Summary
    report: bundle.VerifyReport
    installed: Path | None  # the copy in $PYRAMID_HOME/models, when a name was given


def download_model(ref: str, *, revision: str | None = None, name: str | None = None,
                   force: bool = False) -> Downloaded:
    """Fetch ``hf://org/repo[@rev]`` into the Hub cache (or take a local model folder), validate and verify it,
    and with ``name`` (always, for a folder) install a copy into the user cache.

    Raises:
        UsageError: a malformed reference or name, ``org/repo`` without ``hf://``, a non-folder local model.
        InputError: see ``hf.fetch``; an existing installed copy without ``force``.
        FormatError: an invalid config, or files that do not match their recorded sha256.
    """
    if name is not None:
        bundle.check_name(name)
    if hf.is_hub_ref(ref):
        hub_ref = hf.parse_hub_ref(ref, revision)
        fetched = hf.fetch(hub_ref, force=force)
        label, folder, downloaded = str(hub_ref), fetched.path, fetched.downloaded
    else:
        if revision:
            raise UsageError("revision applies to hf:// models only", option="revision")
        if not Path(ref).expanduser().exists() and hf.looks_like_repo_id(ref):
            raise UsageError(f"{ref}: no such folder; for a Hugging Face model write hf://{ref}")
        location = registry.locate_model(ref)
        if location.origin != "path":
            raise UsageError(f"{ref}: a {location.origin} model; give hf://ORG/REPO or a model folder to install")
        label, folder, downloaded = location.name, location.path, False
        name = name or location.path.resolve().name
    summary = bundle.describe(folder)
    report = bundle.verify(folder)
    if report.source != "none" and not report.ok:
        raise FormatError(f"{label}: fails verification ({bundle.failure_reason(report)}); "
                          "download it again, replacing this copy", option="force")
    installed = bundle.install(folder, name, force=force) if name else None
    return Downloaded(label, folder, hf.is_hub_ref(ref), downloaded, summary, report, installed)
