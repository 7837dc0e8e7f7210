"""Ensembling several models, and the postprocessing decision; both stream the cases.

``seggrid ensemble`` averages the quantised probability maps of several models (one
``seggrid predict --probabilities-out`` folder each: a model's folds are already averaged and
its postprocessing already applied there, as the paper does for models A and B) and writes
``<case>.nii.gz`` labels in the input image's exact geometry. One case and one class are in
memory at a time: the peak is a few float32 volumes of one case, whatever the number of cases,
models or classes.

``seggrid postprocess-decide`` reads a model's out-of-fold target-spacing labels one case at a
time (:func:`seggrid.inference.postprocess.candidate_dice`).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from seggrid.errors import SeggridError
from seggrid.io import atomic_path, provenance, read_json, write_json
from seggrid.inference.maps import QUANT_MAX, quantised_shape, read_quantised_class, read_target_labels, write_file_labels
from seggrid.inference.postprocess import candidate_dice, decide_from_candidates


def member_cases(member_dirs: list[Path]) -> list[str]:
    """The cases every member predicted; a member missing one of the first's cases is an error."""
    cases = sorted(p.stem for p in member_dirs[0].glob("*.npy"))
    if not cases:
        raise SeggridError(f"{member_dirs[0]}: no probability maps (<case>.npy) in this folder")
    for d in member_dirs[1:]:
        missing = [c for c in cases if not (d / f"{c}.npy").exists()]
        if missing:
            raise SeggridError(f"{d}: no probability map for {len(missing)} case(s) of {member_dirs[0]}, "
                               f"e.g. {missing[:3]}")
    return cases


def mean_class_score(paths: list[Path], c: int) -> torch.Tensor | None:
    """The members' mean probability of class ``c`` (float32 (z, y, x)); None when 0 everywhere."""
    total = None
    for p in paths:
        q = torch.from_numpy(read_quantised_class(p, c))
        if not bool(q.any()):
            continue
        total = q.float() if total is None else total.add_(q)
    return None if total is None else total.div_(QUANT_MAX * len(paths))


def ensemble(member_dirs: list[str | Path], preprocessed: str | Path, dataset, out: str | Path,
             seed: int | None = None, file_ending: str = ".nii.gz") -> list[str]:
    """Average the members' quantised maps per case and write ``<case><file_ending>`` labels in
    each input's geometry. ``dataset`` is a :class:`seggrid.data.dataset.Dataset` (the labels
    copy the input's header); the cases may be its test cases (the submission)."""
    members = [Path(m) for m in member_dirs]
    for m in members:
        if not m.is_dir():
            raise SeggridError(f"{m}: member folder not found")
    cases = member_cases(members)
    preprocessed = Path(preprocessed)
    t_start = time.perf_counter()
    with atomic_path(out) as tmp:
        tmp.mkdir()
        for i, cid in enumerate(cases, 1):
            paths = [m / f"{cid}.npy" for m in members]
            shapes = {quantised_shape(p) for p in paths}
            if len(shapes) > 1:
                raise SeggridError(f"{cid}: the members' maps differ in shape {sorted(shapes)} ({members})")
            props = read_json(preprocessed / f"{cid}.json")
            n_classes = next(iter(shapes))[0]
            write_file_labels(tmp / f"{cid}{file_ending}", lambda c: mean_class_score(paths, c), n_classes, props,
                              dataset.case(cid).image)
            elapsed = time.perf_counter() - t_start
            print(f"[ensemble] {i}/{len(cases)} {cid} ({len(members)} models); "
                  f"ETA {elapsed / i * (len(cases) - i):.0f}s", flush=True)
        record = {"members": [str(m) for m in members], "cases": cases,
                  "member_inference": [read_json(m / "inference.json") if (m / "inference.json").exists() else None
                                       for m in members]}
        write_json(tmp / "members.json", {**record, "provenance": provenance(seed, {"members": record["members"]})})
    return cases


def decide_postprocessing(cv_dirs: list[str | Path], preprocessed: str | Path, out: str | Path,
                          seed: int | None = None) -> dict:
    """Postprocessing decision of one model from its out-of-fold target-spacing labels (one
    folder per fold, each holding that fold's validation cases), against the preprocessed
    references, one case at a time. The decision is made on the target-spacing grid, where
    ``seggrid predict`` also applies it."""
    preprocessed = Path(preprocessed)
    manifest = read_json(preprocessed / "manifest.json")
    classes = list(range(1, manifest["n_classes"]))
    tables, cases = [], []
    files = [f for d in map(Path, cv_dirs) for f in sorted(d.glob("*.npz"))]
    if not files:
        raise SeggridError(f"postprocess-decide: no predictions (<case>.npz) in {[str(d) for d in cv_dirs]}")
    for i, f in enumerate(files, 1):
        pred = read_target_labels(f)
        ref_path = preprocessed / f"{f.stem}_seg.npy"
        if not ref_path.exists():
            raise SeggridError(f"{ref_path}: no reference for the out-of-fold prediction {f}")
        ref = np.load(ref_path)
        if ref.shape != pred.shape:
            raise SeggridError(f"{f}: shape {pred.shape} differs from the reference {ref_path} {ref.shape}")
        tables.append(candidate_dice(ref, pred, classes))
        cases.append(f.stem)
        if i % 10 == 0 or i == len(files):
            print(f"[postprocess] {i}/{len(files)} out-of-fold cases scored", flush=True)
    decision = decide_from_candidates(np.array(tables), classes)
    decision["cases"] = cases
    decision["provenance"] = provenance(seed, {"cv_predictions": [str(d) for d in cv_dirs]})
    write_json(out, decision)
    print(f"[postprocess] {len(cases)} CV cases: all-foreground LCC {decision['foreground_as_one']}, "
          f"per class {decision['per_class']}", flush=True)
    return decision
