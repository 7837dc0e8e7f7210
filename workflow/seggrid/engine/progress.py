"""What a training job tells the outside world while it runs: ``progress.json`` and
``progress.png`` in its output folder, written by rank 0 after every epoch.

``progress.json`` (small, atomic): setting, fold, epochs done and in all, the last EMA
pseudo-Dice, mean seconds per epoch, the host and process id of rank 0, and when it was
written. ``seggrid status`` reads it (status.py) to say running / failed and the ETA.

``progress.png``: training and validation loss, pseudo-Dice (and its EMA) and learning rate
per epoch, the plot nnU-Net users look at. Drawing it takes about 0.2 s, so it is skipped when
the previous one is less than ``PLOT_INTERVAL_S`` old (only tiny test epochs are that short);
the last epoch is always drawn.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from seggrid.io import atomic_path, pyplot, save_figure

#: progress.png is redrawn at most this often (and always after the last epoch): a plot costs ~0.7 s,
#: an AMOS epoch minutes, a demo epoch 2 s (plotting every 10 s took 7 % of a demo training)
PLOT_INTERVAL_S = 60.0
#: epochs whose mean duration gives "seconds per epoch" (recent ones: the first carries start-up)
RECENT_EPOCHS = 5


def seconds_per_epoch(log: list[dict]) -> float | None:
    recent = [r["seconds"] for r in log[-RECENT_EPOCHS:] if r.get("seconds") is not None]
    return sum(recent) / len(recent) if recent else None


def write_progress_json(out_dir: Path, setting: str, fold: int, epochs: int, log: list[dict]) -> dict:
    last = log[-1] if log else {}
    state = {"setting": setting, "fold": fold, "epoch": len(log), "epochs": epochs,
             "pseudo_dice_ema": last.get("pseudo_dice_ema"), "train_loss": last.get("train_loss"),
             "seconds_per_epoch": seconds_per_epoch(log), "host": socket.gethostname(), "pid": os.getpid(),
             "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "written": time.time()}
    with atomic_path(out_dir / "progress.json") as tmp:
        tmp.write_text(json.dumps(state, indent=1, default=float))
    return state


def plot_progress(log: list[dict], title: str, out_png: Path) -> None:
    """Losses (left axis), pseudo-Dice and its EMA (right axis); learning rate below."""
    plt = pyplot()
    epochs = [r["epoch"] + 1 for r in log]
    fig, (ax, ax_lr) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot(epochs, [r["train_loss"] for r in log], color="tab:blue", label="train loss", marker=".")
    ax.plot(epochs, [r["val_loss"] for r in log], color="tab:red", label="val loss", marker=".")
    ax.set_ylabel("loss")
    dice = ax.twinx()
    dice.plot(epochs, [r["pseudo_dice"] for r in log], color="tab:green", ls=":", marker=".", label="pseudo-Dice")
    dice.plot(epochs, [r["pseudo_dice_ema"] for r in log], color="tab:green", label="pseudo-Dice (EMA)")
    dice.set_ylabel("pseudo-Dice")
    dice.set_ylim(0, 1)
    handles = ax.get_legend_handles_labels()[0] + dice.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], loc="center right", fontsize=8)
    ax.set_title(title)
    ax_lr.plot(epochs, [r["lr"] for r in log], color="black", marker=".")
    ax_lr.set_ylabel("lr")
    ax_lr.set_xlabel("epoch")
    fig.tight_layout()
    save_figure(fig, out_png)


class ProgressWriter:
    """Called by rank 0 after each epoch with the whole log so far."""

    def __init__(self, out_dir: Path, setting: str, fold: int, epochs: int):
        self.out_dir, self.setting, self.fold, self.epochs = Path(out_dir), setting, fold, epochs
        self.last_plot = 0.0

    def __call__(self, log: list[dict]) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if len(log) >= self.epochs or time.time() - self.last_plot >= PLOT_INTERVAL_S:
            plot_progress(log, f"{self.setting} fold {self.fold}: epoch {len(log)}/{self.epochs}",
                          self.out_dir / "progress.png")
            self.last_plot = time.time()
        write_progress_json(self.out_dir, self.setting, self.fold, self.epochs, log)     # last: the epoch is reported
