"""Preprocessing: orientation, transposition, crop to non-zero, normalisation, resampling.

Axis order: arrays are first RAS-aligned (z, y, x) (``geometry.py``), then transposed so the
coarsest axis of the target spacing comes first (nnU-Net's rule; identity for axial CT/MR,
where z is coarsest). Resampling is nnU-Net 2.8.1's (``data/resampling.py``: its half-voxel
grid): cubic for images, linear per label with an argmax for labels; when the original or
target spacing is anisotropic (max/min > 3, one coarsest axis), the in-plane axes are
resampled that way slice by slice and the coarse axis with nearest neighbour.

Normalisation (``data/normalization.py``) runs on the cropped image before resampling, as in
nnU-Net; ``preprocessing.normalization`` picks the scheme per case.

Every case becomes ``<case>_img.npy`` (float32, (z, y, x)), ``<case>_seg.npy`` (uint8),
``<case>_locations.npy`` (sampled foreground voxels, ``data/locations.py``) and ``<case>.json``
(geometry, crop box, normalisation, rows of each class's locations), so training memory-maps
patches without loading whole volumes; ``manifest.json`` records the normalisation option and
each case's scheme, ``timings.json`` each case's seconds and its worker's peak memory.
:func:`seggrid.inference.maps.to_original_geometry` undoes all of it for predictions.
"""

from __future__ import annotations

import multiprocessing
import resource
import time
from pathlib import Path

import numpy as np
import torch

from seggrid.data.dataset import Case, load_dataset, submission_cases
from seggrid.data.fingerprint import crop, nonzero_bbox
from seggrid.data.geometry import coarsest_first, file_to_internal, load_nifti, read_array
from seggrid.data.locations import locations_file, sample_class_locations
from seggrid.data import normalization
from seggrid.data.resampling import separate_axis
from seggrid.data.resampling import resample_image as _resample_image
from seggrid.data.resampling import resample_labels as _resample_labels
from seggrid.io import atomic_path, write_json


def separate_z(spacing: list[float], target: list[float]) -> bool:
    """Whether going from ``spacing`` to ``target`` resamples one axis separately (nearest
    neighbour; nnU-Net's rule, :func:`seggrid.data.resampling.separate_axis`)."""
    return separate_axis(spacing, target) is not None


def _axis(anisotropic: bool, axis: int | None) -> int | None:
    """The separately resampled axis: ``axis``, or 0 for the older ``anisotropic=True``."""
    return axis if axis is not None else (0 if anisotropic else None)


def new_shape(shape, spacing, target) -> list[int]:
    """Voxels per axis at the ``target`` spacing: ``round(spacing / target * shape)`` (nnU-Net's
    ``compute_new_shape``, same operation order), at least 1."""
    return [max(1, int(round(sp / t * s))) for s, sp, t in zip(shape, spacing, target)]


def resample_image(image: np.ndarray, shape: list[int], anisotropic: bool = False,
                   axis: int | None = None) -> np.ndarray:
    """Cubic resampling onto ``shape`` on nnU-Net's half-voxel grid, float32; with ``axis``
    (or ``anisotropic``: axis 0), cubic per slice and nearest along that axis
    (:func:`seggrid.data.resampling.resample_image`)."""
    return _resample_image(image, shape, _axis(anisotropic, axis))


def resample_labels(labels: np.ndarray, shape: list[int], n_classes: int, anisotropic: bool = False,
                    axis: int | None = None) -> np.ndarray:
    """Labels resampled as nnU-Net's ``resize_segmentation`` order 1 does: each class's
    indicator linearly, the highest score wins, ties go to the nearest-neighbour label when it
    is among them (else the lowest). Slice by slice, so the peak is the output and a few
    float64 slices, not the whole one-hot (16 classes at AMOS size: 12 GB in float32). With
    ``axis`` (or ``anisotropic``: axis 0), nearest along that axis
    (:func:`seggrid.data.resampling.resample_labels`)."""
    return _resample_labels(labels, shape, n_classes, _axis(anisotropic, axis))


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
    axis = separate_axis(spacing, target)
    props = {"case_id": case.case_id, "modality": case.modality, "geometry": geom.to_dict(), "transpose": order,
             "spacing_original": list(spacing), "crop_box": box, "shape_cropped": list(image.shape),
             "shape_preprocessed": shape, "spacing": list(target), "separate_z": axis is not None,
             "separate_axis": axis,
             "has_label": case.label is not None,
             "normalization": {"scheme": norm["scheme"], "use_mask": norm["use_mask"]}}
    np.save(out_dir / f"{case.case_id}_img.npy", resample_image(image, shape, axis=axis))
    if case.label is not None:
        lab_img = load_nifti(case.label)
        seg, _, _ = file_to_internal(lab_img, read_array(lab_img, case.label, dtype=np.uint8))
        seg = resample_labels(crop(seg.transpose(order), box), shape, n_classes, axis=axis)
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
                       normalization_option: str = "channel_name", test_cases: bool = False) -> dict:
    """Preprocess every training and validation case into ``out`` (a folder, written atomically);
    with ``test_cases``, the dataset's test cases instead (no labels; for the submission).

    ``normalization_option`` is ``preprocessing.normalization`` (``data/normalization.py``):
    each case's scheme, the CT statistics and whether z-scoring uses the non-zero mask are
    resolved here and recorded in ``manifest.json`` and each ``<case>.json``.

    Cases run in a pool of ``threads`` worker processes, one thread each (scipy's cubic zoom is
    single-threaded, so one process per core is what scales). Case ``i`` (1-based, in dataset
    order) draws its class locations from ``seed + i`` whatever the number of workers, so the
    output does not depend on ``threads``. Test cases are preprocessed exactly as the others
    (the same fingerprint, so the same CT statistics, target spacing and scheme per case);
    only their labels and class locations are missing."""
    ds = load_dataset(root, mr_case_id_min, modalities)
    target = list(target_spacing) if target_spacing else fingerprint["target_spacing_rule"]
    n_classes = max(ds.labels) + 1
    cases = submission_cases(ds) if test_cases else ds.training + ds.validation
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
                "training": [] if test_cases else [c.case_id for c in ds.training],
                "validation": [] if test_cases else [c.case_id for c in ds.validation],
                "test": [c.case_id for c in cases] if test_cases else [], "cases": {}}
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
