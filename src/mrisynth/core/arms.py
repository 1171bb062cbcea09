"""The augmentation arms of the verdict design: one table, read by everything that names an arm.

Config validation (`train_segmenter.arms`, `evaluate.baseline/augmented`), the CLI's `export --arm`
choices, `mrisynth export`, the `augment` stage (what to synthesise, the sample kinds it counts),
`train_segmenter` (which manifest rows an arm trains on, one set per generator draw or one in all),
`evaluate` (the comparisons of Table 1) and the Great Expectations value set of the augmented
manifest's `kind` column (`expectations/augmented.json`, checked against SAMPLE_KINDS by a test).

Adding an arm: one `Arm(...)` row below (and, when it compares with another arm, a COMPARISONS row).
Every arm is validated on the same real, patient-disjoint validation split."""
from __future__ import annotations

from dataclasses import dataclass

SAMPLE_KINDS = ("real", "classic", "gan", "paste")  # provenance of a row of the augmented manifest (`kind` column)


@dataclass(frozen=True)
class Arm:
    """One training set of the verdict.

    kinds: the sample kinds the arm trains on (all rows of these kinds in the augmented manifest);
    mix: True when the arm is the manifest's `in_mix` subset instead (the paper's 30 -> 300 set);
    label: what the arm is, in words (Table 1, docs)."""

    name: str
    kinds: tuple[str, ...]
    mix: bool
    label: str

    @property
    def slug(self) -> str:
        """A name usable in file paths and MLflow keys: 'classic+gan' -> 'classic_gan'."""
        return self.name.replace("+", "_")

    @property
    def uses_generator(self) -> bool:
        """True when the arm's data depend on a generator (one training set per generator draw)."""
        return "gan" in self.kinds

    @property
    def real_only(self) -> bool:
        """True for an arm of the real training slices alone (its data need no augmented set)."""
        return self.kinds == ("real",)

    def rows(self, manifest):
        """The augmented-manifest rows of this arm: a boolean Series over a pandas DataFrame with
        columns `kind` and `in_mix`."""
        return manifest["in_mix"].astype(bool) if self.mix else manifest["kind"].isin(list(self.kinds))


TABLE: dict[str, Arm] = {arm.name: arm for arm in (
    Arm("none", ("real",), False, "the real training slices only"),
    Arm("classic", ("real", "classic"), False, "real + classic transforms (rotation, shift, scale, flip, brightness)"),
    Arm("gan", ("real", "gan"), False, "real + GAN samples"),
    Arm("classic+gan", ("real", "classic", "gan"), True, "the paper's augmented set: real + classic + GAN (30 -> 300)"),
    # the control a generator has to beat: real donor tumours pasted into other training slices, no generator
    Arm("paste", ("real", "paste"), False, "real + copy-paste: real tumours pasted into other training slices (CarveMix-like, no generator)"),
)}
ARMS = tuple(TABLE)

# (baseline arm, augmented arm, question): each comparison answers one question of the verdict.
COMPARISONS = (
    ("none", "classic", "Classic augmentation vs none"),
    ("none", "gan", "GAN augmentation vs none"),
    ("none", "classic+gan", "Classic+GAN vs none"),
    ("classic", "classic+gan", "GAN beyond classic"),
    ("none", "paste", "Copy-paste vs none"),
    ("paste", "gan", "GAN beyond copy-paste"),
)
BASELINE = "none"  # the real-only arm every other arm is compared with (Table 1's anchor, GAN-train's real-train)


def comparison(question: str) -> tuple[str, str, str]:
    """The COMPARISONS row that asks `question`."""
    return next(c for c in COMPARISONS if c[2] == question)


GAN_VS_NONE, BEYOND_CLASSIC = comparison("GAN augmentation vs none"), comparison("GAN beyond classic")  # promotion's gate metrics
BEYOND_PASTE = comparison("GAN beyond copy-paste")  # also tagged on the generator version (promote.metric may name it)


def get(name: str) -> Arm:
    """The arm called `name`; ValueError naming the known arms otherwise."""
    if name not in TABLE:
        raise ValueError(f"arm {name!r}: expected one of {list(ARMS)}")
    return TABLE[name]


def arm_slug(name: str) -> str:
    return get(name).slug


def uses_generator(name: str) -> bool:
    return get(name).uses_generator


def comparisons_for(arms) -> list[tuple[str, str, str]]:
    """The comparisons whose two arms are both among `arms`."""
    return [c for c in COMPARISONS if c[0] in arms and c[1] in arms]


def kinds_wanted(arms) -> set[str]:
    """The sample kinds that some arm in `arms` trains on in full (not only through the mix subset)."""
    return {kind for name in arms if not get(name).mix for kind in get(name).kinds}
