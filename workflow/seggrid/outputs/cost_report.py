"""``seggrid cost`` outputs: the printed table, ``cost.md`` (a report page), and the measured
resources for Snakemake (``--write-resources DIR``).

Resources: Snakemake's ``set-resources`` gives ONE value per rule, but the jobs of rule
``train`` differ by setting. So the measured values go where the rules already read them per
job, the scheduling keys ``settings.<name>.runtime_min`` / ``mem_mb`` and
``inference.runtime_min`` (per fold model), in ``DIR/resources.yaml``, a config file that
Snakemake deep-merges over the grid's config; ``DIR/config.yaml`` is a profile naming both
files (``snakemake --profile DIR -n``). Scheduling keys are outside every plan and its hash
(config.SCHEDULING_KEYS), so using them reruns nothing that is done.

- ``runtime_min`` = ceil(projected wall x margin / 60), at least 2, capped at
  ``cluster.max_runtime_min`` (a longer training is checkpointed and requeued by itself);
- ``mem_mb`` = the calibration's peak host memory x margin, rounded up to 100 MB, written
  only where it was measured on the job's kind of device (a CPU job on a CPU); otherwise
  the config's value stays (a comment says so).
"""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from seggrid.errors import SeggridError
from seggrid.io import atomic_path, write_json


def _hours(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    return f"{seconds / 3600:.2f} h" if seconds >= 360 else f"{seconds / 60:.1f} min"


def table_lines(projection: dict) -> list[str]:
    """Markdown: per setting (train jobs), per table and the grid; memory fit per card."""
    trains: dict[str, list[dict]] = {}
    for j in projection["jobs"]:
        if j["kind"] == "train":
            trains.setdefault(j["setting"], []).append(j)
    cards = [str(c) for c in projection["gpu_mem_gb"]]
    lines = [f"Device: {projection['device']['device']} (torch {projection['device']['torch']}, "
             f"CUDA {projection['device']['cuda']}); engine import {projection['import_s']:.1f} s per job.", "",
             "| setting | jobs | GPUs | per-GPU batch | s / epoch | hours / job | GPU-hours | per-GPU peak | "
             + " | ".join(f"fits {c} GB (fewest GPUs)" for c in cards) + " | timing |",
             "|---|---|---|---|---|---|---|---|" + "---|" * len(cards) + "---|"]
    for name, jobs in trains.items():
        j, fit = jobs[0], projection["memory_fit"][name]
        wall = j.get("wall_s")
        gpu_h = "n/a" if wall is None else f"{sum(x.get('gpu_hours', 0.0) for x in jobs):.1f}"
        cells = [f"{'yes' if fit['cards'][c]['fits'] else 'no'} ({fit['cards'][c]['fewest_gpus'] or 'more partitions'})"
                 for c in cards]
        lines.append(f"| {name} | {len(jobs)} | {j['gpus']} | {j['per_gpu_batch']} | "
                     f"{'n/a' if wall is None else format(j['epoch_s'], '.2f')} | {_hours(wall)} | {gpu_h} | "
                     f"{fit['per_gpu_peak_gb']:.1f} GB | " + " | ".join(cells) + f" | {j['source']} |")
    lines += ["", "| | jobs | training jobs | serial wall | GPU-hours | CPU core-hours | longest job |",
              "|---|---|---|---|---|---|---|"]
    for name, t in [*projection["tables"].items(), ("whole grid", projection["grid"])]:
        if t["projected_jobs"] == 0:
            lines.append(f"| {name} | {t['jobs']} | {t['training_jobs']} | n/a | n/a | n/a | n/a |")
            continue
        part = "" if t["projected_jobs"] == t["jobs"] else f" ({t['projected_jobs']} of {t['jobs']} jobs)"
        lines.append(f"| {name} | {t['jobs']} | {t['training_jobs']} | {t['wall_hours_serial']:.2f} h{part} | "
                     f"{t['gpu_hours']:.1f}{part} | {t['cpu_core_hours']:.2f} | {t['longest_job_hours']:.2f} h |")
    for n, seconds in projection.get("gloo_allreduce_s", {}).items():
        lines += ["", f"Multi-GPU jobs assume perfect data-parallel scaling. Measured here: one all-reduce of the "
                      f"{int(n):,} gradients between 2 gloo ranks on this CPU takes {seconds:.3f} s (not added: "
                      f"GPU ranks use NCCL, which this machine cannot measure)."]
    lines += ["", "Per-GPU peak: " + next(iter(projection["memory_fit"].values()))["kind"]
              + "; 'fewest GPUs' keeps the global batch (ranks split it); 'more partitions': one sample (or slab) does not fit."]
    return lines


def write_outputs(out_dir: Path, projection: dict) -> None:
    """``cost.json`` and ``cost.md`` in ``out_dir`` (atomic)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "cost.json", projection)
    with atomic_path(out_dir / "cost.md") as tmp:
        tmp.write_text("# What the grid will cost\n\n" + "\n".join(table_lines(projection)) + "\n")


def resources(config: dict, projection: dict, margin: float) -> tuple[dict, list[str]]:
    """(config fragment of scheduling keys, notes) from the projection (module docstring)."""
    cap = config["cluster"]["max_runtime_min"]
    device_is_gpu = projection["device_type"] == "cuda"

    def minutes(seconds: float) -> int:
        m = max(2, math.ceil(seconds * margin / 60))
        return m if cap is None else min(m, cap)

    settings, notes = {}, []
    for j in projection["jobs"]:
        if j["kind"] != "train" or j.get("wall_s") is None:
            continue
        entry = settings.setdefault(j["setting"], {"runtime_min": 0})
        entry["runtime_min"] = max(entry["runtime_min"], minutes(j["wall_s"]))
        peak = j.get("host_peak_mb")
        if peak and (j["gpus"] > 0) == device_is_gpu:
            entry["mem_mb"] = max(entry.get("mem_mb", 0), int(math.ceil(peak * margin / 100) * 100))
    for name, entry in settings.items():
        if "mem_mb" not in entry:
            notes.append(f"{name}: mem_mb not measured on this device kind; the config's value stays")
    per_fold = [j["wall_s"] / max(1, j["folds"]) for j in projection["jobs"]
                if j["kind"] == "predict" and j.get("wall_s") is not None]
    fragment = {"settings": settings}
    if per_fold:
        fragment["inference"] = {"runtime_min": minutes(max(per_fold))}
    return fragment, notes


def write_resources(folder: Path, config_files: list[str], config: dict, projection: dict, margin: float) -> Path:
    """``folder/resources.yaml`` (config fragment) and ``folder/config.yaml`` (a profile that
    names the grid's config files and it)."""
    fragment, notes = resources(config, projection, margin)
    if folder.exists() and not folder.is_dir():
        raise SeggridError(f"{folder}: exists and is not a folder (--write-resources takes a folder)")
    folder.mkdir(parents=True, exist_ok=True)
    header = (f"# seggrid cost: measured on {projection['device']['device']}, margin {margin}, capped at "
              f"cluster.max_runtime_min = {config['cluster']['max_runtime_min']}\n"
              + "".join(f"# {n}\n" for n in notes))
    with atomic_path(folder / "resources.yaml") as tmp:
        tmp.write_text(header + yaml.safe_dump(fragment, sort_keys=True))
    files = [str(Path(f).resolve()) for f in config_files] + [str((folder / "resources.yaml").resolve())]
    with atomic_path(folder / "config.yaml") as tmp:
        tmp.write_text("# a Snakemake profile: the grid's config with the measured resources of seggrid cost;\n"
                       "# copy `configfiles` into your cluster profile, or pass the same files to --configfile\n"
                       + yaml.safe_dump({"configfiles": files}, sort_keys=False))
    return folder
