"""nnU-Net 2.8.1 side of the "augmentation" component (run by augmentation.py).

    nnunet_python benchmarks/conformance/recipe/nnunet_augmentation.py WORKDIR

Reads WORKDIR/inputs.json + inputs.npz (written by augmentation.py) and, with nnU-Net's and
batchgeneratorsv2 0.3's OWN objects, writes WORKDIR/nnunet.json (parameters) and
WORKDIR/nnunet.npz (effects, spatial outputs, draws):

1. parameters: for each plan patch in ``inputs.json["plans"]`` a real nnUNetTrainer's
   ``configure_rotation_dummyDA_mirroring_and_inital_patch_size()`` feeds its static
   ``get_training_transforms`` (no deep-supervision scales: that label downsampling belongs to
   the loss); every transform of the ComposeTransforms is exported in order (class, the
   RandomTransform's apply probability, its attributes), plus two facts that are not
   attributes: the mirror's per-axis probability (read from ``MirrorTransform.get_parameters``'
   source) and ``blur_dimension``'s default ``truncate``.
2. effects: each intensity transform's ``_apply_to_image`` with given parameters on one image.
3. spatial: ``SpatialTransform(...).get_parameters`` after ``np.random.seed`` gives the affine,
   ``_apply_to_image`` / ``_apply_to_segmentation`` resample a source box; dummy 2D runs
   Convert3DTo2D -> 2D SpatialTransform -> Convert2DTo3D.
4. draws: N draws of every transform's ``get_parameters`` (and RandomTransform's probability)
   of the trainer's pipelines, the SpatialTransform copied with a tiny patch (its draws do not
   depend on the patch) so that building its grid costs nothing.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import io
import itertools
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (load_json, load_npz, log, nnunet_dataset_json, nnunet_import_setup,  # noqa: E402
                    nnunet_trainer, save_json, save_npz)

SKIP_ATTRS = {"_grid_cache", "benchmark_use_fft", "benchmark_num_runs", "upmodes"}


def exportable(value: Any) -> Any:
    """Attribute value -> JSON-able (BGContrast -> {"BGContrast": range}, arrays -> lists)."""
    if type(value).__name__ == "BGContrast":
        return {"BGContrast": exportable(value.contrast_range)}
    if isinstance(value, (tuple, list)):
        return [exportable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return repr(value)


def export_pipeline(compose: Any) -> list[dict]:
    """Every transform of the trainer's ComposeTransforms: class, apply probability, attributes."""
    from batchgeneratorsv2.transforms.noise.gaussian_blur import blur_dimension
    from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform

    mirror_p = re.findall(r"torch\.rand\(1\)\s*<\s*([0-9.]+)", inspect.getsource(MirrorTransform.get_parameters))
    out = []
    for t in compose.transforms:
        p = getattr(t, "apply_probability", None)
        inner = t.transform if p is not None else t
        params = {k: exportable(v) for k, v in vars(inner).items() if k not in SKIP_ATTRS}
        name = type(inner).__name__
        if name == "GaussianBlurTransform":
            params["truncate"] = inspect.signature(blur_dimension).parameters["truncate"].default
        if name == "MirrorTransform":
            params["p_per_axis"] = float(mirror_p[0]) if mirror_p else None
        out.append({"class": name, "p": p, "params": params})
    return out


def pipeline_for(plans_file: Path, workdir: Path) -> tuple[dict, Any]:
    """A real trainer for the plans augmentation.prepare wrote (our side) for one patch: its
    configure_... outputs and its pipeline."""
    trainer = nnunet_trainer(load_json(plans_file), nnunet_dataset_json(4), workdir)
    with contextlib.redirect_stdout(io.StringIO()):
        rotation, dummy, initial, mirror_axes = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    cm, lm = trainer.configuration_manager, trainer.label_manager
    compose = trainer.get_training_transforms(
        cm.patch_size, rotation, None, mirror_axes, dummy, use_mask_for_norm=cm.use_mask_for_norm,
        is_cascaded=trainer.is_cascaded, foreground_labels=lm.foreground_labels,
        regions=lm.foreground_regions if lm.has_regions else None, ignore_label=lm.ignore_label)
    config = {"rotation_for_DA": exportable(rotation), "do_dummy_2d_data_aug": bool(dummy),
              "initial_patch_size": exportable(initial), "mirror_axes": exportable(mirror_axes)}
    return config, compose


def effects(spec: dict, arrays: dict) -> dict[str, np.ndarray]:
    """Each intensity/mirror transform's ``_apply_to_image`` with the given parameters."""
    import torch
    from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
    from batchgeneratorsv2.transforms.intensity.contrast import BGContrast, ContrastTransform
    from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
    from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
    from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform, blur_dimension
    from batchgeneratorsv2.transforms.spatial.low_resolution import SimulateLowResolutionTransform
    from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform

    torch.manual_seed(spec["seed"])                      # the noise sample
    img = torch.from_numpy(arrays["eff_img"])
    lab = torch.from_numpy(arrays["eff_lab"])
    one = torch.tensor([0])
    blur = GaussianBlurTransform(blur_sigma=(0.5, 1.0), synchronize_channels=False, synchronize_axes=False,
                                 p_per_channel=1, benchmark=False)
    bright = MultiplicativeBrightnessTransform(BGContrast((0.75, 1.25)), synchronize_channels=False, p_per_channel=1)
    contrast = ContrastTransform(BGContrast((0.75, 1.25)), preserve_range=True, synchronize_channels=False,
                                 p_per_channel=1)
    lowres = SimulateLowResolutionTransform((0.5, 1), synchronize_channels=False, synchronize_axes=True,
                                            ignore_axes=None, allowed_channels=None, p_per_channel=1)
    mirror = MirrorTransform((0, 1, 2))

    def gamma(x: torch.Tensor, g: float, invert: bool) -> torch.Tensor:
        t = GammaTransform(BGContrast((0.7, 1.5)), p_invert_image=float(invert), synchronize_channels=False,
                           p_per_channel=1, p_retain_stats=1)
        return t._apply_to_image(x, apply_to_channel=one, retain_stats=torch.tensor([True]),
                                 invert_image=torch.tensor([invert]), gamma=torch.tensor([g], dtype=x.dtype))

    out: dict[str, np.ndarray] = {}
    for i, sig in enumerate(spec["blur_sigmas"]):
        out[f"blur_{i}"] = blur._apply_to_image(img.clone(), apply_to_channel=torch.tensor([True]),
                                                sigmas=[list(sig)]).numpy()
        x = img.clone()
        for d, s in enumerate(sig):          # benchmark=True (the trainer's) may pick the FFT convolution
            x = blur_dimension(x, s, d, force_use_fft=True)
        out[f"blur_fft_{i}"] = x.numpy()
    for i, m in enumerate(spec["brightness"]):
        out[f"brightness_{i}"] = bright._apply_to_image(img.clone(), apply_to_channel=one,
                                                        multipliers=torch.Tensor([m])).numpy()
    for i, m in enumerate(spec["contrast"]):
        out[f"contrast_{i}"] = contrast._apply_to_image(img.clone(), apply_to_channel=one,
                                                        multipliers=torch.tensor([m], dtype=img.dtype)).numpy()
    for i, s in enumerate(spec["lowres"]):
        for tag, scales in (("", [s, s, s]), ("dummy_", [1.0, s, s])):
            out[f"lowres_{tag}{i}"] = lowres._apply_to_image(img.clone(), apply_to_channel=one,
                                                             scales=torch.Tensor([scales])).numpy()
    # a float64 scale just above a half-voxel tie: get_parameters stores scales in a float32 tensor
    out["lowres_edge"] = lowres._apply_to_image(img.clone(), apply_to_channel=one,
                                                scales=torch.Tensor([[spec["lowres_edge"]] * 3])).numpy()
    for i, g in enumerate(spec["gamma"]):
        out[f"gamma_{i}"] = gamma(img.clone(), g, False).numpy()
        out[f"gamma_inverted_{i}"] = gamma(img.clone(), g, True).numpy()
    for axes in itertools.chain.from_iterable(itertools.combinations(range(3), k) for k in range(4)):
        key = "".join(map(str, axes)) or "none"
        out[f"mirror_img_{key}"] = mirror._apply_to_image(img.clone(), axes=list(axes)).numpy()
        out[f"mirror_lab_{key}"] = mirror._apply_to_segmentation(lab.clone(), axes=list(axes)).numpy()
    sigma = spec["noise_std"]
    noise = GaussianNoiseTransform(noise_variance=(0, 0.1), p_per_channel=1, synchronize_channels=True)
    out["noise_added"] = (noise._apply_to_image(img.clone(), num_apply=1, apply_idx=one, sigmas=sigma) - img).numpy()
    # the whole intensity chain on one sample, in the pipeline's order (noise left out: it is random)
    c = spec["chain"]
    x = blur._apply_to_image(img.clone(), apply_to_channel=torch.tensor([True]), sigmas=[list(c["blur_sigma"])])
    x = bright._apply_to_image(x, apply_to_channel=one, multipliers=torch.Tensor([c["brightness"]]))
    x = contrast._apply_to_image(x, apply_to_channel=one, multipliers=torch.tensor([c["contrast"]], dtype=x.dtype))
    x = lowres._apply_to_image(x, apply_to_channel=one, scales=torch.Tensor([[c["lowres"]] * 3]))
    x = gamma(gamma(x, c["gamma_inverted"], True), c["gamma"], False)
    out["chain_img"] = mirror._apply_to_image(x, axes=c["mirror"]).numpy()
    out["chain_lab"] = mirror._apply_to_segmentation(lab.clone(), axes=c["mirror"]).numpy()
    return out


def spatial(spec: dict, arrays: dict) -> dict[str, np.ndarray]:
    """SpatialTransform draws (seeded np.random) on the 3D source box, a forced extreme, a plain
    crop, and dummy-2D draws through Convert3DTo2D / 2D SpatialTransform / Convert2DTo3D."""
    import torch
    from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
    from batchgeneratorsv2.transforms.utils.pseudo2d import Convert2DTo3DTransform, Convert3DTo2DTransform

    rad30, rad180 = 30. / 360 * 2. * np.pi, 180. / 360 * 2. * np.pi
    img, lab = torch.from_numpy(arrays["sp_img"]), torch.from_numpy(arrays["sp_lab"])
    common = dict(p_synchronize_scaling_across_axes=1, border_mode_seg="constant", padding_value_seg=-1)
    out: dict[str, np.ndarray] = {}

    def run(name: str, st: Any) -> None:
        params = st.get_parameters(image=img)
        out[f"{name}_img"] = st._apply_to_image(img.clone(), **params).numpy()
        out[f"{name}_lab"] = st._apply_to_segmentation(lab.clone(), **params).numpy()
        out[f"{name}_affine"] = params["affine"] if params["affine"] is not None else np.full((3, 3), np.nan)

    patch = spec["sp_patch"]
    np.random.seed(spec["seed"])
    torch.manual_seed(spec["seed"])
    st = SpatialTransform(patch, 0, False, p_rotation=1, rotation=(-rad30, rad30), p_scaling=1, scaling=(0.7, 1.4),
                          **common)
    for i in range(spec["n_spatial"]):
        run(f"sp_{i}", st)
    run("sp_extreme", SpatialTransform(patch, 0, False, p_rotation=1, rotation=rad30, p_scaling=1, scaling=1.4,
                                       **common))
    run("sp_crop", SpatialTransform(patch, 0, False, p_rotation=0, p_scaling=0, **common))

    to2d, to3d = Convert3DTo2DTransform(), Convert2DTo3DTransform()
    dpatch = spec["dummy_patch"]
    st2 = SpatialTransform(dpatch[1:], 0, False, p_rotation=1, rotation=(-rad180, rad180), p_scaling=1,
                           scaling=(0.7, 1.4), **common)
    for i in range(spec["n_dummy"]):
        d = to2d(image=torch.from_numpy(arrays["dummy_img"]), segmentation=torch.from_numpy(arrays["dummy_lab"]))
        params = st2.get_parameters(**d)
        d = to3d(**st2.apply(d, **params))
        out[f"dummy_{i}_img"], out[f"dummy_{i}_lab"] = d["image"].numpy(), d["segmentation"].numpy()
        out[f"dummy_{i}_affine"] = params["affine"]
    return out


def affines(spec: dict) -> dict[str, np.ndarray]:
    """batchgeneratorsv2's create_affine_matrix_3d / _2d for given angles and scales."""
    from batchgeneratorsv2.transforms.spatial.spatial import create_affine_matrix_2d, create_affine_matrix_3d

    angles, scales = np.asarray(spec["affine_angles"]), np.asarray(spec["affine_scales"])
    return {"affine_3d": np.stack([create_affine_matrix_3d(a, [s] * 3) for a, s in zip(angles, scales)]),
            "affine_2d": np.stack([create_affine_matrix_2d(a[0], [s] * 2) for a, s in zip(angles, scales)])}


def draws(compose: Any, n: int, seed: int, tag: str) -> tuple[dict[str, np.ndarray], dict]:
    """``n`` parameter draws of the pipeline's transforms; NaN where a transform was not applied."""
    import torch

    np.random.seed(seed)
    torch.manual_seed(seed)
    dummy = any(type(t).__name__ == "Convert3DTo2DTransform" for t in compose.transforms)
    img3, img2 = torch.zeros((1, 4, 4, 4)), torch.zeros((1, 4, 4))
    rec = {k: np.full((n,) + shape, np.nan) for k, shape in (
        ("affine", (3, 3)), ("noise_std", ()), ("blur_sigma", (3,)), ("brightness", ()), ("contrast", ()),
        ("lowres", (3,)), ("gamma_inverted", ()), ("gamma", ()), ("mirror", (3,)))}
    flags = {"gamma_inverted": [0, 0, 0], "gamma": [0, 0, 0]}      # [applied, inverted, stats retained]
    steps = []
    for t in compose.transforms:
        name = type(getattr(t, "transform", t)).__name__
        if name == "SpatialTransform":
            t = copy.copy(t)
            t.patch_size, t._grid_cache = [2] * (2 if dummy else 3), {}
        steps.append((name, t))
    for i in range(n):
        for name, t in steps:
            if name == "SpatialTransform":
                a = t.get_parameters(image=img2 if dummy else img3)["affine"]
                if a is not None:
                    rec["affine"][i] = np.eye(3)
                    rec["affine"][i][3 - a.shape[0]:, 3 - a.shape[0]:] = a
                continue
            if name == "MirrorTransform":
                axes = t.get_parameters(image=img3)["axes"]
                rec["mirror"][i] = [float(ax in axes) for ax in range(3)]
                continue
            if not hasattr(t, "apply_probability"):
                continue
            applied = t.get_parameters(image=img3)["apply_transform"]
            key = name
            if name == "GammaTransform":
                key = "gamma_inverted" if t.transform.p_invert_image > 0 else "gamma"
            if not applied:
                continue
            p = t.transform.get_parameters(image=img3)
            if name == "GaussianNoiseTransform" and p["num_apply"] > 0:
                rec["noise_std"][i] = float(p["sigmas"])
            elif name == "GaussianBlurTransform" and bool(p["apply_to_channel"][0]):
                rec["blur_sigma"][i] = p["sigmas"][0]
            elif name == "MultiplicativeBrightnessTransform" and len(p["apply_to_channel"]):
                rec["brightness"][i] = float(p["multipliers"][0])
            elif name == "ContrastTransform" and p["apply_to_channel"].numel():
                rec["contrast"][i] = float(p["multipliers"][0])
            elif name == "SimulateLowResolutionTransform" and len(p["apply_to_channel"]):
                rec["lowres"][i] = p["scales"][0].numpy()
            elif key in flags and p["apply_to_channel"].numel():
                rec[key][i] = float(p["gamma"][0])
                f = flags[key]
                f[0], f[1], f[2] = f[0] + 1, f[1] + int(p["invert_image"][0]), f[2] + int(p["retain_stats"][0])
    log(f"[nnunet_augmentation] {n} draws of the {tag} pipeline")
    return {f"draw_{tag}_{k}": v for k, v in rec.items()}, flags


def main(workdir: Path) -> None:
    nnunet_import_setup(workdir)
    import torch

    torch.set_num_threads(2)
    spec = load_json(workdir / "inputs.json")
    arrays = load_npz(workdir / "inputs.npz")
    report: dict[str, Any] = {"configs": {}, "gamma_flags": {}}
    out: dict[str, np.ndarray] = {}
    for tag, patch in spec["plans"].items():
        config, compose = pipeline_for(workdir / f"nnunet_plans_{tag}.json", workdir / f"trainer_{tag}")
        report["configs"][tag] = {**config, "pipeline": export_pipeline(compose)}
        rec, flags = draws(compose, spec["n_draws"], spec["draw_seeds"][tag], tag)
        out.update(rec)
        report["gamma_flags"][tag] = flags
    from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size

    rad = {False: 30. / 360 * 2. * np.pi, True: 180. / 360 * 2. * np.pi}
    report["initial_patch"] = {}
    for key, dummy in (("sp_patch", False), ("dummy_patch", True)):
        size = get_patch_size(spec[key], (-rad[dummy], rad[dummy]), (-rad[dummy], rad[dummy]),
                              (-rad[dummy], rad[dummy]), (0.85, 1.25))
        if dummy:
            size[0] = spec[key][0]
        report["initial_patch"][key] = exportable(size)
    out.update(effects(spec, arrays))
    out.update(spatial(spec, arrays))
    out.update(affines(spec))
    save_json(workdir / "nnunet.json", report)
    save_npz(workdir / "nnunet.npz", **out)
    log(f"[nnunet_augmentation] wrote {len(out)} arrays")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
