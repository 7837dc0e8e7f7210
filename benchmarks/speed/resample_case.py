"""One AMOS-sized case resampled to the target spacing, in this process, on one thread; JSON out.

    python benchmarks/speed/resample_case.py seggrid IMAGE LABEL      # ours (seggrid.data.preprocess)
    python benchmarks/speed/resample_case.py nnunet  IMAGE LABEL      # nnU-Net 2.8.1 (its own venv)

Both sides read the same NIfTI pair with nibabel, put it in (z, y, x) order, and resample the
image (cubic in-plane, nearest along z: the case is anisotropic) and the labels (linear, one
class at a time) from the file's spacing to 2.0 x 0.68825 x 0.68825 mm. `seconds` covers the
two resampling calls only; `peak_rss_mb` is the process's peak (ru_maxrss). Ours also reports
the whole `preprocess_case` (load, reorient, crop, normalise, resample, class locations, save).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)
TARGET = [2.0, 0.68825001, 0.68825001]


def load(image_path: str, label_path: str):
    img, lab = nib.load(image_path), nib.load(label_path)
    image = np.asarray(img.dataobj, dtype=np.float32).transpose(2, 1, 0).copy()
    labels = np.asarray(lab.dataobj, dtype=np.uint8).transpose(2, 1, 0).copy()
    spacing = [float(z) for z in img.header.get_zooms()[:3]][::-1]
    return image, labels, spacing


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def ours(image_path: str, label_path: str) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "workflow"))
    from seggrid.data.dataset import Case
    from seggrid.data.preprocess import new_shape, preprocess_case, resample_image, resample_labels, separate_z

    image, labels, spacing = load(image_path, label_path)
    shape, aniso = new_shape(image.shape, spacing, TARGET), separate_z(spacing, TARGET)
    t0 = time.perf_counter()
    out_img = resample_image(image, shape, aniso)
    out_lab = resample_labels(labels, shape, 16, aniso)
    seconds = time.perf_counter() - t0
    peak_resample = peak_mb()
    del out_img, out_lab
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        norm = {"scheme": "ct", "use_mask": False,
                "ct_stats": {"percentile_00_5": -1000, "percentile_99_5": 1000, "mean": 0, "std": 300}}
        preprocess_case(Case("c", Path(image_path), Path(label_path), "CT"), TARGET, norm, 16, Path(tmp), 0)
        whole = time.perf_counter() - t0
    return {"side": "seggrid", "shape_in": list(image.shape), "shape_out": shape, "seconds": round(seconds, 2),
            "peak_rss_mb_resample": round(peak_resample, 1), "preprocess_case_seconds": round(whole, 2),
            "peak_rss_mb": round(peak_mb(), 1)}


def nnunet(image_path: str, label_path: str) -> dict:
    from importlib.metadata import version

    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape, resample_data_or_seg_to_shape

    image, labels, spacing = load(image_path, label_path)
    shape = [int(s) for s in compute_new_shape(image.shape, spacing, TARGET)]
    t0 = time.perf_counter()
    out_img = resample_data_or_seg_to_shape(image[None], shape, spacing, TARGET, is_seg=False, order=3, order_z=0,
                                            force_separate_z=None)
    out_lab = resample_data_or_seg_to_shape(labels[None].astype(np.int16), shape, spacing, TARGET, is_seg=True,
                                            order=1, order_z=0, force_separate_z=None)
    seconds = time.perf_counter() - t0
    return {"side": "nnunet", "version": version("nnunetv2"), "shape_in": list(image.shape),
            "shape_out": list(out_img.shape[1:]), "labels_dtype": str(out_lab.dtype), "seconds": round(seconds, 2),
            "peak_rss_mb": round(peak_mb(), 1)}


if __name__ == "__main__":
    side, image_path, label_path = sys.argv[1:4]
    print(json.dumps((ours if side == "seggrid" else nnunet)(image_path, label_path)))
