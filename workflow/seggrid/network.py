"""The 3D U-Net: MONAI's DynUNet built from a plan's topology (nnU-Net's layout).

Input (B, 1, z, y, x) -> output (B, C, z, y, x) logits in eval mode; in train mode with deep
supervision, (B, 1 + k, C, z, y, x): the full-resolution head and k extra decoder heads,
upsampled by DynUNet to full resolution.
"""

from __future__ import annotations

import torch
from monai.networks.nets import DynUNet

NORMS = {
    "instance": ("INSTANCE", {"affine": True, "eps": 1e-5}),
    "batch": ("BATCH", {"eps": 1e-5}),
}


def deep_supervision_heads(plan: dict) -> int:
    """Extra heads: every decoder scale except the two lowest (nnU-Net gives the lowest weight 0)."""
    if not plan["setting"]["deep_supervision"]:
        return 0
    n_pools = len(plan["topology"]["strides"]) - 1
    return max(0, n_pools - 2)


def deep_supervision_weights(n_heads: int) -> torch.Tensor:
    """Weights 1/2**i for the full-resolution head (i = 0) and each extra head, summing to 1."""
    w = torch.tensor([0.5 ** i for i in range(n_heads + 1)])
    return w / w.sum()


def build_network(plan: dict, norm: str = "instance") -> DynUNet:
    topo = plan["topology"]
    heads = deep_supervision_heads(plan)
    return DynUNet(
        spatial_dims=3, in_channels=1, out_channels=plan["n_classes"],
        kernel_size=topo["kernels"], strides=topo["strides"], upsample_kernel_size=topo["strides"][1:],
        filters=topo["features"], norm_name=NORMS[norm], act_name=("leakyrelu", {"negative_slope": 0.01}),
        deep_supervision=heads > 0, deep_supr_num=max(heads, 1), res_block=False,
    )
