"""Benchmarks that print JSON (speed targets live here, never in unit tests).

``seggrid bench augment``: samples/s of the training data pipeline (patch sampling from a
memory-mapped case + augmentation) at a given patch, for the ``nnunet`` preset and, measured
side by side in the same run, the ``none`` preset (cropping only), so the ratio tells what
augmentation costs on this machine independently of its noise.
"""

from __future__ import annotations

import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from seggrid.augment import Augmenter, build_augmenter_config
from seggrid.io import package_versions
from seggrid.sampling import PatchSampler


def synthetic_case(root: Path, shape: tuple[int, int, int], seed: int = 0) -> str:
    """One preprocessed case (smooth image, three ellipsoid organs) in ``root``; returns its id."""
    rng = np.random.default_rng(seed)
    image = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), 2)
    image = (image - image.mean()) / image.std()
    seg = np.zeros(shape, dtype=np.uint8)
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    for c in (1, 2, 3):
        centre = [rng.uniform(0.25, 0.75) * s for s in shape]
        radius = [rng.uniform(0.08, 0.2) * s for s in shape]
        seg[sum(((g - m) / r) ** 2 for g, m, r in zip(grid, centre, radius)) <= 1] = c
    np.save(root / "bench_img.npy", image)
    np.save(root / "bench_seg.npy", seg)
    locations = {str(c): np.argwhere(seg == c)[::997][:500].tolist() for c in (1, 2, 3)}
    (root / "bench.json").write_text(json.dumps({"class_locations": locations}))
    return "bench"


def time_pipeline(root: Path, case: str, patch: list[int], batch: int, preset: str, batches: int,
                  device: torch.device, seed: int = 0) -> float:
    """Samples per second of ``batches`` batches after one warm-up batch."""
    aug = Augmenter(build_augmenter_config(preset, patch)) if preset != "none" else None
    sampler = PatchSampler(root, [case], patch, batch, 0.33, np.random.default_rng(seed), aug, device)
    sampler.next_batch()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(batches):
        sampler.next_batch()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return batches * batch / (time.perf_counter() - t0)


def bench_augment(patch: list[int], batch: int, batches: int, threads: int, device: str,
                  volume: list[int] | None = None, seed: int = 0) -> dict:
    torch.set_num_threads(threads)
    dev = torch.device(device)
    shape = tuple(volume) if volume else tuple(int(p * 2.5) for p in patch)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        case = synthetic_case(root, shape, seed)
        rates = {preset: time_pipeline(root, case, patch, batch, preset, batches, dev, seed)
                 for preset in ("nnunet", "none")}
    return {
        "benchmark": "augment", "patch": list(patch), "batch": batch, "batches": batches, "volume": list(shape),
        "device": str(dev), "threads": threads, "cpu": platform.processor() or platform.machine(),
        "samples_per_second": {k: round(v, 3) for k, v in rates.items()},
        "augmentation_cost_ratio": round(rates["none"] / rates["nnunet"], 3),
        "versions": package_versions(),
    }
