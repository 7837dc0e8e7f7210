"""The launch command and cluster resources of 1-GPU, 1-node and multi-node settings."""

from __future__ import annotations

import pytest

from seggrid.errors import SeggridError
from seggrid.engine.launch import cluster_resources, launch_command


def test_single_process_and_single_node():
    assert launch_command(0, 8) == launch_command(1, 8) == "python -m seggrid"
    assert launch_command(4, 8) == "torchrun --standalone --nproc_per_node=4 -m seggrid"
    # None leaves a resource unset: no mpi, so the SLURM executor wraps the command in srun -n1
    assert cluster_resources(4, 8) == {"gpu": 4, "nodes": 1, "gres": None, "mpi": None, "tasks": None,
                                       "tasks_per_gpu": None}


def test_multi_node_is_one_torchrun_agent_per_node_started_by_the_task_launcher():
    cmd = launch_command(16, 8)
    assert cmd.startswith("srun --nodes=2 --ntasks=2 --ntasks-per-node=1 torchrun ")
    assert "--overlap" not in cmd              # the executor does not wrap an mpi job in its own srun
    assert "--nnodes=2 --nproc_per_node=8" in cmd and "--rdzv_backend=c10d" in cmd
    assert '--rdzv_id="$SLURM_JOB_ID"' in cmd
    assert '--rdzv_endpoint="$(hostname)":$((29500 + SLURM_JOB_ID % 1000))' in cmd
    assert cmd.endswith("-m seggrid") and "--standalone" not in cmd
    assert launch_command(16, 8, "srun --mpi=none").startswith("srun --mpi=none --nodes=2 ")
    assert cluster_resources(16, 8) == {"gpu": 0, "nodes": 2, "gres": "gpu:8", "mpi": "srun", "tasks": 2,
                                        "tasks_per_gpu": 0}
    assert cluster_resources(8, 4)["nodes"] == 2


def test_gpus_that_do_not_fill_whole_nodes_are_rejected():
    with pytest.raises(SeggridError, match="12 GPUs do not split into whole nodes of 8"):
        launch_command(12, 8)
