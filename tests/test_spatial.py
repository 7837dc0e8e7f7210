"""Spatial partitioning is exact: a partitioned forward + backward (2 and 4 slabs, and 2
data-parallel groups of 2 slabs; gloo on CPU) gives the single-process logits, loss and
every parameter gradient, with instance norm, strided and transposed convolutions, deep
supervision and batch Dice. Dropping the halo gradients or the norm reduction breaks it."""

from __future__ import annotations

import socket
import sys

import pytest
import torch
import torch.multiprocessing as mp

from conftest import ROOT

sys.path.insert(0, str(ROOT / "tests" / "helpers"))
import spatial_worker  # noqa: E402

from seggrid.errors import SeggridError  # noqa: E402
from seggrid.config import default_axis  # noqa: E402
from seggrid.engine.planner import check_partitionable  # noqa: E402

TOLERANCE = 1e-5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def partitioned(tmp_path, dp: int, parts: int, loss: str = "dice_ce", batch_dice: bool = True, **switches) -> list[dict]:
    world = dp * parts
    mp.spawn(spatial_worker.rank_main, args=(world, parts, free_port(), str(tmp_path), loss, batch_dice,
                                              switches.get("halo_gradients", True), switches.get("norm_reduction", True)),
             nprocs=world, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]


def relative(a: torch.Tensor, b: torch.Tensor, floor: float = 1e-30) -> float:
    return float((a - b).norm() / b.norm().clamp_min(floor))


def gradient_floor(grads: dict) -> float:
    """A conv bias followed by instance norm has a gradient of exactly 0 in exact arithmetic
    (the norm removes the mean); in float32 both runs give ~1e-9 noise there. Such gradients
    are measured against 1e-3 of the whole gradient's norm instead of their own."""
    return 1e-3 * float(torch.sqrt(sum(g.square().sum() for g in grads.values())))


def compare(ranks: list[dict], ref: dict, parts: int) -> dict:
    """The largest relative differences: logits (slabs put back together), loss, gradients."""
    dp = len(ranks) // parts
    groups = [sorted((r for r in ranks if r["dp_index"] == g), key=lambda r: r["index"]) for g in range(dp)]
    logits = torch.cat([torch.cat([r["logits"] for r in group], dim=3) for group in groups])
    # every slab of a sample reports the same (whole-sample) loss; data-parallel groups are averaged
    losses = [group[0]["loss"] for group in groups]
    assert all(r["loss"] == group[0]["loss"] for group in groups for r in group)
    return {"logits": relative(logits, ref["logits"]),
            "loss": abs(sum(losses) / dp - ref["loss"]) / abs(ref["loss"]),
            "grads": max(relative(r["grads"][n], ref["grads"][n], gradient_floor(ref["grads"]))
                         for r in ranks for n in ref["grads"])}


@pytest.mark.parametrize("dp, parts, loss, batch_dice", [(1, 2, "dice_ce", True), (1, 4, "dice_ce", True),
                                                         (2, 2, "dice_focal", False)])
def test_partitioned_forward_and_backward_equal_one_process(tmp_path, dp, parts, loss, batch_dice):
    ref = spatial_worker.reference(dp, loss, batch_dice)
    ranks = partitioned(tmp_path, dp, parts, loss, batch_dice)
    diff = compare(ranks, ref, parts)
    assert diff["logits"] < TOLERANCE and diff["loss"] < TOLERANCE and diff["grads"] < TOLERANCE, diff
    # every rank ends with the same (synchronised) gradients
    for r in ranks[1:]:
        assert all(torch.equal(r["grads"][n], ranks[0]["grads"][n]) for n in ref["grads"])


@pytest.mark.parametrize("switch", ["halo_gradients", "norm_reduction"])
def test_dropping_the_halo_gradients_or_the_norm_reduction_is_caught(tmp_path, switch):
    ref = spatial_worker.reference(1, "dice_ce", True)
    diff = compare(partitioned(tmp_path, 1, 2, **{switch: False}), ref, 2)
    assert diff["grads"] > 100 * TOLERANCE, diff


def test_a_slab_that_the_strides_do_not_divide_is_refused_with_the_reason():
    assert default_axis([64, 384, 384]) == 1 and default_axis([128, 96, 112]) == 0
    assert check_partitionable("s", [64, 384, 384], [16, 32, 32], 4, None) == 1      # slabs of 96 = 3 x 32
    with pytest.raises(SeggridError, match=r"slabs of 48, but the network's strided convolutions along that axis "
                                           r"have a stride product of 32.*multiple of 256"):
        check_partitionable("s", [64, 384, 384], [16, 32, 32], 8, None)


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (torchrun starts its ranks in their own
    sessions, so killing its process group leaves them running)."""
    import os
    import signal
    from pathlib import Path

    def children(p):
        out = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == p:
                        out.append(int(d.name))
                except (OSError, IndexError, ValueError):
                    pass
        return out

    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children(p)
    for p in tree:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_partitioned_training_resumes_after_sigkill_to_the_uninterrupted_weights(pipeline, tmp_path):
    """`seggrid train` under torchrun, 2 ranks = 1 sample split in 2 slabs (gloo on CPU): the
    run is SIGKILLed (every process) in epoch 2, started again, and ends with the weights of
    an uninterrupted run, bit for bit; the saved model is the plain network."""
    import json
    import os
    import subprocess
    import time

    plan = json.loads(pipeline["plan"].read_text())
    plan["setting"].update(gpus=2, spatial_partitions=2, epochs=3, iterations_per_epoch=30, name="slabs")
    topo = plan["topology"]
    axis = check_partitionable("slabs", topo["patch_effective"], topo["divisor"], 2, None)
    plan["partition"] = {"parts": 2, "axis": axis, "slab": topo["patch_effective"][axis] // 2}
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps(plan))
    env = dict(os.environ, PYTHONPATH=str(ROOT / "workflow"))

    def command(out):
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "seggrid",
                "train", "--plan", str(plan_path), "--preprocessed", str(pipeline["preprocessed"]), "--splits",
                str(pipeline["splits"]), "--fold", "0", "--seed", "3", "--checkpoint-every", "1", "--out", str(out)]

    whole = subprocess.run(command(tmp_path / "whole"), env=env, capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stdout[-2000:] + whole.stderr[-2000:]
    assert "spatial partitions: 2 slabs" in whole.stdout
    out = tmp_path / "killed"
    proc = subprocess.Popen(command(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "checkpoint_latest.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)                                          # inside epoch 2
    kill_tree(proc.pid)                                      # the agent and both ranks (own sessions)
    proc.wait()
    assert not (out / "model.pt").exists()
    rerun = subprocess.run(command(out), env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert "resumed from" in rerun.stdout, rerun.stdout[:1500] + str(sorted(p.name for p in out.iterdir()))
    a = torch.load(tmp_path / "whole" / "model.pt", weights_only=False)
    b = torch.load(out / "model.pt", weights_only=False)
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    # the plain network: the single-process model of the same plan has the same keys and shapes
    from seggrid.engine.network import build_network

    from seggrid.plan import Plan

    plain = build_network(Plan.from_dict(plan, str(plan_path))).state_dict()
    assert {k: v.shape for k, v in plain.items()} == {k: v.shape for k, v in b["state_dict"].items()}
    assert json.loads((out / "summary.json").read_text())["spatial_partitions"] == 2
