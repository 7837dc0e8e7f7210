"""Bootstrap CIs, the paired Wilcoxon test, the seed-spread test, and the figures (rendered and
checked as images)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from conftest import ROOT
from seggrid.evaluation.stats import (bootstrap_ci, bootstrap_ci_over_seeds, paired_wilcoxon, seed_sd,
                                      seed_spread_test, table_statistic)


def _tidy(scores: dict[str, dict[str, float]], metric="dsc") -> pd.DataFrame:
    return pd.DataFrame([{"case_id": c, "organ": o, metric: v} for c, organs in scores.items()
                         for o, v in organs.items()])


def test_table_statistic_is_organ_mean_of_case_means():
    m = np.array([[1.0, 0.0], [0.5, np.nan]])        # 2 cases x 2 organs
    assert table_statistic(m) == pytest.approx((0.75 + 0.0) / 2)


def test_bootstrap_ci_brackets_the_mean_and_is_degenerate_for_identical_cases():
    rng = np.random.default_rng(0)
    df = _tidy({f"c{i}": {"liver": float(v), "spleen": float(v) / 2} for i, v in enumerate(rng.uniform(0, 1, 20))})
    lo, hi = bootstrap_ci(df, "dsc", seed=1)
    mean = df.groupby("organ")["dsc"].mean().mean()
    assert lo < mean < hi and hi - lo < 0.3
    same = _tidy({f"c{i}": {"liver": 0.8} for i in range(5)})
    assert bootstrap_ci(same, "dsc") == pytest.approx((0.8, 0.8))
    assert all(np.isnan(bootstrap_ci(_tidy({"only": {"liver": 0.5}}), "dsc")))


def test_wilcoxon_by_hand():
    base = _tidy({f"c{i}": {"liver": 0.5} for i in range(8)})
    better = _tidy({f"c{i}": {"liver": 0.5 + 0.01 * (i + 1)} for i in range(8)})
    p, n = paired_wilcoxon(better, base, "dsc")
    assert n == 8 and p == pytest.approx(2 / 2 ** 8)      # exact two-sided: all 8 differences positive
    assert paired_wilcoxon(base, base, "dsc") == (1.0, 8)
    p, n = paired_wilcoxon(_tidy({"a": {"liver": 1.0}}), _tidy({"a": {"liver": 0.0}}), "dsc")
    assert np.isnan(p) and n == 1


def test_seed_spread_test_by_hand():
    # 2 + 2 seeds: diff 0.05, squared deviations 2 x 0.0001 per row, df 2, s_p^2 = 0.0004 / 2,
    # t = 0.05 / (s_p sqrt(1/2 + 1/2)) = 3.5355; for df 2 the two-sided p is 1 - |t| / sqrt(t^2 + 2)
    test = seed_spread_test([0.85, 0.87], [0.80, 0.82])
    t = 0.05 / np.sqrt(0.0002)
    assert test["diff"] == pytest.approx(0.05) and test["df"] == 2
    assert test["pooled_sd"] == pytest.approx(np.sqrt(0.0002))
    assert test["p"] == pytest.approx(1 - t / np.sqrt(t * t + 2)) and test["p"] == pytest.approx(0.07152, abs=1e-5)
    assert test["exceeds"] is False                                    # 0.05 is within 2 seeds' spread
    # a tighter spread: the same difference now exceeds it (t = 35.4, p = 8e-4)
    tight = seed_spread_test([0.850, 0.852], [0.800, 0.802])
    assert tight["exceeds"] is True and tight["p"] < 0.001
    # 1 seed against a 2-seed baseline: df 1, the baseline's spread alone; t = 0.05 / (0.01414 * sqrt(1.5))
    # and for df 1 the two-sided p is 1 - 2 atan(|t|) / pi
    one = seed_spread_test([0.86], [0.80, 0.82])
    t1 = 0.05 / (np.sqrt(0.0002) * np.sqrt(1.5))
    assert one["df"] == 1 and one["p"] == pytest.approx(1 - 2 * np.arctan(t1) / np.pi)
    # one seed each: no spread to compare with, so no verdict
    none = seed_spread_test([0.9], [0.8])
    assert none["diff"] == pytest.approx(0.1) and np.isnan(none["p"]) and none["exceeds"] is None
    assert np.isnan(seed_sd([0.9])) and seed_sd([0.80, 0.82]) == pytest.approx(np.sqrt(0.0002))
    # identical seeds (zero spread): a difference exceeds it, no difference does not
    assert seed_spread_test([0.9, 0.9], [0.8, 0.8])["exceeds"] is True
    assert seed_spread_test([0.8, 0.8], [0.8, 0.8])["exceeds"] is False


def test_bootstrap_over_seeds_averages_the_seeds_on_the_same_resampled_cases():
    rng = np.random.default_rng(3)
    values = rng.uniform(0.2, 0.8, 12)
    a = _tidy({f"c{i}": {"liver": float(v)} for i, v in enumerate(values)})
    shifted = _tidy({f"c{i}": {"liver": float(v) + 0.1} for i, v in enumerate(values)})
    # one seed: exactly the single-set CI
    assert bootstrap_ci_over_seeds([a], "dsc", seed=4) == bootstrap_ci(a, "dsc", seed=4)
    # two seeds: every resample averages v and v + 0.1 of the same cases, so the CI moves by 0.05
    lo, hi = bootstrap_ci(a, "dsc", seed=4)
    assert bootstrap_ci_over_seeds([a, shifted], "dsc", seed=4) == pytest.approx((lo + 0.05, hi + 0.05))
    # cases missing from one seed are left out of every seed
    partial = shifted[shifted["case_id"] != "c0"]
    assert bootstrap_ci_over_seeds([a, partial], "dsc", seed=4) == bootstrap_ci_over_seeds(
        [a[a["case_id"] != "c0"], partial], "dsc", seed=4)


def test_slice_figure_on_the_real_ct(tmp_path):
    from seggrid.data.demo_data import _load_source
    from seggrid.outputs.figures import slice_figure, slice_positions

    sample = ROOT / "data" / "totalseg_sample"
    img = nib.load(sample / "ct.nii.gz")
    _, amos, _, _ = _load_source(sample, "ct")
    nib.save(nib.Nifti1Image(amos, img.affine), str(tmp_path / "ref.nii.gz"))
    pred = amos.copy()
    pred[pred == 6] = 0                                     # a prediction that misses the liver
    nib.save(nib.Nifti1Image(pred, img.affine), str(tmp_path / "pred.nii.gz"))
    labels = {i: f"organ {i}" for i in range(16)}
    out = tmp_path / "fig.png"
    zs = slice_figure(sample / "ct.nii.gz", tmp_path / "pred.nii.gz", tmp_path / "ref.nii.gz", labels, "CT",
                      "test", out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
    assert 1 < len(zs) <= 8 and all(b > a for a, b in zip(zs, zs[1:]))
    # 40 slices of 3 mm: every 10 mm would be 14 slices, so every 20 mm (6 voxels)
    assert slice_positions(np.ones((40, 2, 2)), 3.0) == [0, 6, 12, 18, 24, 30, 36]
    assert slice_positions(np.ones((10, 2, 2)), 2.0) == [0, 5]     # every 10 mm at 2 mm spacing


def test_trend_plot_is_a_png(tmp_path):
    from seggrid.outputs.figures import trend_plot

    table = pd.DataFrame({"row": ["2", "4", "8"], "dsc": [0.1, 0.2, 0.3], "nsd": [0.1, 0.15, 0.2],
                          "dsc_ci_low": [0.05, 0.1, 0.2], "dsc_ci_high": [0.2, 0.3, 0.4],
                          "nsd_ci_low": [0.0, 0.1, 0.1], "nsd_ci_high": [0.2, 0.2, 0.3]})
    out = tmp_path / "trend.png"
    trend_plot(table, "batch", "batch", out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
