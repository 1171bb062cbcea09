"""GAN training: overfitting a tiny batch, checkpoint + resume, refusal on changed params, NaN stop,
the train_gan stage's MLflow run and the registered pyfunc generator."""
import dataclasses
import json

import mlflow
import numpy as np
import pytest

from conftest import _tiny_split, tiny_gan
from mrisynth.errors import ConfigError
from mrisynth.training.checkpoints import TrainingError, load_state
from mrisynth.training.gan import GanTrainer, paper_settings
from mrisynth.io import arrays
from mrisynth.inference.served_model import InputError

TINY = tiny_gan()


class Interrupt(Exception):
    pass


def test_tiny_batch_overfits():
    train = _tiny_split(2)
    trainer = GanTrainer(paper_settings(alpha=100.0, batch_size=2, width=0.25, precision="float32", seed=1), 64, 4, 4)
    cond, real = next(iter(trainer.dataset(train, 0)))
    l1 = [float(trainer._train_step(cond, real)["g_l1"]) for _ in range(40)]
    assert np.isfinite(l1).all()
    assert np.mean(l1[-5:]) < 0.5 * np.mean(l1[:3]), l1


def test_checkpoint_resume_and_refusal(tmp_path):
    train, val = _tiny_split(4), _tiny_split(2, seed=10)
    out = tmp_path / "gan"

    def stop_after_first(result, trainer, state):
        if result.epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        GanTrainer(TINY, 64, 4, 4).fit(train, val, out, on_epoch=stop_after_first)
    state = load_state(out)
    assert state.epoch == 1 and not state.completed and (out / "best_generator.keras").is_file()

    # a new process resumes from epoch 1, with the saved weights
    trainer = GanTrainer(TINY, 64, 4, 4)
    prepared = trainer.prepare(train, val, out)
    assert prepared.epoch == 1
    trainer.load_last(out)
    saved = [w.copy() for w in trainer.generator.get_weights()]
    seen = []
    final = GanTrainer(TINY, 64, 4, 4).fit(train, val, out, on_start=lambda s: seen.append(s.epoch))
    assert seen == [1] and final.epoch == 2 and final.completed and len(final.history) == 2
    assert any(not np.array_equal(a, b) for a, b in zip(saved, GanTrainer(TINY, 64, 4, 4).generator.get_weights()))

    # interrupted again, then a resume with other parameters is refused unless restart
    with pytest.raises(Interrupt):
        GanTrainer(TINY, 64, 4, 4).fit(train, val, out, on_epoch=stop_after_first)
    changed = dataclasses.replace(TINY, alpha=5.0)
    with pytest.raises(ConfigError, match=r"alpha: 100.0 -> 5.0.*restart"):
        GanTrainer(changed, 64, 4, 4).fit(train, val, out)
    fresh = GanTrainer(changed, 64, 4, 4).fit(train, val, out, restart=True)
    assert fresh.completed and fresh.history[0]["epoch"] == 1 and fresh.fingerprint["alpha"] == 5.0


def test_resume_state_is_written_every_n_epochs_and_best_survives(tmp_path):
    train, val = _tiny_split(4), _tiny_split(2, seed=10)
    out = tmp_path / "gan"
    sparse = dataclasses.replace(TINY, epochs=4, checkpoint_every=2)
    saved_at = []

    class Interrupt(Exception):
        pass

    def stop_after_third(result, trainer, state):
        saved_at.append(json.loads((out / "state.json").read_text())["epoch"] if (out / "state.json").is_file() else 0)
        if result.epoch == 3:
            raise Interrupt

    with pytest.raises(Interrupt):  # interrupted before the final save: the last resume state is epoch 2's
        GanTrainer(sparse, 64, 4, 4).fit(train, val, out, on_epoch=stop_after_third)
    assert saved_at == [0, 2, 2]
    best = json.loads((out / "best.json").read_text())
    resumed = GanTrainer(sparse, 64, 4, 4).prepare(train, val, out)
    assert resumed.epoch == 2
    final = GanTrainer(sparse, 64, 4, 4).fit(train, val, out)
    assert final.completed and final.best_val <= best["val_g_loss"] and (out / "best_generator.keras").is_file()


def test_best_generator_is_written_with_the_resume_state_and_on_an_exception(tmp_path):
    """The best weights stay in memory between checkpoints (checkpoint I/O budget); they reach the disk with
    each resume state, at the end, and before any exception propagates (here: an interrupt after epoch 3)."""
    train, val = _tiny_split(4), _tiny_split(2, seed=10)
    out = tmp_path / "gan"
    seen, best_epoch = [], []

    def watch(result, trainer, state):
        best = out / "best.json"
        seen.append(json.loads(best.read_text())["epoch"] + 1 if best.is_file() else None)
        if result.epoch == 3:
            best_epoch.append(state.best_epoch)  # the best so far, in memory
            raise Interrupt

    with pytest.raises(Interrupt):
        GanTrainer(dataclasses.replace(TINY, epochs=6, checkpoint_every=2), 64, 4, 4).fit(train, val, out, on_epoch=watch)
    assert seen[0] is None and seen[1] is not None and seen[1] <= 2 and seen[2] == seen[1]  # on disk at epoch 2 only
    assert json.loads((out / "best.json").read_text())["epoch"] == best_epoch[0]  # flushed by the exception
    assert (out / "best_generator.keras").is_file()


def test_nan_loss_stops_and_keeps_best(tmp_path):
    train, val = _tiny_split(4), _tiny_split(2, seed=10)
    trainer = GanTrainer(dataclasses.replace(TINY, epochs=3, checkpoint_every=10), 64, 4, 4)  # no checkpoint before the NaN
    real_step = trainer._train_step
    calls = {"n": 0}

    def poisoned(cond, real):
        calls["n"] += 1
        out = real_step(cond, real)
        return out | {"g_loss": np.float32("nan")} if calls["n"] > 2 else out  # 2 steps = epoch 1

    trainer._train_step = poisoned
    with pytest.raises(TrainingError, match=r"epoch 2, step 1: g_loss is nan.*the generator of epoch 1 is kept in"):
        trainer.fit(train, val, tmp_path / "gan")
    assert (tmp_path / "gan" / "best_generator.keras").is_file()


def test_nan_in_the_first_epoch_says_nothing_was_kept(tmp_path):
    trainer = GanTrainer(dataclasses.replace(TINY, epochs=2), 64, 4, 4)
    real_step = trainer._train_step
    trainer._train_step = lambda cond, real: real_step(cond, real) | {"d_loss": np.float32("inf")}
    with pytest.raises(TrainingError, match="epoch 1, step 1: d_loss is inf.*no epoch finished, so no generator was written"):
        trainer.fit(_tiny_split(4), _tiny_split(2, seed=10), tmp_path / "gan")
    assert not (tmp_path / "gan" / "best_generator.keras").exists()


def test_a_full_disk_at_the_resume_state_is_one_line_and_leaves_no_partial_folder(tmp_path, monkeypatch):
    import errno

    trainer = GanTrainer(dataclasses.replace(TINY, epochs=2, checkpoint_every=1), 64, 4, 4)
    real_savez, calls = np.savez, {"n": 0}

    def full_disk(path, **arrays):
        calls["n"] += 1
        if calls["n"] == 2:  # the second resume state: epoch 1's is complete
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_savez(path, **arrays)

    monkeypatch.setattr(np, "savez", full_disk)
    out = tmp_path / "gan"
    with pytest.raises(TrainingError) as err:
        trainer.fit(_tiny_split(4), _tiny_split(2, seed=10), out)
    message = str(err.value)
    assert "\n" not in message and "cannot write the resume state of epoch 2 (No space left on device)" in message
    assert "MiB free there" in message and "The state of epoch 1 is kept" in message
    assert not list((out / "resume").glob(".tmp-epoch-*")) and (out / "resume" / "epoch-0001").is_dir()
    monkeypatch.setattr(np, "savez", real_savez)
    state = GanTrainer(dataclasses.replace(TINY, epochs=2, checkpoint_every=1), 64, 4, 4).fit(_tiny_split(4), _tiny_split(2, seed=10), out)
    assert state.completed and state.epoch == 2  # resumed from epoch 1 once there is space


def test_stage_outputs_and_mlflow_run(trained):
    summary = json.loads((trained / "reports" / "train_gan.json").read_text())
    assert summary["epochs"] == 2 and summary["model_version"] == 1
    # epoch 1 saves the best generator (first improvement), epoch 2 the final resume state: some time, less than all
    assert 0 < summary["checkpoint_seconds"] < summary["train_seconds"] and 0 < summary["checkpoint_share"] < 1
    assert (trained / "models" / "generator.keras").is_file()
    history = (trained / "reports" / "train_gan_history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,g_loss") and len(history) == 3

    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("tiny")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["alpha"] == "100.0" and params["width"] == "0.25" and params["precision"] == "float32"
    assert params["data_hash"] and params["git_commit"]
    assert run.data.tags["device"].startswith(("CPU", "GPU")) and run.data.tags["precision"] == "float32"
    assert len(client.get_metric_history(run.info.run_id, "timing/checkpoint_seconds")) == 2  # one per epoch, in the UI's `timing` section
    assert "best_epoch" in run.data.metrics and not any(k.startswith("best_best") for k in run.data.metrics)
    for metric in ("g_loss", "d_loss", "val_g_loss", "val_mae", "val_psnr", "val_ssim"):
        assert len(client.get_metric_history(run.info.run_id, metric)) == 2, metric
    assert any(k.startswith("system/") for k in run.data.metrics), sorted(run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "grids")}
    assert artifacts == {"grids/epoch_001.png", "grids/epoch_002.png"}
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/best_generator.keras"]
    version = client.get_model_version_by_alias("tiny-generator", "challenger")
    assert str(version.version) == "1" and version.run_id == run.info.run_id and version.tags["alpha"] == "100.0"


def test_registered_generator_predicts_images(trained):
    from mrisynth.inference.served_model import Generator

    # plain MLflow (the Keras flavor's pyfunc; no mrisynth code needed): [0, 1] images
    model = mlflow.pyfunc.load_model("models:/tiny-generator@challenger")
    val = arrays.load_split(trained / "work" / "preprocessed", "val")
    images = np.asarray(model.predict(val.conditioning))
    assert images.shape == (2, 64, 64, 4) and images.dtype == np.float32
    assert 0.0 <= images.min() and images.max() <= 1.0
    signature = model.metadata.signature
    assert tuple(signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 64, 64, 4)
    # mrisynth's loader: the same images inside the brain, validated input
    generator = Generator.load("models:/tiny-generator@challenger")
    ours = generator.predict(val.conditioning)
    brain = val.conditioning[..., 3:] > 0
    np.testing.assert_allclose(ours, np.where(brain, images, 0.0), atol=1e-6)
    bad = val.conditioning.copy()
    bad[0, 0, 0, 0] = 0.5
    with pytest.raises(InputError, match="expected only 0 and 1"):
        generator.predict(bad)
    with pytest.raises(InputError, match="shape"):
        generator.predict(np.zeros((1, 32, 32, 4), np.float32))


def test_registered_generator_loads_where_mrisynth_cannot_be_imported(trained):
    """The served artifact needs TensorFlow, Keras and MLflow only (servable from a clean environment)."""
    import os
    import subprocess
    import sys

    code = ("import sys; sys.modules['mrisynth'] = None\n"  # any `import mrisynth...` now fails
            "import mlflow, numpy as np\n"
            "model = mlflow.pyfunc.load_model('models:/tiny-generator@challenger')\n"
            "out = np.asarray(model.predict(np.zeros((1, 64, 64, 4), np.float32)))\n"
            "print('OK', out.shape, float(out.min()) >= 0.0, float(out.max()) <= 1.0)\n")
    ran = subprocess.run([sys.executable, "-c", code], cwd=trained, capture_output=True, text=True, timeout=300,
                         env=os.environ | {"MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"]})
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert "OK (1, 64, 64, 4) True True" in ran.stdout


def test_bad_data_stops_the_stage(trained, capsys):
    from mrisynth.stages import train_gan
    import tifffile

    mask_path = sorted((trained / "data" / "train" / "masks").iterdir())[0]
    original = mask_path.read_bytes()
    mask = tifffile.imread(mask_path)
    mask[0, 0] = 3
    tifffile.imwrite(mask_path, mask)
    try:
        assert train_gan.run("params.yaml") == 1
        assert "labels_ok" in capsys.readouterr().err
    finally:
        mask_path.write_bytes(original)


def test_only_an_unfinalised_run_of_the_same_code_is_finished_without_retraining(tmp_path):
    from mrisynth.training.checkpoints import TrainState, prepare_state, save_state

    out = tmp_path / "gan"
    out.mkdir()
    (out / "best_generator.keras").write_bytes(b"kept")
    finished = TrainState(epoch=2, completed=True, fingerprint={"a": 1}, code="c1", run_id="r")
    save_state(out, finished)
    assert prepare_state(out, {"a": 1}, False, finish_epochs=2, code="c1").run_id == "r"  # finished as it is
    assert (out / "best_generator.keras").is_file()
    for epochs, code in ((3, "c1"), (2, "c2"), (2, None)):  # other epochs, other code, or no finishing asked
        save_state(out, finished)
        (out / "best_generator.keras").write_bytes(b"kept")
        fresh = prepare_state(out, {"a": 1}, False, finish_epochs=epochs if code else None, code=code)
        assert fresh.epoch == 0 and not (out / "best_generator.keras").exists()
    # a state.json written before `finalised` existed was finalised by its stage: never finished again
    save_state(out, finished)
    legacy = {k: v for k, v in json.loads((out / "state.json").read_text()).items() if k not in ("finalised", "code")}
    (out / "state.json").write_text(json.dumps(legacy))
    (out / "best_generator.keras").write_bytes(b"kept")
    assert prepare_state(out, {"a": 1}, False, finish_epochs=2, code=None).epoch == 0


def test_a_failed_write_of_the_kept_generator_leaves_the_previous_one(tmp_path, monkeypatch):
    import errno

    import keras

    from mrisynth.training.checkpoints import BestGenerator

    build = lambda: keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])  # noqa: E731
    best = BestGenerator(build)
    model = build()
    best.keep(0, 1.0, model.get_weights())
    best.flush(tmp_path)
    before = (tmp_path / "best_generator.keras").read_bytes()
    best.keep(1, 0.5, [w + 1 for w in model.get_weights()])
    monkeypatch.setattr(keras.Model, "save", lambda self, path, *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(TrainingError) as err:
        best.flush(tmp_path)
    assert "cannot write the generator of epoch 2 (No space left on device)" in str(err.value) and "\n" not in str(err.value)
    assert "kept before it is unchanged" in str(err.value)
    assert (tmp_path / "best_generator.keras").read_bytes() == before and not list(tmp_path.glob(".best_generator*"))


def test_a_real_full_disk_stops_with_one_line_and_resumes_once_there_is_space(tmp_path):
    """A size-limited tmpfs (where this machine allows mounting one): filled after epoch 1's checkpoint,
    so epoch 2's writes meet a real ENOSPC."""
    import subprocess

    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(small)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"this machine does not allow mounting a size-limited tmpfs ({mounted.stderr.strip()[:80]})")
    try:
        out = small / "gan"

        def fill_the_disk(result, trainer, state):
            if result.epoch == 1:
                with open(small / "filler", "wb") as handle:
                    try:
                        while True:
                            handle.write(b"\0" * (1 << 20))
                            handle.flush()
                    except OSError:
                        pass

        settings = dataclasses.replace(TINY, epochs=2, checkpoint_every=1)
        with pytest.raises(TrainingError) as err:
            GanTrainer(settings, 64, 4, 4).fit(_tiny_split(4), _tiny_split(2, seed=10), out, on_epoch=fill_the_disk)
        message = str(err.value)
        assert "No space left on device" in message and "MiB free there" in message and "\n" not in message
        assert not list(out.rglob(".tmp-epoch-*")) and not list(out.glob(".best_generator*"))
        (small / "filler").unlink()
        state = GanTrainer(settings, 64, 4, 4).fit(_tiny_split(4), _tiny_split(2, seed=10), out)
        assert state.completed and state.epoch == 2
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)


def test_a_state_saved_with_an_older_diffaugment_spelling_still_finishes_and_is_refused_for_another_policy(tmp_path):
    from mrisynth.config import TrainGanParams
    from mrisynth.training.checkpoints import TrainState, prepare_state, save_state
    from mrisynth.training.gan import canonical_fingerprint, fingerprint

    settings = TrainGanParams(diffaugment="translation,cutout,color")
    now = fingerprint(settings, "d")
    out = tmp_path / "gan"
    out.mkdir()
    (out / "best_generator.keras").write_bytes(b"kept")
    # written by the sweep's `-S train_gan.diffaugment=translation+cutout+color` before the fingerprint normalised it
    save_state(out, TrainState(epoch=2, completed=True, fingerprint=now | {"diffaugment": "translation+cutout+color"}, code="c", run_id="r"))
    assert prepare_state(out, now, False, finish_epochs=2, code="c", canonical=canonical_fingerprint).run_id == "r"
    # without the normalisation the same state counts as other parameters (a fresh start)
    save_state(out, TrainState(epoch=2, completed=True, fingerprint=now | {"diffaugment": "translation+cutout+color"}, code="c", run_id="r"))
    assert prepare_state(out, now, False, finish_epochs=2, code="c").epoch == 0
    # an interrupted run with another policy is still refused, naming the key
    save_state(out, TrainState(epoch=1, completed=False, fingerprint=now | {"diffaugment": "cutout"}))
    with pytest.raises(ConfigError, match="diffaugment: 'cutout' -> 'translation,cutout,color'"):
        prepare_state(out, now, False, canonical=canonical_fingerprint)
    # 'none' written by an older version is the paper's off, which fingerprints leave out
    assert "diffaugment" not in canonical_fingerprint({"diffaugment": "none", "alpha": 1.0})
