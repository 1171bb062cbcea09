"""Model cards: the markdown descriptions of registered models and of each registered version.

A version's card says what data it was trained on, which arm or generator it is, its validation
numbers, how to load it and what it is for. Pure: callers pass every fact in."""
from __future__ import annotations

INTENDED_USE = ("Research use only: not a medical device, not for diagnosis. Trained on the shipped phantom cases "
                "(synthetic brain-MRI slices) unless the data source below names an imported BraTS release.")

GENERATOR_MODEL = (
    "Conditional GAN generators of mrisynth: a tumour label map (and, for inpainting generators, a real slice with "
    "the tumour region blanked) in, a 4-modality brain-MRI slice in [0, 1] out. Each version's description is its "
    "model card (data, generator, validation numbers). The alias `challenger` is the newest version; `champion` is "
    "set by `mrisynth promote`, which compares validation numbers only (`promote.metric`, by default the gain beyond "
    "classic augmentation, which must also exceed `promote.margin` unless forced).\n\n"
    + INTENDED_USE)

SEGMENTER_MODEL = (
    "U-Net tumour segmenters of mrisynth, one version per augmentation arm, seed (and generator draw): an MRI slice "
    "(N, S, S, 4) in, per-pixel probabilities of background, necrosis, oedema and enhancing tumour out. Each "
    "version's description is its model card; the `augmentation` and `seed` tags tell the arms apart.\n\n" + INTENDED_USE)


def _facts(rows: dict[str, object]) -> str:
    return "\n".join(f"- **{key}**: {value}" for key, value in rows.items() if value is not None)


def _number(value: object, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def generator_card(registry_name: str, data: dict[str, object], training: dict[str, object], validation: dict[str, object],
                   size: int, in_channels: int, inpaint: bool) -> str:
    """Markdown card of one generator version. `data`: source, data hash, train/val images; `training`:
    generator, synthesis, alpha, epochs, kept epoch, selection rule, seed, run id; `validation`: scores of
    the kept epoch on the validation split (SSIM, MAE, PSNR)."""
    inputs = (f"(N, {size}, {size}, {in_channels}) float32: labels, brain, region and the real slice outside it "
              "(mrisynth.core.inpaint)" if inpaint else f"(N, {size}, {size}, {in_channels}) float32 conditioning (tumour labels and brain mask)")
    return "\n\n".join([
        "## mrisynth generator",
        "### Data\n" + _facts(data),
        "### Training\n" + _facts(training),
        "### Validation (kept epoch, validation split)\n" + _facts({k: _number(v) for k, v in validation.items()}),
        f"### How to load\n- input {inputs}; output (N, {size}, {size}, 4) images in [0, 1]\n"
        f"- `mlflow.keras.load_model('models:/{registry_name}/<version>')` (standard Keras layers, safe mode)\n"
        f"- `mrisynth generate --model models:/{registry_name}@champion ...` or `mrisynth serve` (validates masks)",
        "### Intended use\n" + INTENDED_USE,
    ])


def segmenter_card(registry_name: str, data: dict[str, object], training: dict[str, object], validation: dict[str, object],
                   size: int, channels: int, classes: int) -> str:
    """Markdown card of one segmenter version. `data`: the arm's training set (name, images, digest) and the
    validation set; `training`: arm, seed, generator draw, epochs; `validation`: best validation tumour Dice."""
    return "\n\n".join([
        "## mrisynth segmenter",
        "### Data\n" + _facts(data),
        "### Training\n" + _facts(training),
        "### Validation (validation split)\n" + _facts({k: _number(v) for k, v in validation.items()}),
        f"### How to load\n- input (N, {size}, {size}, {channels}) float32 MRI slices; output (N, {size}, {size}, {classes}) "
        f"class probabilities (0 background, 1 necrosis, 2 oedema, 3 enhancing)\n"
        f"- `mlflow.keras.load_model('models:/{registry_name}/<version>')` (standard Keras layers, safe mode)",
        "### Intended use\n" + INTENDED_USE,
    ])
