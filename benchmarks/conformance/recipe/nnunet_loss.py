"""nnU-Net 2.8.1 side of the "loss" component (run by loss.py with the nnU-Net venv's python).

    nnunet_python benchmarks/conformance/recipe/nnunet_loss.py WORKDIR

For each case in WORKDIR/cases.json: a real nnUNetTrainer with the case's pool/conv kernels
and batch Dice builds its loss (``_build_loss``); the full-resolution target of every sample
is downsampled by DownsampleSegForDSTransform with the trainer's deep-supervision scales; the
wrapped DC_and_CE_loss is evaluated on the case's logits and back-propagated. Writes
nnunet_case_<i>.npz: loss, weights (the wrapper's), grad_<k> for every head with a weight.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_json, load_npz, nnunet_dataset_json, nnunet_import_setup, nnunet_trainer, save_npz  # noqa: E402


def main(workdir: Path) -> None:
    nnunet_import_setup(workdir)
    import numpy as np
    import torch
    from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform

    spec = load_json(workdir / "cases.json")
    for i, case in enumerate(spec["cases"]):
        plans = load_json(workdir / f"nnunet_plans_{i}.json")     # written by loss.prepare (our side)
        trainer = nnunet_trainer(plans, nnunet_dataset_json(case["classes"]), workdir / f"trainer_{i}")
        loss = trainer._build_loss()
        scales = trainer._get_deep_supervision_scales()
        arrays = load_npz(workdir / f"case_{i}.npz")
        n_heads = len(scales)
        logits = [torch.tensor(arrays[f"logits_{k}"], requires_grad=True) for k in range(n_heads)]
        down = DownsampleSegForDSTransform(ds_scales=scales)
        target = torch.tensor(arrays["target"])
        per_sample = [down(segmentation=target[b])["segmentation"] for b in range(target.shape[0])]
        targets = [torch.stack([s[k] for s in per_sample]) for k in range(n_heads)]
        value = loss(logits, targets)
        value.backward()
        grads = {f"grad_{k}": t.grad.numpy() for k, t in enumerate(logits) if t.grad is not None}
        save_npz(workdir / f"nnunet_case_{i}.npz", loss=np.float64(value.item()),
                 weights=np.array(loss.weight_factors, dtype=np.float64), **grads)
        print(f"[nnunet_loss] case {i}: loss {value.item():.6f}, weights {np.round(loss.weight_factors, 4)}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
