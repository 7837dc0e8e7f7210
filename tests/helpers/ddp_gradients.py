"""Gradients of one training step: ``python ddp_gradients.py OUT`` in one process on the whole
batch, or under ``torchrun --nproc_per_node=N`` with the batch split over ranks (DDP, gloo).
Writes {parameter name: gradient} to OUT (rank 0). Used by tests/test_distributed.py."""

import os
import sys

import torch
import torch.distributed as dist

from seggrid.engine.losses import DeepSupervisionLoss, build_loss
from seggrid.engine.network import build_network, deep_supervision_outputs, deep_supervision_weights, head_scales
from seggrid.engine.planner import plan_topology
from seggrid.plan import plan_from_topology

GLOBAL_BATCH = 4


def main(out: str) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        dist.init_process_group("gloo")
    torch.manual_seed(0)
    plan = plan_from_topology(plan_topology([8, 16, 16], [1.0, 1.0, 1.0], 4, 16, 3, "down"), 4,
                              deep_supervision=True, deep_supervision_weights="nnunet", norm="instance")
    model = build_network(plan)
    images = torch.randn(GLOBAL_BATCH, 1, 8, 16, 16, generator=torch.Generator().manual_seed(1))
    labels = torch.randint(0, 4, (GLOBAL_BATCH, 1, 8, 16, 16), generator=torch.Generator().manual_seed(2))
    per_rank = GLOBAL_BATCH // world
    mine = slice(rank * per_rank, (rank + 1) * per_rank)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    n_outputs = deep_supervision_outputs(plan)
    loss_fn = DeepSupervisionLoss(build_loss(sys.argv[2], batch_dice=sys.argv[3] == "batch"),
                                  deep_supervision_weights(n_outputs), head_scales(plan, n_outputs))
    loss = loss_fn(model(images[mine]), labels[mine])
    loss.backward()
    if rank == 0:
        net = model.module if world > 1 else model
        torch.save({k: p.grad.detach().clone() for k, p in net.named_parameters()}, out)
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
