"""`pyramid train codec`: train a PyramidCodec on a built corpus; rerunning the command resumes."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import TextColumn

from pyramid_cli.cli._shared import JsonOption, console, make_progress, print_json
from pyramid_cli.errors import InputError, UsageError

app = typer.Typer(help="Train models on a corpus built by `pyramid dataset build`.", no_args_is_help=True)


def _settings(run: Path, config: Path | None, explicit: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Layer the settings: the run's saved config < --config FILE < explicit options < --set."""
    from pyramid_cli.train.common import apply_overrides

    settings: dict[str, Any] = {}
    for path in ([run / "config.json"] if (run / "config.json").is_file() else []) + ([config] if config else []):
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"{path}: unreadable JSON config ({exc})") from exc
        if not isinstance(loaded, dict):
            raise InputError(f"{path}: a training config must be a JSON object")
        settings.update(loaded)
    settings.update({key: value for key, value in explicit.items() if value is not None})
    if any(item.startswith("model.") for item in overrides) and not isinstance(settings.get("model"), dict):
        from pyramid_cli.codec import preset
        from pyramid_cli.train.codec import CodecTrainConfig

        # --set model.x=... edits a preset: spell the preset out as a full config dict first.
        settings["model"] = preset(settings.get("model", CodecTrainConfig.model)).to_dict()
    return apply_overrides(settings, overrides)


def _status(record: dict[str, Any]) -> str:
    """One line for a train record: loss, per-level mel, speed and codebook usage."""
    levels = sorted(int(k[5:]) for k in record if k.startswith("mel_l"))
    mel = " ".join(f"l{i} {record[f'mel_l{i}']:.3f}" for i in levels)
    used = " ".join(f"l{i} {'/'.join(str(u) for u in record[f'codes_used_l{i}'])}"
                    for i in range(8) if f"codes_used_l{i}" in record)
    return (f"loss {record['loss']:.3f} · mel {mel} · {record['steps_per_s']:.2f} step/s · "
            f"lr {record['lr']:.2e} · codes {used}")


def _describe(record: dict[str, Any]) -> str | None:
    kind = record["kind"]
    if kind == "start":
        where = f"resuming at step {record['resumed_from']}" if record["resumed_from"] is not None else "new run"
        return (f"{where}: {record['codec']} on {record['device']} × {record['world_size']}, "
                f"{record['train_songs']} training songs, {record['eval_clips']} validation clips"
                + (f", weights from {record['init_from']}" if record.get("init_from") else ""))
    if kind == "eval":
        levels = " ".join(f"l{k[5:]} {v:.3f}" for k, v in record.items() if k.startswith("mel_l"))
        return f"step {record['step']}: validation mel {record['mel']:.3f} ({levels})"
    if kind == "checkpoint":
        return f"step {record['step']}: checkpoint{' (best)' if record['best'] else ''} {record['path']}"
    if kind == "note" and record.get("reseeded_codes"):
        return f"step {record['step']}: reseeded {record['reseeded_codes']} dead codebook entries"
    return None


@app.command()
def codec(
    data: Annotated[Path, typer.Option("--data", help="Corpus folder from `pyramid dataset build`: crops come "
                                       "from its train split, validation clips from its valid split.")],
    run: Annotated[Path, typer.Option("--run", "--run-dir", help="Run folder (config.json, metrics.jsonl, "
                                      "checkpoints/, export/). If it holds a checkpoint, training resumes from "
                                      "it. Under torchrun spell it --run-dir (torchrun takes --run for its "
                                      "own --run-path).")],
    preset: Annotated[str | None, typer.Option(help="Model preset: p111_small (CPU-sized), p111 (paper), "
                                               "p555, dac_n2, dac_n9 (default p111_small, or the run's).")] = None,
    steps: Annotated[int | None, typer.Option(help="Total steps of the run; raise it and rerun to train "
                                              "longer (default 10000).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Crops per step per process (default 8).")] = None,
    crop_seconds: Annotated[float | None, typer.Option(help="Length of each training crop (default 1.0).")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate of AdamW (default 1e-4, as DAC).")] = None,
    seed: Annotated[int | None, typer.Option(help="Fixes initial weights, crops and level choice.")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda | cuda:N | mps (default auto).")] = None,
    init_from: Annotated[Path | None, typer.Option(help="Fine-tune: start from the weights of this model "
                                                   "folder (config.json + model.safetensors, e.g. a run's "
                                                   "export/) with a fresh optimizer and schedule.")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="JSON file of training settings (any "
                                                "CodecTrainConfig field; see a run's config.json).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override one setting, key=value "
                                                   "(repeatable): --set eval_every=200 --set "
                                                   "model.latent_dim=64.")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch (default: torch's choice).")] = None,
    json_output: JsonOption = False,
) -> None:
    """Train a PyramidCodec (hierarchical levels, band-limited targets).

    Settings come from the run's saved config.json (when resuming), then
    --config, then the options, then --set. Ctrl-C saves a checkpoint and
    stops; rerunning the same command resumes exactly where it stopped.
    The model to ship is kept up to date in RUN/export/.

    Examples:

      pyramid train codec --data corpus --run runs/small --steps 2000

      pyramid train codec --data corpus --run runs/ft \\
          --init-from runs/small/export --lr 3e-5

      torchrun --nproc_per_node=4 -m pyramid_cli train codec \\
          --data corpus --run-dir runs/p111 --preset p111
    """
    import torch

    from pyramid_cli.train.codec import CodecTrainConfig, train_codec

    if threads is not None:
        if threads < 1:
            raise UsageError("--threads must be at least 1")
        torch.set_num_threads(threads)
    explicit = {"model": preset, "steps": steps, "batch_size": batch_size, "crop_seconds": crop_seconds,
                "lr": lr, "seed": seed, "device": device}
    settings = CodecTrainConfig.from_dict(_settings(run, config, explicit, set_ or []))
    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 talks
    stop = threading.Event()
    previous = {}

    def request_stop(signum: int, frame: Any) -> None:
        if stop.is_set() and signum == signal.SIGINT:  # a second Ctrl-C aborts at once
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        stop.set()
        if main_rank:
            console.print("[yellow]stopping[/yellow]: finishing this step and saving a checkpoint "
                          "(Ctrl-C again to abort without saving)", soft_wrap=True)

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, request_stop)
    progress = make_progress(TextColumn("{task.fields[status]}"))
    task = progress.add_task("training", total=None, status="starting")

    def on_log(record: dict[str, Any]) -> None:
        if record["kind"] == "start":
            progress.update(task, total=record["total_steps"], completed=record["step"])
        elif record["kind"] == "train":
            progress.update(task, completed=record["step"], status=_status(record))
            if not console.is_terminal:  # no live bar in logs: one line per record instead
                console.print(f"step {record['step']}/{settings.steps}: {_status(record)}", soft_wrap=True)
        line = _describe(record)
        if line:
            progress.console.print(line, soft_wrap=True)

    try:
        with progress:
            result = train_codec(run, settings, data, on_log=on_log if main_rank else None,
                                 init_from=init_from, stop=stop.is_set)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not main_rank:
        raise typer.Exit(130 if result.stopped else 0)
    if json_output:
        print_json({"ok": True, "run": str(result.run_dir), "step": result.step, "total_steps": result.total_steps,
                    "finished": result.finished, "stopped": result.stopped, "resumed_from": result.resumed_from,
                    "best_step": result.best_step, "best_mel": result.best_mel,
                    "export": None if result.export_dir is None else str(result.export_dir),
                    "last": result.last_train})
    if result.stopped:
        console.print(f"[yellow]stopped[/yellow] at step {result.step}/{result.total_steps}; checkpoint saved. "
                      "Rerun the same command to resume.")
        raise typer.Exit(130)
    best = f"; best validation mel {result.best_mel:.3f} at step {result.best_step}" if result.best_step else ""
    console.print(f"[green]done[/green]: step {result.step}/{result.total_steps}{best}; model in {result.export_dir}",
                  soft_wrap=True)
