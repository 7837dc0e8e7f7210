"""`seggrid status`: where a grid stands, read from its outputs only.

It reads what the jobs leave in ``outdir`` (nothing from Snakemake or SLURM), so it works
from a login node while Snakemake runs on the cluster, after a crash, and before anything ran.

One line per training job (setting, fold, training seed; a seed other than the base ``seed``
trains in ``train/<setting>/seed_<S>/fold_<f>``):

- ``done``: ``model.pt`` is there (its ``summary.json`` gives the final EMA pseudo-Dice and
  the mean seconds per epoch);
- ``running``: ``progress.json`` (progress.py) or the job's log changed recently. On the
  host that runs it, the process id is checked instead;
- ``failed``: the job started, has no ``model.pt``, and is not running (its process is gone,
  or nothing was written for ``max(3 epochs, STALE_S)``). The log's last error line is shown
  when there is one. A requeued or rerun job resumes from its checkpoint;
- ``pending``: nothing written yet.

Then the prediction sets (predicted, evaluated) and the tables that are done.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import time
from pathlib import Path

from seggrid.config import base_seed, resolve_setting
from seggrid.layout import (RUN_LOGS, metrics_file, parse_prediction_set_id, prediction_sets, predictions_dir, training_dir,
                            training_jobs, training_log)

#: a job with no output for this long (and 3 epochs) is taken to be gone when its host is another
STALE_S = 900.0
ERROR_LINE = re.compile(r"(Error|error:|Traceback|Killed|CANCELLED|DUE TO TIME LIMIT)")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:          # a recycled pid belongs to some other program
        return b"seggrid" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def newest_run(folder: Path, log: Path) -> list[str]:
    """The lines of a training job's newest run: its newest log in ``folder/RUN_LOGS`` (one per
    run; names sort by start time), or else Snakemake's ``log`` of the job."""
    runs = sorted((folder / RUN_LOGS).glob("*.log"))
    try:
        return (runs[-1] if runs else log).read_text(errors="replace").splitlines()
    except OSError:
        return []


def _last_error(folder: Path, log: Path) -> str | None:
    lines = newest_run(folder, log)
    errors = [line.strip() for line in lines if ERROR_LINE.search(line)]
    return errors[-1][:160] if errors else None


def training_job_status(outdir: Path, setting: dict, fold: int, now: float | None = None, seed: int | None = None,
                        base: int | None = None) -> dict:
    """The state of one training job: setting, fold, seed, state, epoch, epochs, ema, s_per_epoch,
    eta_s, detail. ``seed`` the job's training seed, ``base`` the grid's base seed (layout.py: a
    seed other than the base one trains in ``seed_<S>``; neither given: the plain paths)."""
    now = time.time() if now is None else now
    name, epochs = setting["name"], setting["epochs"]
    where = {"seed": seed if base is None else base}
    run_seed = where["seed"] if seed is None else seed
    folder = outdir / training_dir(where, name, fold, run_seed)
    log = outdir / training_log(where, name, fold, run_seed)
    row = {"setting": name, "fold": fold, "seed": seed, "state": "pending", "epoch": 0, "epochs": epochs,
           "ema": None, "s_per_epoch": None, "eta_s": None, "detail": ""}
    summary = _read_json(folder / "summary.json")
    if (folder / "model.pt").exists() and summary is not None:
        row.update(state="done", epoch=epochs, ema=summary.get("final_pseudo_dice_ema"),
                   s_per_epoch=summary.get("wall_seconds", 0) / max(epochs, 1))
        return row
    progress = _read_json(folder / "progress.json")
    if progress is None and not log.exists():
        return row
    written = max((p.stat().st_mtime for p in (folder / "progress.json", log) if p.exists()), default=0.0)
    if progress is not None:
        row.update(epoch=progress["epoch"], ema=progress.get("pseudo_dice_ema"),
                   s_per_epoch=progress.get("seconds_per_epoch"))
    spe = row["s_per_epoch"]
    error = _last_error(folder, log)
    if progress is not None and progress.get("host") == socket.gethostname():
        alive = _pid_alive(int(progress["pid"]))
    else:            # another host (a cluster node): alive while it writes; an error before epoch 1 ends it
        alive = now - written < max(3 * (spe or 0), STALE_S) and not (error and progress is None)
    if alive:
        row["state"] = "running"
        if spe:
            row["eta_s"] = (epochs - row["epoch"]) * spe
        return row
    row["state"] = "failed"
    silent = f"no output for {_duration(now - written)}" if written else "no output"
    row["detail"] = error or f"stopped at epoch {row['epoch']}/{epochs} ({silent}); a rerun resumes from the checkpoint"
    return row


def prediction_set_status(outdir: Path, pset: str) -> str:
    if (outdir / metrics_file(pset, "json")).exists():
        return "evaluated"
    if (outdir / predictions_dir(pset)).is_dir():
        return "predicted"
    return "pending"


def grid_status(config: dict, now: float | None = None) -> dict:
    outdir = Path(config["outdir"])
    training = [training_job_status(outdir, resolve_setting(config, s), f, now, seed, base_seed(config))
                for s, f, seed in training_jobs(config)]
    psets = [{"pset": p, "state": prediction_set_status(outdir, p), "models": len(parse_prediction_set_id(p)[0])}
             for p in prediction_sets(config)]
    tables = [{"table": t, "done": (outdir / "tables" / f"{t}.csv").exists()} for t in config["tables"]]
    return {"outdir": str(outdir), "base_seed": base_seed(config), "training": training, "prediction_sets": psets,
            "tables": tables}


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def format_status(status: dict) -> str:
    training = status["training"]
    width = max([len("setting")] + [len(r["setting"]) for r in training])
    seeds = [str(r.get("seed", "-")) for r in training]
    sw = max([len("seed")] + [len(s) for s in seeds])
    lines = [f"grid in {status['outdir']}: {len(training)} training jobs (base seed {status.get('base_seed', '-')}; "
             "every random stream keyed on the tuple (seed, fold, ...))", "",
             f"{'setting':<{width}}  fold  {'seed':>{sw}}  {'state':<8} {'epoch':>11}  {'EMA Dice':>8}  "
             f"{'s/epoch':>8}  {'ETA':>7}  detail"]
    for r, seed in zip(training, seeds):
        ema = "-" if r["ema"] is None or not math.isfinite(r["ema"]) else f"{r['ema']:.4f}"
        spe = "-" if r["s_per_epoch"] is None else f"{r['s_per_epoch']:.1f}"
        lines.append(f"{r['setting']:<{width}}  {r['fold']:>4}  {seed:>{sw}}  {r['state']:<8} "
                     f"{r['epoch']:>5}/{r['epochs']:<5}  "
                     f"{ema:>8}  {spe:>8}  {_duration(r['eta_s']):>7}  {r['detail']}".rstrip())
    counts = {s: sum(r["state"] == s for r in training) for s in ("done", "running", "failed", "pending")}
    lines += ["", "training: " + ", ".join(f"{n} {s}" for s, n in counts.items())]
    psets = status["prediction_sets"]
    evaluated = [p["pset"] for p in psets if p["state"] == "evaluated"]
    predicted = [p["pset"] for p in psets if p["state"] == "predicted"]
    lines.append(f"prediction sets: {len(evaluated)} of {len(psets)} evaluated"
                 + (f", {len(predicted)} predicted, not yet evaluated" if predicted else ""))
    lines += [f"  evaluated  {p}" for p in evaluated] + [f"  predicted  {p}" for p in predicted]
    done = [t["table"] for t in status["tables"] if t["done"]]
    lines.append(f"tables: {len(done)} of {len(status['tables'])} done" + (f": {', '.join(done)}" if done else ""))
    return "\n".join(lines)
