"""nnU-Net 2.8.1 side of the "sampler" component (run by sampler.py).

    nnunet_python benchmarks/conformance/recipe/nnunet_sampler.py WORKDIR

Reads WORKDIR/sampler_inputs.json and answers with nnU-Net's own code, into
WORKDIR/nnunet_sampler.json:

* ``initial``: a real nnUNetTrainer's ``configure_rotation_dummyDA_mirroring_and_inital_patch_size()``
  for each patch;
* ``quota``: per (world size, global batch), each rank's batch and its forced samples, from the
  trainer's ``_set_batch_size_and_oversample()`` (``torch.distributed``'s rank and world size
  answered by stand-ins) followed by ``nnUNetDataLoader._oversample_last_XX_percent`` per sample;
* ``forced``: ``nnUNetDataLoader.get_bbox`` with ``force_fg`` for one stored voxel;
* ``random``: the lowest and highest box start of ``get_bbox`` without ``force_fg`` over many
  draws (global ``np.random`` seeded).
"""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_json, nnunet_dataset_json, nnunet_import_setup, nnunet_trainer, save_json  # noqa: E402


def _trainer(plans_file: Path, workdir: Path):
    """A trainer for the plans sampler.prepare wrote (our side) for one patch."""
    return nnunet_trainer(load_json(plans_file), nnunet_dataset_json(3), workdir)


def _loader(initial: list[int], final: list[int]):
    """The attributes get_bbox reads, set as nnUNetDataLoader.__init__ sets them."""
    return SimpleNamespace(patch_size=initial, final_patch_size=final,
                           need_to_pad=(np.array(initial) - np.array(final)).astype(int), has_ignore=False,
                           annotated_classes_key=(-1, 0, 1, 2))


def main(workdir: Path) -> None:
    nnunet_import_setup(workdir)
    import torch.distributed as dist
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader

    inputs = load_json(workdir / "sampler_inputs.json")
    out: dict = {"initial": [], "quota": [], "forced": [], "random": []}
    for i, patch in enumerate(inputs["patches"]):
        trainer = _trainer(workdir / f"nnunet_plans_{i}.json", workdir / "trainer")
        with contextlib.redirect_stdout(io.StringIO()):
            _, _, initial, _ = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        out["initial"].append([int(v) for v in initial])

    trainer = _trainer(workdir / "nnunet_plans_quota.json", workdir / "trainer")
    real_world, real_rank = dist.get_world_size, dist.get_rank
    for world, batch in inputs["quota"]:
        per_rank = []
        for rank in range(world):
            trainer.configuration_manager.configuration["batch_size"] = batch
            trainer.oversample_foreground_percent = 0.33
            trainer.is_ddp = world > 1
            dist.get_world_size, dist.get_rank = (lambda w=world: w), (lambda r=rank: r)
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    trainer._set_batch_size_and_oversample()
            finally:
                dist.get_world_size, dist.get_rank = real_world, real_rank
            loader = SimpleNamespace(batch_size=trainer.batch_size,
                                     oversample_foreground_percent=trainer.oversample_foreground_percent)
            forced = sum(nnUNetDataLoader._oversample_last_XX_percent(loader, j) for j in range(trainer.batch_size))
            per_rank.append([int(trainer.batch_size), int(forced)])
        out["quota"].append(per_rank)

    for case in inputs["forced"]:
        loader = _loader(case["initial"], case["patch"])
        locations = {1: np.array([[0, *case["voxel"]]])}
        lbs, _ = nnUNetDataLoader.get_bbox(loader, np.array(case["shape"]), True, locations)
        out["forced"].append([int(v) for v in lbs])

    np.random.seed(0)
    for case in inputs["random"]:
        loader = _loader(case["initial"], case["patch"])
        starts = np.array([nnUNetDataLoader.get_bbox(loader, np.array(case["shape"]), False, None)[0]
                           for _ in range(case["draws"])])
        out["random"].append({"lowest": starts.min(0).tolist(), "highest": starts.max(0).tolist()})
    print(f"[nnunet_sampler] {len(out['initial'])} initial patches, {len(out['quota'])} quotas, "
          f"{len(out['forced'])} forced and {len(out['random'])} random placements")
    save_json(workdir / "nnunet_sampler.json", out)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
