"""Recipe component "augmentation": ``seggrid.engine.augment`` vs nnU-Net 2.8.1's training transforms.

nnU-Net's side (``nnunet_augmentation.py``) uses a real nnUNetTrainer's
``configure_rotation_dummyDA_mirroring_and_inital_patch_size`` + ``get_training_transforms``
and batchgeneratorsv2 0.3's transform objects. Four checks, all on the same inputs:

1. ``parameters``: every transform of nnU-Net's pipeline in order (class, apply probability,
   parameters) for a 3D plan (64,160,160) and a dummy-2D plan (64,288,288), against what our
   ``AugmentConfig`` defaults (``build_augmenter_config``) and documented behaviour
   (``engine/augment.py``'s docstring) say; also initial patch, dummy-2D flag, mirror axes.
   Attributes that do not act in this pipeline (e.g. elastic-deformation ranges with
   ``p_elastic_deform=0``) are listed as not compared.
2. ``effects``: blur (direct and FFT convolution), brightness, contrast, low resolution (3D and
   dummy 2D), gamma with and without inversion, mirroring, the chained intensity pipeline and the
   noise std, through our ``Augmenter`` vs each transform's ``_apply_to_image``.
3. ``spatial``: affines drawn by nnU-Net's ``SpatialTransform.get_parameters`` (seeded), applied
   by its ``_apply_to_image``/``_apply_to_segmentation`` and by our ``Augmenter`` with the same
   matrix; a forced extreme (30 deg about every axis, zoom 1.4) that reaches outside the box; a
   plain crop; dummy-2D draws (Convert3DTo2D / 2D SpatialTransform / Convert2DTo3D vs our
   blockdiag(1, A2)); and ``create_affine_matrix_3d/_2d`` vs our ``rotation_matrix``.
4. ``draws``: N draws of ours (``Augmenter.draw``) and of theirs (``get_parameters``): rates,
   mean/min/max side by side, equal within 4 Monte-Carlo standard errors.

Tolerances: effects 1e-5 (image values O(1)); spatial images 1e-5 x max|source| (both sides
build the sampling grid in float32; ``float64_max_abs_diff`` shows each is that far from the
exact map), labels >= 99.9 % equal after nnU-Net's -1 -> 0. ``align_corners`` is not compared:
we use True with a grid that lands on the same source points as nnU-Net's False. Reported but
not in ``match``: the low-resolution zoom nnU-Net keeps in float32 (we keep the float64 draw),
which changes the downsampled size where n x zoom is within float32 rounding of a .5.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Any

import numpy as np

from common import (fp16_exact, load_json, load_npz, log, max_abs_diff, protocol_compare, result,
                    run_standalone, save_json, save_npz, write_nnunet_plans)

SEED = 0
N_DRAWS = 20000
FLOAT_TOL = 1e-5            # image values are O(1)
LABEL_AGREEMENT = 0.999
MC_SIGMAS = 4.0
PLANS = {"3d": [64, 160, 160], "dummy_2d": [64, 288, 288]}
EFFECT_PATCH = [16, 24, 24]
SPATIAL_PATCH = [16, 24, 24]
DUMMY_PATCH = [8, 40, 40]
#: the fixture's variant (tests/fixtures/nnunet/augmentation/): smaller boxes, the same checks
SMALL_PATCHES = {"eff_patch": [8, 12, 12], "sp_patch": [8, 12, 12], "dummy_patch": [4, 16, 16]}
SPEC: dict[str, Any] = {
    "seed": SEED, "n_draws": N_DRAWS, "plans": PLANS, "draw_seeds": {"3d": SEED + 1, "dummy_2d": SEED + 2},
    "eff_patch": EFFECT_PATCH, "sp_patch": SPATIAL_PATCH, "dummy_patch": DUMMY_PATCH, "n_spatial": 10, "n_dummy": 3,
    "noise_std": 0.07,
    "blur_sigmas": [[0.5, 0.5, 0.5], [1.0, 1.0, 1.0], [0.62, 0.91, 0.77], [5 / 6, 0.75, 7 / 12]],
    "brightness": [0.75, 0.8, 0.97, 1.0, 1.1, 1.25], "contrast": [0.75, 0.8, 0.97, 1.0, 1.1, 1.25],
    "lowres": [0.5, 0.53125, 0.6875, 0.7371, 0.85, 0.99, 1.0], "lowres_edge": 0.6875 + 1e-9,
    "gamma": [0.7, 0.85, 1.0, 1.2, 1.5],
    "chain": {"blur_sigma": [0.6, 0.8, 0.95], "brightness": 1.12, "contrast": 0.81, "lowres": 0.66,
              "gamma_inverted": 0.83, "gamma": 1.31, "mirror": [0, 2]},
}
RANGES = {"scale": (0.7, 1.4), "noise_std": (0.0, 0.1), "blur_sigma": (0.5, 1.0), "blur_sigma_axis0": (0.5, 1.0),
          "brightness": (0.75, 1.25), "contrast": (0.75, 1.25), "lowres": (0.5, 1.0),
          "gamma_inverted": (0.7, 1.5), "gamma": (0.7, 1.5)}


# --- inputs ------------------------------------------------------------------------------------------


def smooth_field(rng: np.random.Generator, shape: list[int], waves: int = 6) -> np.ndarray:
    """Sum of random plane waves on ``shape`` (float64): smooth structure with edges in every axis."""
    grids = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    out = np.zeros(shape)
    for _ in range(waves):
        k = rng.normal(size=3) * 0.35
        out += np.sin(sum(ki * g for ki, g in zip(k, grids)) + rng.uniform(0, 2 * np.pi))
    return out


def image_and_label(rng: np.random.Generator, shape: list[int], outside: bool) -> tuple[np.ndarray, np.ndarray]:
    """(1, *shape) float32 image (structure + noise) and int16 label 0..4; with ``outside``, the
    last 4 columns of the upper half of axis 1 are label -1 with image 0 (nnU-Net's padding)."""
    field = smooth_field(rng, shape)
    img = (field + 0.3 * rng.normal(size=shape)).astype(np.float32)
    lab = np.digitize(field, np.quantile(field, [0.4, 0.6, 0.75, 0.9])).astype(np.int16)
    if outside:
        lab[:, : shape[1] // 2, -4:] = -1
        img[:, : shape[1] // 2, -4:] = 0
    return img[None], lab[None]


def prepare(workdir: Path, small: bool = False) -> None:
    """Write inputs.json (the spec) and inputs.npz (images and labels) for nnU-Net's side.

    ``small``: the boxes of :data:`SMALL_PATCHES`, images rounded to float16 values."""
    from seggrid.engine.augment import initial_patch_size

    spec = dict(SPEC, **SMALL_PATCHES) if small else dict(SPEC)
    rng = np.random.default_rng(SEED)
    arrays: dict[str, np.ndarray] = {}
    arrays["eff_img"], arrays["eff_lab"] = image_and_label(rng, spec["eff_patch"], outside=False)
    arrays["sp_img"], arrays["sp_lab"] = image_and_label(rng, initial_patch_size(spec["sp_patch"]), outside=True)
    arrays["dummy_img"], arrays["dummy_lab"] = image_and_label(rng, initial_patch_size(spec["dummy_patch"]),
                                                               outside=True)
    if small:
        arrays = {k: fp16_exact(v) if k.endswith("_img") else v for k, v in arrays.items()}
    spec.update(affine_angles=rng.uniform(-np.pi, np.pi, (10, 3)).tolist(),
                affine_scales=rng.uniform(0.7, 1.4, 10).tolist())
    save_json(workdir / "inputs.json", spec)
    save_npz(workdir / "inputs.npz", **arrays)
    for tag, patch in spec["plans"].items():
        write_nnunet_plans(workdir / f"nnunet_plans_{tag}.json", patch, [2.0, 0.7, 0.7],
                           [[1, 1, 1], [1, 2, 2], [2, 2, 2]], [[1, 3, 3], [3, 3, 3], [3, 3, 3]])


def load_inputs(workdir: Path) -> dict[str, Any]:
    """inputs.npz's arrays and, under "spec", inputs.json."""
    return {**load_npz(workdir / "inputs.npz"), "spec": load_json(workdir / "inputs.json")}


# --- 1. parameters ----------------------------------------------------------------------------------


def step(cls: str, p: float | None = None, **params: Any) -> dict:
    """One pipeline entry as nnunet_augmentation.export_pipeline writes it."""
    return {"class": cls, "p": p, "params": params}


def our_pipeline(patch: list[int]) -> dict:
    """Our pipeline in nnU-Net's vocabulary: AugmentConfig values and documented behaviour."""
    from seggrid.engine.augment import build_augmenter_config, degrees_to_radians, initial_patch_size

    c = build_augmenter_config("nnunet", patch)
    rot = degrees_to_radians(c.rotation_deg_dummy_2d if c.dummy_2d else c.rotation_deg)
    dummy = [step("Convert3DTo2DTransform")] if c.dummy_2d else []
    gamma = dict(p_per_channel=1, p_retain_stats=1, gamma={"BGContrast": list(c.gamma_range)})   # _split_at_one
    steps = dummy + [step(
        "SpatialTransform", patch_size=patch[1:] if c.dummy_2d else patch, random_crop=False, p_elastic_deform=0,
        p_rotation=c.rotation_p, rotation=[-rot, rot], p_rot_per_axis=1, p_scaling=c.scale_p,
        scaling=list(c.scale_range), p_synchronize_scaling_across_axes=1, mode_image="bilinear",
        padding_mode_image="zeros", padding_value_image=0, mode_seg="bilinear", border_mode_seg="constant",
        padding_value_seg=-1, seg_tiebreak="nearest")]
    steps += [step("Convert2DTo3DTransform")] if c.dummy_2d else []
    steps += [
        step("GaussianNoiseTransform", c.noise_p, noise_variance=list(c.noise_std), p_per_channel=1),
        step("GaussianBlurTransform", c.blur_p, blur_sigma=list(c.blur_sigma), synchronize_axes=False,
             p_per_channel=c.blur_p_per_channel, truncate=c.blur_truncate),
        step("MultiplicativeBrightnessTransform", c.brightness_p,
             multiplier_range={"BGContrast": list(c.brightness_range)}, p_per_channel=1),
        step("ContrastTransform", c.contrast_p, contrast_range={"BGContrast": list(c.contrast_range)},
             preserve_range=True, p_per_channel=1),
        step("SimulateLowResolutionTransform", c.lowres_p, scale=list(c.lowres_range), synchronize_axes=True,
             ignore_axes=[0] if c.dummy_2d else None, allowed_channels=None, p_per_channel=c.lowres_p_per_channel),
        step("GammaTransform", c.gamma_inverted_p, p_invert_image=1, **gamma),
        step("GammaTransform", c.gamma_p, p_invert_image=0, **gamma),
        step("MirrorTransform", allowed_axes=[0, 1, 2], p_per_axis=c.mirror_p),
        step("RemoveLabelTransform", label_value=-1, set_to=0),     # our clamp of -1 to 0
    ]
    return {"rotation_for_DA": [-rot, rot], "do_dummy_2d_data_aug": c.dummy_2d,
            "initial_patch_size": initial_patch_size(patch), "mirror_axes": [0, 1, 2], "pipeline": steps}


def same(a: Any, b: Any) -> bool:
    """Equal values: numbers to 1e-12 (relative), lists/dicts element by element."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(float(a) - float(b)) <= 1e-12 * max(1.0, abs(float(a)))
    return a == b


def named(steps: list[dict]) -> list[str]:
    """Class names, repeated ones numbered (GammaTransform#1, GammaTransform#2)."""
    classes = [s["class"] for s in steps]
    return [c + (f"#{classes[:i + 1].count(c)}" if classes.count(c) > 1 else "") for i, c in enumerate(classes)]


def compare_parameters(mine: dict, theirs: dict) -> dict:
    """Per config: transform order, every compared parameter equal/different, what was not compared."""
    equal: list[str] = []
    different: dict[str, dict] = {}
    not_compared: dict[str, list[str]] = {}

    def check(key: str, ours: Any, nnunet: Any) -> None:
        if same(ours, nnunet):
            equal.append(key)
        else:
            different[key] = {"ours": ours, "nnunet": nnunet}

    for key in ("rotation_for_DA", "do_dummy_2d_data_aug", "initial_patch_size", "mirror_axes"):
        check(key, mine[key], theirs[key])
    ours_steps = dict(zip(named(mine["pipeline"]), mine["pipeline"]))
    their_steps = dict(zip(named(theirs["pipeline"]), theirs["pipeline"]))
    for name in sorted(set(ours_steps) | set(their_steps)):
        o, t = ours_steps.get(name), their_steps.get(name)
        if o is None or t is None:
            check(name, "present" if o else "absent", "present" if t else "absent")
            continue
        if o["p"] is not None or t["p"] is not None:       # a RandomTransform's apply probability
            check(f"{name}.p", o["p"], t["p"])
        for k, v in o["params"].items():
            check(f"{name}.{k}", v, t["params"].get(k, "<absent>"))
        if set(t["params"]) - set(o["params"]):
            not_compared[name] = sorted(set(t["params"]) - set(o["params"]))
    order_equal = named(mine["pipeline"]) == named(theirs["pipeline"])
    return {"order_equal": order_equal, "order": named(theirs["pipeline"]), "n_equal": len(equal), "equal": equal,
            "different": different, "not_compared": not_compared, "match": not different and order_equal}


# --- 2. effects --------------------------------------------------------------------------------------


def compare_effects(inputs: dict, theirs: dict) -> dict:
    import torch

    from seggrid.engine.augment import PRESETS, Augmenter, SampleParams

    spec, gen = inputs["spec"], torch.Generator().manual_seed(SEED)
    img, lab = torch.from_numpy(inputs["eff_img"]), torch.from_numpy(inputs["eff_lab"])
    full, none = Augmenter(PRESETS["nnunet"]), Augmenter(PRESETS["none"])

    def intensity(**kw: Any) -> np.ndarray:
        return full.intensity(img[None].clone(), [SampleParams(**kw)], gen)[0].numpy()

    cases = {   # name -> (our SampleParams field, their array prefix, values, value -> our field value)
        "blur": ("blur_sigma", "blur", spec["blur_sigmas"], np.array),
        "blur_fft": ("blur_sigma", "blur_fft", spec["blur_sigmas"], np.array),
        "brightness": ("brightness", "brightness", spec["brightness"], float),
        "contrast": ("contrast", "contrast", spec["contrast"], float),
        "lowres": ("lowres", "lowres", spec["lowres"], lambda s: np.full(3, s)),
        "lowres_dummy_2d": ("lowres", "lowres_dummy", spec["lowres"], lambda s: np.array([1.0, s, s])),
        "gamma": ("gamma", "gamma", spec["gamma"], float),
        "gamma_inverted": ("gamma_inverted", "gamma_inverted", spec["gamma"], float),
    }
    diffs = {name: max(max_abs_diff(intensity(**{field: make(v)}), theirs[f"{prefix}_{i}"])
                       for i, v in enumerate(values)) for name, (field, prefix, values, make) in cases.items()}
    mirror_img, mirror_lab = [], []
    for axes in itertools.chain.from_iterable(itertools.combinations(range(3), k) for k in range(4)):
        key = "".join(map(str, axes)) or "none"
        o_img, o_lab = none([img], [lab], [SampleParams(mirror=list(axes))], spec["eff_patch"], gen)
        mirror_img.append((o_img[0].numpy(), theirs[f"mirror_img_{key}"]))
        mirror_lab.append((o_lab[0].numpy(), theirs[f"mirror_lab_{key}"]))
    diffs["mirror_image"] = max(max_abs_diff(a, b) for a, b in mirror_img)
    diffs["mirror_label"] = max(max_abs_diff(a, b) for a, b in mirror_lab)
    c = spec["chain"]
    chain = SampleParams(blur_sigma=np.array(c["blur_sigma"]), brightness=c["brightness"], contrast=c["contrast"],
                         lowres=np.full(3, c["lowres"]), gamma_inverted=c["gamma_inverted"], gamma=c["gamma"],
                         mirror=list(c["mirror"]))
    o_img, o_lab = full([img], [lab], [chain], spec["eff_patch"], gen)
    diffs["chain_image"] = max_abs_diff(o_img[0].numpy(), theirs["chain_img"])
    diffs["chain_label"] = max_abs_diff(o_lab[0].numpy(), theirs["chain_lab"])
    # noise: random, so its std (and mean 0) against the requested std, within 4 standard errors
    sigma, n = spec["noise_std"], img.numel()
    ours_noise = intensity(noise_std=sigma) - inputs["eff_img"]
    noise = {side: {"std": float(np.std(x)), "mean": float(np.mean(x))}
             for side, x in (("ours", ours_noise), ("nnunet", theirs["noise_added"]))}
    noise_ok = all(abs(v["std"] - sigma) <= MC_SIGMAS * sigma / np.sqrt(2 * n) and
                   abs(v["mean"]) <= MC_SIGMAS * sigma / np.sqrt(n) for v in noise.values())
    ok = all(v <= FLOAT_TOL for v in diffs.values())
    # not in "match": nnU-Net keeps the drawn zoom in a float32 tensor, we keep the float64 draw; where
    # n * zoom lies within float32 rounding of a .5 the downsampled size differs by one voxel
    s = spec["lowres_edge"]
    edge = {"zoom_float64": s, "zoom_float32": float(np.float32(s)),
            "size_ours": [max(1, round(n * s)) for n in spec["eff_patch"]],
            "size_nnunet": [round(n * float(np.float32(s))) for n in spec["eff_patch"]],
            "max_abs_diff": max_abs_diff(intensity(lowres=np.full(3, s)), theirs["lowres_edge"])}
    return {"match": ok and noise_ok, "tolerance": FLOAT_TOL, "max_abs_diff": diffs,
            "noise": {"requested_std": sigma, **noise, "match": noise_ok},
            "known_difference_lowres_float32_zoom": edge}


# --- 3. spatial --------------------------------------------------------------------------------------


def reference_resample(img: np.ndarray, matrix: np.ndarray, patch: list[int]) -> np.ndarray:
    """(1, S...) image at source index (S - 1) / 2 + M (j - (P - 1) / 2) for every patch voxel j,
    trilinear with zeros outside, all in float64: the map nnU-Net's SpatialTransform computes
    (centred grid x affine.T, / (S / 2), align_corners=False) without its float32 rounding."""
    import torch
    import torch.nn.functional as F

    size = np.asarray(img.shape[1:], dtype=float)
    offsets = np.indices(patch).reshape(3, -1) - (np.asarray(patch)[:, None] - 1) / 2
    source = (size[:, None] - 1) / 2 + matrix @ offsets
    norm = 2 * source / np.maximum(size[:, None] - 1, 1) - 1
    grid = torch.from_numpy(norm.T.reshape(1, *patch, 3)[..., ::-1].copy())
    out = F.grid_sample(torch.from_numpy(img[None]).double(), grid, mode="bilinear", padding_mode="zeros",
                        align_corners=True)
    return out[0].numpy()


def compare_spatial(inputs: dict, theirs: dict) -> dict:
    import torch

    from seggrid.engine.augment import Augmenter, SampleParams, axis_rotation, build_augmenter_config, rotation_matrix

    spec, gen = inputs["spec"], torch.Generator().manual_seed(SEED)
    rows = []

    def one(name: str, img: np.ndarray, lab: np.ndarray, matrix: np.ndarray | None, patch: list[int]) -> None:
        aug = Augmenter(build_augmenter_config("none", patch))
        o_img, o_lab = aug([torch.from_numpy(img)], [torch.from_numpy(lab)], [SampleParams(matrix=matrix)], patch, gen)
        t_img, t_lab = theirs[f"{name}_img"], theirs[f"{name}_lab"]
        exact = None if matrix is None else reference_resample(img, matrix, patch)     # a crop is exact
        rows.append({"draw": name, "image_max_abs_diff": max_abs_diff(o_img[0].numpy(), t_img),
                     "image_tolerance": FLOAT_TOL * max(1.0, float(np.abs(img).max())),
                     "float64_max_abs_diff": None if exact is None else
                     [max_abs_diff(o_img[0].numpy(), exact), max_abs_diff(t_img, exact)],
                     "label_agreement": float(np.mean(o_lab[0].numpy() == np.maximum(t_lab, 0))),
                     "nnunet_outside_fraction": float(np.mean(t_lab == -1))})

    for i in [*range(spec["n_spatial"]), "extreme", "crop"]:
        a = theirs[f"sp_{i}_affine"]
        one(f"sp_{i}", inputs["sp_img"], inputs["sp_lab"], None if np.isnan(a).any() else a, spec["sp_patch"])
    for i in range(spec["n_dummy"]):
        m = np.eye(3)
        m[1:, 1:] = theirs[f"dummy_{i}_affine"]
        one(f"dummy_{i}", inputs["dummy_img"], inputs["dummy_lab"], m, spec["dummy_patch"])
    angles, scales = np.asarray(spec["affine_angles"]), np.asarray(spec["affine_scales"])
    ours_3d = np.stack([rotation_matrix(a) @ np.diag([s] * 3) for a, s in zip(angles, scales)])
    ours_2d = np.stack([(axis_rotation(0, a[0]) @ np.diag([1.0, s, s]))[1:, 1:] for a, s in zip(angles, scales)])
    affine_diff = {"3d": max_abs_diff(ours_3d, theirs["affine_3d"]), "2d": max_abs_diff(ours_2d, theirs["affine_2d"])}
    ok = (all(r["image_max_abs_diff"] <= r["image_tolerance"] and r["label_agreement"] >= LABEL_AGREEMENT
              for r in rows) and max(affine_diff.values()) <= 1e-12)
    return {"match": ok, "image_tolerance": f"{FLOAT_TOL} x max(1, max|source image|)",
            "float64_max_abs_diff": "[ours, nnunet] vs the exact map in float64 (reference_resample)",
            "label_agreement_min": LABEL_AGREEMENT,
            "affine_construction_max_abs_diff": affine_diff,
            "worst_image_max_abs_diff": max(r["image_max_abs_diff"] for r in rows),
            "worst_label_agreement": min(r["label_agreement"] for r in rows), "draws": rows}


# --- 4. draws ----------------------------------------------------------------------------------------


def our_draws(patch: list[int], n: int, seed: int) -> dict[str, np.ndarray]:
    """``n`` draws of our Augmenter for ``patch``, as nnunet_augmentation.draws records theirs."""
    from seggrid.engine.augment import Augmenter, SampleParams, build_augmenter_config

    aug, rng = Augmenter(build_augmenter_config("nnunet", patch)), np.random.default_rng(seed)
    rec = {k: np.full((n,) + shape, np.nan) for k, shape in (
        ("affine", (3, 3)), ("noise_std", ()), ("blur_sigma", (3,)), ("brightness", ()), ("contrast", ()),
        ("lowres", (3,)), ("gamma_inverted", ()), ("gamma", ()), ("mirror", (3,)))}
    idle = SampleParams()                                       # a field differing from it was applied
    for i in range(n):
        p = aug.draw(rng)
        rec["affine"][i] = np.nan if p.matrix is None else p.matrix
        for key in ("noise_std", "blur_sigma", "brightness", "contrast", "lowres", "gamma_inverted", "gamma"):
            value, default = getattr(p, key), getattr(idle, key)
            if value is not None and (default is None or value != default):
                rec[key][i] = value
        rec["mirror"][i] = [float(ax in p.mirror) for ax in range(3)]
    return rec


def quantities(rec: dict[str, np.ndarray], dummy: bool) -> dict[str, tuple[np.ndarray, int]]:
    """quantity -> (values where applied, number of draws): the rate is len(values) / n."""
    n = len(rec["mirror"])
    out: dict[str, tuple[np.ndarray, int]] = {}
    m = rec["affine"][~np.isnan(rec["affine"][:, 0, 0])]
    dims = [1, 2] if dummy else [0, 1, 2]
    s = np.abs(np.linalg.det(m[:, dims][:, :, dims])) ** (1 / len(dims))
    scale_vec = np.ones((len(m), 3))
    scale_vec[:, dims] = s[:, None]
    r = m / scale_vec[:, None, :]
    rotated = np.abs(m * (1 - np.eye(3))).max(axis=(1, 2), initial=0.0) > 1e-9    # off-diagonal entries
    angle = np.arccos(np.clip((np.trace(r, axis1=1, axis2=2) - 1) / 2, -1, 1))
    out["rotation_angle"] = (angle[rotated], n)
    out["scale"] = (s[np.abs(s - 1) > 1e-9], n)
    for key in ("noise_std", "brightness", "contrast", "gamma_inverted", "gamma"):
        v = rec[key]
        out[key] = (v[~np.isnan(v)], n)
    blur = rec["blur_sigma"][~np.isnan(rec["blur_sigma"][:, 0])]
    out["blur_sigma"] = (blur.ravel(), 3 * n)
    out["blur_sigma_axis0"] = (blur[:, 0], n)
    low = rec["lowres"][~np.isnan(rec["lowres"][:, 0])]
    out["lowres"] = (low[:, 1], n)
    out["lowres_axis0_is_1" if dummy else "lowres_axes_equal"] = (
        (low[:, 0] == 1.0).astype(float) if dummy else np.all(low == low[:, :1], axis=1).astype(float), n)
    for ax in range(3):
        out[f"mirror_axis{ax}"] = (rec["mirror"][:, ax], n)
    return out


BELOW_1_KEYS = ("brightness", "contrast", "gamma_inverted", "gamma")


def draw_summary(rec: dict[str, np.ndarray], dummy: bool) -> dict[str, dict]:
    """quantity -> {"n": draws, "count": values (where applied), mean, var, min, max, below_1}:
    all :func:`compare_draws` needs (a fixture stores this instead of the draws)."""
    out = {}
    for key, (v, n) in quantities(rec, dummy).items():
        row: dict[str, Any] = {"n": int(n), "count": int(len(v))}
        if len(v):
            row.update(mean=float(np.mean(v)), var=float(np.var(v)), min=float(v.min()), max=float(v.max()))
            if key in BELOW_1_KEYS:
                row["below_1"] = float(np.mean(v < 1))
        out[key] = row
    return out


def compare_draws(mine: dict[str, dict], theirs: dict[str, dict]) -> dict:
    """Side by side (two :func:`draw_summary`): rate, mean, min, max (and share below 1 for
    BGContrast draws); equal within MC_SIGMAS standard errors, values inside the nominal range."""
    table, ok_all = {}, True
    for key in mine:
        o, t = mine[key], theirs.get(key, {"n": 1, "count": -1})
        row: dict[str, Any] = {}
        checks = []
        # blur_sigma holds 3 values per applied draw (n = 3 x draws): its rate is blur_sigma_axis0's,
        # whose standard error counts draws, not values (with 3 x draws it was sqrt(3) too small)
        if not key.startswith(("mirror", "lowres_ax")) and key != "blur_sigma":
            po, pt = o["count"] / o["n"], t["count"] / t["n"]
            row["rate"] = [po, pt]
            checks.append(abs(po - pt) <= MC_SIGMAS * np.sqrt(po * (1 - po) / o["n"] + pt * (1 - pt) / t["n"]))
        if o["count"] > 0 and t["count"] > 0:
            mo, mt = o["mean"], t["mean"]
            row.update(mean=[mo, mt], min=[o["min"], t["min"]], max=[o["max"], t["max"]])
            se = np.sqrt(o["var"] / o["count"] + t["var"] / t["count"])
            checks.append(abs(mo - mt) <= MC_SIGMAS * se if se > 0 else mo == mt)
            if key in RANGES:
                lo, hi = RANGES[key]
                checks.append(min(o["min"], t["min"]) >= lo and max(o["max"], t["max"]) <= hi)
            if key in BELOW_1_KEYS:
                bo, bt = o["below_1"], t["below_1"]
                row["below_1"] = [bo, bt]
                checks.append(abs(bo - bt) <= MC_SIGMAS * np.sqrt(bo * (1 - bo) / o["count"]
                                                                  + bt * (1 - bt) / t["count"]))
        else:
            checks.append(o["count"] == t["count"])
        row["ok"] = bool(all(checks))
        ok_all &= row["ok"]
        table[key] = row
    return {"match": ok_all, "columns": "[ours, nnunet]", **table}


# --- driver ------------------------------------------------------------------------------------------


FIXTURE_FILES = ["inputs.json", "inputs.npz", "nnunet.json", "nnunet.npz", "nnunet_draws.json"]


def their_draw_summaries(workdir: Path, theirs: dict[str, np.ndarray]) -> dict[str, dict]:
    """nnU-Net's draws per plan as :func:`draw_summary`: from nnunet_draws.json (a fixture) or
    from the raw draws in nnunet.npz."""
    path = Path(workdir) / "nnunet_draws.json"
    if path.is_file():
        return load_json(path)
    out = {}
    for tag in PLANS:
        prefix = f"draw_{tag}_"
        out[tag] = draw_summary({k[len(prefix):]: v for k, v in theirs.items() if k.startswith(prefix)},
                                tag == "dummy_2d")
    return out


def slim(workdir: Path) -> None:
    """For a fixture: nnU-Net's draws summarised into nnunet_draws.json and dropped from nnunet.npz."""
    theirs = load_npz(workdir / "nnunet.npz")
    save_json(workdir / "nnunet_draws.json", their_draw_summaries(workdir, theirs))
    save_npz(workdir / "nnunet.npz", **{k: v for k, v in theirs.items() if not k.startswith("draw_")})


def check(workdir: Path) -> dict:
    """Ours on the inputs of ``workdir`` against nnU-Net's results recorded there."""
    from seggrid.engine.augment import initial_patch_size

    inputs = load_inputs(workdir)
    spec = inputs["spec"]
    report, theirs = load_json(workdir / "nnunet.json"), load_npz(workdir / "nnunet.npz")
    plans = spec["plans"]
    parameters = {tag: compare_parameters(our_pipeline(patch), report["configs"][tag]) for tag, patch in plans.items()}
    parameters["initial_patch_small"] = {k: {"ours": initial_patch_size(spec[k]), "nnunet": v}
                                         for k, v in report["initial_patch"].items()}
    small_ok = all(same(v["ours"], v["nnunet"]) for v in parameters["initial_patch_small"].values())
    log("[augmentation] effects and spatial")
    effects = compare_effects(inputs, theirs)
    spatial = compare_spatial(inputs, theirs)
    log(f"[augmentation] {spec['n_draws']} draws of ours per config")
    their_summaries = their_draw_summaries(workdir, theirs)
    draws: dict[str, Any] = {}
    for tag, patch in plans.items():
        mine = draw_summary(our_draws(patch, spec["n_draws"], spec["draw_seeds"][tag]), tag == "dummy_2d")
        draws[tag] = compare_draws(mine, their_summaries[tag])
    flags = report["gamma_flags"]
    draws["nnunet_gamma_flags"] = {"[applied, inverted, stats retained]": flags}
    flags_ok = all(f["gamma_inverted"][0] == f["gamma_inverted"][1] == f["gamma_inverted"][2]
                   and f["gamma"][1] == 0 and f["gamma"][0] == f["gamma"][2] for f in flags.values())
    match = (all(parameters[t]["match"] for t in plans) and small_ok and effects["match"] and spatial["match"]
             and all(draws[t]["match"] for t in plans) and flags_ok)
    return result("augmentation", match, parameters=parameters, effects=effects, spatial=spatial, draws=draws)


compare = protocol_compare(prepare, check, __file__, "[augmentation] running nnU-Net's get_training_transforms, transforms and draws")


if __name__ == "__main__":
    run_standalone(compare, "augmentation", sys.argv[1:])
