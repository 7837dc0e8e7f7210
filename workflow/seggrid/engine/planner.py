"""Network topology from (patch, spacing) following nnU-Net's rules (docs/recipe_fidelity.md,
Planning and preprocessing).

An axis keeps being pooled while its feature map is at least ``2 * MIN_FEATURE_MAP`` (8)
voxels (``3 * MIN_FEATURE_MAP`` = 12 when it is the only axis left) and its current spacing
is within 2x of the finest current spacing. A stage's conv kernel is 3 along an axis once
that axis's spacing is within 2x of the finest, else 1. The patch is then rounded *up* to a
multiple of 2**pools per axis: the effective patch, recorded beside the requested one.

Two options, both recorded in the plan: ``max_pools_per_axis`` caps the depth (nnU-Net v2
has no cap), and ``patch_rounding: down`` rounds the patch down instead of up. With the
nnU-Net rule alone, (64, 354, 354) at 2.0 x 0.688 x 0.688 mm gets 6 in-plane pools and
becomes (64, 384, 384), i.e. the same network and patch as the (64, 384, 384) row; the AMOS
configs therefore cap pools at 5 and round down, which gives (64, 352, 352).
"""

from __future__ import annotations

import math

from seggrid.config import default_axis, model_setting
from seggrid.data.geometry import coarsest_first
from seggrid.errors import SeggridError

MIN_FEATURE_MAP = 4
AXIS_NAMES = ("first", "second", "third")


def check_partitionable(name: str, patch: list[int], divisor: list[int], parts: int, axis: int | None) -> int:
    """The axis to split; raises when a slab is not a multiple of the stride product."""
    axis = default_axis(patch) if axis is None else axis
    slab, div = patch[axis] / parts, divisor[axis]
    if slab != int(slab) or int(slab) % div:
        raise SeggridError(
            f"setting '{name}': spatial_partitions {parts} splits the patch's {AXIS_NAMES[axis]} axis "
            f"({patch[axis]} voxels) into slabs of {slab:g}, but the network's strided convolutions along that "
            f"axis have a stride product of {div}; each slab must be a multiple of {div} so that its boundary "
            f"falls on a voxel at every resolution. Use a patch size there that is a multiple of {parts * div}.")
    return axis


def plan_topology(patch: list[int], spacing: list[float], base_features: int = 32,
                  max_features: int = 320, max_pools_per_axis: int | None = None,
                  patch_rounding: str = "up") -> dict:
    """Return pools per axis, strides and kernels per stage, features and effective patch."""
    if len(patch) != 3 or len(spacing) != 3:
        raise SeggridError(f"plan: patch {patch} and spacing {spacing} must have 3 entries (z, y, x)")
    if any(p < 2 * MIN_FEATURE_MAP for p in patch):
        raise SeggridError(f"plan: patch {list(patch)} cannot be planned: every side must be "
                           f">= {2 * MIN_FEATURE_MAP} voxels")
    size = [float(p) for p in patch]
    current = [float(s) for s in spacing]
    pools = [0, 0, 0]
    kernel = [1, 1, 1]
    strides: list[list[int]] = [[1, 1, 1]]
    kernels: list[list[int]] = []
    while True:
        axes = [a for a in range(3) if size[a] >= 2 * MIN_FEATURE_MAP
                and (max_pools_per_axis is None or pools[a] < max_pools_per_axis)]
        if not axes:
            break
        finest = min(current[a] for a in axes)
        axes = [a for a in axes if current[a] / finest < 2]
        if len(axes) == 1 and size[axes[0]] < 3 * MIN_FEATURE_MAP:
            break
        overall_finest = min(current)
        kernel = [3 if kernel[a] == 3 or current[a] / overall_finest < 2 else 1 for a in range(3)]
        kernels.append(list(kernel))
        stride = [1, 1, 1]
        for a in axes:
            stride[a] = 2
            pools[a] += 1
            current[a] *= 2
            size[a] = math.ceil(size[a] / 2)
        strides.append(stride)
    kernels.append([3, 3, 3])                             # bottleneck
    divisor = [2 ** p for p in pools]
    if patch_rounding not in ("up", "down"):
        raise SeggridError(f"plan: patch_rounding must be 'up' or 'down', got {patch_rounding!r}")
    rnd = math.ceil if patch_rounding == "up" else math.floor
    effective = [int(rnd(p / d) * d) for p, d in zip(patch, divisor)]
    if min(effective) < 2 * MIN_FEATURE_MAP:
        raise SeggridError(f"plan: patch {list(patch)} rounds to {effective}, too small to train")
    features = [min(base_features * 2 ** i, max_features) for i in range(len(strides))]
    return {"patch_requested": list(patch), "patch_effective": effective, "pools_per_axis": pools,
            "strides": strides, "kernels": kernels, "features": features, "divisor": divisor,
            "spacing": list(spacing), "max_pools_per_axis": max_pools_per_axis,
            "patch_rounding": patch_rounding}


def make_plan(setting: dict, target_spacing: list[float], fingerprint: dict, labels: dict) -> dict:
    """Everything a training job needs: the resolved setting, topology and data facts.
    ``target_spacing`` is (z, y, x); the topology is planned in the network's axis order
    (coarsest axis first, as preprocessing stores the arrays), in which ``patch`` is given.
    The plan's setting has no scheduling keys (config.SCHEDULING_KEYS: gpus, threads, mem_mb,
    runtime_min), so they never change a plan or its hash; config.py checks gpus against batch."""
    order = coarsest_first(target_spacing)
    topo = plan_topology(setting["patch"], [target_spacing[a] for a in order], setting["base_features"], setting["max_features"],
                         setting["max_pools_per_axis"], setting["patch_rounding"])
    parts = setting["spatial_partitions"]
    partition = None
    if parts > 1:
        axis = check_partitionable(setting["name"], topo["patch_effective"], topo["divisor"], parts,
                                   setting["partition_axis"])
        partition = {"parts": parts, "axis": axis, "slab": topo["patch_effective"][axis] // parts}
    return {"setting": model_setting(setting), "topology": topo, "partition": partition, "target_spacing": list(target_spacing), "transpose": order,
            "labels": labels, "n_classes": max(int(k) for k in labels) + 1,
            "ct_foreground_intensity": fingerprint.get("ct_foreground_intensity")}
