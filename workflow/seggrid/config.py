"""Config loading and validation (JSON schema with defaults + cross-reference checks).

A *setting* is a named dict of overrides of ``recipe``; :func:`resolve_setting` gives the
full recipe. A table *row* names one or more settings and the folds whose models are
averaged; its prediction set id (:func:`prediction_set_id`) is shared by identical rows,
so a setting compared in two tables is trained, predicted and evaluated once.

Seeds are a grid axis: every row that does not use all folds (a single-fold row of Tables
1-3) is trained once per *training seed* (``training_seeds``, top level or per table; default
the base ``seed``). A model trained with the base seed lives in ``train/<setting>/fold_<f>``
and its prediction set is ``<models>__f<folds>``; one trained with another seed S lives in
``train/<setting>/seed_S/fold_<f>`` and its prediction set is ``<models>__f<folds>__sS``.
Every random stream of fold f trained with seed S is keyed on the tuple (S, f, ...) through
``numpy.random.SeedSequence`` (engine/device.py ``stream_key``), so seeds and folds never share
a stream. 5-fold rows keep the base seed.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft7Validator, validators

from seggrid.errors import SeggridError

#: a table with at least this many rows gets a bootstrap rank column and a rank plot
MIN_RANK_ROWS = 3
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "config.schema.yaml"


def _extend_with_defaults(validator_class):
    validate_props = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if isinstance(sub, dict) and "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_props(validator, properties, instance, schema)

    return validators.extend(validator_class, {"properties": set_defaults})


_DefaultFilling = _extend_with_defaults(Draft7Validator)


@functools.lru_cache(maxsize=1)
def _schema() -> dict:
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    keys = schema["definitions"]["setting"]["properties"]
    schema["properties"]["recipe"]["properties"] = copy.deepcopy(keys)
    for sub in keys.values():
        sub.pop("default", None)
    return schema


def load_schema() -> dict:
    """The config schema (a copy: callers may change it; the file is parsed once per process).
    Every recipe key is written once, in ``definitions.setting`` (type, description, default);
    ``properties.recipe`` gets a copy of them with their defaults, and a setting's keys lose
    theirs (a setting only overrides the recipe)."""
    return copy.deepcopy(_schema())


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def validate_config(config: dict, source: str = "config") -> dict:
    """Fill defaults in place and check the config; raise SeggridError naming key and problem."""
    if not isinstance(config, dict):
        raise SeggridError(f"{source}: the config must be a mapping, got {type(config).__name__}")
    schema = load_schema()
    errors = sorted(_DefaultFilling(schema).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"key '{_key(e.absolute_path)}': {e.message}" for e in errors]
        raise SeggridError(f"{source}: invalid config:\n  " + "\n  ".join(lines))
    _check_references(config, source)
    return config


#: the losses whose terms reduce over a sample's slabs (engine/spatial.py): no TopK (it ranks
#: all voxels of a sample) and no perimeter term (its erosion would need a halo). Here, not in
#: engine/losses.py, so that checking a config (snakemake -n) does not import torch.
PARTITIONABLE_LOSSES = ("dice_ce", "dice_focal")


def default_axis(patch: list[int]) -> int:
    """The patch axis spatial partitions split by default: the longest (the first of equals)."""
    return max(range(3), key=lambda a: (patch[a], -a))


def batch_split_problem(batch: int, gpus: int, parts: int = 1) -> str | None:
    """Why a global batch of ``batch`` samples cannot be shared by ``gpus`` ranks in spatial
    groups of ``parts`` (each data-parallel group needs at least one sample); None when it can.
    The one check, run on the config (every setting) and by the training job (its ranks)."""
    groups = gpus // parts
    if gpus > 1 and batch < groups:
        return (f"{gpus} GPUs but global batch {batch}; " + ("each GPU needs at least one sample" if parts == 1
                else f"each of the {groups} spatial groups needs at least one sample"))
    return None


def partition_problems(s: dict) -> list[str]:
    """Why a resolved setting cannot train on ``spatial_partitions`` slabs (empty: it can).
    The slab size against the network's strides is checked by the planner (spatial.py)."""
    parts, problems = s["spatial_partitions"], []
    if s["gpus"] < parts or s["gpus"] % parts:
        problems.append(f"{parts} slabs need gpus = data-parallel groups x {parts}, got gpus {s['gpus']}")
    if s["norm"] != "instance":
        problems.append(f"needs norm: instance (statistics reduced over the slabs), got {s['norm']}")
    if s["loss"] not in PARTITIONABLE_LOSSES:
        problems.append(f"loss {s['loss']} cannot be reduced over slabs; use one of {list(PARTITIONABLE_LOSSES)}")
    if s.get("compile") is True:
        problems.append("compile: true is not supported with spatial partitions (auto turns it off there)")
    patch = s["patch"]
    axis = default_axis(patch) if s.get("partition_axis") is None else s["partition_axis"]
    if patch[axis] % parts:
        problems.append(f"patch {list(patch)}: axis {axis} ({patch[axis]} voxels) does not split into {parts} "
                        "equal slabs")
    return problems


def _check_references(config: dict, source: str) -> None:
    settings = config["settings"]
    problems = []
    for name in settings:
        s = resolve_setting(config, name)
        if s["max_features"] < s["base_features"]:
            problems.append(f"key 'settings.{name}.max_features': smaller than base_features")
        if s["gpus"] > config["cluster"]["gpus_per_node"] and s["gpus"] % config["cluster"]["gpus_per_node"]:
            problems.append(f"key 'settings.{name}.gpus': {s['gpus']} GPUs do not split into whole nodes of "
                            f"cluster.gpus_per_node = {config['cluster']['gpus_per_node']}")
        parts = s.get("spatial_partitions", 1)
        if problem := batch_split_problem(s["batch"], s["gpus"], parts):
            problems.append(f"key 'settings.{name}.gpus': {problem}")
        if parts > 1:
            problems += [f"key 'settings.{name}.spatial_partitions': {p}" for p in partition_problems(s)]
    for tname, table in config["tables"].items():
        all_folds = list(range(config["folds"]))
        if "training_seeds" in table and all(row_folds(config, r) == all_folds for r in table["rows"]
                                             if ("setting" in r) != ("models" in r)):
            problems.append(f"key 'tables.{tname}.training_seeds': the table has no single-fold row "
                            f"(a 5-fold row keeps the base seed {config['seed']})")
        for i, row in enumerate(table["rows"]):
            where = f"tables.{tname}.rows.{i}"
            if ("setting" in row) == ("models" in row):
                problems.append(f"key '{where}': give exactly one of 'setting' or 'models'")
                continue
            for m in row_models(row):
                if m not in settings:
                    problems.append(f"key '{where}': unknown setting '{m}'")
            folds = row.get("folds", [0])
            if folds != "all" and any(f >= config["folds"] for f in folds):
                problems.append(f"key '{where}.folds': fold out of range 0..{config['folds'] - 1}")
    slices_table = config["figures"].get("slices_table")
    if slices_table is not None and slices_table not in config["tables"]:
        problems.append(f"key 'figures.slices_table': unknown table '{slices_table}'")
    for name in config["figures"]["fig1_settings"]:
        if name not in settings:
            problems.append(f"key 'figures.fig1_settings': unknown setting '{name}'")
    if problems:
        raise SeggridError(f"{source}: invalid config:\n  " + "\n  ".join(problems))


def load_config(*paths: str | Path, overrides: dict | None = None) -> dict:
    """Load YAML config file(s), later ones updating earlier ones (top-level keys), and validate."""
    config: dict[str, Any] = {}
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise SeggridError(f"{p}: config file not found")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise SeggridError(f"{p}: not valid YAML ({exc})") from exc
        if not isinstance(data, dict):
            raise SeggridError(f"{p}: the config must be a mapping")
        config.update(data)
    config.update(overrides or {})
    return validate_config(config, source=", ".join(str(p) for p in paths) or "config")


def resolve_setting(config: dict, name: str) -> dict:
    """The full training recipe of setting ``name`` (recipe defaults + its overrides)."""
    if name not in config["settings"]:
        raise SeggridError(f"config: unknown setting '{name}'")
    recipe = copy.deepcopy(config["recipe"])
    recipe.update(copy.deepcopy(config["settings"][name]))
    recipe["name"] = name
    return recipe


# Recipe keys that say only where and how a training is scheduled, not what is trained: they
# stay out of the plan, its hash and the `plan` rule's params, so changing them reruns nothing
# that is done and a half-done training resumes from its checkpoint. `gpus` only splits the
# GLOBAL batch (and its foreground quota, engine/sampling.py) over ranks; the train job gets
# it from the workflow (`train --gpus`), not from the plan.
SCHEDULING_KEYS = ("gpus", "threads", "mem_mb", "runtime_min")


def model_setting(setting: dict) -> dict:
    """``setting`` without its scheduling keys (:data:`SCHEDULING_KEYS`): what a plan records."""
    return {k: v for k, v in setting.items() if k not in SCHEDULING_KEYS}


def complete_setting(setting: dict) -> dict:
    """A resolved setting with any recipe key it lacks filled from the schema's defaults (so a
    plan made from an older or hand-written setting JSON still names every registry entry)."""
    recipe = load_schema()["properties"]["recipe"]["properties"]
    out = {k: copy.deepcopy(v["default"]) for k, v in recipe.items() if "default" in v}
    out.update(copy.deepcopy(setting))
    return out


def complete_plan(plan: dict, source: str) -> dict:
    """A plan read from disk (plan JSON or a model's) with its setting completed from the
    recipe defaults (:func:`complete_setting`: a plan of an older seggrid lacks newer keys) and
    checked against the recipe's schema, once, so the engine reads every key directly."""
    if not isinstance(plan, dict) or not isinstance(plan.get("setting"), dict):
        raise SeggridError(f"{source}: not a plan (no 'setting' mapping)")
    # scheduling keys stay out of a plan (model_setting): a job gets them from the workflow
    setting = {k: v for k, v in complete_setting(plan["setting"]).items()
               if k not in SCHEDULING_KEYS or k in plan["setting"]}
    schema = load_schema()
    recipe = {**{k: v for k, v in schema["properties"]["recipe"].items() if k != "default"},
              "definitions": schema["definitions"]}
    keep = {k: setting[k] for k in recipe["properties"] if k in setting}
    errors = sorted(Draft7Validator(recipe).iter_errors(keep), key=lambda e: list(e.absolute_path))
    if errors:
        raise SeggridError(f"{source}: invalid plan setting: " + "; ".join(
            f"key '{_key(e.absolute_path)}': {e.message}" for e in errors))
    return {**plan, "setting": setting}


def row_models(row: dict) -> list[str]:
    return [row["setting"]] if "setting" in row else list(row["models"])


def row_folds(config: dict, row: dict) -> list[int]:
    folds = row.get("folds", [0])
    return list(range(config["folds"])) if folds == "all" else sorted(set(folds))


def base_seed(config: dict) -> int:
    """The top-level ``seed`` (the schema's default when a hand-written config lacks it)."""
    return config["seed"] if "seed" in config else load_schema()["properties"]["seed"]["default"]


def table_seeds(config: dict, table: dict) -> list[int]:
    """The training seeds of a table's single-fold rows: the table's ``training_seeds``, else
    the top-level ``training_seeds``, else the base ``seed`` alone."""
    seeds = table.get("training_seeds")
    if seeds is None:
        seeds = config.get("training_seeds")
    return [base_seed(config)] if seeds is None else list(seeds)


def row_seeds(config: dict, table: dict, row: dict) -> list[int]:
    """The training seeds of one row: the table's seeds, or the base seed for a row whose
    models use every fold (a 5-fold model keeps one seed)."""
    if row_folds(config, row) == list(range(config["folds"])):
        return [base_seed(config)]
    return table_seeds(config, table)
