"""AMOS-sized data for the scale benchmark, and the compact prediction files' bad-input errors."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import run_cli


def test_make_scale_data_writes_both_orientations_at_the_asked_grid(tmp_path):
    out = tmp_path / "scale"
    assert run_cli("make-scale-data", "--out", out, "--ct-train", 2, "--mr-train", 1, "--ct-val", 0, "--mr-val", 1,
                   "--shape", 64, 48, 20, "--spacing", 1.5, 1.5, 6) == 0
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["numTraining"] == 3 and meta["numValidation"] == 1
    codes = {}
    for cid in ("amos_0001", "amos_0002", "amos_0501"):
        img, lab = nib.load(out / "imagesTr" / f"{cid}.nii.gz"), nib.load(out / "labelsTr" / f"{cid}.nii.gz")
        assert img.shape == lab.shape == (64, 48, 20)
        assert np.allclose(img.header.get_zooms()[:3], (1.5, 1.5, 6.0)) and np.allclose(img.affine, lab.affine)
        organs = np.unique(np.asarray(lab.dataobj))
        assert len(organs) > 4 and organs.max() <= 15
        codes[cid] = "".join(nib.aff2axcodes(img.affine))
    assert codes == {"amos_0001": "RAS", "amos_0002": "LPS", "amos_0501": "LPS"}


def test_make_scale_data_keeps_anatomy_in_world_coordinates(tmp_path):
    """The flipped case stores its voxels the other way round, but the liver stays where it was."""
    out = tmp_path / "scale"
    assert run_cli("make-scale-data", "--out", out, "--ct-train", 2, "--mr-train", 0, "--ct-val", 0, "--mr-val", 0,
                   "--shape", 64, 48, 20, "--spacing", 1.5, 1.5, 6) == 0
    centres = []
    for cid in ("amos_0001", "amos_0002"):
        lab = nib.load(out / "labelsTr" / f"{cid}.nii.gz")
        idx = np.argwhere(np.asarray(lab.dataobj) == 6).mean(0)
        centres.append((lab.affine @ np.r_[idx, 1])[:3])
    assert np.allclose(centres[0], centres[1], atol=1.0)


def test_quantised_map_errors_name_the_file(tmp_path):
    from seggrid.errors import SeggridError
    from seggrid.inference.maps import read_quantised_class, write_quantised

    good = tmp_path / "c.npy"
    write_quantised(good, torch.full((3, 4, 5, 6), 0.5))
    assert np.all(read_quantised_class(good, 2) == 128)
    truncated = tmp_path / "t.npy"
    truncated.write_bytes(good.read_bytes()[:-10])
    with pytest.raises(SeggridError, match="t.npy: truncated"):
        read_quantised_class(truncated, 2)
    floats = tmp_path / "f.npy"
    np.save(floats, np.zeros((3, 4, 5, 6), np.float32))
    with pytest.raises(SeggridError, match="f.npy: not a quantised probability map"):
        read_quantised_class(floats, 0)


def test_ensemble_refuses_a_member_missing_a_case(pipeline, tmp_path, capsys):
    import shutil

    partial = tmp_path / "partial"
    shutil.copytree(pipeline["probs"], partial)
    (partial / "amos_0503.npy").unlink()
    rc = run_cli("ensemble", "--members", pipeline["probs"], partial, "--preprocessed", pipeline["preprocessed"],
                 "--dataset", pipeline["dataset"], "--mr-case-id-min", 500, "--out", tmp_path / "out")
    err = capsys.readouterr().err
    assert rc == 2 and "partial: no probability map for 1 case(s)" in err and "amos_0503" in err
    assert not (tmp_path / "out").exists()


def test_postprocess_decide_streams_out_of_fold_labels_and_names_bad_files(pipeline, tmp_path, capsys):
    from seggrid.inference.maps import write_target_labels

    pre = pipeline["preprocessed"]
    fold = tmp_path / "cv" / "fold_0"
    fold.mkdir(parents=True)
    for cid in ("amos_0001", "amos_0002"):
        ref = np.load(pre / f"{cid}_seg.npy")
        pred = ref.copy()
        pred[0, 0, 0] = 1 if ref[0, 0, 0] != 1 else 2                       # a one-voxel island
        write_target_labels(fold / f"{cid}.npz", pred)
    out = tmp_path / "decision.json"
    assert run_cli("postprocess-decide", "--cv-predictions", fold, "--preprocessed", pre, "--out", out) == 0
    decision = json.loads(out.read_text())
    assert decision["cases"] == ["amos_0001", "amos_0002"] and decision["n_cases"] == 2
    assert decision["dice_after"][0] >= decision["dice_before"][0]
    (fold / "amos_0003.npz").write_bytes(b"not a zip")
    assert run_cli("postprocess-decide", "--cv-predictions", fold, "--preprocessed", pre,
                   "--out", tmp_path / "d2.json") == 2
    assert "amos_0003.npz: not a target-spacing label file" in capsys.readouterr().err
    assert not (tmp_path / "d2.json").exists()
