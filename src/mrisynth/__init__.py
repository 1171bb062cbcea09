"""mrisynth: conditional-GAN augmentation of brain-MRI tumour slices, tracked end to end."""
import os as _os

# Nothing phones home: MLflow, Great Expectations and DVC telemetry are off for every entry point.
for _key, _value in {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "TF_CPP_MIN_LOG_LEVEL": "2",
}.items():
    _os.environ.setdefault(_key, _value)

from mrisynth import _quiet  # noqa: E402 - after the environment above, before any TensorFlow import

_quiet.install()

__version__ = "0.1.0"

MODALITIES = ("flair", "t1", "t1ce", "t2")
BRATS_LABELS = (0, 1, 2, 4)
