"""``seggrid cost``: what a grid will cost on this device, before anything is submitted.

1. Every training job of the grid (layout.training_jobs) is planned without data: the planner
   (engine/planner.py ``make_plan``) with the config's ``preprocessing.target_spacing`` and the
   class count of ``cost.classes``. Jobs with the same topology (cost_measure.topology_key)
   share one calibration; calibrations are cached (cost_measure.py).
2. Calibration runs cheapest first (voxels x per-GPU batch) until ``--budget-s`` is spent; a
   topology left over is *extrapolated*: its step, validation and tile times scale with voxels x
   batch from the nearest calibrated topology (the same network at another batch first), and
   every output marks it.
3. Projection per job:

   - training wall = start-up (engine import + ``setup``) + epochs x (iterations x step +
     val_iterations x validation iteration + progress file) + one checkpoint per
     ``checkpoint_every`` epochs + the final checkpoint and ``model.pt`` (2 checkpoints);
   - several GPUs: data-parallel ranks each run the per-GPU batch at the calibrated step time
     (perfect scaling; the gradient all-reduce is NOT measured here, see docs/cost.md);
     GPU-hours = wall x GPUs (CPU jobs: 0, their core-hours are given apart);
   - prediction of a prediction set: evaluation cases x tiles per case (the sliding window's
     tile starts over ``cost.median_shape``, step ``inference.step``) x mirrorings
     (``inference.tta_flips``) x folds x one tile's forward time; 5-fold models add their
     out-of-fold predictions of the training cases (the postprocessing decision).

4. Memory fit per setting: the per-GPU peak against each ``--gpu-mem`` (GB). On a GPU the
   measured CUDA peak; otherwise an estimate from the tensors autograd saves
   (cost_measure.activation_model) plus weights, gradients, optimizer state and a fixed CUDA
   allowance (:data:`CUDA_ALLOWANCE_GB`). The smallest GPU count that fits keeps the GLOBAL
   batch (the engine's rule: ranks split it), so it is the smallest divisor of the batch whose
   per-GPU batch fits (x spatial_partitions: each rank of a partitioned setting holds one slab
   of a sample, halos left out); a setting whose ONE sample (or slab) does not fit needs
   (more) spatial partitions.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from seggrid.config import resolve_setting
from seggrid.engine.planner import make_plan
from seggrid.inference.sliding_window import tile_starts
from seggrid.io import config_hash, package_versions
from seggrid.layout import (parse_prediction_set_id, prediction_set_seed, prediction_sets, row_prediction_sets,
                            training_jobs)
from seggrid.outputs.cost_measure import (activation_key, activation_model, cache_id, calibrate, device_key,
                                           gloo_allreduce_seconds, topology_key)
from seggrid.plan import Plan

CUDA_ALLOWANCE_GB = 1.5       # CUDA context, cuDNN workspaces, allocator slack (an allowance, not measured)
OPTIMIZER_STATES = {"sgd_nesterov": 1, "adam": 2, "radam": 2, "novograd": 2}


def grid_plans(config: dict) -> dict[str, Plan]:
    """Every setting a training job uses, planned from the config alone."""
    classes = config["cost"]["classes"]
    labels = {str(c): ("background" if c == 0 else f"class_{c}") for c in range(classes)}
    spacing = config["preprocessing"]["target_spacing"]          # stated (commands.cmd_cost checks)
    names = dict.fromkeys(s for s, _, _ in training_jobs(config))
    return {n: Plan.from_dict(make_plan(resolve_setting(config, n), spacing, {}, labels), f"setting '{n}'")
            for n in names}


def job_shape(config: dict, name: str) -> tuple[int, int]:
    """(GPUs, per-GPU batch) of a setting's training job; a CPU job has 0 GPUs and one process."""
    s = resolve_setting(config, name)
    groups = max(1, s["gpus"] // s["spatial_partitions"])
    return s["gpus"], s["batch"] // groups


def _voxel_batch(topology: dict) -> float:
    return float(np.prod(topology["patch"])) * topology["per_gpu_batch"]


def activations(config: dict, device: torch.device, cache: dict, say=print) -> dict[str, dict]:
    """The saved-tensor model of every setting (cost_measure.activation_model), computed once
    per distinct network and precision and kept in ``cache`` (id -> record)."""
    out = {}
    for name, plan in grid_plans(config).items():
        gpus, per_gpu = job_shape(config, name)
        # the precision the job runs on ITS device (a GPU setting: fp16 on CUDA, whatever this machine is)
        job_device = torch.device("cuda") if gpus > 0 else torch.device("cpu")
        key = activation_key(topology_key(plan, per_gpu, job_device, 1))
        cid = config_hash(key)
        if cid not in cache:
            t0 = time.perf_counter()
            cache[cid] = activation_model(plan, key["precision"])
            say(f"[cost] memory model of {name}: {cache[cid]['activation_bytes_per_sample'] / 2**30:.2f} GB saved "
                f"per sample ({time.perf_counter() - t0:.1f} s)")
        out[name] = cache[cid]
    return out


def allreduce_shares(config: dict, memory: dict[str, dict], cache: dict, say=print) -> dict[str, float]:
    """Seconds of one gradient all-reduce between 2 gloo ranks on this CPU, per distinct
    parameter count of the grid's multi-rank settings (cached under the count): what can be
    measured here of a data-parallel step's communication; NCCL between GPUs is not."""
    counts = {memory[n]["parameters"] for n in memory if job_shape(config, n)[0] > 1}
    for n in sorted(counts):
        if str(n) not in cache:
            cache[str(n)] = gloo_allreduce_seconds(n)
            say(f"[cost] gloo all-reduce of {n:,} gradients between 2 CPU ranks: {cache[str(n)]:.3f} s")
    return {str(n): cache[str(n)] for n in counts}


def measure(config: dict, device: torch.device, cache: dict, budget_s: float, threads: int | None = None,
            say=print) -> dict[str, dict]:
    """Calibration per distinct topology of the grid (cache id -> record), measuring only
    what ``cache`` lacks, cheapest first, until ``budget_s`` seconds have passed."""
    plans, todo = grid_plans(config), {}
    for name, plan in plans.items():
        gpus, per_gpu = job_shape(config, name)
        if (gpus > 0) != (device.type == "cuda"):
            continue                    # a GPU job's time is measured on a GPU, a CPU job's on a CPU
        n_threads = threads or resolve_setting(config, name)["threads"]
        topo = topology_key(plan, per_gpu, device, n_threads)
        todo.setdefault(cache_id(topo, device), (topo, plan, per_gpu, n_threads))
    out, start = {}, time.perf_counter()
    ordered = sorted(todo.items(), key=lambda kv: _voxel_batch(kv[1][0]))
    for i, (cid, (topo, plan, per_gpu, n_threads)) in enumerate(ordered, 1):
        if cid in cache:
            out[cid] = cache[cid]
            continue
        spent = time.perf_counter() - start
        if spent > budget_s:
            say(f"[cost] {i}/{len(ordered)} {plan.setting.name}: budget of {budget_s:.0f} s spent, extrapolated")
            continue
        if plan.partition is not None:
            say(f"[cost] {i}/{len(ordered)} {plan.setting.name}: spatial partitions, not calibrated here")
            continue
        t0 = time.perf_counter()
        record = {"topology": topo, **device_key(device), "measured": calibrate(plan, per_gpu, device, n_threads),
                  "setting_example": plan.setting.name}
        cache[cid] = out[cid] = record
        m = record["measured"]
        say(f"[cost] {i}/{len(ordered)} {plan.setting.name} patch {topo['patch']} batch {per_gpu}: "
            f"{m['step_s']:.3f} s/step, {m['val_iteration_s']:.3f} s/val, peak {m['peak_mb']:.0f} MB "
            f"({time.perf_counter() - t0:.1f} s; {spent + time.perf_counter() - t0:.0f}/{budget_s:.0f} s)")
    return out


def _timing(config: dict, plan: Plan, per_gpu: int, device: torch.device, threads: int, calibrations: dict) -> dict:
    """The calibration of this topology, or one scaled by voxels x batch from the closest calibrated."""
    topo = topology_key(plan, per_gpu, device, threads)
    cid = cache_id(topo, device)
    gpus, _ = job_shape(config, plan.setting.name)
    if (gpus > 0) != (device.type == "cuda"):
        return {"source": "none", "why": "a GPU job: run seggrid cost on a GPU" if gpus else "a CPU job"}
    if plan.partition is not None:
        return {"source": "none", "why": "spatial partitions (seggrid bench step --spatial-partitions measures them)"}
    if cid in calibrations:
        return {**calibrations[cid]["measured"], "source": "measured", "cache_id": cid}
    if not calibrations:
        return {"source": "none", "why": "nothing calibrated (budget)"}
    target = _voxel_batch(topo)
    same_net = {k: v for k, v in topo.items() if k != "per_gpu_batch"}

    def distance(record: dict) -> tuple[bool, float]:      # the same network at another batch first
        other = {k: v for k, v in record["topology"].items() if k != "per_gpu_batch"}
        return other != same_net, abs(math.log(_voxel_batch(record["topology"]) / target))
    near = min(calibrations.values(), key=distance)
    ratio = target / _voxel_batch(near["topology"])
    m = near["measured"]
    scaled = {k: m[k] * ratio for k in ("step_s", "val_iteration_s", "forward_tile_s")}
    return {**m, **scaled, "peak_mb": None, "host_peak_mb": None, "source": f"extrapolated x{ratio:.2f} from {near['setting_example']}",
            "cache_id": cid}


def training_seconds(setting: dict, m: dict, import_s: float) -> dict:
    """Projected seconds of one training job from its calibration ``m`` (see the module docstring)."""
    epoch = (setting["iterations_per_epoch"] * m["step_s"] + setting["val_iterations"] * m["val_iteration_s"]
             + m["progress_s"])
    loop = setting["epochs"] * epoch + (setting["epochs"] // setting["checkpoint_every"]) * m["checkpoint_s"]
    startup = import_s + m["setup_s"]
    return {"epoch_s": epoch, "loop_s": loop, "startup_s": startup, "wall_s": startup + loop + 2 * m["checkpoint_s"]}


def tiles_per_case(median_shape: list[int], patch: list[int], step: float) -> int:
    size = [max(m, p) for m, p in zip(median_shape, patch)]
    return int(np.prod([len(a) for a in tile_starts(size, patch, step)]))


def memory_fit(config: dict, plan: Plan, per_gpu: int, timing: dict, device: torch.device,
               gpu_mem_gb: list[float], activation: dict) -> dict:
    """Per-GPU peak (GB) of the setting and, per card size, whether it fits and the fewest GPUs
    that fit with the global batch unchanged."""
    s = resolve_setting(config, plan.setting.name)
    parts = s["spatial_partitions"]
    if device.type == "cuda" and timing.get("source") == "measured":
        per_sample = None
        peak_gb = timing["peak_mb"] / 1024 + CUDA_ALLOWANCE_GB
        kind = "measured (CUDA max allocated) + allowance"
    else:
        states = 2 + OPTIMIZER_STATES[s["optimizer"]]                  # weights, gradients, optimizer state
        fixed = activation["parameters"] * 4 * states / 2**30 + CUDA_ALLOWANCE_GB
        # saved tensors, and the gradient of the largest one beside it during the backward pass;
        # with spatial partitions each rank holds one slab of every sample (halos left out)
        per_sample = (activation["activation_bytes_per_sample"] + activation["largest_tensor_bytes_per_sample"]) / 2**30
        per_sample /= parts
        peak_gb = fixed + per_gpu * per_sample
        kind = "estimate (saved tensors + largest gradient + weights, gradients, optimizer state + allowance)"
    fits = {}
    for card in gpu_mem_gb:
        fewest = None
        if per_sample is not None:
            groups = [g for g in range(1, s["batch"] + 1) if s["batch"] % g == 0]
            fewest = next((g * parts for g in groups if fixed + (s["batch"] // g) * per_sample <= card), None)
        fits[str(card)] = {"fits": peak_gb <= card, "fewest_gpus": fewest,
                           "needs_spatial_partitions": per_sample is not None and fewest is None}
    return {"per_gpu_peak_gb": peak_gb, "kind": kind, "cards": fits}


def project(config: dict, calibrations: dict, activation: dict[str, dict], device: torch.device, import_s: float,
            gpu_mem_gb: list[float], threads: int | None = None) -> dict:
    """Jobs, tables and grid totals (see the module docstring)."""
    plans, cost, inf = grid_plans(config), config["cost"], config["inference"]
    jobs, timings = [], {}
    for name, fold, seed in training_jobs(config):
        plan = plans[name]
        gpus, per_gpu = job_shape(config, name)
        s = resolve_setting(config, name)
        if name not in timings:
            timings[name] = _timing(config, plan, per_gpu, device, threads or s["threads"], calibrations)
        m = timings[name]
        row = {"kind": "train", "setting": name, "fold": fold, "seed": seed, "gpus": gpus, "per_gpu_batch": per_gpu,
               "source": m["source"] if m["source"] != "none" else f"not measured: {m['why']}",
               "host_peak_mb": m.get("host_peak_mb")}
        if m["source"] != "none":
            row.update(training_seconds(s, m, import_s))
        else:
            row["wall_s"] = None
        jobs.append(row)
    n_train, n_eval = cost["training_cases"], cost["evaluation_cases"]
    for pset in prediction_sets(config):
        models, folds = parse_prediction_set_id(pset)
        seconds, source = 0.0, "measured"
        for model in models:
            m = timings.get(model) or {"source": "none"}
            if m["source"] == "none":
                source = "none"
                continue
            tiles = tiles_per_case(cost["median_shape"], list(plans[model].topology.patch_effective), inf["step"])
            cases = n_eval * len(folds) + (n_train if len(folds) == config["folds"] else 0)
            seconds += cases * tiles * inf["tta_flips"] * m["forward_tile_s"] + import_s
            source = m["source"] if m["source"] != "measured" else source
        jobs.append({"kind": "predict", "prediction_set": pset, "gpus": inf["gpus"], "source": source, "folds": len(folds),
                     "wall_s": seconds if source != "none" else None})
    for j in jobs:
        if j.get("wall_s") is not None:
            j["gpu_hours"] = j["wall_s"] * j["gpus"] / 3600
            j["cpu_core_hours"] = 0.0 if j["gpus"] else j["wall_s"] * _threads(config, j) / 3600
    fit = {}
    for name, plan in plans.items():
        gpus, per_gpu = job_shape(config, name)
        fit[name] = {"gpus": gpus, "per_gpu_batch": per_gpu,
                     **memory_fit(config, plan, per_gpu, timings[name], device, gpu_mem_gb, activation[name])}
    return {"device": device_key(device), "device_type": device.type, "import_s": import_s, "jobs": jobs, "tables": _tables(config, jobs),
            "grid": _totals(jobs), "memory_fit": fit, "gpu_mem_gb": gpu_mem_gb, "versions": package_versions()}


def _threads(config: dict, job: dict) -> int:
    return resolve_setting(config, job["setting"])["threads"] if job["kind"] == "train" else config["inference"]["threads"]


def _totals(jobs: list[dict]) -> dict:
    done = [j for j in jobs if j.get("wall_s") is not None]
    return {"jobs": len(jobs), "projected_jobs": len(done),
            "training_jobs": sum(j["kind"] == "train" for j in jobs),
            "wall_hours_serial": sum(j["wall_s"] for j in done) / 3600,
            "gpu_hours": sum(j["gpu_hours"] for j in done), "cpu_core_hours": sum(j["cpu_core_hours"] for j in done),
            "longest_job_hours": max((j["wall_s"] for j in done), default=0.0) / 3600}


def _tables(config: dict, jobs: list[dict]) -> dict:
    """Totals per table over the jobs its rows need (a job shared by two tables counts in both)."""
    out = {}
    for name, table in config["tables"].items():
        psets = {p for row in table["rows"] for _, p in row_prediction_sets(config, table, row)}
        trains = {(m, f, prediction_set_seed(config, p)) for p in psets
                  for m in parse_prediction_set_id(p)[0] for f in parse_prediction_set_id(p)[1]}
        mine = [j for j in jobs if (j["kind"] == "predict" and j["prediction_set"] in psets)
                or (j["kind"] == "train" and (j["setting"], j["fold"], j["seed"]) in trains)]
        out[name] = _totals(mine)
    return out

