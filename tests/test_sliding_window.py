"""The sliding window is nnU-Net 2.8.1's: tile starts, Gaussian importance map, padding, and
LOGITS (not probabilities) averaged over tiles, mirrorings and folds. Expected values are
worked out here from nnU-Net's formulas (docs/recipe_fidelity.md, Inference and evaluation), not imported from nnU-Net."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from seggrid.inference.sliding_window import (gaussian_importance, pad_to_tile, sliding_window_logits, tile_starts,
                                              tta_flips)


@pytest.mark.parametrize("image, tile, step, expected", [
    # nnU-Net's own comment: image 110, patch 64, step 0.5 -> 3 steps at 0, 23, 46
    ((110,), (64,), 0.5, [[0, 23, 46]]),
    ((64,), (64,), 0.5, [[0]]),                                  # image = tile: one tile
    ((65,), (64,), 0.5, [[0, 1]]),                               # one voxel more: two tiles
    ((100,), (64,), 0.5, [[0, 18, 36]]),
    ((9,), (4,), 0.75, [[0, 2, 5]]),                             # 2.5 rounds half to EVEN -> 2
    ((50,), (16,), 1.0, [[0, 11, 23, 34]]),                      # 34/3 = 11.33, 22.67 -> 11, 23
    # 3D, no side a multiple of the tile: z 24/8 -> 4 tiles; y 33/12 -> 4 tiles of 11; x 6/12 -> 2
    ((40, 57, 30), (16, 24, 24), 0.5, [[0, 8, 16, 24], [0, 11, 22, 33], [0, 6]]),
])
def test_tile_starts_follow_nnunets_rule(image, tile, step, expected):
    assert tile_starts(image, tile, step) == expected


def test_tile_starts_refuse_an_image_smaller_than_the_tile_and_a_bad_step():
    with pytest.raises(ValueError, match="pad it first"):
        tile_starts((10, 30, 30), (16, 24, 24), 0.5)
    with pytest.raises(ValueError, match="step"):
        tile_starts((32,), (16,), 0.0)


def test_padding_is_centred_with_the_odd_voxel_after_and_cropped_back():
    image = torch.arange(5 * 30 * 20, dtype=torch.float32).reshape(5, 30, 20)
    padded, crop = pad_to_tile(image, (16, 24, 24))
    assert tuple(padded.shape) == (16, 30, 24)
    assert crop == (slice(5, 10), slice(0, 30), slice(2, 22))    # z: 11 = 5 before + 6 after; x: 2 + 2
    assert torch.equal(padded[crop], image)
    assert float(padded.sum()) == float(image.sum())             # the padding is zeros


def test_gaussian_centre_corner_and_profile():
    g = gaussian_importance((16, 24, 24))
    assert g.dtype == torch.float32 and tuple(g.shape) == (16, 24, 24)
    assert float(g.max()) == 10.0 and float(g[8, 12, 12]) == 10.0          # centre = tile // 2
    # corner: offsets 8, 12, 12 voxels at sigmas 2, 3, 3 -> 10 exp(-(16 + 16 + 16) / 2)
    assert float(g[0, 0, 0]) == pytest.approx(10 * math.exp(-24), rel=1e-6)
    assert float(g[8, 12, 15]) == pytest.approx(10 * math.exp(-0.5), rel=1e-6)
    assert float(g[8, 12, 23]) > float(g[8, 12, 0]) == pytest.approx(10 * math.exp(-8), rel=1e-6)


@pytest.mark.parametrize("tile", [(16, 24, 24), (9, 15, 20), (8, 13, 32)])
def test_gaussian_equals_a_scaled_gaussian_filter_of_a_delta(tile):
    """nnU-Net's definition, written out with scipy: filter a delta at tile // 2 with sigma
    tile / 8 (constant mode), divide by the maximum, times 10."""
    delta = np.zeros(tile)
    delta[tuple(t // 2 for t in tile)] = 1
    expected = gaussian_filter(delta, [t / 8 for t in tile], 0, mode="constant", cval=0)
    expected = expected / (expected.max() / 10)
    np.testing.assert_allclose(gaussian_importance(tile, dtype=torch.float64).numpy(), expected, rtol=1e-10)


def test_gaussian_zeros_take_the_smallest_non_zero_value():
    # sigma_scale 1/16 on (32, 16, 16): sigmas 2, 1, 1, radii 8, 4, 4 voxels; beyond them 0.
    # The smallest non-zero entry sits at the radius on every axis: 10 exp(-(16 + 16 + 16) / 2).
    g = gaussian_importance((32, 16, 16), sigma_scale=1 / 16)
    smallest = 10 * math.exp(-24)
    assert float(g[0, 0, 0]) == pytest.approx(smallest, rel=1e-6)          # was 0 (offset 16 > 8)
    assert float(g[8, 4, 4]) == pytest.approx(smallest, rel=1e-6)          # at the radius, not replaced
    assert float(g.min()) == pytest.approx(smallest, rel=1e-6)
    # in float16 the default map's far corners underflow to 0 and are replaced likewise
    h = gaussian_importance((16, 24, 24), dtype=torch.float16)
    as_half = (10 * np.multiply.outer(np.multiply.outer(np.exp(-0.5 * ((np.arange(16) - 8) / 2) ** 2),
                                                        np.exp(-0.5 * ((np.arange(24) - 12) / 3) ** 2)),
                                      np.exp(-0.5 * ((np.arange(24) - 12) / 3) ** 2))).astype(np.float16)
    assert (as_half == 0).any()
    assert float(h[0, 0, 0]) == float(as_half[as_half > 0].min()) > 0
    assert float(h.min()) > 0


def test_mirroring_sets():
    assert tta_flips(1) == [()]
    assert tta_flips(2) == [(), (4,)]
    assert sorted(tta_flips(8)) == sorted([(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)])


class Fixed(torch.nn.Module):
    """A 'network' whose logits ignore the input: ``pattern`` (C, z, y, x) for every tile."""

    def __init__(self, pattern: torch.Tensor):
        super().__init__()
        self.pattern = pattern

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pattern.expand(x.shape[0], *self.pattern.shape).clone()


# Three-class logits whose mean and whose softmax-mean have different argmaxes:
# mean logits (1, -0.5, 1.5) -> class 2; mean probabilities (0.452, 0.245, 0.303) -> class 0.
A, B = torch.tensor([0.0, 3.0, 3.0]), torch.tensor([2.0, -4.0, 0.0])


def _check_logit_average(logits: torch.Tensor) -> None:
    mean = (A + B) / 2
    probs_mean = (torch.softmax(A, 0) + torch.softmax(B, 0)) / 2
    assert int(mean.argmax()) == 2 and int(probs_mean.argmax()) == 0
    assert torch.allclose(logits, mean[:, None, None, None].expand_as(logits), atol=1e-5)
    assert set(logits.argmax(0).unique().tolist()) == {2}


def test_folds_are_averaged_as_logits():
    shape = (8, 8, 8)
    folds = [Fixed(A[:, None, None, None].expand(3, *shape)), Fixed(B[:, None, None, None].expand(3, *shape))]
    _check_logit_average(sliding_window_logits(folds, np.zeros((11, 13, 8), np.float32), [8, 8, 8], flips=1))


def test_mirrorings_are_averaged_as_logits_per_tile():
    """One tile = the image; the network says A on the left half (x < 4), B on the right. Its
    x-mirrored pass, flipped back, says B on the left, A on the right: the mean is (A + B) / 2."""
    pattern = torch.empty(3, 8, 8, 8)
    pattern[..., :4] = A[:, None, None, None]
    pattern[..., 4:] = B[:, None, None, None]
    logits = sliding_window_logits(Fixed(pattern), np.zeros((8, 8, 8), np.float32), [8, 8, 8], flips=2)
    _check_logit_average(logits)
    without = sliding_window_logits(Fixed(pattern), np.zeros((8, 8, 8), np.float32), [8, 8, 8], flips=1)
    assert torch.allclose(without, pattern)


class TileMean(torch.nn.Module):
    """Logits (1, -1) times the mean of the input tile, constant over the tile."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=(1, 2, 3, 4))[:, None, None, None, None]
        return torch.cat([m, -m], 1).expand(-1, -1, *x.shape[2:]).contiguous()


def test_overlapping_tiles_are_weighted_by_the_gaussian():
    """Image (8, 8, 12), tile 8: x tiles start at 0 and 4. Tile 1 (x 0-7) has mean 1, tile 2
    (x 4-11) mean 3. Where they overlap (x 4-7) the logit is the Gaussian-weighted mean
    (g(x) * 1 + g(x - 4) * 3) / (g(x) + g(x - 4)), g(d) = exp(-(d - 4)^2 / 2) (sigma 1)."""
    image = np.zeros((8, 8, 12), np.float32)
    image[..., :8] = 1.0
    image[..., 8:] = 5.0                                  # tile 2 mean = (4 * 1 + 4 * 5) / 8 = 3
    logits = sliding_window_logits(TileMean(), image, [8, 8, 8], step=0.5, flips=1)
    g = lambda d: math.exp(-0.5 * (d - 4) ** 2)
    for x in range(12):
        if x < 4:
            want = 1.0
        elif x >= 8:
            want = 3.0
        else:
            want = (g(x) * 1 + g(x - 4) * 3) / (g(x) + g(x - 4))
        assert float(logits[0, 3, 5, x]) == pytest.approx(want, rel=1e-5), x
        assert float(logits[1, 3, 5, x]) == pytest.approx(-want, rel=1e-5), x


def test_a_voxelwise_network_is_reproduced_exactly_whatever_the_tiling():
    """A 1x1x1 network gives the same logits wherever a voxel sits in a tile and mirrored or
    not: the weighting cancels, flips are undone, the padding is cropped off."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 6, 1), torch.nn.Tanh(), torch.nn.Conv3d(6, 4, 1)).eval()
    for shape, folds, flips in [((20, 37, 30), 1, 8), ((10, 30, 20), 2, 2)]:   # the 2nd: smaller than the patch
        image = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
        logits = sliding_window_logits([net] * folds, image, [16, 24, 24], step=0.5, flips=flips)
        with torch.no_grad():
            direct = net(torch.from_numpy(image)[None, None])[0]
        assert logits.shape == direct.shape
        assert torch.allclose(logits, direct, atol=1e-5)
