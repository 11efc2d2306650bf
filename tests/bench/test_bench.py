"""`pyramid bench`: the measurements on tiny inputs, the report, and the command line."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pyramid_cli.bench import BenchSettings, bench_signal, measure_codec, measure_lm, run_bench, to_markdown
from pyramid_cli.bench import runner as bench_runner
from pyramid_cli.bench.machine import PeakMemory, jemalloc_environment
from pyramid_cli.bench.peers import PEERS, build_peer
from pyramid_cli.codec.config import CodecConfig, preset
from pyramid_cli.codec.model import PyramidCodec
from pyramid_cli.errors import UsageError


def _check_phase(phase, seconds: float) -> None:
    assert phase.wall_seconds > 0 and phase.cpu_seconds >= 0
    assert phase.realtime_factor == pytest.approx(seconds / phase.wall_seconds)
    assert phase.realtime_factor > 0 and phase.cpu_realtime_factor > 0
    if Path("/proc/self/status").exists():
        assert phase.peak_rss_mb is not None and phase.peak_rss_mb > 0
        assert phase.rss_growth_mb is not None and phase.rss_growth_mb >= 0
    assert phase.gpu_peak_mb is None


def test_measure_codec_preset_on_one_second() -> None:
    result = measure_codec("p111_small", 1.0, threads=1)
    config = preset("p111_small")
    assert result.family == "pyramid" and result.weights == "random" and result.name == config.name
    assert result.tokens_per_second == pytest.approx(config.tokens_per_second())
    assert result.audio_seconds == pytest.approx(1.0) and result.sample_rate == config.sample_rate
    assert result.parameters == sum(p.numel() for p in PyramidCodec(config).fold_weight_norm().parameters())
    assert result.threads == 1 and result.device == "cpu" and result.allocator in ("system", "jemalloc")
    _check_phase(result.encode, result.audio_seconds)
    _check_phase(result.decode, result.audio_seconds)
    assert torch.get_num_threads() == 1  # restored (conftest runs tests on one thread)


def test_measure_codec_loads_a_checkpoint_folder(tmp_path: Path) -> None:
    config = CodecConfig(name="tiny", encoder_dim=4, decoder_dim=128, latent_dim=8, n_codebooks=(1, 2, 1))
    PyramidCodec(config).save_pretrained(tmp_path / "tiny")
    result = measure_codec(str(tmp_path / "tiny"), 1.0, chunk_seconds=0.5)
    assert result.weights == "trained" and result.name == "tiny"
    assert result.tokens_per_second == pytest.approx(config.tokens_per_second())
    assert result.encode.realtime_factor > 0 and result.decode.realtime_factor > 0


def test_bench_signal_is_loud_enough_and_deterministic() -> None:
    wav = bench_signal(0.5, 16000)
    assert wav.shape == (1, 8000) and wav.dtype == np.float32
    assert 0.1 < np.abs(wav).max() <= 1.0
    assert np.array_equal(wav, bench_signal(0.5, 16000))


def test_measure_lm_tiny_on_two_seconds() -> None:
    result = measure_lm(2.0, model="tiny", naive_tokens=8, threads=1)
    assert result.weights == "random" and result.name == "pyramid-lm-tiny"
    assert result.piece_seconds >= 2.0 and result.tokens > 0
    assert result.cached_tokens_per_second == pytest.approx(result.tokens / result.cached_seconds)
    assert result.realtime_factor == pytest.approx(result.piece_seconds / result.cached_seconds)
    assert result.naive_tokens == 8 and result.naive_tokens_per_second > 0
    assert result.speedup == pytest.approx(result.cached_tokens_per_second / result.naive_tokens_per_second)


def test_run_bench_in_process_reports_missing_peers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_runner, "peer_available", lambda key: "snac is not installed (test)")
    settings = BenchSettings(seconds=(0.5,), models=("p111_small", "snac_24k"), threads=1, skip_lm=True,
                             isolate=False, skip_memory=True)
    report = run_bench(settings)
    assert [c.key for c in report.codecs] == ["p111_small"]
    assert [(s.model, s.status) for s in report.skipped] == [("snac_24k", "unavailable")] and not report.failed
    data = json.loads(json.dumps(report.to_dict()))
    assert data["machine"]["torch_version"] == torch.__version__ and data["machine"]["logical_cores"] >= 1
    assert data["command"].startswith("pyramid bench --seconds 0.5 --models p111_small,snac_24k")
    markdown = to_markdown(report)
    assert "| pyramid-22k-p111-small | random |" in markdown and "snac_24k: unavailable" in markdown


def test_run_bench_times_the_lm_in_the_asked_dtype() -> None:
    settings = BenchSettings(seconds=(0.5,), models=("p111_small",), threads=1, lm="tiny", lm_seconds=2.0,
                             naive_tokens=4, lm_dtype="bfloat16", isolate=False, skip_memory=True)
    report = run_bench(settings)
    assert report.lm is not None and report.lm.dtype == "bfloat16" and report.lm.compiled_seconds is None
    assert "--lm-dtype bfloat16" in report.command
    assert "| pyramid-lm-tiny | random | " in to_markdown(report) and "| bfloat16 |" in to_markdown(report)


def test_skip_peers_drops_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_runner, "peer_available", lambda key: None)
    skipped: list = []
    notes: list[str] = []
    settings = BenchSettings(models=("p111", *PEERS), skip_peers=True)
    assert bench_runner._selected_models(settings, skipped, notes) == ["p111"]
    assert not skipped and any("--skip-peers" in note for note in notes)


def test_jemalloc_missing_falls_back_with_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_runner, "find_jemalloc", lambda: None)
    notes: list[str] = []
    allocators, library = bench_runner._allocators(BenchSettings(allocator="both"), notes)
    assert allocators == ["system"] and library is None and "libjemalloc2" in notes[0]
    env = jemalloc_environment(Path("/x/libjemalloc.so.2"))
    assert env["LD_PRELOAD"].startswith("/x/libjemalloc.so.2") and "dirty_decay_ms:-1" in env["MALLOC_CONF"]
    system = bench_runner._environment("system", None)
    assert "jemalloc" not in system.get("LD_PRELOAD", "") and "MALLOC_CONF" not in system


@pytest.mark.parametrize("kwargs", [{"seconds": (0.0,)}, {"seconds": (math.inf,)}, {"threads": 0},
                                    {"allocator": "tcmalloc"}, {"allocator": "both", "isolate": False},
                                    {"naive_tokens": 0}, {"memory_seconds": (0.0,)}, {"lm_dtype": "float64"}])
def test_settings_refuse_impossible_values(kwargs: dict) -> None:
    with pytest.raises(UsageError):
        BenchSettings(**kwargs)


def test_peak_memory_sees_a_large_allocation() -> None:
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc")
    memory = PeakMemory()
    memory.start()
    # Above pyramid_cli.runtime.allocator's mmap threshold: fresh pages even when an earlier test made malloc keep
    # freed memory for reuse.
    block = np.ones(320 * 2**20 // 8)  # 320 MiB, touched
    del block
    peak, growth = memory.stop()
    assert peak is not None and growth is not None and growth > 250


@pytest.mark.parametrize("key", sorted(PEERS))
def test_peers_build_with_their_published_token_rates(key: str) -> None:
    pytest.importorskip(PEERS[key].module)
    expected = {"dac_16k": 600.0, "dac_24k": 2400.0, "dac_44k": 9 * 44100 / 512, "snac_24k": 24000 / 512 * 1.75,
                "snac_32k": 32000 / 384 * 1.875, "snac_44k": 44100 / 384 * 1.875, "encodec_24k": 600.0}
    peer = build_peer(key)
    assert peer.tokens_per_second == pytest.approx(expected[key])
    result = measure_codec(key, 0.25, threads=1)
    assert result.family == PEERS[key].family and result.encode.realtime_factor > 0


def test_cli_json(pyramid) -> None:
    result = pyramid("bench", "--json", "--seconds", "1", "--models", "p111_small", "--skip-peers", "--skip-lm",
                     "--threads", "1", "--skip-memory", "--in-process")
    assert result.code == 0, result.stderr
    data = json.loads(result.stdout)
    (codec,) = data["codecs"]
    assert codec["key"] == "p111_small" and codec["threads"] == 1 and codec["encode"]["realtime_factor"] > 0
    assert codec["tokens_per_second"] == pytest.approx(preset("p111_small").tokens_per_second())
    assert data["lm"] is None and data["machine"]["cpu_model"] and data["date"]
    assert "enc RTF" in result.stderr  # the table goes to stderr


@pytest.mark.slow
def test_cli_json_measures_memory_in_real_processes() -> None:
    """The isolated measurements and the real `pyramid encode` / `decode` on a 2 s WAV, each in its own process."""
    result = subprocess.run([sys.executable, "-m", "pyramid_cli", "bench", "--json", "--seconds", "1", "--models",
                             "p111_small", "--skip-peers", "--skip-lm", "--threads", "1", "--memory-seconds", "2"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert [codec["key"] for codec in data["codecs"]] == ["p111_small"]
    (memory,) = data["memory"]
    assert memory["audio_seconds"] == 2 and memory["file_mb"] == pytest.approx(2 * 44100 * 2 * 2 / 2**20, rel=0.01)
    for command in ("encode", "decode"):
        assert memory[command]["peak_rss_mb"] > 50 and memory[command]["wall_seconds"] > 0
    assert "decode peak MB" in result.stderr


def test_bench_wav_is_a_cd_rip_of_the_asked_length(tmp_path: Path) -> None:
    import soundfile as sf

    from pyramid_cli.bench.memory import write_bench_wav

    write_bench_wav(tmp_path / "x.wav", 61.5)  # crosses a block boundary
    info = sf.info(str(tmp_path / "x.wav"))
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (44100, 2, "PCM_16", round(61.5 * 44100))


def test_cli_usage_errors(pyramid) -> None:
    result = pyramid("bench", "--json", "--markdown", "--skip-lm")
    assert result.code == 2 and "choose one" in result.stderr
    result = pyramid("bench", "--models", "no-such-model", "--skip-lm")
    assert result.code == 2 and "no-such-model" in result.stderr
