"""nnU-Net side of the ``sliding_window`` component (run with the nnU-Net 2.8.1 venv's python).

    nnunet_sliding_window.py WORKDIR

Reads ``setup.json``, ``images.npz`` and ``weights_<set>_<fold>.npz`` (our PlainUNet's
state_dict) from WORKDIR, loads each weight set into dynamic-network-architectures'
``PlainConvUNet`` built with the same topology (instance norm eps 1e-5 affine, leaky ReLU,
conv bias, no deep supervision), and predicts every image with nnU-Net's own
``nnUNetPredictor.predict_logits_from_preprocessed_data`` (fold loop ->
``predict_sliding_window_return_logits``) on the CPU: tile step 0.5, Gaussian, mirroring over
axes (0, 1, 2). Writes ``nnunet_logits.npz`` (``<set>_<image>``, float32 copies of nnU-Net's
float16 logits; ``fp32_<set>_<image>``: the same call with nnU-Net's float16 accumulators and
importance map made float32, a diagnostic that isolates float16 rounding) and ``nnunet_facts.json`` (``compute_steps_for_sliding_window`` of the
setup's cases, ``compute_gaussian`` of the patch in float32, what was called).
"""

from __future__ import annotations

import contextlib
import functools
import sys
from pathlib import Path

from common import load_json, load_npz, log, nnunet_env_setup, save_json, save_npz


def our_name(theirs: str, n_decoder: int) -> str | None:
    """Our PlainUNet parameter name for one of PlainConvUNet's; None for a head we do not have
    (PlainConvUNet keeps a segmentation layer per decoder stage; only the last is used)."""
    parts = theirs.replace("decoder.encoder.", "encoder.").replace("all_modules.0", "conv") \
        .replace("all_modules.1", "norm").split(".")
    layer = {"conv": "0", "norm": "1"}
    if parts[0] == "encoder":          # encoder.stages.I.0.convs.J.(conv|norm).P
        _, _, i, _, _, j, kind, p = parts
        return f"encoder.{i}.{j}.{layer[kind]}.{p}"
    if parts[1] == "stages":           # decoder.stages.D.convs.J.(conv|norm).P
        _, _, d, _, j, kind, p = parts
        return f"decoder.{d}.blocks.{j}.{layer[kind]}.{p}"
    if parts[1] == "transpconvs":      # decoder.transpconvs.D.P
        return f"decoder.{parts[2]}.upsample.{parts[3]}"
    if parts[1] == "seg_layers":       # decoder.seg_layers.D.P; the last one is the output
        return f"heads.0.{parts[3]}" if int(parts[2]) == n_decoder - 1 else None
    raise KeyError(theirs)


@contextlib.contextmanager
def float32_accumulators():
    """Diagnostic only: while active, nnU-Net's sliding window allocates its accumulators as
    float32 (``torch.half`` rebound) and gets its Gaussian in float32 (``compute_gaussian``
    called with ``dtype=torch.float32``); the rest of its code runs unchanged."""
    import torch
    from nnunetv2.inference import predict_from_raw_data as module

    original_half, original_gaussian = torch.half, module.compute_gaussian
    torch.half = torch.float32
    module.compute_gaussian = functools.partial(original_gaussian, dtype=torch.float32)
    try:
        yield
    finally:
        torch.half, module.compute_gaussian = original_half, original_gaussian


def main(workdir: Path) -> None:
    nnunet_env_setup(workdir)
    import torch
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian, compute_steps_for_sliding_window
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

    torch.set_num_threads(2)
    setup = load_json(workdir / "setup.json")
    topo, classes = setup["topology"], setup["classes"]
    patch = topo["patch_effective"]
    features, kernels, strides = topo["features"], topo["kernels"], topo["strides"]

    def network() -> torch.nn.Module:
        return PlainConvUNet(1, len(features), features, torch.nn.Conv3d, kernels, strides, 2, classes, 2, True,
                             torch.nn.InstanceNorm3d, {"eps": 1e-5, "affine": True}, None, None,
                             torch.nn.LeakyReLU, {"inplace": True}, deep_supervision=False)

    def parameters(ours: dict) -> dict:
        net = network()
        state = net.state_dict()
        used = set()
        for name in state:
            mine = our_name(name, len(features) - 1)
            if mine is None:
                continue
            value = torch.from_numpy(ours[mine])
            if value.shape != state[name].shape:
                raise ValueError(f"{name} {tuple(state[name].shape)} <- {mine} {tuple(value.shape)}")
            state[name] = value
            used.add(mine)
        if used != set(ours):
            raise ValueError(f"weights not mapped: {sorted(set(ours) - used)}")
        return state

    net = network()
    plans = PlansManager({"label_manager": "LabelManager", "configurations": {}})
    config = ConfigurationManager({"patch_size": patch, "architecture": {"network_class_name": "PlainConvUNet",
                                                                         "arch_kwargs": {}, "_kw_requires_import": []}})
    dataset_json = {"labels": {"background": 0, **{f"class{c}": c for c in range(1, classes)}}}
    images = load_npz(workdir / "images.npz")
    logits = {}
    for name, folds in setup["weight_sets"].items():
        params = [parameters(load_npz(workdir / f"weights_{name}_{f}.npz")) for f in range(folds)]
        predictor = nnUNetPredictor(tile_step_size=setup["step"], use_gaussian=True, use_mirroring=True,
                                    perform_everything_on_device=False, device=torch.device("cpu"),
                                    verbose=False, allow_tqdm=False)
        predictor.manual_initialization(net, plans, config, params, dataset_json, "nnUNetTrainer",
                                        inference_allowed_mirroring_axes=(0, 1, 2))
        for i in range(setup["n_images"]):
            data = torch.from_numpy(images[f"image_{i}"])[None]          # (1, z, y, x)
            out = predictor.predict_logits_from_preprocessed_data(data)
            dtype = str(out.dtype)
            logits[f"{name}_{i}"] = out.float().numpy()
            with float32_accumulators():
                out32 = predictor.predict_logits_from_preprocessed_data(data)
            logits[f"fp32_{name}_{i}"] = out32.numpy()
            log(f"[nnunet sliding_window] {name} image {i} {tuple(data.shape[1:])}: logits {dtype} "
                f"(diagnostic run: {out32.dtype})")
    save_npz(workdir / "nnunet_logits.npz", **logits)
    steps = [compute_steps_for_sliding_window(tuple(img), tuple(tile), step) for img, tile, step in setup["step_cases"]]
    gaussian = compute_gaussian(tuple(patch), sigma_scale=1. / 8, value_scaling_factor=10, dtype=torch.float32,
                                device=torch.device("cpu"))
    save_json(workdir / "nnunet_facts.json", {
        "steps": [[[int(s) for s in axis] for axis in case] for case in steps],
        "gaussian_float32": gaussian.flatten().tolist(), "accumulator_dtype": dtype,
        "called": "nnunetv2 2.8.1 nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True, "
                  "perform_everything_on_device=False, device=cpu).manual_initialization(PlainConvUNet, ..., "
                  "inference_allowed_mirroring_axes=(0, 1, 2)).predict_logits_from_preprocessed_data "
                  "(its fold loop -> predict_sliding_window_return_logits)"})


if __name__ == "__main__":
    main(Path(sys.argv[1]))
