"""Benchmarks that print JSON (speed targets live here, never in unit tests).

``seggrid bench step``: one training step of the real engine (:func:`seggrid.engine.train.train_step`
on batches from the real sampler and :class:`~seggrid.engine.sampling.Prefetcher`) at any patch,
batch, network width, class count, precision and device: median seconds per step, peak
memory (CUDA max allocated on a GPU, peak RSS on a CPU) and the fraction of the step spent
waiting for data. ``benchmarks/speed/step_vs_nnunet.sh`` runs nnU-Net's network and loss on the
same shapes beside it.

``seggrid bench step --spatial-partitions N``: the same step with each sample split into N
slabs, one gloo rank each (spatial.py), against one process, run one after the other in fresh
processes: per-rank peak memory, step time and the share of it spent communicating.

``seggrid bench augment``: samples/s of the training data pipeline (patch sampling from a
memory-mapped case + augmentation) at a given patch, for the ``nnunet`` preset and, measured
side by side in the same run, the ``none`` preset (cropping only), so the ratio tells what
augmentation costs on this machine independently of its noise.
"""

from __future__ import annotations

import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from seggrid.data.synthetic import synthetic_case
from seggrid.plan import Plan, plan_from_topology

from seggrid.engine.augment import Augmenter, build_augmenter_config
from seggrid.io import package_versions
from seggrid.engine.sampling import PatchSampler


def time_pipeline(root: Path, case: str, patch: list[int], batch: int, preset: str, batches: int,
                  device: torch.device, seed: int = 0) -> float:
    """Samples per second of ``batches`` batches after one warm-up batch."""
    aug = Augmenter(build_augmenter_config(preset, patch)) if preset != "none" else None
    sampler = PatchSampler(root, [case], patch, batch, 0.33, np.random.default_rng(seed), aug, device)
    sampler.next_batch()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(batches):
        sampler.next_batch()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return batches * batch / (time.perf_counter() - t0)


def bench_augment(patch: list[int], batch: int, batches: int, threads: int, device: str,
                  volume: list[int] | None = None, seed: int = 0) -> dict:
    torch.set_num_threads(threads)
    dev = torch.device(device)
    shape = tuple(volume) if volume else tuple(int(p * 2.5) for p in patch)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        case = synthetic_case(root, shape, seed)
        rates = {preset: time_pipeline(root, case, patch, batch, preset, batches, dev, seed)
                 for preset in ("nnunet", "none")}
    return {
        "benchmark": "augment", "patch": list(patch), "batch": batch, "batches": batches, "volume": list(shape),
        "device": str(dev), "threads": threads, "cpu": platform.processor() or platform.machine(),
        "samples_per_second": {k: round(v, 3) for k, v in rates.items()},
        "augmentation_cost_ratio": round(rates["none"] / rates["nnunet"], 3),
        "versions": package_versions(),
    }


def step_plan(patch: list[int], spacing: list[float], base_features: int, max_features: int, classes: int,
              max_pools_per_axis: int | None = 5, loss: str = "dice_ce", batch_dice: bool = True) -> Plan:
    """The plan of a benchmark step: nnU-Net's recipe (SGD, instance norm, deep supervision)
    on the topology the planner gives ``patch`` at ``spacing`` (already in network axis order)."""
    from seggrid.engine.planner import plan_topology

    topo = plan_topology(patch, spacing, base_features, max_features, max_pools_per_axis, "down")
    # the recipe's defaults (the schema's: nnU-Net's SGD, instance norm, deep supervision)
    return plan_from_topology(topo, classes, "bench", loss=loss, batch_dice=batch_dice)


def bench_step(patch: list[int], batch: int, spacing: list[float], base_features: int = 32,
               max_features: int = 320, classes: int = 16, precision: str = "fp32", device: str = "cpu",
               steps: int = 3, warmup: int = 1, threads: int = 2, loss: str = "dice_ce", batch_dice: bool = True,
               augmentation: str = "none", deterministic: str | bool = "auto", compile_: str | bool = "auto",
               channels_last: bool = False, max_pools_per_axis: int | None = 5, seed: int = 0) -> dict:
    """Time ``steps`` training steps after ``warmup`` ones; see the module docstring.
    ``compile_``: auto | True | False, as ``recipe.compile`` (auto: on CUDA). The
    warm-up steps (compilation, cuDNN autotuning on a GPU) are timed apart: ``first_steps_seconds``
    (seconds each), never in ``seconds_per_step``."""
    from seggrid.engine.network import build_network
    from seggrid.engine.recipe import build_optimizer, effective_precision, grad_scaler
    from seggrid.engine.sampling import Prefetcher
    from seggrid.engine.device import use_compile
    from seggrid.engine.device import configure_determinism, peak_memory_mb
    from seggrid.engine.session import training_loss
    from seggrid.engine.train import train_step

    torch.set_num_threads(threads)
    dev = torch.device(device)
    compile_mode, compile_ = compile_, use_compile(compile_, dev)     # auto: on CUDA, as recipe.compile
    determinism = configure_determinism(deterministic, dev, compile_)
    precision = effective_precision(precision, dev)
    torch.manual_seed(seed)
    plan = step_plan(patch, spacing, base_features, max_features, classes, max_pools_per_axis, loss, batch_dice)
    setting, topo = plan.setting, plan.topology
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    model = build_network(plan).to(dev).to(memory_format=fmt)
    forward = torch.compile(model) if compile_ else model
    optimizer = build_optimizer(model.parameters(), setting)
    scaler = grad_scaler(dev, precision)
    loss_fn = training_loss(plan)
    eff = list(topo.patch_effective)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        case = synthetic_case(root, tuple(int(p * 1.25) for p in eff), seed, classes)
        aug = Augmenter(build_augmenter_config(augmentation, eff)) if augmentation != "none" else None
        sampler = PatchSampler(root, [case], eff, batch, 0.33, np.random.default_rng(seed), aug, dev)
        batches = Prefetcher(sampler, warmup + steps)
        baseline = _memory_now(dev)
        times, waits, first_times = [], [], []
        first_peak = None
        for i in range(warmup + steps):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
                if i == warmup and warmup:     # cuDNN autotuning's workspaces stay out of the timed peak
                    first_peak = peak_memory_mb(dev)
                    torch.cuda.reset_peak_memory_stats(dev)
            wait0, t0 = batches.wait_seconds, time.perf_counter()
            images, labels = batches.next_batch()
            loss_value = train_step(forward, model, loss_fn, optimizer, scaler, images, labels, precision, 12.0, fmt)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
                waits.append(batches.wait_seconds - wait0)
            else:                    # compilation, cuDNN autotuning: never counted as step time
                first_times.append(time.perf_counter() - t0)
        batches.close()
        final_loss = float(loss_value)
        timed_peak = peak_memory_mb(dev)
    return {
        "benchmark": "step", "side": "seggrid", "patch": list(eff), "patch_requested": list(patch), "batch": batch,
        "spacing": list(spacing), "features": list(topo.features), "strides": [list(s) for s in topo.strides],
        "kernels": [list(k) for k in topo.kernels],
        "classes": classes, "loss": loss, "batch_dice": batch_dice, "augmentation": augmentation,
        "precision": precision, "device": str(dev), "threads": threads, "deterministic": determinism,
        "compile": compile_, "compile_mode": compile_mode, "compiled": ["network"] if compile_ else [], "channels_last": channels_last,
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": steps, "warmup": warmup, "seconds_per_step_median": round(float(np.median(times)), 4),
        "seconds_per_step": [round(t, 4) for t in times],
        "first_steps_seconds": [round(t, 4) for t in first_times],
        "data_wait_fraction": round(float(np.sum(waits) / np.sum(times)), 4),
        "peak_memory_mb": round(max(timed_peak, first_peak or 0.0), 1),
        "peak_memory_first_steps_mb": None if first_peak is None else round(first_peak, 1),
        "peak_memory_timed_steps_mb": None if first_peak is None else round(timed_peak, 1),
        "memory_before_first_step_mb": round(baseline, 1),
        "memory_kind": "cuda_max_allocated" if dev.type == "cuda" else "peak_rss",
        "final_loss": round(final_loss, 5), "cpu": platform.processor() or platform.machine(),
        "versions": package_versions(),
    }


def _memory_now(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# --- spatial partitions ------------------------------------------------------------------

def _rss_mb() -> float:
    return _memory_now(torch.device("cpu"))


def _partition_rank(rank: int, world: int, port: int, cfg: dict, out: str) -> None:
    """One rank of ``bench step --spatial-partitions N`` (N = world; N = 1: no process group)."""
    import os
    import resource

    import torch.distributed as dist

    from seggrid.engine.network import build_network
    from seggrid.engine.recipe import build_optimizer, grad_scaler
    from seggrid.engine.planner import check_partitionable
    from seggrid.engine.spatial import SpatialContext, partition_network, sync_gradients
    from seggrid.engine.session import training_loss
    from seggrid.engine.train import train_step

    torch.set_num_threads(cfg["threads"])
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    plan = step_plan(cfg["patch"], cfg["spacing"], cfg["base_features"], cfg["max_features"], cfg["classes"])
    setting, topo = plan.setting, plan.topology
    eff = list(topo.patch_effective)
    torch.manual_seed(0)
    net = build_network(plan)
    spatial = None
    if world > 1:
        axis = check_partitionable("bench", eff, list(topo.divisor), world, None)
        spatial = SpatialContext.create(rank, world, world, axis)
        partition_network(net, spatial)
    split = spatial.split if spatial else (lambda t: t)
    after = (lambda: sync_gradients(list(net.parameters()), spatial)) if spatial else None
    optimizer = build_optimizer(net.parameters(), setting)
    scaler = grad_scaler(torch.device("cpu"), "fp32")
    loss_fn = training_loss(plan, spatial)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        case = synthetic_case(root, tuple(int(p * 1.25) for p in eff), 0, cfg["classes"])
        sampler = PatchSampler(root, [case], eff, cfg["batch"], 0.33, np.random.default_rng(0), None,
                               torch.device("cpu"))
        batches = [sampler.next_batch() for _ in range(cfg["warmup"] + cfg["steps"])]
        before = _rss_mb()
        times, comm = [], []
        for i, (images, labels) in enumerate(batches):
            if spatial:
                spatial.comm_seconds = 0.0
            if world > 1:
                dist.barrier()
            t0 = time.perf_counter()
            loss = train_step(net, net, loss_fn, optimizer, scaler, split(images), split(labels), "fp32", 12.0,
                              after_backward=after)
            if i >= cfg["warmup"]:
                times.append(time.perf_counter() - t0)
                comm.append(spatial.comm_seconds if spatial else 0.0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(out, f"rank{rank}.json").write_text(json.dumps({
        "rank": rank, "seconds_per_step": times, "comm_seconds": comm, "peak_rss_mb": peak,
        "rss_before_steps_mb": before, "loss": float(loss), "patch": eff,
        "slab": (eff[spatial.axis] // world) if spatial else None, "axis": spatial.axis if spatial else None}))
    if world > 1:
        dist.destroy_process_group()


def _run_partitioned(parts: int, cfg: dict) -> list[dict]:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_partition_rank, args=(parts, port, cfg, out), nprocs=parts, join=True)
        return [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(parts)]


def bench_spatial(patch: list[int], batch: int, spacing: list[float], partitions: int, base_features: int = 32,
                  max_features: int = 320, classes: int = 16, threads: int = 2, steps: int = 3,
                  warmup: int = 1) -> dict:
    """One training step of one sample split into ``partitions`` slabs (one gloo process
    each, ``threads // partitions`` threads) against the same step in one process with
    ``threads`` threads, run one after the other in fresh processes: peak memory per rank
    (peak RSS, and its growth over the RSS before the first step: activations, gradients and
    optimizer state), seconds per step, and the share of the step spent communicating."""
    import os

    cfg = {"patch": list(patch), "batch": batch, "spacing": list(spacing), "base_features": base_features,
           "max_features": max_features, "classes": classes, "steps": steps, "warmup": warmup}
    # glibc raises its mmap threshold up to 32 MB as large blocks are freed; smaller tensors
    # (a slab's are N times smaller) then come from the heap, whose freed pages stay in RSS.
    # A fixed threshold makes every tensor its own mapping, so RSS follows the live tensors.
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(64 * 1024))
    whole = _run_partitioned(1, {**cfg, "threads": threads})[0]
    ranks = _run_partitioned(partitions, {**cfg, "threads": max(1, threads // partitions)})

    def step_memory(r):
        return r["peak_rss_mb"] - r["rss_before_steps_mb"]

    worst = max(ranks, key=step_memory)
    t_whole = float(np.median(whole["seconds_per_step"]))
    t_parts = float(np.median([max(r["seconds_per_step"][i] for r in ranks) for i in range(steps)]))
    comm = float(np.median([max(r["comm_seconds"][i] for r in ranks) for i in range(steps)]))
    return {
        "benchmark": "step", "spatial_partitions": partitions, "patch": whole["patch"], "batch": batch,
        "slab": worst["slab"], "axis": worst["axis"], "classes": classes, "base_features": base_features,
        "threads_total": threads, "device": "cpu", "cpu": platform.processor() or platform.machine(),
        "one_partition": {"peak_rss_mb": round(whole["peak_rss_mb"], 1),
                          "step_memory_mb": round(step_memory(whole), 1), "seconds_per_step": round(t_whole, 3)},
        "per_rank": {"peak_rss_mb": round(worst["peak_rss_mb"], 1), "step_memory_mb": round(step_memory(worst), 1),
                     "seconds_per_step": round(t_parts, 3), "communication_seconds": round(comm, 3)},
        "peak_rss_ratio": round(worst["peak_rss_mb"] / whole["peak_rss_mb"], 3),
        "step_memory_ratio": round(step_memory(worst) / step_memory(whole), 3),
        "step_time_ratio": round(t_parts / t_whole, 3),
        "communication_fraction": round(comm / t_parts, 3),
        "loss_one_partition": round(whole["loss"], 5), "loss_partitioned": round(ranks[0]["loss"], 5),
        "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
        "versions": package_versions(),
    }
