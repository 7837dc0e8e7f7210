"""nnU-Net 2.8.1 side of the "resampling" component (run by resampling.py).

    nnunet_python benchmarks/conformance/recipe/nnunet_resampling.py WORKDIR

For every case of WORKDIR/resampling_inputs.json (arrays in WORKDIR/<case>_inputs.npz), with
the functions and keyword arguments nnU-Net's own ``ExperimentPlanner`` writes into the plans
(``determine_resampling``, ``determine_segmentation_softmax_export_fn``):

* the target shape (``compute_new_shape``) and separate axis (``determine_do_sep_z_and_axis``);
* the image (``resampling_fn_data``, float32 in as after normalisation) and the labels
  (``resampling_fn_seg``, int16 as after cropping), called as ``DefaultPreprocessor`` calls them:
  ``fn(data[None], new_shape, original_spacing, target_spacing, **kwargs)``;
* the logits at the target shape mapped back to the original shape as
  ``convert_predicted_logits_to_segmentation_with_correct_shape`` does
  (``resampling_fn_probabilities(logits, shape_before, target_spacing, original_spacing)``),
  then the argmax over classes;

written to WORKDIR/<case>_nnunet.npz, and WORKDIR/nnunet_resampling.json (shapes, axes, the
separate-axis decision for every spacing pair, the keyword arguments used).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_json, load_npz, nnunet_import_setup, save_json, save_npz  # noqa: E402


def _axis(force, current, new) -> int | None:
    from nnunetv2.preprocessing.resampling.default_resampling import determine_do_sep_z_and_axis

    do_separate, axis = determine_do_sep_z_and_axis(force, current, new)
    return int(axis) if do_separate else None


def main(workdir: Path) -> None:
    nnunet_import_setup(workdir)
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape

    # these two methods read nothing from the planner instance (which needs a dataset to build)
    data_fn, data_kw, seg_fn, seg_kw = ExperimentPlanner.determine_resampling(None)
    prob_fn, prob_kw = ExperimentPlanner.determine_segmentation_softmax_export_fn(None)
    inputs = load_json(workdir / "resampling_inputs.json")
    meta = {"kwargs": {"data": data_kw, "seg": seg_kw, "probabilities": prob_kw}, "cases": [],
            "spacing_pairs_axis": [_axis(data_kw["force_separate_z"], c, n) for c, n in inputs["spacing_pairs"]]}
    for case in inputs["cases"]:
        arrays = load_npz(workdir / f"{case['name']}_inputs.npz")
        spacing, target = case["spacing"], case["target"]
        shape = [int(v) for v in compute_new_shape(arrays["image"].shape, spacing, target)]
        image = data_fn(arrays["image"][None], shape, spacing, target, **data_kw)[0]
        labels = seg_fn(arrays["labels"][None].astype(np.int16), shape, spacing, target, **seg_kw)[0]
        logits = arrays["logits"]
        back = prob_fn(logits, list(arrays["image"].shape), target, spacing, **prob_kw)
        save_npz(workdir / f"{case['name']}_nnunet.npz", image=image, labels=labels.astype(np.uint8),
                 back_logits=np.asarray(back, dtype=np.float32), back_labels=np.asarray(back).argmax(0).astype(np.uint8))
        meta["cases"].append({"shape": shape, "axis": _axis(data_kw["force_separate_z"], spacing, target),
                              "back_axis": _axis(prob_kw["force_separate_z"], target, spacing),
                              "image_dtype": str(image.dtype), "back_dtype": str(np.asarray(back).dtype)})
        print(f"[nnunet_resampling] {case['name']}: {list(arrays['image'].shape)} -> {shape}, "
              f"separate axis {meta['cases'][-1]['axis']}, back {meta['cases'][-1]['back_axis']}", flush=True)
    save_json(workdir / "nnunet_resampling.json", meta)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
