"""Recipe component "sampler": patch placement and the foreground quota vs nnU-Net 2.8.1.

Ours (``seggrid.engine.sampling``, ``seggrid.engine.augment.initial_patch_size``) against
nnU-Net's own trainer and data loader on the same inputs (``nnunet_sampler.py``):

* the initial patch the loader cuts, for the paper's patches and the demo's;
* forced-foreground samples per rank for world sizes 1, 2, 4, 8 and global batches 2 ... 64
  (``_set_batch_size_and_oversample`` + the loader's per-sample rule);
* the start of a forced box for a stored voxel (centre, clamped low, past the upper edge, case
  smaller than the patch) -- ``get_bbox`` with ``force_fg``;
* the range of random box starts (lowest and highest of 4,000 ``get_bbox`` draws) against our
  inclusive bounds ``box_bounds``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common import load_json, protocol_compare, result, run_standalone, save_json, write_nnunet_plans

PATCHES = [[64, 160, 160], [64, 288, 288], [64, 352, 352], [64, 384, 384], [16, 24, 24], [16, 48, 48]]
QUOTAS = [[w, b] for w in (1, 2, 4, 8) for b in (2, 4, 8, 16, 64) if b >= w]
PLACEMENTS = [  # (shape, patch, voxel)
    ([40, 60, 50], [16, 24, 24], [20, 30, 25]),
    ([40, 60, 50], [16, 24, 24], [1, 2, 3]),
    ([40, 60, 50], [16, 24, 24], [39, 59, 49]),
    ([10, 20, 50], [16, 24, 24], [5, 10, 40]),
    ([120, 400, 380], [64, 160, 160], [100, 13, 370]),
    ([90, 500, 500], [64, 288, 288], [3, 250, 499]),
]


def _our_forced_start(shape, patch, voxel) -> list[int]:
    from seggrid.engine.augment import initial_patch_size
    from seggrid.engine.sampling import PatchSampler

    sampler = PatchSampler.__new__(PatchSampler)           # only the placement state
    sampler.patch, sampler.initial = np.array(patch), np.array(initial_patch_size(patch))
    sampler.rng = np.random.default_rng(0)
    return sampler._box_start(np.array(shape), True, {1: np.array([voxel])}).tolist()


#: the files of a run that make this component's fixture (tests/fixtures/nnunet/sampler/)
FIXTURE_FILES = ["sampler_inputs.json", "nnunet_sampler.json"]


def prepare(workdir: Path, small: bool = False) -> None:
    """Write the shapes, batches and voxels nnU-Net's side reads (``small``: the same, they are tiny)."""
    from seggrid.engine.augment import initial_patch_size

    inputs = {"patches": PATCHES, "quota": QUOTAS,
              "forced": [{"shape": s, "patch": p, "initial": initial_patch_size(p), "voxel": v}
                         for s, p, v in PLACEMENTS],
              "random": [{"shape": s, "patch": p, "initial": initial_patch_size(p), "draws": 4000}
                         for s, p, _ in PLACEMENTS[:4]]}
    save_json(workdir / "sampler_inputs.json", inputs)
    for name, patch in [*enumerate(inputs["patches"]), ("quota", [16, 32, 32])]:   # quota: any plan
        write_nnunet_plans(workdir / f"nnunet_plans_{name}.json", patch, [2.0, 0.688, 0.688],
                           [[1, 1, 1], [1, 2, 2], [2, 2, 2]], [[1, 3, 3], [3, 3, 3], [3, 3, 3]], batch_size=2)


def check(workdir: Path) -> dict:
    """Ours on the inputs of ``workdir`` against nnU-Net's answers recorded there."""
    from seggrid.engine.augment import initial_patch_size
    from seggrid.engine.sampling import box_bounds, forced_foreground_counts, local_batch

    inputs = load_json(workdir / "sampler_inputs.json")
    theirs = load_json(workdir / "nnunet_sampler.json")
    patches, quotas = inputs["patches"], [tuple(q) for q in inputs["quota"]]
    placements = [(c["shape"], c["patch"], c["voxel"]) for c in inputs["forced"]]

    initial = {"ours": [initial_patch_size(p) for p in patches], "nnunet": theirs["initial"]}
    quota_ours = [[[local_batch(b, r, w), c] for r, c in enumerate(forced_foreground_counts(b, w, 0.33))]
                  for w, b in quotas]
    quota_diff = [f"world {w} batch {b}: ours {o}, nnU-Net {t}"
                  for (w, b), o, t in zip(quotas, quota_ours, theirs["quota"]) if o != t]
    if len(theirs["quota"]) != len(quotas):
        quota_diff.append(f"{len(quotas)} quota cases, {len(theirs['quota'])} answers")
    forced_ours = [_our_forced_start(s, p, v) for s, p, v in placements]
    random_ours = [[a.tolist(), b.tolist()] for a, b in
                   (box_bounds(np.array(c["shape"]), np.array(c["initial"]), np.array(c["patch"]))
                    for c in inputs["random"])]
    random_theirs = [[r["lowest"], r["highest"]] for r in theirs["random"]]
    ok = {"initial_patch": initial["ours"] == initial["nnunet"], "quota": not quota_diff,
          "forced_start": forced_ours == theirs["forced"], "random_range": random_ours == random_theirs}
    return result("sampler", all(ok.values()), checks=ok, initial_patch=initial,
                  quota_cases=len(quotas), quota_differences=quota_diff,
                  forced_start={"ours": forced_ours, "nnunet": theirs["forced"]},
                  random_range={"ours": random_ours, "nnunet": random_theirs},
                  global_forced_per_batch={f"{b}": sum(forced_foreground_counts(b, 1, 0.33)) for b in (2, 4, 8, 16, 64)})


compare = protocol_compare(prepare, check, __file__, "[sampler] nnU-Net's trainer and data loader on the same shapes, batches and voxels")


if __name__ == "__main__":
    run_standalone(compare, "sampler")
