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

Outputs in ``out_dir``: ``model.pt`` (weights + plan), ``log.csv`` (one row per epoch),
``summary.json`` (wall time, GPU-hours, peak memory, samples/s, provenance); while it runs,
``progress.json`` and ``progress.png`` after every epoch (progress.py, read by ``seggrid status``). A full
checkpoint (model, optimizer, scaler, schedule, every rank's RNG states, log) is written
atomically every ``checkpoint_every`` epochs as ``checkpoint_latest.pt`` and at the end as
``checkpoint_final.pt``; a restarted job resumes from ``checkpoint_latest.pt``, or, when
``model.pt`` is missing but ``checkpoint_final.pt`` is there (the job died after the last
epoch), writes ``model.pt``/``log.csv``/``summary.json`` from it without training.

Checkpoints belong to the plan WITHOUT its scheduling keys (config.SCHEDULING_KEYS: gpus,
threads, mem_mb, runtime_min): a job restarted with other resources resumes. With another
number of ranks (gpus 2 -> 1) model, optimizer, scaler, lr schedule, epoch, EMA, log and the
adaptive foreground fraction resume exactly; the per-rank state (patch sampler generator of
each data-parallel group, torch/python RNGs, case cache) cannot be mapped onto the new ranks
and is re-seeded from (seed, fold, epoch, group): the data stream after such a resume is
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
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from seggrid.config import batch_split_problem, model_setting
from seggrid.engine.device import configure_determinism, distributed_context, peak_memory_mb, use_compile
from seggrid.engine.augment import Augmenter, build_augmenter_config
from seggrid.errors import SeggridError
from seggrid.io import atomic_path, config_hash, provenance, write_json
from seggrid.engine.losses import DeepSupervisionLoss, build_loss
from seggrid.engine.network import (MODEL_FORMAT, build_network, deep_supervision_outputs, deep_supervision_weights,
                             head_scales)
from seggrid.engine.progress import ProgressWriter
from seggrid.engine.recipe import autocast, build_optimizer, effective_precision, grad_scaler, learning_rate
from seggrid.engine.sampling import PatchSampler, Prefetcher, adaptive_foreground_fraction, local_batch
from seggrid.engine.spatial import SpatialContext, partition_network, sync_gradients
from seggrid.engine.walltime import WallTimeGuard, end_run, request_requeue

LOG_FIELDS = ["epoch", "train_loss", "val_loss", "pseudo_dice", "pseudo_dice_ema", "foreground_fraction", "lr",
              "seconds", "data_wait_fraction", "peak_mem_mb"]


def model_hash(plan: dict) -> str:
    """The plan's hash without scheduling keys: what a checkpoint must match to be resumed."""
    return config_hash({**plan, "setting": model_setting(plan["setting"])})


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def training_loss(plan: dict, spatial: SpatialContext | None = None) -> DeepSupervisionLoss:
    """The setting's loss over the network's deep-supervision outputs, each against the
    target downsampled to its resolution (reduced over a sample's slabs under ``spatial``)."""
    s = plan["setting"]
    n_outputs = deep_supervision_outputs(plan)
    return DeepSupervisionLoss(build_loss(s["loss"], s["batch_dice"], spatial),
                               deep_supervision_weights(n_outputs, s["deep_supervision_weights"]),
                               head_scales(plan, n_outputs))


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


def class_columns(plan: dict) -> list[str]:
    """Log column per foreground class: pseudo_dice_<label name>."""
    names = {int(k): v for k, v in plan["labels"].items()}
    return [f"pseudo_dice_{names.get(c, c)}".replace(" ", "_") for c in range(1, plan["n_classes"])]


def agree(flag: bool, world: int, device: torch.device) -> bool:
    """Rank 0's ``flag`` on every rank (one broadcast; no communication with one rank)."""
    if world == 1:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.broadcast(t, 0)
    return bool(t.item())


def gather(obj, world: int) -> list:
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def train(plan: dict, preprocessed: str | Path, splits: dict, fold: int, out_dir: str | Path,
          seed: int, threads: int = 1, checkpoint_every: int | None = None, gpus: int | None = None,
          requeue_margin_min: float = 10.0) -> dict:
    """Train one (setting, fold) into ``out_dir``. ``gpus``: the job's GPUs (a scheduling key,
    not in a workflow plan); None takes the plan's setting's ``gpus`` (hand-made plans), else 0.
    ``requeue_margin_min``: minutes kept before the job's time limit (engine/walltime.py): the
    run stops at the last epoch boundary that leaves them, checkpoints and is requeued."""
    s = plan["setting"]
    gpus = s.get("gpus", 0) if gpus is None else gpus
    checkpoint_every = checkpoint_every or s.get("checkpoint_every", 5)
    out_dir = Path(out_dir)
    rank, world, device = distributed_context(gpus, f"train: setting '{s['name']}' fold {fold}")
    if rank == 0:
        print(f"[train] CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}, "
              f"{torch.cuda.device_count() if torch.cuda.is_available() else 0} usable CUDA device(s), "
              f"{world} rank(s), device {device}", flush=True)
    torch.set_num_threads(max(1, threads // world))        # the job's cores are shared by its ranks
    seed_everything(seed + fold)
    determinism = configure_determinism(s.get("deterministic", "auto"), device)
    spatial = None
    if plan.get("partition"):
        spatial = SpatialContext.create(rank, world, plan["partition"]["parts"], plan["partition"]["axis"])
        if rank == 0:
            print(f"[train] spatial partitions: {spatial.size} slabs of {plan['partition']['slab']} voxels along "
                  f"patch axis {spatial.axis}, {spatial.dp_size} data-parallel group(s)", flush=True)
    # data-parallel groups: every rank, or one per spatial group (its slabs share the samples)
    dp_size, dp_index = (spatial.dp_size, spatial.dp_index) if spatial else (world, rank)
    split = spatial.split if spatial else (lambda t: t)
    if problem := batch_split_problem(s["batch"], world, spatial.size if spatial else 1):
        raise SeggridError(f"setting '{s['name']}': {problem}")
    precision = effective_precision(s["precision"], device)
    if rank == 0 and precision != s["precision"]:
        print(f"[train] precision {s['precision']} needs CUDA; running {precision} on {device}", flush=True)
    patch = plan["topology"]["patch_effective"]
    fold_split = splits["folds"][fold]
    rng = np.random.default_rng([seed, fold, dp_index])
    adaptive = s["foreground_sampling"] == "adaptive"
    # this group's slice of the global batch and its share of the global foreground quota (nnU-Net's)
    group = dict(global_batch=s["batch"], group=dp_index, groups=dp_size)
    sampler = PatchSampler(preprocessed, fold_split["train"], patch, local_batch(s["batch"], dp_index, dp_size),
                           0.5 if adaptive else s["oversample_foreground"], rng,
                           Augmenter(build_augmenter_config(s["augmentation"], patch)), device,
                           s["cache_cases"], s["cache_replace"], **group)
    # nnU-Net's validation loader cuts the patch itself (no initial-patch margin)
    val_sampler = PatchSampler(preprocessed, fold_split["val"], patch, local_batch(s["batch"], dp_index, dp_size),
                               s["oversample_foreground"], np.random.default_rng(0), None, device,
                               initial_patch=patch, **group)
    net = build_network(plan).to(device)
    memory_format = torch.channels_last_3d if s.get("channels_last") else torch.contiguous_format
    net = net.to(memory_format=memory_format)
    model = net
    if spatial:
        partition_network(net, spatial)          # halo exchange + global norm statistics; state_dict unchanged
    elif world > 1:
        model = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    compiled = use_compile(s.get("compile", "auto"), device, spatial is not None)
    forward = torch.compile(model) if compiled else model       # state_dict stays the plain network's
    optimizer = build_optimizer(model.parameters(), s)
    scaler = grad_scaler(device, precision)
    loss_fn = training_loss(plan, spatial)
    after_backward = (lambda: sync_gradients(list(net.parameters()), spatial)) if spatial else None
    check_every = s.get("finite_check_every", 25)
    n_classes, columns = plan["n_classes"], class_columns(plan)

    log: list[dict] = []
    start_epoch, ema, elapsed_before, runs = 0, None, 0.0, []
    ckpt_path = out_dir / "checkpoint_latest.pt"
    final_path = out_dir / "checkpoint_final.pt"
    ckpt, resumed_from = None, None
    # model.pt missing but the final checkpoint there: the job died after its last epoch
    for path in ([final_path] if not (out_dir / "model.pt").exists() else []) + [ckpt_path]:
        if not path.exists():
            continue
        try:
            candidate = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:            # torch raises several types for a damaged file
            raise SeggridError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {str(exc)[:200]}); it holds "
                               f"the training so far, so it is not overwritten: move it away to start this "
                               f"training from epoch 0") from exc
        if (candidate.get("plan_hash") == model_hash(plan) and candidate.get("seed") == seed
                and candidate.get("format") == MODEL_FORMAT):
            ckpt, resumed_from = candidate, path
            break
        if rank == 0:
            print(f"[train] ignoring {path}: it belongs to another plan, seed or network format", flush=True)
    if ckpt is not None:
        net.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        start_epoch, ema, log, elapsed_before = ckpt["epoch"], ckpt["ema"], ckpt["log"], ckpt["elapsed"]
        runs = ckpt.get("runs", [])
        if len(ckpt["ranks"]) == world:
            mine = ckpt["ranks"][rank]
            rng.bit_generator.state = mine["rng"]
            sampler.foreground_fraction = mine["foreground_fraction"]
            if sampler.cache is not None:
                sampler.cache.load_state_dict(mine["cache"])
            torch.set_rng_state(mine["torch_rng"])
            random.setstate(mine["python_rng"])
        else:
            # per-rank state cannot be mapped onto another number of ranks: re-seed it from
            # (seed, fold, epoch, group); the adaptive foreground fraction is global (all ranks equal)
            rng.bit_generator.state = np.random.default_rng([seed, fold, start_epoch, dp_index]).bit_generator.state
            sampler.foreground_fraction = ckpt["ranks"][0]["foreground_fraction"]
            seed_everything(seed + fold + 1_000_003 * start_epoch + 7919 * rank)
            if rank == 0:
                print(f"[train] {resumed_from} was written by {len(ckpt['ranks'])} rank(s), this job has {world}: "
                      f"model, optimizer, schedule and epoch resume exactly; the samplers are re-seeded from "
                      f"(seed, fold, epoch, group), so the data stream from here on is NOT bit-identical to an "
                      f"uninterrupted run with {len(ckpt['ranks'])} rank(s)", flush=True)
        if rank == 0:
            print(f"[train] resumed from {resumed_from} at epoch {start_epoch}"
                  + (" (all epochs done: writing model.pt from it, no training)" if start_epoch >= s["epochs"] else ""),
                  flush=True)

    def save_checkpoint(path: Path, epoch: int) -> None:
        ranks = gather({"rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                        "python_rng": random.getstate(), "foreground_fraction": sampler.foreground_fraction,
                        "cache": sampler.cache.state_dict() if sampler.cache is not None else None}, world)
        if rank != 0:
            return
        state = {"model": net.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                 "schedule": {"name": s["lr_schedule"], "epoch": epoch}, "ranks": ranks, "epoch": epoch,
                 "ema": ema, "log": log, "elapsed": elapsed_before + time.time() - t_start, "runs": runs,
                 "plan_hash": model_hash(plan), "seed": seed, "format": MODEL_FORMAT}
        with atomic_path(path) as tmp:
            torch.save(state, tmp)

    progress = ProgressWriter(out_dir, s["name"], fold, s["epochs"])     # progress.json / .png (seggrid status)
    guard = WallTimeGuard.for_this_job(60 * requeue_margin_min)
    guard.install_signal_handler()
    if rank == 0:
        print(f"[train] {guard.describe()}", flush=True)
    this_run = {"job": os.environ.get("SLURM_JOB_ID"), "start_epoch": start_epoch}
    t_start = time.time()
    for epoch in range(start_epoch, s["epochs"]):
        t0 = time.time()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        lr = learning_rate(s, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        sampler.start_epoch()
        model.train()
        iterations = s["iterations_per_epoch"]
        batches = Prefetcher(sampler, iterations)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        finite = torch.ones((), dtype=torch.bool, device=device)
        try:
            for step in range(iterations):
                images, labels = batches.next_batch()
                loss = train_step(forward, model, loss_fn, optimizer, scaler, split(images), split(labels), precision,
                                  s["grad_clip"], memory_format, after_backward)
                finite &= torch.isfinite(loss)
                loss_sum += loss
                if ((step + 1) % check_every == 0 or step + 1 == iterations) and not bool(finite):
                    raise SeggridError(f"setting '{s['name']}' fold {fold}: non-finite loss (seen by step {step + 1}) "
                                       f"at epoch {epoch}; stopped, the last good checkpoint is kept at {ckpt_path}")
        finally:
            batches.close()

        val_sampler.rng = np.random.default_rng([seed + epoch, dp_index, 7])   # same patches on every run
        val_loss, counts, val_wait = validate(forward, plan, val_sampler, loss_fn, n_classes, precision, memory_format,
                                              split)
        stats = torch.cat([counts.flatten(), torch.stack([val_loss, loss_sum / iterations])])
        if world > 1:
            dist.all_reduce(stats)
            stats[-2:] /= world
        counts, (val_loss, train_loss) = stats[:-2].view(3, -1).cpu().numpy(), stats[-2:].tolist()
        tp, fp, fn = counts
        present = (tp + fn) > 0
        dice = np.where(present, 2 * tp / np.maximum(2 * tp + fp + fn, 1), np.nan)
        pseudo = float(np.nanmean(dice)) if present.any() else float("nan")
        ema = pseudo if ema is None or not np.isfinite(ema) else 0.9 * ema + 0.1 * pseudo
        row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "pseudo_dice": pseudo,
               "pseudo_dice_ema": ema, "foreground_fraction": sampler.foreground_fraction, "lr": lr,
               "seconds": time.time() - t0, "data_wait_fraction": (batches.wait_seconds + val_wait) / (time.time() - t0),
               "peak_mem_mb": peak_memory_mb(device)}
        row.update({col: float(d) for col, d in zip(columns, dice)})
        log.append(row)
        if adaptive:
            sampler.foreground_fraction = adaptive_foreground_fraction(counts, s["adaptive_gamma"])
        if rank == 0:
            print(f"[train] {s['name']} fold {fold} epoch {epoch + 1}/{s['epochs']} loss {train_loss:.4f} "
                  f"val {val_loss:.4f} pseudo-Dice {pseudo:.3f} lr {lr:.5f} {row['seconds']:.1f}s", flush=True)
            progress(log)
        if epoch + 1 < s["epochs"] and agree(guard.should_stop(row["seconds"]), world, device):
            # the next epoch might not end before the job's time limit: checkpoint here, requeue
            runs.append({**this_run, "end_epoch": epoch + 1, "stopped": "wall time"})
            save_checkpoint(ckpt_path, epoch + 1)
            requeued = agree(request_requeue(s["name"]) if rank == 0 else False, world, device)
            end_run(f"{s['name']} fold {fold}", epoch + 1, str(ckpt_path), requeued, announce=rank == 0)
        if (epoch + 1) % checkpoint_every == 0 and epoch + 1 < s["epochs"]:
            save_checkpoint(ckpt_path, epoch + 1)

    wall = elapsed_before + time.time() - t_start
    if start_epoch < s["epochs"]:
        runs.append({**this_run, "end_epoch": s["epochs"], "stopped": "done"})
    summary = {
        "setting": s["name"], "fold": fold, "epochs": s["epochs"], "world_size": world, "device": str(device),
        "spatial_partitions": spatial.size if spatial else 1,
        "precision": precision, "deterministic": determinism, "compile": compiled,
        "channels_last": bool(s.get("channels_last")), "wall_seconds": wall,
        "data_wait_fraction": float(np.mean([r.get("data_wait_fraction", 0.0) for r in log])),
        "gpu_hours": wall * world / 3600 if device.type == "cuda" else 0.0,
        "samples_per_second": s["epochs"] * s["iterations_per_epoch"] * s["batch"] / max(wall, 1e-9),
        "peak_mem_mb": max(r["peak_mem_mb"] for r in log), "final_pseudo_dice_ema": ema,
        "runs": runs, "wall_time_requeues": sum(r["stopped"] == "wall time" for r in runs),
        "provenance": provenance(seed, plan),
    }
    save_checkpoint(out_dir / "checkpoint_final.pt", s["epochs"])
    if rank == 0:
        write_outputs(out_dir, net, plan, log, summary, columns)
        ckpt_path.unlink(missing_ok=True)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return summary


@torch.no_grad()
def validate(model, plan, sampler: PatchSampler, loss_fn, n_classes, precision, memory_format, split=lambda t: t):
    """Validation loss (a device scalar), TP/FP/FN counts over this rank's share of the
    validation batches, and the seconds spent waiting for data. No host sync."""
    s, device = plan["setting"], sampler.device
    model.eval()
    counts = torch.zeros(3, n_classes - 1, dtype=torch.float64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    batches = Prefetcher(sampler, s["val_iterations"])
    try:
        for _ in range(s["val_iterations"]):
            images, labels = batches.next_batch()
            images, labels = split(images), split(labels)
            with autocast(device, precision):
                logits = model(images.contiguous(memory_format=memory_format))
            loss_sum += loss_fn.loss(logits, labels)
            counts += confusion_counts(logits, labels, n_classes)
    finally:
        batches.close()
    return loss_sum / s["val_iterations"], counts, batches.wait_seconds


def write_outputs(out_dir: Path, model, plan: dict, log: list[dict], summary: dict, columns: list[str]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "log.csv") as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=LOG_FIELDS + columns)
            w.writeheader()
            w.writerows(log)
    write_json(out_dir / "summary.json", summary)
    with atomic_path(out_dir / "model.pt") as tmp:
        torch.save({"format": MODEL_FORMAT, "state_dict": model.state_dict(), "plan": plan,
                    "seed": summary["provenance"]["seed"]}, tmp)
