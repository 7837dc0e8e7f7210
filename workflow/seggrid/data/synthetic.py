"""A synthetic preprocessed case (benchmarks and ``seggrid cost``'s calibration): the files
the patch sampler reads (``<id>_img.npy``, ``<id>_seg.npy``, ``<id>.json`` with class locations)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import ndimage


def synthetic_case(root: Path, shape: tuple[int, int, int], seed: int = 0, n_classes: int = 4) -> str:
    """One preprocessed case (smooth image, ``n_classes - 1`` ellipsoid organs) in ``root``;
    returns its id."""
    rng = np.random.default_rng(seed)
    image = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), 2)
    image = (image - image.mean()) / image.std()
    seg = np.zeros(shape, dtype=np.uint8)
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    organs = range(1, n_classes)
    for c in organs:
        centre = [rng.uniform(0.25, 0.75) * s for s in shape]
        radius = [rng.uniform(0.08, 0.2) * s for s in shape]
        seg[sum(((g - m) / r) ** 2 for g, m, r in zip(grid, centre, radius)) <= 1] = c
    np.save(root / "bench_img.npy", image)
    np.save(root / "bench_seg.npy", seg)
    locations = {str(c): np.argwhere(seg == c)[::997][:500].tolist() for c in organs if (seg == c).any()}
    (root / "bench.json").write_text(json.dumps({"class_locations": locations}))
    return "bench"
