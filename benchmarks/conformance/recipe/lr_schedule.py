"""Recipe component "lr_schedule": our learning rate per epoch and SGD settings vs nnU-Net 2.8.1.

Ours: ``seggrid.engine.recipe.learning_rate(setting, epoch)`` and ``build_optimizer`` for the
schema's default recipe (``seggrid.config.complete_setting``: sgd_nesterov, lr 0.01, momentum
0.99, weight decay 3e-5, poly, 1000 epochs x 250 iterations). nnU-Net's
(``nnunet_lr_schedule.py``): a real nnUNetTrainer's ``configure_optimizers()`` (SGD +
PolyLRScheduler), stepped by the trainer's own ``on_train_epoch_start()`` for every epoch of
its ``num_epochs``; the lr of the optimizer's parameter group is read after each call. Also
compared: the optimizer's hyperparameters and the trainer's epochs, iterations per epoch,
validation iterations and foreground oversampling fraction.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from common import load_json, protocol_compare, result, run_standalone, write_nnunet_plans

TOLERANCE = 1e-12
OPTIMIZER_KEYS = ("lr", "momentum", "nesterov", "weight_decay", "dampening")


def ours() -> dict:
    """Our default recipe's lr per epoch, SGD hyperparameters and loop lengths."""
    import torch

    from seggrid.engine.planner import plan_topology
    from seggrid.engine.recipe import build_optimizer, learning_rate
    from seggrid.plan import plan_from_topology

    # the recipe's defaults (the schema's), as a training job reads them
    setting = plan_from_topology(plan_topology([64, 128, 128], [1.0, 1.0, 1.0]), 2, "recipe_lr").setting
    optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(2))], setting)
    group = optimizer.param_groups[0]
    return {"lrs": [learning_rate(setting, e) for e in range(setting.epochs)],
            "optimizer": {"class": type(optimizer).__name__, **{k: group[k] for k in OPTIMIZER_KEYS}},
            "loop": {"epochs": setting.epochs, "iterations_per_epoch": setting.iterations_per_epoch,
                     "val_iterations": setting.val_iterations,
                     "oversample_foreground": setting.oversample_foreground, "grad_clip": setting.grad_clip}}


#: the files of a run that make this component's fixture (tests/fixtures/nnunet/lr_schedule/)
FIXTURE_FILES = ["nnunet_lr_schedule.json"]


def prepare(workdir: Path, small: bool = False) -> None:
    """Write the plans nnU-Net's trainer is built with (any plans: the schedule does not depend on them)."""
    write_nnunet_plans(workdir / "nnunet_plans.json", [16, 32, 32], [2.0, 0.688, 0.688],
                       [[1, 1, 1], [1, 2, 2], [2, 2, 2]], [[1, 3, 3], [3, 3, 3], [3, 3, 3]])


def check(workdir: Path) -> dict:
    """Our schedule and optimizer against nnU-Net's recorded in ``workdir``."""
    theirs, mine = load_json(workdir / "nnunet_lr_schedule.json"), ours()
    same_length = len(theirs["lrs"]) == len(mine["lrs"])
    diff = float(np.max(np.abs(np.subtract(mine["lrs"], theirs["lrs"])))) if same_length else float("inf")
    different = {k: {"ours": mine["optimizer"][k], "nnunet": theirs["optimizer"][k]}
                 for k in mine["optimizer"] if mine["optimizer"][k] != theirs["optimizer"][k]}
    different.update({k: {"ours": mine["loop"][k], "nnunet": theirs["loop"][k]}
                      for k in mine["loop"] if mine["loop"][k] != theirs["loop"][k]})
    return result("lr_schedule", same_length and diff <= TOLERANCE and not different,
                  epochs=len(mine["lrs"]), max_abs_diff=diff, tolerance=TOLERANCE,
                  lr_first_last={"ours": [mine["lrs"][0], mine["lrs"][-1]],
                                 "nnunet": [theirs["lrs"][0], theirs["lrs"][-1]]},
                  optimizer=mine["optimizer"], loop=mine["loop"], differences=different)


compare = protocol_compare(prepare, check, __file__, "[lr_schedule] running nnU-Net's configure_optimizers + on_train_epoch_start for every epoch")


if __name__ == "__main__":
    run_standalone(compare, "lr_schedule", sys.argv[1:])
