"""The files a prediction leaves for later steps, each small, each read one class at a time.

* Quantised probabilities, ``<case>.npy``: uint8 (C, z, y, x) at the target spacing, value
  ``round(255 p)``; ``seggrid predict`` writes the softmax of its averaged logits
  (:func:`write_quantised_softmax`). A plain ``.npy``, so one class is one contiguous read
  (:func:`read_quantised_class`) and an ensemble never holds a whole map. 16 classes at
  AMOS size (150 x 558 x 558): 0.75 GB, against 1.2 GB for float16 (and 3 GB for float32).
  Quantisation error is at most 1/510 per class, below what changes an argmax in practice.
* Target-spacing labels, ``<case>.npz``: uint8 argmax, compressed; what the postprocessing
  decision reads for out-of-fold predictions (a few MB per case).
* Labels in the input's geometry, ``<case>.nii.gz``: :func:`write_file_labels`, through
  :func:`scores_to_file_labels`, the inverse of preprocessing (``data/preprocess.py``): scores
  resampled to the cropped shape, pasted into the crop box, transposition and orientation undone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from seggrid.errors import SeggridError
from seggrid.data.geometry import Geometry, internal_shape, internal_to_file, load_nifti, save_label_nifti
from seggrid.data.resampling import scores_to_labels, separate_axis

QUANT_MAX = 255


def write_quantised(path: Path, probs: torch.Tensor) -> None:
    """Write (C, z, y, x) probabilities as uint8 ``round(255 p)``, one class at a time."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=tuple(probs.shape))
    for c in range(probs.shape[0]):
        out[c] = (probs[c].float() * QUANT_MAX).round_().clamp_(0, QUANT_MAX).to(torch.uint8).cpu().numpy()
    out.flush()
    del out


def write_quantised_softmax(path: Path, logits: torch.Tensor, background: np.ndarray | None = None) -> None:
    """Write the softmax over axis 0 of (C, z, y, x) ``logits`` as :func:`write_quantised` does,
    one class at a time (``logits`` is left as it is; the peak is three (z, y, x) float32
    volumes). Where ``background`` (bool (z, y, x)) is true, the probabilities are 1 for class 0
    and 0 for the others (voxels the postprocessing removed)."""
    top = logits.amax(0)
    total = torch.zeros_like(top)
    for c in range(logits.shape[0]):
        total += torch.exp(logits[c] - top)
    removed = None
    if background is not None and bool(background.any()):
        removed = torch.from_numpy(background).to(logits.device)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=tuple(logits.shape))
    for c in range(logits.shape[0]):
        prob = torch.exp(logits[c] - top).div_(total)
        if removed is not None:
            prob.masked_fill_(removed, 1.0 if c == 0 else 0.0)
        out[c] = prob.mul_(QUANT_MAX).round_().clamp_(0, QUANT_MAX).to(torch.uint8).cpu().numpy()
        del prob
    out.flush()
    del out


def _header(f, path: Path) -> tuple[int, ...]:
    """Shape of the uint8 (C, z, y, x) array whose .npy header starts at ``f``'s position."""
    try:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
    except ValueError as exc:
        raise SeggridError(f"{path}: not a quantised probability map ({exc})") from exc
    if dtype != np.uint8 or len(shape) != 4 or fortran:
        raise SeggridError(f"{path}: not a quantised probability map (dtype {dtype}, shape {shape})")
    return shape


def quantised_shape(path: Path) -> tuple[int, ...]:
    with open(path, "rb") as f:
        return _header(f, path)


def read_quantised_class(path: Path, c: int) -> np.ndarray:
    """Class ``c`` of a quantised map, uint8 (z, y, x), read without mapping the rest."""
    with open(path, "rb") as f:
        shape = _header(f, path)
        plane = int(np.prod(shape[1:]))
        f.seek(c * plane, 1)
        data = np.fromfile(f, dtype=np.uint8, count=plane)
    if data.size != plane:
        raise SeggridError(f"{path}: truncated (class {c} incomplete)")
    return data.reshape(shape[1:])


def write_target_labels(path: Path, labels: np.ndarray) -> None:
    np.savez_compressed(path, labels=labels.astype(np.uint8))


def read_target_labels(path: Path) -> np.ndarray:
    try:
        with np.load(path) as f:
            return f["labels"]
    except (OSError, KeyError, ValueError) as exc:
        raise SeggridError(f"{path}: not a target-spacing label file ({exc})") from exc


def write_file_labels(path: Path, score_of, n_classes: int, props: dict, reference_image: str | Path) -> None:
    """Labels in the input image's exact geometry from per-class scores at the target spacing
    (``score_of(c)``: probabilities or logits, (z, y, x); None for a class whose probability is
    0 everywhere); the NIfTI header is the input's."""
    labels = scores_to_file_labels(score_of, n_classes, props)
    save_label_nifti(labels, Geometry.from_dict(props["geometry"]), path, load_nifti(reference_image))


def remove_from_logits(logits: torch.Tensor, background: np.ndarray) -> torch.Tensor:
    """(C, z, y, x) logits, in place, where ``background`` (bool (z, y, x): voxels the
    postprocessing removed) is true: class 0 takes the voxel's highest logit, every other class
    its lowest. The logit counterpart of probability (1, 0, ..., 0): background wins there, and
    when the logits are resampled, such a voxel favours background and no foreground class over
    another, so a removed component cannot come back in the file's grid."""
    mask = torch.from_numpy(background).to(logits.device)
    if bool(mask.any()):
        values = logits[:, mask]
        highest, lowest = values.amax(0), values.amin(0)
        del values
        logits[0][mask] = highest
        for c in range(1, logits.shape[0]):
            logits[c][mask] = lowest
    return logits


def to_original_geometry(probs: np.ndarray | torch.Tensor, props: dict) -> np.ndarray:
    """Map (C, ...) class scores at the target spacing (network axis order) to a label array in
    the file's grid (see :func:`scores_to_file_labels`)."""
    return scores_to_file_labels(lambda c: torch.as_tensor(probs[c]), len(probs), props)


def scores_to_file_labels(score_of, n_classes: int, props: dict) -> np.ndarray:
    """Labels in the file's grid from per-class scores at the target spacing.

    ``score_of(c)`` gives class ``c``'s (z, y, x) scores (probabilities or logits, any device),
    or None when the class scores 0 everywhere. As nnU-Net 2.8.1's
    ``convert_predicted_logits_to_segmentation_with_correct_shape``: each class is resampled
    linearly to the cropped shape on the half-voxel grid, with the separate (nearest) axis
    decided from the target spacing to the original one (:func:`separate_axis`, in that
    order), and the argmax is kept as it goes (ties keep the lower class), so the peak is
    about three float32 volumes of the cropped shape whatever the number of classes. The
    result is pasted into the crop box, then the transposition and the orientation are undone."""
    axis = separate_axis(props["spacing"], props["spacing_original"])
    cropped = scores_to_labels(score_of, n_classes, props["shape_cropped"], axis)
    if cropped is None:
        cropped = np.zeros(props["shape_cropped"], np.uint8)
    return cropped_to_file_grid(cropped, props)


def cropped_to_file_grid(cropped: np.ndarray, props: dict) -> np.ndarray:
    """Paste a label array of the cropped shape into the crop box, undo the transposition and
    the orientation: the file's voxel grid."""
    geom = Geometry.from_dict(props["geometry"])
    order = props.get("transpose", [0, 1, 2])
    transposed_shape = [internal_shape(geom)[a] for a in order]
    labels = np.zeros(transposed_shape, dtype=np.uint8)
    labels[tuple(slice(a, b) for a, b in props["crop_box"])] = cropped
    return internal_to_file(labels.transpose(np.argsort(order)), geom)
