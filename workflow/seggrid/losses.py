"""Loss registry: a setting's ``loss`` names one of :data:`LOSSES`.

Every loss takes logits (B, C, z, y, x) and an integer target (B, 1, z, y, x) and returns a
scalar. Compound losses add their terms with weight 1 (as nnU-Net's Dice + CE).

Terms
- ``dice``: soft Dice over the foreground classes, smooth 1e-5; 1 - mean Dice. Per sample and
  class, or with ``batch_dice`` over the whole batch per class. Under torchrun the batch-Dice
  TP/FP/FN sums are all-reduced over ranks (:func:`global_sums`), so the loss is that of the
  GLOBAL batch and DDP's gradient equals the single-process gradient. (MONAI's DiceLoss, used
  before, cannot reduce its terms across ranks.)
- ``ce``: cross-entropy.
- ``focal``: focal loss (Lin et al.), gamma 2, on the softmax: mean over voxels of
  -(1 - p_t)**2 * log(p_t), p_t the probability of the true class.
- ``topk``: mean cross-entropy of the 10 % voxels with the highest cross-entropy.
- ``perimeter``: our 3D version of El Jurdi et al.'s perimeter loss. The soft boundary of a
  class probability map p is ``p - erode(p)`` with a soft 3x3x3 erosion (min-pooling, written
  as -maxpool(-p)); its sum is a differentiable surface size S(p) (in voxels). Per sample and
  foreground class the term is ``((S(p) - S(y)) / (S(p) + S(y) + 1))**2``, which lies in
  [0, 1), is 0 when the predicted and true surfaces have the same size and needs no scale
  tuning; the loss is its mean over samples and classes.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
import torch.distributed as dist
from torch import nn

TOPK_FRACTION = 0.10


def _onehot(target: torch.Tensor, n_classes: int) -> torch.Tensor:
    return F.one_hot(target[:, 0].long(), n_classes).movedim(-1, 1).to(torch.float32)


def global_sums(local: torch.Tensor) -> torch.Tensor:
    """Sum of ``local`` over all ranks, with a gradient that makes DDP exact.

    Value: the all-reduced sum. Gradient: ``world`` times the local one, because DDP averages
    the ranks' gradients, and (1/world) * sum_r world * dL/dS * dS_r/dtheta is the gradient of
    the global-batch loss. The all-reduce happens in the forward pass only; a collective in the
    backward pass (torch.distributed.nn's all_reduce) interleaves with DDP's own gradient
    all-reduces in a different order on each rank and deadlocks under gloo.
    """
    world = dist.get_world_size()
    total = local.detach().clone()
    dist.all_reduce(total)
    return total + world * (local - local.detach())


class DiceTerm(nn.Module):
    def __init__(self, batch_dice: bool = False, smooth: float = 1e-5):
        super().__init__()
        self.batch_dice, self.smooth = batch_dice, smooth

    def forward(self, logits, target):
        probs = torch.softmax(logits, dim=1)[:, 1:]
        truth = _onehot(target, logits.shape[1])[:, 1:]
        dims = (0, 2, 3, 4) if self.batch_dice else (2, 3, 4)
        tp = (probs * truth).sum(dims)
        fp = (probs * (1 - truth)).sum(dims)
        fn = ((1 - probs) * truth).sum(dims)
        if self.batch_dice and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            tp, fp, fn = global_sums(torch.stack([tp, fp, fn])).unbind(0)
        dice = (2 * tp + self.smooth) / (2 * tp + fp + fn + self.smooth).clamp_min(1e-8)
        return 1 - dice.mean()


class CETerm(nn.Module):
    def forward(self, logits, target):
        return F.cross_entropy(logits, target[:, 0].long())


class FocalTerm(nn.Module):
    """Per-voxel focal cross-entropy -(1 - p_t)**gamma * log(p_t), averaged over voxels."""

    def __init__(self, gamma: float = 2.0):
        super().__init__()
        self.gamma = gamma

    def forward(self, logits, target):
        log_p = torch.log_softmax(logits, dim=1).gather(1, target.long())
        return (-(1 - log_p.exp()) ** self.gamma * log_p).mean()


class TopKTerm(nn.Module):
    def __init__(self, fraction: float = TOPK_FRACTION):
        super().__init__()
        self.fraction = fraction

    def forward(self, logits, target):
        ce = F.cross_entropy(logits, target[:, 0].long(), reduction="none").flatten()
        k = max(1, int(ce.numel() * self.fraction))
        return ce.topk(k, sorted=False).values.mean()


def soft_surface(p: torch.Tensor) -> torch.Tensor:
    """Soft surface size per (sample, channel): sum of p - erode(p), erode = 3x3x3 min-pooling."""
    eroded = -F.max_pool3d(-p, kernel_size=3, stride=1, padding=1)
    return (p - eroded).flatten(2).sum(-1)


class PerimeterTerm(nn.Module):
    def forward(self, logits, target):
        probs = torch.softmax(logits, dim=1)[:, 1:]
        truth = _onehot(target, logits.shape[1]).to(probs.dtype)[:, 1:]
        s_pred, s_true = soft_surface(probs), soft_surface(truth)
        return (((s_pred - s_true) / (s_pred + s_true + 1.0)) ** 2).mean()


TERMS: dict[str, Callable[[], nn.Module]] = {
    "dice": DiceTerm, "ce": CETerm, "focal": FocalTerm, "topk": TopKTerm, "perimeter": PerimeterTerm,
}

LOSSES: dict[str, tuple[str, ...]] = {
    "dice_ce": ("dice", "ce"),
    "dice_focal": ("dice", "focal"),
    "dice_topk": ("dice", "topk"),
    "dice_perimeter": ("dice", "perimeter"),
    "topk": ("topk",),
}


class CompoundLoss(nn.Module):
    def __init__(self, terms: tuple[str, ...], batch_dice: bool = False):
        super().__init__()
        self.names = terms
        self.terms = nn.ModuleList(DiceTerm(batch_dice) if t == "dice" else TERMS[t]() for t in terms)

    def forward(self, logits, target):
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        return sum(term(logits, target) for term in self.terms)


def build_loss(name: str, batch_dice: bool = False) -> CompoundLoss:
    if name not in LOSSES:
        raise KeyError(f"unknown loss '{name}'; known: {sorted(LOSSES)}")
    return CompoundLoss(LOSSES[name], batch_dice)


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of a loss over stacked deep-supervision outputs (B, heads, C, ...)."""

    def __init__(self, loss: nn.Module, weights: torch.Tensor):
        super().__init__()
        self.loss = loss
        self.register_buffer("weights", weights)

    def forward(self, outputs, target):
        if outputs.ndim == target.ndim:          # no deep supervision
            return self.loss(outputs, target)
        return sum(w * self.loss(outputs[:, i], target) for i, w in enumerate(self.weights) if w > 0)
