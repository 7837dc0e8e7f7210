"""Recipe component "resampling": preprocessing resampling and the mapping of predictions back,
ours vs nnU-Net 2.8.1's ``resample_data_or_seg_to_shape`` on the same arrays.

Ours: ``seggrid.data.preprocess`` (``new_shape``, ``separate_axis``, ``resample_image``,
``resample_labels``) and ``seggrid.data.resampling`` (``resample_scores``, ``scores_to_labels``,
what ``scores_to_file_labels`` runs). nnU-Net's (``nnunet_resampling.py``): the functions and
keyword arguments its ``ExperimentPlanner`` puts in the plans (``determine_resampling``: image
order 3, labels order 1 via batchgenerators' ``resize_segmentation``, order_z 0,
force_separate_z None; ``determine_segmentation_softmax_export_fn``: logits order 1), called
as ``DefaultPreprocessor`` and ``export_prediction`` call them, plus ``compute_new_shape``
and ``determine_do_sep_z_and_axis``.

Cases (network axis order, synthetic, 9 label classes incl. a 1-voxel tube, a 1-voxel sheet,
single-voxel specks and touching organs; a CT-like image): anisotropic original with z
upsampled (separate axis 0), isotropic downsampled (3D, one axis by exactly 2: exact ties),
isotropic mixed up/down (3D), anisotropic original whose coarse axis is 2 (separate axis 2),
anisotropic target only (separate axis 0, z downsampled). Back-mapping: smooth 6-class
logits at the target shape resampled to the original shape, then argmax.

Rule (``match``): the new shape and the separate-axis decision equal nnU-Net's for every case
and for 24 more spacing pairs; per case, the image's max |difference| <= 1e-4 of the input's
intensity range, labels equal on >= 99.9 % of voxels, back-mapped labels equal on >= 99.9 %
and back-mapped logits within 1e-4 of the logits' range.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common import (fp16_exact, load_json, load_npz, protocol_compare, result, run_standalone, save_json,
                    save_npz)

CASES = [  # name, shape (network order), original spacing, target spacing
    ("aniso_z_up", [20, 96, 88], [5.0, 0.78, 0.78], [2.0, 0.69, 0.69]),
    ("iso_down", [64, 72, 70], [0.8, 0.8, 0.8], [1.6, 1.1, 1.3]),
    ("iso_mixed", [30, 40, 50], [1.5, 1.2, 0.7], [1.0, 0.9, 1.1]),
    ("aniso_axis2", [48, 60, 16], [1.0, 0.9, 4.0], [2.0, 1.0, 1.0]),
    ("aniso_target", [36, 64, 64], [1.2, 1.0, 1.0], [4.0, 1.0, 1.0]),
]
#: the fixture's cases (tests/fixtures/nnunet/resampling/): the same spacings, smaller shapes
SMALL_CASES = [
    ("aniso_z_up", [6, 16, 16], [5.0, 0.78, 0.78], [2.0, 0.69, 0.69]),
    ("iso_down", [12, 14, 14], [0.8, 0.8, 0.8], [1.6, 1.1, 1.3]),
    ("iso_mixed", [8, 10, 12], [1.5, 1.2, 0.7], [1.0, 0.9, 1.1]),
    ("aniso_axis2", [12, 16, 6], [1.0, 0.9, 4.0], [2.0, 1.0, 1.0]),
    ("aniso_target", [12, 16, 16], [1.2, 1.0, 1.0], [4.0, 1.0, 1.0]),
]
LOGIT_CLASSES = 6
SMALL_LOGIT_CLASSES = 4
IMAGE_TOL, LABEL_MIN, LOGIT_TOL = 1e-4, 0.999, 1e-4
SPACING_PAIRS = [  # (current, new) for the separate-axis decision only
    ([5.0, 0.7, 0.7], [2.0, 0.69, 0.69]), ([3.0, 0.75, 0.75], [2.0, 0.688, 0.688]),
    ([2.0, 0.688, 0.688], [3.0, 0.75, 0.75]), ([2.0, 0.688, 0.688], [5.0, 0.7, 0.7]),
    ([2.5, 0.75, 0.75], [2.0, 0.688, 0.688]), ([2.0, 0.6, 0.6], [1.0, 1.0, 1.0]),
    ([1.0, 1.0, 1.0], [1.0, 1.0, 1.0]), ([5.0, 5.0, 1.0], [1.0, 1.0, 1.0]),
    ([1.0, 1.0, 5.0], [2.0, 1.0, 1.0]), ([1.0, 4.0, 1.0], [1.0, 1.0, 1.0]),
    ([3.0, 1.0, 1.0], [1.0, 1.0, 1.0]), ([3.0001, 1.0, 1.0], [1.0, 1.0, 1.0]),
    ([1.0, 1.0, 1.0], [4.0, 4.0, 1.0]), ([1.0, 1.0, 1.0], [1.0, 1.0, 3.5]),
    ([6.0, 1.0, 1.0], [1.0, 1.0, 6.0]), ([1.0, 1.0, 6.0], [6.0, 1.0, 1.0]),
    ([0.9, 0.9, 0.9], [0.3, 0.9, 0.9]), ([5.0, 5.0, 5.0], [5.0, 0.7, 0.7]),
    ([4.0, 1.0, 1.0], [4.0, 4.0, 1.0]), ([1.0, 4.0, 4.0], [1.0, 1.0, 1.0]),
    ([2.0, 0.78014851, 0.78014851], [5.0, 0.71, 0.71]), ([5.0, 0.71, 0.71], [2.0, 0.78014851, 0.78014851]),
    ([0.5, 2.0, 0.5], [0.5, 0.5, 0.5]), ([7.0, 2.0, 2.1], [2.0, 2.0, 2.0]),
]


def _ellipsoid(shape, centre, radii) -> np.ndarray:
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0


def make_case(shape: list[int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(image float32, labels uint8) of ``shape``: organs 1-4 (4 touches 1), a 1-voxel tube (5),
    a 1-voxel sheet (6), a small blob (7), single-voxel specks (8), an organ inside an organ (9)."""
    rng = np.random.default_rng(seed)
    s = np.array(shape, dtype=float)
    labels = np.zeros(shape, dtype=np.uint8)
    labels[_ellipsoid(shape, s * [0.5, 0.4, 0.35], s * [0.3, 0.2, 0.18])] = 1
    labels[_ellipsoid(shape, s * [0.5, 0.7, 0.7], s * [0.25, 0.12, 0.1])] = 2
    labels[_ellipsoid(shape, s * [0.3, 0.35, 0.75], s * [0.15, 0.1, 0.12])] = 3
    labels[_ellipsoid(shape, s * [0.5, 0.4, 0.55], s * [0.2, 0.12, 0.1]) & (labels == 0)] = 4
    z = np.arange(shape[0])
    labels[z, (s[1] * 0.2 + z * 0.3).astype(int) % shape[1], int(s[2] * 0.2)] = 5
    labels[:, int(s[1] * 0.85), int(s[2] * 0.3):int(s[2] * 0.8)] = 6
    labels[_ellipsoid(shape, s * [0.75, 0.6, 0.4], np.maximum(s * [0.05, 0.04, 0.04], 1.0))] = 7
    specks = rng.integers(0, shape, size=(12, 3))
    labels[tuple(specks.T)] = 8
    labels[_ellipsoid(shape, s * [0.5, 0.4, 0.35], s * [0.1, 0.06, 0.05])] = 9
    smooth = np.cumsum(np.cumsum(rng.normal(size=shape), axis=1), axis=2)
    image = 40.0 * labels + 0.5 * smooth / (np.abs(smooth).max() + 1e-9) * 300 + rng.normal(0, 20, size=shape)
    image = np.clip(image - 900.0 * (labels == 0) * (rng.random(shape) < 0.05), -1000, 1500)
    return image.astype(np.float32), labels


def make_logits(shape: list[int], seed: int, classes: int = LOGIT_CLASSES) -> np.ndarray:
    """Smooth (C, z, y, x) float32 logits: box-filtered noise, scale ~5."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(classes, *shape))
    return (ndimage.uniform_filter(noise, size=(1, 3, 5, 5)) * 12.0).astype(np.float32)


def ours(case: dict, arrays: dict) -> dict:
    import torch

    from seggrid.data.preprocess import new_shape, resample_image, resample_labels
    from seggrid.data.resampling import resample_scores, scores_to_labels, separate_axis

    shape = new_shape(case["shape"], case["spacing"], case["target"])
    axis = separate_axis(case["spacing"], case["target"])
    back_axis = separate_axis(case["target"], case["spacing"])
    logits = torch.from_numpy(arrays["logits"])
    classes = logits.shape[0]
    back = torch.stack([resample_scores(logits[c], case["shape"], back_axis) for c in range(classes)])
    return {"shape": shape, "axis": axis, "back_axis": back_axis,
            "image": resample_image(arrays["image"], shape, axis=axis),
            "labels": resample_labels(arrays["labels"], shape, 10, axis=axis),
            "back_logits": back.numpy(),
            "back_labels": scores_to_labels(lambda c: logits[c], classes, case["shape"], back_axis)}


def prepare(workdir: Path, small: bool = False) -> None:
    """Write <case>_inputs.npz (image, labels, logits at the target shape) and resampling_inputs.json.

    ``small``: :data:`SMALL_CASES`, 4 logit classes, image and logits rounded to float16 values."""
    from seggrid.data.preprocess import new_shape

    cases = []
    for i, (name, shape, spacing, target) in enumerate(SMALL_CASES if small else CASES):
        image, labels = make_case(shape, i)
        case = {"name": name, "shape": shape, "spacing": spacing, "target": target,
                "target_shape": new_shape(shape, spacing, target)}
        logits = make_logits(case["target_shape"], 100 + i, SMALL_LOGIT_CLASSES if small else LOGIT_CLASSES)
        if small:
            image, logits = fp16_exact(image), fp16_exact(logits)
        save_npz(workdir / f"{name}_inputs.npz", image=image, labels=labels, logits=logits)
        cases.append(case)
    save_json(workdir / "resampling_inputs.json", {"cases": cases, "spacing_pairs": SPACING_PAIRS})


def fixture_files(workdir: Path) -> list[str]:
    """The files of a run that make this component's fixture (tests/fixtures/nnunet/resampling/)."""
    names = [c["name"] for c in load_json(workdir / "resampling_inputs.json")["cases"]]
    return ["resampling_inputs.json", "nnunet_resampling.json",
            *(f"{n}_{kind}.npz" for n in names for kind in ("inputs", "nnunet"))]


def check(workdir: Path) -> dict:
    """Ours on the arrays of ``workdir`` against nnU-Net's results recorded there."""
    from seggrid.data.resampling import separate_axis

    spec = load_json(workdir / "resampling_inputs.json")
    cases, spacing_pairs = spec["cases"], spec["spacing_pairs"]
    theirs_meta = load_json(workdir / "nnunet_resampling.json")
    if len(theirs_meta["cases"]) != len(cases):
        raise ValueError(f"{len(cases)} cases but {len(theirs_meta['cases'])} nnU-Net results in {workdir}")

    rows, ok = [], True
    for case, meta in zip(cases, theirs_meta["cases"]):
        arrays = load_npz(workdir / f"{case['name']}_inputs.npz")
        mine = ours(case, arrays)
        theirs = load_npz(workdir / f"{case['name']}_nnunet.npz")
        image_range = float(arrays["image"].max() - arrays["image"].min())
        logit_range = float(arrays["logits"].max() - arrays["logits"].min())
        row = {"case": case["name"], "shape_in": case["shape"], "shape_out": mine["shape"],
               "shape_same": mine["shape"] == meta["shape"],
               "separate_axis": {"ours": mine["axis"], "nnunet": meta["axis"]},
               "back_separate_axis": {"ours": mine["back_axis"], "nnunet": meta["back_axis"]}}
        if row["shape_same"]:
            img_diff = float(np.abs(mine["image"].astype(np.float64) - theirs["image"]).max())
            row.update(image_max_abs_diff=img_diff, image_rel_diff=img_diff / image_range,
                       image_bitwise_equal=bool(np.array_equal(mine["image"], theirs["image"])),
                       label_agreement=float((mine["labels"] == theirs["labels"]).mean()),
                       label_voxels_differing=int((mine["labels"] != theirs["labels"]).sum()),
                       foreground_voxels=int((theirs["labels"] > 0).sum()),
                       back_label_agreement=float((mine["back_labels"] == theirs["back_labels"]).mean()),
                       back_label_voxels_differing=int((mine["back_labels"] != theirs["back_labels"]).sum()),
                       back_logit_rel_diff=float(np.abs(mine["back_logits"] - theirs["back_logits"]).max())
                       / logit_range)
            row["match"] = (row["image_rel_diff"] <= IMAGE_TOL and row["label_agreement"] >= LABEL_MIN
                            and row["back_label_agreement"] >= LABEL_MIN and row["back_logit_rel_diff"] <= LOGIT_TOL)
        else:
            row["match"] = False
        row["match"] = (row["match"] and mine["axis"] == meta["axis"] and mine["back_axis"] == meta["back_axis"])
        ok = ok and row["match"]
        rows.append(row)

    axes_ours = [separate_axis(c, n) for c, n in spacing_pairs]
    axis_diff = [f"{c} -> {n}: ours {a}, nnU-Net {t}"
                 for (c, n), a, t in zip(spacing_pairs, axes_ours, theirs_meta["spacing_pairs_axis"]) if a != t]
    ok = ok and not axis_diff
    return result("resampling", ok, rule=f"image max|diff| <= {IMAGE_TOL} x input range, labels and back-mapped "
                  f"labels equal on >= {LABEL_MIN:.1%}, back-mapped logits within {LOGIT_TOL} x range, "
                  "same shapes and separate axes", cases=rows, spacing_pairs=len(spacing_pairs),
                  separate_axis_differences=axis_diff, nnunet_kwargs=theirs_meta["kwargs"])


compare = protocol_compare(prepare, check, __file__, f"[resampling] nnU-Net's resample_data_or_seg_to_shape on {len(CASES)} cases")


if __name__ == "__main__":
    run_standalone(compare, "resampling")
