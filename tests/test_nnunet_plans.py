"""One nnU-Net plans builder (``seggrid.outputs.export_nnunet.nnunet_plans``): the speed
benchmark's layout and the conformance recipe get export-nnunet's plans."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest

from seggrid.errors import SeggridError
from seggrid.outputs.export_nnunet import make_plans, nnunet_plans

ROOT = Path(__file__).resolve().parents[1]

PLAN = {"setting": {"name": "tiny", "batch": 2, "batch_dice": False, "norm": "instance"},
        "topology": {"patch_effective": [8, 16, 16], "strides": [[1, 1, 1], [2, 2, 2], [1, 2, 2]],
                     "kernels": [[1, 3, 3], [3, 3, 3], [3, 3, 3]], "features": [4, 8, 16]},
        "target_spacing": [6.0, 3.0, 2.0], "transpose": [0, 2, 1], "labels": {"0": "background", "1": "a"},
        "n_classes": 2}
CT = {"percentile_00_5": -249.0, "percentile_99_5": 552.0, "mean": 114.2, "std": 143.7, "n_samples": 50000}
MANIFEST = {"normalization": {"option": "channel_name", "channel_name": "CT", "zscore_uses_nonzero_mask": False,
                              "ct_statistics": CT},
            "cases": {"a": {"shape": [14, 48, 49], "normalization": "ct"},
                      "b": {"shape": [12, 40, 51], "normalization": "ct"}}}


def _module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_speed_benchmark_layout_plans_are_export_nnunets():
    layout = _module(ROOT / "benchmarks/speed/plans_for_nnunet.py", "plans_for_nnunet")
    ours = layout.plans_for_layout(copy.deepcopy(PLAN), copy.deepcopy(MANIFEST), Path("m.json"), "Dataset990_x")
    export = make_plans(copy.deepcopy(PLAN), copy.deepcopy(MANIFEST), Path("m.json"), "Dataset990_x")
    assert ours.pop("experiment_planner_used") == layout.PLANNER
    export.pop("experiment_planner_used")
    assert ours == export


def test_builder_takes_plain_facts_without_a_manifest():
    plans = nnunet_plans(PLAN, "D", "ct", CT, False, [13.0, 44.0, 50.0], "channel_name")
    assert plans == make_plans(PLAN, MANIFEST, Path("m.json"), "D")
    conf = plans["configurations"]["3d_fullres"]
    assert conf["spacing"] == [6.0, 2.0, 3.0] and plans["transpose_backward"] == [0, 2, 1]
    assert conf["architecture"]["arch_kwargs"]["strides"] == PLAN["topology"]["strides"]
    z = nnunet_plans(PLAN, "D", "zscore", None, True, None, "zscore")
    zc = z["configurations"]["3d_fullres"]
    assert zc["normalization_schemes"] == ["ZScoreNormalization"] and zc["use_mask_for_norm"] == [True]
    assert zc["median_image_size_in_voxels"] == PLAN["topology"]["patch_effective"]
    assert z["foreground_intensity_properties_per_channel"] == {"0": {}}
    with pytest.raises(SeggridError, match="norm 'group'"):
        nnunet_plans({**PLAN, "setting": {**PLAN["setting"], "norm": "group"}}, "D", "ct", CT, False, None, "x")
