"""Calibration of one training topology on this machine's device, for ``seggrid cost``.

A *topology* is what sets the cost of a training step and of a prediction tile: the planned
network (patch, strides, kernels, features, classes), the per-GPU batch, the precision and
compile mode that really run on this device, spatial partitions, norm, loss, deep supervision,
channels-last and the augmentation preset (:func:`topology_key`). The calibration runs the
REAL engine (engine/session.py ``setup``, engine/train.py ``train_epoch`` and ``validate``) on a
synthetic case of the plan's patch (1.25 x the patch, ``data/synthetic.py``), so the data
pipeline (prefetch thread, cropping, augmentation, device copy), the validation loop and the
grad scaler count exactly as a training runs them:

- warm-up: one epoch of 2 steps and 1 validation iteration (cuDNN autotuning, compilation,
  first allocations: never timed);
- ``train_epoch`` twice with ``n`` steps each (``n`` chosen so a chunk takes about
  ``CHUNK_S`` seconds, at most the setting's ``iterations_per_epoch``): seconds per step is
  the mean of the two chunks' per-step times, and includes each chunk's start-up (a new
  prefetch thread and its first batch, as every real epoch has);
- ``validate`` with ``min(val_iterations, 4)`` iterations: seconds per validation iteration;
- one checkpoint written (``save_checkpoint``) and one ``progress.json`` (per-epoch overhead);
- ``setup`` itself (network, optimizer, samplers): part of a job's start-up;
- a forward pass at batch 1 in eval mode under the precision (one sliding-window tile);
- peak memory: CUDA max allocated on a GPU; on a CPU the process's peak RSS, reset before the
  topology (``/proc/self/clear_refs``, Linux) so each topology's peak is its own.

Results are cached in ``<outdir>/cost/calibration.json`` under the key and the device, torch
and CUDA versions (:func:`device_key`): a second ``seggrid cost`` measures nothing.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from seggrid.engine.device import peak_memory_mb, use_compile
from seggrid.engine.recipe import effective_precision
from seggrid.errors import SeggridError
from seggrid.io import config_hash
from seggrid.plan import Plan

CHUNK_S = 1.0            # target seconds of one timed chunk of training steps
MAX_CHUNK_STEPS = 50
VAL_STEPS = 4


def device_name(device: torch.device) -> str:
    """The device as a cost record names it: the GPU's model, or the CPU's model and threads."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} (CPU)"


def device_key(device: torch.device) -> dict:
    """What a calibration is valid for besides its topology."""
    return {"device": device_name(device), "torch": torch.__version__, "cuda": torch.version.cuda}


def topology_key(plan: Plan, per_gpu_batch: int, device: torch.device, threads: int) -> dict:
    """The fields of a plan (and job) that set the cost of a step on ``device``."""
    s, topo = plan.setting, plan.topology
    return {"patch": list(topo.patch_effective), "strides": [list(x) for x in topo.strides],
            "kernels": [list(x) for x in topo.kernels], "features": list(topo.features),
            "classes": plan.n_classes, "per_gpu_batch": per_gpu_batch,
            "precision": effective_precision(s.precision, device),
            "compile": use_compile(s.compile, device, plan.partition is not None),
            "spatial_partitions": s.spatial_partitions, "norm": s.norm, "loss": s.loss,
            "batch_dice": s.batch_dice, "deep_supervision": s.deep_supervision,
            "deep_supervision_weights": s.deep_supervision_weights, "channels_last": s.channels_last,
            "augmentation": s.augmentation, "threads": threads if device.type == "cpu" else None}


def cache_id(topology: dict, device: torch.device) -> str:
    return config_hash({**topology, **device_key(device)})


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")        # resets VmHWM (Linux >= 4.0)
    except OSError:
        pass


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return peak_memory_mb(device)
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return peak_memory_mb(device)


_ALLREDUCE = """
import json, os, sys, time
import torch, torch.distributed as dist, torch.multiprocessing as mp

def rank(r, n, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=r, world_size=2)
    torch.set_num_threads(1)
    x = torch.ones(n)
    times = []
    for i in range(6):
        dist.barrier()
        t0 = time.perf_counter()
        dist.all_reduce(x)
        times.append(time.perf_counter() - t0)
    if r == 0:
        open(out, "w").write(json.dumps(sorted(times[1:])[len(times[1:]) // 2]))
    dist.destroy_process_group()

if __name__ == "__main__":
    mp.spawn(rank, args=(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]), nprocs=2)
"""


def gloo_allreduce_seconds(n_parameters: int) -> float:
    """Median seconds of one all-reduce of ``n_parameters`` float32 values between 2 gloo ranks
    on this CPU (two processes, one thread each): the communication a data-parallel step adds
    on CPU ranks. It says nothing about NCCL between GPUs (docs/cost.md)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out, script = Path(tmp) / "seconds.json", Path(tmp) / "allreduce.py"
        script.write_text(_ALLREDUCE)                  # spawned ranks import the script's functions
        subprocess.run([sys.executable, str(script), str(n_parameters), str(port), str(out)], check=True,
                       capture_output=True, timeout=300)
        return float(out.read_text())


def import_seconds() -> float:
    """Seconds a fresh Python process takes to import the training engine (a job's start-up)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import seggrid.engine.train"], check=True,
                   env={"PYTHONPATH": str(Path(__file__).resolve().parents[2]), "PATH": "/usr/bin:/bin"})
    return time.perf_counter() - t0


def calibrate(plan: Plan, per_gpu_batch: int, device: torch.device, threads: int, seed: int = 0) -> dict:
    """Measure one topology (see the module docstring); returns seconds and megabytes."""
    from seggrid.data.synthetic import synthetic_case
    from seggrid.engine.checkpoint import RunState, save_checkpoint
    from seggrid.engine.progress import write_progress_json
    from seggrid.engine.session import setup
    from seggrid.engine.train import train_epoch, validate

    if plan.partition is not None:
        raise SeggridError(f"cost: setting '{plan.setting.name}' uses spatial partitions; its step needs "
                           f"{plan.partition.parts} ranks (measure it with `seggrid bench step --spatial-partitions`)")
    s = plan.setting
    torch.set_num_threads(threads)
    _reset_peak(device)
    # the engine's own progress lines ([train] ...) stay out of the cost output
    with tempfile.TemporaryDirectory(prefix="seggrid-cost-") as tmp, contextlib.redirect_stdout(io.StringIO()):
        root = Path(tmp)
        case = synthetic_case(root, tuple(int(p * 1.25) for p in plan.topology.patch_effective), seed, plan.n_classes)
        splits = {"folds": [{"train": [case], "val": [case]}]}
        warm = plan.with_setting(batch=per_gpu_batch, iterations_per_epoch=2, val_iterations=1)
        t0 = time.perf_counter()
        t = setup(warm, root, splits, 0, root / "out", seed, threads, 1 if device.type == "cuda" else 0)
        setup_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        train_epoch(t, 0)
        _validate(t, validate)
        warmup_s = time.perf_counter() - t0
        per_step_guess = max(warmup_s / 3, 1e-3)
        n = int(min(s.iterations_per_epoch, MAX_CHUNK_STEPS, max(3, CHUNK_S / per_step_guess)))
        _use(t, plan.with_setting(batch=per_gpu_batch, iterations_per_epoch=n, val_iterations=min(s.val_iterations, VAL_STEPS)))
        chunks = []
        for epoch in (1, 2):
            t0 = time.perf_counter()
            train_epoch(t, epoch)
            _sync(device)
            chunks.append((time.perf_counter() - t0) / n)
        t0 = time.perf_counter()
        _validate(t, validate)
        val_s = (time.perf_counter() - t0) / t.setting.val_iterations
        t0 = time.perf_counter()
        save_checkpoint(root / "out" / "checkpoint_latest.pt", t, RunState(), 1)
        checkpoint_s = time.perf_counter() - t0
        log = [{"epoch": e, "seconds": 1.0, "pseudo_dice": 0.5, "pseudo_dice_ema": 0.5} for e in range(s.epochs)]
        t0 = time.perf_counter()
        write_progress_json(root / "out", s.name, 0, s.epochs, log)
        progress_s = time.perf_counter() - t0
        forward_s = _forward_seconds(t, device)
        peak, host_peak = _peak_mb(device), _peak_mb(torch.device("cpu"))
    return {"setup_s": setup_s, "warmup_s": warmup_s, "chunk_steps": n, "step_s": float(np.mean(chunks)),
            "step_s_chunks": chunks, "val_iteration_s": val_s, "checkpoint_s": checkpoint_s,
            "progress_s": progress_s, "forward_tile_s": forward_s, "peak_mb": peak, "host_peak_mb": host_peak,
            "memory_kind": "cuda_max_allocated" if device.type == "cuda" else "peak_rss"}


def _use(t, plan: Plan) -> None:
    t.plan, t.setting = plan, plan.setting


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _validate(t, validate) -> None:
    validate(t.forward, t.plan, t.val_sampler, t.loss_fn, t.plan.n_classes, t.precision, t.memory_format, t.split)
    _sync(t.device)


@torch.no_grad()
def _forward_seconds(t, device: torch.device, repeats: int = 3) -> float:
    """Median seconds of one sliding-window tile: batch 1 at the patch, eval mode, the precision."""
    from seggrid.engine.recipe import autocast

    t.net.eval()
    x = torch.zeros(1, 1, *t.plan.topology.patch_effective, device=device).contiguous(memory_format=t.memory_format)
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        with autocast(device, t.precision):
            t.net(x)
        _sync(device)
        if i:
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def activation_model(plan: Plan, precision: str) -> dict:
    """Bytes a training step keeps for its backward pass, per sample: the tensors autograd
    saves (``saved_tensors_hooks``, each storage once) in a forward + loss of the plan's own
    network at 2 and 3 x its divisor per axis (every stage's feature map is then the patch
    divided by the same strides), fitted as a fixed part (the low-precision weight copies
    autocast keeps) plus a part proportional to voxels, and extrapolated to the plan's patch.
    Also the largest single saved tensor (the backward pass holds its gradient beside it) and
    the parameter count. ``precision`` fp16/bf16 runs the forward under CPU bf16 autocast (2
    bytes per element where CUDA fp16 autocast keeps 2 as well). Runs on the CPU in seconds
    for any patch: the memory fit of a GPU setting needs no GPU."""
    from seggrid.engine.network import build_network
    from seggrid.engine.session import training_loss

    net = build_network(plan).train()
    loss_fn = training_loss(plan)
    points = []
    for k in (2, 3):                       # 2 x 2 x 2 voxels at the bottleneck at least (instance norm)
        patch = [k * d for d in plan.topology.divisor]
        saved: dict[int, int] = {}

        def pack(tensor):
            saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
            return tensor

        x = torch.randn(1, 1, *patch)
        y = torch.randint(0, plan.n_classes, (1, 1, *patch))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision in ("fp16", "bf16")):
                outputs = net(x)
            loss_fn(outputs, y)
        points.append((float(np.prod(patch)), float(sum(saved.values())), float(max(saved.values()))))
        del outputs
    voxels = float(np.prod(plan.topology.patch_effective))
    (v2, total2, big2), (v3, total3, big3) = points
    per_voxel = (total3 - total2) / (v3 - v2)
    return {"activation_bytes_per_sample": total2 + per_voxel * (voxels - v2),
            "largest_tensor_bytes_per_sample": big3 * voxels / v3,
            "parameters": sum(p.numel() for p in net.parameters())}


def activation_key(topology: dict) -> dict:
    """What :func:`activation_model` depends on: the topology without batch, threads, compile."""
    return {k: v for k, v in topology.items() if k not in ("per_gpu_batch", "threads", "compile", "augmentation")}
