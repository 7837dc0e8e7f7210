"""The 3D U-Net of nnU-Net v2 (its "PlainConvUNet" layout), built from a plan's topology.

Layout (nnU-Net 2.8.1 defaults, read from its source for facts; our own code):

- encoder stage i: two (conv k_i -> norm -> leaky ReLU 0.01) blocks; the first conv has the
  stage's stride (stage 0: stride 1), padding (k - 1) / 2, bias on;
- decoder stage (from the deepest up): transposed conv (kernel = stride = the stride of the
  stage below), concatenation with the encoder skip, two conv blocks, and a 1x1x1 head;
- weights: He-normal (negative slope 1e-2) for convs and transposed convs, biases 0.

Input (B, 1, z, y, x). Output: logits (B, C, z, y, x); in training with deep supervision a
list of logits, full resolution first, each head at its OWN resolution (the i-th head is
downsampled by the product of the first i+1 strides), as nnU-Net does: the loss compares it
with a downsampled target (:func:`downsample_target`), so no head is ever upsampled.
Only the heads with a non-zero deep-supervision weight exist (nnU-Net also builds the
lowest ones, which it weights 0), so our parameter count is that many 1x1x1 heads smaller.

We write the network ourselves rather than depend on ``dynamic-network-architectures``: its
0.4.4 wheel requires ``timm``, which pulls ``torchvision`` and with it a different torch
(measured: installing nnunetv2 2.8.1 replaced torch 2.13.0 by a 5.5 GB CUDA torch 2.14.1).
``benchmarks/speed/step_vs_nnunet.sh`` prints both networks' parameter counts side by side.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from seggrid.plan import Plan

#: ``norm`` registry: instance (nnU-Net), batch, group (8 groups, as in Carmo et al.; fewer
#: when a stage has fewer than 8 channels or a count 8 does not divide).
NORMS = ("instance", "batch", "group")

#: ``deep_supervision_weights`` registry: weights of the full-resolution output first.
#: ``nnunet``: 1/2**i over every decoder output except the lowest, normalised to sum 1.
#: ``top3_721``: only the three highest-resolution outputs, 0.7/0.2/0.1 (Zhou et al., FLARE21).
DS_WEIGHTS = ("nnunet", "top3_721")

#: Written into every ``model.pt``; :func:`seggrid.inference.predict.load_model` refuses other formats.
MODEL_FORMAT = "seggrid-plain-unet/1"


def make_norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm3d(channels, eps=1e-5, affine=True)
    if kind == "batch":
        return nn.BatchNorm3d(channels, eps=1e-5)
    if kind == "group":
        return nn.GroupNorm(math.gcd(8, channels), channels, eps=1e-5)
    raise KeyError(f"unknown norm '{kind}'; known: {list(NORMS)}")


def conv_block(c_in: int, c_out: int, kernel: list[int], stride: list[int], norm: str) -> nn.Sequential:
    """conv -> norm -> leaky ReLU (in place), nnU-Net's basic unit."""
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, kernel, stride, padding=[(k - 1) // 2 for k in kernel], bias=True),
        make_norm(norm, c_out),
        nn.LeakyReLU(0.01, inplace=True),
    )


class DecoderStage(nn.Module):
    """Transposed-conv upsampling, concatenation with the skip, two conv blocks. (Reading the
    two inputs with split weights instead of building the concatenation saved 9 % of peak
    memory but cost 14 % step time on this CPU, measured against nnU-Net; not kept.)"""

    def __init__(self, c_below: int, c: int, stride: list[int], kernel: list[int], norm: str):
        super().__init__()
        self.upsample = nn.ConvTranspose3d(c_below, c, stride, stride, bias=True)
        self.blocks = nn.Sequential(conv_block(2 * c, c, kernel, [1, 1, 1], norm), conv_block(c, c, kernel, [1, 1, 1], norm))

    def forward(self, below: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.blocks(torch.cat((self.upsample(below), skip), 1))


class PlainUNet(nn.Module):
    """U-Net with ``len(features)`` stages. ``strides[i]`` / ``kernels[i]`` belong to stage i
    (``strides[0]`` is all ones). ``ds_heads`` outputs are returned in training mode when
    ``deep_supervision`` is on (at least 1: the full-resolution output)."""

    def __init__(self, n_classes: int, features: list[int], kernels: list[list[int]], strides: list[list[int]],
                 norm: str = "instance", ds_heads: int = 1, in_channels: int = 1):
        super().__init__()
        n = len(features)
        if not (len(kernels) == len(strides) == n) or n < 2:
            raise ValueError(f"PlainUNet: features, kernels and strides need one entry per stage (>= 2), got "
                             f"{len(features)}, {len(kernels)}, {len(strides)}")
        self.encoder = nn.ModuleList()
        c_prev = in_channels
        for f, k, s in zip(features, kernels, strides):
            self.encoder.append(nn.Sequential(conv_block(c_prev, f, k, s, norm), conv_block(f, f, k, [1, 1, 1], norm)))
            c_prev = f
        self.decoder = nn.ModuleList(DecoderStage(features[i + 1], features[i], strides[i + 1], kernels[i], norm)
                                     for i in range(n - 2, -1, -1))   # deepest decoder stage first
        # heads[i] reads decoder stage i (stage 0 = full resolution); only the heads the loss
        # uses exist, so DDP never meets a parameter without a gradient
        ds_heads = max(1, min(ds_heads, n - 1))
        self.heads = nn.ModuleList(nn.Conv3d(features[i], n_classes, 1, bias=True) for i in range(ds_heads))
        self.deep_supervision = ds_heads > 1
        self.apply(he_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        x = skips.pop()
        want = len(self.heads) if self.deep_supervision and self.training else 1
        outputs = []
        for stage in self.decoder:
            x = stage(x, skips.pop())
            level = len(skips)                             # 0 = full resolution
            if level < want:
                outputs.append(self.heads[level](x))
        outputs.reverse()                                  # full resolution first
        return outputs if self.deep_supervision and self.training else outputs[0]


def he_init(module: nn.Module) -> None:
    """nnU-Net's initialisation: He-normal with negative slope 1e-2, zero bias."""
    if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
        nn.init.kaiming_normal_(module.weight, a=1e-2)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def deep_supervision_outputs(plan: Plan) -> int:
    """Outputs the loss uses: every decoder scale except the lowest (nnU-Net gives it weight
    0), 3 for ``top3_721``, 1 without deep supervision."""
    s = plan.setting
    if not s.deep_supervision:
        return 1
    n_pools = len(plan.topology.strides) - 1
    outputs = max(1, n_pools - 1)
    return min(outputs, 3) if s.deep_supervision_weights == "top3_721" else outputs


def deep_supervision_weights(n_outputs: int, scheme: str = "nnunet") -> torch.Tensor:
    """Weights for the full-resolution output (i = 0) and each lower head, summing to 1."""
    if scheme == "top3_721":
        w = torch.tensor([0.7, 0.2, 0.1][:n_outputs])
    elif scheme == "nnunet":
        w = torch.tensor([0.5 ** i for i in range(n_outputs)])
    else:
        raise KeyError(f"unknown deep_supervision_weights '{scheme}'; known: {list(DS_WEIGHTS)}")
    return w / w.sum()


def head_scales(plan: Plan, n_outputs: int) -> list[list[int]]:
    """Downsampling factor (z, y, x) of each output: cumulative product of the strides."""
    scales, current = [], [1, 1, 1]
    for stride in plan.topology.strides[:n_outputs]:
        current = [c * s for c, s in zip(current, stride)]
        scales.append(list(current))
    return scales


def downsample_target(target: torch.Tensor, factor: list[int]) -> torch.Tensor:
    """Nearest-neighbour downsampling of a label map (B, 1, z, y, x) by integer ``factor``:
    voxel i takes source voxel floor((i + 0.5) * f), as torch's ``nearest-exact`` (nnU-Net's
    choice). A strided view: no copy."""
    return target[(slice(None), slice(None)) + tuple(slice(f // 2, None, f) for f in factor)]


def build_network(plan: Plan) -> PlainUNet:
    topo = plan.topology
    return PlainUNet(plan.n_classes, list(topo.features), [list(k) for k in topo.kernels],
                     [list(s) for s in topo.strides], plan.setting.norm, deep_supervision_outputs(plan))
