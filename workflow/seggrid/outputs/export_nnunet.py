"""``seggrid export-nnunet``: our trained folds as an nnU-Net 2.8.1 model folder.

Output (what ``nnUNetPredictor.initialize_from_trained_model_folder`` reads; facts from
nnU-Net's source, our own code)::

    <out>/plans.json                       one configuration, "3d_fullres"
    <out>/dataset.json                     labels (name -> id), channel name, file ending
    <out>/fold_<k>/checkpoint_final.pth    one per given model.pt

The plans carry our preprocessing, so nnU-Net preprocesses a raw image as ``seggrid
preprocess`` did: image reader ``NibabelIOWithReorient`` (RAS, then (z, y, x): our internal
order, ``data/geometry.py``), ``transpose_forward`` = the coarsest-axis-first order, the target
spacing in that order, the case's normalisation scheme (``CTNormalization`` with the
fingerprint's foreground statistics, or ``ZScoreNormalization`` with the non-zero-mask rule
that preprocessing applied), nnU-Net's default resampling functions (ours reproduce them),
the effective patch, batch, batch Dice and the network (``PlainConvUNet`` with our stages,
features, kernels and strides). The checkpoint holds what the predictor reads:
``network_weights``, ``trainer_name`` (``nnUNetTrainer``), ``init_args["configuration"]`` and
``inference_allowed_mirroring_axes`` (0, 1, 2: all 8 mirrorings, as nnUNetTrainer for 3D);
no optimizer state (continuing the training in nnU-Net is not supported).

Parameter names. ``PlainConvUNet.state_dict()`` names every conv twice (``convs.j.conv`` and
``convs.j.all_modules.0``, the same module; norms: ``norm`` and ``all_modules.1``) and the
whole encoder twice more (``decoder.encoder.*``, the decoder keeps a reference to it); its
``load_state_dict`` is strict, so every alias is written, each pointing at the same tensor.
Ours -> nnU-Net: ``encoder.i.j.0`` -> ``encoder.stages.i.0.convs.j.conv``; ``encoder.i.j.1``
-> ``...norm``; ``decoder.d.upsample`` -> ``decoder.transpconvs.d``; ``decoder.d.blocks.j``
-> ``decoder.stages.d.convs.j`` (both decoders count from the deepest stage; both concatenate
the upsampled map before the skip); ``heads.l`` (l = 0 full resolution) ->
``decoder.seg_layers.(n_stages - 2 - l)``.

Segmentation heads we do not have. nnU-Net builds a 1x1x1 head on every decoder stage; ours
builds only those the loss weights (the lowest one has deep-supervision weight 0 in nnU-Net,
and with ``top3_721`` or no deep supervision more are absent). At inference nnU-Net builds
the network with ``deep_supervision=False`` and runs only the full-resolution head, so those
heads never touch a prediction; they are written as nnU-Net would have initialised them
(He-normal, negative slope 1e-2, zero bias), from a generator seeded with the training
seed, so an export is reproducible and a fine-tuning in nnU-Net starts them as its own.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from seggrid.config import complete_plan
from seggrid.engine.network import MODEL_FORMAT, PlainUNet
from seggrid.errors import SeggridError
from seggrid.io import atomic_path, read_json, write_json

CONFIGURATION = "3d_fullres"
PLANS_NAME = "nnUNetPlans"
TRAINER = "nnUNetTrainer"
NORM_OPS = {"instance": ("torch.nn.modules.instancenorm.InstanceNorm3d", {"eps": 1e-5, "affine": True}),
            "batch": ("torch.nn.modules.batchnorm.BatchNorm3d", {"eps": 1e-5, "affine": True})}
NORM_SCHEMES = {"ct": "CTNormalization", "zscore": "ZScoreNormalization"}
#: nnU-Net's default resampling (its planner's kwargs): cubic images, linear probabilities,
#: nearest along a separately resampled axis; ``data/resampling.py`` reproduces them.
_RESAMPLE = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}


def read_model(path: str | Path) -> dict:
    """A ``model.pt`` of ours (``{"format", "state_dict", "plan", "seed"}``) or a SeggridError."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise SeggridError(f"{path}: not a readable seggrid model ({type(exc).__name__}: {exc})") from exc
    fmt = ckpt.get("format") if isinstance(ckpt, dict) else None
    if fmt != MODEL_FORMAT:
        raise SeggridError(f"{path}: not a seggrid model of format {MODEL_FORMAT} (found {fmt or 'no format key'})")
    return {**ckpt, "plan": complete_plan(ckpt["plan"], str(path))}


def _conv_norm(out: dict, state: dict, ours: str, theirs: list[str], used: set) -> None:
    """conv (``ours.0``) and norm (``ours.1``) of one of our conv blocks, under every nnU-Net alias."""
    for key in [k for k in state if k.startswith(f"{ours}.")]:
        layer, param = key[len(ours) + 1:].split(".", 1)
        for prefix in theirs:
            name = {"0": "conv", "1": "norm"}[layer]
            out[f"{prefix}.{name}.{param}"] = state[key]
            out[f"{prefix}.all_modules.{layer}.{param}"] = state[key]
        used.add(key)


def nnunet_state_dict(state: dict[str, torch.Tensor], n_stages: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Our ``PlainUNet`` state_dict -> ``PlainConvUNet``'s (deep_supervision off, same keys).
    Heads we lack are He-normal initialised from ``seed`` (see the module docstring)."""
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for i in range(n_stages):
        for j in range(2):
            _conv_norm(out, state, f"encoder.{i}.{j}", [f"encoder.stages.{i}.0.convs.{j}",
                                                        f"decoder.encoder.stages.{i}.0.convs.{j}"], used)
    for d in range(n_stages - 1):
        for param in ("weight", "bias"):
            out[f"decoder.transpconvs.{d}.{param}"] = state[f"decoder.{d}.upsample.{param}"]
            used.add(f"decoder.{d}.upsample.{param}")
        for j in range(2):
            _conv_norm(out, state, f"decoder.{d}.blocks.{j}", [f"decoder.stages.{d}.convs.{j}"], used)
    generator = torch.Generator().manual_seed(int(seed))
    full = state["heads.0.weight"]
    for level in range(n_stages - 1):
        theirs = f"decoder.seg_layers.{n_stages - 2 - level}"
        if f"heads.{level}.weight" in state:
            for param in ("weight", "bias"):
                out[f"{theirs}.{param}"] = state[f"heads.{level}.{param}"]
                used.add(f"heads.{level}.{param}")
            continue
        channels = out[f"decoder.stages.{n_stages - 2 - level}.convs.1.conv.weight"].shape[0]
        # He-normal, a = 1e-2, fan_in = channels (1x1x1 kernel): std = sqrt(2 / (1 + a^2) / fan_in)
        std = (2.0 / (1 + 1e-4) / channels) ** 0.5
        out[f"{theirs}.weight"] = torch.randn((full.shape[0], channels, 1, 1, 1), generator=generator,
                                              dtype=full.dtype) * std
        out[f"{theirs}.bias"] = torch.zeros(full.shape[0], dtype=full.dtype)
    left = sorted(set(state) - used)
    if left:
        raise SeggridError(f"export-nnunet: parameters with no nnU-Net counterpart: {left[:4]}")
    return out


def seggrid_state_dict(theirs: dict[str, torch.Tensor], n_stages: int) -> dict[str, torch.Tensor]:
    """``PlainConvUNet``'s state_dict -> our ``PlainUNet`` with one (full-resolution) head."""
    out = {}
    for key, value in theirs.items():
        parts = key.split(".")
        if key.startswith("encoder.stages.") and parts[6] in ("conv", "norm"):      # encoder.stages.i.0.convs.j.conv.*
            layer = "0" if parts[6] == "conv" else "1"
            out[f"encoder.{parts[2]}.{parts[5]}.{layer}.{'.'.join(parts[7:])}"] = value
        elif key.startswith("decoder.stages.") and parts[5] in ("conv", "norm"):    # decoder.stages.d.convs.j.conv.*
            layer = "0" if parts[5] == "conv" else "1"
            out[f"decoder.{parts[2]}.blocks.{parts[4]}.{layer}.{'.'.join(parts[6:])}"] = value
        elif key.startswith("decoder.transpconvs."):
            out[f"decoder.{parts[2]}.upsample.{parts[3]}"] = value
        elif key.startswith(f"decoder.seg_layers.{n_stages - 2}."):
            out[f"heads.0.{parts[3]}"] = value
    return out


def network_from_export(folder: str | Path, fold: int | str) -> PlainUNet:
    """Our network (eval mode, one head) rebuilt from an export's ``plans.json`` architecture,
    ``dataset.json`` labels and ``fold_<fold>/checkpoint_final.pth``: the reverse of the export."""
    folder = Path(folder)
    plans, dataset = read_json(folder / "plans.json"), read_json(folder / "dataset.json")
    arch = plans["configurations"][CONFIGURATION]["architecture"]["arch_kwargs"]
    norm = next(k for k, (op, _) in NORM_OPS.items() if op == arch["norm_op"])
    net = PlainUNet(len(dataset["labels"]), arch["features_per_stage"], arch["kernel_sizes"], arch["strides"], norm)
    ckpt = torch.load(folder / f"fold_{fold}" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    net.load_state_dict(seggrid_state_dict(ckpt["network_weights"], arch["n_stages"]))
    return net.eval()


def nnunet_plans(plan: dict, dataset_name: str, scheme: str, ct_statistics: dict | None,
                 zscore_uses_nonzero_mask: bool, median_shape: list | None, normalization_option: str,
                 planner: str = "seggrid export-nnunet") -> dict:
    """nnU-Net 2.8.1 plans (one ``3d_fullres`` configuration) reproducing our preprocessing and
    network, from plain data: the seggrid ``plan`` dict as read from a plan JSON (``setting``,
    ``topology``, ``target_spacing``, ``transpose``), the normalisation ``scheme`` (``ct`` or
    ``zscore``) with its facts (``ct_statistics``: ``mean``, ``std``, ``percentile_00_5``,
    ``percentile_99_5``, for ``ct``; ``zscore_uses_nonzero_mask``; ``normalization_option`` is
    only recorded) and the median case shape after preprocessing (None: the patch). The one
    builder of nnU-Net plans in this project: ``make_plans`` (export-nnunet) and the
    benchmarks (``benchmarks/speed/plans_for_nnunet.py``, ``benchmarks/conformance/recipe``)
    call it."""
    topo, s = plan["topology"], plan["setting"]
    n = len(topo["features"])
    norm = s["norm"]
    if norm not in NORM_OPS:
        raise SeggridError(f"export-nnunet: norm '{norm}' has no PlainConvUNet equivalent (nnU-Net builds a norm "
                           f"as norm_op(channels, **kwargs); GroupNorm needs the group count first)")
    intensity = {"0": {}}         # nnU-Net's preprocessor looks channel "0" up even for z-score, which ignores it
    if scheme == "ct":
        intensity = {"0": {k: ct_statistics[k] for k in ("mean", "std", "percentile_00_5", "percentile_99_5")}}
    order = list(plan["transpose"])
    arch = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {"n_stages": n, "features_per_stage": list(topo["features"]),
                            "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": topo["kernels"],
                            "strides": topo["strides"], "n_conv_per_stage": [2] * n,
                            "n_conv_per_stage_decoder": [2] * (n - 1), "conv_bias": True,
                            "norm_op": NORM_OPS[norm][0], "norm_op_kwargs": NORM_OPS[norm][1],
                            "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
                            "nonlin_kwargs": {"negative_slope": 0.01, "inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}
    configuration = {
        "data_identifier": f"{PLANS_NAME}_{CONFIGURATION}", "preprocessor_name": "DefaultPreprocessor",
        "batch_size": int(s["batch"]), "patch_size": list(topo["patch_effective"]),
        "median_image_size_in_voxels": list(topo["patch_effective"]) if median_shape is None else list(median_shape),
        "spacing": [plan["target_spacing"][a] for a in order],
        "normalization_schemes": [NORM_SCHEMES[scheme]],
        "use_mask_for_norm": [bool(scheme == "zscore" and zscore_uses_nonzero_mask)],
        "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_data_kwargs": dict(_RESAMPLE),
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_seg_kwargs": {**_RESAMPLE, "is_seg": True, "order": 1},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {**_RESAMPLE, "order": 1},
        "architecture": arch, "batch_dice": bool(s["batch_dice"])}
    return {"dataset_name": dataset_name, "plans_name": PLANS_NAME,
            "original_median_spacing_after_transp": configuration["spacing"],
            "original_median_shape_after_transp": configuration["median_image_size_in_voxels"],
            "image_reader_writer": "NibabelIOWithReorient", "transpose_forward": order,
            "transpose_backward": np.argsort(order).tolist(), "configurations": {CONFIGURATION: configuration},
            "experiment_planner_used": planner, "label_manager": "LabelManager",
            "foreground_intensity_properties_per_channel": intensity,
            "seggrid": {"setting": s["name"], "normalization_option": normalization_option,
                        "note": "exported from seggrid model.pt files; preprocessing and network as seggrid trained"}}


def make_plans(plan: dict, manifest: dict, manifest_path: Path, dataset_name: str,
               planner: str = "seggrid export-nnunet") -> dict:
    """:func:`nnunet_plans` for ``plan`` with the normalisation and median shape of the
    ``seggrid preprocess`` manifest (``manifest_path`` names it in errors)."""
    schemes = sorted({c["normalization"] for c in manifest["cases"].values()})
    if len(schemes) != 1:
        raise SeggridError(f"{manifest_path}: cases normalised with different schemes {schemes} "
                           f"(preprocessing.normalization '{manifest['normalization']['option']}'); nnU-Net applies "
                           f"one scheme per channel")
    scheme, nrm = schemes[0], manifest["normalization"]
    shapes = np.asarray([c["shape"] for c in manifest["cases"].values()])
    return nnunet_plans(plan, dataset_name, scheme, nrm["ct_statistics"] if scheme == "ct" else None,
                        bool(scheme == "zscore" and nrm["zscore_uses_nonzero_mask"]),
                        np.median(shapes, axis=0).tolist() if len(shapes) else None, nrm["option"], planner)


def export_nnunet(model_paths: list[str | Path], preprocessed: str | Path, out: str | Path,
                  folds: list[int] | None = None, force: bool = False, dataset_name: str | None = None) -> Path:
    """Write the nnU-Net model folder ``out`` from ``model_paths`` (the folds of ONE setting;
    fold ``folds[i]``, default ``i``) and ``preprocessed`` (the ``seggrid preprocess`` folder
    they were trained on: its ``manifest.json`` gives the normalisation). Returns ``out``."""
    out, preprocessed = Path(out), Path(preprocessed)
    folds = list(range(len(model_paths))) if folds is None else list(folds)
    if len(folds) != len(model_paths) or len(set(folds)) != len(folds) or min(folds, default=0) < 0:
        raise SeggridError(f"export-nnunet: --folds {folds} must give one distinct non-negative fold per model "
                           f"({len(model_paths)} models)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise SeggridError(f"{out}: exists and is not empty; pass --force to replace it")
    models = [read_model(p) for p in model_paths]
    first = models[0]["plan"]
    for path, m in zip(model_paths[1:], models[1:]):
        p = m["plan"]
        if p["setting"]["name"] != first["setting"]["name"] or p["topology"] != first["topology"]:
            raise SeggridError(f"{path}: setting '{p['setting']['name']}' differs from {model_paths[0]} "
                               f"('{first['setting']['name']}'); export the folds of ONE setting")
    manifest_path = preprocessed / "manifest.json"
    if not manifest_path.is_file():
        raise SeggridError(f"{manifest_path}: not found (give the `seggrid preprocess` folder the models trained on)")
    manifest = read_json(manifest_path)
    if not np.allclose(manifest["target_spacing"], first["target_spacing"]):
        raise SeggridError(f"{manifest_path}: target spacing {manifest['target_spacing']} is not the model's "
                           f"{first['target_spacing']}")
    labels = {int(k): v for k, v in first["labels"].items()}
    if sorted(labels) != list(range(first["n_classes"])):
        raise SeggridError(f"{model_paths[0]}: label ids {sorted(labels)} are not 0..{first['n_classes'] - 1}; "
                           f"nnU-Net has one output per listed label")
    name = dataset_name or f"Dataset000_{first['setting']['name']}"
    plans = make_plans(first, manifest, manifest_path, name)
    dataset = {"channel_names": {"0": manifest["normalization"]["channel_name"]},
               "labels": {labels[i]: i for i in sorted(labels)}, "numTraining": len(manifest["training"]),
               "file_ending": ".nii.gz", "name": name,
               "description": f"seggrid setting {first['setting']['name']}, exported by seggrid export-nnunet"}
    n_stages = len(first["topology"]["features"])
    with atomic_path(out) as tmp:
        tmp.mkdir()
        write_json(tmp / "plans.json", plans)
        write_json(tmp / "dataset.json", dataset)
        for fold, path, m in zip(folds, model_paths, models):
            (tmp / f"fold_{fold}").mkdir()
            weights = nnunet_state_dict(m["state_dict"], n_stages, m.get("seed") or 0)
            torch.save({"network_weights": weights, "trainer_name": TRAINER,
                        "init_args": {"plans": plans, "configuration": CONFIGURATION, "fold": fold,
                                      "dataset_json": dataset, "device": torch.device("cpu")},
                        "inference_allowed_mirroring_axes": (0, 1, 2), "current_epoch": m["plan"]["setting"]["epochs"],
                        "optimizer_state": None, "grad_scaler_state": None, "logging": None, "_best_ema": None,
                        "seggrid_model": str(path)}, tmp / f"fold_{fold}" / "checkpoint_final.pth")
    return out
