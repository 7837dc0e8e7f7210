"""Recipe component "planner": our network topology vs nnU-Net 2.8.1's for the same patch/spacing.

Ours: ``seggrid.engine.planner.plan_topology(patch, spacing, max_pools_per_axis=cap,
patch_rounding="up")``. nnU-Net's (``nnunet_planner.py``): ``get_pool_and_conv_props(spacing,
patch, 4, cap or 999999)`` from ``nnunetv2.experiment_planning.experiment_planners.network_topology``
(called by ExperimentPlanner.get_plans_for_configuration with min feature map 4 and no cap).
Compared: pools per axis, pool kernels (our strides), conv kernels, effective patch.

Cases: the paper's four patches at the Task 1 and Task 2 spacings (no cap: nnU-Net's rule;
cap 5: the AMOS configs' ``max_pools_per_axis``), the demo's patches at 6 mm, and 40 random
(patch, anisotropic spacing) pairs, half of them with a random cap of 2-5 pools. The AMOS configs also set ``patch_rounding: down``,
which nnU-Net does not have (it always pads up); that row is reported separately
(``config_rounding_down``) and not part of ``match``. ``match`` covers the uncapped cases
(nnU-Net's planner always passes max_numpool 999999) and the configs' capped paper/demo
cases; the random capped cases only probe our cap option against get_pool_and_conv_props's
max_numpool and are reported under ``cap_option``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from common import load_json, protocol_compare, result, run_standalone, save_json

PAPER_PATCHES = [[64, 160, 160], [64, 288, 288], [64, 354, 354], [64, 384, 384]]
DEMO_PATCHES = [[16, 24, 24], [16, 32, 32], [16, 44, 44], [16, 48, 48]]
TASK1 = [2.0, 0.68825001, 0.68825001]
TASK2 = [2.0, 0.78014851, 0.78014851]


def make_cases(seed: int = 0) -> list[dict]:
    """(name, patch, spacing, cap) for every comparison."""
    cases = []
    for spacing, task in ((TASK1, "task1"), (TASK2, "task2")):
        for patch in PAPER_PATCHES:
            for cap in (None, 5):
                cases.append({"name": f"{task} {patch} cap {cap}", "patch": patch, "spacing": spacing, "cap": cap})
    for patch in DEMO_PATCHES:
        for cap in (None, 3):
            cases.append({"name": f"demo {patch} cap {cap}", "patch": patch, "spacing": [6.0, 6.0, 6.0], "cap": cap})
    rng = np.random.default_rng(seed)
    for i in range(40):
        spacing = [round(float(s), 4) for s in rng.choice([0.5, 0.7, 0.8, 1.0, 1.5, 2.0, 3.0, 5.0], 3)]
        patch = [int(p) for p in rng.integers(8, 200, 3)]
        cap = None if i < 20 else int(rng.integers(2, 6))
        cases.append({"name": f"random {i}", "patch": patch, "spacing": spacing, "cap": cap})
    return cases


def ours(case: dict, rounding: str = "up") -> dict:
    from seggrid.engine.planner import plan_topology

    topo = plan_topology(case["patch"], case["spacing"], max_pools_per_axis=case["cap"], patch_rounding=rounding)
    return {"pools": topo["pools_per_axis"], "strides": topo["strides"], "kernels": topo["kernels"],
            "patch": topo["patch_effective"]}


#: the files of a run that make this component's fixture (tests/fixtures/nnunet/planner/)
FIXTURE_FILES = ["cases.json", "nnunet_planner.json"]


def prepare(workdir: Path, small: bool = False) -> None:
    """Write the inputs of nnU-Net's side (``small`` changes nothing: the cases are tiny)."""
    save_json(workdir / "cases.json", make_cases())


def check(workdir: Path) -> dict:
    """Our planner on the cases of ``workdir`` against nnU-Net's answers recorded there."""
    cases = load_json(workdir / "cases.json")
    theirs = load_json(workdir / "nnunet_planner.json")
    if len(theirs) != len(cases):
        raise ValueError(f"{len(cases)} cases but {len(theirs)} nnU-Net answers in {workdir}")
    mismatches, cap_option, paper = [], [], []
    for case, ref in zip(cases, theirs):
        mine = ours(case)
        differing = [k for k in ("pools", "strides", "kernels", "patch") if mine[k] != ref[k]]
        if differing:
            row = {"case": case["name"], "spacing": case["spacing"], "requested": case["patch"],
                   "fields": differing, "ours": mine, "nnunet": ref}
            # random cases with a cap test only our max_pools_per_axis option (nnU-Net plans without one)
            (cap_option if case["name"].startswith("random") and case["cap"] is not None else mismatches).append(row)
        if not case["name"].startswith("random"):
            paper.append({"case": case["name"], "pools": ref["pools"], "patch_nnunet": ref["patch"],
                          "patch_ours": mine["patch"], "same": not differing})
    config_down = [{"case": c["name"], "patch_ours_down": ours(c, "down")["patch"], "patch_nnunet": r["patch"]}
                   for c, r in zip(cases, theirs)
                   if c["cap"] is not None and not c["name"].startswith("random")
                   and ours(c, "down")["patch"] != r["patch"]]
    n_capped_random = sum(1 for c in cases if c["name"].startswith("random") and c["cap"] is not None)
    return result("planner", not mismatches, cases=len(cases), mismatches=len(mismatches),
                  mismatch_details=mismatches[:5], paper_and_demo=paper,
                  config_rounding_down=config_down,
                  cap_option={"cases": n_capped_random, "differ": len(cap_option), "examples": cap_option[:2],
                              "note": "not in match: nnU-Net never caps (max_numpool 999999); its "
                                      "get_pool_and_conv_props takes the finest spacing BEFORE removing "
                                      "capped axes, engine/planner.py after"})


compare = protocol_compare(prepare, check, __file__, "[planner] running nnU-Net's get_pool_and_conv_props")


if __name__ == "__main__":
    run_standalone(compare, "planner", sys.argv[1:])
