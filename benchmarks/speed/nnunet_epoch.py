"""nnU-Net v2's own trainer for a few epochs, timed per epoch (benchmarks/speed/epoch_vs_nnunet.sh).

Run it with a Python that has nnunetv2 installed (2.8.1), from the repository root, on a
dataset that benchmarks/speed/nnunet_layout.py wrote:

    /path/to/nnunet-venv/bin/python benchmarks/speed/nnunet_epoch.py --preprocessed-root NNUNET_PREPROCESSED \
        --dataset Dataset990_SeggridBench --epochs 3 --iterations 10 --val-iterations 3 --device cpu \
        --results RESULTS_DIR --out nnunet.json

What runs is ``nnUNetTrainer.run_training`` as ``nnUNetv2_train DATASET 3d_fullres 0 -device D``
runs it: its data loader (``nnUNetDataLoader`` on blosc2 files) in its augmentation workers
(``NonDetMultiThreadedAugmenter``, ``get_allowed_n_proc_DA()`` processes for training and half
as many for validation), its training transforms, ``train_step`` (autocast + grad scaler on
CUDA, fp32 on CPU), validation with pseudo-Dice, its end-of-epoch checkpoint and progress
plot, and ``torch.compile`` of the network and Dice term where nnU-Net does it by default
(CUDA; not on CPU). Torch threads as its CLI sets them: all cores on CPU, 1 on CUDA (with
cudnn.benchmark). The only change is nnU-Net's documented one, a trainer subclass that sets
``num_epochs``, ``num_iterations_per_epoch`` and ``num_val_iterations_per_epoch`` (the poly
schedule follows ``num_epochs``, as ours follows ``epochs``). The final sliding-window
validation of nnUNetv2_train (``perform_actual_validation``) is not part of an epoch and is not run.

Measured, per epoch: nnU-Net's own epoch time (its logger's end - start timestamps: training
+ validation), the epoch's wall time including its end-of-epoch checkpoint and plot, the time
the main process waited in ``next()`` on its loaders (our instrumentation: a thin wrapper
around the two loaders; nnU-Net logs no such split) and peak memory (CUDA max allocated,
reset each epoch; on CPU the main process's peak RSS, workers excluded: see tree_memory.py).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import statistics
import sys
import time
from pathlib import Path


class TimedLoader:
    """Wraps one of nnU-Net's loaders; adds the seconds spent in ``next()``."""

    def __init__(self, loader):
        self.loader, self.wait_seconds = loader, 0.0

    def __iter__(self):
        return self

    def __next__(self):
        t0 = time.perf_counter()
        item = next(self.loader)
        self.wait_seconds += time.perf_counter() - t0
        return item


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preprocessed-root", required=True, help="the nnUNet_preprocessed folder")
    p.add_argument("--dataset", required=True, help="DatasetXXX_Name inside it")
    p.add_argument("--results", required=True, help="nnUNet_results folder for its checkpoints and logs")
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--iterations", type=int, required=True, help="training iterations per epoch")
    p.add_argument("--val-iterations", type=int, required=True, help="validation iterations per epoch")
    p.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--out", required=True, help="JSON written here")
    a = p.parse_args()

    not_default = [f"{k}={os.environ[k]} (not nnU-Net's default: set in the environment)"
                   for k in ("nnUNet_n_proc_DA", "nnUNet_compile") if k in os.environ]
    os.environ["nnUNet_preprocessed"] = str(Path(a.preprocessed_root).resolve())
    os.environ["nnUNet_results"] = str(Path(a.results).resolve())
    os.environ.setdefault("nnUNet_raw", str(Path(a.results).resolve() / "raw_unused"))

    import numpy as np
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from importlib.metadata import version
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

    if a.device == "cpu":                      # nnUNetv2_train -device cpu / cuda (run_training_entry)
        torch.set_num_threads(multiprocessing.cpu_count())
        device = torch.device("cpu")
    else:
        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
        device = torch.device("cuda")

    epochs: list[dict] = []

    class BenchTrainer(nnUNetTrainer):
        """nnUNetTrainer with the benchmark's epoch length, and timing hooks that change nothing."""

        def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                     device: torch.device = torch.device("cuda")):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_epochs = a.epochs
            self.num_iterations_per_epoch = a.iterations
            self.num_val_iterations_per_epoch = a.val_iterations

        def on_train_start(self):
            self.bench_t_setup = time.perf_counter()
            super().on_train_start()
            self.bench_setup_seconds = time.perf_counter() - self.bench_t_setup
            self.bench_loaders = (self.dataloader_train, self.dataloader_val)
            self.dataloader_train = TimedLoader(self.dataloader_train)
            self.dataloader_val = TimedLoader(self.dataloader_val)

        def on_train_end(self):
            waits = (self.dataloader_train.wait_seconds, self.dataloader_val.wait_seconds)
            self.dataloader_train, self.dataloader_val = self.bench_loaders      # so nnU-Net shuts its workers down
            super().on_train_end()
            self.bench_waits = waits

        def on_epoch_start(self):
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
                torch.cuda.reset_peak_memory_stats(self.device)
            self.bench_t0 = time.perf_counter()
            self.bench_wait0 = self.dataloader_train.wait_seconds + self.dataloader_val.wait_seconds
            super().on_epoch_start()

        def on_epoch_end(self):
            logger = self.logger
            super().on_epoch_end()                    # logs the end timestamp, checkpoints, plots
            wall = time.perf_counter() - self.bench_t0
            own = logger.get_value("epoch_end_timestamps", -1) - logger.get_value("epoch_start_timestamps", -1)
            wait = self.dataloader_train.wait_seconds + self.dataloader_val.wait_seconds - self.bench_wait0
            peak = (torch.cuda.max_memory_allocated(self.device) / 2**20 if self.device.type == "cuda"
                    else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
            epochs.append({"epoch": len(epochs), "seconds": round(own, 3), "seconds_with_checkpoint_and_plot": round(wall, 3),
                           "data_wait_seconds": round(wait, 3), "data_wait_fraction": round(wait / own, 4),
                           "peak_mem_mb": round(peak, 1),
                           "train_loss": round(float(logger.get_value("train_losses", -1)), 5),
                           "val_loss": round(float(logger.get_value("val_losses", -1)), 5),
                           "pseudo_dice": round(float(logger.get_value("mean_fg_dice", -1)), 4)})
            print(f"[nnunet_epoch] epoch {len(epochs)}/{a.epochs}: {own:.2f} s (own), wait {wait:.2f} s", flush=True)

    folder = Path(a.preprocessed_root) / a.dataset
    plans = load_json(str(folder / "nnUNetPlans.json"))
    plans["continue_training"] = False                  # what get_trainer_from_args adds
    dataset_json = load_json(str(folder / "dataset.json"))
    if device.type == "cuda":
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = True
    t0 = time.perf_counter()
    trainer = BenchTrainer(plans, "3d_fullres", a.fold, dataset_json, device)
    trainer.run_training()
    total = time.perf_counter() - t0
    network = trainer.network._orig_mod if hasattr(trainer.network, "_orig_mod") else trainer.network
    later = [e["seconds"] for e in epochs[1:]] or [epochs[0]["seconds"]]
    n_proc = get_allowed_n_proc_DA()
    out = {
        "side": "nnunet", "device": str(device), "torch_threads": torch.get_num_threads(),
        "augmentation_workers": {"train": n_proc, "val": max(1, n_proc // 2)} if n_proc else {"train": 0, "val": 0},
        "n_proc_DA_rule": "get_allowed_n_proc_DA(): nnUNet_n_proc_DA if set, else a host-name table "
                          "(12 for unknown hosts), capped at os.cpu_count()",
        "cpu_count": os.cpu_count(), "compile": bool(trainer._do_i_compile()),
        "precision": "fp16 (autocast + grad scaler)" if device.type == "cuda" else "fp32",
        "patch": trainer.configuration_manager.patch_size, "batch": trainer.batch_size,
        "parameters": sum(p.numel() for p in network.parameters()),
        "epochs": a.epochs, "iterations_per_epoch": a.iterations, "val_iterations": a.val_iterations,
        "seconds_per_epoch_median": round(statistics.median(later), 3),
        "seconds_first_epoch": epochs[0]["seconds"],
        "seconds_with_checkpoint_and_plot_median": round(statistics.median(
            [e["seconds_with_checkpoint_and_plot"] for e in epochs[1:]] or [epochs[0]["seconds_with_checkpoint_and_plot"]]), 3),
        "data_wait_fraction_median": round(statistics.median(
            [e["data_wait_fraction"] for e in epochs[1:]] or [epochs[0]["data_wait_fraction"]]), 4),
        "setup_seconds": round(trainer.bench_setup_seconds, 2),
        "total_seconds": round(total, 2),
        "peak_mem_mb": max(e["peak_mem_mb"] for e in epochs),
        "memory_kind": "cuda_max_allocated" if device.type == "cuda" else "peak_rss_main_process",
        "per_epoch": epochs,
        "not_default": not_default + ["trainer subclass: num_epochs, num_iterations_per_epoch, "
                                      "num_val_iterations_per_epoch set by the benchmark (nnU-Net's documented way)",
                                      "perform_actual_validation (after training) not run"],
        "on_cpu": ("nnU-Net on CPU: no autocast, no grad scaler, no torch.compile, no pinned memory "
                   "(its own rules for device cpu)") if device.type == "cpu" else None,
        "versions": {"nnunetv2": version("nnunetv2"), "torch": torch.__version__,
                     "numpy": np.__version__, "python": sys.version.split()[0]},
    }
    Path(a.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
