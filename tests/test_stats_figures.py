"""The table statistics (two-level bootstrap, comparisons, Holm, verdicts, seeds needed, ranks)
and the figures (rendered and checked as images)."""

from __future__ import annotations


import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from conftest import ROOT
from seggrid.evaluation import stats
from seggrid.evaluation.stats import (compare, holm, paired_wilcoxon, per_seed_statistics, rank_distribution,
                                      rank_summary, row_interval, score_arrays, seeds_needed, table_statistic,
                                      verdicts)


def _tidy(scores: dict[str, dict[str, float]], metric="dsc") -> pd.DataFrame:
    return pd.DataFrame([{"case_id": c, "organ": o, metric: v} for c, organs in scores.items()
                         for o, v in organs.items()])


def _row(rng, k, n=8, o=3, mean=0.7, seed_sd=0.01, noise=0.02, case=None):
    """seeds x cases x organs: a shared case effect, a per-seed shift, per-voxel noise."""
    case = rng.normal(0, 0.05, (1, n, 1)) if case is None else case
    return mean + case + rng.normal(0, seed_sd, (k, 1, 1)) + rng.normal(0, noise, (k, n, o))


def test_table_statistic_is_organ_mean_of_case_means():
    m = np.array([[1.0, 0.0], [0.5, np.nan]])        # 2 cases x 2 organs
    assert table_statistic(m) == pytest.approx((0.75 + 0.0) / 2)
    scores = np.stack([m, m + 0.1])                    # 2 seeds
    assert per_seed_statistics(scores) == pytest.approx([0.375, 0.475])


def test_score_arrays_align_cases_and_organs_over_rows_and_seeds():
    a = _tidy({"c1": {"liver": 0.8, "spleen": 0.6}, "c2": {"liver": 0.7, "spleen": np.nan}, "c3": {"liver": 0.5}})
    b = _tidy({"c1": {"liver": 0.9}, "c2": {"liver": 0.6, "kidney": 0.4}})              # no c3
    empty = _tidy({"c1": {"liver": np.nan}, "c2": {"liver": 0.5}, "c3": {"liver": 0.5}})  # c1 scored nothing
    arrays, cases, organs = score_arrays([[a, a], [b]], "dsc")
    assert cases == ["c1", "c2"] and organs == ["kidney", "liver", "spleen"]
    assert [x.shape for x in arrays] == [(2, 2, 3), (1, 2, 3)]
    assert arrays[1][0, 1].tolist()[:2] == [0.4, 0.6] and np.isnan(arrays[1][0, 0, 0])
    assert score_arrays([[a], [empty]], "dsc")[1] == ["c2", "c3"]


def test_row_interval_brackets_the_mean_and_is_degenerate_for_identical_cases():
    rng = np.random.default_rng(0)
    scores = _row(rng, 3, n=20)
    lo, hi = row_interval(scores, seed=1, n_resamples=999)
    assert lo < per_seed_statistics(scores).mean() < hi and hi - lo < 0.2
    # the seed level widens it: the same cases with 3 far-apart seeds
    spread = scores + np.array([-0.05, 0.0, 0.05])[:, None, None]
    lo2, hi2 = row_interval(spread, seed=1, n_resamples=999)
    assert hi2 - lo2 > (hi - lo) * 1.5
    assert row_interval(np.full((2, 5, 2), 0.8), n_resamples=99) == pytest.approx((0.8, 0.8))
    assert all(np.isnan(row_interval(np.full((1, 1, 2), 0.5))))


def test_compare_delta_probability_and_tests():
    rng = np.random.default_rng(1)
    case = rng.normal(0, 0.05, (1, 8, 1))
    base = _row(rng, 5, case=case)
    better = _row(rng, 5, mean=0.76, case=case)
    c = compare(better, base, seed=2, n_resamples=999)
    assert c.delta == pytest.approx(per_seed_statistics(better).mean() - per_seed_statistics(base).mean())
    assert c.delta_ci[0] < c.delta < c.delta_ci[1] and c.delta_ci[0] > 0
    assert c.p_better == 1.0 and c.p_better_ci[0] > 0.5            # every seed pair: better wins
    assert c.p_bootstrap < 0.01 and c.p_welch < 0.001 and c.p == max(c.p_bootstrap, c.p_welch)
    assert c.reason == "" and c.n_seeds == (5, 5) and c.n_cases == 8
    # no difference: P near 1/2, CI spans 0
    same = compare(_row(rng, 5, case=case), base, seed=2, n_resamples=999)
    assert same.delta_ci[0] < 0 < same.delta_ci[1] or same.p > 0.01
    # 2 seeds: numbers, but no test
    few = compare(better[:2], base, seed=2, n_resamples=999)
    assert few.reason == stats.TOO_FEW_SEEDS and np.isnan(few.p) and np.isfinite(few.delta_ci[0])


def test_compare_degenerate_inputs_give_reasons_not_crashes():
    flat = np.full((3, 6, 2), 0.7)
    ident = compare(flat + 0.1, flat, n_resamples=99)              # every seed of both rows the same
    assert ident.reason.startswith("n/a: every seed") and ident.delta == pytest.approx(0.1)
    one_case = compare(np.full((3, 1, 2), 0.5), np.full((3, 1, 2), 0.4), n_resamples=99)
    assert one_case.reason.startswith("n/a: 1 case") and np.isnan(one_case.p_better_ci[0])
    # an organ absent from every case (all NaN) is ignored, not a crash
    rng = np.random.default_rng(3)
    a, b = _row(rng, 3), _row(rng, 3)
    a[:, :, 0] = np.nan
    b[:, :, 0] = np.nan
    c = compare(a, b, n_resamples=99)
    assert np.isfinite(c.delta) and np.isfinite(c.delta_ci).all()
    assert np.isfinite(row_interval(a, n_resamples=99)).all()
    one_seed = compare(a[:1], b[:1], n_resamples=99)                # one seed a row: numbers, no test
    assert one_seed.reason == stats.TOO_FEW_SEEDS and np.isfinite(one_seed.delta_ci).all()
    assert one_seed.p_better in (0.0, 1.0) and rank_distribution([a[:1], b[:1], a[:1]], n_resamples=99).shape == (3, 99)
    zero = compare(np.zeros((3, 0, 2)), np.zeros((3, 0, 2)), n_resamples=99)
    assert zero.reason.startswith("n/a: 0 case")


def test_holm_by_hand_and_verdicts():
    # sorted 0.01, 0.02, 0.04 of 3: adjusted 0.03, 0.04, 0.04 (monotone), NaN ignored
    assert holm([0.04, 0.01, float("nan"), 0.02]) == pytest.approx([0.04, 0.03, float("nan"), 0.04], nan_ok=True)
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    def comp(p_boot, p_welch, seeds=(3, 3), reason=""):
        return stats.Comparison(0.1, (0, 0), 1, (0, 0), p_boot, p_welch, seeds, 8, reason)

    comps = [comp(0.001, 0.004), comp(0.02, 0.03), comp(0.04, 0.01), comp(0.001, float("nan"), (1, 3), stats.TOO_FEW_SEEDS)]
    v = verdicts(comps)
    # tested p = max of the two: 0.004, 0.03, 0.04; Holm over 3: 0.012, 0.06, 0.06
    assert [x[0] for x in v] == [stats.DIFFERS, stats.NOT_SHOWN, stats.NOT_SHOWN, stats.TOO_FEW_SEEDS]
    assert [x[1] for x in v[:3]] == pytest.approx([0.012, 0.06, 0.06]) and np.isnan(v[3][1])
    # alone, the second would pass: Holm is what holds it back
    assert verdicts(comps[1:2])[0] == (stats.DIFFERS, pytest.approx(0.03))


def test_seeds_needed_grows_with_seed_noise_and_stops_at_the_case_floor():
    k_small = seeds_needed(0.03, 0.01, 0.01, 0.0, 8)
    k_big = seeds_needed(0.03, 0.02, 0.02, 0.0, 8)
    assert stats.MIN_SEEDS <= k_small < k_big <= stats.MAX_SEEDS
    # with 3 seeds sd 0.01 and delta 0.03: se = 0.00816, ncp 3.67, df 4: power below 0.8 (t crit 2.78)
    assert k_small == 4
    assert seeds_needed(0.03, 0.01, 0.01, 0.2, 8) is None           # case noise alone hides it
    assert seeds_needed(0.0, 0.01, 0.01, 0.0, 8) is None and seeds_needed(0.1, np.nan, 0.01, 0.0, 8) is None


def test_rank_distribution_orders_clear_rows_and_mixes_close_ones():
    rng = np.random.default_rng(4)
    case = rng.normal(0, 0.05, (1, 8, 1))
    rows = [_row(rng, 3, mean=m, case=case) for m in (0.6, 0.8, 0.7, 0.701)]
    ranks = rank_distribution(rows, n_resamples=999)
    assert ranks.shape == (4, 999)
    summary = rank_summary(ranks)
    assert summary[1] == (1.0, 1.0, 1.0) and summary[0] == (4.0, 4.0, 4.0)
    assert summary[2][1] == 2.0 and summary[2][2] == 3.0           # 0.7 and 0.701 trade places


def test_wilcoxon_by_hand():
    base = _tidy({f"c{i}": {"liver": 0.5} for i in range(8)})
    better = _tidy({f"c{i}": {"liver": 0.5 + 0.01 * (i + 1)} for i in range(8)})
    p, n = paired_wilcoxon(better, base, "dsc")
    assert n == 8 and p == pytest.approx(2 / 2 ** 8)      # exact two-sided: all 8 differences positive
    assert paired_wilcoxon(base, base, "dsc") == (1.0, 8)
    p, n = paired_wilcoxon(_tidy({"a": {"liver": 1.0}}), _tidy({"a": {"liver": 0.0}}), "dsc")
    assert np.isnan(p) and n == 1


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


def test_rank_plot_is_a_png(tmp_path):
    from seggrid.outputs.figures import rank_plot

    ranks = {"title": "T", "resamples": 100, "rows": ["a", "b", "c"],
             "frequencies": {"dsc": {"a": [90, 10, 0], "b": [10, 80, 10], "c": [0, 10, 90]},
                             "nsd": {"a": [100, 0, 0], "b": [0, 50, 50], "c": [0, 50, 50]}}}
    out = tmp_path / "ranks.png"
    rank_plot(ranks, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
