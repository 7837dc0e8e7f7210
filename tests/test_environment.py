"""Pinned environments: the conda file repeats requirements.lock exactly."""

from __future__ import annotations

from importlib import metadata

import pytest
import yaml

from conftest import ROOT


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"requirements.lock: '{line}' is not pinned with =="
            pins[name.lower()] = version
    return pins


def test_every_dependency_is_pinned_and_torch_is_2_13():
    pins = lock_pins()
    assert pins["torch"] == "2.13.0"
    for pkg in ("snakemake", "monai", "nibabel", "surface-distance", "numpy", "pandas"):
        assert pkg in pins


@pytest.mark.parametrize("name, index", [("seggrid.yaml", "https://download.pytorch.org/whl/cpu"),
                                         ("seggrid-cuda.yaml", None)])
def test_conda_envs_match_lock(name, index):
    env = yaml.safe_load((ROOT / "envs" / name).read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    options = [p for p in pip if p.startswith("--")]
    conda_pins = {p.split("==")[0].lower(): p.split("==")[1] for p in pip if not p.startswith("--")}
    assert conda_pins == lock_pins(), f"envs/{name} drifted from requirements.lock"
    assert "python=3.11" in env["dependencies"]
    assert options == ([f"--extra-index-url {index}"] if index else [])


def test_installed_versions_match_lock():
    pins = lock_pins()
    for name in ("torch", "monai", "numpy", "snakemake", "surface-distance"):
        assert metadata.version(name).split("+")[0] == pins[name]
