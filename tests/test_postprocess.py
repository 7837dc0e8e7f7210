"""Keep-largest-component postprocessing: the decision on CV predictions, and its application."""

from __future__ import annotations

import numpy as np
import pytest

import torch

from seggrid.inference.maps import remove_from_logits
from seggrid.inference.postprocess import _better, apply, class_dice, decide, largest_component


def _box(shape, lo, hi, value, out=None):
    out = np.zeros(shape, np.uint8) if out is None else out
    out[tuple(slice(a, b) for a, b in zip(lo, hi))] = value
    return out


SHAPE = (20, 20, 20)


def test_largest_component_uses_26_connectivity():
    m = np.zeros(SHAPE, bool)
    m[2:6, 2:6, 2:6] = True           # 64 voxels
    m[6, 6, 6] = True                 # touches the big cube only at a corner: same component
    m[12:14, 12:14, 12:14] = True     # 8 voxels, separate
    keep = largest_component(m)
    assert keep.sum() == 65 and not keep[12:14, 12:14, 12:14].any()
    assert largest_component(np.zeros(SHAPE, bool)).sum() == 0


def test_spurious_blob_is_removed_when_it_helps():
    refs, preds = [], []
    for shift in (0, 1, 2):
        ref = _box(SHAPE, (2 + shift, 2, 2), (8 + shift, 8, 8), 1)
        _box(SHAPE, (2, 12, 12), (6, 16, 16), 2, ref)
        pred = ref.copy()
        _box(SHAPE, (15, 2, 15), (17, 4, 17), 1, pred)       # false-positive island of class 1
        refs.append(ref)
        preds.append(pred)
    decision = decide(refs, preds, [1, 2])
    assert decision["foreground_as_one"] is True or 1 in decision["per_class"]
    after = [apply(p, decision) for p in preds]
    assert all(np.array_equal(a, r) for a, r in zip(after, refs))
    assert decision["dice_after"][0] == pytest.approx(1.0) and decision["dice_before"][0] < 1.0


def test_postprocessing_that_hurts_is_rejected():
    refs, preds = [], []
    for _ in range(3):
        ref = _box(SHAPE, (2, 2, 2), (8, 8, 8), 1)            # class 1 has two true parts
        _box(SHAPE, (12, 12, 12), (16, 16, 16), 1, ref)       # (like two kidneys under one label)
        _box(SHAPE, (2, 12, 2), (6, 16, 6), 2, ref)
        refs.append(ref)
        preds.append(ref.copy())
    decision = decide(refs, preds, [1, 2])
    assert decision["foreground_as_one"] is False and decision["per_class"] == []
    assert all(np.array_equal(apply(p, decision), p) for p in preds)


def test_a_step_that_helps_one_class_but_hurts_another_is_rejected():
    refs, preds = [], []
    for _ in range(2):
        ref = _box(SHAPE, (2, 2, 2), (10, 10, 10), 1)
        _box(SHAPE, (14, 14, 14), (17, 17, 17), 2, ref)       # class 2 separate from class 1
        pred = ref.copy()
        _box(SHAPE, (14, 2, 14), (15, 3, 15), 1, pred)        # class-1 island
        refs.append(ref)
        preds.append(pred)
    decision = decide(refs, preds, [1, 2])
    # all-foreground LCC would delete class 2 entirely (worse): rejected; per class 1 helps
    assert decision["foreground_as_one"] is False and decision["per_class"] == [1]


def test_class_dice_ignores_classes_absent_everywhere():
    ref = _box(SHAPE, (2, 2, 2), (6, 6, 6), 1)
    d = class_dice([ref], [ref], [1, 2])
    assert d[0] == 1.0 and np.isnan(d[1])


def test_removed_voxels_become_background_in_logits():
    before = _box((4, 4, 4), (0, 0, 0), (2, 2, 2), 1)
    after = np.zeros_like(before)
    logits = torch.stack([torch.full((4, 4, 4), -1.0), torch.full((4, 4, 4), 2.0)])
    out = remove_from_logits(logits, (before > 0) & (after == 0)).numpy()
    assert np.all(out[0][before > 0] == 2) and np.all(out[1][before > 0] == -1)
    assert np.all(out[0][before == 0] == -1) and np.all(out[1][before == 0] == 2)


def _greedy_reference(refs, preds, classes):
    """The decision as first written: every candidate re-applied to every case in memory."""
    current, now = preds, class_dice(refs, preds, classes)
    fg = False
    trial = [apply(p, {"foreground_as_one": True}) for p in current]
    if _better(class_dice(refs, trial, classes), now):
        fg, current, now = True, trial, class_dice(refs, trial, classes)
    own = []
    for c in classes:
        trial = [apply(p, {"per_class": [c]}) for p in current]
        if _better(class_dice(refs, trial, classes), now):
            own.append(c)
            current, now = trial, class_dice(refs, trial, classes)
    return fg, own, now


@pytest.mark.parametrize("seed", range(6))
def test_one_pass_decision_equals_the_greedy_search_over_all_cases(seed):
    """Random blobby predictions with islands: the decision from one pass of per-case
    candidate tables equals re-running every candidate on every case."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    refs, preds = [], []
    for _ in range(4):
        ref = ndimage.zoom(rng.integers(0, 4, (4, 4, 4)), 5, order=0).astype(np.uint8)
        pred = ref.copy()
        noise = rng.random(ref.shape) < 0.01
        pred[noise] = rng.integers(0, 4, int(noise.sum()))
        refs.append(ref)
        preds.append(pred)
    fg, own, dice = _greedy_reference(refs, preds, [1, 2, 3])
    decision = decide(refs, preds, [1, 2, 3])
    assert (decision["foreground_as_one"], decision["per_class"]) == (fg, own)
    assert np.allclose(decision["dice_after"], dice, equal_nan=True)
    after = [apply(p, decision) for p in preds]
    assert np.allclose(class_dice(refs, after, [1, 2, 3]), decision["dice_after"], equal_nan=True)
