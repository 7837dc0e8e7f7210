"""Preprocessing: orientation, transposition, crop to non-zero, normalisation, resampling.

Axis order: arrays are first RAS-aligned (z, y, x) (``geometry.py``), then transposed so the
coarsest axis of the target spacing comes first (nnU-Net's rule; identity for axial CT/MR,
where z is coarsest). Resampling is cubic for images and linear on the one-hot encoding for
labels; when the original or target spacing is anisotropic (max/min > 3), the in-plane
axes are resampled that way slice by slice and the out-of-plane axis 0 with nearest neighbour.

Normalisation (``data/normalization.py``) runs on the cropped image before resampling, as in
nnU-Net; ``preprocessing.normalization`` picks the scheme per case.

Every case becomes ``<case>_img.npy`` (float32, (z, y, x)), ``<case>_seg.npy`` (uint8),
``<case>_locations.npy`` (sampled foreground voxels, ``data/locations.py``) and ``<case>.json``
(geometry, crop box, normalisation, rows of each class's locations), so training memory-maps
patches without loading whole volumes; ``manifest.json`` records the normalisation option and
each case's scheme, ``timings.json`` each case's seconds and its worker's peak memory.
:func:`to_original_geometry` undoes all of it for predictions.
"""

from __future__ import annotations

import multiprocessing
import resource
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from seggrid.data.dataset import Case, load_dataset
from seggrid.data.fingerprint import crop, nonzero_bbox
from seggrid.data.geometry import Geometry, file_to_internal, internal_to_file, load_nifti, read_array
from seggrid.data.locations import locations_file, sample_class_locations
from seggrid.data import normalization
from seggrid.io import atomic_path, write_json
from seggrid.engine.planner import coarsest_first

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
    idx = torch.round(torch.arange(n, dtype=torch.float64) * ((old - 1) / max(n - 1, 1))).long().to(t.device)
    return t.index_select(axis, idx)


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
    """Labels resampled as the argmax of their linearly resampled one-hot encoding, built one
    class at a time: the peak is a few float32 volumes, not ``n_classes`` of them (16 classes at
    AMOS size: 12 GB for the whole one-hot). Classes absent from ``labels`` are skipped (their
    score is 0 everywhere); ties keep the lowest class, as ``argmax`` does."""
    if list(labels.shape) == list(shape):
        return labels.astype(np.uint8)
    present = [int(c) for c in np.unique(labels) if c < n_classes]
    out = np.zeros(shape, dtype=np.uint8)
    best = None
    for c in present:
        score = resample_probabilities((labels == c)[None].astype(np.float32), shape, anisotropic)[0]
        if best is None:
            best, out[...] = score, c
            continue
        better = score > best
        out[better.numpy()] = c
        torch.maximum(best, score, out=best)
        del score, better
    return out


def preprocess_case(case: Case, target: list[float], norm: dict, n_classes: int, out_dir: Path,
                    seed: int) -> dict:
    """``target`` is the (z, y, x) spacing; arrays are stored in ``coarsest_first(target)`` order.
    ``norm``: ``{"scheme": "ct" | "zscore", "ct_stats": dict | None, "use_mask": bool}``."""
    order = coarsest_first(target)
    img = load_nifti(case.image)
    image, spacing, geom = file_to_internal(img, read_array(img, case.image))
    image = image.transpose(order)
    spacing, target = [spacing[a] for a in order], [target[a] for a in order]
    box = nonzero_bbox(image)
    image = normalization.normalise(crop(image, box), norm["scheme"], norm["ct_stats"], norm["use_mask"])
    shape = new_shape(image.shape, spacing, target)
    aniso = separate_z(spacing, target)
    props = {"case_id": case.case_id, "modality": case.modality, "geometry": geom.to_dict(), "transpose": order,
             "spacing_original": list(spacing), "crop_box": box, "shape_cropped": list(image.shape),
             "shape_preprocessed": shape, "spacing": list(target), "separate_z": aniso,
             "has_label": case.label is not None,
             "normalization": {"scheme": norm["scheme"], "use_mask": norm["use_mask"]}}
    np.save(out_dir / f"{case.case_id}_img.npy", resample_image(image, shape, aniso))
    if case.label is not None:
        lab_img = load_nifti(case.label)
        seg, _, _ = file_to_internal(lab_img, read_array(lab_img, case.label, dtype=np.uint8))
        seg = resample_labels(crop(seg.transpose(order), box), shape, n_classes, aniso)
        np.save(out_dir / f"{case.case_id}_seg.npy", seg)
        locations, rows, counts = sample_class_locations(seg, np.random.default_rng(seed), n_classes)
        np.save(out_dir / locations_file(case.case_id), locations)
        props.update(class_locations_file=locations_file(case.case_id), class_location_rows=rows,
                     class_voxel_counts=counts)
    return props


def _preprocess_one(job: tuple) -> tuple[str, dict, dict]:
    """Worker body: one case, written to the (temporary) output folder; returns its props."""
    case, target, norm, n_classes, out_dir, seed = job
    t0 = time.perf_counter()
    props = preprocess_case(case, target, norm, n_classes, Path(out_dir), seed)
    write_json(Path(out_dir) / f"{case.case_id}.json", props)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024      # this worker, so far
    return case.case_id, props, {"seconds": time.perf_counter() - t0, "worker_peak_rss_mb": peak_mb}


def _init_worker() -> None:
    torch.set_num_threads(1)


def preprocess_dataset(root: str | Path, fingerprint: dict, target_spacing: list[float] | None,
                       out: str | Path, mr_case_id_min: int | None = None, seed: int = 0,
                       threads: int = 1, modalities: list[str] | None = None,
                       normalization_option: str = "channel_name") -> dict:
    """Preprocess every training and validation case into ``out`` (a folder, written atomically).

    ``normalization_option`` is ``preprocessing.normalization`` (``data/normalization.py``):
    each case's scheme, the CT statistics and whether z-scoring uses the non-zero mask are
    resolved here and recorded in ``manifest.json`` and each ``<case>.json``.

    Cases run in a pool of ``threads`` worker processes, one thread each (scipy's cubic zoom is
    single-threaded, so one process per core is what scales). Case ``i`` (1-based, in dataset
    order) draws its class locations from ``seed + i`` whatever the number of workers, so the
    output does not depend on ``threads``."""
    ds = load_dataset(root, mr_case_id_min, modalities)
    target = list(target_spacing) if target_spacing else fingerprint["target_spacing_rule"]
    n_classes = max(ds.labels) + 1
    cases = ds.training + ds.validation
    schemes = {c.case_id: normalization.case_scheme(normalization_option, ds.channel_name, c.modality)
               for c in cases}
    use_mask = "zscore" in schemes.values() and normalization.use_mask_for_zscore(fingerprint)
    ct_stats = (normalization.ct_statistics(fingerprint, normalization_option)
                if "ct" in schemes.values() else None)
    manifest = {"target_spacing": target, "transpose": coarsest_first(target),
                "spacing_network_order": [target[a] for a in coarsest_first(target)], "n_classes": n_classes,
                "labels": {str(k): v for k, v in ds.labels.items()},
                "normalization": {"option": normalization_option, "channel_name": ds.channel_name,
                                  "zscore_uses_nonzero_mask": use_mask, "ct_statistics": ct_stats},
                "training": [c.case_id for c in ds.training], "validation": [c.case_id for c in ds.validation],
                "cases": {}}
    workers = max(1, min(threads, len(cases)))
    with atomic_path(out) as tmp:
        tmp.mkdir()
        jobs = [(case, target, {"scheme": schemes[case.case_id], "ct_stats": ct_stats,
                                "use_mask": use_mask and schemes[case.case_id] == "zscore"},
                 n_classes, str(tmp), seed + i) for i, case in enumerate(cases, 1)]
        t_start, done, timings = time.perf_counter(), {}, {}
        if workers == 1:
            torch.set_num_threads(1)
            results = map(_preprocess_one, jobs)
            pool = None
        else:
            pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_init_worker)
            results = pool.imap_unordered(_preprocess_one, jobs)
        try:
            for cid, props, timing in results:
                done[cid] = {"modality": props["modality"], "shape": props["shape_preprocessed"],
                             "normalization": props["normalization"]["scheme"]}
                timings[cid], seconds = timing, timing["seconds"]
                elapsed = time.perf_counter() - t_start
                eta = elapsed / len(done) * (len(cases) - len(done))
                print(f"[preprocess] {len(done)}/{len(cases)} {cid} {props['shape_cropped']} -> "
                      f"{props['shape_preprocessed']} in {seconds:.1f}s (worker peak "
                      f"{timing['worker_peak_rss_mb']:.0f} MB); elapsed {elapsed:.0f}s, "
                      f"ETA {eta:.0f}s ({workers} workers)", flush=True)
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
        manifest["cases"] = {c.case_id: done[c.case_id] for c in cases}
        write_json(tmp / "manifest.json", manifest)
        write_json(tmp / "timings.json", {"workers": workers, "wall_seconds": time.perf_counter() - t_start,
                                          "cases": timings})
    return manifest


def to_original_geometry(probs: np.ndarray | torch.Tensor, props: dict) -> np.ndarray:
    """Map (C, ...) class scores at the target spacing (network axis order) to a label array in
    the file's grid (see :func:`scores_to_file_labels`)."""
    return scores_to_file_labels(lambda c: torch.as_tensor(probs[c]), len(probs), props)


def scores_to_file_labels(score_of, n_classes: int, props: dict) -> np.ndarray:
    """Labels in the file's grid from per-class scores at the target spacing.

    ``score_of(c)`` gives class ``c``'s (z, y, x) scores (any device), or None when the class
    scores 0 everywhere. Each class is resampled to the cropped shape on its own and the argmax
    is kept as it goes (ties keep the lower class), so the peak is about three float32 volumes
    of the cropped shape whatever the number of classes. The result is pasted into the crop
    box, then the transposition and the orientation are undone."""
    shape, aniso = props["shape_cropped"], props.get("separate_z", False)
    cropped, best = None, None
    for c in range(n_classes):
        score = score_of(c)
        if score is None:
            continue
        r = resample_probabilities(score[None], shape, aniso)[0]
        if best is None:
            best = r.clone()            # r may share memory with the caller's scores
            cropped = torch.full(r.shape, c, dtype=torch.uint8, device=r.device)
            continue
        cropped[r > best] = c
        torch.maximum(best, r, out=best)
        del r
    cropped = np.zeros(shape, np.uint8) if cropped is None else cropped.cpu().numpy()
    del best
    return cropped_to_file_grid(cropped, props)


def cropped_to_file_grid(cropped: np.ndarray, props: dict) -> np.ndarray:
    """Paste a label array of the cropped shape into the crop box, undo the transposition and
    the orientation: the file's voxel grid."""
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
