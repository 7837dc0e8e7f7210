"""The launch command and cluster resources of 1-GPU, 1-node and multi-node settings."""

from __future__ import annotations

import pytest

from seggrid.errors import SeggridError
from seggrid.launch import cluster_resources, launch_command


def test_single_process_and_single_node():
    assert launch_command(0, 8) == launch_command(1, 8) == "python -m seggrid"
    assert launch_command(4, 8) == "torchrun --standalone --nproc_per_node=4 -m seggrid"
    assert cluster_resources(4, 8) == {"gpu": 4, "nodes": 1, "gres": ""}


def test_multi_node_uses_srun_and_a_rendezvous_on_the_first_node():
    cmd = launch_command(16, 8)
    assert cmd.startswith("srun --nodes=2 --ntasks=2 --ntasks-per-node=1 --overlap torchrun ")
    assert "--nnodes=2 --nproc_per_node=8" in cmd and "--rdzv_backend=c10d" in cmd
    assert '--rdzv_id="$SLURM_JOB_ID"' in cmd
    assert '--rdzv_endpoint=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1):29500' in cmd
    assert cmd.endswith("-m seggrid") and "--standalone" not in cmd
    assert cluster_resources(16, 8) == {"gpu": 0, "nodes": 2, "gres": "gpu:8"}
    assert cluster_resources(8, 4)["nodes"] == 2


def test_gpus_that_do_not_fill_whole_nodes_are_rejected():
    with pytest.raises(SeggridError, match="12 GPUs do not split into whole nodes of 8"):
        launch_command(12, 8)
