"""Recipe component "normalisation": intensity normalisation and its crop, ours vs nnU-Net 2.8.1.

Ours (``seggrid.data.fingerprint.nonzero_bbox``/``crop``, ``seggrid.data.normalization``
``ct_normalise``, ``zscore_normalise``, ``scheme_for_channel``) against nnU-Net's own
(``nnunet_normalisation.py``): ``crop_to_nonzero`` (the crop box, and the -1 it writes into the
label outside the hole-filled non-zero mask), then ``CTNormalization`` (given foreground
intensity properties), ``ZScoreNormalization`` without and with ``use_mask_for_norm`` (mask
``seg >= 0``) on the cropped image, as ``DefaultPreprocessor`` calls them; and
``get_normalization_scheme`` for a list of channel names (ours must pick the same scheme, or
refuse one seggrid does not implement).

Images (seeded): a CT-like box of integer HU values (nothing cropped); an MR-like ellipsoid of
positive values in a zero margin with a zero hole inside (cropped; the hole is filled, so it is
inside the mask); an image whose non-zero region is two separate blobs. Rule (``match``): the
same crop box, every normalised image within 1e-5 (values O(1)), the same scheme per name.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from common import (load_json, load_npz, max_abs_diff, protocol_compare, result, run_standalone, save_json,
                    save_npz)

TOLERANCE = 1e-5
PROPERTIES = {"mean": 100.5, "std": 210.25, "percentile_00_5": -950.0, "percentile_99_5": 1450.0,
              "median": 90.0, "min": -1024.0, "max": 3000.0}
CHANNEL_NAMES = ["CT", "ct", "cT", "MR", "T2", "either_CT_or_MR", "zscore", "ZScore", "noNorm", "rescale_to_0_1",
                 "rgb_to_0_1", ""]
SCHEMES = ("ct", "zscore", "zscore_mask")
FIXTURE_FILES = ["normalisation_inputs.npz", "normalisation_inputs.json", "nnunet_normalisation.npz",
                 "nnunet_normalisation.json"]


def _ellipsoid(shape, centre, radii) -> np.ndarray:
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0


def make_images(seed: int = 0) -> dict[str, np.ndarray]:
    """name_img (float32) and name_seg (int16, labels 0..2) for the three images."""
    rng = np.random.default_rng(seed)
    out = {}
    shape = (12, 20, 18)
    out["ct_box_img"] = rng.integers(-1100, 2000, shape).astype(np.float32)
    out["ct_box_seg"] = np.zeros(shape, np.int16)
    out["ct_box_seg"][_ellipsoid(shape, (6, 10, 9), (4, 6, 5))] = 1
    shape = (14, 22, 20)
    body = _ellipsoid(shape, (7, 11, 10), (5, 8, 6))
    hole = _ellipsoid(shape, (7, 11, 10), (1.5, 2, 2))
    img = np.where(body, rng.uniform(20, 900, shape), 0.0)
    img[hole] = 0.0
    out["mr_brain_img"] = np.round(img).astype(np.float32)
    out["mr_brain_seg"] = (_ellipsoid(shape, (7, 12, 11), (2, 3, 3)) & ~hole).astype(np.int16) * 2
    shape = (10, 24, 16)
    blobs = _ellipsoid(shape, (4, 5, 5), (3, 4, 4)) | _ellipsoid(shape, (6, 18, 11), (3, 4, 3))
    out["two_blobs_img"] = np.where(blobs, rng.uniform(1, 500, shape), 0.0).round().astype(np.float32)
    out["two_blobs_seg"] = (_ellipsoid(shape, (6, 18, 11), (2, 2, 2))).astype(np.int16)
    return out


def prepare(workdir: Path, small: bool = False) -> None:
    """Write the images and the properties (``small`` changes nothing: they are tiny)."""
    save_npz(workdir / "normalisation_inputs.npz", **make_images())
    save_json(workdir / "normalisation_inputs.json", {"properties": PROPERTIES, "channel_names": CHANNEL_NAMES})


def ours(img: np.ndarray, properties: dict) -> tuple[list[list[int]], dict[str, np.ndarray]]:
    from seggrid.data.fingerprint import crop, nonzero_bbox
    from seggrid.data.normalization import ct_normalise, zscore_normalise

    box = nonzero_bbox(img)
    cropped = crop(img, box)
    return box, {"ct": ct_normalise(cropped.copy(), properties), "zscore": zscore_normalise(cropped.copy(), False),
                 "zscore_mask": zscore_normalise(cropped.copy(), True)}


def our_scheme(name: str) -> str:
    from seggrid.data.normalization import scheme_for_channel
    from seggrid.errors import SeggridError

    try:
        return {"ct": "CTNormalization", "zscore": "ZScoreNormalization"}[scheme_for_channel(name)]
    except SeggridError:
        return "refused"


def check(workdir: Path) -> dict:
    """Ours on the images of ``workdir`` against nnU-Net's results recorded there."""
    arrays = load_npz(workdir / "normalisation_inputs.npz")
    spec = load_json(workdir / "normalisation_inputs.json")
    theirs, meta = load_npz(workdir / "nnunet_normalisation.npz"), load_json(workdir / "nnunet_normalisation.json")
    rows, ok = {}, True
    for name in meta["boxes"]:
        box, mine = ours(arrays[f"{name}_img"], spec["properties"])
        row = {"box": {"ours": box, "nnunet": meta["boxes"][name]}, "box_same": box == meta["boxes"][name]}
        if row["box_same"]:
            row["max_abs_diff"] = {s: max_abs_diff(mine[s], theirs[f"{name}_{s}"]) for s in SCHEMES}
            row["match"] = max(row["max_abs_diff"].values()) <= TOLERANCE
        else:
            row["match"] = False
        ok = ok and row["match"]
        rows[name] = row
    schemes = {n: {"ours": our_scheme(n), "nnunet": t} for n, t in meta["schemes"].items()}
    implemented = ("CTNormalization", "ZScoreNormalization")
    differences = {n: s for n, s in schemes.items() if s["ours"] != s["nnunet"]
                   and not (s["ours"] == "refused" and s["nnunet"] not in implemented)}
    return result("normalisation", ok and not differences, tolerance=TOLERANCE, images=rows,
                  schemes=schemes, differences=differences)


compare = protocol_compare(prepare, check, __file__, "[normalisation] nnU-Net's crop_to_nonzero, CTNormalization, ZScoreNormalization")


if __name__ == "__main__":
    run_standalone(compare, "normalisation", sys.argv[1:])
