"""Reading a dataset in MSD/AMOS (nnU-Net v1) or nnU-Net v2 layout.

MSD / AMOS layout: ``dataset.json`` with ``"labels": {"0": "background", ...}``,
``"modality": {"0": "CT"}``, ``"training": [{"image": ..., "label": ...}]`` and optionally
``"validation"`` (AMOS: imagesVa/labelsVa) and ``"test"`` (AMOS: imagesTs; images without
labels, each entry a path or ``{"image": path}``).

nnU-Net v2 layout: ``dataset.json`` with ``"channel_names": {"0": "CT"}``,
``"labels": {"background": 0, ...}``, ``"file_ending": ".nii.gz"``; images are
``imagesTr/<case>_0000<file_ending>``, labels ``labelsTr/<case><file_ending>``; test images
(no labels) are ``imagesTs/<case>_0000<file_ending>``.

Test cases are only listed here; :func:`submission_cases` checks that their images exist
before the submission is predicted (``workflow/rules/submission.smk``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from seggrid.errors import SeggridError


@dataclass(frozen=True)
class Case:
    case_id: str
    image: Path
    label: Path | None
    modality: str  # "CT" or "MR" (anything not CT is normalised per image)


@dataclass
class Dataset:
    root: Path
    layout: str                              # "msd" or "nnunetv2"
    labels: dict[int, str]                   # label value -> organ name, 0 = background
    training: list[Case]
    validation: list[Case] = field(default_factory=list)
    channel_name: str = "CT"                 # the one input channel's name in dataset.json
    test: list[Case] = field(default_factory=list)   # images without labels (the submission)
    file_ending: str = ".nii.gz"             # of image and label files (nnU-Net v2: dataset.json's)

    @property
    def foreground_labels(self) -> list[int]:
        return sorted(v for v in self.labels if v != 0)

    def case(self, case_id: str) -> Case:
        for c in self.training + self.validation + self.test:
            if c.case_id == case_id:
                return c
        raise SeggridError(f"{self.root / 'dataset.json'}: no case '{case_id}'")


def _case_id_from_path(path: str, suffix: str = ".nii.gz") -> str:
    name = Path(path).name
    for ending in (suffix, ".nii.gz", ".nii"):
        if name.endswith(ending):
            return name[: -len(ending)]
    return name


def _modality(dataset_modality: str, case_id: str, mr_case_id_min: int | None) -> str:
    if mr_case_id_min is not None:
        digits = re.findall(r"\d+", case_id)
        if digits:
            return "MR" if int(digits[-1]) >= mr_case_id_min else "CT"
    return "CT" if dataset_modality.upper() == "CT" else "MR"


def load_dataset(root: str | Path, mr_case_id_min: int | None = None,
                 modalities: list[str] | None = None) -> Dataset:
    """Parse ``root/dataset.json`` (either layout). Raises SeggridError naming the problem.

    ``modalities`` keeps only cases of those modalities (e.g. ["CT"] for AMOS Task 1).
    Only dataset.json is read here; image files are checked by :mod:`seggrid.data.validate`.
    """
    ds = _load_any(Path(root), mr_case_id_min)
    if modalities:
        keep = set(modalities)
        ds.training = [c for c in ds.training if c.modality in keep]
        ds.validation = [c for c in ds.validation if c.modality in keep]
        ds.test = [c for c in ds.test if c.modality in keep]
        if not ds.training:
            raise SeggridError(f"{ds.root / 'dataset.json'}: no training case of modality {sorted(keep)}")
    return ds


def _load_any(root: Path, mr_case_id_min: int | None) -> Dataset:
    root = Path(root)
    djson = root / "dataset.json"
    if not djson.exists():
        raise SeggridError(f"{djson}: dataset.json not found (is dataset.root right?)")
    try:
        meta = json.loads(djson.read_text())
    except json.JSONDecodeError as exc:
        raise SeggridError(f"{djson}: malformed JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise SeggridError(f"{djson}: top level must be an object")
    if "labels" not in meta or not isinstance(meta["labels"], dict):
        raise SeggridError(f"{djson}: missing or invalid 'labels' object")
    if "channel_names" in meta:
        return _load_v2(root, djson, meta, mr_case_id_min)
    if "training" in meta:
        return _load_msd(root, djson, meta, mr_case_id_min)
    raise SeggridError(f"{djson}: neither MSD layout ('training' list) nor nnU-Net v2 layout "
                       "('channel_names' and 'file_ending')")


def _parse_labels(djson: Path, raw: dict, value_is_key: bool) -> dict[int, str]:
    labels: dict[int, str] = {}
    for k, v in raw.items():
        value, name = (k, v) if value_is_key else (v, k)
        try:
            value = int(value)
        except (TypeError, ValueError):
            raise SeggridError(f"{djson}: label value {value!r} is not an integer") from None
        labels[value] = str(name)
    if 0 not in labels:
        raise SeggridError(f"{djson}: 'labels' has no background (0) entry")
    return labels


def _load_msd(root: Path, djson: Path, meta: dict, mr_case_id_min: int | None) -> Dataset:
    labels = _parse_labels(djson, meta["labels"], value_is_key=True)
    modality = str((meta.get("modality") or {"0": "CT"}).get("0", "CT"))

    def cases(key: str) -> list[Case]:
        entries = meta.get(key) or []
        if not isinstance(entries, list):
            raise SeggridError(f"{djson}: '{key}' must be a list")
        out = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or "image" not in entry:
                raise SeggridError(f"{djson}: '{key}'[{i}] must be an object with 'image' and 'label'")
            if "label" not in entry:
                raise SeggridError(f"{djson}: '{key}'[{i}] has no 'label'")
            cid = _case_id_from_path(entry["image"])
            out.append(Case(cid, root / entry["image"], root / entry["label"],
                            _modality(modality, cid, mr_case_id_min)))
        return out

    def test_cases() -> list[Case]:
        entries = meta.get("test") or []
        if not isinstance(entries, list):
            raise SeggridError(f"{djson}: 'test' must be a list")
        out = []
        for i, entry in enumerate(entries):
            image = entry.get("image") if isinstance(entry, dict) else entry
            if not isinstance(image, str):
                raise SeggridError(f"{djson}: 'test'[{i}] must be an image path or an object with 'image'")
            cid = _case_id_from_path(image)
            out.append(Case(cid, root / image, None, _modality(modality, cid, mr_case_id_min)))
        return out

    training = cases("training")
    if not training:
        raise SeggridError(f"{djson}: 'training' is empty")
    return Dataset(root, "msd", labels, training, cases("validation"), channel_name=modality,
                   test=test_cases())


def _load_v2(root: Path, djson: Path, meta: dict, mr_case_id_min: int | None) -> Dataset:
    labels = _parse_labels(djson, meta["labels"], value_is_key=False)
    channels = meta["channel_names"]
    if not isinstance(channels, dict) or not channels:
        raise SeggridError(f"{djson}: 'channel_names' must be a non-empty object")
    if len(channels) != 1:
        raise SeggridError(f"{djson}: {len(channels)} input channels; seggrid supports one")
    ending = meta.get("file_ending")
    if not isinstance(ending, str):
        raise SeggridError(f"{djson}: missing 'file_ending' (nnU-Net v2 layout)")
    modality = str(next(iter(channels.values())))
    labels_dir = root / "labelsTr"
    if not labels_dir.is_dir():
        raise SeggridError(f"{labels_dir}: folder not found")
    training = []
    for lab in sorted(labels_dir.glob(f"*{ending}")):
        cid = lab.name[: -len(ending)]
        training.append(Case(cid, root / "imagesTr" / f"{cid}_0000{ending}", lab,
                             _modality(modality, cid, mr_case_id_min)))
    n = meta.get("numTraining")
    if not training:
        raise SeggridError(f"{labels_dir}: no label files ending in '{ending}'")
    if isinstance(n, int) and n != len(training):
        raise SeggridError(f"{djson}: numTraining is {n} but {labels_dir} holds {len(training)} labels")
    test = []
    channel0 = f"_0000{ending}"
    for img in sorted((root / "imagesTs").glob(f"*{ending}")):
        if not img.name.endswith(channel0):
            raise SeggridError(f"{img}: a test image must be named <case>{channel0} (seggrid supports one channel)")
        cid = img.name[: -len(channel0)]
        test.append(Case(cid, img, None, _modality(modality, cid, mr_case_id_min)))
    return Dataset(root, "nnunetv2", labels, training, [], channel_name=modality, test=test, file_ending=ending)


SUBMISSION_ENDINGS = (".nii.gz",)


def submission_cases(ds: Dataset) -> list[Case]:
    """The dataset's test cases, checked for a submission: at least one, each image on disk,
    no case id shared with a training or validation case, and a file ending seggrid writes
    (``.nii.gz``). Raises SeggridError naming the file and the problem."""
    djson = ds.root / "dataset.json"
    if not ds.test:
        raise SeggridError(f"{djson}: lists no test images (MSD: 'test'; nnU-Net v2: imagesTs/<case>_0000"
                           f"{ds.file_ending}); set inference.submission: false (or auto)")
    if ds.file_ending not in SUBMISSION_ENDINGS:
        raise SeggridError(f"{djson}: file_ending '{ds.file_ending}': the submission is written as "
                           f"{' or '.join(SUBMISSION_ENDINGS)} only")
    labelled = {c.case_id for c in ds.training + ds.validation}
    seen: set[str] = set()
    for c in ds.test:
        if not c.image.is_file():
            raise SeggridError(f"{c.image}: test image of case '{c.case_id}' (listed in {djson}) not found")
        if c.case_id in labelled or c.case_id in seen:
            raise SeggridError(f"{djson}: test case '{c.case_id}' ({c.image}) has the id of another case")
        seen.add(c.case_id)
    return list(ds.test)


def listed_test_case_ids(root: str | Path, mr_case_id_min: int | None = None,
                         modalities: list[str] | None = None) -> list[str]:
    """Ids of the test cases ``root/dataset.json`` lists (after the modality filter), without
    reading any image; [] when there is no readable dataset.json. For deciding, before any
    data exists (``snakemake -n``), whether the workflow plans a submission."""
    try:
        return [c.case_id for c in load_dataset(root, mr_case_id_min, modalities).test]
    except SeggridError:
        return []
