"""How a training job is launched and what it asks the cluster for.

- 0 or 1 GPU: one process, ``python -m seggrid train ...``.
- 2 .. ``gpus_per_node`` GPUs: one node, ``torchrun --standalone --nproc_per_node=N``.
- more: ``nodes = ceil(gpus / gpus_per_node)`` nodes (``gpus`` must be a multiple of
  ``gpus_per_node``); one torchrun per node, started by ``srun`` inside the allocation, meeting
  at a c10d rendezvous on the allocation's first node (port ``RDZV_PORT``); the job id names
  the rendezvous. The SLURM executor gets ``nodes=N`` and ``gres=gpu:<gpus_per_node>`` (GPUs
  per node) instead of ``gpu`` (a total).
"""

from __future__ import annotations

import math

from seggrid.errors import SeggridError

RDZV_PORT = 29500


def n_nodes(gpus: int, gpus_per_node: int) -> int:
    if gpus <= gpus_per_node:
        return 1
    if gpus % gpus_per_node:
        raise SeggridError(f"{gpus} GPUs do not split into whole nodes of {gpus_per_node} GPUs "
                           f"(cluster.gpus_per_node); use a multiple of {gpus_per_node}")
    return math.ceil(gpus / gpus_per_node)


def launch_command(gpus: int, gpus_per_node: int) -> str:
    """The command that replaces ``python -m seggrid`` for a training job of ``gpus`` GPUs."""
    if gpus <= 1:
        return "python -m seggrid"
    nodes = n_nodes(gpus, gpus_per_node)
    if nodes == 1:
        return f"torchrun --standalone --nproc_per_node={gpus} -m seggrid"
    head = "$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1)"
    return (f"srun --nodes={nodes} --ntasks={nodes} --ntasks-per-node=1 --overlap "
            f"torchrun --nnodes={nodes} --nproc_per_node={gpus_per_node} --rdzv_backend=c10d "
            f"--rdzv_id=\"$SLURM_JOB_ID\" --rdzv_endpoint={head}:{RDZV_PORT} -m seggrid")


def cluster_resources(gpus: int, gpus_per_node: int) -> dict:
    """Snakemake resources of a training job: ``gpu`` (total, what a local profile limits),
    or for multi-node jobs ``nodes`` + ``gres`` (per node) for the SLURM executor."""
    nodes = n_nodes(gpus, gpus_per_node)
    if nodes == 1:
        return {"gpu": gpus, "nodes": 1, "gres": ""}
    return {"gpu": 0, "nodes": nodes, "gres": f"gpu:{gpus_per_node}"}
