"""Validation of a generator's conditioning batch (pure: NumPy, and SciPy through core.inpaint; no MLflow or TensorFlow).

The encoding (mrisynth.core.encoding, mrisynth.core.inpaint): float32 (N, S, S, 4), channels NCR/NET,
edema, enhancing, brain mask, values 0 or 1, the tumour channels one-hot or all 0 and inside the brain;
an inpainting generator takes 5 + C channels: the same four, the region to fill (0/1) and the real slice
in [-1, 1]. Used by the served model (`served_model.check_conditioning`, which answers an MLflow 400) and
by the server's decode workers, which must stay light."""
from __future__ import annotations

import numpy as np

from mrisynth.core.encoding import CONDITION_CHANNELS
from mrisynth.core.inpaint import BRAIN_CHANNEL, REGION_CHANNEL


class ConditioningError(ValueError):
    """A batch that does not follow the conditioning encoding; the message says what is wrong (never the values sent
    beyond a few distinct ones)."""


def check(batch, size: int, channels: int = CONDITION_CHANNELS) -> np.ndarray:
    """`batch` as float32 (N, size, size, channels) ((size, size, channels) is one image), or ConditioningError."""
    array = np.asarray(batch)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise ConditioningError(f"conditioning: expected numbers, found dtype {array.dtype}")
    if array.ndim == 3:
        array = array[None]
    expected = f"(N, {size}, {size}, {channels})"
    if array.ndim != 4 or array.shape[1:] != (size, size, channels):
        raise ConditioningError(f"conditioning: expected shape {expected}, found {array.shape}")
    array = array.astype(np.float32)
    if not np.all(np.isfinite(array)):
        raise ConditioningError("conditioning: found NaN or inf values, expected 0 or 1")
    binary = array[..., : min(channels, REGION_CHANNEL + 1)]  # labels, brain (and the inpainting region)
    values = np.unique(binary)
    if not set(values.tolist()) <= {0.0, 1.0}:
        raise ConditioningError(f"conditioning: expected only 0 and 1, found values {values[:6].tolist()}")
    if channels > REGION_CHANNEL + 1 and (array[..., REGION_CHANNEL + 1 :].min() < -1 or array[..., REGION_CHANNEL + 1 :].max() > 1):
        raise ConditioningError(f"conditioning: channels {REGION_CHANNEL + 1}-{channels - 1} (the real slice) must lie in [-1, 1]")
    tumour = array[..., :BRAIN_CHANNEL]
    if np.any(tumour.sum(axis=-1) > 1):
        raise ConditioningError("conditioning: a pixel has more than one tumour class; channels 0-2 must be one-hot or all 0")
    if np.any((tumour.sum(axis=-1) > 0) & (array[..., BRAIN_CHANNEL] == 0)):
        raise ConditioningError("conditioning: tumour pixels outside the brain mask (channel 3)")
    return array
