"""`seggrid slurm-profile`: the user's SLURM site profile, where Snakemake looks for it.

Snakemake's convention splits the settings in two: the site's (executor, account, partition,
GPU model) live in a profile of the user's, found by name (`--profile slurm` searches
``./slurm``, ``~/.config/snakemake/slurm`` and ``/etc/xdg/snakemake/slurm``); the workflow's
per-rule resources live in the rules. This writes the first kind to
``$XDG_CONFIG_HOME/snakemake/<name>/config.yaml`` (default ``~/.config/...``), and never
overwrites an existing one without ``force``.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from seggrid.errors import SeggridError
from seggrid.io import atomic_path


def profile_dir(name: str = "slurm") -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "snakemake" / name


def site_profile(account: str | None, partition: str | None, gpu_model: str | None, jobs: int = 50) -> dict:
    """The profile's settings: the SLURM executor with requeue and retries; the site's
    account, partition and GPU model as default resources of every job."""
    defaults = {"mem_mb": 4000, "runtime": 60}
    if account:
        defaults["slurm_account"] = account
    if partition:
        defaults["slurm_partition"] = partition
    if gpu_model:
        defaults["gpu_model"] = gpu_model
    profile = {"executor": "slurm", "jobs": jobs, "latency-wait": 120, "retries": 1, "rerun-incomplete": True,
               "keep-going": True, "printshellcmds": True, "slurm-requeue": True, "default-resources": defaults}
    if not account:
        profile["slurm-no-account"] = True
    return profile


def write_site_profile(name: str = "slurm", account: str | None = None, partition: str | None = None,
                       gpu_model: str | None = None, jobs: int = 50, force: bool = False) -> Path:
    folder = profile_dir(name)
    target = folder / "config.yaml"
    if target.exists() and not force:
        raise SeggridError(f"{target}: a profile is already there; pass --force to replace it")
    header = ("# SLURM site profile written by `seggrid slurm-profile`: used by\n"
              f"#   snakemake --profile {name} --configfile config/amos22_task1.yaml\n"
              "# Per-rule memory, time and GPUs come from the workflow itself.\n")
    with atomic_path(target) as tmp:
        tmp.write_text(header + yaml.safe_dump(site_profile(account, partition, gpu_model, jobs), sort_keys=False))
    return target
