"""`seggrid cost`: projection arithmetic on a recorded calibration, the cache, memory fit, the
measured resources and the command's errors (workflow/seggrid/outputs/cost*.py)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import ROOT, run_cli, tiny_grid_config
from seggrid.config import load_config, model_setting, resolve_setting
from seggrid.outputs import cost, cost_measure
from seggrid.outputs.cost_report import resources

RECORDED = ROOT / "tests" / "fixtures" / "cost" / "calibration_demo.json"
CPU = torch.device("cpu")


@pytest.fixture
def recorded(monkeypatch):
    """The demo grid's calibration recorded on an Intel Xeon (2 cores), read as if measured
    here: nothing is measured (calibrate and the memory model raise if called)."""
    cache = json.loads(RECORDED.read_text())
    key = next(iter(cache["topologies"].values()))
    device = {k: key[k] for k in ("device", "torch", "cuda")}
    monkeypatch.setattr("seggrid.engine.recipe.cpu_has_native_bf16", lambda *a: False)   # precision auto: fp32
    monkeypatch.setattr(cost_measure, "device_key", lambda d: device)
    monkeypatch.setattr(cost, "device_key", lambda d: device)

    def never(*a, **k):
        raise AssertionError("measured although cached")
    monkeypatch.setattr(cost, "calibrate", never)
    monkeypatch.setattr(cost, "activation_model", never)
    return cache, next(iter(cache["import_s"].values()))


def _demo_projection(cache, import_s, config=None):
    config = config or load_config(ROOT / "config" / "config.yaml")
    quiet = lambda *a: None                                    # noqa: E731
    measured = cost.measure(config, CPU, cache["topologies"], budget_s=0, say=quiet)
    memory = cost.activations(config, CPU, cache["activations"], say=quiet)
    return config, measured, cost.project(config, measured, memory, CPU, import_s, [40, 80])


def test_projection_arithmetic_on_a_recorded_calibration(recorded):
    cache, import_s = recorded
    config, measured, p = _demo_projection(*recorded)
    assert len(measured) == 10                                   # every demo topology, from the cache
    s = resolve_setting(config, "p24_bs8_ce")
    m = next(r["measured"] for r in cache["topologies"].values() if r["setting_example"] == "p24_bs8_ce")
    epoch = s["iterations_per_epoch"] * m["step_s"] + s["val_iterations"] * m["val_iteration_s"] + m["progress_s"]
    loop = s["epochs"] * epoch + s["epochs"] // s["checkpoint_every"] * m["checkpoint_s"]
    wall = import_s + m["setup_s"] + loop + 2 * m["checkpoint_s"]
    jobs = [j for j in p["jobs"] if j["kind"] == "train" and j["setting"] == "p24_bs8_ce"]
    assert len(jobs) == 5 and {j["fold"] for j in jobs} == set(range(5))          # the 5-fold model
    assert jobs[0]["loop_s"] == pytest.approx(loop) and jobs[0]["wall_s"] == pytest.approx(wall)
    assert jobs[0]["gpu_hours"] == 0 and jobs[0]["cpu_core_hours"] == pytest.approx(wall * s["threads"] / 3600)
    # a 5-fold prediction set: 8 evaluation cases x 5 folds + 12 out-of-fold cases, x tiles x flips
    fwd = m["forward_tile_s"]
    tiles = cost.tiles_per_case([12, 43, 54], [16, 24, 24], 0.5)
    assert tiles == 1 * 3 * 4            # z: one tile (16 >= 12); y: 43 -> 3 tiles of 24; x: 54 -> 4
    five = next(j for j in p["jobs"] if j["kind"] == "predict" and j["prediction_set"] == "p24_bs8_ce__f0-1-2-3-4")
    assert five["wall_s"] == pytest.approx((8 * 5 + 12) * tiles * 1 * fwd + import_s)
    # the grid counts each job once; a table counts the jobs its rows need
    assert p["grid"]["jobs"] == len(p["jobs"]) and p["grid"]["training_jobs"] == 26
    assert p["grid"]["wall_hours_serial"] == pytest.approx(sum(j["wall_s"] for j in p["jobs"]) / 3600)
    t2 = p["tables"]["table2"]
    assert t2["training_jobs"] == 4 and t2["jobs"] == 8      # bs 2, 4, 8, 16: one training + one prediction each


def test_a_second_call_measures_nothing_and_an_empty_budget_extrapolates(recorded, monkeypatch):
    cache, import_s = recorded
    config = load_config(ROOT / "config" / "config.yaml")
    calls = []
    monkeypatch.setattr(cost, "calibrate", lambda *a, **k: calls.append(a) or {})
    assert len(cost.measure(config, CPU, cache["topologies"], budget_s=0, say=lambda *a: None)) == 10
    assert calls == []
    # without the p24_bs16 calibration and no budget left: scaled by voxels x batch from the nearest
    partial = {k: v for k, v in cache["topologies"].items() if v["setting_example"] != "p24_bs16_ce"}
    lines = []
    measured = cost.measure(config, CPU, partial, budget_s=0, say=lines.append)
    assert calls == [] and len(measured) == 9 and any("budget of 0 s spent" in line for line in lines)
    memory = cost.activations(config, CPU, cache["activations"], say=lambda *a: None)
    p = cost.project(config, measured, memory, CPU, import_s, [40])
    job = next(j for j in p["jobs"] if j["kind"] == "train" and j["setting"] == "p24_bs16_ce")
    bs8 = next(r["measured"] for r in partial.values() if r["setting_example"] == "p24_bs8_ce")
    assert job["source"] == "extrapolated x2.00 from p24_bs8_ce"
    s = resolve_setting(config, "p24_bs16_ce")
    assert job["epoch_s"] == pytest.approx(s["iterations_per_epoch"] * 2 * bs8["step_s"]
                                           + s["val_iterations"] * 2 * bs8["val_iteration_s"] + bs8["progress_s"])


def test_memory_fit_keeps_the_global_batch_and_names_partitions():
    config = load_config(ROOT / "config" / "amos22_task1.yaml")
    plans = cost.grid_plans(config)
    gib = 2**30
    activation = {"parameters": 31_000_000, "activation_bytes_per_sample": 6 * gib, "largest_tensor_bytes_per_sample": 0}
    fit = cost.memory_fit(config, plans["p160_bs16_ce"], 4, {"source": "none"}, CPU, [40, 80], activation)
    fixed = 31_000_000 * 4 * 3 / gib + cost.CUDA_ALLOWANCE_GB              # SGD: weights, gradients, momentum
    assert fit["per_gpu_peak_gb"] == pytest.approx(fixed + 4 * 6)          # batch 16 over 4 GPUs
    assert fit["cards"]["40"] == {"fits": True, "fewest_gpus": 4, "needs_spatial_partitions": False}   # 16/4 x 6 GB
    assert fit["cards"]["80"]["fewest_gpus"] == 2                          # 16/2 x 6 = 48 GB < 80
    huge = {**activation, "activation_bytes_per_sample": 50 * gib}
    fit = cost.memory_fit(config, plans["p384_bs2_ce"], 1, {"source": "none"}, CPU, [40], huge)
    assert fit["cards"]["40"] == {"fits": False, "fewest_gpus": None, "needs_spatial_partitions": True}


def test_the_amos_grid_is_planned_without_data():
    config = load_config(ROOT / "config" / "amos22_task1.yaml")
    plans = cost.grid_plans(config)
    assert plans["p160_bs2_ce"].topology.patch_effective == (64, 160, 160) and plans["p160_bs2_ce"].n_classes == 16
    assert cost.job_shape(config, "p160_bs16_ce") == (4, 4) and cost.job_shape(config, "p128x512_bs2_sp4") == (8, 1)
    p = cost.project(config, {}, {n: {"parameters": 1, "activation_bytes_per_sample": 2**30,
                                      "largest_tensor_bytes_per_sample": 0} for n in plans}, CPU, 2.0, [40, 80])
    sources = {j["source"] for j in p["jobs"] if j["kind"] == "train"}     # a GPU grid on a CPU: no time
    assert sources == {"not measured: a GPU job: run seggrid cost on a GPU"}
    assert all(j["wall_s"] is None for j in p["jobs"]) and p["grid"]["projected_jobs"] == 0
    assert set(p["memory_fit"]) == set(plans) and all(set(f["cards"]) == {"40", "80"} for f in p["memory_fit"].values())


def test_resources_scale_the_projection_cap_it_and_change_no_plan(recorded, tmp_path):
    config, _, p = _demo_projection(*recorded)
    config["cluster"]["max_runtime_min"] = 2
    fragment, notes = resources(config, p, margin=1.5)
    assert set(fragment["settings"]) == {j["setting"] for j in p["jobs"] if j["kind"] == "train"}
    assert all(v["runtime_min"] == 2 for v in fragment["settings"].values())            # capped
    config["cluster"]["max_runtime_min"] = None
    fragment, notes = resources(config, p, margin=1.5)
    job = next(j for j in p["jobs"] if j["kind"] == "train" and j["setting"] == "p24_bs16_ce")
    assert fragment["settings"]["p24_bs16_ce"]["runtime_min"] == max(2, math.ceil(job["wall_s"] * 1.5 / 60))
    assert fragment["settings"]["p24_bs16_ce"]["mem_mb"] == math.ceil(job["host_peak_mb"] * 1.5 / 100) * 100
    assert notes == [] and fragment["inference"]["runtime_min"] >= 2
    # scheduling keys only: every setting's plan (what the `plan` rule and the hash see) is unchanged
    from snakemake.utils import update_config
    merged = json.loads(json.dumps(config))
    update_config(merged, fragment)
    for name in fragment["settings"]:
        assert model_setting(resolve_setting(merged, name)) == model_setting(resolve_setting(config, name))


def _tiny(tmp_path: Path, **cost_keys) -> Path:
    return tiny_grid_config(
        tmp_path, settings={"a": {}, "b": {"batch": 4}},
        tables={"table1": {"title": "t", "varied": "batch", "rows": [{"label": "2", "setting": "a"},
                                                                     {"label": "4", "setting": "b"}]}},
        figures={"fig1_settings": ["a"], "slices_table": "table1"},
        cost={"median_shape": [10, 30, 30], "classes": 4, "training_cases": 4, "evaluation_cases": 2, **cost_keys})


def test_cost_command_measures_caches_and_writes_a_profile_snakemake_accepts(tmp_path, capsys):
    cfg, out, prof = _tiny(tmp_path), tmp_path / "cost", tmp_path / "measured"
    assert run_cli("cost", "--configfile", cfg, "--out", out, "--write-resources", prof) == 0
    first = capsys.readouterr().out
    assert "[cost] 1/2 a patch [8, 16, 16] batch 2:" in first and "| a | 1 | 0 | 2 |" in first
    projection = json.loads((out / "cost.json").read_text())
    assert projection["grid"]["training_jobs"] == 2 and (out / "cost.md").read_text().startswith("# What the grid")
    calibration = (out / "calibration.json").read_bytes()
    assert run_cli("cost", "--configfile", cfg, "--out", out) == 0
    assert "s/step" not in capsys.readouterr().out and (out / "calibration.json").read_bytes() == calibration
    assert not (tmp_path / "results").exists()           # nothing of the grid's outdir is written
    fragment = yaml.safe_load((prof / "resources.yaml").read_text())
    assert set(fragment["settings"]) == {"a", "b"} and all(v["mem_mb"] >= 100 for v in fragment["settings"].values())
    profile = yaml.safe_load((prof / "config.yaml").read_text())
    assert profile["configfiles"] == [str(cfg.resolve()), str((prof / "resources.yaml").resolve())]
    dry = subprocess.run([sys.executable, "-m", "snakemake", "--profile", str(prof), "-n", "--cores", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=str(ROOT / "workflow")))
    assert dry.returncode == 0, dry.stderr[-3000:]
    train_runtimes = set(re.findall(r"rule train:\n(?:    .*\n)*?    resources: .*runtime=(\d+)", dry.stdout + dry.stderr))
    assert train_runtimes == {str(v["runtime_min"]) for v in fragment["settings"].values()}   # what was measured
    # the README's form: the grid's config file and the fragment given to --configfile
    dry = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", str(cfg),
                          str(prof / "resources.yaml")], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=str(ROOT / "workflow")))
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert set(re.findall(r"rule train:\n(?:    .*\n)*?    resources: .*runtime=(\d+)", dry.stdout + dry.stderr)) == train_runtimes


def test_cost_command_errors(tmp_path, capsys):
    cfg = _tiny(tmp_path, median_shape=None)
    assert run_cli("cost", "--configfile", cfg, "--out", tmp_path / "c") != 0
    err = capsys.readouterr().err
    assert str(cfg) in err and "cost.median_shape is not set" in err
    assert not (tmp_path / "c").exists()
    unspaced = _tiny(tmp_path)
    grid = yaml.safe_load(unspaced.read_text())
    grid["preprocessing"]["target_spacing"] = None
    unspaced.write_text(yaml.safe_dump(grid))
    assert run_cli("cost", "--configfile", unspaced, "--out", tmp_path / "c") != 0
    assert "preprocessing.target_spacing is null" in capsys.readouterr().err
    assert run_cli("cost", "--configfile", _tiny(tmp_path), "--gpu-mem", "0", "--out", tmp_path / "c") != 0
    assert "--gpu-mem must be positive" in capsys.readouterr().err and not (tmp_path / "c").exists()
    (tmp_path / "afile").write_text("x")
    assert run_cli("cost", "--configfile", _tiny(tmp_path), "--budget-s", "0", "--out", tmp_path / "c",
                   "--write-resources", tmp_path / "afile") != 0
    assert "afile: exists and is not a folder" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert run_cli("cost", "--configfile", _tiny(tmp_path), "--device", "cuda", "--out", tmp_path / "c") != 0
        assert "no CUDA device is usable here" in capsys.readouterr().err


def test_gloo_allreduce_is_measured_between_two_cpu_ranks_and_cached(monkeypatch):
    seconds = cost_measure.gloo_allreduce_seconds(100_000)
    assert 0 < seconds < 5
    config = load_config(ROOT / "config" / "amos22_task1.yaml")
    memory = {n: {"parameters": 31_000_000 if n.startswith("p160") else 1000} for n in cost.grid_plans(config)}
    calls = []
    monkeypatch.setattr(cost, "gloo_allreduce_seconds", lambda n: calls.append(n) or 0.25)
    cache = {}
    shares = cost.allreduce_shares(config, memory, cache, say=lambda *a: None)
    assert shares == {"31000000": 0.25, "1000": 0.25} and sorted(calls) == [1000, 31_000_000]   # multi-GPU only
    assert cost.allreduce_shares(config, memory, cache, say=lambda *a: None) == shares and len(calls) == 2
