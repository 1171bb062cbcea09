"""Loading a registered generator (mrisynth.inference.served_model): nothing from the artifact store runs
as code (no pickle, Keras safe_mode, only the `keras` flavor)."""
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest


def test_loading_a_registered_generator_runs_no_code_from_the_artifact_store(champion, trained, tmp_path):
    """The old format kept a cloudpickled `python_model.pkl`; a replaced pickle ran code on load.
    Plant one (and a malicious MLmodel loader entry) and show that nothing runs."""
    import pickle

    from mrisynth.inference.served_model import Generator, ModelRefused

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias("promo-generator", "champion")
    local = Path(mlflow.artifacts.download_artifacts(version.source))
    assert "python_function" in (local / "MLmodel").read_text() and "keras" in (local / "MLmodel").read_text()
    assert not list(local.rglob("*.pkl")) and not list(local.rglob("*.pickle"))  # nothing pickled was logged
    # plant the pickle where the old pyfunc format kept it, in the artifact store itself
    store_dir = Path(mlflow.artifacts.download_artifacts(version.source, dst_path=str(tmp_path / "planted")))
    (store_dir / "python_model.pkl").write_bytes(pickle.dumps(Evil()))
    (store_dir / "artifacts").mkdir(exist_ok=True)
    generator = Generator.load(str(store_dir))
    generator.predict(np.zeros((1, 64, 64, 4), np.float32))
    assert not marker.exists()
    # a Keras file whose Lambda layer would run code on load (here: create the marker) is refused by safe_mode
    import keras

    touch = eval(f"lambda x: (open({str(marker)!r}, 'w').close(), x)[1]")  # no closure: the path is in the code
    evil = keras.Sequential([keras.Input((64, 64, 4)), keras.layers.Lambda(touch)])
    keras_file = next(store_dir.rglob("model.keras"))
    evil.save(keras_file)
    marker.unlink(missing_ok=True)  # building the model ran the lambda once; loading must not
    with pytest.raises(ModelRefused, match="refused to load model.keras"):
        Generator.load(str(store_dir))
    assert not marker.exists()
    served = subprocess.run([sys.executable, "-m", "mrisynth.cli", "serve", "--model", str(store_dir), "--port", "0"],
                            capture_output=True, text=True, timeout=300)  # the command: one line, no traceback
    errors = [line for line in served.stderr.splitlines() if line.startswith("error:")]
    assert served.returncode == 2 and len(errors) == 1 and "refused to load model.keras" in errors[0], served.stderr[-1500:]
    assert "Traceback" not in served.stderr and not marker.exists()
    # a model that only offers the pickled pyfunc is refused, not loaded
    (store_dir / "MLmodel").write_text("flavors:\n  python_function:\n    python_model: python_model.pkl\n    loader_module: mlflow.pyfunc.model\n")
    with pytest.raises(ModelRefused, match="expected the `keras` flavor"):
        Generator.load(str(store_dir))
    assert not marker.exists()
