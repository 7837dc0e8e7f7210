"""nnU-Net 2.8.1's whole-case inference, as ``nnUNetv2_predict`` runs it, for benchmarks/speed/predict_vs_nnunet.sh.

Run it with a Python that has nnunetv2 installed:

    NNUNET_PYTHON benchmarks/speed/nnunet_predict.py --model-folder EXPORT --folds 0 [1 2 3 4] --image CASE.nii.gz \
        --out-dir OUT --device cpu|cuda --json-out RESULT.json

``EXPORT`` is a model folder (``seggrid export-nnunet`` writes one). What it does is what the
``nnUNetv2_predict`` command does with its defaults: torch threads = the CPU count on ``cpu``,
1 (and 1 inter-op thread) on ``cuda``; ``nnUNetPredictor(tile_step_size=0.5, use_gaussian=True,
use_mirroring=True, perform_everything_on_device=True, device=...)`` (nnU-Net itself turns
``perform_everything_on_device`` off on the CPU), ``initialize_from_trained_model_folder`` with
``checkpoint_final.pth``, then ``predict_from_files`` with 3 preprocessing and 3 export
processes (-npp 3, -nps 3). Flags that change a default (--step, --npp, --nps, --threads,
--no-mirroring, --not-on-device) are listed in the result's ``not_nnunet_default``.

Timed: the model loading, ``predict_from_files`` (preprocessing in its worker, sliding window
over every fold, resampling and export), and, inside it, ``predict_logits_from_preprocessed_data``
(the sliding window over every fold and mirroring). Memory: CUDA max allocated (cuda), peak
RSS of this process and of its largest child (its workers). Writes ``--json-out`` (and, with
``--save-input``, the preprocessed array, to compare with ``seggrid preprocess``'s).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-folder", required=True)
    p.add_argument("--folds", nargs="+", required=True)
    p.add_argument("--image", required=True, help="the raw case (one channel)")
    p.add_argument("--out-dir", required=True, help="the label file is written here as <case><file_ending>")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda", help="nnUNetv2_predict -device (default cuda)")
    p.add_argument("--step", type=float, default=0.5)
    p.add_argument("--npp", type=int, default=3)
    p.add_argument("--nps", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: as nnUNetv2_predict)")
    p.add_argument("--no-mirroring", action="store_true")
    p.add_argument("--not-on-device", action="store_true")
    p.add_argument("--save-input", default=None,
                   help="also save the preprocessed image the sliding window got (float32 (z, y, x) .npy)")
    p.add_argument("--json-out", required=True)
    a = p.parse_args()
    t_start = time.perf_counter()
    tmp = tempfile.mkdtemp()
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ.setdefault(var, tmp)
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    changed = [f"--{k.replace('_', '-')} {v}" for k, v, d in (("step", a.step, 0.5), ("npp", a.npp, 3), ("nps", a.nps, 3))
               if v != d]
    if a.device == "cpu":
        threads = a.threads or multiprocessing.cpu_count()
    else:
        threads = a.threads or 1
        torch.set_num_interop_threads(1)
    torch.set_num_threads(threads)
    if a.threads:
        changed.append(f"torch threads {a.threads}")
    changed += [f for f, on in (("no mirroring", a.no_mirroring), ("perform_everything_on_device=False", a.not_on_device))
                if on]
    device = torch.device(a.device)
    if a.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    predictor = nnUNetPredictor(tile_step_size=a.step, use_gaussian=True, use_mirroring=not a.no_mirroring,
                                perform_everything_on_device=not a.not_on_device, device=device, verbose=False,
                                verbose_preprocessing=False, allow_tqdm=True)
    folds = [f if f == "all" else int(f) for f in a.folds]
    predictor.initialize_from_trained_model_folder(a.model_folder, folds, "checkpoint_final.pth")
    load_seconds = time.perf_counter() - t0

    window = {"seconds": 0.0, "calls": 0}
    inner = predictor.predict_logits_from_preprocessed_data

    def timed(data):
        if a.device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = inner(data)
        if a.device == "cuda":
            torch.cuda.synchronize()
        window["seconds"] += time.perf_counter() - t
        window["calls"] += 1
        window["input_shape"] = list(data.shape)
        if a.save_input:
            import numpy as np
            np.save(a.save_input, np.asarray(data[0].float().cpu()))
        return out

    predictor.predict_logits_from_preprocessed_data = timed
    name = Path(a.image).name
    case = name[:-7] if name.endswith(".nii.gz") else Path(name).stem
    Path(a.out_dir).mkdir(parents=True, exist_ok=True)
    t1 = time.perf_counter()
    predictor.predict_from_files([[str(a.image)]], [str(Path(a.out_dir) / case)], save_probabilities=False,
                                 overwrite=True, num_processes_preprocessing=a.npp,
                                 num_processes_segmentation_export=a.nps)
    predict_seconds = time.perf_counter() - t1
    result = {
        "side": "nnunet", "nnunetv2": __import__("nnunetv2").__version__ if hasattr(__import__("nnunetv2"), "__version__")
        else "2.8.1", "torch": torch.__version__, "device": a.device, "torch_threads": threads,
        "folds": len(folds), "mirroring": not a.no_mirroring,
        "allowed_mirroring_axes": list(predictor.allowed_mirroring_axes or []),
        "perform_everything_on_device": predictor.perform_everything_on_device,
        "step": a.step, "num_processes_preprocessing": a.npp, "num_processes_segmentation_export": a.nps,
        "load_seconds": round(load_seconds, 3), "predict_from_files_seconds": round(predict_seconds, 3),
        "sliding_window_seconds": round(window["seconds"], 3), "sliding_window_calls": window["calls"],
        "preprocessed_shape": window.get("input_shape"),
        "script_seconds": round(time.perf_counter() - t_start, 3),
        "peak_device_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if a.device == "cuda" else None,
        "peak_rss_main_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_rss_largest_child_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "not_nnunet_default": changed, "label_file": str(Path(a.out_dir) / (case + predictor.dataset_json["file_ending"])),
    }
    Path(a.json_out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    sys.exit(main())
