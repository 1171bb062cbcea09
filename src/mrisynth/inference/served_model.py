"""The registered generator: a Keras-flavor MLflow model (no pickles), loaded and served safely.

Input (the documented encoding, see mrisynth.core.encoding): float32 (N, S, S, 4), channels
NCR/NET (label 1), edema (2), enhancing (4), brain mask; values 0 or 1; the three tumour channels
are mutually exclusive and lie inside the brain. Output: float32 (N, S, S, C) images in [0, 1].
An inpainting generator (`train_gan.synthesis: inpaint`, mrisynth.core.inpaint) takes (N, S, S, 5 + C):
the same four channels, the region to fill (0/1) and the real slice in [-1, 1] (-1 inside the region);
its registered model returns the real slice outside the region and the generated pixels inside."""
from __future__ import annotations

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from mrisynth.errors import MrisynthError

from mrisynth.core import conditioning
from mrisynth.core.encoding import CONDITION_CHANNELS
from mrisynth.core.inpaint import REGION_CHANNEL
from mrisynth.inference import rendering


class ModelRefused(MrisynthError):
    """A model artifact that is not loaded (wrong flavor, missing file, code that safe_mode will not run):
    one line for the user, no traceback."""


class InputError(MlflowException, ValueError):
    """A request that does not follow the conditioning encoding. As an MlflowException with
    INVALID_PARAMETER_VALUE, the scoring server answers 400 with this message and no stack trace."""

    def __init__(self, message: str):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


def check_conditioning(batch, size: int, channels: int = CONDITION_CHANNELS) -> np.ndarray:
    """Validate a conditioning batch of `channels` channels (4, or 5 + C for an inpainting generator);
    returns it as float32 or raises InputError saying what is wrong (the rules: `core.conditioning.check`)."""
    try:
        return conditioning.check(batch, size, channels)
    except conditioning.ConditioningError as exc:
        raise InputError(str(exc)) from None


SERVED_LAYER = "to_unit_range"
DEFAULT_MAX_BATCH = 16


def export_model(generator):
    """The generator as registered: a plain Keras model (standard layers only, so `safe_mode`
    loading executes no code) whose output is already mapped from tanh to [0, 1] images (float32).
    An inpainting generator (input 5 + C channels) is wrapped so that its output is the real slice
    (input channels 5..) outside the region (channel 4) and the generated image inside it (a hard
    composite: the channel picks are fixed 1x1 convolutions, so no custom layer is needed)."""
    import keras

    out = keras.layers.Rescaling(0.5, offset=0.5, dtype="float32", name="tanh_to_unit")(generator.output)
    in_channels, out_channels = int(generator.input_shape[-1]), int(generator.output_shape[-1])
    if in_channels == REGION_CHANNEL + 1 + out_channels:
        cond = generator.input
        pick_region = keras.layers.Conv2D(1, 1, use_bias=False, trainable=False, dtype="float32", name="pick_region")
        pick_context = keras.layers.Conv2D(out_channels, 1, use_bias=False, trainable=False, dtype="float32", name="pick_context")
        region, context = pick_region(cond), pick_context(cond)
        kernel = np.zeros((1, 1, in_channels, 1), np.float32)
        kernel[0, 0, REGION_CHANNEL, 0] = 1.0
        pick_region.set_weights([kernel])
        kernel = np.zeros((1, 1, in_channels, out_channels), np.float32)
        kernel[0, 0, REGION_CHANNEL + 1 :, :] = np.eye(out_channels, dtype=np.float32)
        pick_context.set_weights([kernel])
        context = keras.layers.Rescaling(0.5, offset=0.5, dtype="float32", name="context_to_unit")(context)
        keep = keras.layers.Rescaling(-1.0, offset=1.0, dtype="float32", name="outside_region")(region)
        out = keras.layers.Add(dtype="float32", name="composite")([keras.layers.Multiply(dtype="float32", name="real_part")([context, keep]),
                                                                    keras.layers.Multiply(dtype="float32", name="generated_part")([out, region])])
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
        self.in_channels = int(model.input_shape[-1])  # 4, or 5 + C for an inpainting generator
        self.source = source

    @classmethod
    def load(cls, model_uri: str) -> "Generator":
        import keras
        import yaml

        from mrisynth.io import registry

        local = registry.download(model_uri)
        mlmodel = local / "MLmodel"
        if not mlmodel.is_file():
            raise ModelRefused(f"{model_uri}: no MLmodel file in {local}; expected an MLflow model logged by `train_gan`")
        flavors = (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors", {})
        if "keras" not in flavors:
            raise ModelRefused(f"{model_uri}: expected the `keras` flavor (safe to load), found flavors {sorted(flavors)}; "
                             "models registered before this version carry a pickled pyfunc - re-run `dvc repro train_gan`")
        data = flavors["keras"].get("data", "data")
        path = local / data / "model.keras"
        if not path.is_file():
            raise ModelRefused(f"{model_uri}: expected the Keras file {path}, found none")
        try:
            model = keras.saving.load_model(str(path), compile=False, safe_mode=True)
        except Exception as exc:  # e.g. a Lambda layer (code safe_mode will not run), an unknown or unsafe layer config
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise ModelRefused(f"{model_uri}: refused to load {path.name}: {first} (Keras safe_mode: no code from the "
                               "artifact store runs; serve a generator registered by `train_gan`)") from None
        return cls(model, model_uri)

    def predict(self, batch, batch_size: int = 8) -> np.ndarray:
        """(N, S, S, C) images in [0, 1] for a conditioning batch; InputError when it breaks the encoding."""
        return self.predict_checked(check_conditioning(batch, self.size, self.in_channels), batch_size)

    def predict_checked(self, batch: np.ndarray, batch_size: int = 8) -> np.ndarray:
        """`predict` for a batch that `check_conditioning` (or `core.conditioning.check`) already returned:
        float32 (N, S, S, in_channels), not validated again (the server validates each request once, in its decoder)."""
        if len(batch) == 0:
            return np.zeros((0, self.size, self.size, self.channels), np.float32)
        return rendering.clip_to_brain(rendering.predict_batches(self.model, batch, batch_size), batch)
