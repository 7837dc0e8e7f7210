"""Dataset fingerprint: spacing and shape after crop-to-nonzero, CT foreground intensities."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from seggrid.data.dataset import load_dataset
from seggrid.data.geometry import file_to_internal, load_nifti, read_array

SAMPLES_PER_CASE = 10_000


def nonzero_bbox(image: np.ndarray) -> list[list[int]]:
    """[[start, stop], ...] per axis of the region where the image is non-zero (whole image if none)."""
    mask = image != 0
    if not mask.any():
        return [[0, s] for s in image.shape]
    box = []
    for ax in range(image.ndim):
        other = tuple(a for a in range(image.ndim) if a != ax)
        idx = np.flatnonzero(mask.any(axis=other))
        box.append([int(idx[0]), int(idx[-1]) + 1])
    return box


def crop(array: np.ndarray, box: list[list[int]]) -> np.ndarray:
    return array[tuple(slice(a, b) for a, b in box)]


def target_spacing_rule(spacings: np.ndarray, shapes: np.ndarray) -> list[float]:
    """nnU-Net's target spacing: per-axis median, except that an axis whose median spacing is
    more than 3x the others' and whose median size is small ("thin") uses its 10th percentile."""
    median = np.median(spacings, axis=0)
    median_shape = np.median(shapes, axis=0)
    worst = int(np.argmax(median))
    others = [a for a in range(3) if a != worst]
    anisotropic = median[worst] > 3 * max(median[others])
    thin = median_shape[worst] * 3 < min(median_shape[others])
    target = median.copy()
    if anisotropic and thin:
        target[worst] = max(np.percentile(spacings[:, worst], 10), max(median[others]))
    return [float(t) for t in target]


def compute_fingerprint(root: str | Path, mr_case_id_min: int | None = None, seed: int = 0,
                        modalities: list[str] | None = None) -> dict:
    ds = load_dataset(root, mr_case_id_min, modalities)
    rng = np.random.default_rng(seed)
    spacings, shapes, ct_samples = [], [], []
    per_case = []
    for i, case in enumerate(ds.training, 1):
        img = load_nifti(case.image)
        internal, spacing, _ = file_to_internal(img, read_array(img, case.image))
        lab_img = load_nifti(case.label)
        label, _, _ = file_to_internal(lab_img, read_array(lab_img, case.label, dtype=np.uint8))
        box = nonzero_bbox(internal)
        shape = [b - a for a, b in box]
        spacings.append(spacing)
        shapes.append(shape)
        if case.modality == "CT":
            fg = internal[label > 0]
            if fg.size:
                ct_samples.append(rng.choice(fg, size=min(SAMPLES_PER_CASE, fg.size), replace=False))
        per_case.append({"case_id": case.case_id, "modality": case.modality, "spacing": list(spacing),
                         "shape_after_crop": shape})
        print(f"[fingerprint] {i}/{len(ds.training)} {case.case_id} spacing {np.round(spacing, 3).tolist()}",
              flush=True)
    ct_stats = None
    if ct_samples:
        v = np.concatenate(ct_samples).astype(np.float64)
        ct_stats = {"percentile_00_5": float(np.percentile(v, 0.5)), "percentile_99_5": float(np.percentile(v, 99.5)),
                    "mean": float(v.mean()), "std": float(v.std()), "n_samples": int(v.size)}
    sp, sh = np.asarray(spacings), np.asarray(shapes)
    return {
        "axes": "(z, y, x), RAS-aligned", "n_cases": len(per_case),
        "median_spacing": np.median(sp, axis=0).tolist(), "median_shape": np.median(sh, axis=0).tolist(),
        "target_spacing_rule": target_spacing_rule(sp, sh),
        "ct_foreground_intensity": ct_stats, "cases": per_case,
    }
