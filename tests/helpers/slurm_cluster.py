"""A local SLURM cluster (slurmctld + munged + one slurmd per node), two fake GPUs per node.

With ``nodes=2`` (the default) two slurmd daemons (``slurmd -N seg1`` / ``-N seg2``, their own
ports, spool directories and logs) stand for two nodes of one host, so a job of
``--nodes=2`` really gets two SLURM nodes and its tasks are launched by two different
daemons; ``SLURMD_NODENAME`` tells a task which node it is on.

State, spool and logs live in a temp dir; the config goes to /etc/slurm/slurm.conf (any
existing one is kept aside and restored by ``down``), because snakemake's SLURM executor
removes SLURM_* variables, SLURM_CONF included, from the jobs it submits, so a config
outside the default path is not found by ``srun`` inside a job.

Used by tests/test_slurm.py; also runnable by hand:
    SEGGRID_ALLOW_CPU_FOR_GPU_JOBS=1 python tests/helpers/slurm_cluster.py up /tmp/slurm  # fake GPUs: jobs run on the CPU
    python tests/helpers/slurm_cluster.py down /tmp/slurm
Needs root and Debian's slurm-wlm + munge (``ensure_installed`` apt-installs them).

It changes the machine (apt-get, /etc/slurm, mknod /dev/nvidia*, /run/munge, scancel), so
every function that does refuses unless asked: ``SEGGRID_TEST_SLURM=1`` or ``CI=true`` in
the environment (``opted_in``); `.ci/run` sets ``CI=true``. The command line above sets
SEGGRID_TEST_SLURM=1 itself: typing it is asking.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

GPUS = 2          # per node
NODE_PORT = 17001
OPT_IN = "SEGGRID_TEST_SLURM=1 or CI=true"
NOT_ASKED = (f"the SLURM tests install packages, write /etc/slurm, create /dev/nvidia* and run scancel: "
             f"set {OPT_IN} to run them")


def opted_in() -> bool:
    """Whether the user asked for the system-changing SLURM set-up (SEGGRID_TEST_SLURM=1 or CI=true)."""
    return os.environ.get("SEGGRID_TEST_SLURM") == "1" or os.environ.get("CI") == "true"


def require_opt_in() -> None:
    if not opted_in():
        raise RuntimeError(NOT_ASKED)


def node_names(nodes: int) -> list[str]:
    return [f"seg{i + 1}" for i in range(nodes)]


def ensure_installed() -> str | None:
    """None when slurmctld/slurmd/munged are usable (installing them if root and apt can),
    else the reason they are not. Refuses (RuntimeError) unless ``opted_in()``."""
    require_opt_in()
    if all(shutil.which(b) for b in ("slurmctld", "slurmd", "munged", "sbatch")):
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "SLURM is not installed and this is not a root Debian machine with apt-get"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "install", "-y", "-q", "slurm-wlm", "munge"],
                ["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "slurm-wlm", "munge"]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if proc.returncode == 0 and cmd[1] == "install":
            return None
    return f"apt-get install slurm-wlm munge failed: {proc.stderr[-500:]}"


def write_config(root: Path, cpus: int, memory_mb: int, nodes: int = 2) -> Path:
    require_opt_in()
    host = socket.gethostname().split(".")[0]
    for d in ("state", "log", *(f"spool/{n}" for n in node_names(nodes))):
        (root / d).mkdir(parents=True, exist_ok=True)
    etc = Path("/etc/slurm")
    etc.mkdir(parents=True, exist_ok=True)
    conf = etc / "slurm.conf"
    names = node_names(nodes)
    node_lines = "\n".join(f"NodeName={n} NodeHostname={host} NodeAddr=127.0.0.1 Port={NODE_PORT + i} CPUs={cpus} "
                           f"RealMemory={memory_mb} Gres=gpu:{GPUS} State=UNKNOWN" for i, n in enumerate(names))
    for name in ("slurm.conf", "gres.conf"):
        if (etc / name).exists() and "seggridtest" not in (etc / name).read_text():
            shutil.copy2(etc / name, root / f"{name}.orig")
    conf.write_text(f"""# seggridtest: written by tests/helpers/slurm_cluster.py
ClusterName=seggridtest
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# a requeued job waits cred_expire + 1 s before it may start again (default 120 s)
AuthInfo=cred_expire=10
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.%n.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.%n.log
SlurmctldPort=6817
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobRequeue=1
ReturnToService=2
SchedulerType=sched/backfill
MinJobAge=600
{node_lines}
PartitionName=debug Nodes={",".join(names)} Default=YES MaxTime=INFINITE State=UP
""")
    (etc / "gres.conf").write_text("# seggridtest\n" + "".join(
        f"NodeName={n} Name=gpu File=/dev/nvidia[{i * GPUS}-{(i + 1) * GPUS - 1}]\n" for i, n in enumerate(names)))
    return conf


def up(root: str | Path, cpus: int | None = None, memory_mb: int = 8000, timeout: float = 60,
       nodes: int = 2) -> dict:
    """Start the cluster; returns the environment to run SLURM commands in."""
    require_opt_in()
    root = Path(root)
    for i in range(GPUS * nodes):
        dev = Path(f"/dev/nvidia{i}")
        if not dev.exists():
            subprocess.run(["mknod", str(dev), "c", "195", str(i)], check=True)
    Path("/run/munge").mkdir(parents=True, exist_ok=True)
    shutil.chown("/run/munge", "munge", "munge")
    if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode != 0:
        subprocess.run(["runuser", "-u", "munge", "--", "munged", "--force"], check=True)
    write_config(root, cpus or os.cpu_count() or 2, memory_mb, nodes)
    env = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"}
    subprocess.run(["slurmctld", "-c"], check=True, env=env)
    for name in node_names(nodes):
        subprocess.run(["slurmd", "-c", "-N", name], check=True, env=env)
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=env, capture_output=True, text=True).stdout.split()
        if len(out) == nodes and all(state in ("idle", "mixed", "allocated") for state in out):
            return env
        time.sleep(0.5)
    down(root)
    raise RuntimeError(f"SLURM nodes did not become idle (states {out!r}); see {root}/log")


def down(root: str | Path) -> None:
    require_opt_in()
    root = Path(root)
    env = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"}
    subprocess.run(["scancel", "--full", "-u", "root"], env=env, capture_output=True)
    for p in [*root.glob("slurmd*.pid"), root / "slurmctld.pid"]:
        if p.exists():
            try:
                os.kill(int(p.read_text().strip()), 15)
            except (ProcessLookupError, ValueError):
                pass
    time.sleep(1)
    for name in ("slurm.conf", "gres.conf"):
        orig, etc = root / f"{name}.orig", Path("/etc/slurm") / name
        if orig.exists():
            shutil.copy2(orig, etc)
        elif etc.exists() and "seggridtest" in etc.read_text():
            etc.unlink()


if __name__ == "__main__":
    action, where = sys.argv[1], sys.argv[2]
    os.environ["SEGGRID_TEST_SLURM"] = "1"     # typed by hand: asked for
    if action == "up":
        reason = ensure_installed()
        if reason:
            raise SystemExit(reason)
        up(where)
        print("SLURM is up (config in /etc/slurm)")
    else:
        down(where)
