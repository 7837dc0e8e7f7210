"""nnU-Net's postprocessing: keep the largest connected component, decided on cross-validation.

Candidates, tried in this order on the out-of-fold predictions of a 5-fold model:

1. all foreground classes together: keep the largest 26-connected foreground component,
   set every other foreground voxel to background;
2. then each class on its own: keep that class's largest component.

A candidate is kept only if it raises the mean Dice over classes (each class's Dice averaged
over cases, NaN when a class is absent from both masks) and makes no class worse. The
decision is a small JSON (:func:`decide`) that :func:`apply` replays on test predictions.

Applied before ensembling (as the paper does for models A and B): where a model's postprocessing
removed a voxel, its quantised softmax map is background 1
(:func:`seggrid.inference.maps.write_quantised_softmax`) and its logits favour background
(:func:`seggrid.inference.maps.remove_from_logits`); the models' maps are then averaged.

The decision needs one pass over the cases, one case in memory at a time
(:func:`candidate_dice`), so its peak does not grow with the number of cases.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from seggrid.data.fingerprint import bounding_box

STRUCTURE = ndimage.generate_binary_structure(3, 3)      # 26-connectivity


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Boolean mask of the largest 26-connected component of ``mask`` (empty stays empty).
    Labelled inside the mask's bounding box only: an organ, not the whole volume."""
    bounds = bounding_box(mask)
    if bounds is None:
        return np.zeros(mask.shape, bool)
    box = tuple(slice(a, b) for a, b in bounds)
    components, n = ndimage.label(mask[box], structure=STRUCTURE)
    out = np.zeros(mask.shape, bool)
    if n <= 1:
        out[box] = components > 0
        return out
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    out[box] = components == int(np.argmax(sizes))
    return out


def apply(labels: np.ndarray, decision: dict) -> np.ndarray:
    """``labels`` with the decided keep-largest-component steps applied (a new array)."""
    out = labels.copy()
    if decision.get("foreground_as_one"):
        out[(out > 0) & ~largest_component(out > 0)] = 0
    for c in decision.get("per_class", []):
        mask = out == c
        out[mask & ~largest_component(mask)] = 0
    return out


def dice(reference: np.ndarray, prediction: np.ndarray) -> float:
    """Dice of two masks (non-zero = inside): 2 |R & P| / (|R| + |P|), NaN when both are empty.
    The one definition, used by the postprocessing decision and the evaluation's DSC."""
    ref, pred = np.asarray(reference, dtype=bool), np.asarray(prediction, dtype=bool)
    denom = int(ref.sum()) + int(pred.sum())
    return 2 * int((ref & pred).sum()) / denom if denom else float("nan")


def candidate_dice(reference: np.ndarray, prediction: np.ndarray, classes: list[int]) -> np.ndarray:
    """One case's Dice per class under the four candidate states, (4, n_classes):
    row 0 as predicted, 1 with the class's own largest component kept, 2 after the
    all-foreground step, 3 after the all-foreground step and the class's own step.

    A class's own step removes only voxels of that class, so a class's Dice depends only on
    (all-foreground step on/off, its own step on/off): these four rows give the Dice of every
    decision :func:`decide_from_candidates` can try, from one pass over the cases."""
    fg = apply(prediction, {"foreground_as_one": True})
    out = np.full((4, len(classes)), np.nan)
    for j, c in enumerate(classes):
        ref = reference == c
        for row, pred in ((0, prediction), (2, fg)):
            mask = pred == c
            out[row, j] = dice(ref, mask)
            out[row + 1, j] = dice(ref, largest_component(mask)) if mask.any() else out[row, j]
    return out


def _mean_over_cases(per_case: np.ndarray) -> np.ndarray:
    """(cases, classes) -> per class mean over cases, NaN where a class is NaN in every case."""
    with np.errstate(all="ignore"):
        return np.array([np.nanmean(col) if np.isfinite(col).any() else np.nan for col in per_case.T])


def class_dice(references: list[np.ndarray], predictions: list[np.ndarray], classes: list[int]) -> np.ndarray:
    """Per class, Dice averaged over cases (NaN where a class is absent from both masks)."""
    return _mean_over_cases(np.array([[dice(r == c, p == c) for c in classes]
                                      for r, p in zip(references, predictions)]).reshape(-1, len(classes)))


def _better(new: np.ndarray, old: np.ndarray) -> bool:
    """Mean Dice up and no class down (classes NaN in both are ignored)."""
    both = np.isfinite(new) & np.isfinite(old)
    if not both.any():
        return False
    no_worse = bool(np.all(new[both] >= old[both] - 1e-12))
    return no_worse and float(np.mean(new[both])) > float(np.mean(old[both])) + 1e-12


def decide_from_candidates(tables: np.ndarray, classes: list[int]) -> dict:
    """The decision from every case's :func:`candidate_dice` table, (cases, 4, n_classes).

    Greedy, as nnU-Net: first the all-foreground step, then each class's own step in class
    order; a step is kept when it raises the mean Dice over classes and lowers none."""
    def state_dice(fg: bool, own: set[int]) -> np.ndarray:
        rows = [2 * fg + (j in own) for j in range(len(classes))]
        return _mean_over_cases(tables[:, rows, np.arange(len(classes))])

    fg, own = False, set()
    base = dice_now = state_dice(False, set())
    decision = {"foreground_as_one": False, "per_class": [], "classes": list(classes),
                "dice_before": base.tolist(), "n_cases": int(len(tables))}
    trial = state_dice(True, own)
    if _better(trial, dice_now):
        fg, dice_now = True, trial
    for j, c in enumerate(classes):
        trial = state_dice(fg, own | {j})
        if _better(trial, dice_now):
            own.add(j)
            decision["per_class"].append(int(c))
            dice_now = trial
    decision["foreground_as_one"] = fg
    decision["dice_after"] = dice_now.tolist()
    return decision


def decide(references: list[np.ndarray], predictions: list[np.ndarray], classes: list[int]) -> dict:
    """The postprocessing decision from cross-validation predictions and their references
    (lists in memory; ``seggrid postprocess-decide`` streams the cases instead)."""
    tables = np.array([candidate_dice(r, p, classes) for r, p in zip(references, predictions)])
    return decide_from_candidates(tables.reshape(-1, 4, len(classes)), classes)
