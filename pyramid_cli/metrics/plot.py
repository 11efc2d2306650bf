"""Mel spectrograms of an input and its reconstructions, one row each (the paper's Figure 3).

matplotlib is an optional dependency (`pip install 'pyramid-cli[plot]'`), imported only here.
"""

from __future__ import annotations

import io

import torch

from pyramid_cli.audio.spectra import log_mel
from pyramid_cli.errors import DependencyError


def spectrogram_png(rows: list[tuple[str, torch.Tensor]], sample_rate: int) -> bytes:
    """A PNG with one mel spectrogram per (title, (1, T) waveform) row, on a shared colour scale."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise DependencyError("plotting needs matplotlib: pip install 'pyramid-cli[plot]'") from None
    mels = [log_mel(wav, sample_rate) for _, wav in rows]
    low, high = -5.0, max(float(m.max()) for m in mels)
    figure, axes = plt.subplots(len(rows), 1, figsize=(10, 2.2 * len(rows)), sharex=True, squeeze=False)
    seconds = max(wav.shape[-1] for _, wav in rows) / sample_rate
    for axis, (title, _), mel in zip(axes[:, 0], rows, mels, strict=True):
        axis.imshow(mel.numpy(), origin="lower", aspect="auto", vmin=low, vmax=high, cmap="magma",
                    extent=(0.0, mel.shape[1] * 256 / sample_rate, 0, mel.shape[0]))
        axis.set_title(title, fontsize=10, loc="left")
        axis.set_ylabel("mel band")
    axes[-1, 0].set_xlabel("time (s)")
    axes[-1, 0].set_xlim(0, seconds)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def music_stats_png(pieces: list[tuple[str, list[dict[str, float]]]]) -> bytes:
    """A PNG of window statistics over time, one line per piece: notes/s, distinct pitches,
    pitch-class entropy, key clarity and repetition (``music_stats.WindowStats`` dicts)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise DependencyError("plotting needs matplotlib: pip install 'pyramid-cli[plot]'") from None
    panels = (("notes_per_second", "notes / s"), ("distinct_pitches", "distinct pitches"),
              ("pitch_class_entropy", "pitch-class entropy (bits)"), ("key_clarity", "key clarity"),
              ("repetition", "repetition"))
    figure, axes = plt.subplots(len(panels), 1, figsize=(9, 1.9 * len(panels)), sharex=True, squeeze=False)
    for axis, (key, label) in zip(axes[:, 0], panels, strict=True):
        for name, windows in pieces:
            axis.plot([(w["start"] + w["end"]) / 120 for w in windows], [w[key] for w in windows],
                      marker="o", label=name)
        axis.set_ylabel(label, fontsize=8)
        axis.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("time (min, window centres)")
    if len(pieces) <= 8:
        axes[0, 0].legend(fontsize=7, loc="upper right")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()
