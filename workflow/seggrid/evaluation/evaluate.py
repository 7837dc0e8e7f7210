"""Evaluate one prediction set against the reference labels: tidy per-case CSV + summary JSON.

Cases are scored in parallel (``threads`` worker processes) within the job; the CSV has one
row per (case, organ): DSC, NSD, HD95, voxel counts (for Dice global).
"""

from __future__ import annotations

import multiprocessing
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from seggrid.data.dataset import Case, load_dataset
from seggrid.errors import SeggridError
from seggrid.data.geometry import load_nifti, read_array
from seggrid.io import atomic_path, provenance, write_json
from seggrid.evaluation.metrics import case_scores, summarise


def score_case(case: Case, predictions: Path, labels: dict[int, str], metrics_cfg: dict) -> list[dict]:
    ref_img, pred_path = load_nifti(case.label), predictions / f"{case.case_id}.nii.gz"
    pred_img = load_nifti(pred_path)
    if pred_img.shape != ref_img.shape or not np.allclose(pred_img.affine, ref_img.affine, atol=1e-3):
        raise SeggridError(f"{pred_path}: geometry differs from reference {case.label} "
                           f"(shape {pred_img.shape} vs {ref_img.shape})")
    ref = read_array(ref_img, case.label, dtype=np.int16)
    pred = read_array(pred_img, pred_path, dtype=np.int16)
    spacing = ref_img.header.get_zooms()[:3]
    return [{"case_id": case.case_id, "modality": case.modality, **r}
            for r in case_scores(ref, pred, spacing, labels, metrics_cfg)]


def evaluate(predictions: str | Path, dataset_root: str | Path, case_ids: list[str], metrics_cfg: dict,
             out_csv: str | Path, out_json: str | Path, mr_case_id_min: int | None = None,
             modalities: list[str] | None = None, seed: int | None = None, threads: int = 1) -> dict:
    predictions = Path(predictions)
    ds = load_dataset(dataset_root, mr_case_id_min, modalities)
    cases = [ds.case(cid) for cid in case_ids]
    work = partial(score_case, predictions=predictions, labels=ds.labels, metrics_cfg=metrics_cfg)
    rows = []
    if threads > 1 and len(cases) > 1:
        with multiprocessing.get_context("fork").Pool(min(threads, len(cases))) as pool:
            for i, case_rows in enumerate(pool.imap(work, cases), 1):
                rows += case_rows
                print(f"[evaluate] {i}/{len(cases)} {case_rows[0]['case_id'] if case_rows else ''}", flush=True)
    else:
        for i, case in enumerate(cases, 1):
            rows += work(case)
            print(f"[evaluate] {i}/{len(cases)} {case.case_id}", flush=True)
    df = pd.DataFrame(rows)
    summary = summarise(df)
    summary["provenance"] = provenance(seed, {"metrics": metrics_cfg, "predictions": str(predictions)})
    with atomic_path(out_csv) as tmp:
        df.to_csv(tmp, index=False)
    write_json(out_json, summary)
    return summary
