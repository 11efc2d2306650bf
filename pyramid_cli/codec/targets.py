"""Band-limited multi-scale targets for hierarchical training (PyramidCodec Eq. 2–3)."""

from __future__ import annotations

import julius
import torch


def band_limited_targets(wav: torch.Tensor, n_levels: int) -> list[torch.Tensor]:
    """The reconstruction target of every level, level 0 (coarsest) first.

    Level i keeps 1/2^(N-1-i) of the bandwidth: the input is down-sampled by that factor and
    brought back with ``julius.resample_frac`` (windowed-sinc low-pass, so nothing is left above
    the reduced Nyquist frequency, up to julius's roll-off). Level N-1 is the input itself.

    Args:
        wav: (..., T) audio.
        n_levels: N, the number of levels.

    Returns:
        N tensors shaped like ``wav``; the last one is ``wav`` (not a copy).
    """
    if n_levels < 1:
        raise ValueError(f"n_levels must be at least 1, got {n_levels}")
    length = wav.shape[-1]
    targets = []
    for i in range(n_levels - 1):
        factor = 2 ** (n_levels - 1 - i)
        low = julius.resample_frac(wav, factor, 1, full=True)  # ceil: enough samples to come back
        targets.append(julius.resample_frac(low, 1, factor, output_length=length))
    targets.append(wav)
    return targets
