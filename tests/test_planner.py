"""Planner: nnU-Net's topology rules on the paper's patches and on anisotropic cases."""

from __future__ import annotations

import pytest

from seggrid.errors import SeggridError
from seggrid.engine.planner import plan_topology

AMOS = [2.0, 0.68825001, 0.68825001]


def test_default_amos_patch():
    t = plan_topology([64, 160, 160], AMOS)
    # z is 2.9x coarser than x/y: the first pool is in-plane only and its conv kernel is 1 in z
    assert t["strides"] == [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
    assert t["kernels"][0] == [1, 3, 3] and all(k == [3, 3, 3] for k in t["kernels"][1:])
    assert t["pools_per_axis"] == [4, 5, 5] and t["patch_effective"] == [64, 160, 160]
    assert t["features"] == [32, 64, 128, 256, 320, 320]


def test_paper_patches_without_cap_collapse_354_onto_384():
    t288 = plan_topology([64, 288, 288], AMOS)
    t354 = plan_topology([64, 354, 354], AMOS)
    assert t288["pools_per_axis"] == [4, 6, 6] and t288["patch_effective"] == [64, 320, 320]
    assert t354["patch_effective"] == [64, 384, 384]           # nnU-Net's round-up rule


def test_paper_patches_with_default_depth_and_round_down():
    eff = {p: plan_topology([64, p, p], AMOS, max_pools_per_axis=5, patch_rounding="down")["patch_effective"]
           for p in (160, 288, 354, 384)}
    assert eff == {160: [64, 160, 160], 288: [64, 288, 288], 354: [64, 352, 352], 384: [64, 384, 384]}


@pytest.mark.parametrize("patch, spacing, pools, first_kernel, effective", [
    ([128, 128, 128], [1, 1, 1], [5, 5, 5], [3, 3, 3], [128, 128, 128]),       # isotropic: 128 -> 4
    ([20, 256, 224], [5.0, 0.7, 0.7], [2, 5, 5], [1, 3, 3], [20, 256, 224]),   # very anisotropic (z 7x)
    ([40, 100, 100], [3.0, 1.0, 1.0], [3, 4, 4], [1, 3, 3], [40, 112, 112]),   # rounded up to 16
    ([8, 200, 200], [1, 1, 1], [1, 5, 5], [3, 3, 3], [8, 224, 224]),           # z too thin to pool twice
    ([16, 12, 64], [1, 1, 1], [2, 1, 3], [3, 3, 3], [16, 12, 64]),             # x alone needs >= 12
])
def test_rules_on_more_cases(patch, spacing, pools, first_kernel, effective):
    t = plan_topology(patch, spacing)
    assert t["pools_per_axis"] == pools
    assert t["kernels"][0] == first_kernel
    assert t["patch_effective"] == effective
    for axis in range(3):
        assert t["patch_effective"][axis] % 2 ** t["pools_per_axis"][axis] == 0
        assert sum(s[axis] == 2 for s in t["strides"]) == t["pools_per_axis"][axis]


def test_unplannable_patch_is_a_clear_error():
    with pytest.raises(SeggridError, match="cannot be planned"):
        plan_topology([4, 64, 64], [1, 1, 1])
    with pytest.raises(SeggridError, match="3 entries"):
        plan_topology([64, 64], [1, 1])


def test_target_spacing_is_the_median_or_the_anisotropic_10th_percentile():
    import numpy as np

    from seggrid.data.fingerprint import target_spacing_rule

    iso = np.array([[1.0, 0.8, 0.8], [1.5, 0.7, 0.7], [1.2, 0.9, 0.9]])
    shapes = np.array([[200, 512, 512]] * 3)
    assert target_spacing_rule(iso, shapes) == pytest.approx([1.2, 0.8, 0.8])
    # z 5 mm (> 3x the in-plane 0.7 mm) and thin (30 slices << 512 / 3): 10th percentile of z
    aniso = np.array([[5.0, 0.7, 0.7], [5.0, 0.7, 0.7], [5.0, 0.7, 0.7], [2.5, 0.7, 0.7], [6.0, 0.7, 0.7]])
    thin = np.array([[30, 512, 512]] * 5)
    assert target_spacing_rule(aniso, thin) == pytest.approx([float(np.percentile(aniso[:, 0], 10)), 0.7, 0.7])
    # anisotropic but not thin (many slices): plain median
    thick = np.array([[400, 512, 512]] * 5)
    assert target_spacing_rule(aniso, thick) == pytest.approx([5.0, 0.7, 0.7])


def test_plan_puts_the_coarsest_axis_first():
    from seggrid.config import complete_setting
    from seggrid.engine.planner import make_plan

    setting = complete_setting({"name": "s", "patch": [20, 64, 64], "base_features": 32, "max_features": 320,
                                "max_pools_per_axis": None, "patch_rounding": "up", "gpus": 1, "batch": 2})
    plan = make_plan(setting, [0.8, 0.8, 4.0], {}, {"0": "background", "1": "a"})     # x is coarsest
    assert plan["transpose"] == [2, 0, 1]
    assert plan["topology"]["spacing"] == [4.0, 0.8, 0.8]
    assert plan["topology"]["kernels"][0] == [1, 3, 3]
