"""The plan as a typed, frozen value (workflow/seggrid/plan.py)."""

import dataclasses
import json

import pytest

from seggrid.config import SCHEDULING_KEYS, load_schema
from seggrid.engine.checkpoint import model_hash
from seggrid.errors import SeggridError
from seggrid.io import config_hash
from seggrid.plan import Plan, Setting


def test_setting_fields_are_the_schemas_recipe_keys_without_scheduling_keys():
    recipe = load_schema()["properties"]["recipe"]["properties"]
    assert {f.name for f in dataclasses.fields(Setting)} == (set(recipe) - set(SCHEDULING_KEYS)) | {"name"}
    # no default in the dataclass: the schema is the one source of the recipe's defaults
    assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(Setting))


def test_a_plan_file_round_trips_and_keeps_its_hash(pipeline):
    raw = json.loads(pipeline["plan"].read_text())
    plan = Plan.from_dict(raw, "plan.json")
    assert plan.to_dict() == raw                      # a workflow plan: complete, no scheduling keys
    assert model_hash(plan) == config_hash(raw)       # checkpoints of earlier runs still resume
    assert plan.topology.patch_effective == tuple(raw["topology"]["patch_effective"])
    assert plan.labels[1] == raw["labels"]["1"]


def test_a_plan_is_frozen_and_holds_no_mutable_sequence(pipeline):
    plan = Plan.from_dict(json.loads(pipeline["plan"].read_text()), "plan.json")
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.setting.batch = 4
    with pytest.raises(TypeError):
        plan.labels[1] = "x"
    assert isinstance(plan.topology.strides, tuple) and isinstance(plan.topology.strides[0], tuple)


def test_scheduling_keys_and_missing_keys(pipeline):
    raw = json.loads(pipeline["plan"].read_text())
    with_gpus = {**raw, "setting": {**raw["setting"], "gpus": 4, "threads": 3}}
    assert model_hash(Plan.from_dict(with_gpus, "x.json")) == model_hash(Plan.from_dict(raw, "x.json"))
    older = {**raw, "setting": {k: v for k, v in raw["setting"].items() if k != "channels_last"}}
    default = load_schema()["properties"]["recipe"]["properties"]["channels_last"]["default"]
    assert Plan.from_dict(older, "old.json").setting.channels_last is default
    with pytest.raises(SeggridError, match="broken.json: not a complete plan"):
        Plan.from_dict({k: v for k, v in raw.items() if k != "topology"}, "broken.json")
    with pytest.raises(SeggridError, match="bad.json: invalid plan setting: key 'loss'"):
        Plan.from_dict({**raw, "setting": {**raw["setting"], "loss": "dice_xx"}}, "bad.json")


def test_with_setting_changes_one_key_and_validates(pipeline):
    plan = Plan.from_dict(json.loads(pipeline["plan"].read_text()), "plan.json")
    assert plan.with_setting(epochs=3).setting.epochs == 3 and plan.setting.epochs != 3
    with pytest.raises(SeggridError, match="key 'epochs'"):
        plan.with_setting(epochs="three")
