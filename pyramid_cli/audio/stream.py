"""Read a long audio file as mono at another sample rate, range by range, without loading it whole.

``pyramid encode`` reads an hour-long file through this, so its memory does not grow with the input:
at any time it holds one chunk of the file, not the file (a 60-minute 44.1 kHz stereo WAV is 1.3 GB
as float32).

Resampling range by range gives the samples the whole-signal ``audio.resample`` gives (julius's
polyphase filter, to float rounding): julius computes output block k (``new`` samples, rates divided
by their gcd) from input samples [k*old - W, k*old + W + old) with W the filter's half width, and
replicates the edge samples only at the true ends of the signal. Reading each range from a
block-aligned start with a margin of whole blocks past W on both sides therefore reproduces the
interior blocks, and the ends, exactly as the whole-signal pass computes them.
"""

from __future__ import annotations

import io
import math
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf

from pyramid_cli.errors import InputError

SCAN_FRAMES = 1 << 18  # frames per block when scanning the whole file (about 6 s at 44.1 kHz)


def wav_header_frames(handle: BinaryIO) -> int | None:
    """Frames the header of a RIFF or RF64 WAV declares, whatever the file really holds.

    Reads the chunk headers from the start of the seekable ``handle`` and restores its position.
    None for other formats, for a header that cannot be walked, and for the lengths a writer to a
    pipe leaves unknown (0 or 0xFFFFFFFF): those promise nothing.
    """
    position = handle.tell()
    try:
        handle.seek(0)
        head = handle.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RF64") or head[8:12] != b"WAVE":
            return None
        block_align, data_size, ds64_size = 0, None, None
        for _ in range(1000):  # files with more chunks before "data" than this are not worth walking
            chunk = handle.read(8)
            if len(chunk) < 8:
                break
            kind, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            body_start = handle.tell()
            if kind == b"fmt " and size >= 14:
                block_align = struct.unpack("<H", handle.read(14)[12:14])[0]
            elif kind == b"ds64" and size >= 16:
                ds64_size = struct.unpack("<Q", handle.read(16)[8:16])[0]
            elif kind == b"data":
                data_size = ds64_size if size == 0xFFFFFFFF and head[:4] == b"RF64" else size
                break
            handle.seek(body_start + size + (size & 1))  # chunks are padded to an even length
    except (OSError, struct.error):
        return None
    finally:
        handle.seek(position)
    if not block_align or not data_size or data_size == 0xFFFFFFFF:
        return None
    return data_size // block_align


class AudioReader:
    """A seekable audio file (or in-memory stream), read as mono float32 at ``sample_rate``.

    Attributes:
        sample_rate: the rate ``read`` returns samples at.
        original_sample_rate, channels: the file's own.
        frames: the frames the file holds, at the original rate.
        header_frames: the frames a WAV header declares (None for other formats or unknown lengths).
        truncated: the header declares more frames than the file holds; only ``frames`` are read.
        num_samples: the length at ``sample_rate`` (julius's: floor(frames * new / old)).
    """

    def __init__(self, source: str | Path | BinaryIO, sample_rate: int, name: str | None = None) -> None:
        self.name = name or (str(source) if isinstance(source, (str, Path)) else "<stream>")
        if isinstance(source, (str, Path)):
            if not Path(source).exists():
                raise InputError(f"{self.name}: no such file")
            if Path(source).is_dir():
                raise InputError(f"{self.name}: is a directory, not an audio file")
        elif not source.seekable():
            source = io.BytesIO(source.read())  # libsndfile needs to seek; a pipe cannot
        if isinstance(source, (str, Path)):
            with open(source, "rb") as handle:
                self.header_frames = wav_header_frames(handle)
        else:
            self.header_frames = wav_header_frames(source)
        try:
            self._file = sf.SoundFile(source)
        except (sf.LibsndfileError, RuntimeError, TypeError) as error:
            # libsndfile's own words, without soundfile's "Error opening <_io.BytesIO object at 0x...>"
            reason = getattr(error, "error_string", None) or str(error)
            raise InputError(f"{self.name}: not a readable audio file ({reason})") from None
        self.original_sample_rate = int(self._file.samplerate)
        self.channels = int(self._file.channels)
        self.frames = int(self._file.frames)
        if self.frames <= 0:
            self.close()
            raise InputError(f"{self.name}: the file holds no audio samples")
        # libsndfile quietly shortens a WAV whose data ends before its header says (a copy cut short,
        # a crashed recorder) to what the file holds; keep the promise so the caller can say so.
        self.truncated = self.header_frames is not None and self.header_frames > self.frames
        self.sample_rate = sample_rate
        gcd = math.gcd(self.original_sample_rate, sample_rate)
        self._old, self._new = self.original_sample_rate // gcd, sample_rate // gcd
        self.num_samples = self.frames * self._new // self._old
        self._resampler = None
        if self._old != self._new:
            import julius

            self._resampler = julius.ResampleFrac(self.original_sample_rate, sample_rate)
            # Whole blocks of margin past the filter's half width (julius's ``_width``, in input samples).
            self._margin_blocks = math.ceil(self._resampler._width / self._old) + 1

    def __enter__(self) -> AudioReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def _frames(self, start: int, stop: int) -> np.ndarray:
        """Input frames [start, stop) mixed down to mono: (stop - start,) float32."""
        try:
            self._file.seek(start)
            data = self._file.read(stop - start, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as error:
            raise InputError(f"{self.name}: the file could not be read past frame {start} ({error})") from None
        if data.shape[0] != stop - start:
            raise InputError(f"{self.name}: the file ends at frame {start + data.shape[0]}, "
                             f"its header promised {self.frames}")
        return data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]

    def read(self, start: int, stop: int) -> np.ndarray:
        """Samples [start, stop) at ``sample_rate``, zeros past the end: (1, stop - start) float32."""
        if not 0 <= start <= stop:
            raise ValueError(f"bad range [{start}, {stop})")
        end = min(stop, self.num_samples)
        out = np.zeros((1, stop - start), dtype=np.float32)
        if start >= end:
            return out
        if self._resampler is None:
            out[0, : end - start] = self._frames(start, end)
            return out
        import torch

        old, new, margin = self._old, self._new, self._margin_blocks
        first_block = max(0, start // new - margin)
        lo = first_block * old
        hi = min(self.frames, (-(-end // new) + margin + 1) * old)
        with torch.inference_mode():
            resampled = self._resampler(torch.from_numpy(self._frames(lo, hi)), full=True).numpy()
        offset = start - first_block * new
        out[0, : end - start] = resampled[offset: offset + end - start]
        return out

    def peak(self) -> float:
        """Largest absolute sample of the mono mix at the original rate, scanning the file in blocks.

        NaN when any sample is NaN, inf when any is infinite (Python's ``max`` would skip a NaN):
        float files can hold them, and the caller refuses such input.
        """
        top = 0.0
        for block_start in range(0, self.frames, SCAN_FRAMES):
            block = self._frames(block_start, min(self.frames, block_start + SCAN_FRAMES))
            block_top = float(np.max(np.abs(block)))
            if not math.isfinite(block_top):
                return block_top
            top = max(top, block_top)
        return top
