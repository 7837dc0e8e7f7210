"""nnU-Net 2.8.1 side of the "planner" component (run by planner.py).

    nnunet_python benchmarks/conformance/recipe/nnunet_planner.py WORKDIR

For every case of WORKDIR/cases.json calls nnU-Net's own ``get_pool_and_conv_props(spacing,
patch, 4, cap or 999999)`` (min feature map edge 4 = ExperimentPlanner.UNet_featuremap_min_edge_length,
999999 = its max_numpool) and writes WORKDIR/nnunet_planner.json: pools per axis, pool kernels,
conv kernels and the padded patch, as plain lists.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_json, nnunet_import_setup, save_json  # noqa: E402


def main(workdir: Path) -> None:
    nnunet_import_setup(workdir)
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    # the planner's own constant (read from its __init__ source: instantiating it needs a dataset)
    import inspect
    import re

    source = inspect.getsource(ExperimentPlanner.__init__)
    min_edge = int(re.search(r"UNet_featuremap_min_edge_length\s*=\s*(\d+)", source).group(1))
    out = []
    for case in load_json(workdir / "cases.json"):
        cap = case["cap"] if case["cap"] is not None else 999999
        pools, pool_ops, conv_ks, patch, _ = get_pool_and_conv_props(case["spacing"], case["patch"], min_edge, cap)
        out.append({"pools": [int(p) for p in pools], "strides": [[int(v) for v in s] for s in pool_ops],
                    "kernels": [[int(v) for v in k] for k in conv_ks], "patch": [int(p) for p in patch]})
    print(f"[nnunet_planner] {len(out)} cases, min feature map edge {min_edge}")
    save_json(workdir / "nnunet_planner.json", out)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
