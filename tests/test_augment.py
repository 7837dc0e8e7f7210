"""Augmentation (augment.py) and patch sampling (sampling.py): each transform's effect."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from seggrid.engine.augment import (PRESETS, AugmentConfig, Augmenter, SampleParams, build_augmenter_config,
                             gamma_keep_stats, gaussian_blur, rotation_matrix, simulate_low_resolution)
from seggrid.engine.sampling import PatchSampler, Prefetcher, SmartCache, adaptive_foreground_fraction

OFF = PRESETS["none"]


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
        src = Augmenter.source_size(params, [12, 20, 20])
        assert all(s >= p and (s - p) % 2 == 0 for s, p in zip(src, [12, 20, 20]))
        out_img, out_lab = aug(img, lab, [params], [12, 20, 20], _gen())
        inside = out_img > 0                                # linear interpolation blurs only edges
        agree = (torch.round(out_img / 10).long() == out_lab).float().mean()
        assert agree > 0.9, float(agree)
        assert set(out_lab.unique().tolist()) <= {0, 1, 2, 3}
        assert inside.any()


def test_source_crop_holds_every_transformed_patch_corner():
    aug = Augmenter(replace(OFF, rotation_p=1.0, scale_p=1.0))
    rng = np.random.default_rng(5)
    patch = np.array([16, 40, 40])
    for _ in range(50):
        p = aug.draw(rng)
        src = np.array(Augmenter.source_size(p, patch.tolist()))
        corners = np.array(np.meshgrid(*[[-(n - 1) / 2, (n - 1) / 2] for n in patch], indexing="ij")).reshape(3, -1)
        mapped = p.matrix @ corners
        assert np.all(np.abs(mapped) <= (src[:, None] - 1) / 2 + 1e-6)


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
        "spatial": np.mean([d.matrix is not None for d in draws]),        # 1 - 0.8 * 0.8 = 0.36
        "noise": np.mean([d.noise_std > 0 for d in draws]),
        "lowres": np.mean([d.lowres is not None for d in draws]),          # 0.25 x 0.5 per channel
        "gamma": np.mean([d.gamma is not None for d in draws]),
        "mirror_axis0": np.mean([0 in d.mirror for d in draws]),
    }
    expected = {"spatial": 0.36, "noise": 0.1, "lowres": 0.125, "gamma": 0.3, "mirror_axis0": 0.5}
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
