"""core.conditioning.check: the conditioning encoding's rules on hand-built batches, and the module stays light
(the server's decode workers import it and nothing heavier)."""
import subprocess
import sys

import numpy as np
import pytest

from mrisynth.core.conditioning import ConditioningError, check


def _batch(n=1, size=4, channels=4):
    batch = np.zeros((n, size, size, channels), np.float32)
    batch[..., 3] = 1.0           # all brain
    batch[:, 1, 1, 0] = 1.0       # one NCR/NET pixel
    batch[:, 2, 2, 2] = 1.0       # one enhancing pixel
    if channels > 5:
        batch[..., 5:] = -1.0     # the real slice in [-1, 1]
    return batch


def test_a_valid_batch_comes_back_as_float32_and_one_image_becomes_a_batch():
    out = check(_batch(2).astype(np.float64), 4)
    assert out.dtype == np.float32 and out.shape == (2, 4, 4, 4)
    assert check(_batch(1)[0], 4).shape == (1, 4, 4, 4)
    assert check(_batch(1, channels=9), 4, channels=9).shape == (1, 4, 4, 9)  # inpainting: 5 + 4 channels


def _with(change):
    batch = _batch()
    change(batch)
    return batch


@pytest.mark.parametrize(("batch", "size", "message"), [
    (np.array([["a"]]), 4, "expected numbers"),
    (_batch(size=8), 4, r"expected shape \(N, 4, 4, 4\), found \(1, 8, 8, 4\)"),
    (_with(lambda b: b.__setitem__((0, 0, 0, 1), np.nan)), 4, "NaN or inf"),
    (_with(lambda b: b.__setitem__((0, 0, 0, 1), 0.5)), 4, r"only 0 and 1, found values \[0.0, 0.5, 1.0\]"),
    (_with(lambda b: b.__setitem__((0, 1, 1, 1), 1.0)), 4, "more than one tumour class"),
    (_with(lambda b: b.__setitem__((0, 1, 1, 3), 0.0)), 4, "outside the brain mask"),
])
def test_each_broken_rule_is_named(batch, size, message):
    with pytest.raises(ConditioningError, match=message):
        check(batch, size)


def test_an_inpainting_slice_outside_minus_one_to_one_is_refused():
    batch = _batch(channels=9)
    batch[0, 0, 0, 6] = 1.5
    with pytest.raises(ConditioningError, match=r"channels 5-8 \(the real slice\) must lie in \[-1, 1\]"):
        check(batch, 4, channels=9)


def test_the_decoder_imports_neither_mlflow_nor_tensorflow():
    code = ("import sys, mrisynth.inference.decoding; "
            "print(sorted(m for m in ('mlflow', 'tensorflow', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
