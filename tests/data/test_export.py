"""`mrisynth export`: nnU-Net v2 raw dataset, MONAI datalist and per-modality NIfTI, checked against
nnU-Net's documented format (dataset.json keys, file naming, consecutive labels, geometry)."""
import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from mrisynth.errors import DataError
from mrisynth.data.export import NNUNET_LABELS, export
from mrisynth.data.ingest import ImportOptions, import_brats
from mrisynth.io import tiff


@pytest.fixture
def dataset(tiny_brats, tmp_path):
    out = tmp_path / "data"
    import_brats(tiny_brats, out, {"train": 3, "val": 2, "test": 2}, 1, ImportOptions(size=64))
    return out


def _augmented(dataset, root):
    """A small augmented set at 32 px: two real, one classic, one GAN slice."""
    manifest = pd.read_csv(dataset / "manifest.csv")
    rows = []
    for k, kind in enumerate(["real", "real", "classic", "gan"]):
        source = manifest[manifest["split"] == "train"].iloc[k % 3]
        image = tiff.read_image(dataset / source["image"])[::2, ::2]
        mask = tiff.read_mask(dataset / source["mask"])[::2, ::2]
        tiff.write_image(root / f"images/aug_{k}.tif", image)
        tiff.write_mask(root / f"masks/aug_{k}.tif", mask)
        rows.append({"case_id": f"aug_{k}", "split": "train", "image": f"images/aug_{k}.tif", "mask": f"masks/aug_{k}.tif",
                     "height": 32, "kind": kind, "source_cases": source["case_id"], "in_mix": True})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root


def test_nnunet_export_follows_the_documented_format(dataset, tmp_path):
    target = export(dataset, tmp_path / "nnUNet_raw", "nnunet", dataset_id=7, name="Tiny")
    assert target.name == "Dataset007_Tiny"
    meta = json.loads((target / "dataset.json").read_text())
    # keys nnU-Net v2 requires (verify_dataset_integrity / generate_dataset_json)
    assert {"channel_names", "labels", "numTraining", "file_ending"} <= set(meta)
    assert meta["channel_names"] == {"0": "FLAIR", "1": "T1", "2": "T1ce", "3": "T2"} and meta["file_ending"] == ".nii.gz"
    assert meta["labels"] == {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}
    assert meta["regions_class_order"] == [1, 2, 3] and meta["numTraining"] == 5
    labels_tr = sorted(p.name for p in (target / "labelsTr").iterdir())
    assert len(labels_tr) == meta["numTraining"]
    manifest = pd.read_csv(dataset / "manifest.csv").set_index("case_id")
    for folder, split_names in (("Tr", ("train", "val")), ("Ts", ("test",))):
        for label_file in sorted((target / f"labels{folder}").iterdir()):
            case = label_file.name.removesuffix(".nii.gz")
            assert manifest.loc[case, "split"] in split_names
            label = nib.load(str(label_file))
            assert label.shape == (64, 64, 1) and label.header.get_zooms() == (1.0, 1.0, 1.0)  # 2-D: singleton axis
            values = np.asarray(label.dataobj)[..., 0]
            assert set(np.unique(values)) <= {0, 1, 2, 3}  # consecutive labels
            brats = tiff.read_mask(dataset / manifest.loc[case, "mask"])
            for brats_label, nnunet_label in NNUNET_LABELS.items():
                assert np.all(values[brats == brats_label] == nnunet_label)
            for c in range(4):  # one file per channel, same geometry as the label
                channel = nib.load(str(target / f"images{folder}" / f"{case}_{c:04d}.nii.gz"))
                assert channel.shape == label.shape and np.allclose(channel.affine, label.affine)
    splits = json.loads((target / "splits_final.json").read_text())
    assert len(splits) == 1 and len(splits[0]["train"]) == 3 and len(splits[0]["val"]) == 2
    assert set(pd.read_csv(target / "provenance.csv")["provenance"]) == {"real"}


def test_monai_datalist_points_at_existing_files_and_an_arm_keeps_provenance(dataset, tmp_path):
    augmented = _augmented(dataset, tmp_path / "augmented")
    nnunet = export(dataset, tmp_path / "raw", "nnunet", arm="gan", augmented_dir=augmented)
    for label_file in (nnunet / "labelsTr").iterdir():  # nnU-Net plans 2-D when the singleton axis has the largest spacing
        zooms = nib.load(str(label_file)).header.get_zooms()
        assert zooms[2] >= max(zooms[:2]) and zooms[2] == 2.0
    target = export(dataset, tmp_path / "monai", "monai", arm="classic+gan", augmented_dir=augmented)
    datalist = json.loads((target / "datalist.json").read_text())
    assert set(datalist) == {"training", "validation", "test"}
    assert len(datalist["training"]) == 4 and len(datalist["validation"]) == 2 and len(datalist["test"]) == 2
    for entry in datalist["training"] + datalist["validation"] + datalist["test"]:
        assert len(entry["image"]) == 4 and all((target / p).is_file() for p in entry["image"]) and (target / entry["label"]).is_file()
    provenance = pd.read_csv(target / "provenance.csv")
    assert sorted(provenance[provenance["split"] == "train"]["provenance"]) == ["classic", "gan", "real", "real"]
    # the 32-px augmented slices keep their physical size: 2 mm pixels next to the 1 mm real ones
    assert set(provenance[provenance["split"] == "train"]["spacing_mm"]) == {2.0}
    seg = nib.load(str(target / datalist["training"][0]["label"]))
    assert seg.shape == (32, 32, 1) and seg.header.get_zooms()[:2] == (2.0, 2.0)


def test_nifti_export_cli_and_errors(dataset, tmp_path):
    out = tmp_path / "nifti"
    r = subprocess.run([sys.executable, "-m", "mrisynth.cli", "export", str(dataset), "--format", "nifti", "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    case = pd.read_csv(dataset / "manifest.csv").iloc[0]
    image = nib.load(str(out / case["split"] / case["case_id"] / f"{case['case_id']}_t1ce.nii.gz"))
    np.testing.assert_allclose(np.asarray(image.dataobj)[..., 0], tiff.read_image(dataset / case["image"])[..., 2])
    r = subprocess.run([sys.executable, "-m", "mrisynth.cli", "export", str(dataset), "--format", "nifti", "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "already holds files" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(DataError, match="needs the augmented set"):
        export(dataset, tmp_path / "x", "monai", arm="gan", augmented_dir=tmp_path / "missing")


def test_force_replaces_only_an_export_of_this_tool(dataset, tmp_path):
    mine = tmp_path / "mine"
    export(dataset, mine, "nifti")
    first = sorted(p.relative_to(mine) for p in mine.rglob("*"))
    assert export(dataset, mine, "nifti", force=True) == mine  # its own earlier export: replaced
    assert sorted(p.relative_to(mine) for p in mine.rglob("*")) == first
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "thesis.txt").write_text("four years of work")
    with pytest.raises(DataError, match="replaces only a folder this tool exported.*nothing was deleted"):
        export(dataset, thesis, "monai", force=True)
    assert (thesis / "thesis.txt").read_text() == "four years of work"
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    r = subprocess.run([sys.executable, "-m", "mrisynth.cli", "export", str(dataset), "--format", "nifti", "--out", str(a_file)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "is a file, not a folder" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(DataError, match="plain name"):
        export(dataset, tmp_path / "nn", "nnunet", name="../../x")


def test_one_nnunet_dataset_id_names_one_folder(dataset, tmp_path):
    export(dataset, tmp_path / "raw", "nnunet", dataset_id=7, name="Tiny")
    with pytest.raises(DataError, match=r"Dataset007_Tiny: dataset id 007 is taken by another name .*--name Tiny to replace it"):
        export(dataset, tmp_path / "raw", "nnunet", dataset_id=7, name="Other")
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["Dataset007_Tiny"]
    assert export(dataset, tmp_path / "raw", "nnunet", dataset_id=8, name="Other").name == "Dataset008_Other"
