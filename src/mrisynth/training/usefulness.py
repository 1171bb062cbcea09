"""GAN usefulness scores (Shmelkov et al., "How good is my GAN?", ECCV 2018), for segmentation.

- GAN-train: a segmenter trained only on synthetic pairs (label maps from the training split,
  rendered by the generator) and scored on the REAL validation and test slices. Close to the real-data
  segmenter's score = the synthetic images carry what a segmenter needs to learn.
- GAN-test: the segmenters trained on real data only (arm `none`) scored on images the generator
  renders from the validation/test label maps. Close to their real-image score = the synthetic
  images look like real ones to a segmenter (a much higher score would mean too-easy images).
- Diversity: the mean per-pixel standard deviation across dropout-active renders of the same mask.

Scores are tumour-class Dice (pooled over the images of a split, background excluded) and BraTS
WT/TC/ET Dice (per image, then averaged), as in `mrisynth.core.segmetrics`."""
from __future__ import annotations

import numpy as np

from mrisynth.inference import rendering
from mrisynth.core import encoding, segmetrics
from mrisynth.io.arrays import SplitArrays

KEYS = ("dice_tumour", "dice_WT", "dice_TC", "dice_ET")


def scores(model, images: np.ndarray, classes: np.ndarray) -> dict[str, float]:
    """The KEYS scores of a segmenter on (images, classes)."""
    from mrisynth.training import segmenter

    metrics = segmetrics.evaluate(classes, segmenter.predict_classes(model, images))
    return {k: float(metrics[k]) for k in KEYS}


def gan_test(real_models: list, generator, split: SplitArrays, seed: int = 0, synthesis: str = "full",
             margin_fraction: float = 0.03, harmonise: str = "none") -> dict[str, float]:
    """Real-data segmenters on rendered versions of a split (mean over models) next to their score on
    the real images: {gan_test_<key>, real_<key>} for KEYS. Inpainting generators re-generate each
    slice's tumour region only (rendering.render_split)."""
    classes = encoding.labels_to_classes(split.labels)
    synthetic = rendering.render_split(generator, split, synthesis, margin_fraction, sample=False, seed=seed, harmonise=harmonise)
    on_fake = [scores(m, synthetic, classes) for m in real_models]
    on_real = [scores(m, split.images, classes) for m in real_models]
    out = {f"gan_test_{k}": float(np.mean([s[k] for s in on_fake])) for k in KEYS}
    out |= {f"real_{k}": float(np.mean([s[k] for s in on_real])) for k in KEYS}
    return out
