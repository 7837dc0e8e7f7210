"""The loss registry: values on hand-made inputs and finite-difference gradient checks."""

from __future__ import annotations

import math

import pytest
import torch

from seggrid.losses import LOSSES, PerimeterTerm, TopKTerm, build_loss, soft_surface, DeepSupervisionLoss


def perfect_logits(target: torch.Tensor, n: int, scale: float = 30.0) -> torch.Tensor:
    return torch.nn.functional.one_hot(target[:, 0], n).movedim(-1, 1).double() * scale


@pytest.fixture()
def target():
    t = torch.zeros(2, 1, 6, 6, 6, dtype=torch.long)
    t[:, :, 1:4, 1:4, 1:4] = 1
    t[1, :, 4:, 4:, 4:] = 2
    return t


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_perfect_prediction_scores_low_and_random_high(name, target):
    loss = build_loss(name).double()
    good = loss(perfect_logits(target, 3), target).item()
    torch.manual_seed(0)
    bad = loss(torch.randn(2, 3, 6, 6, 6, dtype=torch.float64), target).item()
    assert good < 0.2 and bad > good + 0.3, (good, bad)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradients_match_finite_differences(name):
    torch.manual_seed(1)
    target = torch.randint(0, 3, (1, 1, 4, 4, 4))
    logits = torch.randn(1, 3, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    loss = build_loss(name)
    # the soft-Dice, CE, focal and perimeter terms are smooth at random inputs; TopK is
    # piecewise smooth (the selected voxels do not change under a 1e-6 perturbation)
    assert torch.autograd.gradcheck(lambda x: loss(x, target).double(), (logits,), eps=1e-6, atol=1e-5)


def test_dice_ce_value_by_hand():
    target = torch.tensor([[[[[0, 1]]]]])                       # (1, 1, 1, 1, 2)
    logits = torch.zeros(1, 2, 1, 1, 2, dtype=torch.float64)    # p = 0.5 everywhere
    value = build_loss("dice_ce")(logits, target).item()
    ce = math.log(2)
    dice = 1 - (2 * 0.5 + 1e-5) / (1.0 + 1 + 1e-5)             # foreground: tp 0.5, sum p 1, sum g 1
    assert value == pytest.approx(ce + dice, rel=1e-6)


def test_topk_is_mean_of_worst_tenth():
    target = torch.zeros(1, 1, 1, 1, 10, dtype=torch.long)
    logits = torch.zeros(1, 2, 1, 1, 10, dtype=torch.float64)
    logits[0, 1, 0, 0, 0] = 5.0                                  # one clearly wrong voxel
    ce_wrong = torch.nn.functional.cross_entropy(logits[..., :1], target[:, 0, ..., :1]).item()
    assert TopKTerm()(logits, target).item() == pytest.approx(ce_wrong)


def test_soft_surface_counts_boundary_voxels():
    cube = torch.zeros(1, 1, 7, 7, 7, dtype=torch.float64)
    cube[..., 1:6, 1:6, 1:6] = 1
    assert soft_surface(cube).item() == 5 ** 3 - 3 ** 3          # shell of a 5-cube
    t = (cube > 0).long()
    logits = perfect_logits(t, 2, scale=50)
    assert PerimeterTerm()(logits, t).item() == pytest.approx(0.0, abs=1e-6)


def test_deep_supervision_weights_heads():
    target = torch.zeros(1, 1, 4, 4, 4, dtype=torch.long)
    good = perfect_logits(target, 2)
    bad = torch.zeros_like(good)
    stacked = torch.stack([good, bad], 1)
    ds = DeepSupervisionLoss(build_loss("dice_ce").double(), torch.tensor([2 / 3, 1 / 3], dtype=torch.float64))
    single = build_loss("dice_ce").double()
    expected = 2 / 3 * single(good, target) + 1 / 3 * single(bad, target)
    assert ds(stacked, target).item() == pytest.approx(expected.item())
