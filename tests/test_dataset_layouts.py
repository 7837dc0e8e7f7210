"""Both dataset.json layouts, and every malformed dataset gets a clear error naming the file."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from conftest import run_cli
from seggrid.data.dataset import load_dataset
from seggrid.errors import SeggridError
from seggrid.data.validate import validate_dataset


def to_v2(src, dst):
    """Rewrite the MSD demo as an nnU-Net v2 dataset (CASE_0000.nii.gz images)."""
    meta = json.loads((src / "dataset.json").read_text())
    (dst / "imagesTr").mkdir(parents=True)
    (dst / "labelsTr").mkdir()
    for e in meta["training"]:
        cid = e["image"].split("/")[-1][: -len(".nii.gz")]
        shutil.copy(src / e["image"], dst / "imagesTr" / f"{cid}_0000.nii.gz")
        shutil.copy(src / e["label"], dst / "labelsTr" / f"{cid}.nii.gz")
    v2 = {"channel_names": {"0": "CT"}, "labels": {v: int(k) for k, v in meta["labels"].items()},
          "numTraining": len(meta["training"]), "file_ending": ".nii.gz"}
    (dst / "dataset.json").write_text(json.dumps(v2))


def test_msd_layout(demo_dataset):
    ds = load_dataset(demo_dataset, mr_case_id_min=500)
    assert ds.layout == "msd" and len(ds.training) == 5 and len(ds.validation) == 2
    assert ds.labels[6] == "liver" and ds.foreground_labels == list(range(1, 16))
    assert [c.modality for c in ds.training].count("MR") == 2


def test_nnunet_v2_layout(demo_dataset, tmp_path):
    to_v2(demo_dataset, tmp_path / "v2")
    ds = load_dataset(tmp_path / "v2", mr_case_id_min=500)
    assert ds.layout == "nnunetv2" and len(ds.training) == 5 and ds.validation == []
    assert ds.labels[6] == "liver"
    assert ds.training[0].image.name.endswith("_0000.nii.gz")
    report = validate_dataset(tmp_path / "v2", 500)
    assert report["n_training"] == 5


def test_v2_numtraining_mismatch(demo_dataset, tmp_path):
    to_v2(demo_dataset, tmp_path / "v2")
    meta = json.loads((tmp_path / "v2" / "dataset.json").read_text())
    meta["numTraining"] = 9
    (tmp_path / "v2" / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(SeggridError, match="numTraining is 9"):
        load_dataset(tmp_path / "v2")


@pytest.fixture()
def copy_of(demo_dataset, tmp_path):
    dst = tmp_path / "ds"
    shutil.copytree(demo_dataset, dst)
    return dst


def _save(path, data, affine):
    nib.save(nib.Nifti1Image(data, affine), str(path))


def test_validation_reports_all_problems_at_once(copy_of, tmp_path, capsys):
    ds = copy_of
    lab = nib.load(ds / "labelsTr/amos_0001.nii.gz")
    data = np.asarray(lab.dataobj).copy()
    data[0, 0, 0] = 42
    _save(ds / "labelsTr/amos_0001.nii.gz", data, lab.affine)                      # unknown label value
    img = nib.load(ds / "imagesTr/amos_0002.nii.gz")
    arr = np.asarray(img.dataobj).astype(np.float32)
    arr[1, 1, 1] = np.nan
    _save(ds / "imagesTr/amos_0002.nii.gz", arr, img.affine)                       # NaN voxel
    (ds / "imagesTr/amos_0003.nii.gz").unlink()                                     # listed but missing
    raw = (ds / "imagesTr/amos_0501.nii.gz").read_bytes()
    (ds / "imagesTr/amos_0501.nii.gz").write_bytes(raw[: len(raw) // 3])            # truncated
    lab = nib.load(ds / "labelsTr/amos_0502.nii.gz")
    _save(ds / "labelsTr/amos_0502.nii.gz", np.asarray(lab.dataobj)[:-1], lab.affine)  # shape mismatch
    out = tmp_path / "check.json"
    rc = run_cli("validate", "--dataset", ds, "--out", out)
    err = capsys.readouterr().err
    assert rc == 2 and not out.exists()
    assert "5 problem(s)" in err
    assert "amos_0001.nii.gz: 1 label value(s) not in dataset.json labels (0..15), e.g. 42" in err
    assert "amos_0002.nii.gz: 1 NaN/inf voxels" in err
    assert "amos_0003.nii.gz: file not found" in err
    assert "amos_0501.nii.gz" in err and ("truncated" in err or "not a readable NIfTI" in err)
    assert "amos_0502.nii.gz: shape" in err


def test_a_float_image_saved_as_labels_gets_a_short_message():
    """Thousands of stray values (an intensity image in labelsTr): count, range, 10 examples."""
    from seggrid.data.validate import label_values_message

    msg = label_values_message(list(range(16, 2016)), set(range(16)))
    assert msg == ("2000 label value(s) from 16 to 2015 not in dataset.json labels (0..15), "
                   "e.g. 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, ...")


def test_4d_and_non_integer_labels(copy_of, capsys, tmp_path):
    img = nib.load(copy_of / "imagesTr/amos_0001.nii.gz")
    arr = np.asarray(img.dataobj)
    _save(copy_of / "imagesTr/amos_0001.nii.gz", np.stack([arr, arr], -1), img.affine)
    lab = nib.load(copy_of / "labelsTr/amos_0002.nii.gz")
    _save(copy_of / "labelsTr/amos_0002.nii.gz", np.asarray(lab.dataobj).astype(np.float32) + 0.5, lab.affine)
    assert run_cli("validate", "--dataset", copy_of, "--out", tmp_path / "c.json") == 2
    err = capsys.readouterr().err
    assert "expected a 3D image" in err and "non-integer label values" in err


@pytest.mark.parametrize("content, message", [
    ("{not json", "malformed JSON"),
    ('{"training": []}', "missing or invalid 'labels'"),
    ('{"labels": {"0": "bg"}}', "neither MSD layout"),
    ('{"labels": {"0": "bg"}, "training": []}', "'training' is empty"),
    ('{"labels": {"1": "x"}, "training": [{"image": "a.nii.gz", "label": "b.nii.gz"}]}', "no background"),
    ('{"labels": {"0": "bg"}, "training": [{"image": "a.nii.gz"}]}', "has no 'label'"),
])
def test_malformed_dataset_json(tmp_path, content, message):
    (tmp_path / "dataset.json").write_text(content)
    with pytest.raises(SeggridError) as err:
        load_dataset(tmp_path)
    assert message in str(err.value) and "dataset.json" in str(err.value)


def test_duplicate_case_ids(copy_of, tmp_path, capsys):
    meta = json.loads((copy_of / "dataset.json").read_text())
    meta["training"].append(meta["training"][0])
    (copy_of / "dataset.json").write_text(json.dumps(meta))
    assert run_cli("validate", "--dataset", copy_of, "--out", tmp_path / "c.json") == 2
    assert "case id 'amos_0001' listed 2 times" in capsys.readouterr().err


def test_non_nifti_affine_mismatch_and_bad_spacing_are_all_reported(copy_of, tmp_path, capsys):
    (copy_of / "imagesTr/amos_0001.nii.gz").write_text("this is not an image\n")          # not NIfTI
    lab = nib.load(copy_of / "labelsTr/amos_0002.nii.gz")
    shifted = lab.affine.copy()
    shifted[0, 3] += 25.0
    _save(copy_of / "labelsTr/amos_0002.nii.gz", np.asarray(lab.dataobj), shifted)       # affine mismatch
    import gzip
    import struct

    for kind in ("images", "labels"):                    # zero spacing: the sform's x column set to 0
        f = copy_of / f"{kind}Tr/amos_0003.nii.gz"       # (srow_x/y/z[0] at bytes 280/296/312)
        raw = bytearray(gzip.decompress(f.read_bytes()))
        for offset in (280, 296, 312):
            struct.pack_into("<f", raw, offset, 0.0)
        f.write_bytes(gzip.compress(bytes(raw)))
    out = tmp_path / "c.json"
    assert run_cli("validate", "--dataset", copy_of, "--out", out) == 2
    err = capsys.readouterr().err
    assert "amos_0001.nii.gz" in err and "not a readable NIfTI" in err
    assert "amos_0002.nii.gz: affine differs from image" in err
    assert "amos_0003.nii.gz: zero, negative or non-finite spacing" in err
    assert "3 problem(s)" in err and not out.exists()
