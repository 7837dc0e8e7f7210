"""`seggrid slurm-profile` writes the site profile where `snakemake --profile slurm` finds it."""

from __future__ import annotations

import os
import subprocess
import sys

import yaml

from conftest import ROOT


def test_one_command_then_profile_slurm_dry_run_from_the_repository_root(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XDG_CONFIG_HOME"} | {"HOME": str(tmp_path)}
    cli = [sys.executable, "-m", "seggrid", "slurm-profile", "--partition", "gpu", "--gpu-model", "a100"]
    first = subprocess.run(cli, cwd=ROOT, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    path = tmp_path / ".config" / "snakemake" / "slurm" / "config.yaml"
    profile = yaml.safe_load(path.read_text())
    assert profile["executor"] == "slurm" and profile["slurm-no-account"] is True
    assert profile["default-resources"]["slurm_partition"] == "gpu"
    # never overwritten without --force
    again = subprocess.run(cli[:4] + ["--account", "lab"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert again.returncode == 2 and "pass --force" in again.stderr and "slurm_account" not in path.read_text()
    forced = subprocess.run(cli[:4] + ["--account", "lab", "--force"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert forced.returncode == 0 and yaml.safe_load(path.read_text())["default-resources"]["slurm_account"] == "lab"
    dry = subprocess.run([sys.executable, "-m", "snakemake", "--profile", "slurm", "-n", "--configfile",
                          "config/amos22_task1.yaml"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    out = dry.stdout + dry.stderr
    assert dry.returncode == 0, out[-3000:]
    assert "gpu=4" in out and "gpu=8" in out and "slurm_account=lab" in out
