"""Resampling on nnU-Net 2.8.1's grid (facts from ``nnunetv2/preprocessing/resampling/
default_resampling.py``, skimage's ``resize`` and batchgenerators' ``resize_segmentation``).

Grid: every resampling here uses the HALF-VOXEL grid. Resampling ``n`` samples onto ``m``,
output ``j`` reads input coordinate ``(j + 0.5) n / m - 0.5`` (the voxel centres of two grids
that span the same extent), never the corner-aligned ``j (n - 1) / (m - 1)``. Outside the
input the edge value repeats (skimage's ``edge`` = scipy's ``nearest`` mode).

* Images (:func:`resample_image`): cubic spline (``scipy.ndimage.zoom(order=3,
  grid_mode=True, mode='nearest')``), clipped to the input's range, as skimage's
  ``resize(order=3, mode='edge', anti_aliasing=False)``; bit for bit the same float32 values.
* Labels (:func:`resample_labels`): each label's indicator resampled linearly (float64), the
  label with the highest score wins; where the top score is shared, the nearest-neighbour
  label wins if it is among the tied ones, else the lowest tied label (batchgenerators'
  ``resize_segmentation`` with its default ``seg_tiebreak='nearest'``).
* Class scores (:func:`resample_scores`, probabilities or logits, torch, any device):
  linear, axis by axis, in float32 with positions computed in float64.
* Anisotropic grids (:func:`separate_axis`): the two in-plane axes are resampled slice by
  slice as above and the low-resolution axis by nearest neighbour, index
  ``floor((j + 0.5) n / m - 0.5 + 0.5)`` clamped to the input (``map_coordinates(order=0)``).

Memory: labels are resampled slice by slice (a few float64 slices at a time), class scores
one class at a time; only the image's 3D cubic path holds a float64 copy of its input (scipy's
spline prefilter).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy import ndimage

from seggrid.data.geometry import ANISO_THRESHOLD


def is_anisotropic(spacing: Sequence[float], threshold: float = ANISO_THRESHOLD) -> bool:
    """max(spacing) / min(spacing) > threshold (nnU-Net's ``get_do_separate_z``)."""
    return float(np.max(spacing) / np.min(spacing)) > threshold


def lowres_axes(spacing: Sequence[float]) -> list[int]:
    """The axes with the largest spacing (nnU-Net's ``get_lowres_axis``)."""
    spacing = np.asarray(spacing, dtype=np.float64)
    return [int(a) for a in np.where(max(spacing) / spacing == 1)[0]]


def separate_axis(current: Sequence[float], new: Sequence[float]) -> int | None:
    """The axis resampled by nearest neighbour when going from spacing ``current`` to ``new``
    (mm, one per axis), or None for plain 3D resampling.

    nnU-Net's ``determine_do_sep_z_and_axis`` with ``force_separate_z=None``: if ``current``
    is anisotropic, its coarsest axis; else if ``new`` is, its coarsest axis; in either case
    None when two or three axes share the largest spacing (``new`` is then not consulted)."""
    if is_anisotropic(current):
        axes = lowres_axes(current)
    elif is_anisotropic(new):
        axes = lowres_axes(new)
    else:
        return None
    return axes[0] if len(axes) == 1 else None


def source_coordinates(n_in: int, n_out: int) -> np.ndarray:
    """Input coordinate of each of ``n_out`` output samples, float64: ``(j + 0.5) n / m - 0.5``."""
    scale = float(n_in) / n_out
    return scale * (np.arange(n_out, dtype=np.float64) + 0.5) - 0.5


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Nearest input sample of each output sample (int64): ``floor(coordinate + 0.5)`` clamped
    to ``[0, n_in - 1]``, as scipy's order-0 interpolation rounds (halves go up)."""
    return np.clip(np.floor(source_coordinates(n_in, n_out) + 0.5), 0, n_in - 1).astype(np.int64)


def linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Linear interpolation along one axis: lower and upper input index (clamped to the input,
    i.e. edge values repeat) and their weights (float64) per output sample, computed as scipy
    computes them: ``w_low = 1 - frac``, ``w_high = 1 - w_low`` (frac = coordinate - floor)."""
    coord = source_coordinates(n_in, n_out)
    start = np.floor(coord)
    w_low = 1.0 - (coord - start)
    low = np.clip(start, 0, n_in - 1).astype(np.int64)
    high = np.clip(start + 1, 0, n_in - 1).astype(np.int64)
    return low, high, w_low, 1.0 - w_low


def skimage_resize(array: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """skimage's ``resize(array, shape, order, mode='edge', anti_aliasing=False)`` (clip on):
    ``ndimage.zoom`` on the half-voxel grid with edge values outside, onto exactly ``shape``
    (zoom factors computed as skimage computes them), clipped to ``array``'s own min and max.
    Same dtype out as in; scipy interpolates in float64 and rounds once."""
    factors = [1.0 / f for f in np.divide(array.shape, shape)]
    out = ndimage.zoom(array, factors, order=order, mode="nearest", grid_mode=True)
    if out.shape != tuple(shape):
        raise AssertionError(f"zoom gave {out.shape}, wanted {tuple(shape)}")
    np.clip(out, array.min(), array.max(), out=out)
    return out


def _moved(shape: Sequence[int], axis: int) -> list[int]:
    return [shape[axis]] + [s for a, s in enumerate(shape) if a != axis]


def resample_image(image: np.ndarray, shape: Sequence[int], axis: int | None = None) -> np.ndarray:
    """(z, y, x) image onto ``shape``, float32: cubic on the half-voxel grid (module docstring);
    with ``axis``, cubic per slice across ``axis`` (each slice clipped to its own range) and
    nearest neighbour along it. Unchanged (as float32) when the shape already matches."""
    image = np.asarray(image, dtype=np.float32)
    shape = [int(s) for s in shape]
    if list(image.shape) == shape:
        return image
    if axis is None:
        return skimage_resize(image, shape, 3)
    src = np.moveaxis(image, axis, 0)
    target = _moved(shape, axis)
    pick = nearest_indices(src.shape[0], target[0])
    out = np.empty(target, dtype=np.float32)
    for s in np.unique(pick):
        out[pick == s] = skimage_resize(np.ascontiguousarray(src[s]), target[1:], 3)
    return np.moveaxis(out, 0, axis)


class _ArgmaxNearestTie:
    """Running argmax over label scores with batchgenerators' ``'nearest'`` tie-break.

    Labels are added in ascending order; a label beats the current best only with a strictly
    higher score; at the end, wherever the nearest-neighbour label's score equals the top
    score (and is > 0), the nearest-neighbour label is taken. Labels never added score 0."""

    def __init__(self, nearest: np.ndarray):
        self.nearest = nearest
        self.best = np.zeros(nearest.shape, dtype=np.float64)
        self.winner: np.ndarray | None = None
        self.nearest_on_top = np.zeros(nearest.shape, dtype=bool)

    def add(self, label: int, score: np.ndarray) -> None:
        if self.winner is None:
            self.winner = np.full(self.nearest.shape, label, dtype=np.uint8)
        is_nearest = self.nearest == label
        tie = (score == self.best) & (score > 0) & is_nearest
        self.nearest_on_top |= tie
        better = score > self.best
        np.copyto(self.nearest_on_top, is_nearest, where=better)
        self.winner[better] = label
        np.maximum(self.best, score, out=self.best)

    def labels(self) -> np.ndarray:
        if self.winner is None:
            return np.zeros(self.nearest.shape, dtype=np.uint8)
        np.copyto(self.winner, self.nearest, where=self.nearest_on_top)
        return self.winner


def _present(labels: np.ndarray, n_classes: int) -> list[int]:
    counts = np.bincount(labels.ravel(), minlength=n_classes)[:n_classes]
    return [int(c) for c in np.flatnonzero(counts)]


def resample_label_slice(labels: np.ndarray, shape: Sequence[int], n_classes: int) -> np.ndarray:
    """One 2D label slice (uint8) onto ``shape``: batchgenerators' ``resize_segmentation``
    order 1 (each present label's indicator resampled linearly in float64, argmax with the
    nearest-neighbour tie-break). Labels >= ``n_classes`` are ignored."""
    iy, ix = nearest_indices(labels.shape[0], shape[0]), nearest_indices(labels.shape[1], shape[1])
    vote = _ArgmaxNearestTie(labels[np.ix_(iy, ix)])
    for c in _present(labels, n_classes):
        vote.add(c, skimage_resize((labels == c).astype(np.float64), shape, 1))
    return vote.labels()


def _labels_3d(labels: np.ndarray, shape: list[int], n_classes: int) -> np.ndarray:
    """3D linear label resampling, one output slice at a time, with the same floating-point
    operations as ``ndimage.zoom(order=1)`` (what skimage's ``resize`` runs): each label's score
    is the sum, over the 8 taps in (z, y, x) order, of ``(w_z * w_y) * w_x`` where the tap holds
    that label; so the scores, and the ties the nearest-neighbour rule settles, are bit for bit
    skimage's. Peak: the output plus a few float64 slices."""
    (z0, z1, *wz), (y0, y1, *wy), (x0, x1, *wx) = (linear_taps(n, m) for n, m in zip(labels.shape, shape))
    iz = nearest_indices(labels.shape[0], shape[0])
    iy, ix = nearest_indices(labels.shape[1], shape[1]), nearest_indices(labels.shape[2], shape[2])
    rows, cols = (y0, y1), (x0, x1)
    row_w, col_w = [w[:, None] for w in wy], [w[None, :] for w in wx]
    out = np.empty(shape, dtype=np.uint8)
    cache: dict[int, tuple[list[np.ndarray], np.ndarray]] = {}   # input slice -> 4 in-plane tap planes, labels

    def taps(s: int) -> tuple[list[np.ndarray], np.ndarray]:
        if s not in cache:
            cache[s] = ([labels[s][np.ix_(r, c)] for r in rows for c in cols],
                        np.bincount(labels[s].ravel(), minlength=n_classes)[:n_classes] > 0)
        return cache[s]

    for j in range(shape[0]):
        for s in [s for s in cache if s < z0[j]]:
            del cache[s]
        (low, in_low), (high, in_high) = taps(int(z0[j])), taps(int(z1[j]))
        planes, present = low + high, in_low | in_high
        weights = [(w * row_w[b]) * col_w[c] for w in (wz[0][j], wz[1][j]) for b in (0, 1) for c in (0, 1)]
        vote = _ArgmaxNearestTie(labels[iz[j]][np.ix_(iy, ix)])
        for c in np.flatnonzero(present):
            score = np.zeros(shape[1:], dtype=np.float64)
            for plane, weight in zip(planes, weights):
                score += (plane == c) * weight
            vote.add(int(c), np.clip(score, 0.0, 1.0, out=score))
        out[j] = vote.labels()
    return out


def resample_labels(labels: np.ndarray, shape: Sequence[int], n_classes: int, axis: int | None = None) -> np.ndarray:
    """(z, y, x) uint8 labels onto ``shape`` (uint8): linear per-label scores, argmax with the
    nearest-neighbour tie-break (module docstring); with ``axis``, that per slice across
    ``axis`` and nearest neighbour along it (nnU-Net's order_z 0). Peak memory: the output and
    a few float64 slices. Labels >= ``n_classes`` are ignored (their voxels go to the others)."""
    labels = np.asarray(labels).astype(np.uint8, copy=False)
    shape = [int(s) for s in shape]
    if list(labels.shape) == shape:
        return labels
    if axis is None:
        return _labels_3d(labels, shape, n_classes)
    src = np.moveaxis(labels, axis, 0)
    target = _moved(shape, axis)
    pick = nearest_indices(src.shape[0], target[0])
    out = np.empty(target, dtype=np.uint8)
    for s in np.unique(pick):
        out[pick == s] = resample_label_slice(np.ascontiguousarray(src[s]), target[1:], n_classes)
    return np.moveaxis(out, 0, axis)


def _linear_along(t: torch.Tensor, dim: int, n_out: int) -> torch.Tensor:
    """Linear resampling of ``t`` along ``dim`` onto ``n_out`` samples, half-voxel grid."""
    if t.shape[dim] == n_out:
        return t
    low, high, _, weight = linear_taps(t.shape[dim], n_out)
    view = [1] * t.dim()
    view[dim] = n_out
    w = torch.from_numpy(weight.astype(np.float32)).to(t.device).view(view)
    a = t.index_select(dim, torch.from_numpy(low).to(t.device))
    return a.lerp_(t.index_select(dim, torch.from_numpy(high).to(t.device)), w)


def resample_scores(score: torch.Tensor, shape: Sequence[int], axis: int | None = None,
                    chunk: int = 4) -> torch.Tensor:
    """One class's (z, y, x) scores (probabilities or logits, float32, any device) onto
    ``shape``: linear on the half-voxel grid (nnU-Net's order 1, which it runs in float64; here
    float32 with float64 positions, so values agree to ~1e-7 relative); with ``axis``, nearest
    neighbour along it. Built ``chunk`` output slices at a time (along ``axis``, else axis 0):
    the input slices they read are resampled in-plane, then blended (or picked), so besides the
    output only chunk-sized temporaries exist. May return ``score`` itself when the shape matches."""
    t = torch.as_tensor(score, dtype=torch.float32)
    shape = [int(s) for s in shape]
    if list(t.shape) == shape:
        return t
    lead = 0 if axis is None else axis
    src, target = t.movedim(lead, 0), _moved(shape, lead)
    if axis is None:
        low, high, _, weight = linear_taps(src.shape[0], target[0])
    else:
        low = high = nearest_indices(src.shape[0], target[0])
        weight = np.zeros(target[0])
    inplane = sorted((1, 2), key=lambda d: target[d] / src.shape[d])     # shrinking axis first
    out = torch.empty(target, dtype=torch.float32, device=t.device)
    for j0 in range(0, target[0], chunk):
        part = slice(j0, min(j0 + chunk, target[0]))
        needed = np.unique(np.concatenate([low[part], high[part]]))
        planes = src.index_select(0, torch.from_numpy(needed).to(t.device))
        for d in inplane:
            planes = _linear_along(planes, d, target[d])
        a = planes.index_select(0, torch.from_numpy(np.searchsorted(needed, low[part])).to(t.device))
        if axis is None:
            b = planes.index_select(0, torch.from_numpy(np.searchsorted(needed, high[part])).to(t.device))
            a.lerp_(b, torch.from_numpy(weight[part].astype(np.float32)).to(t.device).view(-1, 1, 1))
        out[part] = a
        del planes, a
    return out.movedim(0, lead)


def scores_to_labels(score_of: Callable[[int], torch.Tensor | None], n_classes: int, shape: Sequence[int],
                     axis: int | None = None) -> np.ndarray | None:
    """uint8 argmax over classes of :func:`resample_scores` (ties keep the lower class, as
    ``argmax``), one class at a time: the peak is about three float32 volumes of ``shape``.
    ``score_of(c)``: class ``c``'s scores or None (it scores 0 everywhere). None if no class
    has scores."""
    labels, best = None, None
    for c in range(n_classes):
        score = score_of(c)
        if score is None:
            continue
        r = resample_scores(score, shape, axis)
        if best is None:
            best = r.clone()            # r may share memory with the caller's scores
            labels = torch.full(r.shape, c, dtype=torch.uint8, device=r.device)
            del r                       # not alive while the next class is resampled
            continue
        labels[r > best] = c
        torch.maximum(best, r, out=best)
        del r
    return None if labels is None else labels.cpu().numpy()
