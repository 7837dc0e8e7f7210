"""`seggrid slurm-profile`: the user's SLURM site profile, where Snakemake looks for it.

Snakemake's convention splits the settings in two: the site's (executor, account, partition,
GPU model) live in a profile of the user's, found by name (`--profile slurm` searches
``./slurm``, ``~/.config/snakemake/slurm`` and ``/etc/xdg/snakemake/slurm``); the workflow's
per-rule resources live in the rules. This writes the first kind to
``$XDG_CONFIG_HOME/snakemake/<name>/config.yaml`` (default ``~/.config/...``), and never
overwrites an existing one without ``force``.

Mixed jobs. The SLURM executor (2.8.0, ``utils.set_gres_string``) asks ``--gpus=<model>:<gpu>``
for EVERY job that has a ``gpu_model`` resource (``gpu`` defaulting to 1), so the model must
not be a default resource. The profile carries the site's GPU settings in two default
resources the executor ignores, ``seggrid_gpu_model`` and ``seggrid_gpu_partition``; the GPU
rules (train, predict*) turn them into ``gpu_model`` / ``gres=gpu:<model>:<n>`` and
``slurm_partition`` only for a job whose GPU count is > 0 (``gpu_model_resource``,
``gres_resource``, ``partition_resource``). CPU steps keep ``slurm_partition`` =
``--cpu-partition`` (default: ``--partition``); the account goes to every job.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from seggrid.errors import SeggridError
from seggrid.io import atomic_path


def profile_dir(name: str = "slurm") -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "snakemake" / name


GPU_MODEL = "seggrid_gpu_model"            # default resources that carry the site's GPU settings
GPU_PARTITION = "seggrid_gpu_partition"    # to the GPU rules; the SLURM executor ignores them


def site_profile(account: str | None, partition: str | None, gpu_model: str | None, jobs: int = 50,
                 cpu_partition: str | None = None) -> dict:
    """The profile's settings: the SLURM executor with requeue and retries; the account and
    the CPU partition (``cpu_partition``, default ``partition``) as default resources of every
    job; the GPU partition and model as carriers that only jobs with GPUs turn into sbatch
    options (see the module docstring)."""
    defaults: dict[str, Any] = {"mem_mb": 4000, "runtime": 60}
    if account:
        defaults["slurm_account"] = account
    if cpu_partition or partition:
        defaults["slurm_partition"] = cpu_partition or partition
    if partition:
        defaults[GPU_PARTITION] = partition
    if gpu_model:
        defaults[GPU_MODEL] = gpu_model
    profile = {"executor": "slurm", "jobs": jobs, "latency-wait": 120, "retries": 1, "rerun-incomplete": True,
               "keep-going": True, "printshellcmds": True, "slurm-requeue": True, "default-resources": defaults}
    if not account:
        profile["slurm-no-account"] = True
    return profile


def write_site_profile(name: str = "slurm", account: str | None = None, partition: str | None = None,
                       gpu_model: str | None = None, jobs: int = 50, force: bool = False,
                       cpu_partition: str | None = None) -> Path:
    folder = profile_dir(name)
    target = folder / "config.yaml"
    if target.exists() and not force:
        raise SeggridError(f"{target}: a profile is already there; pass --force to replace it")
    header = ("# SLURM site profile written by `seggrid slurm-profile`: used by\n"
              f"#   snakemake --profile {name} --configfile config/amos22_task1.yaml\n"
              "# Per-rule memory, time and GPUs come from the workflow itself. seggrid_gpu_model and\n"
              "# seggrid_gpu_partition reach only jobs with GPUs (workflow/seggrid/site_profile.py).\n")
    with atomic_path(target) as tmp:
        profile = site_profile(account, partition, gpu_model, jobs, cpu_partition)
        tmp.write_text(header + yaml.safe_dump(profile, sort_keys=False))
    return target


# -- used by the GPU rules' resources (workflow/rules/train.smk) ---------------------------

Count = int | Callable[[Any], int]


def site_default(workflow: Any, name: str) -> str | None:
    """The value of default resource ``name`` as the site profile (or --default-resources)
    gives it, quotes removed; None when absent. ``workflow`` is the Snakefile's global."""
    defaults = workflow.resource_settings.default_resources
    if not defaults or name not in defaults:
        return None
    value = defaults[name]
    raw = getattr(value, "raw", value)
    return None if raw is None else str(raw).strip("'\"") or None


def _per_job(count: Count) -> Callable[[Any], int]:
    return count if callable(count) else (lambda wildcards: count)


def gpu_model_resource(workflow: Any, gpus: Count) -> Callable[[Any], str | None]:
    """Resource ``gpu_model``: the site's model for a job with ``gpus(wildcards) > 0``, else
    None (unset: no ``--gpus=<model>:0``)."""
    model, count = site_default(workflow, GPU_MODEL), _per_job(gpus)
    return lambda wildcards: model if model and (count(wildcards) or 0) > 0 else None


def gres_resource(workflow: Any, gres: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
    """Resource ``gres`` of a multi-node job (``gpu:<per node>``, launch.py) with the site's
    model inserted: ``gpu:<model>:<per node>``; None stays None."""
    model = site_default(workflow, GPU_MODEL)

    def with_model(wildcards: Any) -> str | None:
        value = gres(wildcards)
        if model and value and value.startswith("gpu:") and value.count(":") == 1:
            return f"gpu:{model}:{value.split(':')[1]}"
        return value
    return with_model


def partition_resource(workflow: Any, gpus: Count,
                       gres: Callable[[Any], str | None] | None = None) -> Callable[[Any], str | None]:
    """Resource ``slurm_partition``: the GPU partition for a job with GPUs (``gpus > 0`` or a
    ``gpu`` gres), else the CPU partition (the profile's ``slurm_partition``)."""
    cpu = site_default(workflow, "slurm_partition")
    gpu = site_default(workflow, GPU_PARTITION) or cpu
    count = _per_job(gpus)

    def partition(wildcards: Any) -> str | None:
        uses_gpu = (count(wildcards) or 0) > 0 or "gpu" in ((gres(wildcards) if gres else None) or "")
        return gpu if uses_gpu else cpu
    return partition
