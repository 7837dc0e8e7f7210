"""Build the embedded demo dataset (AMOS-style, MSD layout) from the real CT and MR sample.

Each case is the real CT (RAS) or MR (LPS) of ``data/totalseg_sample`` warped by a random
smooth deformation and a random anatomical scaling, resampled to a random voxel spacing,
cropped, stored with random axis flips (the affine is updated, so anatomy stays put in
world coordinates: left stays left) and given random intensity changes. Everything is
drawn from one seed, so the dataset is identical on every machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from seggrid.errors import SeggridError
from seggrid.io import atomic_path

SAMPLE_DIR = Path(__file__).resolve().parents[3] / "data" / "totalseg_sample"


def _load_source(sample_dir: Path, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, str]]:
    mapping_file = sample_dir / "labels.json"
    meta = json.loads(mapping_file.read_text())
    img = nib.load(str(sample_dir / f"{kind}.nii.gz"))
    seg = np.asarray(nib.load(str(sample_dir / f"{kind}_seg.nii.gz")).dataobj).astype(np.int32)
    lut = np.zeros(max(256, seg.max() + 1), dtype=np.uint8)
    for src, dst in meta[f"{kind}_seg_to_amos"].items():
        lut[int(src)] = int(dst)
    labels = {int(k): v for k, v in meta["amos_labels"].items()}
    return np.asarray(img.dataobj, dtype=np.float32), lut[seg], img.affine, labels


def _smooth_displacement(rng: np.random.Generator, shape: tuple[int, ...], amplitude: float) -> np.ndarray:
    """A (3, *shape) smooth random displacement field in voxels (coarse noise, cubic upsampling)."""
    coarse = rng.normal(0.0, amplitude, size=(3, 4, 4, 3))
    return np.stack([ndimage.zoom(c, np.array(shape) / np.array(c.shape), order=3) for c in coarse])


def synthesize_case(rng: np.random.Generator, image: np.ndarray, seg: np.ndarray, affine: np.ndarray,
                    modality: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One new case from a source scan; returns (image, labels, affine) in file order."""
    in_spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    out_spacing = in_spacing * rng.uniform(0.9, 1.15, size=3)
    anatomy_scale = rng.uniform(0.9, 1.1, size=3)
    keep = rng.uniform([0.8, 0.8, 0.75], [1.0, 1.0, 1.0])
    full_out = np.floor(np.array(image.shape) * in_spacing / out_spacing).astype(int)
    out_shape = np.maximum((full_out * keep).astype(int), 8)
    start = np.array([rng.integers(0, max(1, f - o + 1)) for f, o in zip(full_out, out_shape)])
    step = out_spacing / in_spacing                       # input voxels per output voxel
    centre = (np.array(image.shape) - 1) / 2
    grid = np.indices(tuple(out_shape), dtype=np.float32)
    coords = np.empty_like(grid)
    for ax in range(3):
        pos = (grid[ax] + start[ax]) * step[ax]          # input voxel without anatomy change
        coords[ax] = centre[ax] + (pos - centre[ax]) / anatomy_scale[ax]
    coords += _smooth_displacement(rng, tuple(out_shape), amplitude=1.5).astype(np.float32)
    lo = float(image.min())
    new_img = ndimage.map_coordinates(image, coords, order=3, mode="constant", cval=lo)
    new_seg = ndimage.map_coordinates(seg, coords, order=0, mode="constant", cval=0).astype(np.uint8)
    # affine of the output grid: output voxel o -> input voxel start*step + o*step
    vox = np.eye(4)
    vox[:3, :3] = np.diag(step)
    vox[:3, 3] = start * step
    new_affine = affine @ vox
    if modality == "CT":
        new_img = new_img * rng.uniform(0.95, 1.05) + rng.uniform(-30, 30)
        new_img += rng.normal(0, 10, size=new_img.shape)
        new_img = np.clip(new_img, -1024, 3071)
    else:
        lo_, hi_ = np.percentile(new_img, [0.5, 99.5])
        unit = np.clip((new_img - lo_) / max(hi_ - lo_, 1e-6), 0, 1)
        bias = 1 + 0.15 * _smooth_displacement(rng, new_img.shape, 1.0)[0]
        new_img = (unit ** rng.uniform(0.8, 1.25)) * bias * rng.uniform(600, 1400)
        new_img += np.abs(rng.normal(0, 8, size=new_img.shape))
    for ax in range(3):                                   # storage flips: anatomy unchanged
        if rng.random() < 0.3:
            new_img, new_seg = np.flip(new_img, ax), np.flip(new_seg, ax)
            flip = np.eye(4)
            flip[ax, ax], flip[ax, 3] = -1, new_img.shape[ax] - 1
            new_affine = new_affine @ flip
    return np.ascontiguousarray(new_img), np.ascontiguousarray(new_seg), new_affine


def case_plan(ct_train: int, mr_train: int, ct_val: int, mr_val: int):
    """(split "Tr"/"Va", modality, case id, n-th case of its modality) for every case: CT ids
    count from amos_0001 and MR ids from amos_0501, as in AMOS (``mr_case_id_min: 500``)."""
    plan = ([("Tr", "CT")] * ct_train + [("Tr", "MR")] * mr_train
            + [("Va", "CT")] * ct_val + [("Va", "MR")] * mr_val)
    counters = {"CT": 0, "MR": 0}
    for split, modality in plan:
        counters[modality] += 1
        number = counters[modality] + (500 if modality == "MR" else 0)
        yield split, modality, f"amos_{number:04d}", counters[modality]


def write_case(folder: Path, split: str, cid: str, image: np.ndarray, labels: np.ndarray,
               affine: np.ndarray) -> dict:
    """Save one case as int16 image + uint8 labels (MSD layout); returns its dataset.json entry."""
    for sub, arr, dtype in ((f"images{split}", image, np.int16), (f"labels{split}", labels, np.uint8)):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        nii = nib.Nifti1Image(np.round(arr).astype(dtype), affine)
        nii.header.set_xyzt_units("mm", "sec")
        nib.save(nii, str(folder / sub / f"{cid}.nii.gz"))
    return {"image": f"./images{split}/{cid}.nii.gz", "label": f"./labels{split}/{cid}.nii.gz"}


def organ_subset(labels: dict[int, str], organs: list[str] | None) -> tuple[np.ndarray, dict[int, str]]:
    """(lookup table AMOS label -> new label, new label names) keeping ``organs`` (numbered 1..
    in AMOS order; every other organ becomes background); ``None`` keeps all."""
    keep = [k for k in sorted(labels) if k > 0 and (organs is None or labels[k] in organs)]
    unknown = sorted(set(organs or []) - {labels[k] for k in labels})
    if unknown:
        raise SeggridError(f"demo organs: unknown {unknown}; the AMOS organs are {[labels[k] for k in sorted(labels) if k]}")
    lut = np.zeros(256, dtype=np.uint8)
    for new, old in enumerate(keep, start=1):
        lut[old] = new
    return lut, {0: labels[0], **{new: labels[old] for new, old in enumerate(keep, start=1)}}


def make_demo_dataset(out: str | Path, seed: int = 12345, ct_train: int = 8, mr_train: int = 4,
                      ct_val: int = 2, mr_val: int = 2, sample_dir: str | Path = SAMPLE_DIR,
                      organs: list[str] | None = None) -> dict:
    """Write an AMOS-like dataset (imagesTr/labelsTr/imagesVa/labelsVa, dataset.json) to ``out``.

    CT cases are numbered from 1 and MR cases from 501, as in AMOS (``mr_case_id_min: 500``).
    ``organs``: the label set (AMOS organ names, kept in AMOS order and numbered 1..; the
    others are background); None: all 15. The images and the random draws do not depend on it.
    """
    sample_dir = Path(sample_dir)
    if not (sample_dir / "labels.json").exists():
        raise SeggridError(f"{sample_dir}: sample data not found (labels.json missing)")
    if ct_train + mr_train < 2:
        raise SeggridError("demo dataset needs at least 2 training cases")
    rng = np.random.default_rng(seed)
    sources = {"CT": _load_source(sample_dir, "ct"), "MR": _load_source(sample_dir, "mr")}
    lut, labels = organ_subset(sources["CT"][3], organs)
    entries: dict[str, list] = {"Tr": [], "Va": []}
    with atomic_path(out) as tmp:
        for split, modality, cid, _ in case_plan(ct_train, mr_train, ct_val, mr_val):
            image, seg, affine, _ = sources[modality]
            new_img, new_seg, new_aff = synthesize_case(rng, image, seg, affine, modality)
            entries[split].append(write_case(tmp, split, cid, new_img, lut[new_seg], new_aff))
            print(f"[make-demo-data] {cid} ({modality}, {split}) shape {new_img.shape}", flush=True)
        meta = {
            "name": "seggrid-demo",
            "description": "AMOS2022-style demo derived from a real CT and MR (TotalSegmentator test "
                           "fixtures, Apache-2.0) by random smooth deformations, crops, flips and "
                           "intensity changes. Case ids >= 500 are MR.",
            "reference": "https://github.com/wasserth/TotalSegmentator (tests/reference_files)",
            "licence": "Apache-2.0",
            "seed": seed,
            "tensorImageSize": "3D",
            "modality": {"0": "CT"},
            "labels": {str(k): v for k, v in labels.items()},
            "numTraining": len(entries["Tr"]),
            "numValidation": len(entries["Va"]),
            "training": entries["Tr"],
            "validation": entries["Va"],
            "test": [],
        }
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta
