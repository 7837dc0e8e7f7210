"""Image geometry: loading NIfTI into the internal (z, y, x) RAS-aligned array order and back.

Internal convention: arrays are indexed ``[z, y, x]`` where x runs Left->Right, y runs
Posterior->Anterior and z runs Inferior->Superior (RAS axes, reversed so the usually
coarsest axis, z, comes first). Spacing tuples follow the same (z, y, x) order, in mm.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt_mod

from seggrid.errors import SeggridError

#: nnU-Net's one anisotropy threshold (configuration.py): a spacing max/min above it is
#: anisotropic (target spacing rule, separate-axis resampling, "dummy 2D" augmentation)
ANISO_THRESHOLD = 3.0


@dataclass
class Geometry:
    """What is needed to put an internal array back into the file's voxel grid."""

    shape: tuple[int, int, int]        # shape of the array as stored in the file
    affine: np.ndarray                 # 4x4 voxel->world (mm) of the file
    ornt_to_ras: np.ndarray            # nibabel orientation transform file->RAS

    def to_dict(self) -> dict:
        return {"shape": list(self.shape), "affine": self.affine.tolist(),
                "ornt_to_ras": self.ornt_to_ras.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "Geometry":
        return cls(tuple(d["shape"]), np.asarray(d["affine"], dtype=float),
                   np.asarray(d["ornt_to_ras"], dtype=float))


def load_nifti(path: str | Path) -> nib.Nifti1Image:
    """Load a 3D NIfTI image or raise a SeggridError naming the file and the problem."""
    path = Path(path)
    if not path.exists():
        raise SeggridError(f"{path}: file not found")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for bad files
        raise SeggridError(f"{path}: not a readable NIfTI file ({exc})") from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise SeggridError(f"{path}: not a NIfTI image ({type(img).__name__})")
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        img = img.slicer[..., 0]
    elif len(shape) != 3:
        raise SeggridError(f"{path}: expected a 3D image, got shape {tuple(shape)}")
    return img


def read_array(img: nib.Nifti1Image, path: str | Path, dtype=np.float32) -> np.ndarray:
    """Read voxel data, naming the file if it is truncated or corrupt."""
    try:
        return np.asarray(img.dataobj, dtype=dtype)
    except Exception as exc:
        raise SeggridError(f"{path}: cannot read voxel data, file truncated or corrupt ({exc})") from exc


def file_to_internal(img: nib.Nifti1Image, data: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float], Geometry]:
    """Reorient file-order ``data`` to RAS and transpose to (z, y, x).

    Returns the internal array, its spacing (z, y, x) in mm and the geometry to undo it.
    """
    ornt = ornt_mod.io_orientation(img.affine)
    to_ras = ornt_mod.ornt_transform(ornt, ornt_mod.axcodes2ornt(("R", "A", "S")))
    ras = ornt_mod.apply_orientation(data, to_ras)
    zooms = np.asarray(img.header.get_zooms()[:3], dtype=float)
    ras_zooms = np.empty(3)
    for file_axis in range(3):
        ras_zooms[int(to_ras[file_axis, 0])] = zooms[file_axis]
    internal = np.ascontiguousarray(np.transpose(ras, (2, 1, 0)))
    spacing = (float(ras_zooms[2]), float(ras_zooms[1]), float(ras_zooms[0]))
    geom = Geometry(tuple(int(s) for s in data.shape), np.asarray(img.affine, dtype=float), to_ras)
    return internal, spacing, geom


def internal_to_file(array: np.ndarray, geom: Geometry) -> np.ndarray:
    """Inverse of :func:`file_to_internal` for an array with the internal (z, y, x) layout.

    Extra leading axes (e.g. class channels) are kept in front.
    """
    lead = array.ndim - 3
    ras = np.transpose(array, tuple(range(lead)) + tuple(lead + i for i in (2, 1, 0)))
    inverse = ornt_mod.ornt_transform(ornt_mod.axcodes2ornt(("R", "A", "S")),
                                      ornt_mod.io_orientation(geom.affine))
    if lead:
        out = np.stack([ornt_mod.apply_orientation(ch, inverse) for ch in ras.reshape(-1, *ras.shape[lead:])])
        out = out.reshape(array.shape[:lead] + out.shape[1:])
    else:
        out = ornt_mod.apply_orientation(ras, inverse)
    if tuple(out.shape[lead:]) != tuple(geom.shape):
        raise AssertionError(f"geometry round trip gave {out.shape[lead:]}, expected {geom.shape}")
    return np.ascontiguousarray(out)


def save_label_nifti(labels: np.ndarray, geom: Geometry, path: str | Path,
                     reference: nib.Nifti1Image | None = None) -> None:
    """Write a file-order label array with the reference geometry (atomic)."""
    from seggrid.io import atomic_path

    header = reference.header.copy() if reference is not None else None
    img = nib.Nifti1Image(labels.astype(np.uint8), geom.affine, header=header)
    img.set_data_dtype(np.uint8)
    img.header.set_slope_inter(1, 0)
    with atomic_path(path, suffix=".nii.gz") as tmp:
        nib.save(img, str(tmp))


def coarsest_first(spacing: list[float]) -> list[int]:
    """Axis permutation that puts the coarsest axis first and keeps the others' order (nnU-Net's
    transposition: preprocessing stores arrays in this order, the planner plans in it)."""
    worst = max(range(3), key=lambda a: (spacing[a], -a))
    return [worst] + [a for a in range(3) if a != worst]


def internal_shape(geom: Geometry) -> tuple[int, int, int]:
    """Shape of the file's array in the internal (z, y, x) order."""
    ras_shape = [0, 0, 0]
    for file_axis in range(3):
        ras_shape[int(geom.ornt_to_ras[file_axis, 0])] = geom.shape[file_axis]
    return (ras_shape[2], ras_shape[1], ras_shape[0])
