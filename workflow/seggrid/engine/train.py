"""Training one (setting, fold): the loop a newcomer reads in one sitting.

Recipe (the plan's setting names registry entries, see ``recipe.py``): optimizer, lr schedule
stepped per epoch, loss with deep supervision, foreground oversampling, nnU-Net augmentation
(``augment.py``, batched torch on the training device), grad-norm clip, precision, validation
pseudo-Dice (global TP/FP/FN over validation patches) with an EMA of 0.9/0.1.

Runtime (``recipe.deterministic``, ``compile``, ``channels_last``): ``auto`` keeps CPU runs
bitwise reproducible and, on a GPU, runs like nnU-Net (cudnn.benchmark, no deterministic
kernels). The step never waits on the host: losses stay on the device and are read once
per epoch; a non-finite loss is looked for every ``finite_check_every`` steps (one sync) and
at the end of the epoch, before any checkpoint is written. The next batches are cropped in
a background thread (:class:`seggrid.engine.sampling.Prefetcher`) while the step runs.

Multi-GPU: started by ``torchrun`` (WORLD_SIZE > 1) each rank trains on its share of the
GLOBAL batch with DistributedDataParallel (NCCL on GPUs, gloo on CPU), oversamples foreground
in its own share, and validates its share of the validation patches; batch-Dice terms and
validation counts are summed over ranks; rank 0 writes outputs. With ``spatial_partitions: N``
(spatial.py) the ranks form groups of N that share their samples: each rank trains on one slab
of every sample, and gradients are summed over the slabs instead of averaged by DDP.

Structure: :func:`train` is the epoch loop; ``session.py`` builds what it runs
(:func:`seggrid.engine.session.setup`: samplers, network, optimizer, loss), ``checkpoint.py`` resumes and saves (:func:`seggrid.engine.checkpoint.resume`,
:func:`~seggrid.engine.checkpoint.save_checkpoint`), :func:`run_epoch` trains and validates one
epoch, :func:`finish` writes the summary and outputs.

Outputs in ``out_dir``: ``model.pt`` (weights + plan), ``log.csv`` (one row per epoch),
``summary.json`` (wall time, GPU-hours, peak memory, samples/s, provenance); while it runs,
``progress.json`` and ``progress.png`` after every epoch (progress.py, read by ``seggrid status``). A full
checkpoint (model, optimizer, scaler, schedule, every rank's RNG states, log) is written
atomically every ``checkpoint_every`` epochs as ``checkpoint_latest.pt`` and at the end as
``checkpoint_final.pt``; a restarted job resumes from ``checkpoint_latest.pt``, or, when
``model.pt`` is missing but ``checkpoint_final.pt`` is there (the job died after the last
epoch), writes ``model.pt``/``log.csv``/``summary.json`` from it without training.

Random streams: every stream of a run comes from ``numpy.random.SeedSequence`` keyed on a
tuple (``device.stream_key``): initial weights on (seed, fold), the training batches and their
augmentation on (seed, fold, data-parallel group), validation patches on (seed, fold, epoch,
group), re-seeded state after a resume on another rank count on (seed, fold, epoch, rank). No
key is a sum, so (seed S, fold f + 1) and (S + 1, f) share no stream.

Checkpoints belong to the plan WITHOUT its scheduling keys (config.SCHEDULING_KEYS: gpus,
threads, mem_mb, runtime_min): a job restarted with other resources resumes. With another
number of ranks (gpus 2 -> 1) model, optimizer, scaler, lr schedule, epoch, EMA, log and the
adaptive foreground fraction resume exactly; the per-rank state (patch sampler generator of
each data-parallel group, torch/python RNGs, case cache) cannot be mapped onto the new ranks
and is re-seeded from the streams (seed, fold, epoch, group / rank): the data stream after such a resume is
deterministic but not bit-identical to an uninterrupted run with the old count (printed).

Wall-time limits (walltime.py): the job reads its time limit at the start; when the next epoch
might not end ``requeue_margin_min`` before it, the run checkpoints at that epoch boundary and
asks SLURM to requeue the job; the next run resumes from the checkpoint exactly
(``summary.json``: ``runs``, ``wall_time_requeues``).

A job with ``gpus > 0`` stops at once when CUDA is not usable (``device.require_cuda``), unless
the environment sets ``SEGGRID_ALLOW_CPU_FOR_GPU_JOBS=1`` (tests, a test cluster with fake GPUs).
"""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from seggrid.engine.checkpoint import RunState, resume, save_checkpoint
from seggrid.engine.device import VALIDATION_STREAM, peak_memory_mb, stream_rng
from seggrid.engine.network import MODEL_FORMAT
from seggrid.engine.progress import ProgressWriter
from seggrid.engine.recipe import autocast, learning_rate
from seggrid.engine.sampling import PatchSampler, Prefetcher, adaptive_foreground_fraction
from seggrid.engine.session import Training, setup
from seggrid.engine.walltime import WallTimeGuard, end_run, request_requeue
from seggrid.errors import SeggridError
from seggrid.io import atomic_path, provenance, write_json
from seggrid.plan import Plan

LOG_FIELDS = ["epoch", "train_loss", "val_loss", "pseudo_dice", "pseudo_dice_ema", "foreground_fraction", "lr",
              "seconds", "data_wait_fraction", "augment_fraction", "peak_mem_mb"]


def train_step(forward, model, loss_fn, optimizer, scaler, images: torch.Tensor, labels: torch.Tensor,
               precision: str, grad_clip: float, memory_format=torch.contiguous_format,
               after_backward=None) -> torch.Tensor:
    """One optimisation step (nnU-Net's): forward under autocast, loss in float32, scaled
    backward, grad-norm clip, step. ``forward`` is the (possibly compiled) ``model``. Returns
    the detached loss on the device: no host sync."""
    optimizer.zero_grad(set_to_none=True)
    with autocast(images.device, precision):
        outputs = forward(images.contiguous(memory_format=memory_format))
    loss = loss_fn(outputs, labels)                       # float32 inside, whatever the logits' dtype
    del outputs                                           # the loss keeps what its backward needs
    scaler.scale(loss).backward()
    if after_backward is not None:                        # spatial partitions: gradients summed over slabs
        after_backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


def confusion_counts(logits: torch.Tensor, target: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(3, C-1) TP, FP, FN per foreground class of argmax(logits) against target (B, 1, ...)."""
    pred = logits.argmax(1)
    truth = target[:, 0]
    counts = torch.zeros(3, n_classes - 1, dtype=torch.float64, device=logits.device)
    for c in range(1, n_classes):
        p, t = pred == c, truth == c
        counts[0, c - 1] = (p & t).sum()
        counts[1, c - 1] = (p & ~t).sum()
        counts[2, c - 1] = (~p & t).sum()
    return counts


def agree(flag: bool, world: int, device: torch.device) -> bool:
    """Rank 0's ``flag`` on every rank (one broadcast; no communication with one rank)."""
    if world == 1:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.broadcast(t, 0)
    return bool(t.item())


def train(plan: Plan, preprocessed: str | Path, splits: dict, fold: int, out_dir: str | Path,
          seed: int, threads: int = 1, checkpoint_every: int | None = None, gpus: int = 0,
          requeue_margin_min: float = 10.0) -> dict:
    """Train one (setting, fold) into ``out_dir``. ``gpus``: the job's GPUs (a scheduling key,
    not in a plan; 0: CPU).
    ``requeue_margin_min``: minutes kept before the job's time limit (engine/walltime.py): the
    run stops at the last epoch boundary that leaves them, checkpoints and is requeued."""
    t = setup(plan, preprocessed, splits, fold, Path(out_dir), seed, threads, gpus)
    s, ckpt_path = t.setting, t.out_dir / "checkpoint_latest.pt"
    checkpoint_every = checkpoint_every or s.checkpoint_every
    state = resume(t)
    progress = ProgressWriter(t.out_dir, s.name, fold, s.epochs)     # progress.json / .png (seggrid status)
    guard = WallTimeGuard.for_this_job(60 * requeue_margin_min)
    guard.install_signal_handler()
    if t.rank == 0:
        print(f"[train] {guard.describe()}", flush=True)
    this_run = {"job": os.environ.get("SLURM_JOB_ID"), "start_epoch": state.start_epoch}
    state.started = time.time()
    for epoch in range(state.start_epoch, s.epochs):
        row = run_epoch(t, epoch, state.ema)
        state.ema = row["pseudo_dice_ema"]
        state.log.append(row)
        if t.rank == 0:
            print(f"[train] {s.name} fold {fold} epoch {epoch + 1}/{s.epochs} loss {row['train_loss']:.4f} "
                  f"val {row['val_loss']:.4f} pseudo-Dice {row['pseudo_dice']:.3f} lr {row['lr']:.5f} "
                  f"{row['seconds']:.1f}s", flush=True)
            progress(state.log)
        if epoch + 1 < s.epochs and agree(guard.should_stop(row["seconds"]), t.world, t.device):
            # the next epoch might not end before the job's time limit: checkpoint here, requeue
            state.runs.append({**this_run, "end_epoch": epoch + 1, "stopped": "wall time"})
            save_checkpoint(ckpt_path, t, state, epoch + 1)
            requeued = agree(request_requeue(s.name) if t.rank == 0 else False, t.world, t.device)
            end_run(f"{s.name} fold {fold}", epoch + 1, str(ckpt_path), requeued, announce=t.rank == 0)
        if (epoch + 1) % checkpoint_every == 0 and epoch + 1 < s.epochs:
            save_checkpoint(ckpt_path, t, state, epoch + 1)
    if state.start_epoch < s.epochs:
        state.runs.append({**this_run, "end_epoch": s.epochs, "stopped": "done"})
    return finish(t, state)


def train_epoch(t: Training, epoch: int) -> tuple[torch.Tensor, float, float]:
    """The epoch's ``iterations_per_epoch`` steps: the summed loss (a float64 device scalar) and
    the seconds spent waiting for batches. A non-finite loss is looked for every
    ``finite_check_every`` steps and at the last one (one host sync each)."""
    s, iterations = t.setting, t.setting.iterations_per_epoch
    check_every = s.finite_check_every
    t.sampler.start_epoch()
    t.model.train()
    batches = Prefetcher(t.sampler, iterations)
    loss_sum = torch.zeros((), dtype=torch.float64, device=t.device)
    finite = torch.ones((), dtype=torch.bool, device=t.device)
    try:
        for step in range(iterations):
            images, labels = batches.next_batch()
            loss = train_step(t.forward, t.model, t.loss_fn, t.optimizer, t.scaler, t.split(images), t.split(labels),
                              t.precision, s.grad_clip, t.memory_format, t.after_backward)
            finite &= torch.isfinite(loss)
            loss_sum += loss
            if ((step + 1) % check_every == 0 or step + 1 == iterations) and not bool(finite):
                raise SeggridError(f"setting '{s.name}' fold {t.fold}: non-finite loss (seen by step {step + 1}) "
                                   f"at epoch {epoch}; stopped, the last good checkpoint is kept at "
                                   f"{t.out_dir / 'checkpoint_latest.pt'}")
    finally:
        batches.close()
    return loss_sum, batches.wait_seconds, batches.finish_seconds


def run_epoch(t: Training, epoch: int, ema: float | None) -> dict:
    """Train and validate one epoch; its log row (losses and pseudo-Dice summed over ranks, the
    pseudo-Dice EMA updated from ``ema``, lr, seconds, data wait, peak memory). With adaptive
    foreground sampling, the next epoch's foreground fraction is set from the epoch's counts."""
    s, t0 = t.setting, time.time()
    if t.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(t.device)
    lr = learning_rate(s, epoch)
    for param_group in t.optimizer.param_groups:
        param_group["lr"] = lr
    loss_sum, train_wait, augment_s = train_epoch(t, epoch)
    t.val_sampler.rng = stream_rng(t.seed, t.fold, epoch, t.dp_index, purpose=VALIDATION_STREAM)  # same on every run
    val_loss, counts, val_wait = validate(t.forward, t.plan, t.val_sampler, t.loss_fn, t.plan.n_classes,
                                          t.precision, t.memory_format, t.split)
    stats = torch.cat([counts.flatten(), torch.stack([val_loss, loss_sum / s.iterations_per_epoch])])
    if t.world > 1:
        dist.all_reduce(stats)
        stats[-2:] /= t.world
    counts, (val_loss, train_loss) = stats[:-2].view(3, -1).cpu().numpy(), stats[-2:].tolist()
    tp, fp, fn = counts
    present = (tp + fn) > 0
    dice = np.where(present, 2 * tp / np.maximum(2 * tp + fp + fn, 1), np.nan)
    pseudo = float(np.nanmean(dice)) if present.any() else float("nan")
    ema = pseudo if ema is None or not np.isfinite(ema) else 0.9 * ema + 0.1 * pseudo
    row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "pseudo_dice": pseudo,
           "pseudo_dice_ema": ema, "foreground_fraction": t.sampler.foreground_fraction, "lr": lr,
           "seconds": time.time() - t0, "data_wait_fraction": (train_wait + val_wait) / (time.time() - t0),
           "augment_fraction": augment_s / (time.time() - t0),
           "peak_mem_mb": peak_memory_mb(t.device)}
    row.update({col: float(d) for col, d in zip(t.columns, dice)})
    if s.foreground_sampling == "adaptive":
        t.sampler.foreground_fraction = adaptive_foreground_fraction(counts, s.adaptive_gamma)
    return row


def finish(t: Training, state: RunState) -> dict:
    """The summary (wall time, GPU-hours, throughput, peak memory, runs, provenance); the final
    checkpoint; on rank 0 ``model.pt``, ``log.csv`` and ``summary.json``. Returns the summary."""
    s, log, wall = t.setting, state.log, state.elapsed()
    summary = {
        "setting": s.name, "fold": t.fold, "epochs": s.epochs, "world_size": t.world, "device": str(t.device),
        "spatial_partitions": t.spatial.size if t.spatial else 1,
        "precision": t.precision, "deterministic": t.determinism, "compile": t.compiled,
        "channels_last": s.channels_last, "wall_seconds": wall,
        "data_wait_fraction": float(np.mean([r.get("data_wait_fraction", 0.0) for r in log])),
        "augment_fraction": float(np.mean([r.get("augment_fraction", 0.0) for r in log])),
        "gpu_hours": wall * t.world / 3600 if t.device.type == "cuda" else 0.0,
        "samples_per_second": s.epochs * s.iterations_per_epoch * s.batch / max(wall, 1e-9),
        "peak_mem_mb": max(r["peak_mem_mb"] for r in log), "final_pseudo_dice_ema": state.ema,
        "runs": state.runs, "wall_time_requeues": sum(r["stopped"] == "wall time" for r in state.runs),
        "provenance": provenance(t.seed, t.plan.to_dict()),
    }
    save_checkpoint(t.out_dir / "checkpoint_final.pt", t, state, s.epochs)
    if t.rank == 0:
        write_outputs(t.out_dir, t.net, t.plan, log, summary, t.columns)
        (t.out_dir / "checkpoint_latest.pt").unlink(missing_ok=True)
    if t.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return summary


@torch.no_grad()
def validate(model, plan: Plan, sampler: PatchSampler, loss_fn, n_classes, precision, memory_format, split=lambda t: t):
    """Validation loss (a device scalar), TP/FP/FN counts over this rank's share of the
    validation batches, and the seconds spent waiting for data. No host sync."""
    s, device = plan.setting, sampler.device
    model.eval()
    counts = torch.zeros(3, n_classes - 1, dtype=torch.float64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    batches = Prefetcher(sampler, s.val_iterations)
    try:
        for _ in range(s.val_iterations):
            images, labels = batches.next_batch()
            images, labels = split(images), split(labels)
            with autocast(device, precision):
                logits = model(images.contiguous(memory_format=memory_format))
            loss_sum += loss_fn.loss(logits, labels)
            counts += confusion_counts(logits, labels, n_classes)
    finally:
        batches.close()
    return loss_sum / s.val_iterations, counts, batches.wait_seconds


def write_outputs(out_dir: Path, model, plan: Plan, log: list[dict], summary: dict, columns: list[str]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "log.csv") as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=LOG_FIELDS + columns)
            w.writeheader()
            w.writerows(log)
    write_json(out_dir / "summary.json", summary)
    with atomic_path(out_dir / "model.pt") as tmp:
        torch.save({"format": MODEL_FORMAT, "state_dict": model.state_dict(), "plan": plan.to_dict(),
                    "seed": summary["provenance"]["seed"]}, tmp)
