"""Summarise a benchmarks/resources/scale.sh run: one JSON line per rule, then the projection for the
Task 1 grid. Reads Snakemake's `benchmark:` files (max_rss in MB, s = wall seconds), the
outputs' sizes on disk, and the preprocessing workers' own peaks (preprocessed/timings.json).

    python benchmarks/resources/scale_report.py WORKDIR/config.yaml [--grid config/amos22_task1.yaml]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "workflow"))

from seggrid.config import load_config  # noqa: E402
from seggrid.layout import parse_prediction_set_id, prediction_set_id, prediction_sets  # noqa: E402


def size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def cases_in(folder: Path, pattern: str) -> int:
    return len(list(folder.glob(pattern))) if folder.exists() else 0


def jobs(cfg: dict) -> list[dict]:
    """(rule, benchmark file, output paths, number of cases) of every job of the run."""
    out, bench = Path(cfg["outdir"]), Path(cfg["outdir"]) / "benchmarks"
    splits = json.loads((out / "dataset" / "splits.json").read_text())
    n_eval = len(splits["evaluation"])
    n_pre = len(json.loads((out / "preprocessed" / "manifest.json").read_text())["cases"])
    rows = []
    for tsv in sorted(bench.rglob("*.tsv")):
        rel = tsv.relative_to(bench).with_suffix("")
        kind, name = rel.parts[0], "/".join(rel.parts[1:])
        outputs, n = [], 1
        if kind == "preprocess":
            outputs, n = [out / "preprocessed"], n_pre
        elif kind == "predict_cv":
            outputs = [out / "predict_cv" / name]
            n = cases_in(outputs[0], "*.npz")
        elif kind == "predict":
            outputs, n = [out / "predictions" / name], n_eval
        elif kind == "predict_member":
            outputs, n = [out / "predictions" / name, out / "probabilities" / name], n_eval
        elif kind == "ensemble":
            outputs, n = [out / "predictions" / name], n_eval
        elif kind == "evaluate":
            outputs, n = [out / "metrics" / f"{name}.csv", out / "metrics" / f"{name}.json"], n_eval
        elif kind == "postprocessing":
            kind, outputs = "postprocess_decision", [out / "postprocessing" / f"{name}.json"]
            n = len(json.loads(outputs[0].read_text())["cases"])
        elif kind == "train":
            outputs = [out / "train" / name]
        b = pd.read_csv(tsv, sep="\t").iloc[-1]
        rows.append({"rule": kind, "job": name, "cases": n, "seconds": float(b["s"]),
                     "max_rss_mb": float(b["max_rss"]), "bytes": sum(size(p) for p in outputs)})
    return rows


def summarise(rows: list[dict], out: Path) -> list[dict]:
    df = pd.DataFrame(rows)
    summary = []
    for rule, g in df.groupby("rule", sort=False):
        s = {"rule": rule, "jobs": int(len(g)), "peak_rss_mb": round(float(g["max_rss_mb"].max()), 1),
             "seconds_per_case": round(float((g["seconds"] / g["cases"]).mean()), 2),
             "bytes_written_per_case": int((g["bytes"] / g["cases"]).mean()), "cases_per_job": int(g["cases"].max())}
        if rule == "preprocess":
            t = json.loads((out / "preprocessed" / "timings.json").read_text())
            s["worker_peak_rss_mb"] = round(max(c["worker_peak_rss_mb"] for c in t["cases"].values()), 1)
            s["worker_seconds_per_case"] = round(sum(c["seconds"] for c in t["cases"].values()) / len(t["cases"]), 2)
            s["workers"] = t["workers"]
        summary.append(s)
    return summary


def projection(summary: list[dict], grid: dict, n_eval: int = 100, n_train: int = 200) -> dict:
    """Bytes of prediction outputs for ``grid`` (AMOS Task 1: 200 training cases, 100
    evaluation cases) at the sizes per case measured here."""
    per = {s["rule"]: s["bytes_written_per_case"] for s in summary}
    psets = prediction_sets(grid)
    members = {prediction_set_id([m], f) for p in psets for ms, f in [parse_prediction_set_id(p)]
               if len(ms) > 1 for m in ms}
    label_sets = set(psets) | members
    five_fold = {parse_prediction_set_id(p)[0][0] for p in label_sets
                 if len(parse_prediction_set_id(p)[0]) == 1
                 and sorted(parse_prediction_set_id(p)[1]) == list(range(grid["folds"]))}
    labels = per.get("predict", 0)
    probabilities = per.get("predict_member", 0) - labels          # a member job writes labels + map
    total = {"labels in input geometry (kept)": len(label_sets) * n_eval * labels,
             "quantised probabilities (temp)": len(members) * n_eval * probabilities,
             "out-of-fold target-spacing labels (temp)": len(five_fold) * n_train * per.get("predict_cv", 0)}
    return {"grid": grid["outdir"], "prediction_sets": len(psets), "ensemble_members": sorted(members),
            "evaluation_cases": n_eval, "training_cases": n_train,
            "bytes": {k: int(v) for k, v in total.items()}, "total_tb": round(sum(total.values()) / 1e12, 3),
            "before_tb": 2.8, "fraction_of_before": round(sum(total.values()) / 2.8e12, 4)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--grid", default=str(ROOT / "config" / "amos22_task1.yaml"))
    a = ap.parse_args()
    cfg = load_config(a.config)
    summary = summarise(jobs(cfg), Path(cfg["outdir"]))
    for s in summary:
        print(json.dumps(s))
    print(json.dumps({"projection": projection(summary, load_config(a.grid))}))


if __name__ == "__main__":
    main()
