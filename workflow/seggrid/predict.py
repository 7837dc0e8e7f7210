"""Inference: sliding window (MONAI, Gaussian importance weighting, sigma = patch/8) with
mirroring test-time augmentation.

``predict`` writes one ``<case>.npz`` of float16 softmax probabilities (C, z, y, x) at the
target spacing per evaluation case; :mod:`seggrid.ensemble` averages and exports them.
"""

from __future__ import annotations

import itertools
import pickle
import time
from pathlib import Path

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from seggrid.errors import SeggridError
from seggrid.io import atomic_path, provenance, write_json
from seggrid.network import MODEL_FORMAT, build_network
from seggrid.recipe import autocast, effective_precision
from seggrid.train import peak_memory_mb

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


@torch.no_grad()
def predict_probabilities(model: torch.nn.Module, image: np.ndarray, patch: list[int], step: float,
                          flips: int, device: torch.device, precision: str = "fp32") -> torch.Tensor:
    """Softmax probabilities (C, z, y, x) for one preprocessed image (z, y, x)."""
    x = torch.from_numpy(np.ascontiguousarray(image))[None, None].float().to(device)
    total = None
    for axes in tta_flips(flips):
        xf = torch.flip(x, axes) if axes else x
        with autocast(device, precision):
            logits = sliding_window_inference(xf, roi_size=tuple(patch), sw_batch_size=2, predictor=model,
                                              overlap=1 - step, mode="gaussian", sigma_scale=0.125,
                                              padding_mode="constant", cval=0.0)
        probs = torch.softmax(logits.float(), 1)
        probs = torch.flip(probs, axes) if axes else probs
        total = probs if total is None else total + probs
    return (total / len(tta_flips(flips)))[0].cpu()


def predict(model_path: str | Path, preprocessed: str | Path, case_ids: list[str], out: str | Path,
            step: float = 0.5, flips: int = 8, threads: int = 1, gpus: int = 0) -> dict:
    device = torch.device("cuda" if gpus > 0 and torch.cuda.is_available() else "cpu")
    torch.set_num_threads(threads)
    model, plan, seed = load_model(model_path, device)
    patch = plan["topology"]["patch_effective"]
    preprocessed = Path(preprocessed)
    timings = {}
    with atomic_path(out) as tmp:
        tmp.mkdir()
        for i, cid in enumerate(case_ids, 1):
            t0 = time.time()
            image = np.load(preprocessed / f"{cid}_img.npy")
            probs = predict_probabilities(model, image, patch, step, flips, device,
                                          effective_precision(plan["setting"]["precision"], device))
            np.savez_compressed(tmp / f"{cid}.npz", probs=probs.numpy().astype(np.float16))
            timings[cid] = {"seconds": time.time() - t0, "peak_mem_mb": peak_memory_mb(device)}
            print(f"[predict] {i}/{len(case_ids)} {cid} {timings[cid]['seconds']:.1f}s", flush=True)
        write_json(tmp / "inference.json", {"model": str(model_path), "tta_flips": flips, "step": step,
                                            "device": str(device), "cases": timings,
                                            "provenance": provenance(seed, plan)})
    return timings
