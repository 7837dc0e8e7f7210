"""The loss registry: values on hand-made inputs and finite-difference gradient checks."""

from __future__ import annotations

import math

import pytest
import torch

from seggrid.engine.losses import LOSSES, TERMS, DeepSupervisionLoss, DiceTerm, PerimeterTerm, build_loss, soft_surface
from seggrid.engine.network import deep_supervision_outputs, deep_supervision_weights, downsample_target, head_scales
from seggrid.engine.planner import plan_topology
from seggrid.plan import plan_from_topology


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
    dice = -(2 * 0.5 + 1e-5) / (1.0 + 1 + 1e-5)             # foreground: tp 0.5, sum p 1, sum g 1
    assert value == pytest.approx(ce + dice, rel=1e-6)


def test_topk_is_mean_of_worst_tenth():
    target = torch.zeros(1, 1, 1, 1, 10, dtype=torch.long)
    logits = torch.zeros(1, 2, 1, 1, 10, dtype=torch.float64)
    logits[0, 1, 0, 0, 0] = 5.0                                  # one clearly wrong voxel
    ce_wrong = torch.nn.functional.cross_entropy(logits[..., :1], target[:, 0, ..., :1]).item()
    assert TERMS["topk"]()(logits, target).item() == pytest.approx(ce_wrong)


def test_soft_surface_counts_boundary_voxels():
    cube = torch.zeros(1, 1, 7, 7, 7, dtype=torch.float64)
    cube[..., 1:6, 1:6, 1:6] = 1
    assert soft_surface(cube).item() == 5 ** 3 - 3 ** 3          # shell of a 5-cube
    t = (cube > 0).long()
    logits = perfect_logits(t, 2, scale=50)
    assert PerimeterTerm()(logits, t).item() == pytest.approx(0.0, abs=1e-6)


def test_perimeter_term_is_weighted_by_perimeter_weight():
    """dice_perimeter = Dice + perimeter_weight x perimeter (recipe.perimeter_weight, default 0.1)."""
    torch.manual_seed(2)
    target = torch.randint(0, 3, (2, 1, 5, 6, 6))
    logits = 0.01 * torch.randn(2, 3, 5, 6, 6, dtype=torch.float64)   # nearly flat: almost no predicted surface
    dice, unweighted = DiceTerm()(logits, target), PerimeterTerm(1.0)(logits, target)
    assert unweighted.item() > 0.5
    for weight in (0.0, 0.1, 1.0):
        value = build_loss("dice_perimeter", perimeter_weight=weight)(logits, target)
        assert value.item() == pytest.approx((dice + weight * unweighted).item(), rel=1e-9)
    assert build_loss("dice_perimeter")(logits, target).item() == pytest.approx((dice + 0.1 * unweighted).item())


def test_deep_supervision_compares_each_head_with_a_downsampled_target():
    """Each head is scored at its own resolution against the nearest-downsampled target."""
    target = torch.zeros(1, 1, 4, 8, 8, dtype=torch.long)
    target[..., 1:3, 2:6, 2:6] = 1
    low = downsample_target(target, [1, 2, 2])
    assert low.shape == (1, 1, 4, 4, 4)
    good_full, good_low = perfect_logits(target, 2), perfect_logits(low, 2)
    bad_low = torch.zeros_like(good_low)
    ds = DeepSupervisionLoss(build_loss("dice_ce").double(), torch.tensor([2 / 3, 1 / 3]), [[1, 1, 1], [1, 2, 2]])
    single = build_loss("dice_ce").double()
    expected = 2 / 3 * single(good_full, target) + 1 / 3 * single(bad_low, low)
    assert ds([good_full, bad_low], target).item() == pytest.approx(expected.item())
    assert ds([good_full, good_low], target).item() < 0.01


@pytest.mark.parametrize("factor", [[1, 2, 2], [2, 2, 2], [2, 4, 4], [1, 1, 8]])
def test_downsample_target_equals_nearest_exact_interpolation(factor):
    """nnU-Net downsamples deep-supervision targets with torch's nearest-exact; our strided
    view picks the same voxels without a copy."""
    torch.manual_seed(0)
    target = torch.randint(0, 5, (2, 1, 8, 16, 16))
    size = [s // f for s, f in zip(target.shape[2:], factor)]
    ref = torch.nn.functional.interpolate(target.float(), size, mode="nearest-exact").long()
    assert torch.equal(downsample_target(target, factor), ref)


def test_deep_supervision_weights_and_scales():
    assert deep_supervision_weights(4).tolist() == pytest.approx([8 / 15, 4 / 15, 2 / 15, 1 / 15])
    assert deep_supervision_weights(3, "top3_721").tolist() == pytest.approx([0.7, 0.2, 0.1])
    topo = plan_topology([64, 160, 160], [2.0, 0.69, 0.69], 4, 16, 5, "down")     # AMOS-like spacing
    assert topo["strides"] == [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
    plan = plan_from_topology(topo, 3, deep_supervision=True, deep_supervision_weights="nnunet")
    assert deep_supervision_outputs(plan) == 4                  # 5 decoder outputs, the lowest weighted 0
    assert head_scales(plan, 4) == [[1, 1, 1], [1, 2, 2], [2, 4, 4], [4, 8, 8]]
    assert deep_supervision_outputs(plan.with_setting(deep_supervision_weights="top3_721")) == 3
    assert deep_supervision_outputs(plan.with_setting(deep_supervision=False)) == 1


def _reference_terms(batch_dice: bool):
    """Plain autograd versions of the terms (softmax, one-hot, log-softmax kept by autograd)."""
    F = torch.nn.functional

    def dice(logits, t):
        p = torch.softmax(logits, 1)
        onehot = F.one_hot(t[:, 0], logits.shape[1]).movedim(-1, 1).to(p.dtype)
        dims = (0, 2, 3, 4) if batch_dice else (2, 3, 4)
        tp, s, g = (p * onehot).sum(dims), p.sum(dims), onehot.sum(dims)
        return -((2 * tp + 1e-5) / (s + g + 1e-5))[..., 1:].mean()

    def focal(logits, t):
        log_p = torch.log_softmax(logits, 1).gather(1, t)
        return (-(1 - log_p.exp()) ** 2 * log_p).mean()

    def topk(logits, t):
        ce = F.cross_entropy(logits, t[:, 0], reduction="none").flatten()
        return ce.topk(max(1, int(ce.numel() * 0.1))).values.mean()

    return {"dice": dice, "ce": lambda x, t: F.cross_entropy(x, t[:, 0]), "focal": focal, "topk": topk}


@pytest.mark.parametrize("batch_dice", [False, True])
@pytest.mark.parametrize("term", ["dice", "ce", "focal", "topk", "dice_ce", "dice_focal", "dice_topk"])
def test_hand_written_backward_equals_autograd(term, batch_dice):
    """The memory-lean terms (alone, and Dice fused with a voxel term) give the value and the
    gradient of the plain autograd formulas."""
    torch.manual_seed(3)
    logits = torch.randn(2, 4, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 4, (2, 1, 4, 5, 6))
    refs = _reference_terms(batch_dice)
    if term in LOSSES:
        ours = build_loss(term, batch_dice)(logits, target)
        ref = sum(refs[t](logits, target) for t in LOSSES[term])
    else:
        ours = (DiceTerm(batch_dice) if term == "dice" else TERMS[term]())(logits, target)
        ref = refs[term](logits, target)
    g_ours, = torch.autograd.grad(ours, logits)
    g_ref, = torch.autograd.grad(ref, logits)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-12)
    assert torch.allclose(g_ours, g_ref, rtol=1e-9, atol=1e-15)


def test_half_precision_logits_get_a_half_precision_gradient():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, 4).to(torch.bfloat16).requires_grad_()
    target = torch.randint(0, 3, (2, 1, 4, 4, 4))
    loss = build_loss("dice_ce")(logits, target)
    loss.backward()
    assert loss.dtype == torch.float32 and logits.grad.dtype == torch.bfloat16
    ref = build_loss("dice_ce")(logits.detach().float(), target)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)


def _saved_bytes(fn) -> int:
    """Bytes of distinct storages autograd keeps for the backward pass of ``fn()``."""
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


@pytest.mark.parametrize("name", ["dice_ce", "dice_focal", "dice_topk"])
def test_loss_keeps_only_logits_and_target_for_backward(name):
    """No softmax, log-softmax or one-hot copy survives the forward pass: what the backward
    pass keeps is the logits (half precision under AMP) and the target, whatever C is."""
    torch.manual_seed(0)
    logits = torch.randn(2, 16, 8, 16, 16, requires_grad=True).to(torch.bfloat16)
    target = torch.randint(0, 16, (2, 1, 8, 16, 16))
    logit_bytes = logits.numel() * logits.element_size()
    target_bytes = target.numel() * target.element_size()
    kept = _saved_bytes(lambda: build_loss(name, batch_dice=True)(logits, target))
    topk_indices = int(target.numel() * 0.1) * 8 if name == "dice_topk" else 0
    assert kept <= logit_bytes + target_bytes + topk_indices
    plain = _saved_bytes(lambda: sum(_reference_terms(True)[t](logits.float(), target) for t in LOSSES[name]))
    assert plain > 3 * kept
