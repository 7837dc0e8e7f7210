"""RAS/LPS round trips on the real sample: a prediction overlays its input."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch.nn.functional as F
import torch

from conftest import ROOT
from seggrid.dataset import Case
from seggrid.geometry import Geometry, file_to_internal, internal_to_file, load_nifti
from seggrid.preprocess import preprocess_case, to_original_geometry

SAMPLE = ROOT / "data" / "totalseg_sample"


@pytest.mark.parametrize("name, codes", [("ct", ("R", "A", "S")), ("mr", ("L", "P", "S"))])
def test_internal_order_is_ras_zyx_and_inverts(name, codes):
    img = load_nifti(SAMPLE / f"{name}.nii.gz")
    assert nib.aff2axcodes(img.affine) == codes
    data = np.asarray(img.dataobj)
    internal, spacing, geom = file_to_internal(img, data)
    assert internal.shape == tuple(reversed(data.shape))       # both samples are axis-aligned
    assert spacing == (3.0, 3.0, 3.0)
    assert np.array_equal(internal_to_file(internal, geom), data)
    # the internal x axis runs towards the patient's right in world coordinates
    geom2 = Geometry.from_dict(geom.to_dict())
    assert np.allclose(geom2.affine, img.affine)
    probe = np.zeros_like(internal)
    probe[0, 0, -1] = 1                                         # max x in internal order
    file_idx = np.argwhere(internal_to_file(probe, geom) == 1)[0]
    probe[0, 0, -1], probe[0, 0, 0] = 0, 1
    file_idx0 = np.argwhere(internal_to_file(probe, geom) == 1)[0]
    x_world = lambda idx: (img.affine @ np.r_[idx, 1])[0]
    assert x_world(file_idx) > x_world(file_idx0)


@pytest.mark.parametrize("name, modality", [("ct", "CT"), ("mr", "MR")])
def test_perfect_prediction_maps_back_exactly(tmp_path, name, modality):
    """Preprocess at the native spacing, feed the one-hot label as probabilities: the written
    label equals the original mask voxel for voxel, with the input's shape and affine."""
    seg_img = nib.load(SAMPLE / f"{name}_seg.nii.gz")
    seg = (np.asarray(seg_img.dataobj) > 0).astype(np.uint8) * np.asarray(seg_img.dataobj) % 4  # 4 classes
    lab_path = tmp_path / "lab.nii.gz"
    nib.save(nib.Nifti1Image(seg.astype(np.uint8), seg_img.affine), str(lab_path))
    case = Case("c", SAMPLE / f"{name}.nii.gz", lab_path, modality)
    stats = {"percentile_00_5": -1000, "percentile_99_5": 1000, "mean": 0, "std": 100}
    props = preprocess_case(case, [3.0, 3.0, 3.0], stats, 4, tmp_path, seed=0)
    pre = np.load(tmp_path / "c_seg.npy")
    onehot = F.one_hot(torch.as_tensor(pre, dtype=torch.long), 4).permute(3, 0, 1, 2).float().numpy()
    back = to_original_geometry(onehot, props)
    assert back.shape == seg.shape
    assert np.array_equal(back, seg)


def test_resampled_round_trip_overlays_input(tmp_path):
    """At a coarser spacing the round trip cannot be exact, but the organ masks must overlap
    in place (a mirrored or shifted result would give Dice near 0)."""
    seg_img = nib.load(SAMPLE / "mr_seg.nii.gz")
    from seggrid.demo_data import _load_source

    _, amos, _, _ = _load_source(SAMPLE, "mr")
    lab_path = tmp_path / "lab.nii.gz"
    nib.save(nib.Nifti1Image(amos, seg_img.affine), str(lab_path))
    case = Case("c", SAMPLE / "mr.nii.gz", lab_path, "MR")
    props = preprocess_case(case, [4.5, 4.5, 4.5], None, 16, tmp_path, seed=0)
    pre = np.load(tmp_path / "c_seg.npy")
    onehot = F.one_hot(torch.as_tensor(pre, dtype=torch.long), 16).permute(3, 0, 1, 2).float().numpy()
    back = to_original_geometry(onehot, props)
    liver = amos == 6
    dice = 2 * (liver & (back == 6)).sum() / (liver.sum() + (back == 6).sum())
    assert dice > 0.9
