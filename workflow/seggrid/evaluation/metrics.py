"""DSC, NSD and HD95 per organ per case, with explicit empty-mask rules; Dice global.

NSD uses the ``surface-distance`` package (DeepMind) at a per-organ tolerance in mm. That
package's PyPI release still uses ``np.Inf``/``np.NaN``, which NumPy 2 removed, so it fails
whenever a mask is empty; empty masks never reach it here: they are scored by policy.

Empty-mask policy (config ``metrics``):
- reference and prediction both empty: ``both_empty`` (default NaN = left out of means;
  FLARE22 scored 1);
- reference empty, prediction not: ``reference_empty_predicted`` (default 0);
- reference present, prediction empty: 0 for both metrics.
HD95 (mm, 95th percentile of the symmetric surface distances, surface-distance's robust
Hausdorff) is NaN whenever a mask is empty.
Means: per organ over cases (ignoring NaN), then over organs. Dice global (Hou et al.):
per organ, 2 * sum(intersection) / (sum(reference) + sum(prediction)) over ALL cases pooled,
then the mean over organs.
"""

from __future__ import annotations

import numpy as np
import surface_distance

from seggrid.inference.postprocess import dice  # the DSC: the package's one Dice


def _policy_value(v) -> float:
    return float("nan") if v is None or (isinstance(v, str) and v.lower() == "nan") else float(v)


def surface_metrics(reference: np.ndarray, prediction: np.ndarray, spacing_mm,
                    tolerance_mm: float) -> tuple[float, float]:
    """(NSD at ``tolerance_mm``, HD95 in mm) for two NON-empty boolean masks."""
    distances = surface_distance.compute_surface_distances(reference.astype(bool), prediction.astype(bool),
                                                           tuple(float(s) for s in spacing_mm))
    return (float(surface_distance.compute_surface_dice_at_tolerance(distances, tolerance_mm)),
            float(surface_distance.compute_robust_hausdorff(distances, 95)))


def organ_metrics(reference: np.ndarray, prediction: np.ndarray, spacing_mm, tolerance_mm: float,
                  both_empty="nan", reference_empty_predicted=0) -> dict[str, float]:
    """DSC, NSD and HD95 of one organ's boolean masks under the empty-mask policy."""
    ref_any, pred_any = bool(reference.any()), bool(prediction.any())
    if not ref_any and not pred_any:
        v = _policy_value(both_empty)
        return {"dsc": v, "nsd": v, "hd95": float("nan")}
    if not ref_any:
        v = _policy_value(reference_empty_predicted)
        return {"dsc": v, "nsd": v, "hd95": float("nan")}
    if not pred_any:
        return {"dsc": 0.0, "nsd": 0.0, "hd95": float("nan")}
    n, hd = surface_metrics(reference, prediction, spacing_mm, tolerance_mm)
    return {"dsc": dice(reference, prediction), "nsd": n, "hd95": hd}


def organ_scores(reference: np.ndarray, prediction: np.ndarray, spacing_mm, tolerance_mm: float,
                 both_empty="nan", reference_empty_predicted=0) -> tuple[float, float]:
    """(DSC, NSD) of one organ's boolean masks under the empty-mask policy."""
    m = organ_metrics(reference, prediction, spacing_mm, tolerance_mm, both_empty, reference_empty_predicted)
    return m["dsc"], m["nsd"]


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
        m = organ_metrics(ref, pred, spacing_mm, tol, metrics_cfg.get("both_empty", "nan"),
                          metrics_cfg.get("reference_empty_predicted", 0))
        rows.append({"label": value, "organ": organ, **m, "nsd_tolerance_mm": tol,
                     "reference_voxels": int(ref.sum()), "predicted_voxels": int(pred.sum()),
                     "intersection_voxels": int((ref & pred).sum())})
    return rows


def dice_global(df) -> dict[str, float]:
    """Per organ: 2 * sum(intersection) / (sum(reference) + sum(prediction)) over all cases."""
    sums = df.groupby("organ")[["intersection_voxels", "reference_voxels", "predicted_voxels"]].sum()
    denom = sums["reference_voxels"] + sums["predicted_voxels"]
    return {o: (float(2 * sums.loc[o, "intersection_voxels"] / d) if d else float("nan"))
            for o, d in denom.items()}


def summarise(df) -> dict:
    """Mean DSC/NSD/HD95: per organ over cases (NaN ignored), then over organs; Dice global;
    plus the per-organ values."""
    per_organ = df.groupby("organ")[["dsc", "nsd"] + (["hd95"] if "hd95" in df else [])].mean()
    out = {"dsc": float(per_organ["dsc"].mean()), "nsd": float(per_organ["nsd"].mean()),
           "n_cases": int(df["case_id"].nunique())}
    if "hd95" in per_organ:
        out["hd95"] = float(per_organ["hd95"].mean())
    organ_global = dice_global(df) if "intersection_voxels" in df else {}
    if organ_global:
        out["dice_global"] = float(np.nanmean(list(organ_global.values())))
    out["per_organ"] = {o: {k: float(v) for k, v in r.items()} | ({"dice_global": organ_global[o]}
                                                                  if o in organ_global else {})
                        for o, r in per_organ.iterrows()}
    return out
