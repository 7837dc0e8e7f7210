"""Calibration of the tables' verdicts on simulated metrics with a known truth; prints JSON.

Each simulated table has two rows (a baseline and one compared row) scored with DSC and NSD
on ``cases`` evaluation cases and ``organs`` organs. A score is

    mean + case effect (SD ``case_sd``, shared by both rows: the same cases)
         + organ-in-case effect (SD 0.05, shared)
         + seed shift of the whole row (SD ``seed_sd``, one per training seed)
         + noise per seed, case and organ (SD ``noise_sd``)

and the compared row adds ``delta_seed_sds`` x ``seed_sd``. NSD is simulated the same way with
its own draws (the two metrics' seed shifts independent: the harder case for Holm). Each table
runs through outputs/report.py's own path: ``stats.compare`` per metric, ``stats.verdicts``
(Holm over the table's 2 comparisons). Reported: the share of tables with at least one
"differs". Truth (a): no difference, the rate must stay at or below 5 %; truth (b): a planted
difference of 3 seed SDs with 5 seeds a row, the rate must reach 80 %.

    .venv/bin/python benchmarks/statistics/statistics_calibration.py [--tables 200] [--resamples 999]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "workflow"))

from seggrid.evaluation import stats  # noqa: E402

SCENARIOS = {
    # name: (seeds per row, delta in seed SDs, seed SD, truth)
    "same_3_seeds_seed_sd_0.02": (3, 0.0, 0.02, "no difference"),
    "same_5_seeds_seed_sd_0.02": (5, 0.0, 0.02, "no difference"),
    "same_5_seeds_seed_sd_0.005": (5, 0.0, 0.005, "no difference"),
    "planted_3_sd_5_seeds_seed_sd_0.01": (5, 3.0, 0.01, "planted difference"),
}


def simulate_row(rng, seeds: int, shared: np.ndarray, shift: float, seed_sd: float, noise_sd: float) -> np.ndarray:
    """seeds x cases x organs scores around the shared case/organ effects, clipped to [0, 1]."""
    k, (n, o) = seeds, shared.shape
    scores = shared[None] + shift + rng.normal(0, seed_sd, (k, 1, 1)) + rng.normal(0, noise_sd, (k, n, o))
    return np.clip(scores, 0, 1)


def simulate_table(rng, seeds: int, delta: float, seed_sd: float, cases: int = 8, organs: int = 7,
                   case_sd: float = 0.05, noise_sd: float = 0.02) -> dict[str, list[np.ndarray]]:
    """{metric: [baseline, row]} of one simulated two-row table."""
    out = {}
    for metric, mean in (("dsc", 0.75), ("nsd", 0.70)):
        shared = mean + rng.normal(0, case_sd, (cases, 1)) + rng.normal(0, 0.05, (cases, organs))
        out[metric] = [simulate_row(rng, seeds, shared, 0.0, seed_sd, noise_sd),
                       simulate_row(rng, seeds, shared, delta, seed_sd, noise_sd)]
    return out


def differs_rate(seeds: int, delta_seed_sds: float, seed_sd: float, tables: int, resamples: int,
                 seed: int = 0) -> dict:
    """Share of simulated tables with at least one 'differs' and of comparisons that differ."""
    rng = np.random.default_rng(seed)
    tables_differ = comparisons_differ = 0
    alone = {"bootstrap_p_alone": 0, "welch_p_alone": 0}      # ablation: each half of the test on its own
    for i in range(tables):
        table = simulate_table(rng, seeds, delta_seed_sds * seed_sd, seed_sd)
        comps = [stats.compare(rows[1], rows[0], seed=i, n_resamples=resamples) for rows in table.values()]
        flags = [v == stats.DIFFERS for v, _ in stats.verdicts(comps)]
        tables_differ += any(flags)
        comparisons_differ += sum(flags)
        alone["bootstrap_p_alone"] += any(q < stats.ALPHA for q in stats.holm([c.p_bootstrap for c in comps]))
        alone["welch_p_alone"] += any(q < stats.ALPHA for q in stats.holm([c.p_welch for c in comps]))
    return {"tables": tables, "resamples": resamples, "seeds_per_row": seeds, "seed_sd": seed_sd,
            "delta_seed_sds": delta_seed_sds, "tables_differ": tables_differ / tables,
            "comparisons_differ": comparisons_differ / (2 * tables),
            "tables_differ_with": {k: v / tables for k, v in alone.items()}}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tables", type=int, default=200)
    ap.add_argument("--resamples", type=int, default=999)
    a = ap.parse_args(argv)
    t0 = time.time()
    result = {}
    for name, (k, delta, sd, truth) in SCENARIOS.items():
        result[name] = {"truth": truth, **differs_rate(k, delta, sd, a.tables, a.resamples)}
        print(f"[calibration] {name}: 'differs' in {result[name]['tables_differ']:.3f} of tables", file=sys.stderr,
              flush=True)
    result["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
