"""Sliding-window prediction as nnU-Net 2.8.1's predictor does it, in float32.

Facts read from nnU-Net 2.8.1 (``nnunetv2/inference/sliding_window_prediction.py`` and
``predict_from_raw_data.py``: ``compute_steps_for_sliding_window``, ``compute_gaussian``,
``nnUNetPredictor.predict_sliding_window_return_logits`` and the functions it calls); the code
is ours.

* Padding: an image smaller than the patch along an axis is padded with zeros to the patch
  there, ``(patch - size) // 2`` before and the rest after; the logits are cropped back.
* Tile starts per axis (:func:`tile_starts`): ``n = ceil((size - tile) / (tile * step)) + 1``
  tiles, the i-th at ``round(i * (size - tile) / (n - 1))`` (round half to even), so the
  first starts at 0 and the last ends at the image's end.
* Importance map (:func:`gaussian_importance`): a Gaussian with sigma ``tile / 8`` per axis,
  centred on voxel ``tile // 2``, cut beyond ``int(4 sigma + 0.5)`` voxels from the centre
  (scipy's ``gaussian_filter`` of a delta), scaled so that its maximum is 10; zeros (after
  the cast to the working dtype) become its smallest non-zero value.
* Mirroring: each TILE is predicted as it is and mirrored along every non-empty subset of
  the mirror axes; each mirrored output is flipped back and the LOGITS are averaged.
* Tiles: the mirror-averaged logits are multiplied by the importance map and summed; the sum
  of the importance maps divides them at the end.
* Folds: their logit maps are averaged (nnU-Net predicts one fold after the other; the
  mean is the same, so we predict every fold on a tile while the tile is at hand, and keep
  one accumulator).

nnU-Net accumulates in float16 (``predicted_logits`` and ``n_predictions`` are ``torch.half``
on every device, and so is its importance map); we accumulate in float32, which is what
``benchmarks/conformance/recipe/sliding_window.py`` measures against.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
import torch.nn.functional as F

from seggrid.engine.recipe import autocast

SPATIAL_AXES = (2, 3, 4)
#: nnU-Net's ``compute_gaussian`` arguments in its predictor.
SIGMA_SCALE = 1.0 / 8
VALUE_SCALING_FACTOR = 10.0
#: scipy ``gaussian_filter``'s default ``truncate`` (kernel radius in sigmas).
TRUNCATE = 4.0


def tta_flips(n: int) -> list[tuple[int, ...]]:
    """Axis sets (of a (B, C, z, y, x) tensor) to mirror: 1 = none; 2 = none + left-right (x);
    8 = none and every non-empty subset of (z, y, x), nnU-Net's mirroring of a 3D model."""
    if n == 1:
        return [()]
    if n == 2:
        return [(), (4,)]
    if n == 8:
        return [()] + [c for r in range(1, 4) for c in itertools.combinations(SPATIAL_AXES, r)]
    raise ValueError(f"tta_flips must be 1, 2 or 8, got {n}")


def tile_starts(image_size: tuple[int, ...] | list[int], tile_size: tuple[int, ...] | list[int],
                step: float) -> list[list[int]]:
    """First voxel of every tile along each axis (nnU-Net's rule, see the module docstring).

    ``image_size`` must be at least ``tile_size`` on every axis (pad first); ``step`` is the
    wanted stride as a fraction of the tile, in (0, 1]."""
    if not 0 < step <= 1:
        raise ValueError(f"tile step must be in (0, 1], got {step}")
    starts = []
    for size, tile in zip(image_size, tile_size):
        if size < tile:
            raise ValueError(f"image size {list(image_size)} is smaller than the tile {list(tile_size)}; pad it first")
        n_tiles = int(math.ceil((size - tile) / (tile * step))) + 1
        if n_tiles == 1:
            starts.append([0])
            continue
        spacing = (size - tile) / (n_tiles - 1)
        starts.append([int(round(spacing * i)) for i in range(n_tiles)])
    return starts


def gaussian_importance(tile_size: tuple[int, ...] | list[int], sigma_scale: float = SIGMA_SCALE,
                        value_scaling_factor: float = VALUE_SCALING_FACTOR, dtype: torch.dtype = torch.float32,
                        device: torch.device | str = "cpu") -> torch.Tensor:
    """Importance map of one tile, shape ``tile_size``, maximum ``value_scaling_factor``.

    Per axis ``exp(-(i - tile // 2)^2 / (2 sigma^2))`` with ``sigma = tile * sigma_scale``, 0
    beyond ``int(4 sigma + 0.5)`` voxels from the centre; the map is the product over axes
    (a Gaussian filter of a delta is separable), computed in float64, then cast to ``dtype``;
    entries that are 0 in ``dtype`` take the smallest non-zero entry."""
    profiles = []
    for tile in tile_size:
        sigma = tile * sigma_scale
        offset = np.arange(tile) - tile // 2
        profile = np.exp(-0.5 * (offset / sigma) ** 2)
        profile[np.abs(offset) > int(TRUNCATE * sigma + 0.5)] = 0.0
        profiles.append(profile)
    weights = value_scaling_factor * np.ones(())
    for profile in profiles:
        weights = np.multiply.outer(weights, profile)
    weights = torch.from_numpy(np.ascontiguousarray(weights)).to(device=device, dtype=dtype)
    zero = weights == 0
    if bool(zero.any()):
        weights[zero] = weights[~zero].min()
    return weights


def pad_to_tile(image: torch.Tensor, tile_size: tuple[int, ...] | list[int]) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """``image`` (z, y, x) zero-padded to at least ``tile_size`` (centred: ``(tile - size) // 2``
    before, the rest after), and the slices that crop the padded array back to the image."""
    missing = [max(t - s, 0) for s, t in zip(image.shape, tile_size)]
    crop = tuple(slice(m // 2, m // 2 + s) for m, s in zip(missing, image.shape))
    if not any(missing):
        return image, crop
    pad = []
    for m in reversed(missing):                 # F.pad takes the last axis first
        pad += [m // 2, m - m // 2]
    return F.pad(image, pad, mode="constant", value=0.0), crop


@torch.no_grad()
def sliding_window_logits(models: torch.nn.Module | list[torch.nn.Module], image: np.ndarray | torch.Tensor,
                          patch: list[int], step: float = 0.5, flips: int = 8,
                          device: torch.device | str = "cpu", precision: str = "fp32",
                          batch: int = 2) -> torch.Tensor:
    """Logits (C, z, y, x), float32 on ``device``, of one preprocessed single-channel image
    (z, y, x): Gaussian-weighted over tiles and averaged over the mirrorings (``flips``, see
    :func:`tta_flips`) and over ``models`` (the folds of one setting), as nnU-Net 2.8.1.

    ``batch`` mirrored copies of a tile go through a network at once. Memory: one float32
    (C, z, y, x) accumulator, one (z, y, x) weight map, the image, and a few tiles."""
    models = models if isinstance(models, list) else [models]
    device = torch.device(device)
    padded, crop = pad_to_tile(torch.as_tensor(image, dtype=torch.float32).to(device), patch)
    starts = tile_starts(padded.shape, patch, step)
    gaussian = gaussian_importance(patch, device=device)
    mirrorings = tta_flips(flips)
    weighted_gaussian = gaussian / (len(models) * len(mirrorings))
    weight = torch.zeros(padded.shape, dtype=torch.float32, device=device)
    logits = None
    for corner in itertools.product(*starts):
        box = tuple(slice(s, s + p) for s, p in zip(corner, patch))
        tile = padded[box][None, None]
        tile_sum = None
        for model in models:
            for first in range(0, len(mirrorings), batch):
                chunk = mirrorings[first:first + batch]
                inputs = torch.cat([torch.flip(tile, axes) if axes else tile for axes in chunk])
                with autocast(device, precision):
                    outputs = model(inputs)
                for k, axes in enumerate(chunk):
                    out = outputs[k:k + 1].float()
                    out = (torch.flip(out, axes) if axes else out)[0]
                    tile_sum = out.clone() if tile_sum is None else tile_sum.add_(out)
                del outputs, inputs
        if logits is None:
            logits = torch.zeros((tile_sum.shape[0], *padded.shape), dtype=torch.float32, device=device)
        logits[(slice(None), *box)] += tile_sum.mul_(weighted_gaussian)
        weight[box] += gaussian
        del tile_sum
    logits.div_(weight)
    del weight
    if padded.shape != torch.Size(image.shape):
        logits = logits[(slice(None), *crop)].clone()
    return logits
