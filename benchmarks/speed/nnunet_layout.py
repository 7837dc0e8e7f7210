"""Our preprocessed cases in nnU-Net v2's preprocessed layout, for benchmarks/speed/epoch_vs_nnunet.sh.

Run it with a Python that has nnunetv2 installed (2.8.1), from the repository root:

    /path/to/nnunet-venv/bin/python benchmarks/speed/nnunet_layout.py --preprocessed PRE --plans PLANS.json \
        --splits SPLITS.json --dataset-json DATA/dataset.json --out NNUNET_PREPROCESSED/Dataset990_SeggridBench

Both trainers then read the same voxels: the arrays `seggrid preprocess` wrote (``<case>_img.npy``
float32 (z, y, x), ``<case>_seg.npy`` uint8) become what nnU-Net 2.8.1's DefaultPreprocessor
writes: ``nnUNetPlans_3d_fullres/<case>.b2nd`` (float32 (1, z, y, x)) and ``<case>_seg.b2nd``
(int16 (1, z, y, x)), saved with nnU-Net's own ``nnUNetDatasetBlosc2.save_case`` and its
chunk/block rule for the plans' patch (``comp_blosc2_params``), and ``<case>.pkl`` whose
``class_locations`` come from nnU-Net's own sampler (``DefaultPreprocessor._sample_foreground_locations``,
seed 1234, as its preprocessing does). The plans (``nnUNetPlans.json``) are the file
``benchmarks/speed/plans_for_nnunet.py`` wrote on our side (seggrid's one plans builder, as
``seggrid export-nnunet``: our topology, patch, batch, PlainConvUNet with our stages, features,
kernels and strides, batch Dice as our setting); this script (nnU-Net's venv, no seggrid) only
copies them, with ``dataset_name`` set to the output folder's name. ``dataset.json`` is written
in v2 form, ``splits_final.json`` holds our folds.

One difference from nnU-Net's own preprocessing is kept on purpose: voxels outside the
non-zero mask are labelled 0 (ours), not -1 (nnU-Net's; its training transforms turn -1
into 0 anyway). Prints a JSON line: cases, shapes, seconds.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from pathlib import Path

import numpy as np

from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params, nnUNetDatasetBlosc2

CONFIGURATION = "3d_fullres"
PLANS_NAME = "nnUNetPlans"


def dataset_json_v2(ours: dict, n_training: int) -> dict:
    """nnU-Net v2's dataset.json from ours (MSD style: {"0": "background", ...} labels)."""
    labels = {name: int(value) for value, name in sorted(ours["labels"].items(), key=lambda kv: int(kv[0]))}
    channels = ours.get("channel_names") or ours.get("modality") or {"0": "CT"}
    return {"channel_names": channels, "labels": labels, "numTraining": n_training, "file_ending": ".nii.gz",
            "name": ours.get("name", "seggrid")}


def convert_case(pre: Path, case: str, out_dir: Path, patch: list[int], foreground: list[int]) -> list[int]:
    """Write one case as nnU-Net's preprocessing does; returns its (z, y, x) shape."""
    meta = json.loads((pre / f"{case}.json").read_text())
    image = np.load(pre / f"{case}_img.npy")[None].astype(np.float32, copy=False)
    seg = np.load(pre / f"{case}_seg.npy")[None].astype(np.int16, copy=False)
    if image.shape != seg.shape:
        raise SystemExit(f"{pre / case}: image {image.shape} and labels {seg.shape} differ")
    properties = {
        "spacing": list(meta["spacing"]), "shape_before_cropping": tuple(meta["shape_cropped"]),
        "bbox_used_for_cropping": [list(b) for b in meta["crop_box"]],
        "shape_after_cropping_and_before_resampling": tuple(meta["shape_cropped"]),
        "class_locations": DefaultPreprocessor._sample_foreground_locations(seg, foreground),
    }
    blocks, chunks = comp_blosc2_params(image.shape, tuple(patch), image.itemsize)
    blocks_seg, chunks_seg = comp_blosc2_params(seg.shape, tuple(patch), seg.itemsize)
    nnUNetDatasetBlosc2.save_case(image, seg, properties, str(out_dir / case), chunks=chunks, blocks=blocks,
                                  chunks_seg=chunks_seg, blocks_seg=blocks_seg)
    return list(image.shape[1:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preprocessed", required=True, help="output folder of `seggrid preprocess`")
    p.add_argument("--plans", required=True, help="nnU-Net plans written by benchmarks/speed/plans_for_nnunet.py")
    p.add_argument("--splits", required=True, help="output of `seggrid split`")
    p.add_argument("--dataset-json", required=True, help="the raw dataset's dataset.json")
    p.add_argument("--out", required=True, help="nnUNet_preprocessed/DatasetXXX_Name")
    p.add_argument("--threads", type=int, default=1, help="cases converted in parallel")
    a = p.parse_args()
    t0 = time.time()
    pre, out = Path(a.preprocessed), Path(a.out)
    plans = json.loads(Path(a.plans).read_text())
    splits = json.loads(Path(a.splits).read_text())["folds"]
    cases = sorted({c for fold in splits for part in ("train", "val") for c in fold[part]})
    missing = [c for c in cases if not (pre / f"{c}_img.npy").exists()]
    if missing:
        raise SystemExit(f"{pre}: no preprocessed arrays for {missing[:5]}")
    data_dir = out / f"{PLANS_NAME}_{CONFIGURATION}"
    data_dir.mkdir(parents=True, exist_ok=True)
    dataset = dataset_json_v2(json.loads(Path(a.dataset_json).read_text()), len(cases))
    foreground = sorted(v for v in dataset["labels"].values() if v > 0)
    patch = plans["configurations"][CONFIGURATION]["patch_size"]
    jobs = [(pre, c, data_dir, patch, foreground) for c in cases]
    with multiprocessing.get_context("fork").Pool(max(1, min(a.threads, len(cases)))) as pool:
        shapes = dict(zip(cases, pool.starmap(convert_case, jobs)))
    (out / "dataset.json").write_text(json.dumps(dataset, indent=1))
    (out / f"{PLANS_NAME}.json").write_text(json.dumps({**plans, "dataset_name": out.name}, indent=1))
    (out / "splits_final.json").write_text(json.dumps([{"train": f["train"], "val": f["val"]} for f in splits], indent=1))
    (out / "dataset_fingerprint.json").write_text(json.dumps({"note": "written by benchmarks/speed/nnunet_layout.py; "
                                                              "nnU-Net's trainer only copies this file"}))
    print(json.dumps({"cases": len(cases), "shapes": shapes, "folder": str(out), "seconds": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    main()
