"""`seggrid tables` and `seggrid rank-plot` on a grid's outputs with known per-case scores:
3 rows x 3 training seeds, one row clearly better than the baseline, one the same recipe.
Checks every statistic column against evaluation/stats.py on the same inputs, the verdicts,
the caption, the rank file and plot, and a one-seed table borrowing the seed spread."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import run_cli
from seggrid.layout import prediction_set_id, training_dir
from seggrid.evaluation import stats

SEEDS = [11, 22, 33]
ORGANS = ["liver", "spleen", "aorta"]


def _write_grid(out, shifts: dict[str, float], seeds: list[int], base_seed: int, rng) -> None:
    case = rng.normal(0, 0.05, (8, 1)) + rng.normal(0, 0.03, (8, len(ORGANS)))
    for setting, shift in shifts.items():
        (out / "plans").mkdir(parents=True, exist_ok=True)
        (out / "plans" / f"{setting}.json").write_text(json.dumps({
            "topology": {"patch_requested": [8, 16, 16], "patch_effective": [8, 16, 16]},
            "setting": {"batch": 2, "loss": "dice_ce"}}))
        for seed in seeds:
            pset = prediction_set_id([setting], [0], None if seed == base_seed else seed)
            rows = []
            seed_shift = rng.normal(0, 0.004)
            for c in range(8):
                for o, organ in enumerate(ORGANS):
                    v = float(np.clip(0.7 + shift + case[c, o] + seed_shift + rng.normal(0, 0.01), 0, 1))
                    rows.append({"case_id": f"case_{c}", "organ": organ, "dsc": v, "nsd": v - 0.05, "hd95": 3.0})
            df = pd.DataFrame(rows)
            (out / "metrics").mkdir(exist_ok=True)
            df.to_csv(out / "metrics" / f"{pset}.csv", index=False)
            summary = {m: float(df.groupby("organ")[m].mean().mean()) for m in ("dsc", "nsd")}
            (out / "metrics" / f"{pset}.json").write_text(json.dumps({**summary, "n_cases": 8, "hd95": 3.0,
                                                                        "dice_global": summary["dsc"]}))
            train = out / training_dir({"seed": base_seed}, setting, 0, seed)
            train.mkdir(parents=True)
            (train / "summary.json").write_text(json.dumps({"wall_seconds": 360.0}))


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    out = tmp_path_factory.mktemp("grid")
    rng = np.random.default_rng(5)
    _write_grid(out, {"base": 0.0, "better": 0.06, "same": 0.0}, SEEDS, SEEDS[0], rng)
    _write_grid(out, {"one_a": 0.0, "one_b": 0.03}, [SEEDS[0]], SEEDS[0], rng)
    settings = {s: {} for s in ("base", "better", "same", "one_a", "one_b")}
    cfg = {"folds": 5, "seed": SEEDS[0], "settings": settings, "recipe": {},
           "tables": {"loss": {"title": "Loss", "training_seeds": SEEDS,
                               "rows": [{"label": s, "setting": s} for s in ("base", "better", "same")]},
                      "one": {"title": "One seed", "rows": [{"label": s, "setting": s} for s in ("one_a", "one_b")]}}}
    assert run_cli("tables", "--config-json", json.dumps(cfg), "--outdir", out, "--tables-dir", out / "tables") == 0
    return out


def _scores(out, setting, seeds, metric):
    tidy = [[pd.read_csv(out / "metrics" / f"{prediction_set_id([setting], [0], None if s == SEEDS[0] else s)}.csv")
             for s in seeds]]
    return stats.score_arrays(tidy, metric)[0][0]


def test_columns_match_the_statistics_on_the_same_inputs(grid):
    t = pd.read_csv(grid / "tables" / "loss.csv")
    assert t["n_seeds"].tolist() == [3, 3, 3] and t["n_cases"].tolist() == [8, 8, 8]
    base, better = _scores(grid, "base", SEEDS, "dsc"), _scores(grid, "better", SEEDS, "dsc")
    jsons = [json.loads((grid / "metrics" / f"better__f0{'' if s == SEEDS[0] else f'__s{s}'}.json").read_text())["dsc"]
             for s in SEEDS]
    assert t.loc[1, "dsc"] == pytest.approx(np.mean(jsons), abs=1e-5)
    assert t.loc[1, "dsc_seed_sd"] == pytest.approx(np.std(jsons, ddof=1), abs=1e-5)
    c = stats.compare(better, base, seed=SEEDS[0] + 1000 + 1)
    assert t.loc[1, "dsc_delta"] == pytest.approx(c.delta, abs=1e-5)
    assert (t.loc[1, "dsc_delta_ci_low"], t.loc[1, "dsc_delta_ci_high"]) == pytest.approx(c.delta_ci, abs=1e-5)
    assert t.loc[1, "dsc_p_better"] == 1.0 and t.loc[1, "dsc_p_better_ci_low"] > 0.5
    # Holm over 2 rows x 2 metrics: the better row differs in both metrics, the same recipe in neither
    assert t["dsc_verdict"].tolist()[1:] == ["differs", "no difference shown"]
    assert t["nsd_verdict"].tolist()[1:] == ["differs", "no difference shown"]
    assert t.loc[1, "dsc_p_holm"] <= 0.05 < t.loc[2, "dsc_p_holm"]
    assert t.loc[1, "dsc_p_holm"] >= max(t.loc[1, "dsc_p_bootstrap"], t.loc[1, "dsc_p_welch"])
    # ranks: the better row first in every resample
    assert (t.loc[1, "dsc_rank"], t.loc[1, "dsc_rank_low"], t.loc[1, "dsc_rank_high"]) == (1, 1, 1)
    assert t.loc[0, "dsc_rank_low"] >= 2 and t.loc[2, "dsc_rank_low"] >= 2
    # seeds needed: the clear row needs the minimum, costing that many 0.1 h trainings
    assert str(t.loc[1, "dsc_seeds_needed"]) == "3" and t.loc[1, "dsc_seeds_needed_hours"] == pytest.approx(0.3)


def test_caption_rank_file_and_plot(grid, tmp_path):
    md = (grid / "tables" / "loss.md").read_text()
    assert "on the same 8 evaluation cases, with 3/3/3 training seeds per row" in md
    assert "Holm's correction over the table's 4 comparisons" in md and "| differs (Holm p " in md
    ranks = json.loads((grid / "tables" / "loss.ranks.json").read_text())
    assert ranks["rows"] == ["base", "better", "same"] and ranks["frequencies"]["dsc"]["better"][0] == ranks["resamples"]
    assert all(sum(f) == ranks["resamples"] for f in ranks["frequencies"]["nsd"].values())
    assert run_cli("rank-plot", "--ranks", grid / "tables" / "loss.ranks.json", "--out", tmp_path / "r.png") == 0
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def test_one_seed_table_says_too_few_seeds_and_borrows_the_seed_spread(grid, tmp_path, capsys):
    t = pd.read_csv(grid / "tables" / "one.csv")
    assert t.loc[1, "dsc_verdict"] == "too few seeds" and 0 <= t.loc[1, "p_dsc"] <= 1
    assert np.isnan(t.loc[1, "dsc_rank"])                                  # 2 rows: no rank column
    md = (grid / "tables" / "one.md").read_text()
    assert "pooled over the grid's multi-seed rows" in md and "df 6" in md
    assert json.loads((grid / "tables" / "one.ranks.json").read_text())["frequencies"] == {}
    assert run_cli("rank-plot", "--ranks", grid / "tables" / "one.ranks.json", "--out", tmp_path / "r.png") == 2
    assert "needs a table with 3 or more rows" in capsys.readouterr().err and not (tmp_path / "r.png").exists()
