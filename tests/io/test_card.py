"""The dataset card (mrisynth.io.card, mrisynth.core.datacard): the AUC by hand and every number of a card
built on a hand-made dataset."""
import json

import numpy as np
import pandas as pd
import pytest

from mrisynth.core import datacard
from mrisynth.io import card, tiff


def test_auc_hand_computed():
    assert datacard.auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert datacard.auc(np.array([1.0]), np.array([1.0])) == 0.5
    # pairs (2>1) (2<3) (2=2): (1 + 0 + 0.5) / 3
    assert datacard.auc(np.array([2.0]), np.array([1.0, 3.0, 2.0])) == pytest.approx(0.5)
    assert datacard.auc(np.array([0.0, 5.0]), np.array([1.0, 2.0])) == pytest.approx(0.5)


def _tiny_dataset(root):
    """4 slices of 8x8, 1 channel: a bright square tumour (label 2 + centre label 4 on two slices)."""
    rows = []
    for k, split in enumerate(["train", "train", "val", "test"]):
        image = np.zeros((8, 8, 1), np.float32)
        image[1:7, 1:7, 0] = 0.2          # brain
        mask = np.zeros((8, 8), np.uint8)
        mask[2:4, 2:4] = 2                 # 4 pixels of edema
        image[2:4, 2:4, 0] = 0.9
        if k % 2 == 0:
            mask[2, 2] = 4                 # enhancing on slices 0 and 2
        tiff.write_image(root / f"{split}/images/c{k}.tif", image)
        tiff.write_mask(root / f"{split}/masks/c{k}.tif", mask)
        rows.append({"case_id": f"c{k}", "split": split, "slice_index": 0, "tumor_pixels": int((mask > 0).sum()), "image": f"{split}/images/c{k}.tif", "mask": f"{split}/masks/c{k}.tif",
                     "height": 8, "width": 8, "channels": 1, "modalities": "flair", "spacing_mm": 2.0,
                     "grade": "HGG" if k % 2 == 0 else "LGG", "location": "frontal", "site": k % 2})
    manifest = pd.DataFrame(rows)
    manifest.to_csv(root / "manifest.csv", index=False)
    return manifest


def test_card_numbers_on_a_hand_built_dataset(tmp_path):
    _tiny_dataset(tmp_path)
    built = card.build(tmp_path)
    assert built["split_counts"] == {"train": 2, "val": 1, "test": 1}
    assert built["grades"] == {"HGG": 2, "LGG": 2} and built["locations"] == {"frontal": 4}
    assert built["presence"]["all"]["label_4_present"] == 0.5 and built["presence"]["all"]["et_absent"] == 0.5
    assert built["presence"]["all"]["label_1_present"] == 0.0 and built["presence"]["all"]["label_2_present"] == 1.0
    assert built["presence"]["val"]["label_4_present"] == 1.0 and built["presence"]["test"]["label_4_present"] == 0.0
    # every slice: 4 tumour pixels of 2 mm x 2 mm = 16 mm^2
    assert built["area"]["wt_area_px_p50"] == 4 and built["area"]["wt_area_mm2_p95"] == 16
    # the tumour is 0.9, normal brain 0.2: perfectly separable on this modality
    assert built["contrast"]["flair"]["edema (2)"] == 1.0 and built["contrast"]["flair"]["necrotic/non-enhancing core (1)"] is None
    # one threshold separates tumour from brain: WT Dice 1 on every split
    assert all(built["threshold"]["WT"][s] == 1.0 for s in ("train", "val", "test"))
    assert built["threshold"]["WT"]["modality"] == "flair"
    card.write(tmp_path, built)
    assert json.loads((tmp_path / "card.json").read_text()) == built
    assert "| WT | flair |" in (tmp_path / "card.md").read_text()
    flat = datacard.flat_metrics(built)
    assert flat["threshold_WT_dice_test"] == 1.0 and flat["data_et_absent"] == 0.5 and flat["data_lgg_share"] == 0.5


def test_card_reports_each_step_and_keeps_its_key_order(tmp_path):
    _tiny_dataset(tmp_path)
    lines = []
    built = card.build(tmp_path, progress=lines.append)
    steps = [line.split(" (")[0] for line in lines]
    assert steps == [f"reading 4 slices in {tmp_path}", "tumour presence, areas and contrasts",
                     "threshold baseline", "done"] and all("s elapsed)" in line for line in lines)
    assert list(built)[-1] == "threshold"  # card.json's key order as before: data.dvc's hash does not move
    assert card.build(tmp_path) == built  # silent without a progress callback, the same card


def test_data_card_command_prints_progress_on_stderr_only(tmp_path, capsys):
    from mrisynth import cli

    _tiny_dataset(tmp_path)
    assert cli.main(["data", "card", str(tmp_path), "--json"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["slices"] == 4 and out.err.count("data card: ") == 4
