"""The projection of ``seggrid cost`` against what a finished grid measured, per training job.

    .venv/bin/python benchmarks/resources/cost_vs_measured.py RESULTS_DIR COST_JSON [--configfile ...] [--markdown]

For every training job in COST_JSON: the projected training loop (``loop_s``: epochs, steps,
validation, checkpoints) against ``wall_seconds`` of its ``summary.json`` (the same span: from
the first epoch to the last, start-up excluded), and the projected whole job (``wall_s``)
against Snakemake's benchmark file of the job (``s``: process start to end), where there is
one. Prints one JSON object: rows, the share of jobs within +/-30 % for each, and the median
ratio; ``--markdown`` prints the same as the table docs/benchmarks.md quotes.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "workflow"))
from seggrid.config import load_config  # noqa: E402
from seggrid.layout import seed_dir  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("cost_json")
    ap.add_argument("--configfile", nargs="+", default=[str(ROOT / "config" / "config.yaml")])
    ap.add_argument("--markdown", action="store_true", help="a markdown table instead of JSON")
    a = ap.parse_args()
    config, results = load_config(*a.configfile), Path(a.results)
    rows = []
    for job in json.loads(Path(a.cost_json).read_text())["jobs"]:
        if job["kind"] != "train" or job.get("wall_s") is None:
            continue
        rel = f"{job['setting']}{seed_dir(config, job['seed'])}/fold_{job['fold']}"
        summary = results / "train" / rel / "summary.json"
        if not summary.exists():
            continue
        loop = json.loads(summary.read_text())["wall_seconds"]
        bench = results / "benchmarks" / "train" / f"{rel}.tsv"
        whole = float(next(csv.DictReader(bench.open(), delimiter="\t"))["s"]) if bench.exists() else None
        rows.append({"job": rel, "projected_loop_s": round(job["loop_s"], 1), "measured_loop_s": round(loop, 1),
                     "loop_ratio": round(job["loop_s"] / loop, 3),
                     "projected_job_s": round(job["wall_s"], 1), "measured_job_s": whole,
                     "job_ratio": None if whole is None else round(job["wall_s"] / whole, 3)})

    def share(key):
        values = [r[key] for r in rows if r[key] is not None]
        return {"n": len(values), "within_30_percent": sum(0.7 <= v <= 1.3 for v in values) / max(1, len(values)),
                "median_ratio": sorted(values)[len(values) // 2] if values else None}

    result = {"rows": rows, "loop": share("loop_ratio"), "job": share("job_ratio")}
    print(markdown(result) if a.markdown else json.dumps(result, indent=1))


def markdown(result: dict) -> str:
    lines = ["| training | projected loop | measured loop | ratio | projected job | measured job | ratio |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['job']} | {r['projected_loop_s']:.1f} s | {r['measured_loop_s']:.1f} s | {r['loop_ratio']:.2f} | "
                     f"{r['projected_job_s']:.1f} s | {r['measured_job_s'] or 'n/a'} s | {r['job_ratio'] or 'n/a'} |")
    for key in ("loop", "job"):
        s = result[key]
        lines.append(f"\n{key}: {s['within_30_percent']:.0%} of {s['n']} within +/-30 %, median ratio {s['median_ratio']}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
