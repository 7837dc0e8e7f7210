"""The paper's tables: one CSV + Markdown + LaTeX per table, and a per-organ table per
prediction set.

Columns of a table (one row per table row, in config order):
``dsc``/``nsd`` are the paper's statistic (mean over organs of per-organ means over cases),
averaged over the row's training seeds (``seeds``, ``n_seeds``; config ``training_seeds``);
``*_seed_sd`` the sample SD of that statistic between seeds (NaN with one seed);
``*_ci_low``/``*_ci_high`` a 95 % bootstrap CI over cases; ``p_dsc``/``p_nsd`` a paired
Wilcoxon test against the table's first (baseline) row (per-case scores averaged over seeds);
``*_diff`` the difference of seed means from the first row, ``p_seed_*`` a pooled two-sample
t-test of that difference against the seed-to-seed spread and ``*_beyond_seeds`` its verdict
(``yes``/``no`` at 5 %, ``one seed each`` when neither row has a spread; evaluation/stats.py);
``dice_global`` and ``hd95`` extra metrics (mean over seeds); ``paper_dsc``/``paper_nsd`` the
values the paper reports, when the config gives them; ``train_hours`` one training of the row
(its models x folds), mean over seeds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from seggrid.config import row_folds, row_models, row_prediction_sets, training_dir
from seggrid.io import atomic_path, provenance, write_json
from seggrid.evaluation.stats import (SEED_TEST_ALPHA, bootstrap_ci_over_seeds, paired_wilcoxon, seed_sd,
                                      seed_spread_test)

TABLE_COLUMNS = ["row", "settings", "patch_requested", "patch_effective", "batch", "loss", "folds", "seeds",
                 "n_seeds", "n_cases",
                 "dsc", "dsc_seed_sd", "dsc_ci_low", "dsc_ci_high", "p_dsc", "dsc_diff", "p_seed_dsc",
                 "dsc_beyond_seeds",
                 "nsd", "nsd_seed_sd", "nsd_ci_low", "nsd_ci_high", "p_nsd", "nsd_diff", "p_seed_nsd",
                 "nsd_beyond_seeds",
                 "dice_global", "hd95", "paper_dsc", "paper_nsd", "train_hours"]
METRICS = ("dsc", "nsd")
#: the seed-spread verdict when both rows have one seed (not "n/a": pandas reads that back as NaN)
ONE_SEED_EACH = "one seed each"


def _fmt_patch(p) -> str:
    return "(" + ", ".join(str(int(v)) for v in p) + ")"


def _verdict(test: dict) -> str:
    return ONE_SEED_EACH if test["exceeds"] is None else ("yes" if test["exceeds"] else "no")


def table_rows(config: dict, table: dict, outdir: Path, seed: int = 0) -> pd.DataFrame:
    """One row per configured row: its prediction sets (one per training seed) read from
    ``outdir/metrics``, plans from ``outdir/plans``, training times from ``outdir/train``."""
    rows, baseline = [], None
    for i, row in enumerate(table["rows"]):
        models, folds = row_models(row), row_folds(config, row)
        runs = row_prediction_sets(config, table, row)                  # [(training seed, pset)]
        summaries = [json.loads((outdir / "metrics" / f"{p}.json").read_text()) for _, p in runs]
        cases = [pd.read_csv(outdir / "metrics" / f"{p}.csv") for _, p in runs]
        pooled_cases = pd.concat(cases, ignore_index=True)              # case_by_organ averages over seeds
        plans = [json.loads((outdir / "plans" / f"{m}.json").read_text()) for m in models]
        train_s = [sum(json.loads((outdir / training_dir(config, m, f, s) / "summary.json").read_text())[
            "wall_seconds"] for m in models for f in folds) for s, _ in runs]
        out = {
            "row": row.get("label", " & ".join(models)),
            "settings": " & ".join(models),
            "patch_requested": " & ".join(_fmt_patch(p["topology"]["patch_requested"]) for p in plans),
            "patch_effective": " & ".join(_fmt_patch(p["topology"]["patch_effective"]) for p in plans),
            "batch": " & ".join(str(p["setting"]["batch"]) for p in plans),
            "loss": " & ".join(p["setting"]["loss"] for p in plans),
            "folds": ",".join(str(f) for f in folds),
            "seeds": ",".join(str(s) for s, _ in runs), "n_seeds": len(runs),
            "n_cases": summaries[0]["n_cases"],
            "dice_global": float(pd.Series([x.get("dice_global", np.nan) for x in summaries], dtype=float).mean()),
            "hd95": float(pd.Series([x.get("hd95", np.nan) for x in summaries], dtype=float).mean()),
            "train_hours": float(np.mean(train_s)) / 3600,
            "paper_dsc": row.get("paper", {}).get("dsc", np.nan), "paper_nsd": row.get("paper", {}).get("nsd", np.nan),
        }
        per_seed = {m: [x[m] for x in summaries] for m in METRICS}
        for metric in METRICS:
            out[metric] = float(np.mean(per_seed[metric]))
            out[f"{metric}_seed_sd"] = seed_sd(per_seed[metric])
            out[f"{metric}_ci_low"], out[f"{metric}_ci_high"] = bootstrap_ci_over_seeds(cases, metric, seed=seed + i)
            if baseline is None:
                out[f"p_{metric}"] = out[f"{metric}_diff"] = out[f"p_seed_{metric}"] = np.nan
                out[f"{metric}_beyond_seeds"] = ""
                continue
            out[f"p_{metric}"] = paired_wilcoxon(pooled_cases, baseline["cases"], metric)[0]
            test = seed_spread_test(per_seed[metric], baseline[metric])
            out[f"{metric}_diff"], out[f"p_seed_{metric}"] = test["diff"], test["p"]
            out[f"{metric}_beyond_seeds"] = _verdict(test)
        if baseline is None:
            baseline = {"cases": pooled_cases, **per_seed}
        rows.append(out)
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def _score(r, metric: str) -> str:
    text = f"{r[metric]:.4f} [{r[f'{metric}_ci_low']:.3f}, {r[f'{metric}_ci_high']:.3f}]"
    p = r[f"p_{metric}"]
    return text + ("" if np.isnan(p) else f" (p={p:.3g})")


def _seed_sd(r, metric: str) -> str:
    sd = r[f"{metric}_seed_sd"]
    return "n/a (1 seed)" if np.isnan(sd) else f"{sd:.4f}"


def _vs_first(r, metric: str) -> str:
    verdict = r[f"{metric}_beyond_seeds"]
    if not isinstance(verdict, str) or not verdict:          # the first row (a CSV reads "" back as NaN)
        return "(first row)"
    diff = f"{r[f'{metric}_diff']:+.4f}"
    if verdict == ONE_SEED_EACH:
        return f"{diff} (no test: 1 seed each)"
    word = "exceeds" if verdict == "yes" else "within"
    return f"{diff} (p={r[f'p_seed_{metric}']:.3g}: {word} seed spread)"


def _display_rows(df: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    paper = df["paper_dsc"].notna().any()
    head = ["Setting", "Patch (requested)", "Patch (effective)", "Batch", "Loss", "Folds", "Seeds", "Cases",
            "DSC Score", "DSC SD (seeds)", "DSC vs first (seeds)", "NSD Score", "NSD SD (seeds)",
            "NSD vs first (seeds)", "Dice global", "HD95 (mm)", "Training time (h)"]
    if paper:
        head[14:14] = ["Paper DSC", "Paper NSD"]
    body = []
    for _, r in df.iterrows():
        vals = [str(r["row"]), r["patch_requested"], r["patch_effective"], str(r["batch"]), r["loss"], r["folds"],
                str(r["n_seeds"]), str(r["n_cases"]), _score(r, "dsc"), _seed_sd(r, "dsc"), _vs_first(r, "dsc"),
                _score(r, "nsd"), _seed_sd(r, "nsd"), _vs_first(r, "nsd"), f"{r['dice_global']:.4f}",
                f"{r['hd95']:.1f}", f"{r['train_hours']:.3g}"]
        if paper:
            vals[14:14] = [f"{r['paper_dsc']:.4f}" if pd.notna(r["paper_dsc"]) else "",
                           f"{r['paper_nsd']:.4f}" if pd.notna(r["paper_nsd"]) else ""]
        body.append(vals)
    return head, body


NOTE = ("DSC/NSD: mean over organs of per-organ means over cases, averaged over the row's training seeds "
        "(Seeds), [95 % bootstrap CI over cases], (p: paired Wilcoxon signed-rank test against the first row "
        "on the per-case scores averaged over seeds). SD (seeds): sample standard deviation of the score "
        "between training seeds (n/a with 1 seed). vs first (seeds): difference of seed means from the first "
        "row and a two-sided two-sample t-test with the seed variance pooled over both rows "
        f"(df = n1 + n2 - 2): 'exceeds seed spread' when p < {SEED_TEST_ALPHA:g}; no test when both rows "
        "have 1 seed. Training time: one training of the row, mean over seeds.")


def to_markdown(df: pd.DataFrame, title: str, note: str = "") -> str:
    head, body = _display_rows(df)
    lines = [f"**{title}**" + (f" {note}" if note else ""), "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(v) + " |" for v in body]
    return "\n".join(lines) + "\n\n" + NOTE + "\n"


def _tex(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#")):
        text = text.replace(a, b)
    return text


def to_latex(df: pd.DataFrame, title: str, note: str = "") -> str:
    head, body = _display_rows(df)
    lines = [r"\begin{table}[ht]", r"\centering", rf"\caption{{{_tex(' '.join(filter(None, (title, note, NOTE))))}}}",
             r"\begin{tabular}{" + "l" * len(head) + "}", r"\hline", " & ".join(map(_tex, head)) + r" \\", r"\hline"]
    lines += [" & ".join(map(_tex, v)) + r" \\" for v in body]
    lines += [r"\hline", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def scored_organs(config: dict, table: dict, outdir: Path) -> list[str]:
    """The organs a table's DSC/NSD means are over: every organ scored (present in a
    reference or prediction) in any row's metrics, in label order."""
    organs: dict[str, None] = {}
    for row in table["rows"]:
        for _, pset in row_prediction_sets(config, table, row):
            cases = pd.read_csv(outdir / "metrics" / f"{pset}.csv")
            organs.update({o: None for o in cases.loc[cases["dsc"].notna(), "organ"]})
    return list(organs)


def organs_note(organs: list[str]) -> str:
    """The caption's sentence naming the organs a table's means are over."""
    return f"DSC and NSD are means over {len(organs)} organs: {', '.join(organs)}."


def write_table(config: dict, name: str, outdir: str | Path, tables_dir: str | Path) -> pd.DataFrame:
    """``<name>.csv``, ``.md`` and ``.tex`` of one configured table."""
    outdir, tables_dir = Path(outdir), Path(tables_dir)
    table = config["tables"][name]
    df = table_rows(config, table, outdir, config.get("seed", 0))
    organs = scored_organs(config, table, outdir)
    title, note = table.get("title", name), organs_note(organs)
    with atomic_path(tables_dir / f"{name}.csv") as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
    with atomic_path(tables_dir / f"{name}.md") as tmp:
        tmp.write_text(to_markdown(df, title, note))
    with atomic_path(tables_dir / f"{name}.tex") as tmp:
        tmp.write_text(to_latex(df, title, note))
    record = provenance(config.get("seed"), config)
    record["organs_in_mean"] = organs
    record["row_training_seeds"] = [{"row": str(r["row"]), "seeds": [int(v) for v in str(r["seeds"]).split(",")]}
                                    for _, r in df.iterrows()]
    write_json(tables_dir / f"{name}.provenance.json", record)
    print(f"[tables] {name}: {len(df)} rows", flush=True)
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
