"""CPU threads per phase of work, chosen by measurement.

Sampling a small LM token by token: each step is a few small matrix products, too small to split
across threads that the OS may deschedule. Measured with the bundled LM on 2 cores (20 s piece,
`pyramid generate --json`, two rounds): idle, 1 thread gave 297-346 tokens/s and 2 threads
262-314; with one busy process beside it, 1 thread kept 288-303 tokens/s while 2 threads fell to
75-80. OpenMP's passive wait policy rescued 2 threads under load (233-299) but cost 25-30% idle.
So sampling runs on one thread unless told otherwise. The codec (audio-rate convolutions, large
STFTs) and training keep torch's default of one thread per core.

The codec's threads wait passively. Decoding 60 s with the note codec (16 Griffin-Lim iterations,
`pyramid decode --threads N`, two rounds each): idle, 2 threads took 5.5-5.6 s with OpenMP's
default (spinning) wait policy and 5.7-6.0 s with the passive one (1 thread: 6.8-6.9 s); beside
one busy process 8.5-8.6 s against 6.8-7.0 s; beside a test run 27-31 s against 6.0-7.4 s
(3 minutes idle: 8.2-8.6 s against 9.1 s). So
every command but training runs with ``OMP_WAIT_POLICY=PASSIVE`` unless the environment already
sets it (training was not measured, and a training machine is usually dedicated). A short spin
instead (``GOMP_SPINCOUNT`` 1,000 / 3,000, 3 minutes of the note codec) decoded 10% / 16% faster
idle but 8% / 26% slower beside one busy process, so passive waiting stays.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

SAMPLING_THREADS = 1
WAIT_POLICY_ENV = "OMP_WAIT_POLICY"


def choose_wait_policy(argv: Sequence[str]) -> None:
    """Ask OpenMP for passive waiting unless the command is ``train`` or the user chose a policy.

    Must run before torch is imported: OpenMP reads the variable once, when it starts.
    """
    if list(argv[:1]) != ["train"]:
        os.environ.setdefault(WAIT_POLICY_ENV, "PASSIVE")


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run the block with ``count`` intra-op threads (None: leave the setting alone), then restore it."""
    if count is None:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
