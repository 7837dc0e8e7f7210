"""One rank of a spatially partitioned forward + backward (tests/test_spatial.py).

``reference`` runs the same network, sample and loss in one process; ``rank_main`` runs a
rank of ``dp x parts`` gloo ranks and saves its full-resolution logits slab, its loss and the
synchronised parameter gradients to ``<out>/rank<r>.pt``.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from seggrid.engine.losses import DeepSupervisionLoss, build_loss
from seggrid.engine.network import PlainUNet
from seggrid.engine.spatial import SpatialContext, partition_network, sync_gradients

PATCH = (8, 32, 16)          # axis 1 (32 voxels) is the longest: slabs of 16 or 8
FEATURES = [4, 8, 12, 16]
KERNELS = [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]
STRIDES = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [1, 2, 2]]     # stride product 8 along axis 1
CLASSES = 3
DS_HEADS = 3
DS_WEIGHTS = torch.tensor([4 / 7, 2 / 7, 1 / 7])
DS_SCALES = [[1, 1, 1], [1, 2, 2], [2, 4, 4]]


#: float64, so that a gradient that is 0 in exact arithmetic (a conv bias before instance norm)
#: is ~1e-16 in both runs; in float32 the logits agree to 7e-7 and every other gradient to 1e-6
DTYPE = torch.float64


def network() -> PlainUNet:
    torch.set_default_dtype(DTYPE)
    torch.manual_seed(0)
    return PlainUNet(CLASSES, FEATURES, KERNELS, STRIDES, "instance", DS_HEADS)


def sample(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    image = torch.randn(batch, 1, *PATCH, generator=g)
    target = torch.randint(0, CLASSES, (batch, 1, *PATCH), generator=g)
    return image, target


def loss_function(loss: str, batch_dice: bool, spatial=None) -> DeepSupervisionLoss:
    return DeepSupervisionLoss(build_loss(loss, batch_dice, spatial), DS_WEIGHTS, DS_SCALES)


def reference(batch: int, loss: str, batch_dice: bool) -> dict:
    before = torch.get_default_dtype()
    try:
        net = network()
        image, target = sample(batch)
        outputs = net(image)
        value = loss_function(loss, batch_dice)(outputs, target)
        value.backward()
        return {"logits": outputs[0].detach(), "loss": value.item(),
                "grads": {n: p.grad.clone() for n, p in net.named_parameters()}}
    finally:                  # runs in the test process: leave the default as it was
        torch.set_default_dtype(before)


def rank_main(rank: int, world: int, parts: int, port: int, out: str, loss: str, batch_dice: bool,
              halo_gradients: bool = True, norm_reduction: bool = True) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        ctx = SpatialContext.create(rank, world, parts, axis=1)
        ctx.halo_gradients, ctx.norm_reduction = halo_gradients, norm_reduction
        net = partition_network(network(), ctx)
        image, target = sample(ctx.dp_size)
        mine = slice(ctx.dp_index, ctx.dp_index + 1)          # this data-parallel group's sample
        outputs = net(ctx.split(image[mine]))
        value = loss_function(loss, batch_dice, ctx)(outputs, ctx.split(target[mine]))
        value.backward()
        sync_gradients(list(net.parameters()), ctx)
        torch.save({"logits": outputs[0].detach(), "loss": value.item(), "index": ctx.index,
                    "dp_index": ctx.dp_index, "grads": {n: p.grad.clone() for n, p in net.named_parameters()}},
                   os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
