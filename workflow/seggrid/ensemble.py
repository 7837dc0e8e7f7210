"""Ensembling: average the probability maps of several models/folds (each written by
``seggrid predict`` at the target spacing) and write ``<case>.nii.gz`` labels in the input
image's exact geometry (shape and affine).

Members are grouped into models by their setting (``.../<setting>/fold_<k>``). Each model's
folds are averaged first; when a postprocessing decision is given for a model, its
keep-largest-component steps are applied to that model's output (removed voxels become
background, ``postprocess.remove_from_probabilities``) before the models are averaged, as
the paper does for models A and B.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from seggrid.dataset import load_dataset
from seggrid.errors import SeggridError
from seggrid.geometry import Geometry, load_nifti, save_label_nifti
from seggrid.io import atomic_path, provenance, write_json
from seggrid.postprocess import apply, remove_from_probabilities
from seggrid.preprocess import to_original_geometry


def group_members(member_dirs: list[Path]) -> dict[str, list[Path]]:
    """{setting: [fold dirs]} from ``.../<setting>/fold_<k>`` paths, in order of appearance."""
    groups: dict[str, list[Path]] = {}
    for m in member_dirs:
        groups.setdefault(m.parent.name, []).append(m)
    return groups


def model_probabilities(fold_dirs: list[Path], cid: str, decision: dict | None) -> np.ndarray:
    """Fold-averaged (C, ...) probabilities of one model, postprocessed if ``decision``."""
    total = None
    for m in fold_dirs:
        probs = np.load(m / f"{cid}.npz")["probs"].astype(np.float32)
        total = probs if total is None else total + probs
    probs = total / len(fold_dirs)
    if decision:
        labels = probs.argmax(0)
        probs = remove_from_probabilities(probs, labels, apply(labels, decision))
    return probs


def ensemble(member_dirs: list[str | Path], preprocessed: str | Path, dataset_root: str | Path,
             out: str | Path, mr_case_id_min: int | None = None, modalities: list[str] | None = None,
             seed: int | None = None, postprocessing: dict[str, str | Path] | None = None) -> list[str]:
    """Average member probabilities per case; write labels in each input image's geometry.
    ``postprocessing`` maps a setting to its decision JSON (``seggrid postprocess-decide``)."""
    preprocessed = Path(preprocessed)
    groups = group_members([Path(m) for m in member_dirs])
    decisions = {}
    for name, path in (postprocessing or {}).items():
        if name not in groups:
            raise SeggridError(f"{path}: postprocessing given for '{name}', which is not among the members")
        decisions[name] = json.loads(Path(path).read_text())
    first = next(iter(groups.values()))[0]
    cases = sorted(p.stem for p in first.glob("*.npz"))
    ds = load_dataset(dataset_root, mr_case_id_min, modalities)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        for i, cid in enumerate(cases, 1):
            probs = sum(model_probabilities(dirs, cid, decisions.get(name)) for name, dirs in groups.items())
            props = json.loads((preprocessed / f"{cid}.json").read_text())
            labels = to_original_geometry(probs / len(groups), props)
            ref = load_nifti(ds.case(cid).image)
            save_label_nifti(labels, Geometry.from_dict(props["geometry"]), tmp / f"{cid}.nii.gz", ref)
            print(f"[ensemble] {i}/{len(cases)} {cid} ({len(groups)} models, {len(member_dirs)} members)", flush=True)
        record = {"models": {k: [str(d) for d in v] for k, v in groups.items()},
                  "postprocessing": {k: decisions[k] for k in decisions}, "cases": cases}
        write_json(tmp / "members.json", {**record, "provenance": provenance(seed, record)})
    return cases


def decide_postprocessing(cv_dirs: list[str | Path], preprocessed: str | Path, out: str | Path,
                          seed: int | None = None) -> dict:
    """Postprocessing decision of one model from its out-of-fold predictions (one dir per
    fold, each holding that fold's validation cases), against the preprocessed references.
    The decision is made on the target-spacing grid, where it is also applied."""
    from seggrid.postprocess import decide

    preprocessed = Path(preprocessed)
    manifest = json.loads((preprocessed / "manifest.json").read_text())
    classes = list(range(1, manifest["n_classes"]))
    refs, preds, cases = [], [], []
    for d in map(Path, cv_dirs):
        for f in sorted(d.glob("*.npz")):
            preds.append(np.load(f)["probs"].astype(np.float32).argmax(0).astype(np.uint8))
            refs.append(np.load(preprocessed / f"{f.stem}_seg.npy"))
            cases.append(f.stem)
    if not cases:
        raise SeggridError(f"postprocess-decide: no predictions in {[str(d) for d in cv_dirs]}")
    decision = decide(refs, preds, classes)
    decision["cases"] = cases
    decision["provenance"] = provenance(seed, {"cv_predictions": [str(d) for d in cv_dirs]})
    write_json(out, decision)
    print(f"[postprocess] {len(cases)} CV cases: all-foreground LCC {decision['foreground_as_one']}, "
          f"per class {decision['per_class']}", flush=True)
    return decision
