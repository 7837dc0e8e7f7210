"""Intensity normalisation: nnU-Net 2.8.1's two schemes and which case gets which.

Schemes (facts from ``nnunetv2/preprocessing/normalization/default_normalization_schemes.py``):

- ``ct`` (``CTNormalization``): clip to the training set's foreground 0.5 / 99.5 percentiles,
  subtract the foreground mean, divide by ``max(std, 1e-8)``; statistics from the fingerprint.
- ``zscore`` (``ZScoreNormalization``): subtract this image's mean, divide by
  ``max(std, 1e-8)``. With ``use_mask`` the statistics come from the image's non-zero mask
  (holes filled) and only voxels inside it change (those outside are 0 and stay 0). The
  planner turns the mask on only when cropping to the non-zero box left less than 3/4 of
  the voxels of the median case (``median_relative_size_after_cropping < 3/4`` in
  ``default_experiment_planner.py``); the CT scheme never uses it.

Which scheme (``preprocessing.normalization``):

- ``channel_name`` (default, nnU-Net's rule from ``map_channel_name_to_normalization.py``): the
  dataset's one channel name decides for every case: "CT" (any case) -> ``ct``, anything
  else -> ``zscore``. nnU-Net's AMOS Task 2 conversion (``Dataset219_Amos2022_task2.py``)
  names its channel "either_CT_or_MR", so every case, CT or MR, is z-scored.
- ``ct`` / ``zscore``: that scheme for every case.
- ``per_modality`` (not nnU-Net's): CT cases the CT scheme (statistics of the CT training
  cases only), other cases z-score; the case's modality comes from the dataset (e.g.
  ``dataset.mr_case_id_min``).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from seggrid.errors import SeggridError

OPTIONS = ("channel_name", "ct", "zscore", "per_modality")
EPS = 1e-8
MASK_BELOW_RELATIVE_SIZE = 0.75
# nnU-Net's other channel names select schemes seggrid does not implement
UNSUPPORTED_CHANNEL_SCHEMES = {"nonorm": "NoNormalization", "rescale_to_0_1": "RescaleTo01Normalization",
                               "rgb_to_0_1": "RGBTo01Normalization"}


def scheme_for_channel(channel_name: str) -> str:
    """nnU-Net's mapping of a channel name (case-insensitive) to a scheme: "ct" -> ``ct``,
    "zscore" or any other name -> ``zscore``."""
    key = channel_name.casefold()
    if key in UNSUPPORTED_CHANNEL_SCHEMES:
        raise SeggridError(f"dataset.json: channel name '{channel_name}' selects nnU-Net's "
                           f"{UNSUPPORTED_CHANNEL_SCHEMES[key]}, which seggrid does not implement; "
                           f"set preprocessing.normalization to one of {', '.join(OPTIONS[1:])}")
    return "ct" if key == "ct" else "zscore"


def case_scheme(option: str, channel_name: str, modality: str) -> str:
    """``ct`` or ``zscore`` for one case under ``preprocessing.normalization`` = ``option``."""
    if option == "channel_name":
        return scheme_for_channel(channel_name)
    if option in ("ct", "zscore"):
        return option
    if option == "per_modality":
        return "ct" if modality == "CT" else "zscore"
    raise SeggridError(f"preprocessing.normalization: '{option}' is not one of {', '.join(OPTIONS)}")


def use_mask_for_zscore(fingerprint: dict) -> bool:
    """nnU-Net's planner rule: z-score inside the non-zero mask when the median case kept less
    than 3/4 of its voxels after cropping to the non-zero box."""
    rel = fingerprint.get("median_relative_size_after_crop")
    if rel is None:
        raise SeggridError("fingerprint.json: no 'median_relative_size_after_crop' (written by an older "
                           "seggrid); rerun `seggrid fingerprint`")
    return float(rel) < MASK_BELOW_RELATIVE_SIZE


def ct_statistics(fingerprint: dict, option: str) -> dict | None:
    """Foreground statistics for the CT scheme: over every training case (nnU-Net's statistics of
    the channel) for ``channel_name``/``ct``; over the CT training cases for ``per_modality``."""
    key = "ct_foreground_intensity" if option == "per_modality" else "foreground_intensity"
    if key not in fingerprint:
        raise SeggridError(f"fingerprint.json: no '{key}' (written by an older seggrid); rerun `seggrid fingerprint`")
    return fingerprint[key]


def ct_normalise(image: np.ndarray, stats: dict) -> np.ndarray:
    """CT scheme: float32 ``(clip(image, p0.5, p99.5) - mean) / max(std, 1e-8)``, any shape."""
    out = np.clip(image.astype(np.float32), stats["percentile_00_5"], stats["percentile_99_5"])
    out -= np.float32(stats["mean"])
    out /= np.float32(max(float(stats["std"]), EPS))
    return out


def nonzero_mask(image: np.ndarray) -> np.ndarray:
    """The image's non-zero voxels with enclosed holes filled (nnU-Net's crop mask)."""
    return ndimage.binary_fill_holes(image != 0)


def zscore_normalise(image: np.ndarray, use_mask: bool = False) -> np.ndarray:
    """Per-image z-score, float32; with ``use_mask`` statistics and change inside
    :func:`nonzero_mask` only."""
    out = image.astype(np.float32)
    if use_mask:
        mask = nonzero_mask(image)
        values = out[mask]
        if values.size:
            out[mask] = (values - values.mean()) / max(float(values.std()), EPS)
        return out
    mean, std = out.mean(), max(float(out.std()), EPS)
    out -= mean
    out /= np.float32(std)
    return out


def normalise(image: np.ndarray, scheme: str, ct_stats: dict | None, use_mask: bool) -> np.ndarray:
    """Apply ``scheme`` (``ct`` or ``zscore``) to a (z, y, x) image cropped to its non-zero box."""
    if scheme == "ct":
        if not ct_stats:
            raise SeggridError("preprocess: the CT scheme needs foreground intensity statistics and the "
                               "fingerprint has none (no training case with foreground of that modality)")
        return ct_normalise(image, ct_stats)
    return zscore_normalise(image, use_mask)
