"""The generator registry: `train_gan.generator` name -> builder, the one place to add an architecture.

Every builder takes (size, in_channels, out_channels, dropout, width, distributed) and returns a Keras
model of standard layers mapping conditioning (N, size, size, in_channels) to an image
(N, size, size, out_channels) in [-1, 1]; saved files load with safe_mode (no Lambda, no custom code).
The table holds builder names, not functions, so reading it (config validation) imports no Keras.

To add one: write its builder in `mrisynth.core.models` and add a row here; the parametrised test
`test_every_registered_generator_builds_and_loads_safely` (tests/training/test_synthesis_levers.py)
then builds, saves and safely loads it with no edit."""
from __future__ import annotations

# name -> (builder in mrisynth.core.models, one line for docs and errors)
GENERATORS: dict[str, tuple[str, str]] = {
    "pix2pix": ("build_generator", "the paper's U-Net: conditioning at the input only, skip connections, dropout as noise"),
    "spade": ("build_spade_generator", "the same U-Net whose decoder re-injects the conditioning at every scale "
                                       "through SPADE-style normalisation (Park et al. 2019)"),
    "spade-noise": ("build_spade_noise_generator", "spade plus StyleGAN-style noise injection (a learned per-channel scale "
                                                   "of per-pixel noise) at every decoder scale (Karras et al. 2019)"),
}


def build(name: str, size: int, in_channels: int, out_channels: int, dropout: float, width: float, distributed: bool = False):
    """The generator `name` (a key of GENERATORS)."""
    from mrisynth.core import models

    if name not in GENERATORS:
        raise ValueError(f"generator {name!r}: expected one of {sorted(GENERATORS)}")
    return getattr(models, GENERATORS[name][0])(size, in_channels, out_channels, dropout, width, distributed=distributed)
