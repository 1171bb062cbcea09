"""MLflow model registry side effects: model signatures, registering a Keras model, version tags,
aliases and descriptions, downloading artifacts. Runs and tracking: mrisynth.io.tracking."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def download(uri: str) -> Path:
    """A local copy of an MLflow artifact or model URI (runs:/, models:/, file paths)."""
    import mlflow

    return Path(mlflow.artifacts.download_artifacts(uri))


def segmenter_signature(size: int, channels: int, classes: int):
    """Tensor signature of a segmenter: image (-1, S, S, C) float32 -> probabilities (-1, S, S, K)."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, size, size, channels), "image")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, size, size, classes), "probabilities")]),
    )


def generator_signature(size: int, channels: int, condition_channels: int = 4):
    """Tensor signature of the generator: conditioning (-1, S, S, 4) float32 -> images (-1, S, S, C) in [0, 1]."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, size, size, condition_channels), "conditioning")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, size, size, channels), "image")]),
    )


def tensorflow_distribution() -> str:
    """The installed TensorFlow package: `tensorflow-cpu` (make setup) or `tensorflow` (make setup GPU=1)."""
    from importlib import metadata

    for name in ("tensorflow-cpu", "tensorflow"):
        try:
            metadata.version(name)
            return name
        except metadata.PackageNotFoundError:
            continue
    return "tensorflow"


def register_keras_model(model, name: str, registry_name: str, signature, tags: dict[str, object],
                         alias: str | None = None, description: str | None = None, model_description: str | None = None) -> str:
    """Log a Keras model (MLflow's Keras flavor: no pickled Python) in the active run and register it as a
    new version of `registry_name` with `tags` (and `alias`, `description` = the version's model card);
    returns the version. The registered model is created on first use with `model_description`.
    No input example: MLflow 3.17's Keras flavor fails to write one (its folder does not exist yet)."""
    import keras
    import mlflow.keras
    import tensorflow

    # explicit requirements: MLflow's inference of them loads the model in a subprocess (~6 s per model)
    requirements = [f"{tensorflow_distribution()}=={tensorflow.__version__}", f"keras=={keras.__version__}", f"mlflow=={mlflow.__version__}"]
    info = mlflow.keras.log_model(model, name=name, signature=signature, pip_requirements=requirements)
    ensure_registered_model(registry_name, model_description)
    # the client call, not log_model(registered_model_name=...): that prints "already exists" for every version
    created = mlflow.MlflowClient().create_model_version(registry_name, source=info.model_uri, run_id=info.run_id,
                                                         description=description, model_id=info.model_id)
    version = str(created.version)
    tag_version(registry_name, version, tags)
    if alias:
        set_alias(registry_name, alias, version)
    return version


def ensure_registered_model(registry_name: str, description: str | None = None) -> None:
    """Create the registered model `registry_name` unless it exists; give it `description` when it has none."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        current = client.get_registered_model(registry_name)
    except MlflowException:
        try:
            client.create_registered_model(registry_name, description=description)
            return
        except MlflowException:  # created meanwhile by another process
            current = client.get_registered_model(registry_name)
    if description and not current.description:
        client.update_registered_model(registry_name, description=description)


def tag_version(registry_name: str, version: str | int, tags: dict[str, object]) -> None:
    """Set tags on a registered model version (values stringified; floats with 6 significant digits)."""
    import mlflow

    client = mlflow.MlflowClient()
    for key, value in tags.items():
        text = f"{value:.6g}" if isinstance(value, float) else str(value)
        client.set_model_version_tag(registry_name, str(version), key, text)


def get_version(name: str, version: str | None = None, alias: str | None = None):
    """The registered model version `version` of `name` (or the one holding `alias`); LookupError
    with MLflow's first message line when there is none."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        return client.get_model_version(name, str(version)) if version else client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        raise LookupError(exc.message.splitlines()[0]) from exc


def parse_uri(model_uri: str) -> tuple[str, str | None, str | None] | None:
    """(name, version, alias) of `models:/NAME/VERSION` or `models:/NAME@ALIAS`; None for other URIs."""
    if not model_uri.startswith("models:/"):
        return None
    ref = model_uri[len("models:/"):]
    if "@" in ref:
        name, alias = ref.rsplit("@", 1)
        return name, None, alias
    if "/" in ref and ref.rsplit("/", 1)[1].isdigit():
        name, version = ref.rsplit("/", 1)
        return name, version, None
    return None


def run_param(model_uri: str, key: str) -> str | None:
    """Parameter `key` of the MLflow run that logged the registered version `model_uri` (models:/ URIs), or None
    when the URI is not a registry reference, the version or run is not found, or the run did not log `key`."""
    import mlflow
    from mlflow.exceptions import MlflowException

    parsed = parse_uri(model_uri)
    if parsed is None:
        return None
    try:
        version = get_version(*parsed)
        # read as a dictionary: `run.data` would read to mrisynth.ops.dvcgraph as the params.yaml section `data`
        return mlflow.MlflowClient().get_run(version.run_id).to_dictionary().get("data", {}).get("params", {}).get(key) if version.run_id else None
    except (LookupError, MlflowException):
        return None


def has_signature(name: str, version: str | int) -> bool:
    """Whether the logged model of `name` version `version` carries an input/output signature."""
    import mlflow

    return mlflow.models.get_model_info(f"models:/{name}/{version}").signature is not None


def set_alias(name: str, alias: str, version: str | int) -> None:
    import mlflow

    mlflow.MlflowClient().set_registered_model_alias(name, alias, str(version))


def describe_version(name: str, version: str | int, description: str) -> None:
    import mlflow

    mlflow.MlflowClient().update_model_version(name, str(version), description=description)
