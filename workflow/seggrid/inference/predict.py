"""Inference: nnU-Net 2.8.1's sliding window (its tile starts, its Gaussian importance map,
mirroring test-time augmentation per tile; :mod:`seggrid.inference.sliding_window`), over every
fold model of one setting at once.

One ``seggrid predict`` job predicts one model: a single fold, or all folds of a 5-fold model,
whose LOGITS are averaged (over tiles, mirrorings and folds, in float32, on the GPU when there
is one) while the job runs, as nnU-Net's multi-fold predictor does; the softmax, or the
argmax, is applied once, to the averaged logits. What it writes, per case, is only what a
later step reads (see :mod:`seggrid.inference.maps`):

* ``--labels-out``: ``<case>.nii.gz`` labels in the input image's exact geometry: the averaged
  logits are resampled class by class and the argmax kept as it goes (the argmax of resampled
  logits is nnU-Net's label), after the model's postprocessing decision
  (``--postprocessing``) when one is given;
* ``--probabilities-out``: ``<case>.npy``, the softmax of the averaged logits (postprocessed),
  quantised to uint8, for an ensemble of several models (the A & B ensemble, which averages
  probabilities as ``nnUNetv2_ensemble`` does);
* ``--target-labels-out``: ``<case>.npz``, uint8 labels at the target spacing, for the
  postprocessing decision on out-of-fold predictions.

The postprocessing decision is applied at the target spacing (where it was made); a voxel it
removes has background probability 1 in the quantised map, and in the logits that make the
written labels background takes its highest logit and every other class its lowest
(:func:`seggrid.inference.maps.remove_from_logits`).
"""

from __future__ import annotations

import pickle
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch

from seggrid.errors import SeggridError
from seggrid.io import atomic_path, provenance, read_json, write_json
from seggrid.plan import Plan
from seggrid.engine.network import MODEL_FORMAT, build_network
from seggrid.inference.maps import remove_from_logits, write_file_labels, write_quantised_softmax, write_target_labels
from seggrid.inference.postprocess import apply
from seggrid.inference.sliding_window import SIGMA_SCALE, sliding_window_logits
from seggrid.engine.recipe import effective_precision
from seggrid.engine.device import peak_memory_mb, require_cuda


def load_model(path: str | Path, device: torch.device) -> tuple[torch.nn.Module, Plan, int | None]:
    """(network in eval mode, its plan, the training seed) from a ``model.pt``."""
    try:
        ckpt = torch.load(path, map_location=device, weights_only=False)
        fmt = ckpt.get("format") if isinstance(ckpt, dict) else None
        if fmt != MODEL_FORMAT:
            raise SeggridError(f"{path}: a model of format {fmt or 'unknown (MONAI DynUNet, before nnU-Net network)'}"
                               f", but this seggrid reads {MODEL_FORMAT}; train it again (delete the file, "
                               f"snakemake reruns the training)")
        plan = Plan.from_dict(ckpt["plan"], str(path))
        model = build_network(plan).to(device)
        model.load_state_dict(ckpt["state_dict"])
    except (OSError, RuntimeError, KeyError, EOFError, pickle.UnpicklingError) as exc:
        raise SeggridError(f"{path}: not a readable seggrid model ({type(exc).__name__}: {exc})") from exc
    model.eval()
    return model, plan, ckpt.get("seed")


def predict(model_paths: list[str | Path], preprocessed: str | Path, case_ids: list[str], *,
            labels_out: str | Path | None = None, probabilities_out: str | Path | None = None,
            target_labels_out: str | Path | None = None, postprocessing: str | Path | None = None,
            dataset=None, step: float = 0.5, flips: int = 8, threads: int = 1, gpus: int = 0,
            file_ending: str = ".nii.gz") -> dict:
    """Predict ``case_ids`` with the average of ``model_paths`` (the folds of one setting) and
    write the outputs asked for (at least one); each folder appears only when the job succeeds.
    ``dataset`` (a :class:`seggrid.data.dataset.Dataset`) is needed for ``labels_out``: the written
    NIfTI copies its input image's header. Labels are ``<case><file_ending>`` (the evaluation
    reads ``.nii.gz``; a submission uses the dataset's ending). The cases may be test cases
    (``preprocessed`` then holds them, without labels): nothing here reads a label."""
    outs = {"labels": labels_out, "probabilities": probabilities_out, "target_labels": target_labels_out}
    if not any(outs.values()):
        raise SeggridError("predict: give at least one of --labels-out, --probabilities-out, --target-labels-out")
    if labels_out and dataset is None:
        raise SeggridError("predict: --labels-out needs --dataset (the written labels copy the input's header)")
    # gpus > 0 without usable CUDA stops here, unless SEGGRID_ALLOW_CPU_FOR_GPU_JOBS=1 (engine/device.py)
    device = torch.device("cuda" if require_cuda(f"predict: model {model_paths[0]}", gpus) else "cpu")
    torch.set_num_threads(threads)
    loaded = [load_model(p, device) for p in model_paths]
    models, plan, seed = [m for m, _, _ in loaded], loaded[0][1], loaded[0][2]
    names = {p.setting.name for _, p, _ in loaded}
    if len(names) > 1:
        raise SeggridError(f"predict: the models are of different settings {sorted(names)}; one job averages "
                           "the folds of ONE setting (several settings are averaged by `seggrid ensemble`)")
    decision = read_json(postprocessing) if postprocessing else None
    patch = list(plan.topology.patch_effective)
    precision = effective_precision(plan.setting.precision, device)
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
            logits = sliding_window_logits(models, np.load(img_path), patch, step, flips, device, precision)
            removed = None
            if decision or "target_labels" in dirs:
                target_labels = logits.argmax(0).to(torch.uint8).cpu().numpy()
            if decision:
                after = apply(target_labels, decision)
                removed = (target_labels > 0) & (after == 0)
                target_labels = after
                remove_from_logits(logits, removed)
            if "target_labels" in dirs:
                write_target_labels(dirs["target_labels"] / f"{cid}.npz", target_labels)
            if "probabilities" in dirs:
                write_quantised_softmax(dirs["probabilities"] / f"{cid}.npy", logits, removed)
            if "labels" in dirs:
                write_file_labels(dirs["labels"] / f"{cid}{file_ending}", logits.__getitem__, len(logits), props,
                                  dataset.case(cid).image)
            del logits, removed
            timings[cid] = {"seconds": time.perf_counter() - t0, "peak_mem_mb": peak_memory_mb(device)}
            elapsed = time.perf_counter() - t_start
            print(f"[predict] {i}/{len(case_ids)} {cid} {timings[cid]['seconds']:.1f}s ({len(models)} folds x "
                  f"{flips} mirrorings); ETA {elapsed / i * (len(case_ids) - i):.0f}s", flush=True)
        record = {"models": [str(p) for p in model_paths], "tta_flips": flips, "step": step,
                  "sliding_window": {"rule": "nnunet-2.8.1", "gaussian_sigma_scale": SIGMA_SCALE,
                                     "averaged": "logits", "accumulator": "float32"},
                  "postprocessing": decision, "device": str(device), "cases": timings}
        for d in dirs.values():
            write_json(d / "inference.json", {**record, "provenance": provenance(seed, plan.to_dict())})
    return timings
