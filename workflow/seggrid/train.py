"""Training one (setting, fold): the loop a newcomer reads in one sitting.

Recipe (from the plan's setting): SGD Nesterov (or another registry optimizer), poly lr
stepped per epoch, deep supervision, foreground oversampling, mirroring, grad-norm clip,
AMP on GPU, validation pseudo-Dice (global TP/FP/FN over validation patches) with an EMA.

Multi-GPU: started by ``torchrun`` (WORLD_SIZE > 1) each rank trains on its share of the
GLOBAL batch with DistributedDataParallel (NCCL on GPUs, gloo on CPU); validation counts
are summed over ranks; rank 0 writes outputs.

Outputs in ``out_dir``: ``model.pt`` (weights + plan), ``log.csv`` (one row per epoch),
``summary.json`` (wall time, GPU-hours, peak memory, samples/s, provenance) and
``checkpoint_latest.pt`` every ``checkpoint_every`` epochs, from which a restarted job resumes.
"""

from __future__ import annotations

import csv
import os
import random
import resource
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from seggrid.errors import SeggridError
from seggrid.io import atomic_path, config_hash, provenance, write_json
from seggrid.losses import DeepSupervisionLoss, build_loss
from seggrid.network import build_network, deep_supervision_heads, deep_supervision_weights
from seggrid.sampling import PatchSampler

LOG_FIELDS = ["epoch", "train_loss", "val_loss", "pseudo_dice", "pseudo_dice_ema", "lr", "seconds", "peak_mem_mb"]

OPTIMIZERS = {
    "sgd_nesterov": lambda params, s: torch.optim.SGD(params, lr=s["lr"], momentum=s["momentum"], nesterov=True,
                                                      weight_decay=s["weight_decay"]),
    "adam": lambda params, s: torch.optim.Adam(params, lr=s["lr"], weight_decay=s["weight_decay"]),
}

LR_SCHEDULES = {
    "poly": lambda epoch, total: (1 - epoch / total) ** 0.9,
    "constant": lambda epoch, total: 1.0,
}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def distributed_context(gpus: int) -> tuple[int, int, torch.device]:
    """(rank, world size, device). Initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = gpus > 0 and torch.cuda.is_available()
    device = torch.device(f"cuda:{local}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        dist.init_process_group(backend=backend)
        if rank == 0:
            print(f"[train] distributed: {world} ranks, backend {backend}"
                  + ("" if use_cuda else " (no usable CUDA device: ranks run on CPU)"), flush=True)
    return rank, world, device


def local_batch(global_batch: int, rank: int, world: int) -> int:
    return global_batch // world + (1 if rank < global_batch % world else 0)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def autocast(device: torch.device, precision: str):
    if device.type != "cuda" or precision == "fp32":
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device_type="cuda", dtype=torch.float16 if precision == "fp16" else torch.bfloat16)


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


def train(plan: dict, preprocessed: str | Path, splits: dict, fold: int, out_dir: str | Path,
          seed: int, threads: int = 1, checkpoint_every: int = 5) -> dict:
    s = plan["setting"]
    out_dir = Path(out_dir)
    rank, world, device = distributed_context(s["gpus"])
    torch.set_num_threads(max(1, threads // world))        # the job's cores are shared by its ranks
    seed_everything(seed + fold)
    if s["batch"] < world:
        raise SeggridError(f"setting '{s['name']}': global batch {s['batch']} < {world} ranks")
    patch = plan["topology"]["patch_effective"]
    fold_split = splits["folds"][fold]
    rng = np.random.default_rng([seed, fold, rank])
    sampler = PatchSampler(preprocessed, fold_split["train"], patch, local_batch(s["batch"], rank, world),
                           s["oversample_foreground"], s["mirror_p"], rng)
    val_sampler = PatchSampler(preprocessed, fold_split["val"], patch, local_batch(s["batch"], rank, world),
                               s["oversample_foreground"], 0.0, np.random.default_rng(0))
    model = build_network(plan).to(device)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = OPTIMIZERS[s["optimizer"]](model.parameters(), s)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and s["precision"] == "fp16")
    loss_fn = DeepSupervisionLoss(build_loss(s["loss"]), deep_supervision_weights(deep_supervision_heads(plan))).to(device)
    n_classes = plan["n_classes"]

    log: list[dict] = []
    start_epoch, ema, elapsed_before = 0, None, 0.0
    ckpt_path = out_dir / "checkpoint_latest.pt"
    ckpt = torch.load(ckpt_path, map_location=device, weights_only=False) if ckpt_path.exists() else None
    if ckpt is not None and (ckpt.get("plan_hash") != config_hash(plan) or ckpt.get("seed") != seed):
        if rank == 0:
            print(f"[train] ignoring {ckpt_path}: it belongs to another plan or seed", flush=True)
        ckpt = None
    if ckpt is not None:
        (model.module if world > 1 else model).load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        if world == 1:
            rng.bit_generator.state = ckpt["rng"]
        else:       # rank 0 saved only its own stream: give every rank a fresh one for the rest
            rng = np.random.default_rng([seed, fold, rank, ckpt["epoch"]])
            sampler.rng = rng
        torch.set_rng_state(ckpt["torch_rng"])
        start_epoch, ema, log, elapsed_before = ckpt["epoch"], ckpt["ema"], ckpt["log"], ckpt["elapsed"]
        if rank == 0:
            print(f"[train] resumed from {ckpt_path} at epoch {start_epoch}", flush=True)

    t_start = time.time()
    for epoch in range(start_epoch, s["epochs"]):
        t0 = time.time()
        lr = s["lr"] * LR_SCHEDULES[s["lr_schedule"]](epoch, s["epochs"])
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        train_losses = []
        for _ in range(s["iterations_per_epoch"]):
            images, labels = (torch.from_numpy(a).to(device) for a in sampler.next_batch())
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, s["precision"]):
                outputs = model(images)
            loss = loss_fn(outputs.float(), labels)
            if not torch.isfinite(loss):
                raise SeggridError(f"setting '{s['name']}' fold {fold}: non-finite loss at epoch {epoch}; "
                                   f"last good checkpoint kept at {ckpt_path}")
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), s["grad_clip"])
            scaler.step(optimizer)
            scaler.update()
            train_losses.append(loss.item())

        val_sampler.rng = np.random.default_rng([seed + epoch, rank, 7])   # same patches on every run
        val_loss, counts = validate(model, plan, val_sampler, device, loss_fn, n_classes)
        if world > 1:
            stats = torch.cat([counts.flatten(), torch.tensor([val_loss], dtype=torch.float64, device=device)])
            dist.all_reduce(stats)
            counts, val_loss = stats[:-1].view(3, -1), float(stats[-1]) / world
        tp, fp, fn = counts.cpu().numpy()
        present = (tp + fn) > 0
        dice = np.where(present, 2 * tp / np.maximum(2 * tp + fp + fn, 1), np.nan)
        pseudo = float(np.nanmean(dice)) if present.any() else float("nan")
        ema = pseudo if ema is None or not np.isfinite(ema) else 0.9 * ema + 0.1 * pseudo
        train_loss = float(np.mean(train_losses))
        if world > 1:
            t = torch.tensor([train_loss], dtype=torch.float64, device=device)
            dist.all_reduce(t)
            train_loss = float(t) / world
        row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "pseudo_dice": pseudo,
               "pseudo_dice_ema": ema, "lr": lr, "seconds": time.time() - t0, "peak_mem_mb": peak_memory_mb(device)}
        log.append(row)
        if rank == 0:
            print(f"[train] {s['name']} fold {fold} epoch {epoch + 1}/{s['epochs']} loss {train_loss:.4f} "
                  f"val {val_loss:.4f} pseudo-Dice {pseudo:.3f} lr {lr:.5f} {row['seconds']:.1f}s", flush=True)
            if (epoch + 1) % checkpoint_every == 0 and epoch + 1 < s["epochs"]:
                state = {"model": (model.module if world > 1 else model).state_dict(),
                         "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                         "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(), "epoch": epoch + 1,
                         "ema": ema, "log": log, "elapsed": elapsed_before + time.time() - t_start,
                         "plan_hash": config_hash(plan), "seed": seed}
                with atomic_path(ckpt_path) as tmp:
                    torch.save(state, tmp)

    wall = elapsed_before + time.time() - t_start
    summary = {
        "setting": s["name"], "fold": fold, "epochs": s["epochs"], "world_size": world, "device": str(device),
        "wall_seconds": wall, "gpu_hours": wall * world / 3600 if device.type == "cuda" else 0.0,
        "samples_per_second": s["epochs"] * s["iterations_per_epoch"] * s["batch"] / max(wall, 1e-9),
        "peak_mem_mb": max(r["peak_mem_mb"] for r in log), "final_pseudo_dice_ema": ema,
        "provenance": provenance(seed, plan),
    }
    if rank == 0:
        write_outputs(out_dir, model.module if world > 1 else model, plan, log, summary)
        ckpt_path.unlink(missing_ok=True)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return summary


@torch.no_grad()
def validate(model, plan, sampler: PatchSampler, device, loss_fn, n_classes):
    """Validation loss and TP/FP/FN counts over this rank's share of the validation batches."""
    s = plan["setting"]
    model.eval()
    counts = torch.zeros(3, n_classes - 1, dtype=torch.float64, device=device)
    losses = []
    for _ in range(s["val_iterations"]):
        images, labels = (torch.from_numpy(a).to(device) for a in sampler.next_batch())
        with autocast(device, s["precision"]):
            logits = model(images).float()
        losses.append(loss_fn.loss(logits, labels).item())
        counts += confusion_counts(logits, labels, n_classes)
    return float(np.mean(losses)), counts


def write_outputs(out_dir: Path, model, plan: dict, log: list[dict], summary: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "log.csv") as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=LOG_FIELDS)
            w.writeheader()
            w.writerows(log)
    write_json(out_dir / "summary.json", summary)
    with atomic_path(out_dir / "model.pt") as tmp:
        torch.save({"state_dict": model.state_dict(), "plan": plan, "seed": summary["provenance"]["seed"]}, tmp)
