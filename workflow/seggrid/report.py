"""The paper's outputs: Tables 1-4 (CSV + Markdown) and Figure 1 (training curves)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from seggrid.config import prediction_set_id, row_folds, row_models
from seggrid.io import atomic_path, provenance, write_json

TABLE_COLUMNS = ["row", "settings", "patch_requested", "patch_effective", "batch", "loss", "folds", "n_cases",
                 "dsc", "nsd", "train_hours"]


def _fmt_patch(p) -> str:
    return "(" + ", ".join(str(int(v)) for v in p) + ")"


def table_rows(config: dict, table: dict, outdir: Path) -> pd.DataFrame:
    rows = []
    for i, row in enumerate(table["rows"]):
        models, folds = row_models(row), row_folds(config, row)
        pset = prediction_set_id(models, folds)
        summary = json.loads((outdir / "metrics" / f"{pset}.json").read_text())
        plans = [json.loads((outdir / "plans" / f"{m}.json").read_text()) for m in models]
        train_s = sum(json.loads((outdir / "train" / m / f"fold_{f}" / "summary.json").read_text())["wall_seconds"]
                      for m in models for f in folds)
        rows.append({
            "row": row.get("label", " & ".join(models)),
            "settings": " & ".join(models),
            "patch_requested": " & ".join(_fmt_patch(p["topology"]["patch_requested"]) for p in plans),
            "patch_effective": " & ".join(_fmt_patch(p["topology"]["patch_effective"]) for p in plans),
            "batch": " & ".join(str(p["setting"]["batch"]) for p in plans),
            "loss": " & ".join(p["setting"]["loss"] for p in plans),
            "folds": ",".join(str(f) for f in folds),
            "n_cases": summary["n_cases"], "dsc": summary["dsc"], "nsd": summary["nsd"],
            "train_hours": train_s / 3600,
        })
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def to_markdown(df: pd.DataFrame, title: str) -> str:
    cols = ["row", "patch_requested", "patch_effective", "batch", "loss", "folds", "n_cases", "dsc", "nsd",
            "train_hours"]
    head = ["Setting", "Patch (requested)", "Patch (effective)", "Batch", "Loss", "Folds", "Cases",
            "DSC Score", "NSD Score", "Training time (h)"]
    lines = [f"**{title}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in df[cols].iterrows():
        vals = [f"{v:.4f}" if k in ("dsc", "nsd") else f"{v:.3g}" if k == "train_hours" else str(v)
                for k, v in r.items()]
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def write_tables(config: dict, outdir: str | Path, tables_dir: str | Path) -> dict[str, pd.DataFrame]:
    outdir, tables_dir = Path(outdir), Path(tables_dir)
    out = {}
    for name, table in config["tables"].items():
        df = table_rows(config, table, outdir)
        with atomic_path(tables_dir / f"{name}.csv") as tmp:
            df.round({"dsc": 4, "nsd": 4}).to_csv(tmp, index=False, float_format="%.6g")
        with atomic_path(tables_dir / f"{name}.md") as tmp:
            tmp.write_text(to_markdown(df, table.get("title", name)))
        print(f"[tables] {name}: {len(df)} rows", flush=True)
        out[name] = df
    write_json(tables_dir / "provenance.json", provenance(config.get("seed"), config))
    return out


def figure1(train_logs: dict[str, str | Path], out_png: str | Path) -> None:
    """Training loss and validation pseudo-DSC per epoch for each named setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (ax_loss, ax_dsc) = plt.subplots(1, 2, figsize=(10, 4))
    for name, path in train_logs.items():
        log = pd.read_csv(path)
        ax_loss.plot(log["epoch"] + 1, log["train_loss"], marker="o", ms=3, label=name)
        ax_dsc.plot(log["epoch"] + 1, log["pseudo_dice"], marker="o", ms=3, label=name)
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="Training loss")
    ax_dsc.set(xlabel="epoch", ylabel="validation DSC (pseudo-Dice)", title="Validation DSC", ylim=(0, 1))
    for ax in (ax_loss, ax_dsc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Figure 1: training curves, fold 0")
    fig.tight_layout()
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)

