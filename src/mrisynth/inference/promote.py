"""Promotion gate for registered generators: `champion` moves only to a better version.

The metric (default `val_dice_gain_beyond_classic`: validation tumour Dice of classic+gan minus
classic, mean over seeds) is tagged on a generator version by the `evaluate` stage that used it. It is
a validation quantity: test-split tags (`test_*`, written for information) are never read, and a
test metric is refused. The decision and the numbers are written into the candidate's tags and
description."""
from __future__ import annotations

import math
from dataclasses import dataclass

from mrisynth.config import PromoteParams, is_validation_metric  # noqa: F401 (is_validation_metric: re-exported)
from mrisynth.core.urls import mask_url
from mrisynth.errors import MrisynthError

CHAMPION, CHALLENGER = "champion", "challenger"


class PromotionError(MrisynthError):
    """The candidate cannot be judged (missing version, metric or signature)."""


class ModelNotFound(MrisynthError):
    """A `models:/` URI names a registered model, alias or version that does not exist."""


@dataclass
class Decision:
    promoted: bool
    candidate: str
    champion_before: str | None
    candidate_value: float
    champion_value: float | None
    reason: str


def _metric(version, metric: str) -> float | None:
    raw = (version.tags or {}).get(metric)
    try:
        value = float(raw) if raw is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def promote(name: str, version: str | int | None = None, metric: str = PromoteParams.metric,
            higher_is_better: bool = PromoteParams.higher_is_better, force: bool = False,
            margin: float | None = PromoteParams.margin) -> Decision:
    """Compare a candidate (default alias `challenger`) with `champion`; move `champion` when better or forced.

    `margin`: the candidate must also be better than this value on its own (above it when higher is
    better, below it otherwise), the very first version included, so a generator whose validation
    gain beyond classic augmentation is not positive never becomes `champion` unless `force`.
    None: no absolute gate."""
    from mrisynth.io import registry

    if not is_validation_metric(metric):
        raise PromotionError(f"promotion metric {metric!r}: expected a validation metric (a tag named val_* or *_val, e.g. "
                             f"{PromoteParams.metric!r}); the test split never decides promotion. Set promote.metric in params.yaml")
    if version is not None and (isinstance(version, bool) or not str(version).isdigit() or int(version) < 1):
        raise PromotionError(f"--version {version}: expected a registered version number (1, 2, ...); "
                             "leave it out to judge alias @challenger")
    try:
        candidate = registry.get_version(name, version, alias=CHALLENGER)
    except LookupError as exc:
        what = f"version {version}" if version else f"alias @{CHALLENGER}"
        raise PromotionError(f"model {name!r}: {what} not found in the registry ({exc}); pick a registered version with "
                             "--version (the MLflow UI's Models page lists them), or run `dvc repro train_gan` to register one") from exc
    label = f"{name} version {candidate.version}"
    if not registry.has_signature(name, candidate.version):
        raise PromotionError(f"{label} has no input/output signature; it cannot be served safely. Re-register it with `dvc repro train_gan`")
    value = _metric(candidate, metric)
    if value is None:
        raise PromotionError(f"{label} lacks the metric tag {metric!r}; run `dvc repro evaluate` with this generator so the metric is recorded")

    try:
        champion = registry.get_version(name, alias=CHAMPION)
    except LookupError:
        champion = None
    champion_value = _metric(champion, metric) if champion is not None else None
    if champion is not None and str(champion.version) == str(candidate.version):
        decision = Decision(False, str(candidate.version), str(champion.version), value, champion_value, "already the champion")
    elif force:
        decision = Decision(True, str(candidate.version), champion and str(champion.version), value, champion_value, "forced")
    elif margin is not None and not (value > margin if higher_is_better else value < margin):
        side = "above" if higher_is_better else "below"
        decision = Decision(False, str(candidate.version), champion and str(champion.version), value, champion_value,
                            f"{metric} {value:.5f} is not {side} the margin {margin:g} (promote.margin): on validation this "
                            "generator does not improve the segmenter; pass --force to promote it anyway")
    elif champion is None:
        decision = Decision(True, str(candidate.version), None, value, None, "no champion yet")
    elif champion_value is None:
        decision = Decision(True, str(candidate.version), str(champion.version), value, None, f"champion lacks {metric}")
    else:
        better = value > champion_value if higher_is_better else value < champion_value
        verb = "beats" if better else "does not beat"
        decision = Decision(better, str(candidate.version), str(champion.version), value, champion_value,
                            f"{metric} {value:.5f} {verb} champion v{champion.version} ({champion_value:.5f})")
    if decision.promoted:
        registry.set_alias(name, CHAMPION, candidate.version)
    outcome = "promoted to champion" if decision.promoted else "kept as is"
    tags = {"promotion_decision": outcome, "promotion_reason": decision.reason, "promotion_metric": metric,
            "promotion_candidate_value": f"{value:.6g}",
            "promotion_champion_before": decision.champion_before or "none",
            "promotion_champion_value": "none" if champion_value is None else f"{champion_value:.6g}"}
    registry.tag_version(name, candidate.version, tags)
    description = (candidate.description or "").split("\nPromotion:")[0]
    registry.describe_version(name, candidate.version, f"{description}\nPromotion: {outcome} ({decision.reason}).")
    return decision


def require_model(model_uri: str) -> None:
    """Check that a registry URI, `models:/NAME@ALIAS` or `models:/NAME/VERSION`, names an existing version;
    ModelNotFound with one line (what is missing, what to run) when not. Other URIs (runs:/, paths, stages)
    are left to the loader."""
    import os

    from mrisynth.io import registry, tracking

    parsed = registry.parse_uri(model_uri)
    if parsed is None:
        return
    name, version, alias = parsed
    try:
        registry.get_version(name, version, alias=alias)
    except LookupError as exc:
        store = mask_url(os.environ.get("MLFLOW_TRACKING_URI", tracking.DEFAULT_URI))  # never print a password
        raise ModelNotFound(f"{model_uri} (registry {store}): {_missing(name, version, alias, str(exc))}") from None


def _missing(name: str, version: str | None, alias: str | None, mlflow_message: str) -> str:
    """What is missing and what to run, for `require_model`."""
    if "registered model with name" in mlflow_message.lower():
        return f"no registered model {name!r}; `dvc repro train_gan` registers the generator (or check the name and MLFLOW_TRACKING_URI)"
    if version is not None:
        return f"{name!r} has no version {version}; pick a registered version or an alias (@{CHAMPION}, @{CHALLENGER})"
    if alias == CHAMPION:
        return (f"no version of {name!r} is the @{CHAMPION} yet; run `mrisynth promote --name {name}` to promote @{CHALLENGER} "
                f"if it passes the gate (`--version V --force` to choose one), or use models:/{name}@{CHALLENGER}")
    if alias == CHALLENGER:
        return f"no version of {name!r} is the @{CHALLENGER}; `dvc repro train_gan` registers one and sets it"
    return f"no version of {name!r} holds alias @{alias}; use @{CHAMPION} or @{CHALLENGER}, or a version number (models:/{name}/1)"
