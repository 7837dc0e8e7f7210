"""nnU-Net 2.8.1 plans for benchmarks/speed/epoch_vs_nnunet.sh, written on OUR side (project venv).

    .venv/bin/python benchmarks/speed/plans_for_nnunet.py --plan PLAN.json --preprocessed PRE \
        --dataset-name Dataset990_SeggridBench --out PLANS.json

The plans are those ``seggrid export-nnunet`` writes for the same plan and preprocessed folder
(``seggrid.outputs.export_nnunet.make_plans``: our patch, batch, batch Dice, PlainConvUNet with
our stages, features, kernels, strides and norm, the preprocess manifest's normalisation and
median shape): the project has one builder of nnU-Net plans. ``nnunet_layout.py`` (nnU-Net's
venv, which has no seggrid) copies this file into nnU-Net's preprocessed layout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

_WORKFLOW = str(Path(__file__).resolve().parents[2] / "workflow")
if _WORKFLOW not in sys.path:
    sys.path.insert(0, _WORKFLOW)

from seggrid.outputs.export_nnunet import make_plans  # noqa: E402

PLANNER = "seggrid (benchmarks/speed/plans_for_nnunet.py)"


def plans_for_layout(plan: dict, manifest: dict, manifest_path: Path, dataset_name: str) -> dict:
    """The plans of the benchmark layout: export-nnunet's for ``plan`` and the manifest."""
    return make_plans(plan, manifest, manifest_path, dataset_name, planner=PLANNER)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--plan", required=True, help="output of `seggrid plan`")
    p.add_argument("--preprocessed", required=True, help="output folder of `seggrid preprocess` (its manifest.json)")
    p.add_argument("--dataset-name", required=True, help="nnU-Net's DatasetXXX_Name")
    p.add_argument("--out", required=True, help="plans JSON to write")
    a = p.parse_args()
    manifest_path = Path(a.preprocessed) / "manifest.json"
    plans = plans_for_layout(json.loads(Path(a.plan).read_text()), json.loads(manifest_path.read_text()),
                             manifest_path, a.dataset_name)
    Path(a.out).write_text(json.dumps(plans, indent=1))


if __name__ == "__main__":
    main()
