"""What a training job builds before its first step (:func:`setup`) and carries through its
epochs (:class:`Training`): ranks and device, random streams, determinism, spatial partitions,
the training and validation samplers, the network (DDP or partitioned, compiled or not),
optimizer, grad scaler and loss. ``train.py`` runs the loop, ``checkpoint.py`` saves and
resumes a :class:`Training`; neither is imported here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from seggrid.config import batch_split_problem
from seggrid.engine.augment import Augmenter, build_augmenter_config
from seggrid.engine.device import (BATCH_STREAM, INIT_STREAM, configure_determinism, distributed_context,
                                   seed_everything, stream_rng, stream_seed, use_compile)
from seggrid.engine.losses import DeepSupervisionLoss, build_loss
from seggrid.engine.network import build_network, deep_supervision_outputs, deep_supervision_weights, head_scales
from seggrid.engine.recipe import build_optimizer, effective_precision, grad_scaler
from seggrid.engine.sampling import PatchSampler, local_batch
from seggrid.engine.spatial import SpatialContext, partition_network, sync_gradients
from seggrid.errors import SeggridError
from seggrid.plan import Plan, Setting


def training_loss(plan: Plan, spatial: SpatialContext | None = None) -> DeepSupervisionLoss:
    """The setting's loss over the network's deep-supervision outputs, each against the
    target downsampled to its resolution (reduced over a sample's slabs under ``spatial``)."""
    s = plan.setting
    n_outputs = deep_supervision_outputs(plan)
    loss = build_loss(s.loss, s.batch_dice, spatial, s.perimeter_weight)
    return DeepSupervisionLoss(loss,
                               deep_supervision_weights(n_outputs, s.deep_supervision_weights),
                               head_scales(plan, n_outputs))



def class_columns(plan: Plan) -> list[str]:
    """Log column per foreground class: pseudo_dice_<label name> (the id where a label has no name)."""
    return [f"pseudo_dice_{plan.labels.get(c, c)}".replace(" ", "_") for c in range(1, plan.n_classes)]



@dataclass
class Training:
    """Everything :func:`setup` builds for one (setting, fold) on this rank."""

    plan: Plan
    setting: Setting
    fold: int
    seed: int
    out_dir: Path
    rank: int
    world: int
    device: torch.device
    spatial: SpatialContext | None     # this rank's slab group, with spatial partitions
    dp_index: int                      # this rank's data-parallel group
    split: Callable                    # a batch -> this rank's slab of it (identity without partitions)
    precision: str                     # what runs on this device (bf16/fp16 need CUDA)
    determinism: dict
    compiled: bool
    rng: np.random.Generator           # the training sampler's generator
    sampler: PatchSampler
    val_sampler: PatchSampler
    net: torch.nn.Module               # the plain network (its state_dict is what is saved)
    model: torch.nn.Module             # the network, DDP-wrapped with several ranks
    forward: Callable                  # ``model``, compiled or not
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    loss_fn: DeepSupervisionLoss
    after_backward: Callable | None    # gradients summed over slabs (spatial partitions)
    memory_format: torch.memory_format
    columns: list[str]                 # per-class pseudo-Dice log columns


def setup(plan: Plan, preprocessed: str | Path, splits: dict, fold: int, out_dir: Path, seed: int,
          threads: int, gpus: int) -> Training:
    """Ranks, seeds and determinism, spatial partitions, the training and validation samplers,
    the network (DDP or partitioned, compiled or not), optimizer, grad scaler and loss."""
    s = plan.setting
    rank, world, device = distributed_context(gpus, f"train: setting '{s.name}' fold {fold}")
    if rank == 0:
        print(f"[train] CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}, "
              f"{torch.cuda.device_count() if torch.cuda.is_available() else 0} usable CUDA device(s), "
              f"{world} rank(s), device {device}", flush=True)
    torch.set_num_threads(max(1, threads // world))        # the job's cores are shared by its ranks
    seed_everything(stream_seed(seed, fold, purpose=INIT_STREAM))     # the same initial weights on every rank
    compiled = use_compile(s.compile, device, plan.partition is not None)
    determinism = configure_determinism(s.deterministic, device, compiled)
    spatial = None
    if plan.partition:
        spatial = SpatialContext.create(rank, world, plan.partition.parts, plan.partition.axis)
        if rank == 0:
            print(f"[train] spatial partitions: {spatial.size} slabs of {plan.partition.slab} voxels along "
                  f"patch axis {spatial.axis}, {spatial.dp_size} data-parallel group(s)", flush=True)
    # data-parallel groups: every rank, or one per spatial group (its slabs share the samples)
    dp_size, dp_index = (spatial.dp_size, spatial.dp_index) if spatial else (world, rank)
    if problem := batch_split_problem(s.batch, world, spatial.size if spatial else 1):
        raise SeggridError(f"setting '{s.name}': {problem}")
    precision = effective_precision(s.precision, device)
    if rank == 0 and precision != s.precision:
        print(f"[train] precision {s.precision}: running {precision} on {device}"
              + (" (no native bfloat16 on this CPU)" if precision == "fp32" and device.type == "cpu" else ""), flush=True)
    patch = list(plan.topology.patch_effective)
    fold_split = splits["folds"][fold]
    rng = stream_rng(seed, fold, dp_index, purpose=BATCH_STREAM)
    # this group's slice of the global batch and its share of the global foreground quota (nnU-Net's)
    group = dict(global_batch=s.batch, group=dp_index, groups=dp_size)
    sampler = PatchSampler(preprocessed, fold_split["train"], patch, local_batch(s.batch, dp_index, dp_size),
                           0.5 if s.foreground_sampling == "adaptive" else s.oversample_foreground, rng,
                           Augmenter(build_augmenter_config(s.augmentation, patch)), device,
                           s.cache_cases, s.cache_replace, **group)
    # nnU-Net's validation loader cuts the patch itself (no initial-patch margin)
    val_sampler = PatchSampler(preprocessed, fold_split["val"], patch, local_batch(s.batch, dp_index, dp_size),
                               s.oversample_foreground, np.random.default_rng(0), None, device,
                               initial_patch=patch, **group)
    memory_format = torch.channels_last_3d if s.channels_last else torch.contiguous_format
    net = build_network(plan).to(device).to(memory_format=memory_format)
    model = net
    if spatial:
        partition_network(net, spatial)          # halo exchange + global norm statistics; state_dict unchanged
    elif world > 1:
        model = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    forward = torch.compile(model) if compiled else model       # state_dict stays the plain network's
    return Training(
        plan=plan, setting=s, fold=fold, seed=seed, out_dir=out_dir, rank=rank, world=world, device=device,
        spatial=spatial, dp_index=dp_index, split=spatial.split if spatial else (lambda batch: batch), precision=precision,
        determinism=determinism, compiled=compiled, rng=rng, sampler=sampler, val_sampler=val_sampler, net=net,
        model=model, forward=forward, optimizer=build_optimizer(model.parameters(), s),
        scaler=grad_scaler(device, precision), loss_fn=training_loss(plan, spatial),
        after_backward=(lambda: sync_gradients(list(net.parameters()), spatial)) if spatial else None,
        memory_format=memory_format, columns=class_columns(plan))
