"""DSC and NSD per organ per case, with explicit empty-mask rules.

NSD uses the ``surface-distance`` package (DeepMind) at a per-organ tolerance in mm. That
package's PyPI release still uses ``np.Inf``/``np.NaN``, which NumPy 2 removed, so it fails
whenever a mask is empty; empty masks never reach it here: they are scored by policy.

Empty-mask policy (config ``metrics``):
- reference and prediction both empty: ``both_empty`` (default NaN = left out of means;
  FLARE22 scored 1);
- reference empty, prediction not: ``reference_empty_predicted`` (default 0);
- reference present, prediction empty: 0 for both metrics.
Means: per organ over cases (ignoring NaN), then over organs.
"""

from __future__ import annotations

import numpy as np
import surface_distance


def _policy_value(v) -> float:
    return float("nan") if v is None or (isinstance(v, str) and v.lower() == "nan") else float(v)


def dice(reference: np.ndarray, prediction: np.ndarray) -> float:
    ref, pred = reference.astype(bool), prediction.astype(bool)
    denom = ref.sum() + pred.sum()
    return float(2 * (ref & pred).sum() / denom) if denom else float("nan")


def nsd(reference: np.ndarray, prediction: np.ndarray, spacing_mm, tolerance_mm: float) -> float:
    """Normalised surface Dice at ``tolerance_mm`` for two NON-empty boolean masks."""
    distances = surface_distance.compute_surface_distances(reference.astype(bool), prediction.astype(bool),
                                                           tuple(float(s) for s in spacing_mm))
    return float(surface_distance.compute_surface_dice_at_tolerance(distances, tolerance_mm))


def organ_scores(reference: np.ndarray, prediction: np.ndarray, spacing_mm, tolerance_mm: float,
                 both_empty="nan", reference_empty_predicted=0) -> tuple[float, float]:
    """(DSC, NSD) of one organ's boolean masks under the empty-mask policy."""
    ref_any, pred_any = bool(reference.any()), bool(prediction.any())
    if not ref_any and not pred_any:
        v = _policy_value(both_empty)
        return v, v
    if not ref_any:
        v = _policy_value(reference_empty_predicted)
        return v, v
    if not pred_any:
        return 0.0, 0.0
    return dice(reference, prediction), nsd(reference, prediction, spacing_mm, tolerance_mm)


def case_scores(reference: np.ndarray, prediction: np.ndarray, spacing_mm, labels: dict[int, str],
                metrics_cfg: dict) -> list[dict]:
    rows = []
    tolerances = metrics_cfg.get("nsd_tolerance_mm", {})
    default_tol = metrics_cfg.get("nsd_default_tolerance_mm", 2.0)
    for value, organ in sorted(labels.items()):
        if value == 0:
            continue
        tol = float(tolerances.get(organ, default_tol))
        ref, pred = reference == value, prediction == value
        d, n = organ_scores(ref, pred, spacing_mm, tol, metrics_cfg.get("both_empty", "nan"),
                            metrics_cfg.get("reference_empty_predicted", 0))
        rows.append({"label": value, "organ": organ, "dsc": d, "nsd": n, "nsd_tolerance_mm": tol,
                     "reference_voxels": int(ref.sum()), "predicted_voxels": int(pred.sum())})
    return rows


def summarise(df) -> dict:
    """Mean DSC/NSD: per organ over cases (NaN ignored), then over organs; plus per-organ means."""
    per_organ = df.groupby("organ")[["dsc", "nsd"]].mean()
    return {"dsc": float(per_organ["dsc"].mean()), "nsd": float(per_organ["nsd"].mean()),
            "n_cases": int(df["case_id"].nunique()),
            "per_organ": {o: {"dsc": float(r.dsc), "nsd": float(r.nsd)} for o, r in per_organ.iterrows()}}
