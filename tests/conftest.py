"""Shared fixtures: the real MIDI files beside the repo (skipped when absent), tiny corpora, and
``pyramid``: the command line run in-process (``pyramid_cli.cli.main``: the installed command's own
error mapping and exit codes, without a new process and its torch import per call)."""

from __future__ import annotations

import io
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from cli_runner import Result, _Terminal

SHARED_MIDI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "midi"


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> Iterator[None]:
    """Tests run tiny tensors: one intra-op thread avoids the OpenMP hand-off stalls that make
    them 5-50x slower on a loaded 2-core machine (CI, or training running beside the tests)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def shared_midi_dir() -> Path:
    """The development MIDI files of ../shared/data/midi/dev (tests using it skip without it)."""
    folder = SHARED_MIDI / "dev"
    if not folder.is_dir() or not any(folder.glob("*.mid")):
        pytest.skip("../shared/data/midi/dev is not beside the repository")
    return folder


@pytest.fixture(scope="session")
def few_real_midi(shared_midi_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with links to three real Lakh MIDI files, in a nested (Lakh-like) layout."""
    folder = tmp_path_factory.mktemp("midi")
    for index, path in enumerate(sorted(shared_midi_dir.glob("*.mid"))[:3]):
        target = folder / str(index) / path.name
        target.parent.mkdir()
        target.symlink_to(path)
    return folder


@pytest.fixture(scope="session")
def token_set_writer():
    """``tests/token_sets.write_token_set``: a synthetic token set in the tokenize format."""
    from token_sets import write_token_set

    return write_token_set


@pytest.fixture
def pyramid(capsysbinary: pytest.CaptureFixture[bytes], monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    """Run ``pyramid ARGS`` in-process; stdin is a terminal unless bytes are given."""

    def run(*args: str, stdin: bytes | None = None) -> Result:
        stream = _Terminal() if stdin is None else io.BytesIO(stdin)
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(stream))
        from pyramid_cli.cli import main

        with pytest.raises(SystemExit) as exit_info:
            main(list(args))
        out, err = capsysbinary.readouterr()
        return Result(int(exit_info.value.code or 0), out, err.decode())

    return run
