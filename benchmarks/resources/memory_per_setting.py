"""Peak memory of one training step for every setting of a config, at its per-GPU batch.

    .venv/bin/python benchmarks/resources/memory_per_setting.py config/amos22_task1.yaml [--device cpu]
        [--max-gb 20] [--threads 2] [--max-seconds S] [--shrink K]

Each distinct (effective patch, per-GPU batch, loss) runs `seggrid bench step` in its own
process (peak memory is per process) with the config's network width, class count (16, AMOS)
and precision: one step on the CPU; on CUDA a first step, whose time is mostly cuDNN
autotuning of every 3D convolution shape (tens of seconds on an H200) and is reported apart
(``first_step_seconds``), then a second one (``seconds_per_step``). ``peak_gb`` is the peak
over both; on CUDA ``peak_gb_second_step`` leaves the autotuning's workspaces out. Settings
whose estimate exceeds ``--max-gb`` are not run: their line says so and gives the estimate
from a straight-line fit of peak memory against voxels x batch over the measured ones. With
``--max-seconds`` no new measurement starts after that many seconds (their rows say
``skipped``); ``--compile`` (default false: eager, whatever the recipe's ``compile``) is
passed to each step; ``--shrink K`` divides every patch axis by K (a quick check of the plumbing,
not a measurement). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
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
    ap.add_argument("--max-seconds", type=float, default=None, help="start no measurement after this")
    ap.add_argument("--shrink", type=int, default=1, help="divide every patch axis by this (plumbing check)")
    ap.add_argument("--compile", choices=["auto", "true", "false"], default="false",
                    help="bench step --compile (default false: eager; compiling adds about a minute per setting)")
    a = ap.parse_args()
    started = time.monotonic()
    cuda = a.device.startswith("cuda")
    config = load_config(a.config)
    spacing = config["preprocessing"]["target_spacing"]
    jobs: dict[tuple, list[str]] = {}
    for name in config["settings"]:
        s = resolve_setting(config, name)
        patch = [max(8, p // a.shrink) for p in s["patch"]]
        topo = plan_topology(patch, spacing, s["base_features"], s["max_features"], s["max_pools_per_axis"],
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
        elif a.max_seconds is not None and time.monotonic() - started > a.max_seconds:
            row.update(measured=False, skipped=f"time box: --max-seconds {a.max_seconds:g} spent")
        else:
            cmd = [sys.executable, "-m", "seggrid", "bench", "step", "--patch", *map(str, patch), "--batch",
                   str(per_gpu), "--loss", loss, "--precision", precision, "--device", a.device, "--base-features",
                   str(base), "--max-features", str(cap), "--classes", str(a.classes), "--warmup", "1" if cuda else "0",
                   "--steps", "1", "--threads", str(a.threads), "--compile", a.compile, "--spacing", *map(str, spacing)]
            if pools:
                cmd += ["--max-pools-per-axis", str(pools)]
            out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True,
                                            env=_child_env()).stdout)
            row.update(measured=True, peak_gb=round(out["peak_memory_mb"] / 1024, 2),
                       seconds_per_step=out["seconds_per_step_median"], memory_kind=out["memory_kind"],
                       precision=out["precision"], device=out["device"])
            if cuda:    # the first step: cuDNN autotuning of every convolution shape, not step time
                row.update(first_step_seconds=out["first_steps_seconds"][0],
                           peak_gb_second_step=round(out["peak_memory_timed_steps_mb"] / 1024, 2))
            if loss != "dice_perimeter":
                measured.append((load, row["peak_gb"]))
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    timing = ("first_step_seconds: one step with cuDNN autotuning (cudnn.benchmark); seconds_per_step: a "
              "second step" if cuda else "seconds_per_step: the first and only step (no autotuning on the CPU)")
    print(json.dumps({"config": a.config, "device": a.device, "shrink": a.shrink, "compile": a.compile,
                      "timing": timing,
                      "seconds": round(time.monotonic() - started, 1), "fit_points": measured, "rows": rows},
                     indent=1))


def _child_env() -> dict[str, str]:
    """A bare environment for each measurement, keeping packages put on PYTHONPATH (gpu_check.sh)."""
    path = os.pathsep.join(filter(None, [str(ROOT / "workflow"), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path, "PATH": "/usr/bin:/bin"}


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
