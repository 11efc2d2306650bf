"""Issue 13: bad inputs, races and environment failures give one clean line, never a traceback.

In-process (``pyramid_cli.cli.main``) runs with a tiny random-weight codec and LM.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from cli_runner import Result

from pyramid_cli.cli import main
from pyramid_cli.codec import CodecConfig, PyramidCodec
from pyramid_cli.hub.identity import codec_identity
from pyramid_cli.lm.config import tiny
from pyramid_cli.lm.model import PyramidLM

TINY = CodecConfig(name="tiny-p111", encoder_dim=8, latent_dim=16, decoder_dim=32)
RATE = 22050


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(codec folder, untrained LM folder fitted to that codec)."""
    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    PyramidCodec(TINY).save_pretrained(folder / "codec")
    name, digest = codec_identity(folder / "codec")
    config = TINY
    lm_config = tiny().with_codec(name, digest, config.sample_rate, config.hop_lengths, config.n_codebooks,
                                  config.codebook_size)
    PyramidLM(lm_config).save_pretrained(folder / "lm")
    return folder / "codec", folder / "lm"


@pytest.fixture
def cli(pyramid: Callable[..., Result]) -> Callable[..., Result]:
    """``pyramid ARGS`` in-process (tests/cli/conftest.py)."""
    return pyramid


def tone(seconds: float, rate: int = RATE) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def clean(result: Result) -> bool:
    """One line on stderr, no traceback, no 'internal error'."""
    return "Traceback" not in result.stderr and "internal error" not in result.stderr


# ---- 1. non-finite audio ----------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["one", "all"])
def test_non_finite_audio_is_refused(cli, models, tmp_path: Path, bad: float, where: str):
    wav = tone(3.0)
    if where == "all":
        wav[:] = bad
    else:
        wav[1000] = bad
    sf.write(tmp_path / "bad.wav", wav, RATE, subtype="FLOAT")
    result = cli("encode", str(tmp_path / "bad.wav"), "--model", str(models[0]), "--device", "cpu")
    assert result.code == 1, result.stderr
    assert "non-finite" in result.stderr and "silent" not in result.stderr and clean(result)
    assert not (tmp_path / "bad.pyr").exists()


def test_non_finite_prompt_is_refused(cli, models, tmp_path: Path):
    sf.write(tmp_path / "nan.wav", np.full(RATE * 2, np.nan, dtype=np.float32), RATE, subtype="FLOAT")
    result = cli("generate", "--seconds", "3", "--prompt", str(tmp_path / "nan.wav"), "-o", str(tmp_path / "x.wav"),
                 "--lm", str(models[1]), "--model", str(models[0]), "--device", "cpu")
    assert result.code == 1, result.stderr
    assert "non-finite" in result.stderr and clean(result)
    assert not (tmp_path / "x.wav").exists()


# ---- 4. one writer per output folder ----------------------------------------------------------------


@pytest.mark.parametrize("command", ["build", "tokenize", "train"])
def test_second_writer_is_refused_naming_the_holder(cli, models, tmp_path: Path, command: str):
    import os

    from pyramid_cli.runtime.locking import folder_lock

    out = tmp_path / "out"
    args = {"build": ["dataset", "build", "--procedural", "1", "--procedural-seconds", "2", "--out", str(out)],
            "tokenize": ["dataset", "tokenize", str(tmp_path / "corpus"), "--out", str(out), "--model",
                         str(models[0]), "--device", "cpu"],
            "train": ["train", "lm", "--tokens", str(tmp_path / "tokens"), "--run", str(out), "--preset", "tiny",
                      "--steps", "1", "--device", "cpu"]}[command]
    if command == "tokenize":
        (tmp_path / "corpus").mkdir()
        (tmp_path / "corpus" / "manifest.jsonl").write_text("")
    if command == "train":
        from token_sets import write_token_set

        name, digest = codec_identity(models[0])
        write_token_set(tmp_path / "tokens", name, digest, {"train": [40], "valid": [30], "test": [30]})
    with folder_lock(out):
        result = cli(*args)
    assert result.code == 1, result.stderr
    assert f"PID {os.getpid()}" in result.stderr and clean(result)


def test_lock_is_released_and_reusable(tmp_path: Path):
    from pyramid_cli.runtime.locking import LockedError, folder_lock

    with folder_lock(tmp_path / "x"):
        with pytest.raises(LockedError, match="PID"):
            with folder_lock(tmp_path / "x"):
                pass
    with folder_lock(tmp_path / "x"):  # released on exit
        pass


# ---- 10. without --force the output is created exclusively ------------------------------------------


def test_encode_does_not_replace_a_file_written_meanwhile(cli, models, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch):
    from pyramid_cli.pyr.file import PyrFile

    sf.write(tmp_path / "a.wav", tone(1.0), RATE)
    target = tmp_path / "a.pyr"
    real = PyrFile.to_bytes

    def racing(self: PyrFile) -> bytes:
        target.write_bytes(b"the other writer's")  # another encode finished first
        return real(self)

    monkeypatch.setattr(PyrFile, "to_bytes", racing)
    result = cli("encode", str(tmp_path / "a.wav"), "--model", str(models[0]), "--device", "cpu")
    assert result.code == 1 and "already exists" in result.stderr and clean(result)
    assert target.read_bytes() == b"the other writer's"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    result = cli("encode", str(tmp_path / "a.wav"), "--model", str(models[0]), "--device", "cpu", "--force")
    assert result.code == 0 and target.read_bytes() != b"the other writer's"


def test_exclusive_atomic_write(tmp_path: Path):
    from pyramid_cli.runtime.fileio import write_bytes_atomic

    write_bytes_atomic(tmp_path / "f", b"one", exclusive=True)
    with pytest.raises(FileExistsError):
        write_bytes_atomic(tmp_path / "f", b"two", exclusive=True)
    assert (tmp_path / "f").read_bytes() == b"one" and sorted(p.name for p in tmp_path.iterdir()) == ["f"]


# ---- 3. the environment's failures stop the build and are never recorded against a file ----------------


def _build(cli, out: Path, *extra: str) -> Result:
    return cli("dataset", "build", "--procedural", "2", "--procedural-seconds", "2", "--workers", "1",
               "--out", str(out), *extra)


def test_unwritable_output_stops_the_build_without_recording_failures(cli, tmp_path: Path):
    out = tmp_path / "corpus"
    out.mkdir()
    (out / "audio").write_text("not a folder")  # every audio write fails, as on a full disk
    result = _build(cli, out)
    assert result.code == 1 and "stopped: cannot write" in result.stderr and clean(result), result.stderr
    failures = out / "failures.jsonl"
    assert not failures.exists() or failures.read_text() == ""
    (out / "audio").unlink()  # the environment is fixed: the rerun builds everything
    result = _build(cli, out)
    assert result.code == 0, result.stderr
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 2


def test_unreadable_sound_font_stops_the_build(cli, tmp_path: Path):
    (tmp_path / "bad.sf2").write_bytes(b"RIFF\0\0\0\0garbage")
    result = _build(cli, tmp_path / "corpus", "--soundfont", str(tmp_path / "bad.sf2"))
    assert result.code == 1 and "sound font" in result.stderr and clean(result), result.stderr
    failures = tmp_path / "corpus" / "failures.jsonl"
    assert not failures.exists() or failures.read_text() == ""


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--sample-rate", "0", "--sample-rate"),
    ("--memory-limit", "1", "--memory-limit"),
    ("--timeout", "nan", "--timeout"),
    ("--procedural-seconds", "0", "--procedural-seconds"),
    ("--procedural-seconds", "-5", "--procedural-seconds"),
])
def test_impossible_build_settings_are_usage_errors(cli, tmp_path: Path, option: str, value: str, message: str):
    result = cli("dataset", "build", "--procedural", "1", "--out", str(tmp_path / "corpus"), option, value)
    assert result.code == 2 and message in result.stderr and clean(result), result.stderr
    assert not (tmp_path / "corpus" / "failures.jsonl").exists()


def test_a_build_where_everything_failed_exits_non_zero(cli, tmp_path: Path):
    midi = tmp_path / "midi"
    midi.mkdir()
    (midi / "empty.mid").write_bytes(b"")
    (midi / "cut.mid").write_bytes(b"MThd\0\0\0\x06\0\x01\0\x02\x01\xe0MTrk\0\0\x01\0\0\x90")
    result = cli("dataset", "build", "--midi-dir", str(midi), "--out", str(tmp_path / "corpus"), "--workers", "1")
    assert result.code == 1 and "nothing was built" in result.stderr and clean(result), result.stderr
    # 13: zero-byte and truncated MIDI files fail with a reason, not a bare 'EOFError: '
    reasons = [json.loads(line)["error"] for line in (tmp_path / "corpus" / "failures.jsonl").read_text().splitlines()]
    assert len(reasons) == 2 and all(not r.rstrip(")").endswith(": ") for r in reasons), reasons
    assert any("empty" in r for r in reasons) and any("truncated" in r or "ends" in r for r in reasons), reasons


def test_c_level_stderr_is_captured(capfd: pytest.CaptureFixture[str]):
    import os

    from pyramid_cli.data.build import _captured_stderr

    with _captured_stderr() as log:
        os.write(2, b"fluidsynth: warning: No preset found\n")
    assert log == ["fluidsynth: warning: No preset found"]
    assert "No preset found" not in capfd.readouterr().err


# ---- 12. options and files that used to end in 'internal error' ------------------------------------------


@pytest.mark.parametrize("args", [["--temperature", "nan"], ["--temperature", "inf"], ["--prompt-seconds", "nan"]])
def test_non_finite_generation_options(cli, models, tmp_path: Path, args: list[str]):
    sf.write(tmp_path / "p.wav", tone(2.0), RATE)
    result = cli("generate", "--seconds", "3", "-o", str(tmp_path / "x.wav"), "--prompt", str(tmp_path / "p.wav"),
                 *args, "--lm", str(models[1]), "--model", str(models[0]), "--device", "cpu")
    assert result.code == 2 and args[0] in result.stderr and clean(result), result.stderr


def test_build_out_that_is_a_file(cli, tmp_path: Path):
    (tmp_path / "file").write_text("x")
    result = cli("dataset", "build", "--procedural", "1", "--out", str(tmp_path / "file"))
    assert result.code == 1 and "cannot write" in result.stderr and clean(result), result.stderr


def test_binary_groups_csv(cli, tmp_path: Path):
    (tmp_path / "groups.csv").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "midi").mkdir()
    result = cli("dataset", "build", "--midi-dir", str(tmp_path / "midi"), "--groups-csv", str(tmp_path / "groups.csv"),
                 "--out", str(tmp_path / "corpus"))
    assert result.code == 1 and "not a UTF-8 CSV" in result.stderr and clean(result), result.stderr


# ---- 8. a full disk during decode: one clean line, no file left ------------------------------------------


def test_full_disk_during_decode(cli, models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import contextlib
    import errno

    import pyramid_cli.cli.codec as codec_cli
    from pyramid_cli.runtime.fileio import atomic_write

    sf.write(tmp_path / "a.wav", tone(3.0), RATE)
    assert cli("encode", str(tmp_path / "a.wav"), "--model", str(models[0]), "--device", "cpu").code == 0

    class Full:
        def __init__(self, handle: object) -> None:
            self.handle, self.budget = handle, 2000

        def write(self, data: bytes) -> int:
            self.budget -= len(data)
            if self.budget < 0:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.handle.write(data)  # type: ignore[attr-defined]

        def __getattr__(self, name: str) -> object:
            return getattr(self.handle, name)

    @contextlib.contextmanager
    def full_disk(path, **kwargs):  # type: ignore[no-untyped-def]
        with atomic_write(path, **kwargs) as handle:
            yield Full(handle)

    monkeypatch.setattr(codec_cli, "atomic_write", full_disk)
    result = cli("decode", str(tmp_path / "a.pyr"), "-o", str(tmp_path / "a.wav.out.wav"), "--model",
                 str(models[0]), "--device", "cpu")
    err = result.stderr
    assert result.code == 1 and "No space left on device" in err, err
    assert "Traceback" not in err and "AssertionError" not in err and "internal error" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pyr", "a.wav"]


# ---- 9. temporary files of dead writers are removed; SIGTERM cleans up ------------------------------------


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path: Path):
    import subprocess

    from pyramid_cli.runtime.fileio import write_bytes_atomic

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = tmp_path / f".out.wav.{pid}.abc123.tmp"
    live = tmp_path / f".out.wav.{__import__('os').getppid()}.def456.tmp"  # a live writer's: kept
    stale.write_bytes(b"half")
    live.write_bytes(b"half")
    write_bytes_atomic(tmp_path / "out.wav", b"whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out.wav", live.name])


# A `pyramid slow` command that starts an atomic write, says so, and waits to be signalled.
SLOW_WRITER = (
    "import sys, time\n"
    "from pyramid_cli.cli import main\n"
    "import pyramid_cli.cli as cli\n"
    "from pyramid_cli.runtime.fileio import atomic_write\n"
    "def slow():\n"
    "    with atomic_write(sys.argv[1]) as handle:\n"
    "        handle.write(b'part'); handle.flush(); print('writing', flush=True); time.sleep(60)\n"
    "cli.app.command('slow')(slow)\n"
    "main(['slow'])\n"
)


def test_sigterm_removes_the_partial_output(tmp_path: Path):
    import signal
    import time

    process = _python(SLOW_WRITER, str(tmp_path / "out.wav"))
    assert process.stdout is not None and process.stdout.readline().strip() == "writing"
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    time.sleep(0.1)
    assert process.returncode == 143 and "terminated" in err, err
    assert list(tmp_path.iterdir()) == []


# ---- 14. small things ---------------------------------------------------------------------------------------


def test_interrupted_line_prints(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    import pyramid_cli.cli as cli

    def interrupted() -> None:
        raise KeyboardInterrupt

    cli.app.command("interrupt-test")(interrupted)
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(["interrupt-test"])
    finally:
        cli.app.registered_commands.pop()
    assert exit_info.value.code == 130 and "interrupted" in capsys.readouterr().err


def test_stdin_errors_do_not_show_object_reprs(cli, models):
    result = cli("encode", "-", "-o", "-", "--model", str(models[0]), "--device", "cpu", stdin=b"not audio at all")
    assert result.code == 1 and "<stdin>" in result.stderr and "object at 0x" not in result.stderr, result.stderr



@pytest.mark.parametrize("unbuffered", ["1", ""])
def test_decode_into_a_closed_pipe_is_an_error(cli, models, tmp_path: Path, unbuffered: str):
    """`pyramid decode X.pyr -o - | head -c 100`: exit 1 and one line saying the output is incomplete.

    A real pipe whose reader leaves after 100 bytes; the WAV (20 s, 880 KB) is far larger than a pipe's
    buffer. With PYTHONUNBUFFERED=1 stdout is a raw file whose write() took only what the pipe held and
    returned the count, so the rest was dropped, and decode said it had succeeded.
    """
    import os
    import subprocess

    sf.write(tmp_path / "long.wav", tone(20.0), RATE)
    assert cli("encode", str(tmp_path / "long.wav"), "--model", str(models[0]), "--device", "cpu").code == 0
    env = {**os.environ, "PYTHONUNBUFFERED": unbuffered, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "pyramid_cli", "decode", str(tmp_path / "long.pyr"), "-o", "-", "--model",
         str(models[0]), "--device", "cpu", "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert process.stdout is not None and process.stderr is not None
    head = process.stdout.read(100)
    process.stdout.close()  # what `head -c 100` does once it has its bytes
    err = process.stderr.read().decode()
    assert process.wait(timeout=60) == 1, err
    assert head[:4] == b"RIFF"
    assert err.strip().splitlines() == ["error: stdout was closed before all the data was written; the output is "
                                        "incomplete"], err
    assert "→ stdout" not in err


def test_stdout_writes_survive_partial_writes_and_report_a_full_disk(monkeypatch: pytest.MonkeyPatch):
    """A raw stdout that takes 1,000 bytes per call gets all the data; a full one gives one clean error."""
    import errno

    from pyramid_cli.cli._shared import write_output
    from pyramid_cli.errors import InputError

    class Raw(io.RawIOBase):
        def __init__(self, room: int) -> None:
            self.data, self.room = bytearray(), room

        def writable(self) -> bool:
            return True

        def write(self, chunk) -> int:  # type: ignore[no-untyped-def, override]
            if len(self.data) >= self.room:
                raise OSError(errno.ENOSPC, "No space left on device")
            taken = bytes(chunk[:1000])
            self.data += taken
            return len(taken)

    payload = bytes(range(256)) * 40
    roomy = Raw(room=10**6)
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(roomy, write_through=True))  # type: ignore[arg-type]
    write_output("-", payload)
    assert bytes(roomy.data) == payload

    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(Raw(room=3000), write_through=True))  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"^stdout: cannot write \(No space left on device\); the output is "
                       r"incomplete$"):
        write_output("-", payload)


@pytest.mark.parametrize("stdin", [False, True])
def test_a_truncated_wav_encodes_with_a_warning(cli, models, tmp_path: Path, stdin: bool):
    """A WAV cut at half its data: encoded (what is there), with one warning saying how much was readable."""
    sf.write(tmp_path / "whole.wav", tone(4.0), RATE)
    whole = (tmp_path / "whole.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(whole[: 44 + (len(whole) - 44) // 2])
    args = ("-", "-o", str(tmp_path / "cut.pyr")) if stdin else (str(tmp_path / "cut.wav"),)
    result = cli("encode", *args, "--model", str(models[0]), "--device", "cpu",
                 stdin=(tmp_path / "cut.wav").read_bytes() if stdin else None)
    assert result.code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    name = "<stdin>" if stdin else str(tmp_path / "cut.wav")
    assert warnings == [f"warning: {name}: the file is truncated: its header declares 4.00 s, it holds 2.00 s "
                        "(50%); encoding the readable part"], result.stderr
    assert "→" in result.stderr  # and it still reports the encode

    result = cli("encode", str(tmp_path / "whole.wav"), "--model", str(models[0]), "--device", "cpu", "--json")
    assert result.code == 0 and "warning" not in result.stderr
    assert json.loads(result.stdout)["files"][0]["warnings"] == []


@pytest.mark.parametrize(("command", "expected"), [
    (["encode"], ["Missing folders are created", "(created if missing)"]),
    (["decode"], ["Missing folders are created"]),
    (["generate"], ["Missing folders are created", "missing folders are created"]),
    (["plot"], ["Missing folders are created"]),
    (["eval", "music"], ["missing folders are created"]),
    (["train", "codec"], ["created if missing"]),
    (["train", "lm"], ["created if missing"]),
])
def test_help_says_missing_output_folders_are_created(cli, command: list[str], expected: list[str]):
    """Every option naming an output file or folder says that missing folders are made for it."""
    import re

    result = cli(*command, "--help")
    assert result.code == 0, result.stderr
    # Rich wraps the help in a box: drop the borders and join the wrapped lines.
    text = re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯─]", " ", result.stdout.decode()))
    for phrase in expected:
        assert phrase in text, text


def _python(script: str, *args: str, **kwargs: object):  # type: ignore[no-untyped-def]
    import signal
    import subprocess

    def default_sigint() -> None:
        # A suite started in the background of a shell ignores SIGINT, and so would this child.
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    return subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=default_sigint, **kwargs)  # type: ignore[call-overload]


def test_ctrl_c_during_a_command_prints_the_interrupted_line(tmp_path: Path):
    """A real SIGINT in a running command: exit 130, the 'interrupted' line, the partial output removed."""
    import signal

    process = _python(SLOW_WRITER, str(tmp_path / "out.wav"))
    assert process.stdout is not None and process.stdout.readline().strip() == "writing"
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert err.splitlines() == ["interrupted: finished outputs are kept, partial ones removed"], err
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_while_starting_up_is_one_line():
    """Ctrl-C while `pyramid` imports its commands (before main() runs): no import traceback.

    The interrupt is raised by an import hook at a fixed point, which a timed signal could not hit reliably.
    """
    script = (
        "import sys, importlib.abc\n"
        "class Interrupt(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'pyramid_cli.cli.train':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, Interrupt())\n"
        "from pyramid_cli.cli import main\n"
        "main(['--help'])\n"
    )
    process = _python(script)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130 and out == "", err
    assert err.splitlines() == ["interrupted: nothing was written"], err


def test_starting_the_cli_does_not_import_torch():
    """`pyramid --help`, usage errors and the start of every command skip torch's 1+ s import (which also
    made Ctrl-C at startup likely to land in an import)."""
    process = _python("import sys, pyramid_cli.cli; print('torch' in sys.modules)")
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0 and out.strip() == "False", err


def test_the_clis_chunk_length_default_is_the_librarys():
    """The CLI spells the default out (so that it needs no torch); `pyramid encode` and the API must agree."""
    from pyramid_cli.cli import codec as cli_codec
    from pyramid_cli.codec import inference

    assert cli_codec.DEFAULT_CHUNK_SECONDS == inference.DEFAULT_CHUNK_SECONDS


# ---- 11. info reads the header only -----------------------------------------------------------------------


def test_info_reads_the_header_only_and_shows_the_same(cli, models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """With unpacking made impossible, info (table, --json, stdin) prints exactly what the whole file gives."""
    import pyramid_cli.pyr.file as pyr_file
    from pyramid_cli.pyr.file import pyr_summary

    sf.write(tmp_path / "a.wav", tone(3.0), RATE)
    assert cli("encode", str(tmp_path / "a.wav"), "--model", str(models[0]), "--device", "cpu").code == 0
    path = tmp_path / "a.pyr"
    expected = pyr_summary(pyr_file.PyrFile.read(path), path.stat().st_size, str(path))  # codes unpacked
    table_before = cli("info", str(path))

    def no_unpacking(*args: object, **kwargs: object) -> None:
        raise AssertionError("info unpacked the codes")

    monkeypatch.setattr(pyr_file, "unpack_codes", no_unpacking)
    assert cli("decode", str(path), "-o", str(tmp_path / "a.out.wav"), "--model", str(models[0]),
               "--device", "cpu").code == 1  # the patch bites: reading the whole file needs unpacking
    as_json = cli("info", str(path), "--json")
    assert as_json.code == 0, as_json.stderr
    assert json.loads(as_json.stdout) == json.loads(json.dumps(expected))
    table = cli("info", str(path))
    assert table.code == 0 and (table.stdout, table.stderr) == (table_before.stdout, table_before.stderr)
    piped = cli("info", "--json", stdin=path.read_bytes())
    assert piped.code == 0 and json.loads(piped.stdout) == {**json.loads(json.dumps(expected)), "file": "<stdin>"}


def test_info_does_not_import_torch(tmp_path: Path):
    """info of any file is a quick look: torch's import alone took 2 s and 600 MB (a 17 MB .pyr took
    2.2 s and 770 MB in info, 0.4 s and 50 MB without torch)."""
    from pyramid_cli.pyr.file import PyrFile, PyrLevel

    PyrFile(codec_name="x", codec_hash="ab" * 16, sample_rate=RATE, num_samples=2048 * 4, original_sample_rate=RATE,
            original_channels=1, levels=[PyrLevel(2048, np.zeros((1, 4), np.int64))]).write(tmp_path / "x.pyr")
    script = ("import sys\nfrom pyramid_cli.cli import main\ntry:\n    main(['info', sys.argv[1]])\n"
              "except SystemExit as exit:\n    print(exit.code, 'torch' in sys.modules)\n")
    process = _python(script, str(tmp_path / "x.pyr"))
    out, err = process.communicate(timeout=60)
    assert out.split() == ["0", "False"], err
