"""Augmentation (augment.py) and patch sampling (sampling.py): each transform's effect."""

from __future__ import annotations

import json
import math
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from seggrid.engine.augment import (PRESETS, AugmentConfig, Augmenter, SampleParams, build_augmenter_config,
                                    degrees_to_radians, gamma_keep_stats, gaussian_blur, initial_patch_size, resample_labels,
                                    rotation_matrix, simulate_low_resolution)
from seggrid.engine.sampling import (PatchSampler, Prefetcher, SmartCache, adaptive_foreground_fraction, box_bounds,
                                     forced_foreground_counts, local_batch)

OFF = PRESETS["none"]

#: nnU-Net 2.8.1's own augmentation pipeline as benchmarks/conformance/recipe/nnunet_augmentation.py
#: recorded it (nnUNetTrainer.get_training_transforms, batchgeneratorsv2's transform objects).
NNUNET_AUGMENTATION = Path(__file__).parent / "fixtures" / "nnunet" / "augmentation" / "nnunet.json"


def _nnunet_defaults() -> dict:
    """nnU-Net's value of every AugmentConfig field (rotations in radians, as nnU-Net holds them),
    read from the recorded pipelines of a 3D plan and of a dummy-2D plan."""
    configs = json.loads(NNUNET_AUGMENTATION.read_text())["configs"]
    steps: dict[str, dict] = {}
    for step in configs["3d"]["pipeline"]:
        inverted = step["class"] == "GammaTransform" and step["params"]["p_invert_image"] == 1
        steps[step["class"] + ("_inverted" if inverted else "")] = step
    spatial = steps["SpatialTransform"]["params"]
    p = {name: step["p"] for name, step in steps.items()}
    q = {name: step["params"] for name, step in steps.items()}
    assert q["GammaTransform"]["gamma"] == q["GammaTransform_inverted"]["gamma"]
    return {
        "rotation_p": spatial["p_rotation"], "rotation_deg": configs["3d"]["rotation_for_DA"],
        "rotation_deg_dummy_2d": configs["dummy_2d"]["rotation_for_DA"],
        "scale_p": spatial["p_scaling"], "scale_range": spatial["scaling"],
        "noise_p": p["GaussianNoiseTransform"], "noise_std": q["GaussianNoiseTransform"]["noise_variance"],
        "blur_p": p["GaussianBlurTransform"], "blur_sigma": q["GaussianBlurTransform"]["blur_sigma"],
        "blur_p_per_channel": q["GaussianBlurTransform"]["p_per_channel"],
        "blur_truncate": q["GaussianBlurTransform"]["truncate"],
        "brightness_p": p["MultiplicativeBrightnessTransform"],
        "brightness_range": q["MultiplicativeBrightnessTransform"]["multiplier_range"]["BGContrast"],
        "contrast_p": p["ContrastTransform"], "contrast_range": q["ContrastTransform"]["contrast_range"]["BGContrast"],
        "lowres_p": p["SimulateLowResolutionTransform"], "lowres_range": q["SimulateLowResolutionTransform"]["scale"],
        "lowres_p_per_channel": q["SimulateLowResolutionTransform"]["p_per_channel"],
        "gamma_inverted_p": p["GammaTransform_inverted"], "gamma_p": p["GammaTransform"],
        "gamma_range": q["GammaTransform"]["gamma"]["BGContrast"],
        "mirror_p": q["MirrorTransform"]["p_per_axis"],
    }


def _blocks(shape=(12, 20, 20), seed=0):
    """A label volume of random boxes (classes 1-3) and an image that is 10 x label + noise-free."""
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, dtype=np.int64)
    for c in (1, 2, 3):
        lo = [rng.integers(0, s - 4) for s in shape]
        hi = [a + rng.integers(3, 8) for a in lo]
        lab[tuple(slice(a, b) for a, b in zip(lo, hi))] = c
    img = lab.astype(np.float32) * 10
    return torch.from_numpy(img)[None, None], torch.from_numpy(lab)[None, None]


def _gen(seed=0):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def test_mirroring_is_exact_on_image_and_label():
    img, lab = _blocks()
    aug = Augmenter(replace(OFF, mirror_p=1.0))
    params = aug.draw(np.random.default_rng(0))
    assert params.mirror == [0, 1, 2]
    out_img, out_lab = aug(img, lab, [params], list(img.shape[2:]), _gen())
    assert torch.equal(out_img, img.flip([2, 3, 4])) and torch.equal(out_lab, lab.flip([2, 3, 4]))


def test_no_augmentation_returns_the_centre_crop_unchanged():
    img, lab = _blocks((14, 22, 22))
    aug = Augmenter(OFF)
    out_img, out_lab = aug(img, lab, [aug.draw(np.random.default_rng(0))], [12, 20, 20], _gen())
    assert torch.equal(out_img, img[..., 1:13, 1:21, 1:21]) and torch.equal(out_lab, lab[..., 1:13, 1:21, 1:21])


def test_rotation_by_90_degrees_equals_rot90_for_image_and_label():
    img, lab = _blocks((12, 20, 20))
    aug = Augmenter(OFF)
    params = SampleParams(matrix=rotation_matrix(np.array([math.pi / 2, 0, 0])))
    out_img, out_lab = aug(img, lab, [params], [12, 20, 20], _gen())
    candidates = [torch.rot90(lab, k, dims=(3, 4)) for k in (1, -1)]
    match = [torch.equal(out_lab, c) for c in candidates]
    assert any(match)
    expected_img = torch.rot90(img, 1 if match[0] else -1, dims=(3, 4))
    assert torch.allclose(out_img, expected_img, atol=1e-4)


def test_random_rotation_and_scaling_keep_image_and_label_aligned():
    img, lab = _blocks((24, 40, 40), seed=3)
    aug = Augmenter(replace(OFF, rotation_p=1.0, scale_p=1.0))
    rng = np.random.default_rng(1)
    for _ in range(5):
        params = aug.draw(rng)
        out_img, out_lab = aug(img, lab, [params], [12, 20, 20], _gen())
        inside = out_img > 0                                # linear interpolation blurs only edges
        agree = (torch.round(out_img / 10).long() == out_lab).float().mean()
        assert agree > 0.9, float(agree)
        assert set(out_lab.unique().tolist()) <= {0, 1, 2, 3}
        assert inside.any()


# nnU-Net 2.8.1's own numbers (initial patch of get_patch_size, the foreground quota per world size and
# global batch, get_bbox's box bounds, every augmentation parameter) are checked against fixtures it
# recorded: tests/test_conformance.py (components sampler and augmentation).


def test_intensity_transforms_change_the_image_but_never_the_label():
    img, lab = _blocks()
    img = img + torch.rand(img.shape, generator=_gen(1))
    cfg = replace(AugmentConfig(), rotation_p=0, scale_p=0, mirror_p=0, noise_p=1, blur_p=1, brightness_p=1,
                  contrast_p=1, lowres_p=1, gamma_inverted_p=1, gamma_p=1, blur_p_per_channel=1,
                  lowres_p_per_channel=1)
    aug = Augmenter(cfg)
    params = aug.draw(np.random.default_rng(2))
    out_img, out_lab = aug(img, lab, [params], list(img.shape[2:]), _gen())
    assert torch.equal(out_lab, lab)
    assert not torch.allclose(out_img, img)
    assert torch.isfinite(out_img).all()


def test_single_intensity_transforms_by_their_definition():
    x = torch.randn(1, 1, 16, 16, 16, generator=_gen(3)) * 2 + 1
    aug = Augmenter(OFF)
    bright = aug.intensity(x, [SampleParams(brightness=1.2)], _gen())
    assert torch.allclose(bright, x * 1.2)
    contrast = aug.intensity(x, [SampleParams(contrast=0.8)], _gen())
    assert torch.allclose(contrast.mean(), x.mean(), atol=1e-5)
    assert contrast.min() >= x.min() and contrast.max() <= x.max()
    g = gamma_keep_stats(x[0], 1.4)
    assert torch.allclose(g.mean(), x.mean(), atol=1e-4) and torch.allclose(g.std(), x.std(), atol=1e-4)
    noisy = aug.intensity(torch.zeros(1, 1, 32, 32, 32), [SampleParams(noise_std=0.3)], _gen())
    assert abs(float(noisy.std()) - 0.3) < 0.01
    blurred = gaussian_blur(x, np.array([1.0, 1.0, 1.0]))
    assert blurred.std() < 0.6 * x.std() and torch.allclose(blurred.mean(), x.mean(), atol=0.05)
    assert torch.equal(simulate_low_resolution(x, np.array([1.0, 1.0, 1.0])), x)
    low = simulate_low_resolution(x, np.array([0.5, 0.5, 0.5]))
    assert low.shape == x.shape and not torch.allclose(low, x)


def test_probabilities_match_the_nnunet_preset():
    aug = Augmenter(AugmentConfig())
    rng = np.random.default_rng(0)
    draws = [aug.draw(rng) for _ in range(4000)]
    rates = {
        "spatial": np.mean([d.matrix is not None for d in draws]),        # 1 - (1 - rotation_p)(1 - scale_p)
        "noise": np.mean([d.noise_std > 0 for d in draws]),
        "lowres": np.mean([d.lowres is not None for d in draws]),          # lowres_p x p per channel
        "gamma": np.mean([d.gamma is not None for d in draws]),
        "mirror_axis0": np.mean([0 in d.mirror for d in draws]),
    }
    n = _nnunet_defaults()                                   # rates from nnU-Net's recorded probabilities
    expected = {"spatial": 1 - (1 - n["rotation_p"]) * (1 - n["scale_p"]), "noise": n["noise_p"],
                "lowres": n["lowres_p"] * n["lowres_p_per_channel"], "gamma": n["gamma_p"],
                "mirror_axis0": n["mirror_p"]}
    for k, v in expected.items():
        assert abs(rates[k] - v) < 0.03, (k, rates[k])


def test_dummy_2d_rotates_and_scales_in_plane_only():
    cfg = build_augmenter_config("nnunet", [8, 40, 40])
    assert cfg.dummy_2d and not build_augmenter_config("nnunet", [64, 160, 160]).dummy_2d
    aug = Augmenter(replace(cfg, rotation_p=1.0, scale_p=1.0))
    rng = np.random.default_rng(0)
    for _ in range(20):
        m = aug.draw(rng).matrix
        assert np.allclose(m[0], [1, 0, 0]) and np.allclose(m[:, 0], [1, 0, 0])


def test_unknown_preset_is_named():
    with pytest.raises(KeyError, match="unknown augmentation 'fancy'"):
        build_augmenter_config("fancy", [8, 8, 8])


def _sampler(pipeline, batch, fraction, seed=0, **kw):
    splits = json.loads(pipeline["splits"].read_text())
    return PatchSampler(pipeline["preprocessed"], splits["folds"][0]["train"], [8, 16, 16], batch, fraction,
                        np.random.default_rng(seed), **kw)


def test_last_round_of_bs_times_033_samples_always_hold_foreground(pipeline):
    sampler = _sampler(pipeline, 3, 0.33)
    assert sampler.n_forced == 1
    fg = []
    for _ in range(40):
        _, lab = sampler.next_batch()
        has = (lab.flatten(1) > 0).any(1)
        assert bool(has[-1])                                # the forced sample
        fg.append(has.float().mean().item())
    assert np.mean(fg) >= 1 / 3


def test_augmented_batches_are_reproducible_from_the_seed(pipeline):
    aug = Augmenter(AugmentConfig())
    a = _sampler(pipeline, 4, 0.33, seed=9, augmenter=aug)
    b = _sampler(pipeline, 4, 0.33, seed=9, augmenter=aug)
    for _ in range(5):
        (ia, la), (ib, lb) = a.next_batch(), b.next_batch()
        assert torch.equal(ia, ib) and torch.equal(la, lb)
        assert ia.shape == (4, 1, 8, 16, 16)


def test_prefetched_batches_equal_direct_ones_and_leave_the_same_generator_state(pipeline):
    """The background thread draws exactly the batches the loop would have drawn itself, and
    stops after `count`, so the generator a checkpoint saves is the same either way."""
    aug = Augmenter(AugmentConfig())
    direct = _sampler(pipeline, 3, 0.33, seed=4, augmenter=aug)
    threaded = _sampler(pipeline, 3, 0.33, seed=4, augmenter=aug)
    batches = Prefetcher(threaded, 6)
    for _ in range(6):
        (ia, la), (ib, lb) = direct.next_batch(), batches.next_batch()
        assert torch.equal(ia, ib) and torch.equal(la, lb)
    assert direct.rng.bit_generator.state == threaded.rng.bit_generator.state
    with pytest.raises(RuntimeError, match="all 6 batches were served"):
        batches.next_batch()


def test_an_error_while_prefetching_reaches_the_training_loop(pipeline, monkeypatch):
    sampler = _sampler(pipeline, 2, 0.33)
    calls = {"n": 0}
    real = PatchSampler.draw_batch

    def failing(self):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("case file vanished")
        return real(self)

    monkeypatch.setattr(PatchSampler, "draw_batch", failing)
    batches = Prefetcher(sampler, 5)
    batches.next_batch()
    batches.next_batch()
    with pytest.raises(OSError, match="case file vanished"):
        batches.next_batch()
    assert not batches._thread.is_alive()


def test_adaptive_ratio_follows_equations_5_and_6():
    # one class: TP 1, FP 1, FN 0 -> r_FP = 2/2 = 1, r_FN = 1/2 -> r' = 0.5 -> fraction 1/3
    assert adaptive_foreground_fraction(np.array([[1.0], [1.0], [0.0]])) == pytest.approx(1 / 3)
    # misses only (FN): more positives
    assert adaptive_foreground_fraction(np.array([[1.0], [0.0], [3.0]])) == pytest.approx(0.8)
    # perfect: r_FP = r_FN = 1 -> balanced
    assert adaptive_foreground_fraction(np.array([[5.0], [0.0], [0.0]])) == pytest.approx(0.5)
    assert adaptive_foreground_fraction(np.zeros((3, 2))) == 0.5


def test_smart_cache_replaces_a_fraction_per_epoch_and_resumes_identically():
    loads = []

    def load(i):
        loads.append(i)
        return i

    cache = SmartCache(load, n_cases=10, size=4, replace_fraction=0.5, rng=np.random.default_rng(0))
    first = list(cache.members)
    cache.start_epoch()                         # nothing pending yet: starts the first prefetch
    cache.start_epoch()                         # swaps 2 cases in
    second = list(cache.members)
    assert len(second) == 4 and len(set(first) & set(second)) == 2
    assert all(cache.data[i] == i for i in second)
    state = cache.state_dict()
    twin = SmartCache(load, n_cases=10, size=4, replace_fraction=0.5, rng=np.random.default_rng(99))
    twin.load_state_dict(state)
    for _ in range(3):
        cache.start_epoch()
        twin.start_epoch()
        assert cache.members == twin.members


# ---- nnU-Net 2.8.1 fidelity: quota, placement and every augmentation parameter ----

def test_default_parameters_are_nnunet_2_8_1s():
    """Every AugmentConfig default against nnU-Net 2.8.1's own value, recorded from the transform
    objects of nnUNetTrainer.get_training_transforms (batchgeneratorsv2) in tests/fixtures/nnunet/
    augmentation/nnunet.json. dummy_2d is not a default but a property of the patch (compared with
    nnU-Net's do_dummy_2d_data_aug by tests/test_conformance.py)."""
    c, theirs = AugmentConfig(), _nnunet_defaults()
    assert set(theirs) == {f.name for f in fields(AugmentConfig)} - {"dummy_2d"}
    for name, nnunet in theirs.items():
        ours = getattr(c, name)
        if name.startswith("rotation_deg"):                  # nnU-Net holds (-rad, rad); ours degrees
            ours = [-degrees_to_radians(ours), degrees_to_radians(ours)]
        elif isinstance(ours, tuple):
            ours = list(ours)
        assert ours == nnunet, f"AugmentConfig.{name} = {getattr(c, name)}, nnU-Net 2.8.1's is {nnunet}"


def test_noise_std_is_drawn_uniformly_not_its_square_root():
    aug = Augmenter(replace(OFF, noise_p=1.0))
    stds = np.array([aug.draw(np.random.default_rng(i)).noise_std for i in range(3000)])
    assert stds.min() >= 0 and stds.max() <= 0.1
    assert abs(stds.mean() - 0.05) < 0.003            # sqrt(U(0, 0.1)) would average 0.21


def test_blur_acts_on_axis_0_also_in_dummy_2d_and_uses_nnunets_kernel():
    cfg = replace(build_augmenter_config("nnunet", [8, 40, 40]), blur_p=1.0, blur_p_per_channel=1.0)
    assert cfg.dummy_2d
    sigmas = np.array([Augmenter(cfg).draw(np.random.default_rng(i)).blur_sigma for i in range(200)])
    assert (sigmas >= 0.5).all() and (sigmas <= 1.0).all() and sigmas[:, 0].std() > 0.1
    delta = torch.zeros(1, 1, 9, 9, 9)
    delta[0, 0, 4, 4, 4] = 1
    out = gaussian_blur(delta, np.array([1.0, 0.0, 0.0]))[0, 0, :, 4, 4]
    # sigma 1: round_to_odd(6.5) = 7 taps at -3..3, normalised
    w = np.exp(-0.5 * np.arange(-3, 4) ** 2)
    assert np.allclose(out[1:8].numpy(), w / w.sum(), atol=1e-6) and float(out[0]) == 0
    edge = torch.arange(5.0).view(1, 1, 5, 1, 1)
    # reflect padding: the value beyond index 0 is index 1 (replicate would repeat index 0)
    blurred = gaussian_blur(edge, np.array([0.5, 0.0, 0.0]))[0, 0, :, 0, 0]
    k = np.exp(-0.5 * (np.arange(-1, 2) / 0.5) ** 2)
    k /= k.sum()                                         # round_to_odd(3.5) = 3 taps
    assert float(blurred[0]) == pytest.approx(k[0] * 1 + k[1] * 0 + k[2] * 1, abs=1e-6)


def test_low_resolution_downsamples_by_nearest_exact_and_upsamples_linearly():
    x = torch.arange(4.0).view(1, 1, 1, 1, 4)
    out = simulate_low_resolution(x, np.array([1.0, 1.0, 0.5]))[0, 0, 0, 0]
    # nearest-exact keeps indices 1 and 3; linear (half-pixel centres) back to 4: 1, 1.5, 2.5, 3
    assert torch.allclose(out, torch.tensor([1.0, 1.5, 2.5, 3.0]))


def test_gamma_follows_batchgenerators_formula():
    x = torch.tensor([0.0, 1.0, 2.0, 4.0])
    g = 1.5
    y = ((x - 0) / 4) ** g * 4
    expected = (y - y.mean()) * (x.std() / y.std()) + x.mean()
    assert torch.allclose(gamma_keep_stats(x, g), expected, atol=1e-6)
    flat = torch.full((5,), 3.0)                         # zero range and std: eps keeps it finite
    assert torch.equal(gamma_keep_stats(flat, 0.8), flat)


def test_rotation_matrix_is_rz_ry_rx_with_batchgenerators_signs():
    a0, a1, a2 = 0.3, -0.2, 0.5
    c, s = np.cos, np.sin
    rx = np.array([[1, 0, 0], [0, c(a0), -s(a0)], [0, s(a0), c(a0)]])
    ry = np.array([[c(a1), 0, s(a1)], [0, 1, 0], [-s(a1), 0, c(a1)]])
    rz = np.array([[c(a2), -s(a2), 0], [s(a2), c(a2), 0], [0, 0, 1]])
    assert np.allclose(rotation_matrix(np.array([a0, a1, a2])), rz @ ry @ rx)


def _grid_at(points):
    """A (1, n, 1, 1, 3) grid_sample grid for (z, y, x) points given in normalised coordinates."""
    return torch.tensor(points, dtype=torch.float32).flip(-1).view(1, len(points), 1, 1, 3)


def test_labels_are_interpolated_as_one_hot_scores_not_nearest_neighbour():
    lab = torch.full((1, 1, 2, 2, 2), 2, dtype=torch.int16)
    lab[0, 0, :, 0, 0] = 1
    # index (0, 0.4, 0.4): nearest is the label-1 voxel, but label 2 holds 0.64 of the weight
    # (align_corners=True on a size-2 axis: index i is at 2 i - 1)
    out = resample_labels(lab, _grid_at([[-1.0, -0.2, -0.2], [-1.0, -0.8, -0.8]]))
    assert out.flatten().tolist() == [2, 1]
    # a tie (0.5 / 0.5) goes to the nearest-neighbour label; past the edge is -1 ("outside")
    line = torch.tensor([1, 2], dtype=torch.int16).view(1, 1, 1, 1, 2)
    tie = resample_labels(line, _grid_at([[0.0, 0.0, 0.0], [0.0, 0.0, 3.0]]))
    nearest = torch.nn.functional.grid_sample(line.float(), _grid_at([[0.0, 0.0, 0.0]]), mode="nearest",
                                              align_corners=True)
    assert tie.flatten().tolist() == [int(nearest.item()), -1]


def test_outside_label_becomes_background_after_augmentation():
    img = torch.ones(1, 1, 6, 6, 6)
    lab = torch.full((1, 1, 6, 6, 6), 3, dtype=torch.int16)
    lab[..., 0, :, :] = -1                                # a slab outside the image
    aug = Augmenter(OFF)
    out_img, out_lab = aug([img[0]], [lab[0]], [SampleParams(matrix=np.diag([1.5, 1.0, 1.0]))], [6, 6, 6], _gen())
    assert out_lab.min() == 0 and (out_lab[0, 0, 0] == 0).all() and (out_lab[0, 0, 3] == 3).all()


@pytest.mark.parametrize("world", [1, 2, 4, 8])
@pytest.mark.parametrize("batch", [2, 4, 8, 16, 64])
def test_forced_foreground_per_global_batch_is_nnunets_whatever_the_gpu_count(world, batch):
    if batch < world:
        with pytest.raises(ValueError, match="cannot be split"):
            forced_foreground_counts(batch, world, 0.33)
        return
    counts = forced_foreground_counts(batch, world, 0.33)
    assert sum(counts) == batch - round(batch * (1 - 0.33))
    assert all(0 <= c <= local_batch(batch, r, world) for r, c in enumerate(counts))
    # the forced samples are the LAST ones of the global batch: only trailing ranks have them
    first = next((r for r, c in enumerate(counts) if c), world)
    assert all(c == local_batch(batch, r, world) for r, c in enumerate(counts) if r > first)


def test_box_bounds_pad_to_the_initial_patch_and_centre_a_case_smaller_than_the_patch():
    # the bounds themselves are nnU-Net's get_bbox's: tests/test_conformance.py (component sampler)
    initial, patch = np.array(initial_patch_size([16, 24, 24])), np.array([16, 24, 24])
    lo, hi = box_bounds(np.array([40, 60, 50]), initial, patch)
    assert (lo <= 0).all() and (hi + initial >= [40, 60, 50]).all()
    lo, hi = box_bounds(np.array([10, 60, 50]), initial, patch)      # smaller than the patch on axis 0
    assert lo[0] == hi[0]


def _one_voxel_case(tmp_path, shape, voxel):
    img = np.zeros(shape, np.float32)
    seg = np.zeros(shape, np.uint8)
    seg[tuple(voxel)] = 1
    img[tuple(voxel)] = 5.0
    np.save(tmp_path / "c_img.npy", img)
    np.save(tmp_path / "c_seg.npy", seg)
    (tmp_path / "c.json").write_text(json.dumps({"class_locations": {"1": [list(voxel)]}}))


@pytest.mark.parametrize("voxel, where", [((10, 20, 20), "centre"), ((1, 2, 2), "clamped low"),
                                          ((19, 38, 38), "past the upper edge")])
def test_forced_patch_is_centred_on_the_voxel_clamped_only_below(tmp_path, voxel, where):
    shape, patch = (20, 40, 40), [8, 16, 16]
    _one_voxel_case(tmp_path, shape, voxel)
    sampler = PatchSampler(tmp_path, ["c"], patch, 1, 1.0, np.random.default_rng(0))
    assert sampler.n_forced == 1
    initial = np.array(initial_patch_size(patch))
    raw = sampler.draw_batch()
    lab = raw.labels[0][0].numpy()
    lo, _ = box_bounds(np.array(shape), initial, np.array(patch))
    start = np.maximum(lo, np.array(voxel) - initial // 2) + initial // 2 - np.array(patch) // 2
    found = np.argwhere(lab == 1)
    assert found.tolist() == [(np.array(voxel) - start).tolist()]
    if where == "centre":
        assert found[0].tolist() == [p // 2 for p in patch]
    if where == "past the upper edge":                 # no upper clamp: the patch reaches past the image
        assert (start + np.array(patch) > np.array(shape)).all()


def test_two_groups_force_the_same_samples_per_global_batch_as_one(pipeline):
    one = _sampler(pipeline, 2, 0.33)
    halves = [_sampler(pipeline, 1, 0.33, global_batch=2, group=g, groups=2) for g in (0, 1)]
    assert one.n_forced == sum(h.n_forced for h in halves) == 1
    for _ in range(10):
        _, lab = halves[1].next_batch()
        assert bool((lab > 0).any())                    # group 1 holds the forced sample
    with pytest.raises(ValueError, match="holds 1 samples"):
        _sampler(pipeline, 2, 0.33, global_batch=2, group=0, groups=2)
