"""One source for the recipe: every key written once in the schema, the schema's enums equal
the registries' names, plans are completed and checked once, and the export's batch_dice
follows the plan."""

from __future__ import annotations

import json

import pytest
import yaml

from seggrid.config import SCHEMA_PATH, complete_plan, load_schema
from seggrid.errors import SeggridError


def test_every_recipe_key_is_written_once_and_the_recipe_gets_its_defaults():
    raw = yaml.safe_load(SCHEMA_PATH.read_text())
    assert "properties" not in raw["properties"]["recipe"]                  # no second list in the file
    schema = load_schema()
    keys = schema["definitions"]["setting"]["properties"]
    recipe = schema["properties"]["recipe"]["properties"]
    assert set(keys) == set(recipe) and len(keys) == 39
    assert all("default" in v for v in recipe.values()) and not any("default" in v for v in keys.values())
    assert recipe["batch_dice"]["default"] is False


def test_schema_enums_equal_the_registries():
    from seggrid.engine.augment import PRESETS
    from seggrid.engine.losses import LOSSES
    from seggrid.engine.network import DS_WEIGHTS, NORMS
    from seggrid.engine.recipe import LR_SCHEDULES, OPTIMIZERS, PRECISIONS

    keys = load_schema()["definitions"]["setting"]["properties"]
    for key, registry in (("loss", LOSSES), ("optimizer", OPTIMIZERS), ("lr_schedule", LR_SCHEDULES),
                          ("precision", PRECISIONS), ("augmentation", PRESETS), ("norm", NORMS),
                          ("deep_supervision_weights", DS_WEIGHTS)):
        assert sorted(keys[key]["enum"]) == sorted(registry), key


def test_a_plan_is_completed_and_checked_once(tmp_path):
    plan = {"setting": {"name": "old", "loss": "dice_ce"}, "topology": {}}
    done = complete_plan(plan, "old.json")
    assert done["setting"]["batch_dice"] is False and done["setting"]["norm"] == "instance"
    assert "gpus" not in done["setting"] and "mem_mb" not in done["setting"]     # scheduling keys: not a plan's
    with pytest.raises(SeggridError, match=r"bad\.json: invalid plan setting: key 'loss': 'dice_xx' is not one of"):
        complete_plan({"setting": {"loss": "dice_xx"}}, "bad.json")
    with pytest.raises(SeggridError, match="x.json: not a plan"):
        complete_plan({"topology": {}}, "x.json")


def test_export_batch_dice_follows_the_plan_and_the_schema(pipeline, tmp_path):
    """The export used to write batch_dice true when a model's plan lacked the key (the schema
    says false): a plan without it now exports false, one with true exports true."""
    import torch

    from conftest import run_cli

    ckpt = torch.load(pipeline["train"] / "model.pt", weights_only=False)
    for value in (None, True):
        if value is None:
            ckpt["plan"]["setting"].pop("batch_dice")
        else:
            ckpt["plan"]["setting"]["batch_dice"] = value
        model = tmp_path / f"model_{value}.pt"
        torch.save(ckpt, model)
        out = tmp_path / f"export_{value}"
        assert run_cli("export-nnunet", "--model", model, "--preprocessed", pipeline["preprocessed"], "--out", out) == 0
        conf = json.loads((out / "plans.json").read_text())["configurations"]["3d_fullres"]
        assert conf["batch_dice"] is bool(value)
