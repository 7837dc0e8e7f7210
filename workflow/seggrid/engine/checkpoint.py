"""A training's checkpoints: what one holds, how a restarted job finds and resumes it.

A checkpoint holds the model, optimizer, grad scaler, lr schedule position, epoch, EMA,
log, the seconds trained so far, the runs so far, and every rank's state (patch sampler
generator, torch and Python RNGs, adaptive foreground fraction, case cache). It is written
atomically by rank 0 after every rank has handed its state over (:func:`save_checkpoint`).

A restarted job (:func:`resume`) takes ``checkpoint_latest.pt``, or ``checkpoint_final.pt``
when ``model.pt`` is missing (the job died after its last epoch), provided it belongs to the
same plan without its scheduling keys (:func:`model_hash`), seed and network format. With the
number of ranks it was written by, everything resumes exactly; with another, the per-rank
state is re-seeded from (seed, fold, epoch, group) and the data stream from there on is
deterministic but not bit-identical to an uninterrupted run with the old count (printed).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from seggrid.engine.device import RESUME_STREAM, seed_everything, stream_rng, stream_seed
from seggrid.engine.network import MODEL_FORMAT
from seggrid.engine.session import Training
from seggrid.errors import SeggridError
from seggrid.plan import Plan
from seggrid.io import atomic_path, config_hash


@dataclass
class RunState:
    """What a training carries from epoch to epoch and across restarts."""

    start_epoch: int = 0                  # first epoch this run trains
    ema: float | None = None              # EMA of the validation pseudo-Dice
    log: list[dict] = field(default_factory=list)           # one row per epoch done
    elapsed_before: float = 0.0           # seconds trained by earlier runs of this job
    runs: list[dict] = field(default_factory=list)          # earlier runs: job, epochs, why they stopped
    started: float = field(default_factory=time.time)       # when this run's epochs began (time.time())

    def elapsed(self) -> float:
        """Seconds trained so far, earlier runs included."""
        return self.elapsed_before + time.time() - self.started


def model_hash(plan: Plan) -> str:
    """The plan's hash (a plan holds no scheduling keys): what a checkpoint must match to be resumed."""
    return config_hash(plan.to_dict())


def gather(obj, world: int) -> list:
    """``obj`` of every rank, in rank order (no communication with one rank)."""
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def find_checkpoint(out_dir: Path, plan: Plan, seed: int, announce: bool) -> tuple[dict | None, Path | None]:
    """The checkpoint this job resumes from and its path, or (None, None). A damaged file
    stops the job (it holds the training so far); another plan's, seed's or format's is skipped."""
    latest, final = out_dir / "checkpoint_latest.pt", out_dir / "checkpoint_final.pt"
    # model.pt missing but the final checkpoint there: the job died after its last epoch
    for path in ([final] if not (out_dir / "model.pt").exists() else []) + [latest]:
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
            return candidate, path
        if announce:
            print(f"[train] ignoring {path}: it belongs to another plan, seed or network format", flush=True)
    return None, None


def resume(t: Training) -> RunState:
    """Load the job's checkpoint into ``t`` (weights, optimizer, scaler, this rank's generators
    and sampler state) and return the run state it saved; a fresh state when there is none."""
    ckpt, path = find_checkpoint(t.out_dir, t.plan, t.seed, announce=t.rank == 0)
    if ckpt is None:
        return RunState()
    t.net.load_state_dict(ckpt["model"])
    t.optimizer.load_state_dict(ckpt["optimizer"])
    t.scaler.load_state_dict(ckpt["scaler"])
    state = RunState(ckpt["epoch"], ckpt["ema"], ckpt["log"], ckpt["elapsed"], ckpt.get("runs", []))
    if len(ckpt["ranks"]) == t.world:
        mine = ckpt["ranks"][t.rank]
        t.rng.bit_generator.state = mine["rng"]
        t.sampler.foreground_fraction = mine["foreground_fraction"]
        if t.sampler.cache is not None:
            t.sampler.cache.load_state_dict(mine["cache"])
        torch.set_rng_state(mine["torch_rng"])
        random.setstate(mine["python_rng"])
    else:
        # per-rank state cannot be mapped onto another number of ranks: re-seed it from
        # (seed, fold, epoch, group); the adaptive foreground fraction is global (all ranks equal)
        t.rng.bit_generator.state = stream_rng(t.seed, t.fold, state.start_epoch, t.dp_index,
                                               purpose=RESUME_STREAM).bit_generator.state
        t.sampler.foreground_fraction = ckpt["ranks"][0]["foreground_fraction"]
        seed_everything(stream_seed(t.seed, t.fold, state.start_epoch, t.rank, purpose=RESUME_STREAM))
        if t.rank == 0:
            print(f"[train] {path} was written by {len(ckpt['ranks'])} rank(s), this job has {t.world}: "
                  f"model, optimizer, schedule and epoch resume exactly; the samplers are re-seeded from "
                  f"(seed, fold, epoch, group), so the data stream from here on is NOT bit-identical to an "
                  f"uninterrupted run with {len(ckpt['ranks'])} rank(s)", flush=True)
    if t.rank == 0:
        print(f"[train] resumed from {path} at epoch {state.start_epoch}"
              + (" (all epochs done: writing model.pt from it, no training)"
                 if state.start_epoch >= t.setting.epochs else ""), flush=True)
    return state


def save_checkpoint(path: Path, t: Training, state: RunState, epoch: int) -> None:
    """Every rank hands over its state; rank 0 writes the checkpoint of ``epoch`` epochs done
    to ``path`` atomically."""
    ranks = gather({"rng": t.rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                    "python_rng": random.getstate(), "foreground_fraction": t.sampler.foreground_fraction,
                    "cache": t.sampler.cache.state_dict() if t.sampler.cache is not None else None}, t.world)
    if t.rank != 0:
        return
    ckpt = {"model": t.net.state_dict(), "optimizer": t.optimizer.state_dict(), "scaler": t.scaler.state_dict(),
            "schedule": {"name": t.setting.lr_schedule, "epoch": epoch}, "ranks": ranks, "epoch": epoch,
            "ema": state.ema, "log": state.log, "elapsed": state.elapsed(), "runs": state.runs,
            "plan_hash": model_hash(t.plan), "seed": t.seed, "format": MODEL_FORMAT}
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
