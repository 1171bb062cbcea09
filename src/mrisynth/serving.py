"""The registered generator as an MLflow pyfunc model: validated conditioning in, [0, 1] images out.

Input (the documented encoding, see mrisynth.core.encoding): float32 (N, S, S, 4), channels
NCR/NET (label 1), edema (2), enhancing (4), brain mask; values 0 or 1; the three tumour channels
are mutually exclusive and lie inside the brain. Output: float32 (N, S, S, C) images in [0, 1]."""
from __future__ import annotations

import mlflow.pyfunc
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from mrisynth.core.encoding import CONDITION_CHANNELS


class InputError(MlflowException, ValueError):
    """A request that does not follow the conditioning encoding. As an MlflowException with
    INVALID_PARAMETER_VALUE, the scoring server answers 400 with this message and no stack trace."""

    def __init__(self, message: str):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


def check_conditioning(batch, size: int) -> np.ndarray:
    """Validate a conditioning batch; returns it as float32 or raises InputError saying what is wrong."""
    array = np.asarray(batch)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise InputError(f"conditioning: expected numbers, found dtype {array.dtype}")
    if array.ndim == 3:
        array = array[None]
    expected = f"(N, {size}, {size}, {CONDITION_CHANNELS})"
    if array.ndim != 4 or array.shape[1:] != (size, size, CONDITION_CHANNELS):
        raise InputError(f"conditioning: expected shape {expected}, found {array.shape}")
    array = array.astype(np.float32)
    if not np.all(np.isfinite(array)):
        raise InputError("conditioning: found NaN or inf values, expected 0 or 1")
    values = np.unique(array)
    if not set(values.tolist()) <= {0.0, 1.0}:
        raise InputError(f"conditioning: expected only 0 and 1, found values {values[:6].tolist()}")
    tumour = array[..., :-1]
    if np.any(tumour.sum(axis=-1) > 1):
        raise InputError("conditioning: a pixel has more than one tumour class; channels 0-2 must be one-hot or all 0")
    if np.any((tumour.sum(axis=-1) > 0) & (array[..., -1] == 0)):
        raise InputError("conditioning: tumour pixels outside the brain mask (channel 3)")
    return array


class GeneratorModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper around the Keras generator checkpoint (artifact 'generator')."""

    def load_context(self, context) -> None:
        import keras

        self.model = keras.models.load_model(context.artifacts["generator"], compile=False)
        self.size = int(self.model.input_shape[1])

    def predict(self, context, model_input, params=None):
        if isinstance(model_input, dict):  # a named tensor signature delivers {"conditioning": array}
            if set(model_input) != {"conditioning"}:
                raise InputError(f"expected one input named 'conditioning', found {sorted(model_input)}")
            model_input = model_input["conditioning"]
        batch = check_conditioning(model_input, self.size)
        outputs = [np.asarray(self.model(batch[i : i + 8], training=False), dtype=np.float32) for i in range(0, len(batch), 8)]
        return np.clip((np.concatenate(outputs) + 1.0) / 2.0, 0.0, 1.0)
