"""The paper's tables: one CSV + Markdown + LaTeX per table, and a per-organ table per
prediction set.

Columns of a table (one row per table row, in config order):
``dsc``/``nsd`` are the paper's statistic (mean over organs of per-organ means over cases);
``*_ci_low``/``*_ci_high`` a 95 % bootstrap CI over cases; ``p_dsc``/``p_nsd`` a paired
Wilcoxon test against the table's first (baseline) row; ``dice_global`` and ``hd95`` extra
metrics; ``paper_dsc``/``paper_nsd`` the values the paper reports, when the config gives them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from seggrid.config import prediction_set_id, row_folds, row_models
from seggrid.io import atomic_path, provenance, write_json
from seggrid.evaluation.stats import bootstrap_ci, paired_wilcoxon

TABLE_COLUMNS = ["row", "settings", "patch_requested", "patch_effective", "batch", "loss", "folds", "n_cases",
                 "dsc", "dsc_ci_low", "dsc_ci_high", "p_dsc", "nsd", "nsd_ci_low", "nsd_ci_high", "p_nsd",
                 "dice_global", "hd95", "paper_dsc", "paper_nsd", "train_hours"]


def _fmt_patch(p) -> str:
    return "(" + ", ".join(str(int(v)) for v in p) + ")"


def table_rows(config: dict, table: dict, outdir: Path, seed: int = 0) -> pd.DataFrame:
    rows, baseline = [], None
    for i, row in enumerate(table["rows"]):
        models, folds = row_models(row), row_folds(config, row)
        pset = prediction_set_id(models, folds)
        summary = json.loads((outdir / "metrics" / f"{pset}.json").read_text())
        cases = pd.read_csv(outdir / "metrics" / f"{pset}.csv")
        if baseline is None:
            baseline = cases
        plans = [json.loads((outdir / "plans" / f"{m}.json").read_text()) for m in models]
        train_s = sum(json.loads((outdir / "train" / m / f"fold_{f}" / "summary.json").read_text())["wall_seconds"]
                      for m in models for f in folds)
        out = {
            "row": row.get("label", " & ".join(models)),
            "settings": " & ".join(models),
            "patch_requested": " & ".join(_fmt_patch(p["topology"]["patch_requested"]) for p in plans),
            "patch_effective": " & ".join(_fmt_patch(p["topology"]["patch_effective"]) for p in plans),
            "batch": " & ".join(str(p["setting"]["batch"]) for p in plans),
            "loss": " & ".join(p["setting"]["loss"] for p in plans),
            "folds": ",".join(str(f) for f in folds),
            "n_cases": summary["n_cases"], "dice_global": summary.get("dice_global", np.nan),
            "hd95": summary.get("hd95", np.nan), "train_hours": train_s / 3600,
            "paper_dsc": row.get("paper", {}).get("dsc", np.nan), "paper_nsd": row.get("paper", {}).get("nsd", np.nan),
        }
        for metric in ("dsc", "nsd"):
            out[metric] = summary[metric]
            out[f"{metric}_ci_low"], out[f"{metric}_ci_high"] = bootstrap_ci(cases, metric, seed=seed + i)
            out[f"p_{metric}"] = np.nan if i == 0 else paired_wilcoxon(cases, baseline, metric)[0]
        rows.append(out)
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def _score(r, metric: str) -> str:
    text = f"{r[metric]:.4f} [{r[f'{metric}_ci_low']:.3f}, {r[f'{metric}_ci_high']:.3f}]"
    p = r[f"p_{metric}"]
    return text + ("" if np.isnan(p) else f" (p={p:.3g})")


def _display_rows(df: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    paper = df["paper_dsc"].notna().any()
    head = ["Setting", "Patch (requested)", "Patch (effective)", "Batch", "Loss", "Folds", "Cases",
            "DSC Score", "NSD Score", "Dice global", "HD95 (mm)", "Training time (h)"]
    if paper:
        head[9:9] = ["Paper DSC", "Paper NSD"]
    body = []
    for _, r in df.iterrows():
        vals = [str(r["row"]), r["patch_requested"], r["patch_effective"], str(r["batch"]), r["loss"], r["folds"],
                str(r["n_cases"]), _score(r, "dsc"), _score(r, "nsd"), f"{r['dice_global']:.4f}",
                f"{r['hd95']:.1f}", f"{r['train_hours']:.3g}"]
        if paper:
            vals[9:9] = [f"{r['paper_dsc']:.4f}" if pd.notna(r["paper_dsc"]) else "",
                         f"{r['paper_nsd']:.4f}" if pd.notna(r["paper_nsd"]) else ""]
        body.append(vals)
    return head, body


NOTE = ("DSC/NSD: mean over organs of per-organ means over cases, [95 % bootstrap CI over cases], "
        "(p: paired Wilcoxon signed-rank test against the first row).")


def to_markdown(df: pd.DataFrame, title: str) -> str:
    head, body = _display_rows(df)
    lines = [f"**{title}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(v) + " |" for v in body]
    return "\n".join(lines) + "\n\n" + NOTE + "\n"


def _tex(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#")):
        text = text.replace(a, b)
    return text


def to_latex(df: pd.DataFrame, title: str) -> str:
    head, body = _display_rows(df)
    lines = [r"\begin{table}[ht]", r"\centering", rf"\caption{{{_tex(title)} {_tex(NOTE)}}}",
             r"\begin{tabular}{" + "l" * len(head) + "}", r"\hline", " & ".join(map(_tex, head)) + r" \\", r"\hline"]
    lines += [" & ".join(map(_tex, v)) + r" \\" for v in body]
    lines += [r"\hline", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_table(config: dict, name: str, outdir: str | Path, tables_dir: str | Path) -> pd.DataFrame:
    """``<name>.csv``, ``.md`` and ``.tex`` of one configured table."""
    outdir, tables_dir = Path(outdir), Path(tables_dir)
    table = config["tables"][name]
    df = table_rows(config, table, outdir, config.get("seed", 0))
    title = table.get("title", name)
    with atomic_path(tables_dir / f"{name}.csv") as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
    with atomic_path(tables_dir / f"{name}.md") as tmp:
        tmp.write_text(to_markdown(df, title))
    with atomic_path(tables_dir / f"{name}.tex") as tmp:
        tmp.write_text(to_latex(df, title))
    write_json(tables_dir / f"{name}.provenance.json", provenance(config.get("seed"), config))
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
