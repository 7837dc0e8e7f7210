"""Config schema: defaults, and errors that name the key and the problem."""

from __future__ import annotations

import copy

import pytest
import yaml

from conftest import ROOT
from seggrid.config import load_config, resolve_setting, validate_config
from seggrid.layout import (parse_prediction_set_id, prediction_set_seed, prediction_sets, row_prediction_sets,
                            single_model_set, training_dir, training_jobs)
from seggrid.errors import SeggridError

DEMO = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def demo():
    return copy.deepcopy(DEMO)


def test_demo_config_is_valid_and_fills_defaults():
    cfg = validate_config(demo())
    assert cfg["metrics"]["nsd_tolerance_mm"]["liver"] == 5
    assert cfg["recipe"]["momentum"] == 0.99 and cfg["recipe"]["grad_clip"] == 12
    assert cfg["recipe"]["perimeter_weight"] == 0.1 and cfg["recipe"]["precision"] == "auto"
    s = resolve_setting(cfg, "p32_bs2_focal")
    assert (s["batch"], s["loss"], s["patch"], s["epochs"]) == (2, "dice_focal", [16, 32, 32], 20)
    s = resolve_setting(cfg, "p32_bs2_topk")
    assert (s["batch"], s["loss"], s["patch"], s["epochs"]) == (2, "dice_topk", [16, 32, 32], 20)


def test_shared_settings_train_once():
    cfg = validate_config(demo())
    jobs = training_jobs(cfg)
    assert len(jobs) == len(set(jobs))
    assert ("p24_bs2_ce", 0, 12345) in jobs and ("p24_bs8_ce", 4, 12345) in jobs
    # 10 single-fold settings (Tables 1-3; model B's fold 0 is Table 3's Focal row) + 4 more
    # folds of A (the bs 8 row of Table 2) + 4 more folds of B, + Table 3's 4 rows with its 2 other seeds
    seeds = cfg["tables"]["table3"]["training_seeds"]
    assert seeds[0] == cfg["seed"] and len(seeds) == 3 and "training_seeds" not in cfg["tables"]["table1"]
    assert len(jobs) == 10 + 4 + 4 + 4 + 4
    for extra in seeds[1:]:
        assert {s for s, f, seed in jobs if seed == extra} == {"p32_bs2_ce", "p32_bs2_focal", "p32_bs2_topk",
                                                               "p32_bs2_perimeter"}
    # 10 single-fold rows + A, B and A & B + Table 3's 2 other seeds
    assert len(prediction_sets(cfg)) == 10 + 3 + 4 + 4
    # p32_bs2_ce (Table 1 with one seed, Table 3 with three) is trained once per seed
    assert [j for j in jobs if j[0] == "p32_bs2_ce"] == [("p32_bs2_ce", 0, s) for s in seeds]
    # model B's fold 0 with the base seed is Table 3's Focal row, trained once
    assert [j for j in jobs if j[0] == "p32_bs2_focal"] == (
        [("p32_bs2_focal", 0, s) for s in seeds] + [("p32_bs2_focal", f, 12345) for f in range(1, 5)])
    # p24_bs8_ce (a Table 2 row and model A's fold 0) is trained once per fold
    assert [j for j in jobs if j[0] == "p24_bs8_ce"] == [("p24_bs8_ce", f, 12345) for f in range(5)]


def test_training_seeds_make_one_prediction_set_per_seed_and_five_fold_rows_keep_one():
    cfg = demo()
    cfg["training_seeds"] = [12345, 7]            # every table's single-fold rows...
    cfg["tables"]["table2"]["training_seeds"] = [3, 4, 5]   # ...unless the table gives its own
    del cfg["tables"]["table3"]["training_seeds"]
    validate_config(cfg)
    t1, t2, t4 = (cfg["tables"][t] for t in ("table1", "table2", "table4"))
    assert row_prediction_sets(cfg, t1, t1["rows"][0]) == [(12345, "p24_bs2_ce__f0"), (7, "p24_bs2_ce__f0__s7")]
    assert [p for _, p in row_prediction_sets(cfg, t2, t2["rows"][1])] == [
        "p24_bs4_ce__f0__s3", "p24_bs4_ce__f0__s4", "p24_bs4_ce__f0__s5"]
    assert row_prediction_sets(cfg, t4, t4["rows"][2]) == [(12345, "p24_bs8_ce+p32_bs2_focal__f0-1-2-3-4")]
    # the base seed keeps the plain paths; another seed adds a seed_<S> component
    assert training_dir(cfg, "p24_bs2_ce", 0, 12345) == "train/p24_bs2_ce/fold_0"
    assert training_dir(cfg, "p24_bs2_ce", 0, 7) == "train/p24_bs2_ce/seed_7/fold_0"
    assert parse_prediction_set_id("a+b__f0-1__s7") == (["a", "b"], [0, 1])
    assert prediction_set_seed(cfg, "a+b__f0-1__s7") == 7 and prediction_set_seed(cfg, "a+b__f0-1") == 12345
    assert single_model_set(cfg, "a+b__f0-1__s7", "b") == "b__f0-1__s7"
    jobs = training_jobs(cfg)
    # Tables 1 and 3 (7 settings, Table 1 and 3 share one) x 2 seeds, Table 2's 4 rows x 3 seeds,
    # A x 5 folds and B x 4 more folds (its fold 0 with the base seed is Table 3's Focal row)
    assert len(jobs) == 7 * 2 + 4 * 3 + 5 + 4 + 1   # + Figure 1: bs 16, base seed
    assert ("p24_bs2_ce", 0, 12345) in jobs           # Figure 1's fold-0 curves: the base seed
    assert all(seed == 12345 for s, f, seed in jobs if f > 0)


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c["recipe"].update(batch=0), "key 'recipe.batch': 0 is less than the minimum of 1"),
    (lambda c: c["recipe"].update(loss="dice_bce"), "key 'recipe.loss': 'dice_bce' is not one of"),
    (lambda c: c["settings"]["p24_bs4_ce"].update(patch=[16, 32]), "key 'settings.p24_bs4_ce.patch'"),
    (lambda c: c["settings"]["p24_bs4_ce"].update(bacth=4), "'bacth' was unexpected"),
    (lambda c: c["tables"]["table1"]["rows"].append({"setting": "nope"}), "unknown setting 'nope'"),
    (lambda c: c["tables"]["table4"]["rows"][0].update(folds=[7]), "fold out of range"),
    (lambda c: c["settings"]["p24_bs4_ce"].update(gpus=8), "8 GPUs but global batch 4"),
    (lambda c: c.update(seed="x"), "key 'seed': 'x' is not of type 'integer'"),
    (lambda c: c.update(training_seeds=[1, 1]), "key 'training_seeds': [1, 1] has non-unique elements"),
    (lambda c: c["tables"]["table3"].update(training_seeds=[]),
     "key 'tables.table3.training_seeds': [] should be non-empty"),
    (lambda c: c["tables"]["table4"].update(training_seeds=[1, 2]),
     "key 'tables.table4.training_seeds': the table has no single-fold row (a 5-fold row keeps the base seed 12345)"),
    (lambda c: c.pop("tables"), "'tables' is a required property"),
    (lambda c: c["figures"].update(fig1_settings=["ghost"]), "unknown setting 'ghost'"),
])
def test_bad_config_names_key_and_problem(mutate, message):
    cfg = demo()
    mutate(cfg)
    with pytest.raises(SeggridError) as err:
        validate_config(cfg, source="my.yaml")
    assert message in str(err.value) and "my.yaml" in str(err.value)


def test_load_config_file_errors(tmp_path):
    with pytest.raises(SeggridError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("settings: [unclosed\n")
    with pytest.raises(SeggridError, match="bad.yaml: not valid YAML"):
        load_config(bad)


@pytest.mark.parametrize("name", ["amos22_task1.yaml", "amos22_task2.yaml"])
def test_amos_configs_express_the_paper_grid(name):
    cfg = load_config(ROOT / "config" / name)
    patches = {tuple(resolve_setting(cfg, r["setting"])["patch"]) for r in cfg["tables"]["table1"]["rows"]}
    assert patches == {(64, 160, 160), (64, 288, 288), (64, 354, 354), (64, 384, 384)}
    batches = [resolve_setting(cfg, r["setting"])["batch"] for r in cfg["tables"]["table2"]["rows"]]
    assert batches == [2, 4, 16, 64]
    losses = [resolve_setting(cfg, r["setting"])["loss"] for r in cfg["tables"]["table3"]["rows"]]
    assert losses == ["dice_ce", "dice_focal", "dice_topk", "dice_perimeter"]
    for s in cfg["settings"]:
        r = resolve_setting(cfg, s)
        assert r["optimizer"] == "sgd_nesterov" and r["lr"] == 0.01 and r["momentum"] == 0.99
        # every data-parallel rank (a spatial group's slabs share theirs) gets a sample
        assert r["gpus"] >= 1 and r["batch"] >= r["gpus"] // r["spatial_partitions"]
    assert resolve_setting(cfg, "p160_bs64_ce")["gpus"] > 1
    extension = cfg["tables"].get("table5")          # beyond the paper: spatial partitions (Task 1)
    assert [t for t in cfg["tables"] if t != "table5"] == ["table1", "table2", "table3", "table4"]
    assert len(training_jobs(cfg)) == 10 + 4 + 5 + (2 if extension else 0)
    if extension:
        parts = [resolve_setting(cfg, r["setting"])["spatial_partitions"] for r in extension["rows"]]
        assert parts == [1, 2, 4] and cfg["figures"]["slices_table"] == "table4"


def test_config_readme_is_generated_from_the_schema_and_every_key_is_described(tmp_path):
    from seggrid.config_docs import render, undocumented
    from seggrid.config import load_schema

    schema = load_schema()
    assert undocumented(schema) == []
    committed = (ROOT / "config" / "README.md").read_text()
    assert committed == render(schema), "config/README.md is stale: run `seggrid config-docs`"
    # every recipe key and every section appears, with its default
    for key in schema["properties"]["recipe"]["properties"]:
        assert f"| `recipe.{key}` |" in committed, key
    assert "| `inference.mem_mb` | integer (>= 100) | `12000` |" in committed
    # a key without a description is reported
    schema["properties"]["seed"].pop("description")
    assert undocumented(schema) == ["seed"]


def test_prediction_set_value_round_trips_and_names_every_path():
    from seggrid.layout import PredictionSet, metrics_file, plan_file, predictions_dir, training_dir, training_log

    ens = PredictionSet(("a", "b"), (0, 1, 2, 3, 4))
    assert ens.id == "a+b__f0-1-2-3-4" and PredictionSet.parse(ens.id) == ens
    seeded = PredictionSet(("p32_bs2_ce",), (0,), 23456)
    assert seeded.id == "p32_bs2_ce__f0__s23456" and PredictionSet.parse(seeded.id) == seeded
    assert ens.member("b") == PredictionSet(("b",), (0, 1, 2, 3, 4)) and seeded.training_seed({"seed": 1}) == 23456
    cfg = {"seed": 12345}
    assert training_dir(cfg, "s", 3, 12345) == "train/s/fold_3" and training_dir(cfg, "s", 0, 7) == "train/s/seed_7/fold_0"
    assert training_log(cfg, "s", 0, 7) == "logs/train/s/seed_7/fold_0.log"
    assert (plan_file("s"), predictions_dir(ens.id), metrics_file(ens.id, "csv")) == (
        "plans/s.json", "predictions/a+b__f0-1-2-3-4", "metrics/a+b__f0-1-2-3-4.csv")
