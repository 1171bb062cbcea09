"""One typed config: every bad value is one ConfigError line naming the key, before any work starts."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from mrisynth.config import ARMS, ConfigError, Params, load_params


def _write(tmp_path: Path, overrides: dict) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in overrides.items():
        params.setdefault(section, {}).update(values)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_repository_params_load_and_defaults_match_dataclasses():
    params = load_params(REPO / "params.yaml")
    assert params.train_segmenter.arms == ARMS and len(params.train_segmenter.seeds) >= 3
    assert params.tune.n_trials > 0 and params.promote.metric.startswith("val_")
    assert params.augment.sample_dropout is True and params.train_segmenter.jitter is False
    # the dataclass defaults are exactly the shipped default profile (one source of truth)
    assert Params() == params


@pytest.mark.parametrize("overrides, key, found", [
    ({"train_gan": {"learning_rate": "1e-4x"}}, "train_gan.learning_rate", "'1e-4x'"),
    ({"train_gan": {"epochs": 2.5}}, "train_gan.epochs", "2.5"),
    ({"train_gan": {"epochs": -1}}, "train_gan.epochs", "-1"),
    ({"train_gan": {"precision": "fp8"}}, "train_gan.precision", "'fp8'"),
    ({"preprocess": {"image_size": 96}}, "preprocess.image_size", "96"),
    ({"train_segmenter": {"arms": ["none"]}}, "train_segmenter.arms", "['none']"),
    ({"train_segmenter": {"arms": ["none", "mixup"]}}, "train_segmenter.arms", "mixup"),
    ({"train_segmenter": {"seeds": []}}, "train_segmenter.seeds", "[]"),
    ({"train_segmenter": {"arms": ["none", "classic"]}}, "evaluate.augmented", "classic+gan"),
    ({"train_segmenter": {"jitter": "yes"}}, "train_segmenter.jitter", "'yes'"),
    ({"promote": {"metric": "test_dice_gain"}}, "promote.metric", "test_dice_gain"),
    ({"promote": {"metric": "dice_gain_on_test"}}, "promote.metric", "dice_gain_on_test"),   # refused by the allowlist, not only test*
    ({"promote": {"metric": "dice_gain"}}, "promote.metric", "val_* or *_val"),
    ({"augment": {"sample_dropout": 1}}, "augment.sample_dropout", "1"),
    ({"gan_usefulness": {"diversity_samples": 1}}, "gan_usefulness.diversity_samples", "1"),
    ({"evaluate": {"ci_level": 95}}, "ci_level", "95"),
    ({"train_gan": {"lerning_rate": 1e-4}}, "lerning_rate", "unknown key"),
    ({"preprocess": {"size": 128}}, "size -> image_size", "run cache"),
    ({"data": {"phantom_version": 3}}, "data.phantom_version", "3"),
])
def test_bad_values_name_the_key(tmp_path, overrides, key, found):
    with pytest.raises(ConfigError) as err:
        load_params(_write(tmp_path, overrides))
    message = str(err.value)
    assert key in message and found in message and "\n" not in message


def test_stage_entry_point_prints_one_config_error_line_and_exits_2(tmp_path):
    path = _write(tmp_path, {"train_gan": {"learning_rate": "1e-4x"}})
    r = subprocess.run([sys.executable, str(REPO / "pipelines" / "train_gan.py"), "--params", str(path)],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "train_gan.learning_rate: expected a number, found '1e-4x'" in lines[0]
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "work").exists() and not (tmp_path / "mlflow.db").exists()  # nothing started


def test_unknown_key_suggests_the_closest_one(tmp_path):
    with pytest.raises(ConfigError, match=r"train_gan: unknown key\(s\) lerning_rate \(did you mean learning_rate\?\)"):
        load_params(_write(tmp_path, {"train_gan": {"lerning_rate": 1e-4}}))
    (tmp_path / "sections.yaml").write_text("trian_gan: {}\n")
    with pytest.raises(ConfigError, match=r"unknown section\(s\) trian_gan \(did you mean train_gan\?\)"):
        load_params(tmp_path / "sections.yaml")


@pytest.mark.parametrize("section, values, message", [
    ("train_segmenter", {"seeds": [1, "2"]}, "train_segmenter.seeds: expected a list of int, found [1, '2'] (list)"),
    ("train_segmenter", {"real_share": "half"}, "train_segmenter.real_share: expected a number or null, found 'half' (str)"),
    ("augment", {"flip": "true"}, "augment.flip: expected bool, found 'true' (str)"),
    ("train_gan", {"seed": True}, "train_gan.seed: expected int, found True (bool)"),
])
def test_strict_types_no_string_or_bool_coercion(tmp_path, section, values, message):
    with pytest.raises(ConfigError) as err:
        load_params(_write(tmp_path, {section: values}))
    assert message in str(err.value)


def test_configuration_reference_is_generated_from_the_schema():
    from mrisynth.ops import configdoc

    page = (REPO / "docs" / "configuration.md").read_text()
    assert page == configdoc.reference(), "docs/configuration.md is stale: python -m mrisynth.ops.configdoc > docs/configuration.md"
    assert "| `inpaint_margin` | a number | `0.03` |" in page and "|  |\n" not in page  # every key described


def test_a_missing_section_stops_with_one_line(tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    del params["train_gan"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError) as err:
        load_params(tmp_path / "params.yaml")
    assert "section(s) train_gan missing or empty" in str(err.value) and "dvc params diff" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("section, key, value", [
    ("train_gan", "learning_rate", ".nan"), ("train_gan", "alpha", ".inf"), ("augment", "scale", "[0.9, .inf]"),
    ("tune", "alpha_high", "-.inf"),
])
def test_non_finite_numbers_are_refused(tmp_path, section, key, value):
    text = (REPO / "params.yaml").read_text()
    params = yaml.safe_load(text)
    params[section][key] = yaml.safe_load(value)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match=rf"{section}\.{key}: expected a finite number"):
        load_params(tmp_path / "params.yaml")


@pytest.mark.parametrize("stage", ["preprocess", "augment", "train_segmenter", "gan_usefulness", "evaluate"])
def test_every_stage_entry_point_honours_params_and_refuses_unknown_options(tmp_path, stage, capsys, monkeypatch):
    import importlib
    import signal

    monkeypatch.setenv("MRISYNTH_WATCH_LAUNCHER", "0")
    main = importlib.import_module(f"mrisynth.stages.{stage}").main
    bad = _write(tmp_path, {"train_gan": {"epochs": -3}})
    handler = signal.getsignal(signal.SIGTERM)
    try:
        for argv, message in ((["--params", str(bad)], f"{bad}:train_gan.epochs"), (["--bogus"], "unrecognized arguments: --bogus")):
            with pytest.raises(SystemExit) as code:
                main(argv)
            assert code.value.code == 2 and message in capsys.readouterr().err
    finally:
        signal.signal(signal.SIGTERM, handler)  # stage_main turns SIGTERM into KeyboardInterrupt for its process
    if stage == "preprocess":  # and through the entry script, as DVC runs it
        r = subprocess.run([sys.executable, str(REPO / "pipelines" / "preprocess.py"), "--params", str(bad)], cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and f"{bad}:train_gan.epochs" in r.stderr, r.stderr[-1500:]


def test_storage_passwords_are_refused_in_params_and_masked_everywhere(tmp_path):
    from mrisynth.config import TuneParams, as_flat_dict
    from mrisynth.core.urls import mask_url

    with pytest.raises(ConfigError) as err:
        load_params(_write(tmp_path, {"tune": {"storage": "postgresql+psycopg2://alice:hunter2@db:5432/optuna"}}))
    assert "hunter2" not in str(err.value) and "alice:***@db:5432" in str(err.value) and "PGPASSWORD" in str(err.value)
    assert load_params(_write(tmp_path, {"tune": {"storage": "postgresql+psycopg2://alice@db:5432/optuna"}})).tune.storage.endswith("/optuna")
    assert mask_url("postgresql+psycopg2://a:p@w0rd@h/db") == "postgresql+psycopg2://a:***@h/db"
    assert mask_url("sqlite:///optuna.db") == "sqlite:///optuna.db"
    assert as_flat_dict(TuneParams(storage="postgresql://u:secret@h/db"))["storage"] == "postgresql://u:***@h/db"
    for url, masked in (("postgresql+psycopg2://u:p/w@h/db", "postgresql+psycopg2://u:***@h/db"),  # '/' unencoded
                        ("postgresql://u@h/db?sslmode=require&password=s3", "postgresql://u@h/db?sslmode=require&password=***"),
                        ("postgresql://u:p@h:5432/db?sslmode=require", "postgresql://u:***@h:5432/db?sslmode=require")):
        assert mask_url(url) == masked
        with pytest.raises(ConfigError, match="holds a password"):
            load_params(_write(tmp_path, {"tune": {"storage": url}}))
    for clean in ("postgresql+psycopg2://user@host/db", "sqlite:///optuna.db", "journal:optuna.log"):
        assert mask_url(clean) == clean


def test_an_unknown_storage_scheme_error_masks_the_password():
    from mrisynth.stages import tune

    with pytest.raises(ConfigError) as err:
        tune.storage("redis://bob:topsecret@db/0")
    assert "topsecret" not in str(err.value) and "bob:***@db" in str(err.value)


def test_an_empty_section_counts_as_missing(tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train_gan"] = {}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match="section\\(s\\) train_gan missing or empty"):
        load_params(tmp_path / "params.yaml")
