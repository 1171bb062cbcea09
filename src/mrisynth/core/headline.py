"""The few numbers a user compares across runs and experiments: the DVC metrics files.

Every other number stays in the detailed JSON reports (`metrics.json`, `gan_usefulness.json`, ...),
which are plain DVC outputs: `dvc metrics show` / `dvc exp show` list these headline files only, and
no run id, path or second is ever a metric. Units: Dice in [0, 1]; differences are augmented − baseline."""
from __future__ import annotations

from mrisynth.core.arms import arm_slug

DIGITS = 4


def _round(value: object) -> float | None:
    return None if value is None else round(float(value), DIGITS)


def verdict(comparisons: dict[str, dict]) -> dict[str, dict[str, float | None]]:
    """Test-split verdict: per comparison `<augmented>-<baseline>` (arm slugs) its tumour-Dice mean paired
    difference and 95 % CI, e.g. {"classic_gan-classic": {"diff": 0.052, "low": -0.018, "high": 0.114}}."""
    out = {}
    for entry in comparisons.values():
        dice = entry["dice_tumour"]
        out[f"{arm_slug(entry['augmented'])}-{arm_slug(entry['baseline'])}"] = {
            "diff": _round(dice["mean"]), "low": _round(dice["low"]), "high": _round(dice["high"])}
    return out


def scores(arms: dict[str, dict]) -> dict[str, dict[str, float | None]]:
    """Per arm (slug) the tumour Dice on the test split and on the validation split (the selection split:
    optimistic), each the mean over seeds and generator draws."""
    return {arm_slug(arm): {"test": _round(by_split.get("test", {}).get("dice_tumour")),
                            "val": _round(by_split.get("val", {}).get("dice_tumour"))} for arm, by_split in arms.items()}


def generator(usefulness: dict, val_gain_beyond_classic: float | None, val_gain_beyond_paste: float | None = None) -> dict[str, float | None]:
    """The generator's numbers: GAN-train / real-train tumour Dice and their ratio (test and val), the realism
    panel's worst relative deviation (val), the promotion gate's validation gain beyond classic and the
    validation gain of `gan` over the copy-paste control (`paste`)."""
    out: dict[str, float | None] = {}
    for split in ("test", "val"):
        gan, real = usefulness.get(f"{split}_gan_train_dice_tumour"), usefulness.get(f"{split}_real_train_dice_tumour")
        out[f"gan_train_{split}"] = _round(gan)
        out[f"ratio_{split}"] = _round(gan / real) if gan is not None and real else None
    out["realism_worst"] = _round(usefulness.get("realism_worst_deviation"))
    out["val_gain_beyond_classic"] = _round(val_gain_beyond_classic)
    out["val_gain_beyond_paste"] = _round(val_gain_beyond_paste)
    return {k: v for k, v in out.items() if v is not None}
