"""`seggrid slurm-profile` writes the site profile where `snakemake --profile slurm` finds it."""

from __future__ import annotations

import os
import re
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
             for m in re.findall(r"^rule (\w+):", f.read_text(), re.M)}
    from_config = {"train", "predict", "predict_member", "predict_cv"}     # resources from the config
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
    for command in commands:
        if command in runs:
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
