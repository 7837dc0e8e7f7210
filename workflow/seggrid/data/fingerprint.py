"""Dataset fingerprint: spacing and shape after crop-to-nonzero, foreground intensities.

Foreground intensity statistics (0.5 / 99.5 percentiles, mean, std) come from
``SAMPLES_PER_CASE`` foreground voxels per training case drawn WITH replacement, so a case
with little foreground weighs as much as any other (nnU-Net's ``collect_foreground_intensities``;
nnU-Net draws 10^8 / n_cases per case, we draw 10,000: the percentiles of 10,000 x n_cases
samples are already stable and the fingerprint stays small in memory). Two sets:
``foreground_intensity`` over every training case (nnU-Net's statistics of the channel) and
``ct_foreground_intensity`` over the CT cases only (the ``per_modality`` normalisation).
``median_relative_size_after_crop`` (voxels after / before the crop, median over cases) decides
whether z-scoring uses the non-zero mask (``data/normalization.py``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from seggrid.data.dataset import load_dataset
from seggrid.data.geometry import ANISO_THRESHOLD, file_to_internal, load_nifti, read_array

SAMPLES_PER_CASE = 10_000


def bounding_box(mask: np.ndarray) -> list[list[int]] | None:
    """[[start, stop], ...] per axis of the smallest box holding every True voxel of ``mask``
    (None when there is none)."""
    box = []
    for ax in range(mask.ndim):
        idx = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != ax)))
        if idx.size == 0:
            return None
        box.append([int(idx[0]), int(idx[-1]) + 1])
    return box


def nonzero_bbox(image: np.ndarray) -> list[list[int]]:
    """[[start, stop], ...] per axis of the region where the image is non-zero (whole image if none)."""
    box = bounding_box(image != 0)
    return box if box is not None else [[0, s] for s in image.shape]


def crop(array: np.ndarray, box: list[list[int]]) -> np.ndarray:
    return array[tuple(slice(a, b) for a, b in box)]


def target_spacing_rule(spacings: np.ndarray, shapes: np.ndarray) -> list[float]:
    """nnU-Net's target spacing: per-axis median, except that an axis whose median spacing is
    more than ANISO_THRESHOLD (3) times the others' and whose median size is small ("thin") uses its 10th percentile."""
    median = np.median(spacings, axis=0)
    median_shape = np.median(shapes, axis=0)
    worst = int(np.argmax(median))
    others = [a for a in range(3) if a != worst]
    anisotropic = median[worst] > ANISO_THRESHOLD * max(median[others])
    thin = median_shape[worst] * 3 < min(median_shape[others])
    target = median.copy()
    if anisotropic and thin:
        target[worst] = max(np.percentile(spacings[:, worst], 10), max(median[others]))
    return [float(t) for t in target]


def compute_fingerprint(root: str | Path, mr_case_id_min: int | None = None, seed: int = 0,
                        modalities: list[str] | None = None) -> dict:
    ds = load_dataset(root, mr_case_id_min, modalities)
    rng = np.random.default_rng(seed)
    spacings, shapes, samples, ct_samples = [], [], [], []
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
        fg = internal[label > 0]
        if fg.size:
            drawn = rng.choice(fg, size=SAMPLES_PER_CASE, replace=True)
            samples.append(drawn)
            if case.modality == "CT":
                ct_samples.append(drawn)
        per_case.append({"case_id": case.case_id, "modality": case.modality, "spacing": list(spacing),
                         "shape_after_crop": shape,
                         "relative_size_after_crop": float(np.prod(shape) / np.prod(internal.shape))})
        print(f"[fingerprint] {i}/{len(ds.training)} {case.case_id} spacing {np.round(spacing, 3).tolist()}",
              flush=True)
    sp, sh = np.asarray(spacings), np.asarray(shapes)
    return {
        "axes": "(z, y, x), RAS-aligned", "n_cases": len(per_case),
        "median_spacing": np.median(sp, axis=0).tolist(), "median_shape": np.median(sh, axis=0).tolist(),
        "target_spacing_rule": target_spacing_rule(sp, sh),
        "median_relative_size_after_crop": float(np.median([c["relative_size_after_crop"] for c in per_case])),
        "foreground_intensity": intensity_statistics(samples),
        "ct_foreground_intensity": intensity_statistics(ct_samples), "cases": per_case,
    }


def intensity_statistics(samples: list[np.ndarray]) -> dict | None:
    """0.5 / 99.5 percentiles, mean and (population) std of the pooled samples; None if none."""
    if not samples:
        return None
    v = np.concatenate(samples).astype(np.float64)
    return {"percentile_00_5": float(np.percentile(v, 0.5)), "percentile_99_5": float(np.percentile(v, 99.5)),
            "mean": float(v.mean()), "std": float(v.std()), "n_samples": int(v.size)}
