"""Uncertainty beyond the paper: bootstrap confidence intervals and paired tests over cases.

The table statistic of a prediction set is the mean over organs of each organ's mean over
cases (NaN ignored), for DSC and for NSD (``metrics.summarise``). Its 95 % CI resamples
CASES with replacement (percentile bootstrap, 2,000 resamples, fixed seed). The paired test
compares a row with its table's baseline (first) row: per case, the mean over organs; a
two-sided Wilcoxon signed-rank test over the cases both sets scored (scipy).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy.stats import wilcoxon

N_BOOTSTRAP = 2000


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
    matrix = case_by_organ(df, metric).to_numpy(dtype=float)
    if len(matrix) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    stats = np.array([table_statistic(matrix[rng.integers(0, len(matrix), len(matrix))]) for _ in range(n)])
    stats = stats[np.isfinite(stats)]
    alpha = (1 - level) / 2
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))


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
    return float(wilcoxon(x, y, alternative="two-sided").pvalue), int(len(x))
