"""nnU-Net's training augmentation, written as batched torch operations.

Parameters are drawn on the CPU from the sampler's NumPy generator (so a checkpoint that
stores that generator resumes the exact same augmentation stream); the arrays are then
transformed on whatever device they live on (CPU here, the GPU in a cluster job), so the
augmentation is no longer a CPU-worker bottleneck.

Order and probabilities of the ``nnunet`` preset (STUDY.md §2), per sample:

=================  =====  ==========================================================
transform          p      parameters
=================  =====  ==========================================================
rotation           0.2    each axis U(-30, 30) deg; in "dummy 2D" only about axis 0,
                          U(-180, 180) deg
scaling            0.2    one factor U(0.7, 1.4); > 1 samples a larger region (zoom out)
gaussian noise     0.1    variance U(0, 0.1)
gaussian blur      0.2    x 0.5 per channel; sigma U(0.5, 1) per axis
brightness         0.15   multiply by m
contrast           0.15   (x - mean) * m + mean, clipped to the old range
low resolution     0.25   x 0.5 per channel; nearest downsampling by one U(0.5, 1) for
                          all axes, linear upsampling
gamma, inverted    0.1    gamma g; mean and std kept
gamma              0.3    same, image not inverted
mirroring          0.5    per axis
=================  =====  ==========================================================

m is U(0.75, 1) or U(1, 1.25) with equal chance, g likewise from (0.7, 1) or (1, 1.5).
The probabilities are STUDY.md's; the per-channel factors 0.5, the uniform scale and the
180-degree dummy-2D rotation are what nnU-Net 2.8.1's trainer does beyond them.
"Dummy 2D" (max(patch) / patch[0] > 3): rotation and scaling act in the (y, x) plane only and
low resolution and blur leave axis 0 alone. Spatial transforms resample the image linearly and the
label with nearest neighbour, around the patch centre, from a source crop just large enough
for that sample's rotation and scale (nnU-Net cuts from a fixed larger "initial patch");
samples without a spatial transform are cut directly, so they are exact copies of the data.
Low resolution upsamples linearly where nnU-Net uses cubic (torch has no 3D cubic).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

ANISO_THRESHOLD = 3.0


@dataclass(frozen=True)
class AugmentConfig:
    rotation_p: float = 0.2
    rotation_deg: float = 30.0
    rotation_deg_dummy_2d: float = 180.0
    scale_p: float = 0.2
    scale_range: tuple[float, float] = (0.7, 1.4)
    noise_p: float = 0.1
    noise_variance: tuple[float, float] = (0.0, 0.1)
    blur_p: float = 0.2
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    blur_p_per_channel: float = 0.5
    brightness_p: float = 0.15
    brightness_range: tuple[float, float] = (0.75, 1.25)
    contrast_p: float = 0.15
    contrast_range: tuple[float, float] = (0.75, 1.25)
    lowres_p: float = 0.25
    lowres_range: tuple[float, float] = (0.5, 1.0)
    lowres_p_per_channel: float = 0.5
    gamma_inverted_p: float = 0.1
    gamma_p: float = 0.3
    gamma_range: tuple[float, float] = (0.7, 1.5)
    mirror_p: float = 0.5
    dummy_2d: bool = False


_OFF = dict(rotation_p=0.0, scale_p=0.0, noise_p=0.0, blur_p=0.0, brightness_p=0.0, contrast_p=0.0,
            lowres_p=0.0, gamma_inverted_p=0.0, gamma_p=0.0)

#: Named augmentation presets a setting can choose with ``augmentation: <name>``.
PRESETS: dict[str, AugmentConfig] = {
    "nnunet": AugmentConfig(),
    "mirror": AugmentConfig(**_OFF),
    "none": AugmentConfig(**_OFF, mirror_p=0.0),
}


def build_augmenter_config(name: str, patch: list[int]) -> AugmentConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown augmentation '{name}'; known: {sorted(PRESETS)}")
    return replace(PRESETS[name], dummy_2d=max(patch) / patch[0] > ANISO_THRESHOLD)


def rotation_matrix(angles: np.ndarray) -> np.ndarray:
    """3x3 rotation (z, y, x) = R_0(a0) @ R_1(a1) @ R_2(a2), R_k rotating about axis k (radians)."""
    out = np.eye(3)
    for axis, a in enumerate(angles):
        i, j = [k for k in range(3) if k != axis]
        r = np.eye(3)
        r[i, i] = r[j, j] = math.cos(a)
        r[i, j], r[j, i] = -math.sin(a), math.sin(a)
        out = out @ r
    return out


@dataclass
class SampleParams:
    """What happens to one sample. ``matrix`` maps output offsets to source offsets (voxels)."""
    matrix: np.ndarray | None = None
    noise_std: float = 0.0
    blur_sigma: np.ndarray | None = None
    brightness: float = 1.0
    contrast: float = 1.0
    lowres: np.ndarray | None = None
    gamma_inverted: float | None = None
    gamma: float | None = None
    mirror: list[int] = field(default_factory=list)


def _split_at_one(rng: np.random.Generator, lo: float, hi: float) -> float:
    if lo < 1 and rng.random() < 0.5:
        return float(rng.uniform(lo, 1.0))
    return float(rng.uniform(max(lo, 1.0), hi))


class Augmenter:
    """Draws per-sample parameters with a NumPy generator and applies them to (B, 1, z, y, x)."""

    def __init__(self, cfg: AugmentConfig):
        self.cfg = cfg

    def draw(self, rng: np.random.Generator) -> SampleParams:
        c, p = self.cfg, SampleParams()
        rotate, scale = rng.random() < c.rotation_p, rng.random() < c.scale_p
        if rotate or scale:
            angles = np.zeros(3)
            if rotate and c.dummy_2d:
                lim = math.radians(c.rotation_deg_dummy_2d)
                angles[0] = rng.uniform(-lim, lim)
            elif rotate:
                lim = math.radians(c.rotation_deg)
                angles = rng.uniform(-lim, lim, size=3)
            s = float(rng.uniform(*c.scale_range)) if scale else 1.0
            p.matrix = rotation_matrix(angles) @ np.diag([1.0 if c.dummy_2d else s, s, s])
        if rng.random() < c.noise_p:
            p.noise_std = math.sqrt(rng.uniform(*c.noise_variance))
        if rng.random() < c.blur_p and rng.random() < c.blur_p_per_channel:
            p.blur_sigma = rng.uniform(*c.blur_sigma, size=3)
            if c.dummy_2d:
                p.blur_sigma[0] = 0.0
        if rng.random() < c.brightness_p:
            p.brightness = _split_at_one(rng, *c.brightness_range)
        if rng.random() < c.contrast_p:
            p.contrast = _split_at_one(rng, *c.contrast_range)
        if rng.random() < c.lowres_p and rng.random() < c.lowres_p_per_channel:
            p.lowres = np.full(3, rng.uniform(*c.lowres_range))
            if c.dummy_2d:
                p.lowres[0] = 1.0
        if rng.random() < c.gamma_inverted_p:
            p.gamma_inverted = _split_at_one(rng, *c.gamma_range)
        if rng.random() < c.gamma_p:
            p.gamma = _split_at_one(rng, *c.gamma_range)
        p.mirror = [ax for ax in range(3) if rng.random() < c.mirror_p]
        return p

    @staticmethod
    def source_size(params: SampleParams, patch: list[int]) -> list[int]:
        """Smallest crop (per axis, same parity as the patch) that holds the transformed patch."""
        if params.matrix is None:
            return list(patch)
        half = np.abs(params.matrix) @ ((np.asarray(patch) - 1) / 2)
        need = [int(math.ceil(2 * h + 1)) + 2 for h in half]          # +2: room for interpolation
        return [max(n + ((n - p) % 2), p) for n, p in zip(need, patch)]

    def spatial(self, images: torch.Tensor, labels: torch.Tensor, matrices: list[np.ndarray],
                patch: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Resample (B, 1, S...) source crops onto (B, 1, patch) with each sample's matrix.

        With output offsets d (voxels from the patch centre) and source index c + M d, the
        normalised source coordinate (align_corners=True) is diag(1/(S-1)) M diag(P-1) u, u
        the normalised output coordinate: one linear map per sample, which affine_grid builds.
        """
        src = images.shape[2:]
        theta = np.stack([np.diag(1 / np.maximum(np.asarray(src) - 1, 1)) @ m @ np.diag(np.asarray(patch) - 1.0)
                          for m in matrices])
        theta = torch.as_tensor(theta, dtype=torch.float32, device=images.device)      # (B, 3, 3)
        # the grid is separable in u: sum over output axes j of theta[:, :, j] * u_j (broadcast),
        # much cheaper than affine_grid's per-voxel matrix product on a CPU
        grid = torch.zeros((len(matrices), *patch, 3), device=images.device)
        for j, n in enumerate(patch):
            u = torch.linspace(-1, 1, n, device=images.device) if n > 1 else torch.zeros(1, device=images.device)
            shape = [1, 1, 1]
            shape[j] = n
            grid = grid + theta[:, None, None, None, :, j] * u.view(1, *shape, 1)
        grid = grid.flip(-1)                                          # (z, y, x) -> grid's (x, y, z)
        img = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        lab = F.grid_sample(labels.float(), grid, mode="nearest", padding_mode="zeros", align_corners=True)
        return img, lab.to(labels.dtype)

    def intensity(self, images: torch.Tensor, params: list[SampleParams],
                  generator: torch.Generator) -> torch.Tensor:
        """Noise, blur, brightness, contrast, low resolution and gamma (labels are untouched)."""
        x = images.clone()
        for b, p in enumerate(params):
            if p.noise_std > 0:
                x[b] += p.noise_std * torch.randn(x[b].shape, generator=generator, device=x.device)
            if p.blur_sigma is not None:
                x[b] = gaussian_blur(x[b:b + 1], p.blur_sigma)[0]
        scale = torch.tensor([p.brightness for p in params], device=x.device).view(-1, 1, 1, 1, 1)
        x = x * scale
        for b, p in enumerate(params):
            if p.contrast != 1.0:
                lo, hi, mean = x[b].min(), x[b].max(), x[b].mean()
                x[b] = ((x[b] - mean) * p.contrast + mean).clamp(lo, hi)
            if p.lowres is not None:
                x[b] = simulate_low_resolution(x[b:b + 1], p.lowres)[0]
            if p.gamma_inverted is not None:
                x[b] = -gamma_keep_stats(-x[b], p.gamma_inverted)
            if p.gamma is not None:
                x[b] = gamma_keep_stats(x[b], p.gamma)
        return x

    def __call__(self, images: list[torch.Tensor], labels: list[torch.Tensor], params: list[SampleParams],
                 patch: list[int], generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Per sample b, ``images[b]`` (1, S...) float and ``labels[b]`` (1, S...) integer, cut
        centred on its patch: S == patch for samples without a spatial transform, one common
        S >= :meth:`source_size` for those with one -> augmented (B, 1, patch) image and label."""
        out_img = torch.empty((len(params), 1, *patch), dtype=images[0].dtype, device=images[0].device)
        out_lab = torch.empty((len(params), 1, *patch), dtype=labels[0].dtype, device=labels[0].device)
        moved = [b for b, p in enumerate(params) if p.matrix is not None]
        for b, p in enumerate(params):
            if p.matrix is None:
                src = list(images[b].shape[1:])
                box = tuple(slice((s - n) // 2, (s - n) // 2 + n) for s, n in zip(src, patch))
                out_img[b], out_lab[b] = images[b][(slice(None),) + box], labels[b][(slice(None),) + box]
        if moved:
            img, lab = self.spatial(torch.stack([images[b] for b in moved]), torch.stack([labels[b] for b in moved]),
                                    [params[b].matrix for b in moved], patch)
            out_img[moved], out_lab[moved] = img, lab
        out_img = self.intensity(out_img, params, generator)
        for b, p in enumerate(params):
            if p.mirror:
                dims = [d + 1 for d in p.mirror]
                out_img[b], out_lab[b] = out_img[b].flip(dims), out_lab[b].flip(dims)
        return out_img, out_lab


def gaussian_blur(x: torch.Tensor, sigma: np.ndarray) -> torch.Tensor:
    """Separable Gaussian blur of (1, 1, z, y, x) with per-axis sigma in voxels (0 = skip axis);
    borders replicate the edge value."""
    for axis, s in enumerate(sigma):
        if s <= 0:
            continue
        radius = max(1, int(math.ceil(3 * s)))
        t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
        k = torch.exp(-0.5 * (t / s) ** 2)
        k = (k / k.sum()).view([1, 1] + [len(t) if a == axis else 1 for a in range(3)])
        pad = [0, 0] * 3
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        x = F.conv3d(F.pad(x, pad, mode="replicate"), k)
    return x


def simulate_low_resolution(x: torch.Tensor, zoom: np.ndarray) -> torch.Tensor:
    """Nearest downsampling of (1, 1, z, y, x) by ``zoom`` per axis, then linear upsampling back."""
    shape = x.shape[2:]
    small = [max(1, int(round(s * z))) for s, z in zip(shape, zoom)]
    if list(small) == list(shape):
        return x
    down = F.interpolate(x, size=small, mode="nearest")
    return F.interpolate(down, size=tuple(shape), mode="trilinear", align_corners=False)


def gamma_keep_stats(x: torch.Tensor, gamma: float, eps: float = 1e-7) -> torch.Tensor:
    """Rescale x to [0, 1], raise to ``gamma``, map back to its range, then restore its mean/std."""
    mean, std = x.mean(), x.std()
    lo, hi = x.min(), x.max()
    rng = hi - lo
    y = ((x - lo) / (rng + eps)) ** gamma * (rng + eps) + lo
    y = (y - y.mean()) / (y.std() + 1e-8) * std + mean
    return y
