"""Shared fixtures: a tiny demo dataset and one pass of every CLI step over it."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The tests run gpus > 0 settings (gloo ranks, fake GPUs) on the CPU: opt in, as documented in
# the README; snakemake runs started by the tests inherit it (engine/device.py require_cuda).
os.environ["SEGGRID_ALLOW_CPU_FOR_GPU_JOBS"] = "1"
sys.path.insert(0, str(ROOT / "workflow"))

from seggrid.cli import main  # noqa: E402

TINY_SETTING = {
    "name": "tiny", "patch": [8, 16, 16], "batch": 2, "loss": "dice_ce", "optimizer": "adam", "lr": 0.01,
    "momentum": 0.99, "weight_decay": 3e-5, "lr_schedule": "poly", "epochs": 2, "iterations_per_epoch": 3,
    "val_iterations": 1, "oversample_foreground": 0.33, "augmentation": "nnunet", "precision": "fp32", "grad_clip": 12,
    "base_features": 4, "max_features": 16, "deep_supervision": True, "max_pools_per_axis": 3,
    "patch_rounding": "down", "gpus": 0, "threads": 1, "mem_mb": 1000, "runtime_min": 10,
}


def tiny_grid_config(tmp: Path, settings: dict, tables: dict, figures: dict, recipe: dict | None = None,
                     inference: dict | None = None, **top) -> Path:
    """A Snakemake config of a tiny grid on a 6-case demo dataset, written to tmp/grid.yaml;
    ``recipe`` / ``inference`` update the tiny defaults, ``top`` adds top-level keys."""
    import yaml

    cfg = {
        "outdir": str(tmp / "results"), "seed": 5, "folds": 2,
        "dataset": {"root": str(tmp / "results" / "demo_data"), "demo": True, "demo_ct_train": 3,
                    "demo_mr_train": 1, "demo_ct_val": 1, "demo_mr_val": 1, "mr_case_id_min": 500},
        "preprocessing": {"target_spacing": [6.0, 6.0, 6.0], "threads": 1},
        "recipe": {"patch": [8, 16, 16], "batch": 2, "optimizer": "adam", "epochs": 2, "iterations_per_epoch": 2,
                   "val_iterations": 1, "precision": "fp32", "base_features": 4, "max_features": 16,
                   "max_pools_per_axis": 3, "patch_rounding": "down", "gpus": 0, "threads": 1, "mem_mb": 1000,
                   "runtime_min": 10, **(recipe or {})},
        "settings": settings,
        "inference": {"tta_flips": 2, "gpus": 0, "threads": 1, "mem_mb": 1000, "runtime_min": 10, **(inference or {})},
        "tables": tables, "figures": figures, **top,
    }
    path = tmp / "grid.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_cli(*args: str) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "demo"
    assert run_cli("make-demo-data", "--out", out, "--seed", 7, "--ct-train", 3, "--mr-train", 2,
                   "--ct-val", 1, "--mr-val", 1) == 0
    return out


@pytest.fixture(scope="session")
def pipeline(demo_dataset, tmp_path_factory) -> dict:
    """Every CLI step once, on the tiny dataset; returns the paths the tests inspect."""
    d = tmp_path_factory.mktemp("run")
    p = {k: d / v for k, v in {
        "check": "check.json", "fingerprint": "fingerprint.json", "splits": "splits.json",
        "preprocessed": "preprocessed", "plan": "plan.json", "train": "train", "labels": "labels", "probs": "probs",
        "ensemble": "ensemble", "csv": "metrics.csv", "summary": "metrics.json"}.items()}
    mr = ("--mr-case-id-min", 500)
    assert run_cli("validate", "--dataset", demo_dataset, *mr, "--out", p["check"]) == 0
    assert run_cli("fingerprint", "--dataset", demo_dataset, *mr, "--out", p["fingerprint"]) == 0
    assert run_cli("split", "--dataset-check", p["check"], "--folds", 2, "--seed", 1, "--out", p["splits"]) == 0
    assert run_cli("preprocess", "--dataset", demo_dataset, *mr, "--fingerprint", p["fingerprint"],
                   "--target-spacing", 6, 6, 6, "--out", p["preprocessed"]) == 0
    assert run_cli("plan", "--setting-json", json.dumps(TINY_SETTING), "--fingerprint", p["fingerprint"],
                   "--dataset-check", p["check"], "--target-spacing", 6, 6, 6, "--out", p["plan"]) == 0
    assert run_cli("train", "--plan", p["plan"], "--preprocessed", p["preprocessed"], "--splits", p["splits"],
                   "--fold", 0, "--seed", 3, "--out", p["train"]) == 0
    assert run_cli("predict", "--model", p["train"] / "model.pt", "--preprocessed", p["preprocessed"],
                   "--splits", p["splits"], "--tta-flips", 2, "--dataset", demo_dataset, *mr,
                   "--labels-out", p["labels"], "--probabilities-out", p["probs"]) == 0
    assert run_cli("ensemble", "--members", p["probs"], "--preprocessed", p["preprocessed"],
                   "--dataset", demo_dataset, *mr, "--out", p["ensemble"]) == 0
    assert run_cli("evaluate", "--predictions", p["ensemble"], "--dataset", demo_dataset, *mr, "--splits",
                   p["splits"], "--metrics-json", "{}", "--out-csv", p["csv"], "--out-json", p["summary"], "--seed", 3) == 0
    p["dataset"] = demo_dataset
    return p
