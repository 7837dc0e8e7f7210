"""The SLURM profile against a real (local, one-node) SLURM with two fake GPUs.

Brings up slurmctld + slurmd + munged (tests/helpers/slurm_cluster.py; apt-installs
slurm-wlm and munge when run as root on Debian), runs a minimal grid through
`--profile profiles/slurm`, requeues a running training job mid-run, and checks:
every training job asked SLURM for the GPUs its setting declares, the job saw that many
devices, training started that many ranks (gloo on CPU, since the devices are fake), and
the requeued job resumed from its checkpoint. Skipped, with the reason, where SLURM cannot
be brought up (not root, no apt-get, no mknod, daemons that do not start, or
SEGGRID_SKIP_SLURM=1); once it is up, any failure of the workflow fails the test.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, tiny_grid_config

sys.path.insert(0, str(ROOT / "tests" / "helpers"))
import slurm_cluster  # noqa: E402

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if os.environ.get("SEGGRID_SKIP_SLURM") == "1":
        pytest.skip("SEGGRID_SKIP_SLURM=1")
    reason = slurm_cluster.ensure_installed()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("slurm")
    try:
        env = slurm_cluster.up(root, memory_mb=12000)
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:    # the machine, not our code
        slurm_cluster.down(root)
        pytest.skip(f"could not start a local SLURM here: {exc}")
    yield env
    slurm_cluster.down(root)


def grid_config(tmp: Path) -> Path:
    return tiny_grid_config(
        tmp,
        settings={"cpu": {}, "one_gpu": {"gpus": 1},
                  # long enough to be requeued mid-run; a checkpoint every epoch
                  "two_gpus": {"gpus": 2, "batch": 4, "epochs": 8, "iterations_per_epoch": 25,
                               "checkpoint_every": 1}},
        tables={"t": {"title": "gpus", "rows": [{"label": n, "setting": n} for n in ("cpu", "one_gpu", "two_gpus")]}},
        figures={"fig1_settings": [], "slices": False},
        recipe={"augmentation": "mirror"},
        inference={"tta_flips": 1, "postprocessing": False},
        metrics={"threads": 1},
    )


def jobs(env) -> list[dict]:
    out = subprocess.run(["scontrol", "show", "job", "-o"], env=env, capture_output=True, text=True).stdout
    return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in out.splitlines() if "JobId=" in line]


def test_minimal_grid_through_the_slurm_profile_with_a_requeue(cluster, tmp_path):
    env = dict(cluster, PYTHONUNBUFFERED="1")
    cfg = grid_config(tmp_path)
    cmd = [sys.executable, "-m", "snakemake", "--profile", "profiles/slurm", "--configfile", str(cfg),
           "--slurm-no-account", "--slurm-init-seconds-before-status-checks", "1", "--slurm-status-command",
           "squeue", "--slurm-logdir", str(tmp_path / "slurm_logs"), "--jobs", "4", "--latency-wait", "15",
           "--slurm-requeue", "--default-resources", "mem_mb=800", "runtime=15", "--set-resources",
           *[f"{rule}:mem_mb=1500" for rule in ("validate_dataset", "fingerprint", "preprocess",
                                                "postprocess_decision", "ensemble", "evaluate")]]
    log = open(tmp_path / "snakemake.log", "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    ckpt = tmp_path / "results" / "train" / "two_gpus" / "fold_0" / "checkpoint_latest.pt"
    requeued = None
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline:
        if requeued is None and ckpt.exists():
            running = [j for j in jobs(env) if j.get("JobState") == "RUNNING" and "two_gpus" in j.get("Comment", "")]
            if running:
                requeued = running[0]["JobId"]
                subprocess.run(["scontrol", "requeue", requeued], env=env, check=True)
        time.sleep(0.5)
    if proc.poll() is None:
        proc.kill()
    log.close()
    text = (tmp_path / "snakemake.log").read_text()
    assert proc.returncode == 0, text[-4000:]
    assert requeued, "the two-GPU training job was never seen running after its first checkpoint"

    # each training job's SLURM id, from snakemake's "submitted with SLURM jobid N (log: .../rule_train/<setting>_<fold>/N.log)"
    submitted = {m.group(2): m.group(1) for m in
                 re.finditer(r"SLURM jobid (\d+) \(log: \S*/rule_train/(\w+)_0/", text)}
    assert set(submitted) == {"cpu", "one_gpu", "two_gpus"}, submitted
    by_id = {j["JobId"]: j for j in jobs(env)}
    for setting, gpus in (("cpu", 0), ("one_gpu", 1), ("two_gpus", 2)):
        job = by_id[submitted[setting]]
        tres = " ".join(job.get(k, "") for k in ("TresPerJob", "TresPerNode", "ReqTRES", "AllocTRES"))
        if gpus:
            assert re.search(rf"gpu[:=]{gpus}\b", tres), (setting, tres)
        else:
            assert "gpu" not in tres, (setting, tres)
        train_log = (tmp_path / "results" / "logs" / "train" / setting / "fold_0.log").read_text()
        visible = re.search(r"CUDA_VISIBLE_DEVICES=(\S+),", train_log).group(1)
        assert visible == (",".join(str(i) for i in range(gpus)) if gpus else "<unset>"), (setting, visible)
        summary = json.loads((tmp_path / "results" / "train" / setting / "fold_0" / "summary.json").read_text())
        assert summary["world_size"] == max(gpus, 1)
    two = (tmp_path / "results" / "logs" / "train" / "two_gpus" / "fold_0.log").read_text()
    assert "distributed: 2 ranks, backend gloo (no usable CUDA device: ranks run on CPU)" in two
    assert "resumed from" in two, two[-2000:]
    assert by_id[submitted["two_gpus"]].get("Restarts") == "1"      # SLURM's own record of the requeue
    assert (tmp_path / "results" / "tables" / "t.csv").exists()
