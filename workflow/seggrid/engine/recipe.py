"""Registries of the training recipe: a setting names an entry, nothing is subclassed.

- ``optimizer``: ``sgd_nesterov`` (nnU-Net: momentum 0.99, weight decay 3e-5), ``adam``,
  ``radam`` (Carmo et al.), ``novograd`` (MONAI's, as in Ma et al. 2020).
- ``lr_schedule``: factor on the initial lr at ``epoch`` of ``total``, stepped per epoch:
  ``poly`` (1 - epoch/total)**0.9 (nnU-Net), ``cosine``, ``constant``.
- ``precision``: ``fp32``; ``fp16`` = autocast to float16 with a gradient scaler (GPU only;
  on a CPU it runs as fp32 and says so); ``bf16`` = autocast to bfloat16 (CPU and GPU), no scaler;
  ``auto`` = the mixed precision the device runs natively: fp16 on CUDA, bf16 on a CPU with
  bfloat16 instructions (AVX512-BF16 or AMX-BF16), fp32 on any other CPU (there bf16 is emulated:
  a demo step at (16, 32, 32) batch 2 took 3x as long as fp32 on an Intel Xeon without them).

Losses, norms, deep-supervision weights and augmentations have their own registries in
``losses.py``, ``network.py`` and ``augment.py``.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Callable

import torch

from seggrid.plan import Setting

OPTIMIZERS: dict[str, Callable] = {
    "sgd_nesterov": lambda params, s: torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, nesterov=True,
                                                      weight_decay=s.weight_decay),
    "adam": lambda params, s: torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay),
    "radam": lambda params, s: torch.optim.RAdam(params, lr=s.lr, weight_decay=s.weight_decay),
    "novograd": lambda params, s: _novograd()(params, lr=s.lr, weight_decay=s.weight_decay),
}

LR_SCHEDULES: dict[str, Callable[[int, int], float]] = {
    "poly": lambda epoch, total: (1 - epoch / total) ** 0.9,
    "cosine": lambda epoch, total: 0.5 * (1 + math.cos(math.pi * epoch / total)),
    "constant": lambda epoch, total: 1.0,
}

PRECISIONS = ("fp32", "fp16", "bf16", "auto")
#: /proc/cpuinfo flags of native bfloat16 arithmetic
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU has bfloat16 instructions (Linux /proc/cpuinfo flags; False elsewhere)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    flags = {f for line in text.splitlines() if line.startswith("flags") for f in line.split(":", 1)[1].split()}
    return any(f in flags for f in NATIVE_BF16_FLAGS)


def _novograd():
    """MONAI's NovoGrad, imported only when a setting asks for it (MONAI is a heavy import)."""
    from monai.optimizers import Novograd
    return Novograd


def build_optimizer(params, setting: Setting) -> torch.optim.Optimizer:
    if setting.optimizer not in OPTIMIZERS:
        raise KeyError(f"unknown optimizer '{setting.optimizer}'; known: {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[setting.optimizer](params, setting)


def learning_rate(setting: Setting, epoch: int) -> float:
    return setting.lr * LR_SCHEDULES[setting.lr_schedule](epoch, setting.epochs)


def effective_precision(precision: str, device: torch.device) -> str:
    """The precision that actually runs: fp16 needs CUDA, otherwise fp32; ``auto`` resolves to
    fp16 on CUDA, bf16 on a CPU with native bfloat16, else fp32."""
    if precision not in PRECISIONS:
        raise KeyError(f"unknown precision '{precision}'; known: {list(PRECISIONS)}")
    if precision == "auto":
        return "fp16" if device.type == "cuda" else ("bf16" if cpu_has_native_bf16() else "fp32")
    return "fp32" if precision == "fp16" and device.type != "cuda" else precision


def autocast(device: torch.device, precision: str):
    """Autocast context for the forward pass of ``precision`` (see :func:`effective_precision`)."""
    if precision == "fp32":
        return torch.autocast(device_type=device.type, enabled=False)
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    return torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and precision == "fp16")
