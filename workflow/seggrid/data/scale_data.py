"""AMOS-sized cases for the scale benchmark (``seggrid make-scale-data``).

Each case is the real CT (stored RAS) or MR (stored LPS) of ``data/totalseg_sample``, resampled
linearly onto an AMOS-sized grid: by default 512 x 512 x 100 voxels at 0.75 x 0.75 x 3 mm
(150 x 558 x 558 at the paper's 2.0 x 0.688 x 0.688 mm). The sample covers 90 mm in z, so
the volume is mirrored along z to fill 300 mm, and in-plane it is padded with air. Every
second case of a modality is stored with its first two axes flipped (CT as LPS, MR as RAS),
so both orientations go through every step. A seeded noise makes each case differ.
These cases measure time, memory and disk; they are not for training a useful model.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from seggrid.data.demo_data import SAMPLE_DIR, _load_source, case_plan, write_case
from seggrid.errors import SeggridError
from seggrid.io import atomic_path

AMOS_SHAPE = (512, 512, 100)
AMOS_SPACING = (0.75, 0.75, 3.0)


def scale_case(image: np.ndarray, seg: np.ndarray, affine: np.ndarray, shape=AMOS_SHAPE,
               spacing=AMOS_SPACING, flip: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, labels, affine) on a ``shape`` grid of ``spacing`` mm (file axes), centred on the
    source; linear for the image, nearest for the labels."""
    in_spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    step = np.asarray(spacing) / in_spacing                    # input voxels per output voxel
    c_in, c_out = (np.array(image.shape) - 1) / 2, (np.array(shape) - 1) / 2
    axes = [c_in[a] + (np.arange(shape[a]) - c_out[a]) * step[a] for a in range(3)]
    z = axes[2]                                                  # mirror along z to fill the extent
    period = 2 * (image.shape[2] - 1)
    z = np.abs(((z % period) + period) % period)
    axes[2] = np.where(z > image.shape[2] - 1, period - z, z)
    coords = np.meshgrid(*[a.astype(np.float32) for a in axes], indexing="ij")
    air = float(image.min())
    img = ndimage.map_coordinates(image, coords, order=1, mode="constant", cval=air).astype(np.float32)
    lab = ndimage.map_coordinates(seg, coords, order=0, mode="constant", cval=0).astype(np.uint8)
    del coords
    vox = np.eye(4)
    vox[:3, :3] = np.diag(step)
    vox[:3, 3] = c_in - c_out * step
    out_affine = affine @ vox
    if flip:
        for ax in (0, 1):
            img, lab = np.flip(img, ax), np.flip(lab, ax)
            f = np.eye(4)
            f[ax, ax], f[ax, 3] = -1, shape[ax] - 1
            out_affine = out_affine @ f
    return np.ascontiguousarray(img), np.ascontiguousarray(lab), out_affine


def make_scale_dataset(out: str | Path, seed: int = 0, ct_train: int = 4, mr_train: int = 2, ct_val: int = 1,
                       mr_val: int = 1, shape=AMOS_SHAPE, spacing=AMOS_SPACING,
                       sample_dir: str | Path = SAMPLE_DIR) -> dict:
    """Write an AMOS-sized dataset (MSD layout, dataset.json) to ``out``; MR ids start at 501."""
    sample_dir = Path(sample_dir)
    if not (sample_dir / "labels.json").exists():
        raise SeggridError(f"{sample_dir}: sample data not found (labels.json missing)")
    rng = np.random.default_rng(seed)
    sources = {"CT": _load_source(sample_dir, "ct"), "MR": _load_source(sample_dir, "mr")}
    entries: dict[str, list] = {"Tr": [], "Va": []}
    labels = sources["CT"][3]
    with atomic_path(out) as tmp:
        for split, modality, cid, nth in case_plan(ct_train, mr_train, ct_val, mr_val):
            image, seg, affine, _ = sources[modality]
            img, lab, aff = scale_case(image, seg, affine, shape, spacing, flip=nth % 2 == 0)
            img += rng.normal(0, 10 if modality == "CT" else 5, size=img.shape).astype(np.float32)
            entries[split].append(write_case(tmp, split, cid, img, lab, aff))
            print(f"[make-scale-data] {cid} ({modality}, {split}) {img.shape} at {spacing} mm, "
                  f"{''.join(nib.aff2axcodes(aff))}", flush=True)
        meta = {"name": "seggrid-scale", "description": "AMOS-sized cases from the real CT and MR sample "
                "(seggrid make-scale-data); for time, memory and disk measurements only.",
                "seed": seed, "tensorImageSize": "3D", "modality": {"0": "CT"},
                "labels": {str(k): v for k, v in labels.items()},
                "numTraining": len(entries["Tr"]), "numValidation": len(entries["Va"]),
                "training": entries["Tr"], "validation": entries["Va"], "test": []}
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta
