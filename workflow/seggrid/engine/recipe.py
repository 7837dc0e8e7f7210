"""Registries of the training recipe: a setting names an entry, nothing is subclassed.

- ``optimizer``: ``sgd_nesterov`` (nnU-Net: momentum 0.99, weight decay 3e-5), ``adam``,
  ``radam`` (Carmo et al.), ``novograd`` (MONAI's, as in Ma et al. 2020).
- ``lr_schedule``: factor on the initial lr at ``epoch`` of ``total``, stepped per epoch:
  ``poly`` (1 - epoch/total)**0.9 (nnU-Net), ``cosine``, ``constant``.
- ``precision``: ``fp32``; ``fp16`` = autocast to float16 with a gradient scaler (GPU only;
  on a CPU it runs as fp32 and says so); ``bf16`` = autocast to bfloat16 (CPU and GPU), no scaler.

Losses, norms, deep-supervision weights and augmentations have their own registries in
``losses.py``, ``network.py`` and ``augment.py``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

OPTIMIZERS: dict[str, Callable] = {
    "sgd_nesterov": lambda params, s: torch.optim.SGD(params, lr=s["lr"], momentum=s["momentum"], nesterov=True,
                                                      weight_decay=s["weight_decay"]),
    "adam": lambda params, s: torch.optim.Adam(params, lr=s["lr"], weight_decay=s["weight_decay"]),
    "radam": lambda params, s: torch.optim.RAdam(params, lr=s["lr"], weight_decay=s["weight_decay"]),
    "novograd": lambda params, s: _novograd()(params, lr=s["lr"], weight_decay=s["weight_decay"]),
}

LR_SCHEDULES: dict[str, Callable[[int, int], float]] = {
    "poly": lambda epoch, total: (1 - epoch / total) ** 0.9,
    "cosine": lambda epoch, total: 0.5 * (1 + math.cos(math.pi * epoch / total)),
    "constant": lambda epoch, total: 1.0,
}

PRECISIONS = ("fp32", "fp16", "bf16")


def _novograd():
    """MONAI's NovoGrad, imported only when a setting asks for it (MONAI is a heavy import)."""
    from monai.optimizers import Novograd
    return Novograd


def build_optimizer(params, setting: dict) -> torch.optim.Optimizer:
    if setting["optimizer"] not in OPTIMIZERS:
        raise KeyError(f"unknown optimizer '{setting['optimizer']}'; known: {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[setting["optimizer"]](params, setting)


def learning_rate(setting: dict, epoch: int) -> float:
    return setting["lr"] * LR_SCHEDULES[setting["lr_schedule"]](epoch, setting["epochs"])


def effective_precision(precision: str, device: torch.device) -> str:
    """The precision that actually runs: fp16 needs CUDA, otherwise fp32."""
    if precision not in PRECISIONS:
        raise KeyError(f"unknown precision '{precision}'; known: {list(PRECISIONS)}")
    return "fp32" if precision == "fp16" and device.type != "cuda" else precision


def autocast(device: torch.device, precision: str):
    """Autocast context for the forward pass of ``precision`` (see :func:`effective_precision`)."""
    if precision == "fp32":
        return torch.autocast(device_type=device.type, enabled=False)
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    return torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and precision == "fp16")
