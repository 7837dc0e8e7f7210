"""The 3D U-Net: MONAI's DynUNet built from a plan's topology (nnU-Net's layout).

Input (B, 1, z, y, x) -> output (B, C, z, y, x) logits in eval mode; in train mode with deep
supervision, (B, 1 + k, C, z, y, x): the full-resolution head and k extra decoder heads,
upsampled by DynUNet to full resolution.
"""

from __future__ import annotations

import torch
from monai.networks.nets import DynUNet

#: ``norm`` registry: instance (nnU-Net), batch, group (8 groups, as in Carmo et al.).
NORMS = {
    "instance": ("INSTANCE", {"affine": True, "eps": 1e-5}),
    "batch": ("BATCH", {"eps": 1e-5}),
    "group": ("GROUP", {"num_groups": 8, "eps": 1e-5}),
}

#: ``deep_supervision_weights`` registry: weights of the full-resolution output first.
#: ``nnunet``: 1/2**i over every decoder output except the lowest, normalised to sum 1.
#: ``top3_721``: only the three highest-resolution outputs, 0.7/0.2/0.1 (Zhou et al., FLARE21).
DS_WEIGHTS = ("nnunet", "top3_721")


def deep_supervision_heads(plan: dict) -> int:
    """Extra heads beside the full-resolution output: every decoder scale except the lowest two
    (nnU-Net gives the lowest weight 0), or 2 for ``top3_721``."""
    s = plan["setting"]
    if not s["deep_supervision"]:
        return 0
    n_pools = len(plan["topology"]["strides"]) - 1
    heads = max(0, n_pools - 2)
    return min(heads, 2) if s.get("deep_supervision_weights", "nnunet") == "top3_721" else heads


def deep_supervision_weights(n_heads: int, scheme: str = "nnunet") -> torch.Tensor:
    """Weights for the full-resolution output (i = 0) and each extra head, summing to 1."""
    if scheme == "top3_721":
        w = torch.tensor([0.7, 0.2, 0.1][:n_heads + 1])
    elif scheme == "nnunet":
        w = torch.tensor([0.5 ** i for i in range(n_heads + 1)])
    else:
        raise KeyError(f"unknown deep_supervision_weights '{scheme}'; known: {list(DS_WEIGHTS)}")
    return w / w.sum()


def build_network(plan: dict) -> DynUNet:
    topo = plan["topology"]
    norm = plan["setting"].get("norm", "instance")
    if norm not in NORMS:
        raise KeyError(f"unknown norm '{norm}'; known: {sorted(NORMS)}")
    heads = deep_supervision_heads(plan)
    return DynUNet(
        spatial_dims=3, in_channels=1, out_channels=plan["n_classes"],
        kernel_size=topo["kernels"], strides=topo["strides"], upsample_kernel_size=topo["strides"][1:],
        filters=topo["features"], norm_name=NORMS[norm], act_name=("leakyrelu", {"negative_slope": 0.01}),
        deep_supervision=heads > 0, deep_supr_num=max(heads, 1), res_block=False,
    )
