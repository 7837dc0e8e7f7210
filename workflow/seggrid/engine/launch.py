"""How a training job is launched and what it asks the cluster for.

- 0 or 1 GPU: one process, ``python -m seggrid train ...``.
- 2 .. ``gpus_per_node`` GPUs: one node, ``torchrun --standalone --nproc_per_node=N``.
- more: ``nodes = gpus / gpus_per_node`` nodes (``gpus`` must be a multiple of
  ``gpus_per_node``), one torchrun agent per node; the agents meet at a c10d rendezvous on
  the allocation's first node, named by the job id.

Multi-node jobs use the SLURM executor's documented way to run several tasks: the ``mpi``
resource (the task launcher, ``srun``) with ``tasks`` (one per node) and ``nodes``. With
``mpi`` set, the executor runs the rule's command in the batch step itself instead of
wrapping it in ``srun -n1``, and the command's own ``srun`` starts the per-node agents: no
nested ``srun``. ``gres=gpu:<gpus_per_node>`` asks for the GPUs per node, and
``tasks_per_gpu=0`` keeps the executor from adding ``--ntasks-per-gpu``, which would bind
each agent to a single GPU.
"""

from __future__ import annotations

from seggrid.errors import SeggridError

RDZV_PORT = 29500     # + the job id modulo 1000, so two jobs sharing a first node do not collide
TASK_LAUNCHER = "srun"


def n_nodes(gpus: int, gpus_per_node: int) -> int:
    if gpus <= gpus_per_node:
        return 1
    if gpus % gpus_per_node:
        raise SeggridError(f"{gpus} GPUs do not split into whole nodes of {gpus_per_node} GPUs "
                           f"(cluster.gpus_per_node); use a multiple of {gpus_per_node}")
    return gpus // gpus_per_node


def launch_command(gpus: int, gpus_per_node: int, task_launcher: str | None = None) -> str:
    """The command that replaces ``python -m seggrid`` for a training job of ``gpus`` GPUs.
    ``task_launcher`` is the job's ``mpi`` resource (default ``srun``)."""
    if gpus <= 1:
        return "python -m seggrid"
    nodes = n_nodes(gpus, gpus_per_node)
    if nodes == 1:
        return f"torchrun --standalone --nproc_per_node={gpus} -m seggrid"
    return (f"{task_launcher or TASK_LAUNCHER} --nodes={nodes} --ntasks={nodes} --ntasks-per-node=1 "
            f"torchrun --nnodes={nodes} --nproc_per_node={gpus_per_node} --rdzv_backend=c10d "
            f"--rdzv_id=\"$SLURM_JOB_ID\" --rdzv_endpoint=\"$(hostname)\":$(({RDZV_PORT} + SLURM_JOB_ID % 1000)) "
            f"-m seggrid")


def cluster_resources(gpus: int, gpus_per_node: int) -> dict:
    """Snakemake resources of a training job. One node: ``gpu`` (the total, which a local
    profile caps and the SLURM executor turns into ``--gpus``). Several nodes: ``nodes``,
    ``gres`` (GPUs per node), ``mpi`` + ``tasks`` (one agent per node) and ``tasks_per_gpu=0``.
    ``None`` leaves a resource unset."""
    nodes = n_nodes(gpus, gpus_per_node)
    if nodes == 1:
        return {"gpu": gpus, "nodes": 1, "gres": None, "mpi": None, "tasks": None, "tasks_per_gpu": None}
    return {"gpu": 0, "nodes": nodes, "gres": f"gpu:{gpus_per_node}", "mpi": TASK_LAUNCHER, "tasks": nodes,
            "tasks_per_gpu": 0}
