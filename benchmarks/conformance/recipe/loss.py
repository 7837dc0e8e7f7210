"""Recipe component "loss": our training loss against nnU-Net 2.8.1's, on the same logits.

Ours: ``seggrid.engine.session.training_loss(plan)`` (Dice + CE, deep supervision with our
weights and target downsampling) for a plan whose topology our planner gives the patch at
2.0 x 0.688 x 0.688 mm. nnU-Net's (``nnunet_loss.py``): ``nnUNetTrainer._build_loss()`` of a
real trainer with the same pool/conv kernels (DC_and_CE_loss with MemoryEfficientSoftDiceLoss,
smooth 1e-5, no background, batch Dice as given, in DeepSupervisionWrapper with its weights
1/2^i, lowest 0, normalised), its targets downsampled by batchgeneratorsv2's
DownsampleSegForDSTransform with the trainer's ``_get_deep_supervision_scales()``.

Inputs: random float32 logits, one tensor per nnU-Net deep-supervision output (ours uses the
ones with a non-zero weight), random integer targets (one case with classes missing). Both
sides compute the loss and its gradient by each logit tensor (our Dice + CE backward is
hand-written). Both Dice terms are ``-mean(dc)`` (ours was ``1 - mean(dc)`` until issue 17, which
logged every loss 1.0 higher with the same gradients); ``loss_offset`` reports the mean
difference of the totals.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from common import (fp16_exact, load_json, load_npz, protocol_compare, result, run_standalone, save_json,
                    save_npz, write_nnunet_plans)

SPACING = [2.0, 0.68825001, 0.68825001]
#: (patch, batch, classes, batch_dice, classes present in the target)
CASES = [
    ([16, 32, 32], 2, 4, True, None),
    ([16, 32, 32], 2, 4, False, None),
    ([24, 48, 40], 3, 16, True, None),
    ([24, 48, 40], 3, 16, False, None),
    ([8, 64, 64], 2, 6, True, [0, 2, 5]),
    ([8, 64, 64], 2, 6, False, [0, 2, 5]),
    ([32, 96, 96], 2, 16, True, None),
]
#: the fixture's cases (tests/fixtures/nnunet/loss/): small, the same kinds (batch Dice on and off,
#: classes missing from the target, 16 classes, batch 3)
SMALL_CASES = [
    ([8, 16, 16], 2, 4, True, None),
    ([8, 16, 16], 2, 4, False, None),
    ([8, 16, 8], 2, 6, True, [0, 2, 5]),
    ([8, 16, 8], 2, 6, False, [0, 2, 5]),
    ([8, 8, 8], 3, 16, True, None),
]
LOSS_TOLERANCE = 1e-5          # float32 sums of up to ~1e5 voxels on both sides
GRAD_REL_TOLERANCE = 1e-4      # max |g_ours - g_nnunet| / max |g_nnunet|


def our_plan(patch: list[int], classes: int, batch_dice: bool):
    """The plan ``training_loss`` reads: nnU-Net default recipe, our planner's topology."""
    from seggrid.engine.planner import plan_topology
    from seggrid.plan import plan_from_topology

    return plan_from_topology(plan_topology(patch, SPACING), classes, "recipe_loss", patch=list(patch),
                              loss="dice_ce", batch_dice=batch_dice)


def prepare(workdir: Path, small: bool = False, seed: int = 0) -> list[dict]:
    """Write case_<i>.npz (logits_<k>, target) and cases.json; return the case descriptions.

    ``small``: :data:`SMALL_CASES`, logits rounded to float16 values (a fixture stores them in
    half the bytes, exactly)."""
    rng = np.random.default_rng(seed)
    described = []
    for i, (patch, batch, classes, batch_dice, present) in enumerate(SMALL_CASES if small else CASES):
        topo = our_plan(patch, classes, batch_dice)["topology"]
        strides = np.array(topo["strides"])
        factors = np.cumprod(strides, axis=0)[:-1]          # one per nnU-Net deep-supervision output
        shapes = [[int(round(p / f)) for p, f in zip(topo["patch_effective"], fac)] for fac in factors]
        logits = {f"logits_{k}": (rng.standard_normal((batch, classes, *s)) * 2.0).astype(np.float32)
                  for k, s in enumerate(shapes)}
        if small:
            logits = {k: fp16_exact(v) for k, v in logits.items()}
        values = np.arange(classes) if present is None else np.array(present)
        target = values[rng.integers(0, len(values), (batch, 1, *topo["patch_effective"]))].astype(np.int64)
        save_npz(workdir / f"case_{i}.npz", target=target, **logits)
        described.append({"patch": topo["patch_effective"], "batch": batch, "classes": classes,
                          "batch_dice": batch_dice, "strides": topo["strides"], "kernels": topo["kernels"],
                          "outputs": len(shapes)})
        write_nnunet_plans(workdir / f"nnunet_plans_{i}.json", topo["patch_effective"], SPACING, topo["strides"],
                           topo["kernels"], batch_size=batch, batch_dice=batch_dice)
    save_json(workdir / "cases.json", {"spacing": SPACING, "cases": described})
    return described


def our_loss_and_grads(case: dict, arrays: dict) -> tuple[float, list[np.ndarray], list[float]]:
    """Our total loss, its gradient by each logit tensor we use, and our head weights."""
    import torch

    from seggrid.engine.network import deep_supervision_outputs, deep_supervision_weights
    from seggrid.engine.session import training_loss

    plan = our_plan(case["patch"], case["classes"], case["batch_dice"])
    n_ours = deep_supervision_outputs(plan)
    logits = [torch.tensor(arrays[f"logits_{k}"], requires_grad=True) for k in range(n_ours)]
    loss = training_loss(plan)(logits, torch.tensor(arrays["target"]))
    loss.backward()
    weights = deep_supervision_weights(n_ours, plan.setting.deep_supervision_weights).tolist()
    return loss.item(), [t.grad.numpy() for t in logits], weights


def fixture_files(workdir: Path) -> list[str]:
    """The files of a run that make this component's fixture (tests/fixtures/nnunet/loss/)."""
    n = len(load_json(workdir / "cases.json")["cases"])
    return ["cases.json", *(f"{p}case_{i}.npz" for i in range(n) for p in ("", "nnunet_"))]


def check(workdir: Path) -> dict:
    """Our loss and gradients on the logits of ``workdir`` against nnU-Net's recorded there."""
    cases = load_json(workdir / "cases.json")["cases"]
    rows, offsets, loss_diffs, grad_rel, weight_diffs, heads_ok = [], [], [], [], [], True
    for i, case in enumerate(cases):
        arrays = load_npz(workdir / f"case_{i}.npz")
        theirs = load_npz(workdir / f"nnunet_case_{i}.npz")
        ours_loss, ours_grads, ours_w = our_loss_and_grads(case, arrays)
        their_w = [float(w) for w in theirs["weights"]]
        used = [k for k, w in enumerate(their_w) if w != 0]
        heads_ok &= used == list(range(len(ours_grads)))
        weight_diffs.append(max(abs(a - b) for a, b in zip(ours_w, their_w)) if len(ours_w) <= len(their_w) else 1.0)
        offset = ours_loss - float(theirs["loss"])
        offsets.append(offset)
        loss_diffs.append(abs(offset))
        rel = 0.0
        for k, g in enumerate(ours_grads):
            ref = theirs[f"grad_{k}"]
            rel = max(rel, float(np.max(np.abs(g - ref)) / max(float(np.max(np.abs(ref))), 1e-30)))
        grad_rel.append(rel)
        rows.append({"patch": case["patch"], "batch": case["batch"], "classes": case["classes"],
                     "batch_dice": case["batch_dice"], "ours": round(ours_loss, 7),
                     "nnunet": round(float(theirs["loss"]), 7), "heads_used": len(ours_grads),
                     "grad_rel_diff": rel})
    match = (heads_ok and max(loss_diffs) <= LOSS_TOLERANCE and max(grad_rel) <= GRAD_REL_TOLERANCE
             and max(weight_diffs) <= 1e-7)
    return result("loss", match, cases=len(cases), loss_offset=round(float(np.mean(offsets)), 7),
                  max_abs_loss_diff=max(loss_diffs), max_grad_rel_diff=max(grad_rel),
                  max_ds_weight_diff=max(weight_diffs), same_heads_used=heads_ok,
                  tolerance={"loss": LOSS_TOLERANCE, "grad_rel": GRAD_REL_TOLERANCE},
                  note="both Dice terms are -dc (nnU-Net's form): totals and gradients compared directly",
                  per_case=rows)


compare = protocol_compare(prepare, check, __file__, "[loss] cases written; running nnU-Net's DC_and_CE_loss + DeepSupervisionWrapper")


if __name__ == "__main__":
    run_standalone(compare, "loss", sys.argv[1:])
