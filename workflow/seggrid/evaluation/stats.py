"""Table statistics that carry both noises of a trained-and-evaluated segmentation model:
which evaluation cases were drawn, and which training seed was used.

Inputs are score arrays of one table row and one metric, ``seeds x cases x organs`` (NaN: the
organ was not scored in that case), aligned on the same cases and organs for every row of a
table. The *table statistic* of one training is the mean over organs of each organ's mean
over cases (NaN ignored, the paper's aggregation); a row's value is its mean over seeds.

Every interval comes from one **two-level bootstrap** (``scipy.stats.bootstrap``, percentile
method, ``N_BOOTSTRAP`` resamples, fixed seed): each resample draws the evaluation cases with
replacement (one draw shared by every row: paired) and, independently for each row, its
training seeds with replacement. On that:

* :func:`row_interval`: the 95 % CI of a row's value.
* :func:`compare`: Δ = row - baseline with its CI; the probability of outperforming
  P(row > baseline) (a training of the row scores a higher table statistic than a training of
  the baseline on the same cases; ties count 1/2) with its CI; the bootstrap two-sided p of
  Δ = 0; and the Welch t-test over the two rows' per-seed statistics (``scipy.stats.ttest_ind``,
  ``equal_var=False``). Its test p is the larger of the two (an intersection-union test: a
  difference is claimed only when it stands out from the case noise AND from the seed noise).
* :func:`verdicts`: Holm's step-down correction over every comparison of a table (its rows x
  both metrics); "differs" when the corrected p is below ``ALPHA``; "too few seeds" when either
  row has fewer than ``MIN_SEEDS`` seeds (a verdict from 1-2 seeds is not given); "n/a: <reason>"
  when nothing can be computed.
* :func:`seeds_needed`: the seeds per row that would resolve the observed Δ with 80 % power.
* :func:`rank_distribution`: each row's rank (1 = best) in every resample, for the rank
  interval and the blob plot.

docs/statistics.md describes each column, the assumptions and the calibration.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

N_BOOTSTRAP = 4999
ALPHA = 0.05
#: fewer training seeds than this in either row: no verdict
MIN_SEEDS = 3
#: the most seeds :func:`seeds_needed` considers
MAX_SEEDS = 20
POWER = 0.8
DIFFERS, NOT_SHOWN, TOO_FEW_SEEDS = "differs", "no difference shown", "too few seeds"


def case_by_organ(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """cases x organs table of ``metric`` from a tidy per-case metrics CSV."""
    return df.pivot_table(index="case_id", columns="organ", values=metric, aggfunc="mean", dropna=False)


def _nanmean(a: np.ndarray, axis) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a, axis=axis)


def table_statistic(matrix: np.ndarray) -> float:
    """The paper's statistic of one ``cases x organs`` matrix: organ mean of case means."""
    return float(_nanmean(_nanmean(matrix, 0), 0))


def score_arrays(tables: list[list[pd.DataFrame]], metric: str) -> tuple[list[np.ndarray], list[str], list[str]]:
    """One ``seeds x cases x organs`` array per row from tidy per-case metric tables
    (``tables[row][seed]``), on the cases every prediction set of the table scored (at least
    one organ with a finite score) and the union of their organs. Returns (arrays, cases, organs)."""
    pivots = [[case_by_organ(df, metric) for df in row] for row in tables]
    cases, organs = None, pd.Index([])
    for row in pivots:
        for p in row:
            scored = p.index[np.isfinite(p.to_numpy(float)).any(axis=1)]
            cases = scored if cases is None else cases.intersection(scored)
            organs = organs.union(p.columns)
    cases = cases.sort_values() if cases is not None else pd.Index([])
    arrays = [np.stack([p.reindex(index=cases, columns=organs).to_numpy(float) for p in row]) for row in pivots]
    return arrays, list(cases), list(organs)


def per_seed_statistics(scores: np.ndarray, cases: np.ndarray | None = None) -> np.ndarray:
    """The table statistic of each seed: ``scores`` (seeds x cases x organs) -> (seeds,); with
    ``cases`` (resamples x n) an index array, the statistic on each resample -> (seeds, resamples)."""
    picked = scores if cases is None else scores[:, cases]           # seeds x [resamples x] n x organs
    return _nanmean(_nanmean(picked, -2), -1)


def _seed_means(stats: np.ndarray, seed_idx: np.ndarray) -> np.ndarray:
    """stats (seeds x resamples), seed_idx (resamples x k) -> mean of the drawn seeds (resamples,)."""
    return _nanmean(np.take_along_axis(stats.T, seed_idx, axis=1), 1)


def _prob_better(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """P(a > b) over all pairs of the last axes' values, ties 1/2: a (r x ka), b (r x kb) -> (r,)."""
    gt = (a[..., :, None] > b[..., None, :]).mean(axis=(-2, -1))
    eq = (a[..., :, None] == b[..., None, :]).mean(axis=(-2, -1))
    return gt + 0.5 * eq


def _bootstrap(arrays: list[np.ndarray], statistic, seed: int, n_resamples: int):
    """scipy.stats.bootstrap over (case indices, seed indices of each row), each resampled with
    replacement independently (paired=False): one case draw for every row, seeds within rows."""
    from scipy.stats import bootstrap

    n_cases = arrays[0].shape[1]
    # scipy wants 2 or more observations a sample: one seed is the index 0 twice (always drawn)
    data = (np.arange(n_cases),) + tuple(np.arange(a.shape[0]) if a.shape[0] >= 2 else np.zeros(2, int)
                                         for a in arrays)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")               # degenerate distributions: handled by the callers
        return bootstrap(data, statistic, n_resamples=n_resamples, vectorized=True, paired=False,
                         method="percentile", rng=seed, batch=max(1, 2_000_000 // max(1, n_cases * sum(
                             a.shape[0] * a.shape[2] for a in arrays))))


def row_interval(scores: np.ndarray, seed: int = 0, n_resamples: int = N_BOOTSTRAP,
                 level: float = 0.95) -> tuple[float, float]:
    """Two-level bootstrap CI of a row's value (mean over seeds of the table statistic);
    (NaN, NaN) with fewer than 2 cases."""
    if scores.shape[1] < 2:
        return float("nan"), float("nan")

    def statistic(cases, seeds, axis=-1):
        return _seed_means(per_seed_statistics(scores, np.atleast_2d(cases)), np.atleast_2d(seeds))

    dist = _bootstrap([scores], statistic, seed, n_resamples).bootstrap_distribution
    return _quantiles(dist, level)


def _quantiles(dist: np.ndarray, level: float) -> tuple[float, float]:
    dist = dist[np.isfinite(dist)]
    if len(dist) == 0:
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    return float(np.quantile(dist, alpha)), float(np.quantile(dist, 1 - alpha))


@dataclass(frozen=True)
class Comparison:
    """One row against its table's baseline, for one metric."""

    delta: float                 # row - baseline, means over seeds
    delta_ci: tuple[float, float]
    p_better: float              # P(a training of the row beats one of the baseline)
    p_better_ci: tuple[float, float]
    p_bootstrap: float           # two-sided bootstrap p of delta = 0 (cases and seeds)
    p_welch: float               # Welch t-test over per-seed statistics (NaN below 2 seeds a row)
    n_seeds: tuple[int, int]     # (row, baseline)
    n_cases: int
    reason: str = ""             # why no test: "" when tested

    @property
    def p(self) -> float:
        """The test's p: the larger of the bootstrap's and Welch's (NaN when not tested)."""
        return max(self.p_bootstrap, self.p_welch) if not self.reason else float("nan")


def compare(row: np.ndarray, baseline: np.ndarray, seed: int = 0, n_resamples: int = N_BOOTSTRAP) -> Comparison:
    """Δ, P(row > baseline), their CIs and the tests of ``row`` against ``baseline`` (both
    seeds x cases x organs on the same cases). ``reason`` says why no test is made: fewer than
    ``MIN_SEEDS`` seeds (the case-level numbers are still computed), fewer than 2 cases, or seed
    statistics identical within both rows (no seed spread to test against)."""
    from scipy.stats import ttest_ind

    nan2 = (float("nan"), float("nan"))
    n_seeds, n_cases = (row.shape[0], baseline.shape[0]), row.shape[1]
    stat_r, stat_b = per_seed_statistics(row), per_seed_statistics(baseline)
    delta = float(np.nanmean(stat_r) - np.nanmean(stat_b)) if n_cases else float("nan")
    if n_cases < 2:
        return Comparison(delta, nan2, float("nan"), nan2, float("nan"), float("nan"), n_seeds, n_cases,
                          f"n/a: {n_cases} case(s) scored by both rows")

    def statistic(cases, seeds_r, seeds_b, axis=-1):
        cases, seeds_r, seeds_b = map(np.atleast_2d, (cases, seeds_r, seeds_b))
        a = np.take_along_axis(per_seed_statistics(row, cases).T, seeds_r, axis=1)
        b = np.take_along_axis(per_seed_statistics(baseline, cases).T, seeds_b, axis=1)
        return np.stack([_nanmean(a, 1) - _nanmean(b, 1), _prob_better(a, b)])

    dist = _bootstrap([row, baseline], statistic, seed, n_resamples).bootstrap_distribution
    deltas = dist[0][np.isfinite(dist[0])]
    b = len(deltas)
    p_boot = min(1.0, 2 * min((np.sum(deltas <= 0) + 1) / (b + 1), (np.sum(deltas >= 0) + 1) / (b + 1))) \
        if b else float("nan")
    p_welch, reason = float("nan"), ""
    if min(n_seeds) >= 2:
        if np.ptp(stat_r) == 0 and np.ptp(stat_b) == 0:
            reason = "n/a: every seed of both rows scores the same (no seed spread)"
        else:
            p_welch = float(ttest_ind(stat_r, stat_b, equal_var=False).pvalue)
    if min(n_seeds) < MIN_SEEDS:
        reason = TOO_FEW_SEEDS
    return Comparison(delta, _quantiles(dist[0], 0.95), float(_prob_better(stat_r[None], stat_b[None])[0]),
                      _quantiles(dist[1], 0.95), float(p_boot), p_welch, n_seeds, n_cases, reason)


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (NaN entries stay NaN and do not count). scipy.stats
    has no Holm (``false_discovery_control`` is Benjamini-Hochberg/Yekutieli)."""
    p = np.asarray(pvalues, dtype=float)
    ok = np.flatnonzero(np.isfinite(p))
    adjusted = np.full(len(p), np.nan)
    m, running = len(ok), 0.0
    for rank, i in enumerate(ok[np.argsort(p[ok], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def verdicts(comparisons: list[Comparison], alpha: float = ALPHA) -> list[tuple[str, float]]:
    """(verdict, Holm-adjusted p) of each comparison of one table, Holm over the tested ones."""
    adjusted = holm([c.p for c in comparisons])
    return [(c.reason, float("nan")) if c.reason else (DIFFERS if q < alpha else NOT_SHOWN, q)
            for c, q in zip(comparisons, adjusted)]


def seeds_needed(delta: float, seed_sd_row: float, seed_sd_base: float, case_sd: float, n_cases: int,
                 alpha: float = ALPHA, power: float = POWER, max_seeds: int = MAX_SEEDS) -> int | None:
    """The fewest seeds per row (at least ``MIN_SEEDS``) whose two-sided t-test at ``alpha``
    detects ``delta`` with ``power``, when the standard error of Δ with k seeds a row is
    sqrt((sd_row² + sd_base²) / k + case_sd² / n_cases) (``case_sd``: SD over cases of the
    per-case difference, which more seeds do not shrink) and df = 2 (k - 1); power from the
    noncentral t (``scipy.stats.nct``; its normal limit where nct returns NaN). None when ``max_seeds`` do not suffice or an input is
    missing."""
    from scipy.stats import nct, norm, t

    if not all(np.isfinite(v) for v in (delta, seed_sd_row, seed_sd_base, case_sd)) or delta == 0 or n_cases < 2:
        return None
    for k in range(MIN_SEEDS, max_seeds + 1):
        se = math.sqrt((seed_sd_row ** 2 + seed_sd_base ** 2) / k + case_sd ** 2 / n_cases)
        if se == 0:
            return k
        df, ncp = 2 * (k - 1), abs(delta) / se
        crit = t.ppf(1 - alpha / 2, df)
        achieved = nct.sf(crit, df, ncp) + nct.cdf(-crit, df, ncp)
        if not np.isfinite(achieved):          # scipy's nct gives NaN far in the tail (ncp >> crit)
            achieved = norm.sf(crit - ncp) + norm.cdf(-crit - ncp)
        if achieved >= power:
            return k
    return None


def case_sd_of_difference(row: np.ndarray, baseline: np.ndarray) -> float:
    """SD over cases (ddof 1) of the per-case difference of seed-mean, organ-mean scores."""
    d = _nanmean(_nanmean(row, 2), 0) - _nanmean(_nanmean(baseline, 2), 0)
    d = d[np.isfinite(d)]
    return float(np.std(d, ddof=1)) if len(d) >= 2 else float("nan")


def rank_distribution(rows: list[np.ndarray], seed: int = 0, n_resamples: int = N_BOOTSTRAP) -> np.ndarray:
    """Each row's rank (1 = highest value, ties averaged) in every two-level bootstrap resample:
    (rows x resamples). Rows are seeds x cases x organs on the same cases."""
    from scipy.stats import rankdata

    def statistic(cases, *seeds, axis=-1):
        cases = np.atleast_2d(cases)
        values = np.stack([_seed_means(per_seed_statistics(r, cases), np.atleast_2d(s)) for r, s in zip(rows, seeds)])
        return rankdata(-np.nan_to_num(values, nan=-np.inf), axis=0)

    return _bootstrap(rows, statistic, seed, n_resamples).bootstrap_distribution


def rank_summary(ranks: np.ndarray) -> list[tuple[float, float, float]]:
    """(median, 2.5 %, 97.5 % quantile) of each row's bootstrap rank."""
    return [(float(np.median(r)), float(np.quantile(r, 0.025)), float(np.quantile(r, 0.975))) for r in ranks]


def seed_sd(values: list[float]) -> float:
    """Sample standard deviation (ddof 1) of a statistic over training seeds; NaN with one seed."""
    v = np.asarray(values, dtype=float)
    return float(np.std(v, ddof=1)) if len(v) >= 2 else float("nan")


def per_case_means(df: pd.DataFrame, metric: str) -> pd.Series:
    table = case_by_organ(df, metric)
    return pd.Series(_nanmean(table.to_numpy(float), 1), index=table.index)


def paired_wilcoxon(row: pd.DataFrame, baseline: pd.DataFrame, metric: str) -> tuple[float, int]:
    """Case level only (one training's case noise, not seed noise): (two-sided p, number of
    paired cases) of ``row`` against ``baseline``; p = 1 when every paired difference is 0,
    NaN with fewer than 2 paired cases."""
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
