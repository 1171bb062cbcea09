"""Registered models carry model cards: the registered model's description and each version's card."""
import mlflow

from mrisynth.core import cards


def test_generator_versions_carry_a_model_card(promo):
    client = mlflow.MlflowClient()
    model = client.get_registered_model("promo-generator")
    assert model.description == cards.GENERATOR_MODEL and "Research use only" in model.description
    version = client.get_model_version("promo-generator", promo[0])
    card = version.description
    for part in ("## mrisynth generator", "### Data", "tiny test cases", "### Validation", "val_ssim", "0.5000",
                 "### How to load", "mlflow.keras.load_model('models:/promo-generator/<version>')", "### Intended use"):
        assert part in card, part


def test_registering_a_second_version_prints_no_already_exists(trained_base, capfd):
    from mrisynth.stages import train_gan

    best = trained_base / "work" / "gan" / "best_generator.keras"
    card = {"data": {"source": "tiny"}, "training": {}, "validation": {}}
    from types import SimpleNamespace

    settings = SimpleNamespace(registry_name="quiet-generator")
    versions = []
    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name("quiet")  # not `tiny`: it keeps its single train_gan run
    experiment = found.experiment_id if found else client.create_experiment(
        "quiet", artifact_location=(trained_base / "mlartifacts" / "quiet").resolve().as_uri())
    for _ in range(2):
        with mlflow.start_run(experiment_id=experiment) as run:
            versions.append(train_gan.register(settings, best, 64, 4, run.info.run_id, {"k": 1.5}, card))
    assert versions == ["1", "2"]
    out = capfd.readouterr()
    assert "already exists" not in out.out + out.err
    assert mlflow.MlflowClient().get_model_version("quiet-generator", "2").tags["k"] == "1.5"


def test_segmenter_card_lists_the_arm_training_set():
    card = cards.segmenter_card("seg", {"training set": "train-gan-g2: 300 images (30 real)"}, {"augmentation arm": "gan", "generator draw": None},
                                {"best validation Dice (tumour)": 0.81234}, 128, 4, 4)
    assert "train-gan-g2: 300 images (30 real)" in card and "0.8123" in card and "generator draw" not in card
    assert "(N, 128, 128, 4) class probabilities" in card
