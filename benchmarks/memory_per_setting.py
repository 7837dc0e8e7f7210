"""Peak memory of one training step for every setting of a config, at its per-GPU batch.

    .venv/bin/python benchmarks/memory_per_setting.py config/amos22_task1.yaml [--device cpu]
        [--max-gb 20] [--threads 2]

Each distinct (effective patch, per-GPU batch, loss) runs `seggrid bench step --warmup 0
--steps 1` in its own process (peak memory is per process) with the config's network width,
class count (16, AMOS) and precision. Settings whose estimate exceeds ``--max-gb`` are not
run: their line says so and gives the estimate from a straight-line fit of peak memory
against voxels x batch over the measured ones. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))
from seggrid.config import load_config, resolve_setting  # noqa: E402
from seggrid.engine.planner import plan_topology  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-gb", type=float, default=20.0, help="skip runs estimated above this")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--classes", type=int, default=16)
    a = ap.parse_args()
    config = load_config(a.config)
    spacing = config["preprocessing"]["target_spacing"]
    jobs: dict[tuple, list[str]] = {}
    for name in config["settings"]:
        s = resolve_setting(config, name)
        topo = plan_topology(s["patch"], spacing, s["base_features"], s["max_features"], s["max_pools_per_axis"],
                             s["patch_rounding"])
        # a spatially partitioned setting is measured unpartitioned: one process holding its whole
        # samples (what one GPU would need without partitions; a rank holds about 1/N of it)
        per_gpu = math.ceil(s["batch"] / max(1, s["gpus"] // s["spatial_partitions"]))
        key = (tuple(topo["patch_effective"]), per_gpu, s["loss"], s["precision"], s["base_features"],
               s["max_features"], s["max_pools_per_axis"])
        parts = f", {s['spatial_partitions']} slabs" if s["spatial_partitions"] > 1 else ""
        jobs.setdefault(key, []).append(f"{name} (gpus {s['gpus']}, batch {s['batch']}{parts})")
    # smallest first, so the fit for the estimates exists before the large ones
    order = sorted(jobs, key=lambda k: math.prod(k[0]) * k[1])
    measured, rows = [], []
    for key in order:
        patch, per_gpu, loss, precision, base, cap, pools = key
        load = math.prod(patch) * per_gpu
        estimate = _fit(measured, load)
        row = {"settings": jobs[key], "patch": list(patch), "batch_per_gpu": per_gpu, "loss": loss,
               "voxels_x_batch": load, "estimate_gb": round(estimate, 2) if estimate else None}
        if estimate and estimate > a.max_gb:
            row["measured"] = False
        else:
            cmd = [sys.executable, "-m", "seggrid", "bench", "step", "--patch", *map(str, patch), "--batch",
                   str(per_gpu), "--loss", loss, "--precision", precision, "--device", a.device, "--base-features",
                   str(base), "--max-features", str(cap), "--classes", str(a.classes), "--warmup", "0",
                   "--steps", "1", "--threads", str(a.threads), "--spacing", *map(str, spacing)]
            if pools:
                cmd += ["--max-pools-per-axis", str(pools)]
            out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True,
                                            env={"PYTHONPATH": str(ROOT / "workflow"), "PATH": "/usr/bin:/bin"}).stdout)
            row.update(measured=True, peak_gb=round(out["peak_memory_mb"] / 1024, 2),
                       seconds_per_step=out["seconds_per_step_median"], memory_kind=out["memory_kind"],
                       precision=out["precision"], device=out["device"])
            if loss != "dice_perimeter":
                measured.append((load, row["peak_gb"]))
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    print(json.dumps({"config": a.config, "device": a.device, "fit_points": measured, "rows": rows}, indent=1))


def _fit(points: list[tuple[int, float]], load: int) -> float | None:
    """Least-squares line through (voxels x batch, GB); None until two points exist."""
    if len(points) < 2:
        return None
    n = len(points)
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    sxx = sum((p[0] - mx) ** 2 for p in points)
    slope = sum((p[0] - mx) * (p[1] - my) for p in points) / sxx if sxx else 0.0
    return my + slope * (load - mx)


if __name__ == "__main__":
    main()
