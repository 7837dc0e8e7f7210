"""Preprocessing: orientation, transposition, crop to non-zero, normalisation, resampling.

Axis order: arrays are first RAS-aligned (z, y, x) (``geometry.py``), then transposed so the
coarsest axis of the target spacing comes first (nnU-Net's rule; identity for axial CT/MR,
where z is coarsest). Resampling is cubic for images and linear on the one-hot encoding for
labels; when the original or target spacing is anisotropic (max/min > 3), the in-plane
axes are resampled that way slice by slice and the out-of-plane axis 0 with nearest neighbour.

Every case becomes ``<case>_img.npy`` (float32, (z, y, x)), ``<case>_seg.npy`` (uint8) and
``<case>.json`` (geometry, crop box, class locations), so training memory-maps patches
without loading whole volumes. :func:`to_original_geometry` undoes all of it for predictions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from seggrid.dataset import Case, load_dataset
from seggrid.errors import SeggridError
from seggrid.fingerprint import crop, nonzero_bbox
from seggrid.geometry import Geometry, file_to_internal, internal_to_file, load_nifti, read_array
from seggrid.io import atomic_path, write_json
from seggrid.planner import coarsest_first

LOCATIONS_PER_CLASS = 500
ANISO_THRESHOLD = 3.0


def separate_z(spacing: list[float], target: list[float]) -> bool:
    """Resample axis 0 separately (nearest) when it is the coarse axis of an anisotropic grid."""
    for sp in (spacing, target):
        if max(sp) / min(sp) > ANISO_THRESHOLD and int(np.argmax(sp)) == 0:
            return True
    return False


def nearest_along_axis0(t: torch.Tensor, n: int, axis: int = 0) -> torch.Tensor:
    """Nearest-neighbour resampling of ``axis`` onto ``n`` samples, corner centres aligned."""
    old = t.shape[axis]
    if old == n:
        return t
    idx = torch.round(torch.arange(n, dtype=torch.float64) * ((old - 1) / max(n - 1, 1))).long()
    return t.index_select(axis, idx)


def normalise(image: np.ndarray, modality: str, ct_stats: dict | None) -> np.ndarray:
    """CT: clip to the training set's foreground 0.5/99.5 percentiles, z-score with its
    foreground mean/std. MR (anything else): z-score of this image."""
    if modality == "CT":
        if not ct_stats:
            raise SeggridError("preprocess: CT case but the fingerprint has no CT intensity statistics")
        image = np.clip(image, ct_stats["percentile_00_5"], ct_stats["percentile_99_5"])
        return ((image - ct_stats["mean"]) / max(ct_stats["std"], 1e-8)).astype(np.float32)
    return ((image - image.mean()) / max(float(image.std()), 1e-8)).astype(np.float32)


def new_shape(shape, spacing, target) -> list[int]:
    return [max(1, int(round(s * sp / t))) for s, sp, t in zip(shape, spacing, target)]


def resample_image(image: np.ndarray, shape: list[int], anisotropic: bool = False) -> np.ndarray:
    """Cubic resampling onto ``shape`` (corner voxel centres aligned, as scipy's zoom does);
    with ``anisotropic``, cubic in-plane and nearest along axis 0."""
    if list(image.shape) == list(shape):
        return image.astype(np.float32)
    zoom = [n / o for n, o in zip(shape, image.shape)]
    if anisotropic:
        out = ndimage.zoom(image, [1.0, zoom[1], zoom[2]], order=3, mode="nearest", grid_mode=False)
        out = nearest_along_axis0(torch.from_numpy(np.ascontiguousarray(out)), shape[0]).numpy()
    else:
        out = ndimage.zoom(image, zoom, order=3, mode="nearest", grid_mode=False)
    if list(out.shape) != list(shape):
        raise AssertionError(f"zoom gave {out.shape}, wanted {shape}")
    return out.astype(np.float32)


def resample_probabilities(probs: np.ndarray | torch.Tensor, shape: list[int],
                           anisotropic: bool = False) -> torch.Tensor:
    """Linear resampling of (C, z, y, x) class scores onto ``shape`` (same grid as
    resample_image); with ``anisotropic``, bilinear in-plane and nearest along z."""
    t = torch.as_tensor(probs, dtype=torch.float32)
    if list(t.shape[1:]) == list(shape):
        return t
    if anisotropic:
        inplane = F.interpolate(t.movedim(1, 0), size=tuple(shape[1:]), mode="bilinear", align_corners=True)
        return nearest_along_axis0(inplane.movedim(0, 1), shape[0], axis=1)
    return F.interpolate(t[None], size=tuple(shape), mode="trilinear", align_corners=True)[0]


def resample_labels(labels: np.ndarray, shape: list[int], n_classes: int, anisotropic: bool = False) -> np.ndarray:
    """Labels resampled via their one-hot encoding (linear), then argmax."""
    if list(labels.shape) == list(shape):
        return labels.astype(np.uint8)
    onehot = F.one_hot(torch.as_tensor(labels, dtype=torch.long), n_classes).permute(3, 0, 1, 2)
    probs = resample_probabilities(onehot.float().numpy(), shape, anisotropic)
    return probs.argmax(0).numpy().astype(np.uint8)


def class_locations(seg: np.ndarray, rng: np.random.Generator) -> dict[str, list[list[int]]]:
    out = {}
    for c in np.unique(seg):
        if c == 0:
            continue
        idx = np.argwhere(seg == c)
        take = rng.choice(len(idx), size=min(LOCATIONS_PER_CLASS, len(idx)), replace=False)
        out[str(int(c))] = idx[np.sort(take)].tolist()
    return out


def preprocess_case(case: Case, target: list[float], ct_stats: dict | None, n_classes: int,
                    out_dir: Path, seed: int) -> dict:
    """``target`` is the (z, y, x) spacing; arrays are stored in ``coarsest_first(target)`` order."""
    order = coarsest_first(target)
    img = load_nifti(case.image)
    image, spacing, geom = file_to_internal(img, read_array(img, case.image))
    image = image.transpose(order)
    spacing, target = [spacing[a] for a in order], [target[a] for a in order]
    box = nonzero_bbox(image)
    image = normalise(crop(image, box), case.modality, ct_stats)
    shape = new_shape(image.shape, spacing, target)
    aniso = separate_z(spacing, target)
    props = {"case_id": case.case_id, "modality": case.modality, "geometry": geom.to_dict(), "transpose": order,
             "spacing_original": list(spacing), "crop_box": box, "shape_cropped": list(image.shape),
             "shape_preprocessed": shape, "spacing": list(target), "separate_z": aniso,
             "has_label": case.label is not None}
    np.save(out_dir / f"{case.case_id}_img.npy", resample_image(image, shape, aniso))
    if case.label is not None:
        lab_img = load_nifti(case.label)
        seg, _, _ = file_to_internal(lab_img, read_array(lab_img, case.label, dtype=np.uint8))
        seg = resample_labels(crop(seg.transpose(order), box), shape, n_classes, aniso)
        np.save(out_dir / f"{case.case_id}_seg.npy", seg)
        props["class_locations"] = class_locations(seg, np.random.default_rng(seed))
    return props


def preprocess_dataset(root: str | Path, fingerprint: dict, target_spacing: list[float] | None,
                       out: str | Path, mr_case_id_min: int | None = None, seed: int = 0,
                       threads: int = 1, modalities: list[str] | None = None) -> dict:
    """Preprocess every training and validation case into ``out`` (a folder, written atomically)."""
    ds = load_dataset(root, mr_case_id_min, modalities)
    target = list(target_spacing) if target_spacing else fingerprint["target_spacing_rule"]
    n_classes = max(ds.labels) + 1
    torch.set_num_threads(threads)
    cases = ds.training + ds.validation
    manifest = {"target_spacing": target, "transpose": coarsest_first(target),
                "spacing_network_order": [target[a] for a in coarsest_first(target)], "n_classes": n_classes,
                "labels": {str(k): v for k, v in ds.labels.items()},
                "training": [c.case_id for c in ds.training], "validation": [c.case_id for c in ds.validation],
                "cases": {}}
    with atomic_path(out) as tmp:
        tmp.mkdir()
        for i, case in enumerate(cases, 1):
            props = preprocess_case(case, target, fingerprint.get("ct_foreground_intensity"), n_classes, tmp,
                                    seed + i)
            write_json(tmp / f"{case.case_id}.json", props)
            manifest["cases"][case.case_id] = {"modality": case.modality, "shape": props["shape_preprocessed"]}
            print(f"[preprocess] {i}/{len(cases)} {case.case_id} {props['shape_cropped']} -> "
                  f"{props['shape_preprocessed']}", flush=True)
        write_json(tmp / "manifest.json", manifest)
    return manifest


def to_original_geometry(probs: np.ndarray | torch.Tensor, props: dict) -> np.ndarray:
    """Map (C, ...) class scores at the target spacing (network axis order) to a label array in
    the file's grid: resample to the cropped shape, argmax, paste into the crop box, undo the
    transposition, undo the orientation."""
    scores = resample_probabilities(probs, props["shape_cropped"], props.get("separate_z", False))
    cropped = scores.argmax(0).numpy().astype(np.uint8)
    geom = Geometry.from_dict(props["geometry"])
    order = props.get("transpose", [0, 1, 2])
    transposed_shape = [internal_shape(geom)[a] for a in order]
    labels = np.zeros(transposed_shape, dtype=np.uint8)
    labels[tuple(slice(a, b) for a, b in props["crop_box"])] = cropped
    return internal_to_file(labels.transpose(np.argsort(order)), geom)


def internal_shape(geom: Geometry) -> tuple[int, int, int]:
    """Shape of the file's array in the internal (z, y, x) order."""
    ras_shape = [0, 0, 0]
    for file_axis in range(3):
        ras_shape[int(geom.ornt_to_ras[file_axis, 0])] = geom.shape[file_axis]
    return (ras_shape[2], ras_shape[1], ras_shape[0])
