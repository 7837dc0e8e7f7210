"""Evaluate one prediction set against the reference labels: tidy per-case CSV + summary JSON."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from seggrid.dataset import load_dataset
from seggrid.errors import SeggridError
from seggrid.geometry import load_nifti, read_array
from seggrid.io import atomic_path, provenance, write_json
from seggrid.metrics import case_scores, summarise


def evaluate(predictions: str | Path, dataset_root: str | Path, case_ids: list[str], metrics_cfg: dict,
             out_csv: str | Path, out_json: str | Path, mr_case_id_min: int | None = None,
             modalities: list[str] | None = None, seed: int | None = None) -> dict:
    predictions = Path(predictions)
    ds = load_dataset(dataset_root, mr_case_id_min, modalities)
    rows = []
    for i, cid in enumerate(case_ids, 1):
        case = ds.case(cid)
        ref_img, pred_path = load_nifti(case.label), predictions / f"{cid}.nii.gz"
        pred_img = load_nifti(pred_path)
        if pred_img.shape != ref_img.shape or not np.allclose(pred_img.affine, ref_img.affine, atol=1e-3):
            raise SeggridError(f"{pred_path}: geometry differs from reference {case.label} "
                               f"(shape {pred_img.shape} vs {ref_img.shape})")
        ref = read_array(ref_img, case.label, dtype=np.int16)
        pred = read_array(pred_img, pred_path, dtype=np.int16)
        spacing = ref_img.header.get_zooms()[:3]
        for r in case_scores(ref, pred, spacing, ds.labels, metrics_cfg):
            rows.append({"case_id": cid, "modality": case.modality, **r})
        print(f"[evaluate] {i}/{len(case_ids)} {cid}", flush=True)
    df = pd.DataFrame(rows)
    summary = summarise(df)
    summary["provenance"] = provenance(seed, {"metrics": metrics_cfg, "predictions": str(predictions)})
    with atomic_path(out_csv) as tmp:
        df.to_csv(tmp, index=False)
    write_json(out_json, summary)
    return summary
