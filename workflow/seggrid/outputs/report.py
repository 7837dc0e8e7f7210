"""The paper's tables: one CSV + Markdown + LaTeX per table, the bootstrap ranks of its rows,
and a per-organ table per prediction set.

Columns of a table (one row per configured row, in config order; methods in
evaluation/stats.py, described in docs/statistics.md). Per metric ``m`` (``dsc``, ``nsd``):

* ``m``: the paper's statistic (mean over organs of per-organ means over cases), mean over the
  row's training seeds (``seeds``, ``n_seeds``); ``m_seed_sd`` its SD between seeds (NaN with
  one seed); ``m_ci_low``/``m_ci_high`` its 95 % two-level bootstrap CI (cases and seeds).
* against the table's first row (the baseline): ``m_delta`` with ``m_delta_ci_*``; the
  probability of outperforming ``m_p_better`` with ``m_p_better_ci_*``; ``m_p_bootstrap``,
  ``m_p_welch`` and ``m_p_holm`` (Holm over the table's rows and both metrics); ``m_verdict``
  (``differs``, ``no difference shown``, ``too few seeds`` or ``n/a: <reason>``); ``p_m`` the
  case-level paired Wilcoxon test of the seed-averaged scores (one training's case noise only);
  ``m_seeds_needed`` (seeds per row for 80 % power, ``> 20``, or ``n/a``) and
  ``m_seeds_needed_hours`` (that many trainings of the row).
* ``m_rank``, ``m_rank_low``, ``m_rank_high``: median and 95 % interval of the row's rank over
  the bootstrap (tables with 3 or more rows).

Also ``dice_global`` and ``hd95`` (mean over seeds), ``paper_dsc``/``paper_nsd`` (the values the
paper reports, as fractions, when the config gives them) and ``train_hours`` (one training of
the row: its models x folds, mean over seeds).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from seggrid.config import MIN_RANK_ROWS, row_folds, row_models
from seggrid.layout import metrics_file, multi_seed_prediction_sets, plan_file, row_prediction_sets, training_dir
from seggrid.evaluation import stats
from seggrid.io import atomic_path, provenance, write_json
from seggrid.outputs.table_format import to_latex, to_markdown, organs_note, stats_note

METRICS = ("dsc", "nsd")
PER_METRIC = ["", "_seed_sd", "_ci_low", "_ci_high", "_delta", "_delta_ci_low", "_delta_ci_high", "_p_better",
              "_p_better_ci_low", "_p_better_ci_high", "_p_bootstrap", "_p_welch", "_p_holm", "_verdict",
              "_seeds_needed", "_seeds_needed_hours", "_rank", "_rank_low", "_rank_high"]
TABLE_COLUMNS = (["row", "settings", "patch_requested", "patch_effective", "batch", "loss", "folds", "seeds",
                  "n_seeds", "n_cases"]
                 + [f"{m}{suffix}" for m in METRICS for suffix in PER_METRIC] + [f"p_{m}" for m in METRICS]
                 + ["dice_global", "hd95", "paper_dsc", "paper_nsd", "train_hours"])


def _fmt_patch(p) -> str:
    return "(" + ", ".join(str(int(v)) for v in p) + ")"


def pooled_seed_sd(outdir: Path, sources: list[list[str]]) -> dict[str, tuple[float, int]]:
    """Per metric, (SD, degrees of freedom) of the table statistic between seeds, pooled over
    the rows with several seeds (``sources``: their prediction sets): sqrt(sum (k-1) s² / sum (k-1))."""
    out = {}
    for metric in METRICS:
        ss, df = 0.0, 0
        for psets in sources:
            v = np.array([json.loads((outdir / metrics_file(p, "json")).read_text())[metric] for p in psets], float)
            v = v[np.isfinite(v)]
            if len(v) >= 2:
                ss, df = ss + float(((v - v.mean()) ** 2).sum()), df + len(v) - 1
        out[metric] = (float(np.sqrt(ss / df)) if df else float("nan"), df)
    return out


def _seeds_needed_cell(comparison: stats.Comparison, sd_row: float, sd_base: float, case_sd: float,
                       hours: float) -> tuple[str, float]:
    if comparison.n_cases < 2 or not all(np.isfinite(v) for v in (comparison.delta, sd_row, sd_base, case_sd)):
        return "n/a", float("nan")
    k = stats.seeds_needed(comparison.delta, sd_row, sd_base, case_sd, comparison.n_cases)
    return (f"> {stats.MAX_SEEDS}", float("nan")) if k is None else (str(k), k * hours)


def table_rows(config: dict, table: dict, outdir: Path, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """The table's rows and what its statistics rest on: {"cases": [...], "organs": [...],
    "ranks": {metric: rows x resamples}, "borrowed_seed_sd": {metric: (sd, df)}}."""
    rows, psets_of_row = [], []
    for row in table["rows"]:
        models, folds = row_models(row), row_folds(config, row)
        runs = row_prediction_sets(config, table, row)                  # [(training seed, pset)]
        summaries = [json.loads((outdir / metrics_file(p, "json")).read_text()) for _, p in runs]
        plans = [json.loads((outdir / plan_file(m)).read_text()) for m in models]
        train_s = [sum(json.loads((outdir / training_dir(config, m, f, s) / "summary.json").read_text())[
            "wall_seconds"] for m in models for f in folds) for s, _ in runs]
        psets_of_row.append([p for _, p in runs])
        rows.append({
            "row": row.get("label", " & ".join(models)), "settings": " & ".join(models),
            "patch_requested": " & ".join(_fmt_patch(p["topology"]["patch_requested"]) for p in plans),
            "patch_effective": " & ".join(_fmt_patch(p["topology"]["patch_effective"]) for p in plans),
            "batch": " & ".join(str(p["setting"]["batch"]) for p in plans),
            "loss": " & ".join(p["setting"]["loss"] for p in plans),
            "folds": ",".join(str(f) for f in folds),
            "seeds": ",".join(str(s) for s, _ in runs), "n_seeds": len(runs),
            "dice_global": float(pd.Series([x.get("dice_global", np.nan) for x in summaries], dtype=float).mean()),
            "hd95": float(pd.Series([x.get("hd95", np.nan) for x in summaries], dtype=float).mean()),
            "train_hours": float(np.mean(train_s)) / 3600,
            "paper_dsc": row.get("paper", {}).get("dsc", np.nan), "paper_nsd": row.get("paper", {}).get("nsd", np.nan),
        })
    tidy = [[pd.read_csv(outdir / metrics_file(p, "csv")) for p in psets] for psets in psets_of_row]
    sources = config.get("seed_sd_sources")
    borrowed = pooled_seed_sd(outdir, multi_seed_prediction_sets(config) if sources is None else sources)
    info = {"ranks": {}, "borrowed_seed_sd": borrowed}
    family: list[tuple[dict, str, stats.Comparison]] = []      # Holm runs over every row x both metrics
    for metric in METRICS:
        arrays, cases, organs = stats.score_arrays(tidy, metric)
        info["cases"], info["organs"] = cases, organs
        for i, (out, scores) in enumerate(zip(rows, arrays)):
            per_seed = stats.per_seed_statistics(scores) if len(cases) else np.full(scores.shape[0], np.nan)
            out["n_cases"] = len(cases)
            out[metric] = float(np.mean(per_seed))
            out[f"{metric}_seed_sd"] = stats.seed_sd(per_seed)
            out[f"{metric}_ci_low"], out[f"{metric}_ci_high"] = stats.row_interval(scores, seed=seed + i)
            if i == 0:
                continue
            c = stats.compare(scores, arrays[0], seed=seed + 1000 + i)
            family.append((out, metric, c))
            out[f"{metric}_delta"], out[f"{metric}_p_bootstrap"], out[f"{metric}_p_welch"] = \
                c.delta, c.p_bootstrap, c.p_welch
            out[f"{metric}_delta_ci_low"], out[f"{metric}_delta_ci_high"] = c.delta_ci
            out[f"{metric}_p_better"] = c.p_better
            out[f"{metric}_p_better_ci_low"], out[f"{metric}_p_better_ci_high"] = c.p_better_ci
            out[f"p_{metric}"] = stats.paired_wilcoxon(pd.concat(tidy[i]), pd.concat(tidy[0]), metric)[0]
            sd_row = out[f"{metric}_seed_sd"] if out["n_seeds"] >= 2 else borrowed[metric][0]
            sd_base = rows[0][f"{metric}_seed_sd"] if rows[0]["n_seeds"] >= 2 else borrowed[metric][0]
            out[f"{metric}_seeds_needed"], out[f"{metric}_seeds_needed_hours"] = _seeds_needed_cell(
                c, sd_row, sd_base, stats.case_sd_of_difference(scores, arrays[0]), out["train_hours"])
        rows[0][f"{metric}_verdict"] = ""
        if len(rows) >= MIN_RANK_ROWS and len(cases) >= 2:
            ranks = stats.rank_distribution(arrays, seed=seed + 2000)
            info["ranks"][metric] = ranks
            for out, (median, low, high) in zip(rows, stats.rank_summary(ranks)):
                out[f"{metric}_rank"], out[f"{metric}_rank_low"], out[f"{metric}_rank_high"] = median, low, high
    for (out, metric, _), (verdict, q) in zip(family, stats.verdicts([c for _, _, c in family])):
        out[f"{metric}_verdict"], out[f"{metric}_p_holm"] = verdict, q
    return pd.DataFrame(rows, columns=TABLE_COLUMNS), info


def scored_organs(config: dict, table: dict, outdir: Path) -> list[str]:
    """The organs a table's DSC/NSD means are over: every organ scored (present in a
    reference or prediction) in any row's metrics, in label order."""
    organs: dict[str, None] = {}
    for row in table["rows"]:
        for _, pset in row_prediction_sets(config, table, row):
            cases = pd.read_csv(outdir / metrics_file(pset, "csv"))
            organs.update({o: None for o in cases.loc[cases["dsc"].notna(), "organ"]})
    return list(organs)


def write_table(config: dict, name: str, outdir: str | Path, tables_dir: str | Path) -> pd.DataFrame:
    """``<name>.csv``, ``.md``, ``.tex``, ``.provenance.json`` and ``.ranks.json`` (each row's
    bootstrap rank frequencies, empty below ``MIN_RANK_ROWS`` rows) of one configured table."""
    outdir, tables_dir = Path(outdir), Path(tables_dir)
    table = config["tables"][name]
    print(f"[tables] {name}: two-level bootstrap ({stats.N_BOOTSTRAP} resamples) of {len(table['rows'])} rows",
          flush=True)
    df, info = table_rows(config, table, outdir, config.get("seed", 0))
    organs = scored_organs(config, table, outdir)
    title = table.get("title", name)
    note = organs_note(organs) + " " + stats_note(df, info["borrowed_seed_sd"])
    with atomic_path(tables_dir / f"{name}.csv") as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
    with atomic_path(tables_dir / f"{name}.md") as tmp:
        tmp.write_text(to_markdown(df, title, note))
    with atomic_path(tables_dir / f"{name}.tex") as tmp:
        tmp.write_text(to_latex(df, title, note))
    ranks = {m: {str(r): np.bincount(np.rint(dist).astype(int), minlength=len(df) + 1)[1:].tolist()
                 for r, dist in zip(df["row"], info["ranks"][m])} for m in info["ranks"]}
    write_json(tables_dir / f"{name}.ranks.json", {"title": title, "resamples": stats.N_BOOTSTRAP,
                                                   "rows": [str(r) for r in df["row"]], "frequencies": ranks})
    record = provenance(config.get("seed"), config)
    record["organs_in_mean"] = organs
    record["evaluation_cases"] = info["cases"]
    record["borrowed_seed_sd"] = {m: {"sd": sd, "df": dof} for m, (sd, dof) in info["borrowed_seed_sd"].items()}
    record["row_training_seeds"] = [{"row": str(r["row"]), "seeds": [int(v) for v in str(r["seeds"]).split(",")]}
                                    for _, r in df.iterrows()]
    write_json(tables_dir / f"{name}.provenance.json", record)
    print(f"[tables] {name}: {len(df)} rows, verdicts DSC {list(df['dsc_verdict'][1:])}", flush=True)
    return df


def write_per_organ(metrics_csv: str | Path, out_csv: str | Path, out_md: str | Path, title: str) -> pd.DataFrame:
    """Per organ: mean DSC / NSD / HD95 over cases, Dice global, and the number of cases."""
    from seggrid.evaluation.metrics import dice_global

    cases = pd.read_csv(metrics_csv)
    per = cases.groupby("organ", sort=False).agg(dsc=("dsc", "mean"), nsd=("nsd", "mean"), hd95=("hd95", "mean"),
                                                 cases=("dsc", "count")).reset_index()
    per["dice_global"] = per["organ"].map(dice_global(cases))
    with atomic_path(out_csv) as tmp:
        per.to_csv(tmp, index=False, float_format="%.6g")
    lines = [f"**{title}**", "", "| Organ | DSC | NSD | Dice global | HD95 (mm) | Cases scored |", "|---|---|---|---|---|---|"]
    lines += [f"| {r.organ} | {r.dsc:.4f} | {r.nsd:.4f} | {r.dice_global:.4f} | {r.hd95:.1f} | {r.cases} |"
              for r in per.itertuples()]
    with atomic_path(out_md) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return per
