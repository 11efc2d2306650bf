"""PyramidCodec: a DAC-style codec with hierarchical token levels (a single level is a DAC).

Modules: config (CodecConfig + presets), layers, quantize (RVQ), model (PyramidCodec), targets
(band-limited per-level targets), losses (mel / STFT / waveform reconstruction losses).
"""

from pyramid_cli.codec.config import PRESETS, CodecConfig, dac_n2, dac_n9, p111, p111_small, p555, preset
from pyramid_cli.codec.model import CodecOutput, PyramidCodec

__all__ = [
    "PRESETS",
    "CodecConfig",
    "CodecOutput",
    "PyramidCodec",
    "dac_n2",
    "dac_n9",
    "p111",
    "p111_small",
    "p555",
    "preset",
]
