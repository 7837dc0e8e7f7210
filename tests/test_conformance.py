"""Conformance with nnU-Net 2.8.1, without nnU-Net: our code against nnU-Net's own answers recorded
in ``tests/fixtures/nnunet/`` by ``benchmarks/conformance/record_nnunet_fixtures.py``.

One test per recipe component (``benchmarks/conformance/recipe/<name>.py``: planner, resampling, sampler,
augmentation, loss, lr_schedule, sliding_window). Each runs the component's ``check(folder)``
-- the same comparison, with the same tolerances, as ``benchmarks/conformance/recipe_vs_nnunet.py`` runs
against a live nnU-Net -- on the fixture's recorded inputs and nnU-Net outputs (the components'
small variants). Regenerate the fixtures after a change of a component's inputs:

    .venv/bin/python benchmarks/conformance/record_nnunet_fixtures.py NNUNET_PYTHON
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from conftest import ROOT

RECIPE_DIR = ROOT / "benchmarks" / "conformance" / "recipe"
FIXTURES = ROOT / "tests" / "fixtures" / "nnunet"
COMPONENTS = ["planner", "resampling", "normalisation", "sampler", "augmentation", "loss", "lr_schedule",
              "sliding_window"]
MAX_FIXTURE_BYTES = 3_500_000
# keys of a component's report that list what differs
DIFFERENCE_KEYS = ("different", "differences", "mismatch_details", "quota_differences", "separate_axis_differences")

if str(RECIPE_DIR) not in sys.path:
    sys.path.insert(0, str(RECIPE_DIR))     # the components import their `common` module


def component(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"seggrid_recipe_{name}", RECIPE_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def failures(obj: Any, path: str = "") -> list[str]:
    """Where a component's report says something does not match: sub-reports with ``match`` or
    ``ok`` false and the non-empty lists of differences, as 'path: value' lines."""
    out: list[str] = []
    if isinstance(obj, dict):
        if path and (obj.get("match") is False or obj.get("ok") is False):
            shown = {k: v for k, v in obj.items() if k not in ("match", "ok") and not isinstance(v, (dict, list))
                     or k in ("rate", "mean", "min", "max", "below_1", "ours", "nnunet")}
            out.append(f"{path}: {json.dumps(shown, default=str)[:400]}")
        for key, value in obj.items():
            if key in DIFFERENCE_KEYS and value:
                out.append(f"{path}.{key}: {json.dumps(value, default=str)[:1500]}")
            elif isinstance(value, (dict, list)):
                out += failures(value, f"{path}.{key}" if path else key)
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            out += failures(value, f"{path}[{i}]")
    return out


@pytest.mark.parametrize("name", COMPONENTS)
def test_matches_nnunet_2_8_1(name, tmp_path):
    folder = FIXTURES / name
    assert folder.is_dir(), f"{folder}: no fixture; record it with benchmarks/conformance/record_nnunet_fixtures.py"
    work = tmp_path / name
    shutil.copytree(folder, work)                       # a check never writes into the repository
    report = component(name).check(work)
    assert report["component"] == name
    lines = failures(report) or [json.dumps(report, default=str)[:3000]]
    assert report["match"], f"{name} differs from nnU-Net 2.8.1:\n" + "\n".join(lines[:20])


def test_the_fixtures_are_nnunet_2_8_1s_and_small():
    manifest = json.loads((FIXTURES / "MANIFEST.json").read_text())
    assert manifest["nnunet_side"]["nnunetv2"] == "2.8.1"
    assert set(manifest["components"]) == set(COMPONENTS)
    on_disk = sum(f.stat().st_size for f in FIXTURES.rglob("*") if f.is_file())
    assert on_disk <= MAX_FIXTURE_BYTES, f"fixtures take {on_disk} bytes"
    for name, entry in manifest["components"].items():
        assert entry["match_when_recorded"], name
        assert all((FIXTURES / f["file"]).is_file() for f in entry["files"]), name


def test_the_failure_summary_names_what_differs():
    report = {"component": "x", "match": False,
              "parameters": {"3d": {"match": False, "different": {"SpatialTransform.p_rotation": {"ours": 0.3,
                                                                                                  "nnunet": 0.2}}}},
              "draws": {"3d": {"match": False, "scale": {"ok": False, "rate": [0.3, 0.2]}, "gamma": {"ok": True}}}}
    text = "\n".join(failures(report))
    assert "parameters.3d.different" in text and "p_rotation" in text
    assert "draws.3d.scale" in text and "draws.3d.gamma" not in text
