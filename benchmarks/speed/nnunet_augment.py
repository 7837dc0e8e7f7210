"""nnU-Net v2's own training augmentation on the same synthetic case as `seggrid bench augment`.

Run it with a Python that has nnunetv2 installed (a separate environment: nnunetv2 pins its
own torch), from the repository root:

    /path/to/nnunet-venv/bin/python benchmarks/speed/nnunet_augment.py --patch 64 160 160 --batches 20

It reproduces what one nnU-Net data-loader worker does per sample: cut the initial patch
(nnU-Net's get_patch_size for the rotation range, scale (0.85, 1.25)) around a random or
foreground voxel, then apply nnUNetTrainer.get_training_transforms (no deep-supervision label
downsampling, to match what we time). Prints JSON with samples/s.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "workflow"))
from seggrid.data.synthetic import synthetic_case  # noqa: E402

from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size  # noqa: E402
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patch", type=int, nargs=3, default=[64, 160, 160])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    patch = np.array(a.patch)
    rotation = (-30 / 360 * 2 * np.pi, 30 / 360 * 2 * np.pi)
    initial = np.array(get_patch_size(patch, rotation, rotation, rotation, (0.85, 1.25))).astype(int)
    transforms = nnUNetTrainer.get_training_transforms(tuple(patch), rotation, None, (0, 1, 2), False)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        case = synthetic_case(root, tuple(int(p * 2.5) for p in a.patch))
        image = np.load(root / f"{case}_img.npy", mmap_mode="r")
        seg = np.load(root / f"{case}_seg.npy", mmap_mode="r")
        fg = np.argwhere(np.asarray(seg[::4, ::4, ::4]) > 0) * 4

        def one_sample(force_fg: bool):
            centre = fg[rng.integers(len(fg))] if force_fg else rng.integers(0, image.shape)
            lo = centre - initial // 2
            out_i = np.zeros(tuple(initial), np.float32)
            out_s = np.full(tuple(initial), -1, np.int16)
            src = tuple(slice(max(l, 0), min(l + n, s)) for l, n, s in zip(lo, initial, image.shape))
            dst = tuple(slice(sl.start - l, sl.stop - l) for sl, l in zip(src, lo))
            out_i[dst], out_s[dst] = image[src], seg[src]
            return transforms(image=torch.from_numpy(out_i[None]), segmentation=torch.from_numpy(out_s[None]))

        def batch():
            return [one_sample(b >= a.batch - round(a.batch * 0.33)) for b in range(a.batch)]

        batch()
        t0 = time.perf_counter()
        for _ in range(a.batches):
            out = batch()
        rate = a.batches * a.batch / (time.perf_counter() - t0)
    assert tuple(out[0]["image"].shape[1:]) == tuple(patch)
    import nnunetv2
    print(json.dumps({"benchmark": "nnunet_augment", "patch": a.patch, "batch": a.batch, "batches": a.batches,
                      "initial_patch": initial.tolist(), "threads": a.threads, "samples_per_second": round(rate, 3),
                      "versions": {"nnunetv2": getattr(nnunetv2, "__version__", "2.x"), "torch": torch.__version__}},
                     indent=1))


if __name__ == "__main__":
    main()
