"""The registered generator: a Keras-flavor MLflow model (no pickles), loaded and served safely.

Input (the documented encoding, see mrisynth.core.encoding): float32 (N, S, S, 4), channels
NCR/NET (label 1), edema (2), enhancing (4), brain mask; values 0 or 1; the three tumour channels
are mutually exclusive and lie inside the brain. Output: float32 (N, S, S, C) images in [0, 1]."""
from __future__ import annotations

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


SERVED_LAYER = "to_unit_range"
DEFAULT_MAX_BATCH = 16


def export_model(generator):
    """The generator as registered: a plain Keras model (standard layers only, so `safe_mode`
    loading executes no code) whose output is already mapped from tanh to [0, 1] images (float32)."""
    import keras

    out = keras.layers.Rescaling(0.5, offset=0.5, dtype="float32", name="tanh_to_unit")(generator.output)
    out = keras.layers.ReLU(max_value=1.0, dtype="float32", name=SERVED_LAYER)(out)
    return keras.Model(generator.input, out, name="mrisynth_generator")


class Generator:
    """A registered generator, loaded without executing anything from the artifact store.

    The model version is read as data: MLmodel (YAML) must name the `keras` flavor, and the Keras
    file is opened with `safe_mode=True` (no lambdas, no custom objects). Pickled Python objects that
    older registrations carried (`python_model.pkl`) are never opened. `predict` validates the
    conditioning (`check_conditioning`), runs in batches and zeroes everything outside the brain."""

    def __init__(self, model, source: str = ""):
        self.model = model
        self.size = int(model.input_shape[1])
        self.channels = int(model.output_shape[-1])
        self.source = source

    @classmethod
    def load(cls, model_uri: str) -> "Generator":
        import keras
        import yaml

        from mrisynth.io import tracking

        local = tracking.download(model_uri)
        mlmodel = local / "MLmodel"
        if not mlmodel.is_file():
            raise InputError(f"{model_uri}: no MLmodel file in {local}; expected an MLflow model logged by `train_gan`")
        flavors = (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors", {})
        if "keras" not in flavors:
            raise InputError(f"{model_uri}: expected the `keras` flavor (safe to load), found flavors {sorted(flavors)}; "
                             "models registered before this version carry a pickled pyfunc - re-run `dvc repro train_gan`")
        data = flavors["keras"].get("data", "data")
        path = local / data / "model.keras"
        if not path.is_file():
            raise InputError(f"{model_uri}: expected the Keras file {path}, found none")
        try:
            model = keras.saving.load_model(str(path), compile=False, safe_mode=True)
        except ValueError as exc:  # e.g. a Lambda layer: code that safe_mode refuses to run
            raise InputError(f"{model_uri}: refused to load {path.name}: {str(exc).splitlines()[0][:200]} (safe_mode)") from exc
        return cls(model, model_uri)

    def predict(self, conditioning, batch_size: int = 8) -> np.ndarray:
        batch = check_conditioning(conditioning, self.size)
        outputs = [np.asarray(self.model(batch[i : i + batch_size], training=False), dtype=np.float32)
                   for i in range(0, len(batch), batch_size)]
        images = np.concatenate(outputs) if outputs else np.zeros((0, self.size, self.size, self.channels), np.float32)
        return np.clip(images * batch[..., -1:], 0.0, 1.0).astype(np.float32)
