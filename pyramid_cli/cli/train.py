"""`pyramid train codec | lm`: train a PyramidCodec on a corpus, or the LM on its tokens; reruns resume."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import TextColumn

from pyramid_cli.cli._shared import JsonOption, console, make_progress, print_json
from pyramid_cli.errors import InputError, UsageError
from pyramid_cli.runtime.fileio import read_json_object
from pyramid_cli.runtime.locking import folder_lock

app = typer.Typer(help="Train models on a corpus built by `pyramid dataset build`.", no_args_is_help=True)


def _settings(run: Path, config: Path | None, explicit: dict[str, Any], overrides: list[str],
              preset_dict: Callable[[str | None], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Layer the settings: the run's saved config < --config FILE < explicit options < --set.

    ``preset_dict(name)`` spells a model preset out as a full config dict, so that ``--set
    model.x=...`` can edit it (default: codec presets, and discriminator presets for ``--set
    discriminator.x=...``)."""
    from pyramid_cli.train.common import apply_overrides

    settings: dict[str, Any] = {}
    for path in ([run / "config.json"] if (run / "config.json").is_file() else []) + ([config] if config else []):
        settings.update(read_json_object(path, "training config", error=InputError))
    settings.update({key: value for key, value in explicit.items() if value is not None})
    nested = {"model": preset_dict} if preset_dict else {"model": _codec_preset_dict,
                                                          "discriminator": _discriminator_preset_dict}
    for key, spell_out in nested.items():
        if any(item.startswith(key + ".") for item in overrides) and not isinstance(settings.get(key), dict):
            settings[key] = spell_out(settings.get(key))
    return apply_overrides(settings, overrides)


def _codec_preset_dict(name: str | None) -> dict[str, Any]:
    from pyramid_cli.codec import preset
    from pyramid_cli.train.config import CodecTrainConfig

    return preset(name or str(CodecTrainConfig.model)).to_dict()


def _discriminator_preset_dict(name: str | None) -> dict[str, Any]:
    from pyramid_cli.codec.discriminators import discriminator_preset
    from pyramid_cli.train.config import CodecTrainConfig

    return discriminator_preset(name or str(CodecTrainConfig.discriminator)).to_dict()


def _lm_preset_dict(name: str | None) -> dict[str, Any]:
    from pyramid_cli.lm.config import preset
    from pyramid_cli.train.config import LMTrainConfig

    return preset(name or str(LMTrainConfig.model)).to_dict()


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


@contextlib.contextmanager
def _stop_on_signals(main_rank: bool) -> Iterator[threading.Event]:
    """Ctrl-C / SIGTERM set the event (the trainer saves a checkpoint and returns); a second
    Ctrl-C aborts at once."""
    stop = threading.Event()
    previous = {}

    def request_stop(signum: int, frame: Any) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        stop.set()
        if main_rank:
            console.print("[yellow]stopping[/yellow]: finishing this step and saving a checkpoint "
                          "(Ctrl-C again to abort without saving)", soft_wrap=True)

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, request_stop)
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run_and_report(run: Path, train: Callable[[Callable[[dict[str, Any]], None] | None, Callable[[], bool]], Any],
                    total_steps: int, status: Callable[[dict[str, Any]], str],
                    describe: Callable[[dict[str, Any]], str | None], json_output: bool,
                    json_extra: Callable[[Any], dict[str, Any]], best_text: Callable[[Any], str]) -> None:
    """Run ``train(on_log, stop)`` under a live progress bar (rank 0 only under torchrun), stopping
    cleanly on Ctrl-C, then report the result (codec and LM trainers return the same fields)."""
    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 talks
    progress = make_progress(TextColumn("{task.fields[status]}"))
    task = progress.add_task("training", total=None, status="starting")

    def on_log(record: dict[str, Any]) -> None:
        if record["kind"] == "start":
            progress.update(task, total=record["total_steps"], completed=record["step"])
        elif record["kind"] == "train":
            progress.update(task, completed=record["step"], status=status(record))
            if not console.is_terminal:  # no live bar in logs: one line per record instead
                console.print(f"step {record['step']}/{total_steps}: {status(record)}", soft_wrap=True)
        line = describe(record)
        if line:
            progress.console.print(line, soft_wrap=True)

    # One writer per run folder (rank 0 holds it for all ranks under torchrun).
    lock = folder_lock(run, "run folder") if main_rank else contextlib.nullcontext()
    with lock, _stop_on_signals(main_rank) as stop, progress:
        result = train(on_log if main_rank else None, stop.is_set)
    if not main_rank:
        raise typer.Exit(130 if result.stopped else 0)
    if json_output:
        print_json({"ok": True, "run": str(result.run_dir), "step": result.step, "total_steps": result.total_steps,
                    "finished": result.finished, "stopped": result.stopped, "resumed_from": result.resumed_from,
                    "best_step": result.best_step,
                    "export": None if result.export_dir is None else str(result.export_dir), **json_extra(result)})
    if result.stopped:
        console.print(f"[yellow]stopped[/yellow] at step {result.step}/{result.total_steps}; checkpoint saved. "
                      "Rerun the same command to resume.")
        raise typer.Exit(130)
    console.print(f"[green]done[/green]: step {result.step}/{result.total_steps}{best_text(result)}; model in "
                  f"{result.export_dir}", soft_wrap=True)


@app.command()
def codec(
    data: Annotated[Path, typer.Option("--data", help="Corpus folder from `pyramid dataset build`: crops come "
                                       "from its train split, validation clips from its valid split.")],
    run: Annotated[Path, typer.Option("--run", "--run-dir", help="Run folder (config.json, metrics.jsonl, "
                                      "checkpoints/, export/), created if missing. If it holds a checkpoint, "
                                      "training resumes from it. Under torchrun spell it --run-dir (torchrun "
                                      "takes --run for its own --run-path).")],
    preset: Annotated[str | None, typer.Option(help="Model preset: p111_small (CPU-sized), p111 (paper), "
                                               "p555, dac_n2, dac_n9, p111_spectral (frame-domain, experimental) "
                                               "(default p111_small, or the run's).")] = None,
    steps: Annotated[int | None, typer.Option(help="Total steps of the run; raise it and rerun to train "
                                              "longer (default 10000).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Crops per step per process (default 8).")] = None,
    crop_seconds: Annotated[float | None, typer.Option(help="Length of each training crop (default 1.0).")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate of AdamW (default 1e-4, as DAC).")] = None,
    seed: Annotated[int | None, typer.Option(help="Fixes initial weights, crops and level choice.")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda | cuda:N | mps (default auto).")] = None,
    gan: Annotated[bool | None, typer.Option("--gan/--no-gan", help="Adversarial training with DAC's discriminators "
                                             "(default off: about 3x the CPU time per step).")] = None,
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

    from pyramid_cli.train.codec import train_codec
    from pyramid_cli.train.config import CodecTrainConfig

    if threads is not None:
        if threads < 1:
            raise UsageError("--threads must be at least 1")
        torch.set_num_threads(threads)
    explicit = {"model": preset, "steps": steps, "batch_size": batch_size, "crop_seconds": crop_seconds,
                "lr": lr, "seed": seed, "device": device, "gan": gan}
    settings = CodecTrainConfig.from_dict(_settings(run, config, explicit, set_ or []))
    _run_and_report(
        run,
        lambda on_log, stop: train_codec(run, settings, data, on_log=on_log, init_from=init_from, stop=stop),
        settings.steps, _status, _describe, json_output,
        lambda r: {"best_mel": r.best_mel, "last": r.last_train},
        lambda r: f"; best validation mel {r.best_mel:.3f} at step {r.best_step}" if r.best_step else "")

def _lm_status(record: dict[str, Any]) -> str:
    levels = " ".join(f"l{k[6:]} {v:.3f}" for k, v in sorted(record.items()) if k.startswith("loss_l"))
    return (f"loss {record['loss']:.3f} ({levels}) · {record['steps_per_s']:.2f} step/s · "
            f"{record['tokens_per_s']:.0f} tok/s · lr {record['lr']:.2e}")


def _lm_describe(record: dict[str, Any]) -> str | None:
    if record["kind"] == "start":
        where = f"resuming at step {record['resumed_from']}" if record["resumed_from"] is not None else "new run"
        return (f"{where}: {record['parameters'] / 1e6:.1f} M parameters, {record['layout']} layout, "
                f"{record['codec']} tokens, {record['train_items']} training pieces on {record['device']}")
    if record["kind"] == "eval":
        levels = " ".join(f"l{i} {record[f'bits_per_token_l{i}']:.2f}" for i in range(8)
                          if f"bits_per_token_l{i}" in record)
        return f"step {record['step']}: validation nll {record['nll']:.3f} nats/token; bits/token {levels}"
    if record["kind"] == "checkpoint":
        return f"step {record['step']}: checkpoint{' (best)' if record['best'] else ''} {record['path']}"
    return None


@app.command()
def lm(
    tokens: Annotated[Path, typer.Option("--tokens", help="Token folder from `pyramid dataset tokenize`: windows "
                                         "come from its train split, validation from its valid split.")],
    run: Annotated[Path, typer.Option("--run", "--run-dir", help="Run folder (config.json, metrics.jsonl, "
                                      "checkpoints/, export/), created if missing; a run with a checkpoint "
                                      "resumes.")],
    preset: Annotated[str | None, typer.Option(help="Model preset: small (CPU-sized default), tiny, paper "
                                               "(6 x 8 heads x 768, the paper's).")] = None,
    layout: Annotated[str | None, typer.Option(help="time_aligned (windowed, seamless on long pieces) or flat "
                                               "(the paper's [BOS] l0 [SEP] l1 [SEP] l2 [EOS]).")] = None,
    steps: Annotated[int | None, typer.Option(help="Total steps of the run (default 5000).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Windows per step per process (default 16).")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak AdamW learning rate (default 1e-3).")] = None,
    seed: Annotated[int | None, typer.Option(help="Fixes initial weights and the windows drawn.")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda | cuda:N | mps (default auto).")] = None,
    init_from: Annotated[Path | None, typer.Option(help="Fine-tune from this LM folder's weights with a fresh "
                                                   "optimizer and schedule.")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="JSON file of training settings.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override one setting, key=value (repeatable): "
                                                   "--set eval_every=200 --set model.n_layer=8.")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch (default: torch's choice).")] = None,
    json_output: JsonOption = False,
) -> None:
    """Train the abstract-to-detail LM on token shards; rerunning resumes.

    Examples:

      pyramid train lm --tokens tokens --run runs/lm --steps 3000

      pyramid train lm --tokens tokens --run runs/lm-flat --layout flat

      torchrun --nproc_per_node=8 -m pyramid_cli train lm --tokens tokens \\
          --run-dir runs/lm-paper --preset paper
    """
    import torch

    from pyramid_cli.train.config import LMTrainConfig
    from pyramid_cli.train.lm import train_lm

    if threads is not None:
        if threads < 1:
            raise UsageError("--threads must be at least 1")
        torch.set_num_threads(threads)
    explicit = {"model": preset, "layout": layout, "steps": steps, "batch_size": batch_size, "lr": lr,
                "seed": seed, "device": device}
    settings = LMTrainConfig.from_dict(_settings(run, config, explicit, set_ or [], _lm_preset_dict))
    _run_and_report(
        run,
        lambda on_log, stop: train_lm(run, settings, tokens, on_log=on_log, init_from=init_from, stop=stop),
        settings.steps, _lm_status, _lm_describe, json_output,
        lambda r: {"best_nll": r.best_loss, "last_eval": r.last_eval},
        lambda r: f"; best validation nll {r.best_loss:.3f} at step {r.best_step}" if r.best_step else "")
