"""nnU-Net's postprocessing: keep the largest connected component, decided on cross-validation.

Candidates, tried in this order on the out-of-fold predictions of a 5-fold model:

1. all foreground classes together: keep the largest 26-connected foreground component,
   set every other foreground voxel to background;
2. then each class on its own: keep that class's largest component.

A candidate is kept only if it raises the mean Dice over classes (each class's Dice averaged
over cases, NaN when a class is absent from both masks) and makes no class worse. The
decision is a small JSON (:func:`decide`) that :func:`apply` replays on test predictions.

Applied before ensembling (as the paper does for models A and B): a model's probability map
gets background probability 1 wherever its postprocessing removed a voxel
(:func:`remove_from_probabilities`), and the models' maps are then averaged.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

STRUCTURE = ndimage.generate_binary_structure(3, 3)      # 26-connectivity
NO_POSTPROCESSING = {"foreground_as_one": False, "per_class": []}


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Boolean mask of the largest 26-connected component of ``mask`` (empty stays empty)."""
    components, n = ndimage.label(mask, structure=STRUCTURE)
    if n <= 1:
        return mask.astype(bool)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(np.argmax(sizes))


def apply(labels: np.ndarray, decision: dict) -> np.ndarray:
    """``labels`` with the decided keep-largest-component steps applied (a new array)."""
    out = labels.copy()
    if decision.get("foreground_as_one"):
        out[(out > 0) & ~largest_component(out > 0)] = 0
    for c in decision.get("per_class", []):
        mask = out == c
        out[mask & ~largest_component(mask)] = 0
    return out


def remove_from_probabilities(probs: np.ndarray, before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """(C, ...) probabilities with background probability 1 where ``after`` removed a voxel
    that ``before`` labelled as foreground."""
    removed = (before > 0) & (after == 0)
    if removed.any():
        probs = probs.copy()
        probs[:, removed] = 0
        probs[0, removed] = 1
    return probs


def class_dice(references: list[np.ndarray], predictions: list[np.ndarray], classes: list[int]) -> np.ndarray:
    """Per class, Dice averaged over cases (NaN where a class is absent from both masks)."""
    out = np.full((len(references), len(classes)), np.nan)
    for i, (ref, pred) in enumerate(zip(references, predictions)):
        for j, c in enumerate(classes):
            r, p = ref == c, pred == c
            denom = r.sum() + p.sum()
            if denom:
                out[i, j] = 2 * (r & p).sum() / denom
    with np.errstate(all="ignore"):
        return np.array([np.nanmean(col) if np.isfinite(col).any() else np.nan for col in out.T])


def _better(new: np.ndarray, old: np.ndarray) -> bool:
    """Mean Dice up and no class down (classes NaN in both are ignored)."""
    both = np.isfinite(new) & np.isfinite(old)
    if not both.any():
        return False
    no_worse = bool(np.all(new[both] >= old[both] - 1e-12))
    return no_worse and float(np.mean(new[both])) > float(np.mean(old[both])) + 1e-12


def decide(references: list[np.ndarray], predictions: list[np.ndarray], classes: list[int]) -> dict:
    """The postprocessing decision from cross-validation predictions and their references."""
    base = class_dice(references, predictions, classes)
    decision = {"foreground_as_one": False, "per_class": [], "classes": list(classes),
                "dice_before": base.tolist(), "n_cases": len(references)}
    current, dice_now = predictions, base
    trial = [apply(p, {"foreground_as_one": True}) for p in current]
    trial_dice = class_dice(references, trial, classes)
    if _better(trial_dice, dice_now):
        decision["foreground_as_one"] = True
        current, dice_now = trial, trial_dice
    for c in classes:
        trial = [apply(p, {"per_class": [c]}) for p in current]
        trial_dice = class_dice(references, trial, classes)
        if _better(trial_dice, dice_now):
            decision["per_class"].append(int(c))
            current, dice_now = trial, trial_dice
    decision["dice_after"] = dice_now.tolist()
    return decision
