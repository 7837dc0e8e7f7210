"""nnU-Net 2.8.1 side of the "normalisation" component (run by normalisation.py).

    nnunet_python benchmarks/conformance/recipe/nnunet_normalisation.py WORKDIR

For every image of WORKDIR/normalisation_inputs.npz: nnU-Net's ``crop_to_nonzero`` on (image,
label) as ``DefaultPreprocessor`` calls it, then on the cropped image ``CTNormalization`` (the
properties of normalisation_inputs.json), ``ZScoreNormalization`` with ``use_mask_for_norm``
False and True (its mask: the cropped label >= 0). Writes nnunet_normalisation.npz
(``<image>_ct``, ``<image>_zscore``, ``<image>_zscore_mask``) and nnunet_normalisation.json (the
crop boxes, ``get_normalization_scheme``'s class name for every channel name).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_json, load_npz, nnunet_import_setup, save_json, save_npz  # noqa: E402


def main(workdir: Path) -> None:
    nnunet_import_setup(workdir)
    from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero
    from nnunetv2.preprocessing.normalization.default_normalization_schemes import (CTNormalization,
                                                                                    ZScoreNormalization)
    from nnunetv2.preprocessing.normalization.map_channel_name_to_normalization import get_normalization_scheme

    arrays = load_npz(workdir / "normalisation_inputs.npz")
    spec = load_json(workdir / "normalisation_inputs.json")
    props = spec["properties"]
    out, boxes = {}, {}
    for name in sorted({k.rsplit("_", 1)[0] for k in arrays}):
        data, seg, bbox = crop_to_nonzero(arrays[f"{name}_img"][None].copy(), arrays[f"{name}_seg"][None].copy())
        image, label = data[0], seg[0]
        out[f"{name}_ct"] = CTNormalization(False, props).run(image.copy(), label)
        out[f"{name}_zscore"] = ZScoreNormalization(False, props).run(image.copy(), label)
        out[f"{name}_zscore_mask"] = ZScoreNormalization(True, props).run(image.copy(), label)
        boxes[name] = [[int(a), int(b)] for a, b in bbox]
        print(f"[nnunet_normalisation] {name}: box {boxes[name]}, {int((label < 0).sum())} voxels outside the mask")
    save_npz(workdir / "nnunet_normalisation.npz", **out)
    save_json(workdir / "nnunet_normalisation.json", {
        "boxes": boxes, "schemes": {n: get_normalization_scheme(n).__name__ for n in spec["channel_names"]}})


if __name__ == "__main__":
    main(Path(sys.argv[1]))
