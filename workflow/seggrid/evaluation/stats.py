"""Uncertainty beyond the paper: bootstrap confidence intervals and paired tests over cases.

The table statistic of a prediction set is the mean over organs of each organ's mean over
cases (NaN ignored), for DSC and for NSD (``metrics.summarise``). Its 95 % CI resamples
CASES with replacement (percentile bootstrap, 2,000 resamples, fixed seed). The paired test
compares a row with its table's baseline (first) row: per case, the mean over organs; a
two-sided Wilcoxon signed-rank test over the cases both sets scored (scipy).

Seeds: a row trained with several training seeds has one prediction set per seed. Its table
value is the mean over seeds of the per-seed statistic, its spread the sample SD between
seeds (ddof 1). Whether its difference from the baseline row exceeds the seed-to-seed spread
is a two-sided two-sample t-test on the per-seed statistics with the variance pooled over
both rows (:func:`seed_spread_test`): seed noise comes from the same recipe in every row,
and pooling lets a row with 1 seed be tested against a baseline with 2 (df = n1 + n2 - 2).
The case-level CI and Wilcoxon test of such a row use the scores averaged over its seeds.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

N_BOOTSTRAP = 2000
#: significance level of the seed-spread test
SEED_TEST_ALPHA = 0.05


def case_by_organ(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """cases x organs table of ``metric`` from a tidy per-case metrics CSV."""
    return df.pivot_table(index="case_id", columns="organ", values=metric, aggfunc="mean", dropna=False)


def table_statistic(matrix: np.ndarray) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(np.nanmean(matrix, axis=0)))


def bootstrap_ci(df: pd.DataFrame, metric: str, seed: int = 0, n: int = N_BOOTSTRAP,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI over cases of the organ-mean of case-means."""
    return bootstrap_ci_over_seeds([df], metric, seed, n, level)


def bootstrap_ci_over_seeds(dfs: list[pd.DataFrame], metric: str, seed: int = 0, n: int = N_BOOTSTRAP,
                            level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI over cases of the mean over training seeds of the table
    statistic: each resample draws the cases once and scores every seed's predictions of
    those cases (``dfs``: one tidy metrics table per seed, the same evaluation cases)."""
    tables = [case_by_organ(df, metric) for df in dfs]
    cases = tables[0].index
    for t in tables[1:]:
        cases = cases.intersection(t.index)
    organs = tables[0].columns
    for t in tables[1:]:
        organs = organs.union(t.columns)
    matrices = [t.reindex(index=cases, columns=organs).to_numpy(dtype=float) for t in tables]  # seed: cases x organs
    if len(cases) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n):
        pick = rng.integers(0, len(cases), len(cases))
        stats.append(np.mean([table_statistic(m[pick]) for m in matrices]))
    stats = np.array(stats)
    stats = stats[np.isfinite(stats)]
    alpha = (1 - level) / 2
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))


def seed_sd(values: list[float]) -> float:
    """Sample standard deviation (ddof 1) of a statistic over training seeds; NaN with one seed."""
    v = np.asarray(values, dtype=float)
    return float(np.std(v, ddof=1)) if len(v) >= 2 else float("nan")


def seed_spread_test(row: list[float], baseline: list[float], alpha: float = SEED_TEST_ALPHA) -> dict:
    """Does ``row``'s mean over seeds differ from ``baseline``'s by more than the seed-to-seed
    spread? Two-sided two-sample t-test on the per-seed statistics, variance pooled over both
    rows: t = (mean_row - mean_base) / (s_p sqrt(1/n_row + 1/n_base)), df = n_row + n_base - 2.

    Returns ``diff`` (row - baseline), ``pooled_sd``, ``df``, ``p`` and ``exceeds`` (p < alpha);
    with one seed in each row there is no spread to compare with: p NaN, exceeds None."""
    a, b = np.asarray(row, dtype=float), np.asarray(baseline, dtype=float)
    diff = float(a.mean() - b.mean())
    df = len(a) + len(b) - 2
    if df < 1:
        return {"diff": diff, "pooled_sd": float("nan"), "df": df, "p": float("nan"), "exceeds": None}
    pooled_sd = float(np.sqrt((((a - a.mean()) ** 2).sum() + ((b - b.mean()) ** 2).sum()) / df))
    if pooled_sd == 0:             # identical trainings: any difference exceeds a zero spread
        p = 1.0 if diff == 0 else 0.0
    else:
        from scipy.stats import t as student_t      # scipy.stats: about 1 s of import, so only where used

        t = diff / (pooled_sd * np.sqrt(1 / len(a) + 1 / len(b)))
        p = float(2 * student_t.sf(abs(t), df))
    return {"diff": diff, "pooled_sd": pooled_sd, "df": df, "p": p, "exceeds": bool(p < alpha)}


def per_case_means(df: pd.DataFrame, metric: str) -> pd.Series:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return case_by_organ(df, metric).mean(axis=1, skipna=True)


def paired_wilcoxon(row: pd.DataFrame, baseline: pd.DataFrame, metric: str) -> tuple[float, int]:
    """(two-sided p-value, number of paired cases) of ``row`` against ``baseline``; p = 1 when
    every paired difference is 0, NaN with fewer than 2 paired cases."""
    a, b = per_case_means(row, metric), per_case_means(baseline, metric)
    common = a.index.intersection(b.index)
    x, y = a[common].to_numpy(float), b[common].to_numpy(float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 2:
        return float("nan"), int(len(x))
    if np.allclose(x, y):
        return 1.0, int(len(x))
    from scipy.stats import wilcoxon

    return float(wilcoxon(x, y, alternative="two-sided").pvalue), int(len(x))
