"""The promotion gate (mrisynth.inference.promote): the validation metric tag, the margin, the champion alias,
a missing signature and the `mrisynth promote` CLI. The registered versions come from the `promo` fixture."""
import os
import subprocess
import sys

import mlflow
import pytest

from mrisynth.inference.promote import PromotionError, is_validation_metric, promote

GATE = "val_dice_gain_beyond_classic"


def _tag(version: str, value: float, metric: str = GATE) -> None:
    mlflow.MlflowClient().set_model_version_tag("promo-generator", version, metric, str(value))


def _reset(versions) -> None:
    """Promotion tests share the 'promo-generator' versions: start each from no tags and no champion."""
    client = mlflow.MlflowClient()
    for version in versions:
        for key in list(client.get_model_version("promo-generator", version).tags):
            client.delete_model_version_tag("promo-generator", version, key)
    try:
        client.delete_registered_model_alias("promo-generator", "champion")
    except mlflow.exceptions.MlflowException:
        pass
    client.set_registered_model_alias("promo-generator", "challenger", versions[-1])


@pytest.mark.parametrize("name, allowed", [
    ("val_dice_gain_beyond_classic", True), ("val_gan_train_dice_tumour", True), ("diversity_val", True),
    ("test_dice_gain_beyond_classic", False), ("test_gan_train_dice_tumour", False), ("diversity_test", False),
    ("dice_gain_beyond_classic", False),  # no split in the name: not known to be validation
    ("val_dice_on_test", False), ("evaluate_run_id", False), ("promotion_decision", False),
])
def test_only_validation_tags_may_decide_promotion(name, allowed):
    assert is_validation_metric(name) is allowed


def test_promotion_gate(promo):
    v1, v2, v3 = promo
    _reset(promo)
    client = mlflow.MlflowClient()
    with pytest.raises(PromotionError, match=f"lacks the metric tag '{GATE}'.*dvc repro evaluate"):
        promote("promo-generator", v1)
    with pytest.raises(PromotionError, match="expected a validation metric"):
        promote("promo-generator", v1, metric="test_dice_gain")
    _tag(v1, -0.010)  # worse than classic augmentation on validation: never champion, not even the first version
    refused = promote("promo-generator", v1)
    assert not refused.promoted and "not above the margin 0" in refused.reason and "--force" in refused.reason
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_model_version_by_alias("promo-generator", "champion")
    assert not promote("promo-generator", v1, margin=0.02).promoted
    _tag(v1, 0.010)
    assert not promote("promo-generator", v1, margin=0.02).promoted  # a configured margin binds too
    assert promote("promo-generator", v1).promoted  # no champion yet, gain above 0
    _tag(v1, 0.0, "test_dice_gain_beyond_classic")
    _tag(v2, 0.005)
    _tag(v2, 0.9, "test_dice_gain_beyond_classic")  # a far better TEST tag must not matter
    kept = promote("promo-generator", v2)
    assert not kept.promoted and "does not beat champion" in kept.reason
    assert str(client.get_model_version_by_alias("promo-generator", "champion").version) == v1
    assert client.get_model_version("promo-generator", v2).tags["promotion_decision"] == "kept as is"
    _tag(v3, 0.020)  # v3 is the challenger (latest registration): the default candidate
    assert promote("promo-generator").promoted
    version = client.get_model_version("promo-generator", v3)
    assert version.tags["promotion_champion_before"] == v1 and "Promotion: promoted" in version.description
    assert promote("promo-generator", v2, force=True).promoted
    assert str(client.get_model_version_by_alias("promo-generator", "champion").version) == v2
    promote("promo-generator", v3)  # back to the best one for the serving test
    assert str(client.get_model_version_by_alias("promo-generator", "champion").version) == v3


def test_promotion_refuses_missing_signature(trained):
    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return model_input

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    mlflow.set_experiment("promo-nosig")
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="echo", python_model=Echo(), registered_model_name="promo-nosig", pip_requirements=["mlflow"])
    mlflow.MlflowClient().set_model_version_tag("promo-nosig", info.registered_model_version, GATE, "0.5")
    with pytest.raises(PromotionError, match="no input/output signature"):
        promote("promo-nosig", str(info.registered_model_version))


def test_promote_cli(promo, trained):
    # self-contained: v1 is the champion with a better validation gain than v2
    _reset(promo)
    client = mlflow.MlflowClient()
    _tag(promo[0], 0.010)
    _tag(promo[1], 0.005)
    client.set_registered_model_alias("promo-generator", "champion", promo[0])
    r = subprocess.run([sys.executable, "-m", "mrisynth.cli", "promote", "--name", "promo-generator", "--version", promo[1]],
                       cwd=trained, capture_output=True, text=True)
    assert r.returncode == 0 and "NOT promoted" in r.stdout, r.stderr


def test_an_unknown_version_says_where_to_find_the_registered_ones(promo):
    with pytest.raises(PromotionError, match=r"version 999 not found .*pick a registered version with --version \(the MLflow UI's Models page"):
        promote("promo-generator", 999)


@pytest.mark.parametrize("version", [0, -1, "0"])
def test_version_zero_or_below_is_refused_not_read_as_no_version(version):
    with pytest.raises(PromotionError, match=rf"--version {version}: expected a registered version number"):
        promote("any-model", version)


def test_a_version_that_is_not_a_number_is_refused_by_the_command_line(capsys):
    from mrisynth import cli

    with pytest.raises(SystemExit) as ended:
        cli.main(["promote", "--version", "abc"])
    assert ended.value.code == 2 and "invalid int value: 'abc'" in capsys.readouterr().err
