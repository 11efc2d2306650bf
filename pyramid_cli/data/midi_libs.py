"""pretty_midi and pyfluidsynth, imported without their stdout chatter.

pyfluidsynth prints where it found libfluidsynth to stdout whenever ``$CI`` is set, and
pretty_midi imports it on import. stdout is reserved for data (DESIGN §5), so every module of
pyramid imports them through here.
"""

from __future__ import annotations

import contextlib
import io
from types import ModuleType

from pyramid_cli.errors import DependencyError

with contextlib.redirect_stdout(io.StringIO()):
    import pretty_midi


def load_fluidsynth() -> ModuleType:
    """The pyfluidsynth module; DependencyError with the install command when it is missing."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            import fluidsynth
    except (ImportError, OSError) as error:
        raise DependencyError(
            f"FluidSynth is not available ({error}); install the system library: apt-get install -y libfluidsynth3"
        ) from None
    if not hasattr(fluidsynth, "Synth"):
        raise DependencyError("the 'fluidsynth' module found is not pyfluidsynth; pip install pyfluidsynth")
    return fluidsynth


__all__ = ["load_fluidsynth", "pretty_midi"]
