"""Prediction on the real CT (RAS) and MR (LPS) samples: the written NIfTI has the input's
shape and affine, and a perfect probability map comes back as the ground-truth mask."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch.nn.functional as F
import torch

from conftest import ROOT, run_cli

SAMPLE = ROOT / "data" / "totalseg_sample"


@pytest.fixture(scope="module")
def real_dataset(pipeline, tmp_path_factory):
    """An MSD dataset of the two real samples (AMOS labels): amos_0001 = CT, amos_0600 = MR."""
    from seggrid.data.demo_data import _load_source

    root = tmp_path_factory.mktemp("real")
    (root / "imagesTr").mkdir()
    (root / "labelsTr").mkdir()
    entries = []
    for name, cid in (("ct", "amos_0001"), ("mr", "amos_0600")):
        img = nib.load(SAMPLE / f"{name}.nii.gz")
        _, labels, _, _ = _load_source(SAMPLE, name)
        nib.save(img, str(root / "imagesTr" / f"{cid}.nii.gz"))
        nib.save(nib.Nifti1Image(labels, img.affine), str(root / "labelsTr" / f"{cid}.nii.gz"))
        entries.append({"image": f"./imagesTr/{cid}.nii.gz", "label": f"./labelsTr/{cid}.nii.gz"})
    demo = json.loads((pipeline["dataset"] / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({"name": "real", "modality": {"0": "CT"}, "labels": demo["labels"],
                                                   "training": entries, "validation": [], "test": []}))
    mr = ("--mr-case-id-min", 500)
    fp, pre = root / "fingerprint.json", root / "pre"
    assert run_cli("fingerprint", "--dataset", root, *mr, "--out", fp) == 0
    assert run_cli("preprocess", "--dataset", root, *mr, "--fingerprint", fp, "--target-spacing", 4.5, 4.5, 4.5,
                   "--out", pre) == 0
    splits = root / "splits.json"
    splits.write_text(json.dumps({"folds": [{"train": ["amos_0001"], "val": ["amos_0600"]}],
                                  "evaluation": ["amos_0001", "amos_0600"]}))
    return {"root": root, "pre": pre, "splits": splits, "mr": mr}


def test_predicted_nifti_has_the_input_geometry(pipeline, real_dataset, tmp_path):
    d = real_dataset
    assert run_cli("predict", "--model", pipeline["train"] / "model.pt", "--preprocessed", d["pre"], "--splits",
                   d["splits"], "--tta-flips", 2, "--dataset", d["root"], *d["mr"],
                   "--labels-out", tmp_path / "direct", "--probabilities-out", tmp_path / "probs") == 0
    timing = json.loads((tmp_path / "direct" / "inference.json").read_text())
    assert set(timing["cases"]) == {"amos_0001", "amos_0600"}
    assert all(c["seconds"] > 0 and c["peak_mem_mb"] > 0 for c in timing["cases"].values())
    assert run_cli("ensemble", "--members", tmp_path / "probs", "--preprocessed", d["pre"],
                   "--dataset", d["root"], *d["mr"], "--out", tmp_path / "labels") == 0
    for folder in ("direct", "labels"):
        for name, cid, codes in (("ct", "amos_0001", ("R", "A", "S")), ("mr", "amos_0600", ("L", "P", "S"))):
            src, out = nib.load(SAMPLE / f"{name}.nii.gz"), nib.load(tmp_path / folder / f"{cid}.nii.gz")
            assert out.shape == src.shape and np.allclose(out.affine, src.affine)
            assert nib.aff2axcodes(out.affine) == codes
            assert set(np.unique(np.asarray(out.dataobj))) <= set(range(16))


def test_perfect_probabilities_map_back_to_the_ground_truth(real_dataset, tmp_path):
    """At 4.5 mm the round trip loses detail, so this uses the native 3 mm grid: the one-hot
    of the preprocessed labels, written as a member's probabilities, ensembles to the mask."""
    d = real_dataset
    pre3 = tmp_path / "pre3"
    assert run_cli("preprocess", "--dataset", d["root"], *d["mr"], "--fingerprint", d["root"] / "fingerprint.json",
                   "--target-spacing", 3, 3, 3, "--out", pre3) == 0
    member = tmp_path / "perfect" / "oracle"
    member.mkdir(parents=True)
    for cid in ("amos_0001", "amos_0600"):
        seg = torch.as_tensor(np.load(pre3 / f"{cid}_seg.npy"), dtype=torch.long)
        np.save(member / f"{cid}.npy", F.one_hot(seg, 16).permute(3, 0, 1, 2).numpy().astype(np.uint8) * 255)
    assert run_cli("ensemble", "--members", member, "--preprocessed", pre3, "--dataset", d["root"], *d["mr"],
                   "--out", tmp_path / "labels") == 0
    for cid in ("amos_0001", "amos_0600"):
        truth = nib.load(d["root"] / "labelsTr" / f"{cid}.nii.gz")
        out = nib.load(tmp_path / "labels" / f"{cid}.nii.gz")
        assert np.allclose(out.affine, truth.affine)
        assert np.array_equal(np.asarray(out.dataobj), np.asarray(truth.dataobj))


def test_probability_averaging_and_postprocessing_before_models_are_averaged(tmp_path):
    """Two 'models' over one case: the ensemble averages their quantised maps; model B's
    postprocessing (applied by its predict job) removes its class-1 island (its second class-1
    component) before the average, so the island, which both models predicted, is background.
    The members are written as predict writes them: the softmax of logits (here log p)."""
    from seggrid.inference.ensemble import mean_class_score
    from seggrid.inference.maps import write_quantised_softmax
    from seggrid.inference.postprocess import apply

    shape = (3, 6, 6, 6)
    a = np.zeros(shape, np.float32)
    a[0] = 1
    a[:, 1:3, 1:3, 1:3] = np.array([0.2, 0.8, 0.0])[:, None, None, None]     # class-1 cube
    a[:, 5, 5, 5] = [0.1, 0.9, 0.0]                                          # class-1 island
    b = a.copy()
    b[:, 1:3, 1:3, 1:3] = np.array([0.2, 0.4, 0.4])[:, None, None, None] + [[[[0.0]]], [[[0.1]]], [[[-0.1]]]]

    def member(name, probs, decision):
        logits = torch.from_numpy(probs).clamp_min(1e-12).log()
        removed = None
        if decision:
            labels = logits.argmax(0).numpy().astype(np.uint8)
            removed = (labels > 0) & (apply(labels, decision) == 0)
        write_quantised_softmax(tmp_path / f"{name}.npy", logits, removed)
        return tmp_path / f"{name}.npy"

    paths = [member("A", a, None), member("B", b, {"per_class": [1]})]
    mean = torch.stack([mean_class_score(paths, c) for c in range(3)]).numpy()
    assert mean[:, 1, 1, 1] == pytest.approx([0.2, 0.65, 0.15], abs=2e-3)     # plain average in the cube
    assert np.load(paths[1])[:, 5, 5, 5].tolist() == [255, 0, 0]              # removed by B's postprocessing
    assert mean[:, 5, 5, 5] == pytest.approx([0.55, 0.45, 0], abs=2e-3) and mean.argmax(0)[5, 5, 5] == 0
    assert mean_class_score(paths, 2)[5, 5, 5] == 0
    unprocessed = [paths[0], member("B_raw", b, None)]
    assert torch.stack([mean_class_score(unprocessed, c) for c in range(3)]).argmax(0)[5, 5, 5] == 1


def test_logits_give_one_softmax_and_labels_where_removed_voxels_are_background(real_dataset, tmp_path):
    """``seggrid predict`` writes the softmax of its averaged logits (once) as the quantised map,
    and the labels from the logits; voxels the postprocessing removed are background in both."""
    from seggrid.inference.maps import remove_from_logits, write_file_labels, write_quantised_softmax

    d, cid = real_dataset, "amos_0001"
    props = json.loads((d["pre"] / f"{cid}.json").read_text())
    seg = torch.as_tensor(np.load(d["pre"] / f"{cid}_seg.npy"), dtype=torch.long)
    noise = torch.randn((16, *seg.shape), generator=torch.Generator().manual_seed(0))
    logits = 4.0 * F.one_hot(seg, 16).permute(3, 0, 1, 2).float() + 0.25 * noise
    organ = int(torch.bincount(seg[seg > 0]).argmax())
    removed = (logits.argmax(0) == organ).numpy()         # as if the decision removed this whole class

    write_quantised_softmax(tmp_path / "p.npy", logits, removed)
    q = np.load(tmp_path / "p.npy")
    expected = (torch.softmax(logits, 0) * 255).round().numpy()
    assert q.dtype == np.uint8 and q.shape == tuple(logits.shape)
    assert np.abs(q[:, ~removed].astype(int) - expected[:, ~removed]).max() <= 1
    assert (q[0][removed] == 255).all() and (q[1:, removed] == 0).all()

    image = d["root"] / "imagesTr" / f"{cid}.nii.gz"
    write_file_labels(tmp_path / "all.nii.gz", lambda c: logits[c], 16, props, image)
    before = logits.clone()
    remove_from_logits(logits, removed)
    assert torch.equal(logits[:, ~removed], before[:, ~removed])
    assert torch.equal(logits[0][removed], before[:, removed].amax(0))
    assert torch.equal(logits[organ][removed], before[:, removed].amin(0))
    write_file_labels(tmp_path / "pp.nii.gz", lambda c: logits[c], 16, props, image)
    everything = np.asarray(nib.load(tmp_path / "all.nii.gz").dataobj)
    processed = np.asarray(nib.load(tmp_path / "pp.nii.gz").dataobj)
    assert (everything == organ).sum() > 100 and not (processed == organ).any()
    kept = everything != organ
    assert (processed[kept] == everything[kept]).mean() > 0.999
    # where a removed voxel meets a kept voxel of another class, linear blending of the logits can
    # give that other class a border voxel (1 of 38,355 here): not background, but not the organ
    assert (processed[~kept] == 0).mean() > 0.999
