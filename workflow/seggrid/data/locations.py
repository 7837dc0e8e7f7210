"""Foreground class locations for the sampler's forced-foreground patches.

Count rule (nnU-Net 2.8.1, ``DefaultPreprocessor._sample_foreground_locations`` in
``nnunetv2/preprocessing/preprocessors/default_preprocessor.py``): a class with ``n`` voxels in
the preprocessed label array keeps ``max(min(10000, n), ceil(n * 0.01))`` of them, drawn
uniformly without replacement; only foreground labels (not background; seggrid has no ignore
label) and only classes present in the case (nnU-Net stores an empty list for an absent class,
which its loader never picks). nnU-Net seeds a ``RandomState(1234)`` per case; we draw from the
case's own seeded generator (preprocessing's ``seed + i``), so the output is deterministic.

Storage: at AMOS size a class of 10^6 voxels keeps 10^4 locations and 15 classes 1.5 * 10^5
(z, y, x) triples, about 2.4 MB as a JSON list per case. They go to ``<case>_locations.npy``
instead, one (N, 3) int32 array with the rows of each class contiguous (raster order within a
class), and ``<case>.json`` holds ``class_location_rows`` {class: [start, stop]}. The sampler
memory-maps the file through :func:`load_class_locations`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from seggrid.errors import SeggridError

MIN_LOCATIONS = 10_000
MIN_COVERAGE = 0.01


def n_locations(n_voxels: int) -> int:
    """Locations kept for a class of ``n_voxels`` voxels: ``max(min(10000, n), ceil(n * 0.01))``
    (float product, as nnU-Net computes it)."""
    return max(min(MIN_LOCATIONS, n_voxels), int(math.ceil(n_voxels * MIN_COVERAGE)))


def sample_class_locations(seg: np.ndarray, rng: np.random.Generator,
                           n_classes: int | None = None) -> tuple[np.ndarray, dict[str, list[int]], dict[str, int]]:
    """Sample locations of every foreground class present in ``seg`` ((z, y, x) integer labels).

    Returns ``(locations, rows, voxel_counts)``: ``locations`` (N, 3) int32 voxel indices,
    class by class in increasing label order, raster order within a class; ``rows[str(c)]`` =
    ``[start, stop]`` of class ``c`` in it; ``voxel_counts[str(c)]`` = its voxels in ``seg``.
    Labels ``>= n_classes`` (when given) are ignored. One pass finds the foreground, a stable
    sort groups it by class; only the chosen voxels are converted to (z, y, x)."""
    flat = seg.reshape(-1)
    foreground = np.flatnonzero(flat)
    values = flat[foreground]
    order = np.argsort(values, kind="stable")           # stays raster-ordered within a class
    foreground, values = foreground[order], values[order]
    del order
    classes, starts, counts = np.unique(values, return_index=True, return_counts=True)
    picked, rows, voxel_counts, at = [], {}, {}, 0
    for c, start, count in zip(classes.tolist(), starts.tolist(), counts.tolist()):
        if n_classes is not None and c >= n_classes:
            continue
        k = n_locations(count)
        chosen = np.sort(rng.choice(count, size=k, replace=False)) + start
        picked.append(foreground[chosen])
        rows[str(c)], voxel_counts[str(c)] = [at, at + k], count
        at += k
    flat_idx = np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)
    locations = np.stack(np.unravel_index(flat_idx, seg.shape), axis=1).astype(np.int32)
    return locations.reshape(-1, 3), rows, voxel_counts


def locations_file(case_id: str) -> str:
    return f"{case_id}_locations.npy"


def load_class_locations(preprocessed_dir: str | Path, case_id: str, props: dict | None = None,
                         mmap: bool = True) -> dict[int, np.ndarray]:
    """{class: (n, 3) int32 (z, y, x) voxel indices in the preprocessed arrays} for one case.

    Reads ``<case>.json`` (or the already parsed ``props``) and memory-maps
    ``<case>_locations.npy`` (``mmap=False`` loads it). A ``class_locations`` {class: [[z, y, x],
    ...]} list in the JSON (older outputs, ``seggrid bench``) is read as well. Classes absent
    from the case have no entry."""
    root = Path(preprocessed_dir)
    if props is None:
        path = root / f"{case_id}.json"
        try:
            props = json.loads(path.read_text())
        except FileNotFoundError:
            raise SeggridError(f"{path}: case properties not found (was the case preprocessed?)") from None
    if "class_location_rows" in props:
        path = root / props.get("class_locations_file", locations_file(case_id))
        try:
            table = np.load(path, mmap_mode="r" if mmap else None)
        except FileNotFoundError:
            raise SeggridError(f"{path}: class locations not found (rerun preprocessing)") from None
        if table.ndim != 2 or table.shape[1] != 3:
            raise SeggridError(f"{path}: expected an (N, 3) array of (z, y, x) locations, got {table.shape}")
        return {int(c): table[a:b] for c, (a, b) in props["class_location_rows"].items()}
    if "class_locations" in props:
        return {int(c): np.asarray(v, dtype=np.int32).reshape(-1, 3) for c, v in props["class_locations"].items()}
    raise SeggridError(f"{root / (case_id + '.json')}: no class locations (a case without labels?)")
