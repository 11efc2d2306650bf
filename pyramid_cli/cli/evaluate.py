"""`pyramid eval codec | lm | fad`: reconstruction per decoded level, LM likelihood per level, and a
Fréchet distance of generated audio to a corpus split."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from pyramid_cli.cli._shared import JsonOption, ThreadsOption, apply_threads, console, make_progress, print_json

TranscriptionThreadsOption = Annotated[int, typer.Option(
    "--threads", min=1, help="CPU threads for the transcription model (onnxruntime).")]

app = typer.Typer(help="Measure models on a held-out corpus split.", no_args_is_help=True)


@app.command("codec")
def eval_codec(
    data: Annotated[Path, typer.Option("--data", help="Corpus folder made by `pyramid dataset build`.")],
    model: Annotated[str | None, typer.Option(help="Codec name or folder [default: the bundled default].")] = None,
    split: Annotated[str, typer.Option(help="Corpus split to measure on.")] = "test",
    clips: Annotated[int, typer.Option(help="Number of songs (one clip from the middle of each).")] = 20,
    clip_seconds: Annotated[float, typer.Option(help="Clip length in seconds (the paper uses 10).")] = 10.0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    threads: ThreadsOption = None,
    notes: Annotated[bool | None, typer.Option(
        "--notes/--no-notes", help="Note onset F1 from Basic Pitch transcriptions (needs `make install-eval`) "
        "[default: on when installed].")] = None,
    visqol: Annotated[bool | None, typer.Option(
        "--visqol/--no-visqol", help="ViSQOL v3 audio mode, MOS-LQO 1-5 (needs `make install-eval`; about 1 s "
        "per clip and level) [default: on when installed].")] = None,
    json_output: JsonOption = False,
) -> None:
    """Mel, STFT, waveform distances, SI-SDR, chroma, note F1 and ViSQOL for 1, 2, ... levels; codebook usage.

    Each k-level reconstruction is compared with the full signal and with its band-limited
    target (the input limited to 1/2^(N-k) of its band), as in the paper's Table 1. Mel and STFT
    distances are sums over their resolutions, the paper's scale (p111: mel 0.953). Pitch
    content, which the distances miss: chroma similarity (1 = same pitch classes at the same
    times), note onset F1 (Basic Pitch transcriptions of input and decode, mir_eval, 50 ms) and
    whether the melody survives: "tune kept" is the share of the input's top line (the highest
    note sounding at each onset) found in the decode, "tune F1" compares the two top lines.

    Example: pyramid eval codec --data corpus --split test --clips 20 --json
    """
    from pyramid_cli.codec.api import load_codec
    from pyramid_cli.codec.evaluate import evaluate_codec, load_clips
    from pyramid_cli.errors import UsageError
    from pyramid_cli.hub.registry import DEFAULT_CODEC
    from pyramid_cli.metrics import transcribe
    from pyramid_cli.metrics import visqol as visqol_score
    from pyramid_cli.runtime.devices import resolve_device

    if clips < 1 or clip_seconds <= 0:
        raise UsageError("--clips must be at least 1 and --clip-seconds positive")
    if notes is None:
        notes = transcribe.available()
        if not notes:
            console.print(f"[yellow]note F1 skipped: {transcribe.INSTALL_HINT}[/yellow]")
    transcriber = transcribe.Transcriber(threads=threads or 1) if notes else None
    if visqol is None:
        visqol = visqol_score.available()
    scorer = visqol_score.Visqol() if visqol else None
    apply_threads(threads)
    codec, name, weights_hash = load_codec(model or DEFAULT_CODEC, resolve_device(device))
    audio = load_clips(data, split, clips, clip_seconds, codec.config.sample_rate)
    with make_progress() as progress:
        task = progress.add_task("evaluating", total=len(audio))
        result = evaluate_codec(codec, audio, on_clip=lambda _: progress.advance(task), transcriber=transcriber,
                                visqol=scorer)
    if json_output:
        print_json({"model": name, "weights": weights_hash, "split": split, **result.to_dict()})
        return
    table = Table(title=f"{name}@{weights_hash[:8]} on {data} ({split} split): {result.clips} clips of "
                        f"{result.clip_seconds:.1f} s")
    for column in ("levels", "tokens/s", "note F1", "tune kept", "tune F1", "notes/s", "chroma", "ViSQOL",
                   "mel (target)", "mel (full)", "STFT (full)", "wave L1 (full)", "SI-SDR (full)"):
        table.add_column(column, justify="right")
    for s in result.levels:
        table.add_row(str(s.levels), f"{s.tokens_per_second:.2f}",
                      "-" if s.note_f1 is None else f"{s.note_f1:.3f}",
                      "-" if s.melody_recall is None else f"{s.melody_recall:.3f}",
                      "-" if s.melody_f1 is None else f"{s.melody_f1:.3f}",
                      "-" if s.notes_per_second is None else f"{s.notes_per_second:.1f}",
                      f"{s.chroma_vs_full:.3f}", "-" if s.visqol is None else f"{s.visqol:.2f}",
                      f"{s.mel_vs_target:.3f}", f"{s.mel_vs_full:.3f}",
                      f"{s.stft_vs_full:.3f}", f"{s.waveform_vs_full:.4f}", f"{s.si_sdr_vs_full:.2f} dB")
    console.print(table)
    if result.input_notes_per_second is not None:
        console.print(f"input: {result.input_notes_per_second:.1f} notes/s transcribed")
    shares = [f"{s.levels}: {_share(s.extra_octave_notes, s.extra_notes)} / "
              f"{_share(s.extra_partial_notes, s.extra_notes)} / {_share(s.extra_fragment_notes, s.extra_notes)} / "
              f"{_share(s.missed_in_sustain_notes, s.missed_notes)}"
              for s in result.levels if s.extra_notes is not None and s.missed_notes is not None]
    if shares:
        console.print("wrong notes per number of levels: the extra notes that are octaves of input notes / share a "
                      "partial with one (a fifth, twelfth or seventeenth) / break a held note in two; the missed "
                      "notes inside a held decoded note of that pitch (a re-struck key without a new attack): "
                      + ", ".join(shares))
    usage = ", ".join(f"L{u.level}/{u.codebook}: {u.used}/{u.size} used, perplexity {u.perplexity:.0f}"
                      for u in result.codebooks)
    console.print(f"codebooks: {usage}")


def _share(part: float | None, whole: float) -> str:
    return "-" if part is None or whole <= 0 else f"{part / whole:.0%}"


def plot(
    audio: Annotated[Path, typer.Argument(help="Audio file to encode and decode.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="PNG to write [default: <stem>.mel.png]. "
                                                                    "Missing folders are created.")]
    = None,
    model: Annotated[str | None, typer.Option(help="Codec name or folder [default: the bundled default].")] = None,
    seconds: Annotated[float, typer.Option(help="Plot at most this many seconds from the start.")] = 10.0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    threads: ThreadsOption = None,
    force: Annotated[bool, typer.Option("--force", "-f", help="Overwrite the PNG if it exists.")] = False,
) -> None:
    """Mel spectrograms of the input and of its reconstruction with 1, 2, ... levels (PNG).

    As the paper's Figure 3: the coarse levels keep the low band and the rhythm, finer levels
    add the upper bands. Needs matplotlib (pip install 'pyramid-cli[plot]').

    Example: pyramid plot song.wav -o song.png
    """
    import torch

    from pyramid_cli.audio.io import load_mono
    from pyramid_cli.cli._shared import check_output, write_output
    from pyramid_cli.codec.api import load_codec
    from pyramid_cli.codec.inference import decode_codes, encode_audio
    from pyramid_cli.errors import UsageError
    from pyramid_cli.hub.registry import DEFAULT_CODEC
    from pyramid_cli.metrics.plot import spectrogram_png
    from pyramid_cli.runtime.devices import resolve_device

    if seconds <= 0:
        raise UsageError("--seconds must be positive")
    target = output or audio.with_suffix(".mel.png")
    check_output(target, force, (audio,))
    apply_threads(threads)
    codec, name, _ = load_codec(model or DEFAULT_CODEC, resolve_device(device))
    rate = codec.config.sample_rate
    wav = torch.from_numpy(load_mono(audio, rate, name=str(audio))[:, : int(seconds * rate)])
    codes = encode_audio(codec, wav)
    rows = [(f"input: {audio.name}", wav)]
    for levels in range(1, codec.config.n_levels + 1):
        decoded = decode_codes(codec, codes, levels, wav.shape[-1])
        rows.append((f"{name}, {levels} level(s): {codec.config.tokens_per_second(levels):.1f} tokens/s",
                     decoded.cpu()))
    write_output(target, spectrogram_png(rows, rate))
    console.print(f"wrote {target}")


@app.command("lm")
def eval_lm(
    tokens: Annotated[Path, typer.Option("--tokens", help="Token folder from `pyramid dataset tokenize`.")],
    lm: Annotated[str | None, typer.Option("--lm", help="LM name or folder [default: the bundled default].")] = None,
    split: Annotated[str, typer.Option(help="Token split to measure on.")] = "test",
    windows: Annotated[int, typer.Option(help="Number of fixed windows drawn from the split.")] = 128,
    seed: Annotated[int, typer.Option(help="Seed of the window draw (the same seed gives the same windows).")] = 1234,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    threads: ThreadsOption = None,
    json_output: JsonOption = False,
) -> None:
    """Negative log-likelihood per level: nats and bits per token, bits per second of audio.

    Windows are the training windows of the LM's layout (for time_aligned, each detail token sees
    its full generation-time context), so figures compare runs with the same layout.

    Example: pyramid eval lm --tokens tokens --split test --json
    """
    from pyramid_cli.data.tokens import TokenSet
    from pyramid_cli.errors import UsageError
    from pyramid_cli.hub.identity import CodecIdentity
    from pyramid_cli.hub.registry import DEFAULT_LM
    from pyramid_cli.lm.api import load_lm
    from pyramid_cli.lm.model import check_codec
    from pyramid_cli.train.lm import evaluate_lm

    if windows < 1:
        raise UsageError("--windows must be at least 1")
    apply_threads(threads)
    loaded = load_lm(lm or DEFAULT_LM, device)
    token_set = TokenSet.open(tokens)
    check_codec(loaded.model.config, CodecIdentity(token_set.codec_name, token_set.codec_hash),
                f"{tokens} holds tokens of")
    if split not in token_set.splits():
        raise UsageError(f"{tokens} has no {split!r} split (it has {', '.join(token_set.splits())})")
    record = evaluate_lm(loaded.model, token_set, split, windows, seed=seed)
    record["lm"] = f"{loaded.name}@{loaded.hash}"
    if json_output:
        print_json(record)
        return
    table = Table(title=f"{loaded.name} on {split} ({windows} windows)")
    for column in ("level", "tokens", "nats/token", "bits/token", "bits/s of audio"):
        table.add_column(column, justify="right")
    for i in range(loaded.model.config.n_levels):
        table.add_row(str(i), str(record[f"tokens_l{i}"]), f"{record[f'nll_l{i}']:.3f}",
                      f"{record[f'bits_per_token_l{i}']:.3f}", f"{record[f'bits_per_second_l{i}']:.1f}")
    console.print(table)


@app.command("music")
def eval_music(
    audio: Annotated[list[Path], typer.Argument(
        help="Audio files, or folders searched (recursively) for .wav and .flac files.")],
    window: Annotated[float, typer.Option(help="Window length in seconds for the statistics.")] = 30.0,
    plot_output: Annotated[Path | None, typer.Option(
        "--plot", help="Also write a PNG of the statistics over time (needs matplotlib); missing folders are "
        "created.")] = None,
    force: Annotated[bool, typer.Option("--force", "-f", help="Overwrite the PNG if it exists.")] = False,
    threads: TranscriptionThreadsOption = 1,
    json_output: JsonOption = False,
) -> None:
    """Is it music, and does it stay music? Transcription statistics per window.

    Each file is transcribed (Basic Pitch, needs `make install`'s evaluation packages) and
    summarised per window: notes per second, distinct pitches, pitch-class entropy (bits), the
    best Krumhansl-Kessler key and its clarity (correlation), the share of time a note sounds,
    repetition (share of 1 s segments that copy an earlier one), and loudness (dBFS). The
    transcription hears quiet passages as well as loud ones, so "quiet" counts the windows 30 dB
    or more below the piece's loudest: a listener hears silence there, whatever notes were found.
    Run it on a corpus split's audio too (e.g. corpus/audio/test) to put generated figures beside
    the data's.

    Example: pyramid eval music piece.wav --plot piece.stats.png
    """
    from pyramid_cli.audio.io import load_mono
    from pyramid_cli.cli._shared import check_output, write_output
    from pyramid_cli.errors import UsageError
    from pyramid_cli.metrics import music_stats, transcribe
    from pyramid_cli.metrics.fad import find_audio_files

    if not window > 0:
        raise UsageError("--window must be positive")
    if plot_output is not None:
        check_output(plot_output, force, tuple(audio))
    files = find_audio_files(audio)
    transcriber = transcribe.Transcriber(threads=threads)
    pieces: list[dict[str, object]] = []
    with make_progress() as progress:
        task = progress.add_task("transcribing", total=len(files))
        for path in files:
            wav = load_mono(path, transcribe.SAMPLE_RATE, name=str(path))[0]
            result = transcriber.transcribe(wav, transcribe.SAMPLE_RATE)
            windows = music_stats.window_stats(result.notes, result.duration, window, wav=wav,
                                               sample_rate=transcribe.SAMPLE_RATE)
            pieces.append({"file": str(path), "seconds": result.duration, "notes": len(result.notes),
                           "summary": music_stats.summarise(windows), "windows": [w.to_dict() for w in windows]})
            progress.advance(task)
    if plot_output is not None:
        from pyramid_cli.metrics.plot import music_stats_png

        write_output(plot_output, music_stats_png([(Path(str(p["file"])).name, p["windows"])  # type: ignore[misc]
                                                   for p in pieces]))
    mean = music_stats.mean_summary([p["summary"] for p in pieces])  # type: ignore[misc]
    if json_output:
        print_json({"window_seconds": window, "pieces": pieces, "mean": mean})
        return
    table = Table(title=f"music statistics per {window:g} s window (means over windows)")
    for column in ("file", "minutes", "notes/s", "min window notes/s", "distinct pitches", "entropy (bits)",
                   "key clarity", "sounding", "repetition", "quiet windows"):
        table.add_column(column, justify="right")
    for piece in pieces:
        s = piece["summary"]
        assert isinstance(s, dict)
        table.add_row(Path(str(piece["file"])).name, f"{float(piece['seconds']) / 60:.1f}",  # type: ignore[arg-type]
                      f"{s['notes_per_second']:.2f}", f"{s['min_window_notes_per_second']:.2f}",
                      f"{s['distinct_pitches']:.1f}", f"{s['pitch_class_entropy']:.2f}", f"{s['key_clarity']:.2f}",
                      f"{s['sounding_fraction']:.2f}", f"{s['repetition']:.2f}", f"{s['quiet_windows']:.0f}")
    if len(pieces) > 1 and mean:
        table.add_row(f"mean of {len(pieces)}", "", f"{mean['notes_per_second']:.2f}",
                      f"{mean['min_window_notes_per_second']:.2f}", f"{mean['distinct_pitches']:.1f}",
                      f"{mean['pitch_class_entropy']:.2f}", f"{mean['key_clarity']:.2f}",
                      f"{mean['sounding_fraction']:.2f}", f"{mean['repetition']:.2f}",
                      f"{mean['quiet_windows']:.2f}")
    console.print(table)
    if plot_output is not None:
        console.print(f"wrote {plot_output}")


@app.command("fad")
def eval_fad(
    generated: Annotated[list[Path], typer.Argument(
        help="Generated audio files, or folders searched (recursively) for .wav and .flac files.")],
    data: Annotated[Path, typer.Option("--data", help="Corpus folder made by `pyramid dataset build`.")],
    split: Annotated[str, typer.Option(help="Corpus split to compare with.")] = "test",
    embedding: Annotated[str | None, typer.Option(
        "--embedding", help="'notes' (transcription statistics), 'mel-stats' (log-mel statistics) or "
        "module:function, a callable fn(wav (T,) float32, sample_rate) -> (n_frames, dim) array, e.g. a "
        "VGGish/CLAP/MERT wrapper [default: notes].")] = None,
    max_seconds: Annotated[float | None, typer.Option(
        help="Embed at most this many seconds from the middle of each reference file (bounds time).")] = None,
    threads: TranscriptionThreadsOption = 1,
    json_output: JsonOption = False,
) -> None:
    """Fréchet distance between generated audio and a corpus split (lower is closer).

    The default embedding, 'notes', summarises 1-second windows of Basic Pitch's note and onset
    posteriors: which pitch classes and octaves sound, which start notes, note density,
    polyphony and harmonic change. It sees notes, not timbre (a drone is far from music in it).
    'mel-stats' summarises log-mel band means and spread, onset strength and loudness: timbre,
    spectral balance and dynamics, not pitch. Neither sees form beyond a second, and the figures
    are not comparable with published FAD numbers. As a yardstick, the distance between the two
    halves of the reference split is reported too (reference_self_distance): a generated set
    near it is as close as the data is to itself.

    Example: pyramid eval fad generated/ --data corpus --split test --max-seconds 30 --json
    """
    from pyramid_cli.errors import UsageError
    from pyramid_cli.metrics.fad import (
        corpus_split_files,
        embed_files,
        fad_from_embeddings,
        find_audio_files,
        load_embedding,
        reference_self_distance,
    )

    if max_seconds is not None and max_seconds <= 0:
        raise UsageError("--max-seconds must be positive")
    name, fn = load_embedding(embedding, threads=threads)
    generated_files = find_audio_files(generated)
    reference_files = corpus_split_files(data, split)
    with make_progress() as progress:
        task = progress.add_task("embedding", total=len(generated_files) + len(reference_files))
        generated_emb = embed_files(generated_files, fn, on_file=lambda _: progress.advance(task))
        reference_emb = embed_files(reference_files, fn, max_seconds, on_file=lambda _: progress.advance(task))
    result = fad_from_embeddings(generated_emb, reference_emb, name)
    yardstick = reference_self_distance(reference_emb, name)
    record = {
        **result.to_dict(), "reference_self_distance": yardstick.distance if yardstick else None,
        "n_generated_files": len(generated_files), "n_reference_files": len(reference_files),
        "data": str(data), "split": split, "max_seconds": max_seconds,
    }
    if json_output:
        print_json(record)
        return
    from rich.markup import escape

    table = Table(title=escape(f"Fréchet distance ({name}, dim {result.dim}) to {data} [{split}]"))
    for column in ("set", "files", "frames", "distance"):
        table.add_column(column, justify="right")
    table.add_row("generated vs reference", str(len(generated_files)),
                  f"{result.n_generated_frames} vs {result.n_reference_frames}", f"{result.distance:.3f}")
    if yardstick is not None:
        half = len(reference_files) // 2
        table.add_row("reference half vs half", f"{half} vs {len(reference_files) - half}",
                      f"{yardstick.n_generated_frames} vs {yardstick.n_reference_frames}",
                      f"{yardstick.distance:.3f}")
    console.print(table)
    if yardstick is None:
        console.print("no yardstick: the reference split needs at least 2 files for reference_self_distance")
    if min(result.n_generated_frames, result.n_reference_frames) <= result.dim:
        console.print(f"note: fewer frames than the embedding's {result.dim} dimensions; the covariance is "
                      "rank-deficient and the distance is biased upward (use more or longer files)")
