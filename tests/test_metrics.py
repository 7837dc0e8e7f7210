"""DSC / NSD on geometry worked out by hand, and the empty-mask policy."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from seggrid.evaluation.metrics import case_scores, dice, organ_scores, summarise


def cube(shape=(12, 12, 12), lo=(2, 2, 2), size=4):
    m = np.zeros(shape, bool)
    m[lo[0]:lo[0] + size, lo[1]:lo[1] + size, lo[2]:lo[2] + size] = True
    return m


def test_cubes_one_voxel_apart():
    a, b = cube(lo=(2, 2, 2)), cube(lo=(3, 2, 2))              # shifted by one voxel along z
    # overlap 3*4*4 = 48 of 64 each: DSC = 2*48/128 = 0.75
    assert dice(a, b) == pytest.approx(0.75)
    d, n = organ_scores(a, b, (1.0, 1.0, 1.0), tolerance_mm=1.0)
    assert d == pytest.approx(0.75)
    assert n == pytest.approx(1.0)                               # every surface point within 1 mm
    d, n = organ_scores(a, b, (1.0, 1.0, 1.0), tolerance_mm=0.5)
    # within 0.5 mm: only the four side faces' overlapping parts coincide; the two z faces
    # (2 x 16 surface elements of each cube, 1 mm away) and the side rows outside the overlap fail
    assert 0 < n < 1
    d2, n2 = organ_scores(a, b, (2.0, 1.0, 1.0), tolerance_mm=1.0)
    assert n2 < 1                                                # 2 mm spacing: 2 mm apart


def test_identical_masks():
    a = cube()
    assert organ_scores(a, a, (1, 1, 1), 1.0) == (1.0, 1.0)


def test_empty_prediction_scores_zero():
    assert organ_scores(cube(), np.zeros((12, 12, 12), bool), (1, 1, 1), 2.0) == (0.0, 0.0)


def test_empty_reference_with_prediction_follows_policy():
    empty = np.zeros((12, 12, 12), bool)
    assert organ_scores(empty, cube(), (1, 1, 1), 2.0) == (0.0, 0.0)
    d, n = organ_scores(empty, cube(), (1, 1, 1), 2.0, reference_empty_predicted="nan")
    assert math.isnan(d) and math.isnan(n)


def test_both_empty_follows_policy():
    empty = np.zeros((12, 12, 12), bool)
    d, n = organ_scores(empty, empty, (1, 1, 1), 2.0)
    assert math.isnan(d) and math.isnan(n)
    assert organ_scores(empty, empty, (1, 1, 1), 2.0, both_empty=1) == (1.0, 1.0)


def test_case_scores_use_per_organ_tolerance_and_summary_ignores_nan():
    ref = np.zeros((12, 12, 12), np.int16)
    ref[cube()] = 1
    pred = ref.copy()
    labels = {0: "background", 1: "spleen", 2: "esophagus"}
    rows = case_scores(ref, pred, (1, 1, 1), labels, {"nsd_tolerance_mm": {"spleen": 3}, "nsd_default_tolerance_mm": 2})
    assert [r["nsd_tolerance_mm"] for r in rows] == [3.0, 2.0]
    assert rows[0]["dsc"] == 1.0 and math.isnan(rows[1]["dsc"])
    df = pd.DataFrame([{"case_id": "a", **r} for r in rows])
    s = summarise(df)
    assert s["dsc"] == 1.0 and s["nsd"] == 1.0 and s["n_cases"] == 1


def test_hd95_and_dice_global_by_hand():
    from seggrid.evaluation.metrics import dice_global, organ_metrics

    a, b = cube(lo=(2, 2, 2)), cube(lo=(3, 2, 2))
    m = organ_metrics(a, b, (1.0, 1.0, 1.0), 1.0)
    assert m["hd95"] == pytest.approx(1.0)                      # every surface point is <= 1 mm away
    assert organ_metrics(a, a, (1.0, 1.0, 1.0), 1.0)["hd95"] == 0.0
    assert math.isnan(organ_metrics(a, np.zeros_like(a), (1, 1, 1), 1.0)["hd95"])
    # Dice global pools voxels: case 1 (64 vs 64, overlap 48) + case 2 (64 vs 0)
    df = pd.DataFrame([
        {"case_id": "1", "organ": "liver", "intersection_voxels": 48, "reference_voxels": 64, "predicted_voxels": 64},
        {"case_id": "2", "organ": "liver", "intersection_voxels": 0, "reference_voxels": 64, "predicted_voxels": 0},
    ])
    assert dice_global(df)["liver"] == pytest.approx(2 * 48 / (128 + 64))   # 0.5, while the case mean is 0.375
