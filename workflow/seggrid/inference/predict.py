"""Inference: sliding window (MONAI, Gaussian importance weighting, sigma = patch/8) with
mirroring test-time augmentation, over every fold model of one setting at once.

One ``seggrid predict`` job predicts one model: a single fold, or all folds of a 5-fold model,
whose softmax maps are averaged in memory (on the GPU when there is one) while the job runs,
as nnU-Net's multi-fold predictor does. What it writes, per case, is only what a later step
reads (see :mod:`seggrid.inference.maps`):

* ``--labels-out``: ``<case>.nii.gz`` labels in the input image's exact geometry, after the
  model's postprocessing decision (``--postprocessing``) when one is given;
* ``--probabilities-out``: ``<case>.npy``, the (postprocessed) map quantised to uint8, for an
  ensemble of several models (the A & B ensemble);
* ``--target-labels-out``: ``<case>.npz``, uint8 labels at the target spacing, for the
  postprocessing decision on out-of-fold predictions.
"""

from __future__ import annotations

import itertools
import pickle
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from seggrid.errors import SeggridError
from seggrid.io import atomic_path, provenance, read_json, write_json
from seggrid.engine.network import MODEL_FORMAT, build_network
from seggrid.inference.maps import remove_from_probabilities, write_file_labels, write_quantised, write_target_labels
from seggrid.inference.postprocess import apply
from seggrid.engine.recipe import autocast, effective_precision
from seggrid.engine.train import peak_memory_mb

SPATIAL_AXES = (2, 3, 4)


def tta_flips(n: int) -> list[tuple[int, ...]]:
    """Axis sets to mirror: 1 = none; 2 = none + left-right (x); 8 = every subset of (z, y, x)."""
    if n == 1:
        return [()]
    if n == 2:
        return [(), (4,)]
    if n == 8:
        return [c for r in range(4) for c in itertools.combinations(SPATIAL_AXES, r)]
    raise ValueError(f"tta_flips must be 1, 2 or 8, got {n}")


def load_model(path: str | Path, device: torch.device) -> tuple[torch.nn.Module, dict, int | None]:
    """(network in eval mode, its plan, the training seed) from a ``model.pt``."""
    try:
        ckpt = torch.load(path, map_location=device, weights_only=False)
        fmt = ckpt.get("format") if isinstance(ckpt, dict) else None
        if fmt != MODEL_FORMAT:
            raise SeggridError(f"{path}: a model of format {fmt or 'unknown (MONAI DynUNet, before nnU-Net network)'}"
                               f", but this seggrid reads {MODEL_FORMAT}; train it again (delete the file, "
                               f"snakemake reruns the training)")
        model = build_network(ckpt["plan"]).to(device)
        model.load_state_dict(ckpt["state_dict"])
    except (OSError, RuntimeError, KeyError, EOFError, pickle.UnpicklingError) as exc:
        raise SeggridError(f"{path}: not a readable seggrid model ({type(exc).__name__}: {exc})") from exc
    model.eval()
    return model, ckpt["plan"], ckpt.get("seed")


def _softmax_(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over axis 0 in place (no second copy of a (C, z, y, x) map)."""
    logits.sub_(logits.amax(0, keepdim=True)).exp_()
    return logits.div_(logits.sum(0, keepdim=True))


@torch.no_grad()
def predict_probabilities(models: torch.nn.Module | list[torch.nn.Module], image: np.ndarray, patch: list[int],
                          step: float, flips: int, device: torch.device, precision: str = "fp32") -> torch.Tensor:
    """Softmax probabilities (C, z, y, x) of one preprocessed image (z, y, x), averaged over the
    models (the folds of one setting) and the mirrorings; float32 on ``device``.

    Peak: MONAI's output buffer of one pass plus the running sum (two (C, z, y, x) float32 maps);
    the mirrored pass is added back one class at a time."""
    models = models if isinstance(models, list) else [models]
    x = torch.from_numpy(np.ascontiguousarray(image))[None, None].float().to(device)
    total, n = None, 0
    for model in models:
        for axes in tta_flips(flips):
            xf = torch.flip(x, axes) if axes else x
            with autocast(device, precision):
                out = sliding_window_inference(xf, roi_size=tuple(patch), sw_batch_size=2, predictor=model,
                                               overlap=1 - step, mode="gaussian", sigma_scale=0.125,
                                               padding_mode="constant", cval=0.0)
            probs = _softmax_(out[0].float())
            del out, xf
            back = tuple(a - 2 for a in axes)
            if total is None:
                total = torch.flip(probs, back) if back else probs
            else:
                for c in range(total.shape[0]):
                    total[c] += torch.flip(probs[c], back) if back else probs[c]
            del probs
            n += 1
    return total.div_(n)


def predict(model_paths: list[str | Path], preprocessed: str | Path, case_ids: list[str], *,
            labels_out: str | Path | None = None, probabilities_out: str | Path | None = None,
            target_labels_out: str | Path | None = None, postprocessing: str | Path | None = None,
            dataset=None, step: float = 0.5, flips: int = 8, threads: int = 1, gpus: int = 0) -> dict:
    """Predict ``case_ids`` with the average of ``model_paths`` (the folds of one setting) and
    write the outputs asked for (at least one); each folder appears only when the job succeeds.
    ``dataset`` (a :class:`seggrid.data.dataset.Dataset`) is needed for ``labels_out``: the written
    NIfTI copies its input image's header."""
    outs = {"labels": labels_out, "probabilities": probabilities_out, "target_labels": target_labels_out}
    if not any(outs.values()):
        raise SeggridError("predict: give at least one of --labels-out, --probabilities-out, --target-labels-out")
    if labels_out and dataset is None:
        raise SeggridError("predict: --labels-out needs --dataset (the written labels copy the input's header)")
    device = torch.device("cuda" if gpus > 0 and torch.cuda.is_available() else "cpu")
    torch.set_num_threads(threads)
    loaded = [load_model(p, device) for p in model_paths]
    models, plan, seed = [m for m, _, _ in loaded], loaded[0][1], loaded[0][2]
    names = {p["setting"]["name"] for _, p, _ in loaded}
    if len(names) > 1:
        raise SeggridError(f"predict: the models are of different settings {sorted(names)}; one job averages "
                           "the folds of ONE setting (several settings are averaged by `seggrid ensemble`)")
    decision = read_json(postprocessing) if postprocessing else None
    patch = plan["topology"]["patch_effective"]
    precision = effective_precision(plan["setting"]["precision"], device)
    preprocessed = Path(preprocessed)
    timings = {}
    with ExitStack() as stack:
        dirs = {k: stack.enter_context(atomic_path(v)) for k, v in outs.items() if v}
        for d in dirs.values():
            d.mkdir()
        t_start = time.perf_counter()
        for i, cid in enumerate(case_ids, 1):
            t0 = time.perf_counter()
            props_path, img_path = preprocessed / f"{cid}.json", preprocessed / f"{cid}_img.npy"
            if not img_path.exists():
                raise SeggridError(f"{img_path}: not found (is {preprocessed} the preprocessed folder?)")
            props = read_json(props_path)
            probs = predict_probabilities(models, np.load(img_path), patch, step, flips, device, precision)
            if decision or "target_labels" in dirs:
                target_labels = probs.argmax(0).to(torch.uint8).cpu().numpy()
            if decision:
                after = apply(target_labels, decision)
                probs = remove_from_probabilities(probs, target_labels, after)
                target_labels = after
            if "target_labels" in dirs:
                write_target_labels(dirs["target_labels"] / f"{cid}.npz", target_labels)
            if "probabilities" in dirs:
                write_quantised(dirs["probabilities"] / f"{cid}.npy", probs)
            if "labels" in dirs:
                write_file_labels(dirs["labels"] / f"{cid}.nii.gz", lambda c: probs[c], len(probs), props,
                                  dataset.case(cid).image)
            del probs
            timings[cid] = {"seconds": time.perf_counter() - t0, "peak_mem_mb": peak_memory_mb(device)}
            elapsed = time.perf_counter() - t_start
            print(f"[predict] {i}/{len(case_ids)} {cid} {timings[cid]['seconds']:.1f}s ({len(models)} folds x "
                  f"{flips} mirrorings); ETA {elapsed / i * (len(case_ids) - i):.0f}s", flush=True)
        record = {"models": [str(p) for p in model_paths], "tta_flips": flips, "step": step,
                  "postprocessing": decision, "device": str(device), "cases": timings}
        for d in dirs.values():
            write_json(d / "inference.json", {**record, "provenance": provenance(seed, plan)})
    return timings
