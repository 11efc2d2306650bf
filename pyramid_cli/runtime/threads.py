"""CPU threads per phase of work, chosen by measurement.

Sampling a small LM token by token: each step is a few small matrix products, too small to split
across threads that the OS may deschedule. Measured with the bundled LM on 2 cores (20 s piece,
`pyramid generate --json`, two rounds): idle, 1 thread gave 297-346 tokens/s and 2 threads
262-314; with one busy process beside it, 1 thread kept 288-303 tokens/s while 2 threads fell to
75-80. OpenMP's passive wait policy rescued 2 threads under load (233-299) but cost 25-30% idle.
So sampling runs on one thread unless told otherwise. The codec (audio-rate convolutions, large
STFTs) and training keep torch's default of one thread per core.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

SAMPLING_THREADS = 1


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run the block with ``count`` intra-op threads (None: leave the setting alone), then restore it."""
    if count is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
