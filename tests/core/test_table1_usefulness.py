"""table1's GAN usefulness section says when its renders were harmonised (augment.harmonise)."""
from types import SimpleNamespace

import pytest

from mrisynth.core import table1


def _usefulness(**extra):
    u = {"gan_train_images": 150, "seed": 1, "diversity_samples": 4, "diversity_val": 0.01} | extra
    for split in ("val", "test"):
        for key in ("dice_tumour", "dice_WT", "dice_TC", "dice_ET"):
            u |= {f"{split}_gan_train_{key}": 0.5, f"{split}_real_train_{key}": 0.6, f"{split}_gan_test_{key}": 0.4}
    return SimpleNamespace(usefulness=u)


@pytest.mark.parametrize("extra, said", [({}, False), ({"harmonise": "none"}, False), ({"harmonise": "mean"}, True)])
def test_the_usefulness_section_names_harmonisation_only_when_on(extra, said):
    text = "\n".join(table1._usefulness(_usefulness(**extra)))
    assert ("`augment.harmonise: mean`" in text) == said
    assert "| GAN-train tumour Dice (trained on 150 synthetic pairs only, seed 1) | 0.500 | 0.500 |" in text
