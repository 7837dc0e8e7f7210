"""Patch sampling from memory-mapped preprocessed cases: nnU-Net's foreground oversampling
and mirroring augmentation.

A batch of ``batch`` patches (z, y, x) = plan's effective patch: the last
``round(batch * oversample)`` samples are forced to contain foreground (a random class
present in the case, a random voxel of it, placed at a random position in the patch); the
others are placed uniformly. Regions outside the image are zero-padded (label 0).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


class PatchSampler:
    def __init__(self, preprocessed: str | Path, case_ids: list[str], patch: list[int], batch: int,
                 oversample: float, mirror_p: float, rng: np.random.Generator):
        if not case_ids:
            raise ValueError("PatchSampler needs at least one case")
        root = Path(preprocessed)
        self.patch = np.asarray(patch)
        self.batch = batch
        self.n_forced = int(round(batch * oversample))
        self.mirror_p = mirror_p
        self.rng = rng
        self.case_ids = list(case_ids)
        self.images = [np.load(root / f"{c}_img.npy", mmap_mode="r") for c in self.case_ids]
        self.labels = [np.load(root / f"{c}_seg.npy", mmap_mode="r") for c in self.case_ids]
        self.locations = [{int(k): np.asarray(v) for k, v in json.loads((root / f"{c}.json").read_text())
                           ["class_locations"].items()} for c in self.case_ids]

    def _corner(self, shape: np.ndarray, force_fg: bool, locs: dict) -> np.ndarray:
        if force_fg and locs:
            cls = self.rng.choice(sorted(locs))
            voxel = locs[cls][self.rng.integers(len(locs[cls]))]
            return voxel - self.rng.integers(0, self.patch)          # voxel lands inside the patch
        lo = np.minimum(0, shape - self.patch)
        hi = np.maximum(0, shape - self.patch)
        return np.array([self.rng.integers(a, b + 1) for a, b in zip(lo, hi)])

    def _crop(self, array: np.ndarray, corner: np.ndarray) -> np.ndarray:
        out = np.zeros(tuple(self.patch), dtype=array.dtype)
        src, dst = [], []
        for c, p, s in zip(corner, self.patch, array.shape):
            a, b = max(c, 0), min(c + p, s)
            src.append(slice(a, max(a, b)))
            dst.append(slice(a - c, a - c + max(0, b - a)))
        out[tuple(dst)] = array[tuple(src)]
        return out

    def sample(self, force_fg: bool) -> tuple[np.ndarray, np.ndarray]:
        i = self.rng.integers(len(self.case_ids))
        corner = self._corner(np.asarray(self.images[i].shape), force_fg, self.locations[i])
        image, label = self._crop(self.images[i], corner), self._crop(self.labels[i], corner)
        for ax in range(3):
            if self.rng.random() < self.mirror_p:
                image, label = np.flip(image, ax), np.flip(label, ax)
        return image, label

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """(image (B, 1, z, y, x) float32, label (B, 1, z, y, x) int64)."""
        pairs = [self.sample(force_fg=i >= self.batch - self.n_forced) for i in range(self.batch)]
        images = np.stack([p[0] for p in pairs])[:, None].astype(np.float32)
        labels = np.stack([p[1] for p in pairs])[:, None].astype(np.int64)
        return images, labels
