"""`seggrid slurm-profile` writes the site profile where `snakemake --profile slurm` finds it."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
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
    # the CPU steps' memory and time come from the workflow profile (profiles/default), loaded
    # with no flag; a dry run caps threads at --cores (1), so preprocess shows 1000 + 4500 x 1
    for rule, wanted in (("preprocess", ("mem_mb=5500", "runtime=240")), ("evaluate", ("mem_mb=8000", "runtime=360")),
                         ("validate_dataset", ("mem_mb=4000", "runtime=60"))):
        block = re.search(rf"\nrule {rule}:\n(?:    [^\n]*\n)*?    resources: ([^\n]+)", out)
        assert block and all(w in block.group(1) for w in wanted), (rule, block and block.group(1))


def test_every_cpu_step_has_measured_resources_in_the_workflow_profile():
    profile = yaml.safe_load((ROOT / "profiles" / "default" / "config.yaml").read_text())
    assert set(profile) == {"set-resources"}       # nothing a site profile sets: the workflow profile overrides it
    rules = {m for f in (ROOT / "workflow" / "rules").glob("*.smk")
             for m in re.findall(r"^\s*(?:rule (\w+):|use rule \w+ as (\w+) with:)", f.read_text(), re.M)}
    rules = {a or b for a, b in rules}
    # from the config (inference.*, the settings); the submission: a predict job's, or rule ensemble's
    from_config = {"train", "predict", "predict_member", "predict_cv", "predict_test_member", "submission"}
    assert set(profile["set-resources"]) == rules - from_config - {"all"}
    assert all({"mem_mb", "runtime"} <= set(r) for r in profile["set-resources"].values())


def readme_cluster_commands() -> list[str]:
    """The command lines of the bash blocks in README.md's "Running on a cluster"."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Running on a cluster"):]
    section = section[:section.index("\n## ", 3)]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_the_readme_cluster_commands_are_the_ones_the_tests_run(tmp_path):
    """Each command of the README's cluster section runs here as written (".venv/bin/" is
    this interpreter's folder), in a temporary HOME: the site profile, the dry runs, status.
    The real runs (no -n) are the dry runs without -n; tests/test_slurm.py runs that form."""
    commands = readme_cluster_commands()
    assert commands[0] == ".venv/bin/python -m seggrid slurm-profile --account my_account --partition gpu --gpu-model a100"
    runs = [c for c in commands if c.startswith(".venv/bin/snakemake --profile slurm --configfile ")]
    assert [r.split()[-1] for r in runs] == ["config/amos22_task1.yaml", "config/amos22_task2.yaml"]
    assert ".venv/bin/snakemake --profile slurm -n --configfile config/amos22_task1.yaml" in commands
    assert ".venv/bin/python -m seggrid status --configfile config/amos22_task1.yaml" in commands
    env = {k: v for k, v in os.environ.items() if k != "XDG_CONFIG_HOME"} | {"HOME": str(tmp_path)}
    bindir = os.path.dirname(sys.executable) + "/"
    outputs = {}
    # seggrid cost at AMOS size takes minutes on a CPU; tests/test_cost.py runs both commands'
    # form (cost --write-resources, then a dry run with the written resources.yaml) on a small grid
    costs = [c for c in commands if " seggrid cost " in c or c.endswith("cost/profile/resources.yaml")]
    assert costs == [".venv/bin/python -m seggrid cost --configfile config/amos22_task1.yaml --write-resources "
                     "results/amos22_task1/cost/profile",
                     ".venv/bin/snakemake --profile slurm -n --configfile config/amos22_task1.yaml "
                     "results/amos22_task1/cost/profile/resources.yaml"]
    for command in commands:
        if command in runs or command in costs:
            continue
        args = command.replace(".venv/bin/", bindir).split()
        proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, (command, (proc.stdout + proc.stderr)[-3000:])
        outputs[command] = proc.stdout + proc.stderr
    profile = yaml.safe_load((tmp_path / ".config" / "snakemake" / "slurm" / "config.yaml").read_text())
    assert profile["default-resources"]["slurm_account"] == "my_account" and profile["executor"] == "slurm"
    dry = outputs[".venv/bin/snakemake --profile slurm -n --configfile config/amos22_task1.yaml"]
    assert "slurm_account=my_account" in dry and "gpu=8" in dry
    status = outputs[".venv/bin/python -m seggrid status --configfile config/amos22_task1.yaml"]
    if not (ROOT / "results" / "amos22_task1").exists():
        assert "training: 0 done, 0 running, 0 failed, 21 pending" in status
    # the subsets: one table (4 trainings), one setting's fold-0 model (1), one fold of a 5-fold model (1)
    subsets = {c.split()[4]: outputs[c] for c in commands if c.split()[3:4] == ["-n"] and "--configfile" in c.split()[5:6]}
    assert {t: len(re.findall(r"rule train:", out)) for t, out in subsets.items()} == {
        "table1": 4, "results/amos22_task1/metrics/p288_bs2_topk__f0.json": 1,
        "results/amos22_task1/train/p160_bs16_ce/fold_3/model.pt": 1}, list(subsets)


def dry_run_jobs(out: str) -> list[dict]:
    """Each job of a ``snakemake -n`` printout: rule, wildcards, threads and resources (ints
    where they are ints)."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:\n)", out):
        head = re.match(r"(?:local)?rule (\w+):\n", block)
        if not head or head.group(1) == "all":
            continue
        fields = dict(re.findall(r"^    (\w+): (.*)$", block, re.M))
        resources = {}
        for item in fields.get("resources", "").split(", "):
            key, _, value = item.partition("=")
            resources[key] = int(value) if value.lstrip("-").isdigit() else value
        jobs.append({"rule": head.group(1), "threads": int(fields.get("threads", 1)), "resources": resources,
                     "wildcards": dict(w.split("=", 1) for w in fields["wildcards"].split(", "))
                     if "wildcards" in fields else {}})
    return jobs


class _Resources(dict):
    """job.resources as the SLURM executor reads it: .get() and attribute access."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def sbatch_call(job: dict) -> str:
    """The sbatch command line the SLURM executor 2.8.0 builds for ``job``, with its own
    code: get_submit_command, the partition from Executor.get_partition_arg, set_gres_string.
    The account is quoted as the executor does after validating it with sacctmgr."""
    import shlex
    from types import SimpleNamespace

    from snakemake_executor_plugin_slurm import Executor
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    fake = SimpleNamespace(resources=_Resources(job["resources"]), threads=job["threads"], name=job["rule"])
    no_cluster = SimpleNamespace(_partitions=None, _fallback_partition="", logger=None)
    account = job["resources"].get("slurm_account")
    params = {"run_uuid": "uuid", "slurm_logfile": "/tmp/log/%j.log", "comment_str": f"rule_{job['rule']}",
              "account": f" -A {shlex.quote(account)}" if account else "",
              "partition": Executor.get_partition_arg(no_cluster, fake), "workdir": "/work"}
    return get_submit_command(fake, params) + set_gres_string(fake)


@pytest.mark.parametrize("inference_gpus,gpus_per_node", [(1, 8), (0, 4)])
def test_gpu_model_and_partition_reach_only_the_jobs_with_gpus(tmp_path, inference_gpus, gpus_per_node):
    """The AMOS Task 1 DAG through `--profile slurm` made with --gpu-model and two
    partitions, each job's sbatch line built by the SLURM executor's own code: no CPU job
    (nor a gpu=0 predict job) asks for a GPU or the GPU partition; every GPU job asks for
    exactly its setting's GPUs, with the model (``--gpus=a100:<n>``, or per node
    ``--gres=gpu:a100:<n>`` with ``--nodes`` when it spans nodes), on the GPU partition;
    every job gets the account."""
    from seggrid.config import load_config, resolve_setting

    config = yaml.safe_load((ROOT / "config" / "amos22_task1.yaml").read_text())
    config.setdefault("inference", {})["gpus"] = inference_gpus
    config.setdefault("cluster", {})["gpus_per_node"] = gpus_per_node
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(config))
    expected_config = load_config(tmp_path / "grid.yaml")
    env = {k: v for k, v in os.environ.items() if k != "XDG_CONFIG_HOME"} | {"HOME": str(tmp_path)}
    made = subprocess.run([sys.executable, "-m", "seggrid", "slurm-profile", "--account", "lab", "--partition",
                           "accel", "--cpu-partition", "standard", "--gpu-model", "a100"],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    dry = subprocess.run([sys.executable, "-m", "snakemake", "--profile", "slurm", "-n", "--configfile",
                          str(tmp_path / "grid.yaml")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0, (dry.stdout + dry.stderr)[-3000:]
    jobs = dry_run_jobs(dry.stdout + dry.stderr)
    rules = {j["rule"] for j in jobs}
    assert {"train", "predict_cv", "predict_member", "evaluate", "preprocess", "table"} <= rules, rules
    gpu_jobs = 0
    for job in jobs:
        call = sbatch_call(job)
        assert " -A lab" in call, (job["rule"], call)
        if job["rule"] == "train":
            gpus = resolve_setting(expected_config, re.sub(r"/seed_\d+$", "", job["wildcards"]["setting"]))["gpus"]
        elif job["rule"].startswith("predict"):
            gpus = inference_gpus
        else:
            gpus = 0
        if gpus == 0:
            assert "gpu" not in call and " -p standard" in call, (job["rule"], call)
            continue
        gpu_jobs += 1
        assert " -p accel" in call, (job["rule"], call)
        if gpus <= gpus_per_node:
            assert re.findall(r"--(gpus|gres)=(\S+)", call) == [("gpus", f"a100:{gpus}")], (job["rule"], call)
        else:
            assert re.findall(r"--(gpus|gres)=(\S+)", call) == [("gres", f"gpu:a100:{gpus_per_node}")], call
            assert f"--nodes={gpus // gpus_per_node}" in call, call
    trainings = sum(j["rule"] == "train" for j in jobs)
    predictions = sum(j["rule"].startswith("predict") for j in jobs)
    assert trainings == 21 and predictions > 0
    assert gpu_jobs == trainings + (predictions if inference_gpus else 0)
