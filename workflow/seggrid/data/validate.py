"""Dataset validation: check every case and report ALL problems at once (file: problem)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from seggrid.data.dataset import Case, Dataset, load_dataset
from seggrid.errors import SeggridError
from seggrid.data.geometry import load_nifti, read_array


def label_values_message(extra: list[int], allowed: set[int]) -> str:
    """A short message about unexpected label values: count, range, at most 10 examples (a
    float image saved as a label file has thousands)."""
    shown = ", ".join(str(v) for v in extra[:10]) + (", ..." if len(extra) > 10 else "")
    span = f" from {extra[0]} to {extra[-1]}" if len(extra) > 1 else ""
    return (f"{len(extra)} label value(s){span} not in dataset.json labels ({min(allowed)}..{max(allowed)}), "
            f"e.g. {shown}")


def check_case(case: Case, allowed_labels: set[int]) -> tuple[list[str], dict]:
    """Return (problems, summary) for one case; never raises for file content problems."""
    problems: list[str] = []
    summary: dict = {"case_id": case.case_id, "modality": case.modality}
    try:
        img = load_nifti(case.image)
        image = read_array(img, case.image)
    except SeggridError as exc:
        return [str(exc)], summary
    # spacing as the pipeline uses it: the lengths of the affine's columns (nibabel silently
    # replaces a zero pixdim by 1, so the header's zooms cannot be trusted for this check)
    zooms = np.linalg.norm(np.asarray(img.affine, dtype=float)[:3, :3], axis=0)
    if np.any(~np.isfinite(zooms)) or np.any(zooms <= 0):
        problems.append(f"{case.image}: zero, negative or non-finite spacing {zooms.tolist()}")
    if not np.all(np.isfinite(image)):
        problems.append(f"{case.image}: {int((~np.isfinite(image)).sum())} NaN/inf voxels")
    summary.update(shape=list(img.shape), spacing=zooms.tolist())
    if case.label is None:
        return problems, summary
    try:
        lab_img = load_nifti(case.label)
        label = read_array(lab_img, case.label, dtype=np.float64)
    except SeggridError as exc:
        return problems + [str(exc)], summary
    if lab_img.shape != img.shape:
        problems.append(f"{case.label}: shape {lab_img.shape} differs from image {case.image.name} {img.shape}")
    elif not np.allclose(lab_img.affine, img.affine, atol=1e-3):
        problems.append(f"{case.label}: affine differs from image {case.image.name}")
    if not np.all(np.isfinite(label)):
        problems.append(f"{case.label}: NaN/inf voxels in label")
    else:
        if np.any(label != np.round(label)):
            problems.append(f"{case.label}: non-integer label values")
        values = set(int(v) for v in np.unique(np.round(label)))
        extra = sorted(values - allowed_labels)
        if extra:
            problems.append(f"{case.label}: {label_values_message(extra, allowed_labels)}")
        summary["labels_present"] = sorted(values - {0})
    return problems, summary


def validate_dataset(root: str | Path, mr_case_id_min: int | None = None,
                     modalities: list[str] | None = None) -> dict:
    """Validate dataset.json and every listed case. Raise one SeggridError listing all problems."""
    ds: Dataset = load_dataset(root, mr_case_id_min, modalities)
    problems: list[str] = []
    all_cases = ds.training + ds.validation
    for cid, n in Counter(c.case_id for c in all_cases).items():
        if n > 1:
            problems.append(f"{ds.root / 'dataset.json'}: case id '{cid}' listed {n} times")
    allowed = set(ds.labels)
    summaries = []
    for i, case in enumerate(all_cases, 1):
        print(f"[validate] {i}/{len(all_cases)} {case.case_id}", flush=True)
        case_problems, summary = check_case(case, allowed)
        problems += case_problems
        summaries.append(summary)
    if problems:
        raise SeggridError(f"dataset {ds.root} has {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    return {
        "root": str(ds.root), "layout": ds.layout, "labels": {str(k): v for k, v in ds.labels.items()},
        "n_training": len(ds.training), "n_validation": len(ds.validation),
        "training": [c.case_id for c in ds.training], "validation": [c.case_id for c in ds.validation],
        "cases": summaries,
    }
