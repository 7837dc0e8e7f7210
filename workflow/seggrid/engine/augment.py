"""nnU-Net 2.8.1's training augmentation (``nnUNetTrainer.get_training_transforms`` built from
batchgeneratorsv2 0.3), written as batched torch operations.

Parameters are drawn on the CPU from the sampler's NumPy generator (so a checkpoint that
stores that generator resumes the exact same augmentation stream); the arrays are then
transformed on whatever device they live on (CPU here, the GPU in a cluster job), so the
augmentation is no longer a CPU-worker bottleneck.

Order, probabilities and ranges of the ``nnunet`` preset, per sample, each checked against
batchgeneratorsv2's transform (file under ``batchgeneratorsv2/transforms/``):

=================  =====  ==========================================================
transform          p      parameters
=================  =====  ==========================================================
rotation           0.2    each axis U(-30, 30) deg, matrix Rz @ Ry @ Rx
                          (``spatial/spatial.py``, ``create_affine_matrix_3d``); dummy 2D:
                          one in-plane angle U(-180, 180) deg
scaling            0.2    one factor U(0.7, 1.4) for every axis (y and x in dummy 2D);
                          > 1 samples a larger region (zoom out)
(spatial)                 image linear, zeros outside; label: each label's indicator
                          interpolated linearly (x 1000, float16), argmax, ties to the
                          nearest-neighbour label; outside the image/box label -1, set
                          to 0 at the end (``mode_seg='bilinear'``, ``padding_value_seg=-1``,
                          ``RemoveLabelTansform(-1, 0)``)
gaussian noise     0.1    std U(0, 0.1) (``intensity/gaussian_noise.py``: the range is
                          named ``noise_variance`` but the drawn value is the std)
gaussian blur      0.2    x 0.5 per channel; sigma U(0.5, 1) drawn per axis, on ALL axes
                          (also axis 0 in dummy 2D); kernel of round_to_odd(6 sigma + 0.5)
                          taps, reflect padding (``noise/gaussian_blur.py``)
brightness         0.15   multiply by m
contrast           0.15   (x - mean) * m + mean, clipped to the old range
low resolution     0.25   x 0.5 per channel; one zoom U(0.5, 1) for all axes (axis 0 left
                          alone in dummy 2D); 'nearest-exact' down, trilinear up
gamma, inverted    0.1    gamma g of -x, mean and std kept (``intensity/gamma.py``)
gamma              0.3    same, image not inverted
mirroring          0.5    per axis
=================  =====  ==========================================================

m is U(0.75, 1) or U(1, 1.25) with equal chance, g likewise from (0.7, 1) or (1, 1.5)
(``BGContrast``). "Dummy 2D" (max(patch) / patch[0] > 3, ``ANISO_THRESHOLD``): rotation and
scaling act in the (y, x) plane only and low resolution leaves axis 0 alone; blur does not.
A spatially transformed sample is resampled from the sampler's whole initial-patch box
(:func:`initial_patch_size`) around its centre, as nnU-Net's ``SpatialTransform`` does
(``random_crop=False``): where a zoom-out reaches past that box the image is 0 and the label 0,
as in nnU-Net. Samples without a spatial transform are cut directly (exact copies of the data).
Every probability and range is a field of :class:`AugmentConfig`, whose defaults are nnU-Net's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

from seggrid.data.geometry import ANISO_THRESHOLD   # nnU-Net's one constant (configuration.py)


@dataclass(frozen=True)
class AugmentConfig:
    rotation_p: float = 0.2
    rotation_deg: float = 30.0
    rotation_deg_dummy_2d: float = 180.0
    scale_p: float = 0.2
    scale_range: tuple[float, float] = (0.7, 1.4)
    noise_p: float = 0.1
    noise_std: tuple[float, float] = (0.0, 0.1)       # nnU-Net's ``noise_variance=(0, 0.1)``, used as the std
    blur_p: float = 0.2
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    blur_p_per_channel: float = 0.5
    blur_truncate: float = 6.0                       # kernel taps: round_to_odd(sigma * truncate + 0.5)
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


def degrees_to_radians(deg: float) -> float:
    """deg / 360 * 2 pi, in nnU-Net's order of operations (so the float is bit-equal to its)."""
    return deg / 360 * 2.0 * np.pi


def is_dummy_2d(patch: list[int]) -> bool:
    """nnU-Net's "dummy 2D" augmentation: max(patch) / patch[0] > 3."""
    return max(patch) / patch[0] > ANISO_THRESHOLD


def build_augmenter_config(name: str, patch: list[int]) -> AugmentConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown augmentation '{name}'; known: {sorted(PRESETS)}")
    return replace(PRESETS[name], dummy_2d=is_dummy_2d(patch))


def axis_rotation(axis: int, angle: float) -> np.ndarray:
    """3x3 rotation about array axis ``axis`` (radians), with batchgeneratorsv2's signs: about
    axis 0 and 2 the (-sin) is above the diagonal, about axis 1 below it."""
    c, s = math.cos(angle), math.sin(angle)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i] = r[j, j] = c
    r[i, j], r[j, i] = (s, -s) if axis == 1 else (-s, s)
    return r


def rotation_matrix(angles: np.ndarray) -> np.ndarray:
    """R_2(a2) @ R_1(a1) @ R_0(a0) (:func:`axis_rotation`): nnU-Net's ``Rz @ Ry @ Rx``, its
    "x" being array axis 0."""
    return axis_rotation(2, angles[2]) @ axis_rotation(1, angles[1]) @ axis_rotation(0, angles[0])


def initial_patch_size(patch: list[int]) -> list[int]:
    """The box nnU-Net's training loader cuts before augmentation (``get_patch_size`` in
    ``training/data_augmentation/compute_initial_patch_size.py``, called by
    ``configure_rotation_dummyDA_mirroring_and_inital_patch_size``): the patch vector rotated by
    the largest rotation (30 deg, or 180 deg capped at 90 in dummy 2D) about each axis in turn,
    the largest absolute extent per axis (and the patch itself), divided by 0.85 and truncated;
    in dummy 2D axis 0 keeps the patch's size."""
    dummy = is_dummy_2d(patch)
    angle = min(degrees_to_radians(180.0 if dummy else 30.0), degrees_to_radians(90.0))
    v = np.asarray(patch, dtype=float)
    extent = v.copy()
    for axis in range(3):
        extent = np.maximum(extent, np.abs(v @ axis_rotation(axis, angle)))
    out = (extent / 0.85).astype(int)
    if dummy:
        out[0] = patch[0]
    return [int(n) for n in out]


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
                lim = degrees_to_radians(c.rotation_deg_dummy_2d)
                angles[0] = rng.uniform(-lim, lim)          # in the (y, x) plane
            elif rotate:
                lim = degrees_to_radians(c.rotation_deg)
                angles = rng.uniform(-lim, lim, size=3)
            s = float(rng.uniform(*c.scale_range)) if scale else 1.0
            p.matrix = rotation_matrix(angles) @ np.diag([1.0 if c.dummy_2d else s, s, s])
        if rng.random() < c.noise_p:
            p.noise_std = float(rng.uniform(*c.noise_std))
        if rng.random() < c.blur_p and rng.random() < c.blur_p_per_channel:
            p.blur_sigma = rng.uniform(*c.blur_sigma, size=3)
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
    def sampling_grid(matrices: list[np.ndarray], source: list[int], patch: list[int],
                      device: torch.device) -> torch.Tensor:
        """grid_sample grid (B, *patch, 3) (align_corners=True) that reads output voxel j from source
        index (S - 1) / 2 + M (j - (P - 1) / 2): each sample's matrix M about the centres of its
        source box S and the patch P, as batchgeneratorsv2's ``SpatialTransform`` maps it.

        With u the normalised output coordinate, the normalised source coordinate is
        diag(1/(S-1)) M diag(P-1) u: one linear map per sample."""
        theta = np.stack([np.diag(1 / np.maximum(np.asarray(source) - 1, 1)) @ m @ np.diag(np.asarray(patch) - 1.0)
                          for m in matrices])
        theta = torch.as_tensor(theta, dtype=torch.float32, device=device)      # (B, 3, 3)
        # the grid is separable in u: sum over output axes j of theta[:, :, j] * u_j (broadcast),
        # much cheaper than affine_grid's per-voxel matrix product on a CPU
        grid = torch.zeros((len(matrices), *patch, 3), device=device)
        for j, n in enumerate(patch):
            u = torch.linspace(-1, 1, n, device=device) if n > 1 else torch.zeros(1, device=device)
            shape = [1, 1, 1]
            shape[j] = n
            grid = grid + theta[:, None, None, None, :, j] * u.view(1, *shape, 1)
        return grid.flip(-1)                                          # (z, y, x) -> grid's (x, y, z)

    def spatial(self, images: torch.Tensor, labels: torch.Tensor, matrices: list[np.ndarray],
                patch: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Resample (B, 1, S...) source boxes onto (B, 1, patch) with each sample's matrix: the
        image linearly (0 outside the box), the label by :func:`resample_labels` (-1 outside)."""
        grid = self.sampling_grid(matrices, list(images.shape[2:]), patch, images.device)
        img = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        return img, resample_labels(labels, grid)

    def intensity(self, images: torch.Tensor, params: list[SampleParams],
                  generator: torch.Generator) -> torch.Tensor:
        """Noise, blur, brightness, contrast, low resolution and gamma (labels are untouched)."""
        x = images.clone()
        for b, p in enumerate(params):
            if p.noise_std > 0:
                x[b] += p.noise_std * torch.randn(x[b].shape, generator=generator, device=x.device)
            if p.blur_sigma is not None:
                x[b] = gaussian_blur(x[b:b + 1], p.blur_sigma, self.cfg.blur_truncate)[0]
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
        """Per sample b, ``images[b]`` (1, S...) float and ``labels[b]`` (1, S...) signed integer
        (-1 = outside the image): the patch itself for samples without a spatial transform (or a
        box that the patch is cut from at ``S // 2 - patch // 2``), the sampler's initial-patch box
        (one common S) for those with one -> augmented (B, 1, patch) image and label (>= 0)."""
        out_img = torch.empty((len(params), 1, *patch), dtype=images[0].dtype, device=images[0].device)
        out_lab = torch.empty((len(params), 1, *patch), dtype=labels[0].dtype, device=labels[0].device)
        moved = [b for b, p in enumerate(params) if p.matrix is not None]
        for b, p in enumerate(params):
            if p.matrix is None:
                src = list(images[b].shape[1:])
                box = tuple(slice(s // 2 - n // 2, s // 2 - n // 2 + n) for s, n in zip(src, patch))
                out_img[b], out_lab[b] = images[b][(slice(None),) + box], labels[b][(slice(None),) + box]
        if moved:
            img, lab = self.spatial(torch.stack([images[b] for b in moved]), torch.stack([labels[b] for b in moved]),
                                    [params[b].matrix for b in moved], patch)
            out_img[moved], out_lab[moved] = img, lab
        out_lab.clamp_(min=0)                                  # -1 ("outside") -> 0, nnU-Net's RemoveLabelTansform
        out_img = self.intensity(out_img, params, generator)
        for b, p in enumerate(params):
            if p.mirror:
                dims = [d + 1 for d in p.mirror]
                out_img[b], out_lab[b] = out_img[b].flip(dims), out_lab[b].flip(dims)
        return out_img, out_lab


def resample_labels(labels: torch.Tensor, grid: torch.Tensor, scale: float = 1000.0) -> torch.Tensor:
    """Labels (B, 1, S...) integer, -1 = outside the image -> (B, 1, *grid) on ``grid``, as
    batchgeneratorsv2's ``SpatialTransform(mode_seg='bilinear', seg_tiebreak='nearest')``:
    every label's indicator (x ``scale``) is interpolated linearly and rounded to float16, the
    highest score wins (the lowest label on a tie), and where the nearest-neighbour label has the
    top score it is taken. Outside the source box counts as label -1."""
    # labels present (a histogram: one pass, cheaper than torch.unique's sort of the whole box)
    counts = torch.bincount(labels.flatten().to(torch.int32) + 1)
    values = sorted(set((torch.nonzero(counts).flatten() - 1).tolist()) | {-1})
    # nearest neighbour with -1 outside: shift so that zeros padding reads -1
    nearest = F.grid_sample(labels.float() + 1, grid, mode="nearest", padding_mode="zeros",
                            align_corners=True).round_().to(labels.dtype) - 1
    best = best_label = nearest_score = None
    for u in values:
        indicator = (labels == u).float()
        if u == -1:            # 1 outside the box as well: sample (indicator - 1) and add 1 back
            score = F.grid_sample(indicator.sub_(1).mul_(scale), grid, mode="bilinear", padding_mode="zeros",
                                  align_corners=True).add_(scale).half()
        else:
            score = F.grid_sample(indicator.mul_(scale), grid, mode="bilinear", padding_mode="zeros",
                                  align_corners=True).half()
        if best is None:
            best, best_label = score, torch.full_like(nearest, u)
            nearest_score = torch.where(nearest == u, score, torch.full_like(score, -math.inf))
            continue
        better = score > best
        best_label[better] = u
        best = torch.maximum(best, score)
        nearest_score = torch.where(nearest == u, score, nearest_score)
    return torch.where(nearest_score == best, nearest, best_label)


def _round_to_odd(n: float) -> int:
    """The odd integer nearest to ``n`` (Python rounding first; a tie of two odd neighbours goes the
    way ``n`` lies from its rounded value), batchgeneratorsv2's ``_round_to_nearest_odd``."""
    r = round(n)
    if r % 2 == 1:
        return r
    return r + 1 if n - r >= 0 else r - 1


def gaussian_blur(x: torch.Tensor, sigma: np.ndarray, truncate: float = 6.0) -> torch.Tensor:
    """Separable Gaussian blur of (1, 1, z, y, x), axis by axis with per-axis sigma in voxels
    (0 = skip the axis): ``round_to_odd(sigma * truncate + 0.5)`` taps, normalised, borders
    reflected (batchgeneratorsv2's ``blur_dimension``)."""
    for axis, s in enumerate(sigma):
        if s <= 0:
            continue
        taps = _round_to_odd(float(s) * truncate + 0.5)
        half = (taps - 1) * 0.5
        t = torch.linspace(-half, half, taps, dtype=x.dtype, device=x.device)
        k = torch.exp(-0.5 * (t / float(s)) ** 2)
        k = (k / k.sum()).view([1, 1] + [taps if a == axis else 1 for a in range(3)])
        pad = [0, 0] * 3
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = taps // 2
        x = F.conv3d(F.pad(x, pad, mode="reflect"), k)
    return x


def simulate_low_resolution(x: torch.Tensor, zoom: np.ndarray) -> torch.Tensor:
    """(1, 1, z, y, x) down to round(shape * zoom) per axis by 'nearest-exact', then trilinear back
    (batchgeneratorsv2's ``SimulateLowResolutionTransform``)."""
    shape = x.shape[2:]
    # the zoom as a float32 value, as bgv2 keeps it in a float32 tensor (so a size near .5 rounds alike)
    small = [max(1, round(s * float(np.float32(z)))) for s, z in zip(shape, zoom)]
    if list(small) == list(shape):
        return x
    down = F.interpolate(x, size=small, mode="nearest-exact")
    return F.interpolate(down, size=tuple(shape), mode="trilinear", align_corners=False)


def gamma_keep_stats(x: torch.Tensor, gamma: float, eps: float = 1e-7) -> torch.Tensor:
    """batchgeneratorsv2's ``GammaTransform`` with ``p_retain_stats=1``: x rescaled to [0, 1] (range
    clamped to >= eps), raised to ``gamma``, mapped back to its range, then shifted and scaled to its
    old mean and std (the new std clamped to >= eps)."""
    mean, std = x.mean(), x.std()
    lo, hi = torch.aminmax(x)
    rng = hi - lo
    y = ((x - lo) / torch.clamp(rng, min=eps)) ** gamma * rng + lo
    return (y - y.mean()) * (std / torch.clamp(y.std(), min=eps)) + mean
