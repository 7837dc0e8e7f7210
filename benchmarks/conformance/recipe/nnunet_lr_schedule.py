"""nnU-Net 2.8.1 side of the "lr_schedule" component (run by lr_schedule.py).

    nnunet_python benchmarks/conformance/recipe/nnunet_lr_schedule.py WORKDIR

A real nnUNetTrainer (any plans: the schedule does not depend on them) gets a stand-in
network, builds its optimizer and PolyLRScheduler with ``configure_optimizers()`` and runs its
own ``on_train_epoch_start()`` for epochs 0 .. num_epochs-1; writes
WORKDIR/nnunet_lr_schedule.json: the lr after each call, the SGD parameter group's
hyperparameters, the trainer's loop lengths, oversampling fraction and the gradient clip
norm read from train_step's source.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_json, nnunet_dataset_json, nnunet_import_setup, nnunet_trainer, save_json  # noqa: E402


def main(workdir: Path) -> None:
    nnunet_import_setup(workdir)
    import torch

    plans = load_json(workdir / "nnunet_plans.json")      # written by lr_schedule.prepare (our side)
    trainer = nnunet_trainer(plans, nnunet_dataset_json(3), workdir / "trainer")
    trainer.network = torch.nn.Linear(2, 2)
    trainer.optimizer, trainer.lr_scheduler = trainer.configure_optimizers()
    lrs = []
    with contextlib.redirect_stdout(io.StringIO()):      # three log lines per epoch
        for epoch in range(trainer.num_epochs):
            trainer.current_epoch = epoch
            trainer.on_train_epoch_start()
            lrs.append(trainer.optimizer.param_groups[0]["lr"])
    print(f"[nnunet_lr_schedule] {len(lrs)} epochs, lr {lrs[0]} .. {lrs[-1]}")
    group = trainer.optimizer.param_groups[0]
    clip = re.findall(r"clip_grad_norm_\([^,]+,\s*([0-9.]+)\)", inspect.getsource(type(trainer).train_step))
    save_json(workdir / "nnunet_lr_schedule.json", {
        "lrs": lrs,
        "optimizer": {"class": type(trainer.optimizer).__name__,
                      **{k: group[k] for k in ("lr", "momentum", "nesterov", "weight_decay", "dampening")},
                      "lr": trainer.initial_lr},
        "loop": {"epochs": trainer.num_epochs, "iterations_per_epoch": trainer.num_iterations_per_epoch,
                 "val_iterations": trainer.num_val_iterations_per_epoch,
                 "oversample_foreground": trainer.oversample_foreground_percent,
                 "grad_clip": float(clip[0]) if clip else None},
    })


if __name__ == "__main__":
    main(Path(sys.argv[1]))
