"""A plan as a typed, frozen value: what one training job trains and how.

A plan file (``seggrid plan`` writes ``plans/<setting>.json``) and the plan inside a
``model.pt`` are JSON mappings. :meth:`Plan.from_dict` reads one once: it completes the
setting from the schema's defaults (a plan of an older seggrid lacks newer keys), validates it
against the schema (config.complete_plan) and returns a :class:`Plan`, whose fields the engine
reads as attributes; no key lookup with a fallback default is left on it. :meth:`Plan.to_dict`
gives the mapping back, equal to what was read (minus scheduling keys), so a plan's hash
(engine/checkpoint.py ``model_hash``) and the files that record it do not change.

The recipe's defaults live in the schema alone (``definitions.setting``); the fields below
have none, and ``tests/test_plan.py`` keeps :class:`Setting`'s fields equal to the schema's
recipe keys less config.SCHEDULING_KEYS.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Any, Mapping

from seggrid.config import SCHEDULING_KEYS, complete_plan
from seggrid.errors import SeggridError

Triple = tuple[int, int, int]


def _tuples(value: Any) -> Any:
    """Lists (nested) as tuples, so a frozen value holds no mutable sequence."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


@dataclass(frozen=True)
class Setting:
    """One setting's full recipe (see the schema's ``definitions.setting`` for each key)."""
    name: str
    patch: Triple                       # requested patch (z, y, x), voxels
    batch: int                          # GLOBAL batch (all ranks together)
    loss: str
    batch_dice: bool
    perimeter_weight: float
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    lr_schedule: str
    epochs: int
    iterations_per_epoch: int
    val_iterations: int
    oversample_foreground: float
    foreground_sampling: str
    adaptive_gamma: float
    augmentation: str
    cache_cases: int
    cache_replace: float
    norm: str
    deep_supervision_weights: str
    precision: str
    grad_clip: float
    base_features: int
    max_features: int
    deep_supervision: bool
    max_pools_per_axis: int | None
    patch_rounding: str
    checkpoint_every: int
    deterministic: str | bool
    compile: str | bool
    channels_last: bool
    finite_check_every: int
    spatial_partitions: int
    partition_axis: int | None


@dataclass(frozen=True)
class Topology:
    """The network the planner derived from the patch and the spacing (network axis order)."""
    patch_requested: Triple
    patch_effective: Triple             # the patch trained and predicted, voxels
    pools_per_axis: Triple
    strides: tuple[Triple, ...]         # per stage; the first is (1, 1, 1)
    kernels: tuple[Triple, ...]         # per stage
    features: tuple[int, ...]           # channels per stage
    divisor: Triple                     # a patch axis must be a multiple of this
    spacing: tuple[float, float, float]
    max_pools_per_axis: int | None
    patch_rounding: str


@dataclass(frozen=True)
class Partition:
    """Spatial partitioning of every patch into ``parts`` slabs along network axis ``axis``."""
    parts: int
    axis: int
    slab: int                           # voxels per slab along ``axis``


@dataclass(frozen=True)
class Plan:
    setting: Setting
    topology: Topology
    partition: Partition | None
    target_spacing: tuple[float, float, float]      # (z, y, x) of the preprocessed data, mm
    transpose: Triple                   # data axes in network order (coarsest first)
    labels: Mapping[int, str]           # label id -> name, background included
    n_classes: int
    ct_foreground_intensity: Mapping[str, Any] | None

    @classmethod
    def from_dict(cls, plan: dict, source: str) -> Plan:
        """The plan mapping ``plan`` read from ``source`` (named in errors), completed and
        validated once (config.complete_plan)."""
        done = complete_plan(plan, source)
        try:
            setting = {k: _tuples(v) for k, v in done["setting"].items() if k not in SCHEDULING_KEYS}
            part = done.get("partition")
            ct = done.get("ct_foreground_intensity")
            return cls(setting=Setting(**setting),
                       topology=Topology(**{k: _tuples(v) for k, v in done["topology"].items()}),
                       partition=Partition(**part) if part else None,
                       target_spacing=tuple(done["target_spacing"]), transpose=tuple(done["transpose"]),
                       labels=MappingProxyType({int(k): v for k, v in done["labels"].items()}),
                       n_classes=int(done["n_classes"]),
                       ct_foreground_intensity=None if ct is None else MappingProxyType(copy.deepcopy(ct)))
        except (KeyError, TypeError) as e:
            raise SeggridError(f"{source}: not a complete plan ({type(e).__name__}: {e})") from None

    def to_dict(self) -> dict:
        """The JSON mapping of this plan (lists, string label ids), as a plan file holds it."""
        def plain(value):
            if isinstance(value, tuple):
                return [plain(v) for v in value]
            if isinstance(value, (dict, MappingProxyType)):
                return {k: plain(v) for k, v in value.items()}
            return value
        return {"setting": plain(asdict(self.setting)), "topology": plain(asdict(self.topology)),
                "partition": None if self.partition is None else asdict(self.partition),
                "target_spacing": list(self.target_spacing), "transpose": list(self.transpose),
                "labels": {str(k): v for k, v in self.labels.items()}, "n_classes": self.n_classes,
                "ct_foreground_intensity": None if self.ct_foreground_intensity is None
                else plain(dict(self.ct_foreground_intensity))}

    def with_setting(self, **changes) -> Plan:
        """This plan with some setting keys changed (tests and benchmarks; a workflow plan
        comes from ``seggrid plan``)."""
        plan = self.to_dict()
        return Plan.from_dict({**plan, "setting": {**plan["setting"], **changes}}, f"plan of '{self.setting.name}'")


def plan_from_topology(topology: dict, n_classes: int, name: str = "ad hoc", **setting) -> Plan:
    """A complete plan around a planned ``topology`` (engine/planner.py ``plan_topology``) with
    the recipe's defaults except ``setting``: for benchmarks and tests that build a network or a
    loss without a dataset (no partitions, network axis order, labels ``class_<id>``)."""
    return Plan.from_dict({"setting": {"name": name, **setting}, "topology": topology, "partition": None,
                           "target_spacing": list(topology["spacing"]), "transpose": [0, 1, 2],
                           "labels": {str(c): f"class_{c}" for c in range(n_classes)}, "n_classes": n_classes,
                           "ct_foreground_intensity": None}, f"plan '{name}'")
