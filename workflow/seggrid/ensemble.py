"""Ensembling: average the probability maps of several models/folds (each written by
``seggrid predict`` at the target spacing) and write ``<case>.nii.gz`` labels in the input
image's exact geometry (shape and affine)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from seggrid.dataset import load_dataset
from seggrid.geometry import Geometry, load_nifti, save_label_nifti
from seggrid.io import atomic_path, provenance, write_json
from seggrid.preprocess import to_original_geometry


def ensemble(member_dirs: list[str | Path], preprocessed: str | Path, dataset_root: str | Path,
             out: str | Path, mr_case_id_min: int | None = None,
             modalities: list[str] | None = None, seed: int | None = None) -> list[str]:
    """Average member probabilities per case; write labels in each input image's geometry."""
    preprocessed = Path(preprocessed)
    member_dirs = [Path(m) for m in member_dirs]
    cases = sorted(p.stem for p in member_dirs[0].glob("*.npz"))
    ds = load_dataset(dataset_root, mr_case_id_min, modalities)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        for i, cid in enumerate(cases, 1):
            total = None
            for m in member_dirs:
                probs = np.load(m / f"{cid}.npz")["probs"].astype(np.float32)
                total = probs if total is None else total + probs
            props = json.loads((preprocessed / f"{cid}.json").read_text())
            labels = to_original_geometry(total / len(member_dirs), props)
            ref = load_nifti(ds.case(cid).image)
            save_label_nifti(labels, Geometry.from_dict(props["geometry"]), tmp / f"{cid}.nii.gz", ref)
            print(f"[ensemble] {i}/{len(cases)} {cid} ({len(member_dirs)} members)", flush=True)
        write_json(tmp / "members.json", {"members": [str(m) for m in member_dirs], "cases": cases,
                                          "provenance": provenance(seed, {"members": [str(m) for m in member_dirs]})})
    return cases
