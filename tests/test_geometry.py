"""RAS/LPS round trips on the real sample: a prediction overlays its input."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch.nn.functional as F
import torch

from conftest import ROOT
from seggrid.data.dataset import Case
from seggrid.data.geometry import Geometry, file_to_internal, internal_to_file, load_nifti
from seggrid.data.preprocess import preprocess_case
from seggrid.inference.maps import to_original_geometry

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



def _norm(modality: str, ct_stats: dict | None = None) -> dict:
    """preprocess_case's normalisation: nnU-Net's CT scheme for CT, per-image z-score otherwise."""
    return {"scheme": "ct" if modality == "CT" else "zscore", "ct_stats": ct_stats, "use_mask": False}

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
    props = preprocess_case(case, [3.0, 3.0, 3.0], _norm(modality, stats), 4, tmp_path, seed=0)
    pre = np.load(tmp_path / "c_seg.npy")
    onehot = F.one_hot(torch.as_tensor(pre, dtype=torch.long), 4).permute(3, 0, 1, 2).float().numpy()
    back = to_original_geometry(onehot, props)
    assert back.shape == seg.shape
    assert np.array_equal(back, seg)


def test_resampled_round_trip_overlays_input(tmp_path):
    """At a coarser spacing the round trip cannot be exact, but the organ masks must overlap
    in place (a mirrored or shifted result would give Dice near 0)."""
    seg_img = nib.load(SAMPLE / "mr_seg.nii.gz")
    from seggrid.data.demo_data import _load_source

    _, amos, _, _ = _load_source(SAMPLE, "mr")
    lab_path = tmp_path / "lab.nii.gz"
    nib.save(nib.Nifti1Image(amos, seg_img.affine), str(lab_path))
    case = Case("c", SAMPLE / "mr.nii.gz", lab_path, "MR")
    props = preprocess_case(case, [4.5, 4.5, 4.5], _norm("MR"), 16, tmp_path, seed=0)
    pre = np.load(tmp_path / "c_seg.npy")
    onehot = F.one_hot(torch.as_tensor(pre, dtype=torch.long), 16).permute(3, 0, 1, 2).float().numpy()
    back = to_original_geometry(onehot, props)
    liver = amos == 6
    dice = 2 * (liver & (back == 6)).sum() / (liver.sum() + (back == 6).sum())
    assert dice > 0.9


def test_real_ct_preprocessing_spacing_orientation_and_intensities(tmp_path):
    """The CT sample (3 mm, RAS) with statistics from its own foreground: stored at the target
    spacing, in RAS (z, y, x) order, clipped to the 0.5/99.5 percentiles and z-scored."""
    from seggrid.data.fingerprint import nonzero_bbox

    from seggrid.data.demo_data import _load_source

    img = load_nifti(SAMPLE / "ct.nii.gz")
    data = np.asarray(img.dataobj).astype(np.float32)
    _, seg, _, _ = _load_source(SAMPLE, "ct")
    nib.save(nib.Nifti1Image(seg, img.affine), str(tmp_path / "lab.nii.gz"))
    fg = data[seg > 0]
    stats = {"percentile_00_5": float(np.percentile(fg, 0.5)), "percentile_99_5": float(np.percentile(fg, 99.5)),
             "mean": float(fg.mean()), "std": float(fg.std())}
    case = Case("ct", SAMPLE / "ct.nii.gz", tmp_path / "lab.nii.gz", "CT")
    props = preprocess_case(case, [3.0, 3.0, 3.0], _norm("CT", stats), 16, tmp_path, seed=0)
    pre = np.load(tmp_path / "ct_img.npy")
    internal, _, _ = file_to_internal(img, data)
    box = nonzero_bbox(internal)
    assert props["transpose"] == [0, 1, 2] and not props["separate_z"]
    assert list(pre.shape) == [b - a for a, b in box] == props["shape_preprocessed"]
    expected = (np.clip(internal, stats["percentile_00_5"], stats["percentile_99_5"]) - stats["mean"]) / stats["std"]
    assert np.allclose(pre, expected[tuple(slice(a, b) for a, b in box)], atol=1e-5)
    lab = np.load(tmp_path / "ct_seg.npy")
    assert abs(pre[lab > 0].mean()) < 0.05                      # foreground mean -> 0
    lo, hi = [(stats[k] - stats["mean"]) / stats["std"] for k in ("percentile_00_5", "percentile_99_5")]
    assert pre.min() >= lo - 1e-5 and pre.max() <= hi + 1e-5 and np.isclose(pre.min(), lo, atol=1e-5)

    props2 = preprocess_case(case, [5.0, 1.5, 2.0], _norm("CT", stats), 16, tmp_path, seed=0)
    assert props2["separate_z"]                                  # 5 / 1.5 > 3
    shape = props2["shape_cropped"]
    assert props2["shape_preprocessed"] == [round(shape[0] * 3 / 5), round(shape[1] * 3 / 1.5), round(shape[2] * 3 / 2)]
    assert props2["spacing"] == [5.0, 1.5, 2.0]


def _sagittal_volume(tmp_path):
    """A file whose x axis is coarsest (4 mm) and whose x slices hold the values 0, 1, 2, ..."""
    shape = (10, 24, 20)                                          # file axes x, y, z (RAS affine)
    image = np.broadcast_to(np.arange(10, dtype=np.float32)[:, None, None] + 1, shape).copy()
    label = np.zeros(shape, dtype=np.uint8)
    label[2:7, 5:15, 4:12] = 1
    label[4:6, 8:12, 6:9] = 2
    affine = np.diag([4.0, 1.0, 1.0, 1.0])
    nib.save(nib.Nifti1Image(image, affine), str(tmp_path / "img.nii.gz"))
    nib.save(nib.Nifti1Image(label, affine), str(tmp_path / "lab.nii.gz"))
    return Case("s", tmp_path / "img.nii.gz", tmp_path / "lab.nii.gz", "MR"), label


def test_coarsest_axis_is_transposed_first_and_maps_back_exactly(tmp_path):
    case, label = _sagittal_volume(tmp_path)
    props = preprocess_case(case, [1.0, 1.0, 4.0], _norm("MR"), 3, tmp_path, seed=0)     # target (z, y, x)
    assert props["transpose"] == [2, 0, 1] and props["spacing"] == [4.0, 1.0, 1.0]
    pre = np.load(tmp_path / "s_seg.npy")
    assert pre.shape == (10, 20, 24)                                 # (x, z, y)
    onehot = F.one_hot(torch.as_tensor(pre, dtype=torch.long), 3).permute(3, 0, 1, 2).float().numpy()
    assert np.array_equal(to_original_geometry(onehot, props), label)


def test_anisotropic_resampling_uses_nearest_out_of_plane(tmp_path):
    case, _ = _sagittal_volume(tmp_path)
    props = preprocess_case(case, [2.0, 2.0, 8.0], _norm("MR"), 3, tmp_path, seed=0)     # 10 x-slices -> 5
    assert props["separate_z"] and props["shape_preprocessed"][0] == 5
    pre = np.load(tmp_path / "s_img.npy")
    # each stored slice along the coarse axis is one original slice (z-scored), never a blend
    per_slice = pre.reshape(5, -1)
    assert np.allclose(per_slice.std(axis=1), 0, atol=1e-5)
    values = per_slice[:, 0]
    originals = (np.arange(10) + 1 - 5.5) / np.arange(10).std()
    assert all(np.isclose(originals, v, atol=1e-4).any() for v in values)
