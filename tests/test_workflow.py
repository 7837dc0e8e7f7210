"""The Snakemake workflow: a minimal grid end to end, the AMOS grids as a dry run, lint."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ROOT, run_cli, tiny_grid_config

SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def snakemake(*args, cwd=ROOT, timeout=900):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([*SNAKEMAKE, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def minimal_config(tmp: Path) -> Path:
    return tiny_grid_config(
        tmp,
        settings={"a": {}, "b": {"patch": [8, 22, 22], "loss": "dice_focal"}, "c": {"batch": 3, "gpus": 2},
                  # a's training with each sample split into 2 slabs, one gloo rank each
                  "d": {"gpus": 2, "spatial_partitions": 2}},
        tables={
            # two training seeds (5 = the base seed, 105): mean, SD and the seed-spread test
            "table1": {"title": "patch", "varied": "patch", "training_seeds": [5, 105],
                       "rows": [{"label": "small", "setting": "a"}, {"label": "big", "setting": "b"}]},
            "table2": {"title": "batch", "varied": "batch", "rows": [{"label": "2", "setting": "a"}, {"label": "3", "setting": "c"}]},
            "table4": {"title": "final", "rows": [{"label": "A", "setting": "a", "folds": "all"},
                                                  {"label": "A&B", "models": ["a", "b"], "folds": "all"}]},
            "table5": {"title": "slabs", "rows": [{"label": "1 process", "setting": "a"},
                                                  {"label": "2 slabs", "setting": "d"}]},
        },
        figures={"fig1_settings": ["a", "c"], "slices_table": "table4"},
    )


def check_seed_columns(res: Path, t1: pd.DataFrame, t2: pd.DataFrame, md: str, md2: str) -> None:
    """Table 1 was trained with seeds 5 and 105: mean over seeds, SD between them, and the
    seed-spread test of row 2 against row 1, each from the per-seed metrics; Table 2 has one
    seed and says so."""
    assert t1["seeds"].tolist() == ["5,105", "5,105"] and t1["n_seeds"].tolist() == [2, 2]
    for i, setting in enumerate(("a", "b")):
        runs = [json.loads((res / "metrics" / f"{setting}__f0{sfx}.json").read_text()) for sfx in ("", "__s105")]
        per_seed = {m: [r[m] for r in runs] for m in ("dsc", "nsd")}
        for m, values in per_seed.items():
            assert t1.loc[i, m] == pytest.approx(sum(values) / 2, abs=1e-6)
            assert t1.loc[i, f"{m}_seed_sd"] == pytest.approx(abs(values[0] - values[1]) / 2 ** 0.5, abs=1e-6)
        if i == 0:
            base = per_seed
            assert t1.loc[0, ["dsc_delta", "dsc_p_holm", "dsc_p_better"]].isna().all()
            continue
        for m in ("dsc", "nsd"):
            diff = sum(per_seed[m]) / 2 - sum(base[m]) / 2
            assert t1.loc[1, f"{m}_delta"] == pytest.approx(diff, abs=1e-6)
            assert t1.loc[1, f"{m}_delta_ci_low"] <= t1.loc[1, f"{m}_delta_ci_high"]
            assert 0 <= t1.loc[1, f"{m}_p_better"] <= 1 and 0 <= t1.loc[1, f"{m}_p_welch"] <= 1
            assert t1.loc[1, f"{m}_verdict"] == "too few seeds"          # 2 seeds a row: never a yes/no
    assert "Verdict DSC" in md and "too few seeds (case-level Wilcoxon p" in md and "2/2 training seeds" in md
    assert t2["n_seeds"].tolist() == [1, 1] and t2["dsc_seed_sd"].isna().all()
    assert t2["dsc_verdict"].tolist()[1] == "too few seeds"
    # a one-seed table borrows table1's seed spread for "seeds needed"
    assert "pooled over the grid's multi-seed rows" in md2
    # every per-seed result records its own seed
    train = json.loads((res / "train" / "a" / "seed_105" / "fold_0" / "summary.json").read_text())
    assert train["provenance"]["seed"] == 105
    assert json.loads((res / "metrics" / "a__f0__s105.json").read_text())["provenance"]["seed"] == 105
    assert json.loads((res / "metrics" / "a__f0.json").read_text())["provenance"]["seed"] == 5
    assert json.loads((res / "predictions" / "b__f0__s105" / "inference.json").read_text())["provenance"]["seed"] == 105
    prov = json.loads((res / "tables" / "table1.provenance.json").read_text())
    assert prov["row_training_seeds"] == [{"row": "small", "seeds": [5, 105]}, {"row": "big", "seeds": [5, 105]}]


def check_resource_changes_rerun_nothing(cfg: Path, tmp: Path) -> None:
    """Resources are not part of a model (config.SCHEDULING_KEYS): on the finished grid, raising
    setting c's runtime_min, mem_mb, threads or moving it from 2 GPUs to 1 plans no job at all
    (no plan, no training), and the plan file keeps no resource key."""
    base = yaml.safe_load(cfg.read_text())
    plan = json.loads((Path(base["outdir"]) / "plans" / "c.json").read_text())
    assert not {"gpus", "threads", "mem_mb", "runtime_min"} & set(plan["setting"])
    for key, value in (("runtime_min", 600), ("mem_mb", 64000), ("threads", 2), ("gpus", 1),
                       ("cluster.max_runtime_min", 30), ("cluster.requeue_margin_min", 3)):
        changed = json.loads(json.dumps(base))
        if key.startswith("cluster."):
            changed.setdefault("cluster", {})[key.split(".")[1]] = value
        else:
            changed["settings"]["c"][key] = value
        path = tmp / f"grid_{key}.yaml"
        path.write_text(yaml.safe_dump(changed))
        proc = snakemake("--cores", 2, "--configfile", path, "-n")
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0 and "Nothing to be done" in out, (key, out[-3000:])
        assert "rule train" not in out and "rule plan" not in out, key


@pytest.mark.slow
def test_minimal_grid_end_to_end(tmp_path, capsys):
    cfg = minimal_config(tmp_path)
    tables = tmp_path / "results" / "tables"
    # an injected failure in Table 5: setting d's training finds a damaged checkpoint and stops;
    # with --keep-going every other table is finished (each depends only on its own rows)
    broken = tmp_path / "results" / "train" / "d" / "fold_0" / "checkpoint_latest.pt"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a checkpoint")
    proc = snakemake("--cores", 2, "--configfile", cfg, "--keep-going")
    assert proc.returncode != 0
    assert {p.name for p in tables.glob("*.csv")} == {"table1.csv", "table2.csv", "table4.csv"}, proc.stderr[-4000:]
    d_log = (tmp_path / "results" / "logs" / "train" / "d" / "fold_0.log").read_text()
    assert f"{broken}: unreadable checkpoint" in d_log and "move it away" in d_log
    assert broken.read_bytes() == b"not a checkpoint"              # the training so far is never overwritten
    broken.unlink()
    proc = snakemake("--cores", 2, "--configfile", cfg)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "rule train:" in proc.stdout + proc.stderr and "wildcards: setting=d, seedpath=, fold=0" in proc.stdout + proc.stderr
    t1 = pd.read_csv(tables / "table1.csv")
    assert list(t1["row"]) == ["small", "big"]
    assert list(t1["patch_requested"]) == ["(8, 16, 16)", "(8, 22, 22)"]
    assert list(t1["patch_effective"]) == ["(8, 16, 16)", "(8, 20, 20)"]   # 22 rounds down to 20
    t4 = pd.read_csv(tables / "table4.csv")
    assert list(t4["folds"]) == ["0,1", "0,1"] and list(t4["settings"]) == ["a", "a & b"]
    for t in (t1, t4, pd.read_csv(tables / "table2.csv")):
        assert t["dsc"].between(0, 1).all() and t["nsd"].between(0, 1).all()
        assert (t["train_hours"] > 0).all()
    assert "DSC [95 % CI]" in (tables / "table1.md").read_text()
    # the caption names the organs the means are over: those scored in the rows' metrics
    organs = json.loads((tables / "table1.provenance.json").read_text())["organs_in_mean"]
    scored = pd.read_csv(tmp_path / "results" / "metrics" / "a__f0.csv").dropna(subset=["dsc"])["organ"].unique()
    assert set(scored) <= set(organs) and len(organs) >= 2
    assert f"\n\nDSC and NSD are means over {len(organs)} organs: {', '.join(organs)}." in (tables / "table1.md").read_text()
    png = tmp_path / "results" / "figures" / "fig1_curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    # setting c asks for 2 GPUs: two torchrun ranks (gloo on this CPU machine) trained it
    c_summary = json.loads((tmp_path / "results" / "train" / "c" / "fold_0" / "summary.json").read_text())
    assert c_summary["world_size"] == 2
    c_log = (tmp_path / "results" / "logs" / "train" / "c" / "fold_0.log").read_text()
    assert "distributed: 2 ranks, backend gloo" in c_log
    # the shared setting 'a' fold 0 was trained once (one log, one benchmark)
    assert len(list((tmp_path / "results" / "logs" / "train" / "a").glob("*.log"))) == 2
    # Figures 2-3, trend plots, LaTeX and per-organ tables, the postprocessing decisions
    figures = tmp_path / "results" / "figures"
    for name in ("fig2_slices.png", "fig3_slices.png", "trend_table1.png", "trend_table2.png"):
        assert (figures / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (figures / name).stat().st_size > 10_000
    assert "\\begin{tabular}" in (tables / "table4.tex").read_text()
    assert {p.name for p in (tables / "per_organ").glob("*.csv")} == {"a__f0.csv", "b__f0.csv", "c__f0.csv", "d__f0.csv",
                                                                       "a__f0-1.csv", "a+b__f0-1.csv",
                                                                       "a__f0__s105.csv", "b__f0__s105.csv"}
    # setting d is setting a on 2 spatial partitions: same samples, same maths, so (up to float
    # rounding) the same model and scores; its saved model is the plain network a predicts with
    t5 = pd.read_csv(tables / "table5.csv")
    d_log = (tmp_path / "results" / "logs" / "train" / "d" / "fold_0.log").read_text()
    assert "spatial partitions: 2 slabs of 8 voxels" in d_log
    assert json.loads((tmp_path / "results" / "train" / "d" / "fold_0" / "summary.json").read_text())[
        "spatial_partitions"] == 2
    assert abs(t5["dsc"][1] - t5["dsc"][0]) <= 0.01 * t5["dsc"][0] + 1e-6, t5[["row", "dsc", "nsd"]]
    decision = json.loads((tmp_path / "results" / "postprocessing" / "a.json").read_text())
    assert {"foreground_as_one", "per_class", "dice_before", "dice_after"} <= set(decision)
    res = tmp_path / "results"
    members = json.loads((res / "predictions" / "a+b__f0-1" / "members.json").read_text())
    assert [Path(m).name for m in members["members"]] == ["a__f0-1", "b__f0-1"]
    # each member's folds were averaged and its own postprocessing applied in ONE predict job
    assert all(info["postprocessing"]["classes"] and len(info["models"]) == 2 for info in members["member_inference"])
    assert "(2 folds x" in (res / "logs" / "predict_member" / "a__f0-1.log").read_text()
    assert json.loads((res / "predictions" / "a__f0-1" / "inference.json").read_text())["postprocessing"]
    # intermediates are temp(): the quantised maps and out-of-fold labels are gone after use
    assert not list(res.glob("probabilities/*/*.npy")) and not list(res.glob("predict_cv/*/*/*.npz"))
    assert not list(res.glob("predictions/*/*.npy")) and not list(res.glob("predictions/*/*.npz"))
    assert (t1["dsc_ci_low"] <= t1["dsc"] + 1e-9).all() and t1["p_dsc"].isna().tolist() == [True, False]
    check_seed_columns(res, t1, pd.read_csv(tables / "table2.csv"), (tables / "table1.md").read_text(),
                       (tables / "table2.md").read_text())
    # the self-contained report with every table and figure
    report = tmp_path / "report.html"
    proc = snakemake("--configfile", cfg, "--report", report)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert report.stat().st_size > 100_000
    # a second run has nothing to do
    again = snakemake("--cores", 2, "--configfile", cfg, "-n")
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr
    check_resource_changes_rerun_nothing(cfg, tmp_path)
    # `seggrid status` of the finished grid: every job done with its final EMA pseudo-Dice
    capsys.readouterr()
    assert run_cli("status", "--configfile", cfg) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "training: 8 done, 0 running, 0 failed, 0 pending" in lines
    assert "prediction sets: 8 of 8 evaluated" in lines
    assert "tables: 4 of 4 done: table1, table2, table4, table5" in lines
    for setting, fold in (("a", 0), ("b", 0), ("c", 0), ("d", 0), ("a", 1), ("b", 1)):
        row = next(line.split() for line in lines if re.match(rf"{setting}\s+{fold}\s", line))
        ema = json.loads((res / "train" / setting / f"fold_{fold}" / "summary.json").read_text())["final_pseudo_dice_ema"]
        assert row[2:5] == ["5", "done", "2/2"] and row[5] == f"{ema:.4f}", row
        assert (res / "train" / setting / f"fold_{fold}" / "progress.png").read_bytes()[:4] == b"\x89PNG"
    for setting in ("a", "b"):                       # Table 1's second seed: its own line and folder
        row = [line.split() for line in lines if re.match(rf"{setting}\s+0\s+105\s", line)]
        ema = json.loads((res / "train" / setting / "seed_105" / "fold_0" / "summary.json").read_text())[
            "final_pseudo_dice_ema"]
        assert len(row) == 1 and row[0][3:6] == ["done", "2/2", f"{ema:.4f}"], lines


@pytest.mark.parametrize("name, trainings, resources", [
    # fold 0 of 10 settings + folds 1-4 of Table 4's two 5-fold models + the two of Table 5
    ("amos22_task1.yaml", 21, {"p160_bs2_ce": 1, "p288_bs2_ce": 2, "p160_bs16_ce": 4, "p160_bs64_ce": 8,
                               "p128x384_bs2_sp2": 4, "p128x512_bs2_sp4": 8}),
    ("amos22_task2.yaml", 19, {"p384_bs2_ce": 2, "p288_bs8_focal": 4}),
])
def test_amos_dry_run_without_data(name, trainings, resources, tmp_path):
    proc = snakemake("-n", "-p", "--configfile", ROOT / "config" / name, "--directory", ROOT)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert re.search(rf"train\s+{trainings}\b", out), out[-3000:]
    for setting, gpus in resources.items():
        block = re.search(rf"wildcards: setting={setting}, seedpath=, fold=0\n\s+resources: ([^\n]+)", out)
        assert block, setting
        assert f"gpu={gpus}" in block.group(1) and "mem_mb=" in block.group(1) and "runtime=" in block.group(1)
    assert "torchrun --standalone --nproc_per_node=8 -m seggrid train" in out
    assert not (ROOT / "data" / "amos22").exists()


def test_one_table_builds_only_what_its_rows_need():
    """`snakemake table1`: Table 1's four fold-0 trainings and nothing of Tables 2-5."""
    proc = snakemake("-n", "table1", "--configfile", ROOT / "config" / "amos22_task1.yaml")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert re.search(r"\btrain\s+4\b", out) and re.search(r"\btable\s+1\b", out), out[-3000:]
    trained = set(re.findall(r"wildcards: setting=(\w+), seedpath=, fold=0", out))
    assert trained == {"p160_bs2_ce", "p288_bs2_ce", "p354_bs2_ce", "p384_bs2_ce"}, trained
    assert "trend_table1.png" in out and "ranks_table1.png" in out and "table2" not in out and "ensemble" not in out
    proc = snakemake("-n", "table9", "--configfile", ROOT / "config" / "amos22_task1.yaml")
    assert proc.returncode != 0 and "table9" in proc.stdout + proc.stderr


def test_bad_config_stops_before_any_job(tmp_path):
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["recipe"]["batch"] = 0
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = snakemake("-n", "--configfile", path)
    assert proc.returncode != 0
    assert "key 'recipe.batch': 0 is less than the minimum of 1" in proc.stderr + proc.stdout


def test_lint_reports_nothing():
    proc = snakemake("--lint")
    out = proc.stdout + proc.stderr
    assert "Congratulations, your workflow is in a good condition!" in out, out[-3000:]


def test_snakefmt_check_is_clean():
    """The Snakefile and rules are formatted as snakefmt (pinned in requirements.lock, line
    length in pyproject.toml) writes them; fix with `snakefmt Snakefile workflow/rules`."""
    snakefmt = Path(sys.executable).parent / "snakefmt"
    proc = subprocess.run([str(snakefmt), "--check", "Snakefile", "workflow/rules"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_config_key_without_configfile_keeps_the_demo_config(tmp_path):
    """`snakemake --config key=value` alone applies the key on top of the demo config (it
    used to skip the demo config and fail with 'settings is required')."""
    proc = snakemake("-n", "--config", f"outdir={tmp_path / 'elsewhere'}")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert str(tmp_path / "elsewhere" / "train" / "p24_bs2_ce" / "fold_0" / "model.pt") in out
    assert re.search(r"\btrain\s+26\b", out), out[-2000:]
