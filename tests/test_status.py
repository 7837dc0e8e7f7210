"""`seggrid status` on a grid with nothing run, on a half-run grid (one training running,
then SIGKILLed), and (in test_workflow.py) on a finished one; progress.json / progress.png."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

from conftest import ROOT, run_cli, tiny_grid_config
from seggrid.config import load_config
from seggrid.layout import prediction_sets, training_jobs
from seggrid.layout import RUN_HEADER, RUN_LOGS, run_log_name
from seggrid.outputs.status import STALE_S, newest_run, training_job_status


def status_lines(capsys, cfg) -> list[str]:
    capsys.readouterr()
    assert run_cli("status", "--configfile", cfg) == 0
    return capsys.readouterr().out.splitlines()


def job_line(lines: list[str], setting: str, fold: int = 0) -> list[str]:
    found = [line.split() for line in lines if re.match(rf"{setting}\s+{fold}\s", line)]
    assert len(found) == 1, lines
    return found[0]


def test_status_of_the_amos_grid_with_nothing_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)              # outdir results/amos22_task1 is relative: nothing there
    cfg = ROOT / "config" / "amos22_task1.yaml"
    config = load_config(cfg)
    lines = status_lines(capsys, cfg)
    jobs = training_jobs(config)
    rows = [line for line in lines if re.match(r"\S+\s+\d+\s+\d+\s+(pending|running|done|failed)\s", line)]
    assert len(rows) == len(jobs) == 21          # fold 0 of 13 settings + folds 1-4 of Table 4's two 5-fold models
    # one training seed by default: the base seed on every line
    assert all(line.split()[2:5] == ["12345", "pending", f"0/{config['recipe']['epochs']}"] for line in rows)
    assert f"training: 0 done, 0 running, 0 failed, {len(jobs)} pending" in lines
    assert f"prediction sets: 0 of {len(prediction_sets(config))} evaluated" in lines
    assert f"tables: 0 of {len(config['tables'])} done" in lines


def test_status_of_a_half_run_grid_running_then_killed(pipeline, tmp_path, monkeypatch, capsys):
    cfg = tiny_grid_config(
        tmp_path, settings={"finished": {}, "killed": {"epochs": 3, "iterations_per_epoch": 40}, "waiting": {}},
        tables={"t": {"rows": [{"label": s, "setting": s} for s in ("finished", "killed", "waiting")]}},
        figures={"slices": False})
    res = tmp_path / "results"
    shutil.copytree(pipeline["train"], res / "train" / "finished" / "fold_0")      # a really trained model
    plan = json.loads(pipeline["plan"].read_text())
    plan["setting"].update(epochs=3, iterations_per_epoch=40, name="killed")
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps(plan))
    out, log = res / "train" / "killed" / "fold_0", res / "logs" / "train" / "killed" / "fold_0.log"
    log.parent.mkdir(parents=True)
    cmd = [sys.executable, "-m", "seggrid", "train", "--plan", str(plan_path), "--preprocessed",
           str(pipeline["preprocessed"]), "--splits", str(pipeline["splits"]), "--fold", "0", "--seed", "3",
           "--out", str(out)]
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, env=dict(os.environ, PYTHONPATH=str(ROOT / "workflow")), stdout=fh,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while not (out / "progress.json").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, log.read_text()[-2000:]
        progress = json.loads((out / "progress.json").read_text())
        assert progress["epoch"] == 1 and progress["epochs"] == 3 and progress["pid"] == proc.pid
        assert (out / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        lines = status_lines(capsys, cfg)
        finished = job_line(lines, "finished")
        summary = json.loads((res / "train" / "finished" / "fold_0" / "summary.json").read_text())
        assert finished[2:5] == ["5", "done", "2/2"] and finished[5] == f"{summary['final_pseudo_dice_ema']:.4f}"
        running = job_line(lines, "killed")
        assert running[3] == "running" and running[4] in ("1/3", "2/3")
        assert running[5] == f"{progress['pseudo_dice_ema']:.4f}" or running[4] == "2/3"
        assert running[7] != "-"                                          # an ETA
        assert job_line(lines, "waiting")[3:5] == ["pending", "0/2"]
        assert "training: 1 done, 1 running, 0 failed, 1 pending" in lines
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (out / "model.pt").exists()
    epoch = json.loads((out / "progress.json").read_text())["epoch"]
    lines = status_lines(capsys, cfg)
    killed = job_line(lines, "killed")
    assert killed[3:5] == ["failed", f"{epoch}/3"]
    assert f"stopped at epoch {epoch}/3" in " ".join(killed)
    assert "training: 1 done, 0 running, 1 failed, 1 pending" in lines
    assert "prediction sets: 0 of 3 evaluated" in lines and "tables: 0 of 1 done" in lines


def test_a_job_on_another_host_is_running_until_its_outputs_go_stale(tmp_path):
    folder = tmp_path / "train" / "s" / "fold_0"
    folder.mkdir(parents=True)
    (folder / "progress.json").write_text(json.dumps(
        {"setting": "s", "fold": 0, "epoch": 4, "epochs": 10, "pseudo_dice_ema": 0.5, "seconds_per_epoch": 600.0,
         "host": socket.gethostname() + "-elsewhere", "pid": 1, "written": 0}))
    written = (folder / "progress.json").stat().st_mtime
    setting = {"name": "s", "epochs": 10}
    running = training_job_status(tmp_path, setting, 0, now=written + 1000)      # < 3 epochs of 600 s
    assert running["state"] == "running" and running["eta_s"] == 6 * 600.0
    stale = training_job_status(tmp_path, setting, 0, now=written + 3 * 600 + 1)
    assert stale["state"] == "failed" and "stopped at epoch 4/10" in stale["detail"]
    assert max(3 * 600, STALE_S) == 1800
    # the log's last error line is what a failed job shows
    log = tmp_path / "logs" / "train" / "s" / "fold_0.log"
    log.parent.mkdir(parents=True)
    log.write_text("[train] epoch 4/10\nseggrid: error: setting 's' fold 0: non-finite loss\n")
    os.utime(log, (written, written))
    assert training_job_status(tmp_path, setting, 0, now=written + 4000)["detail"] == (
        "seggrid: error: setting 's' fold 0: non-finite loss")
    # a requeued job: each run keeps its own log in the training dir; the newest run's is read
    runs = folder / RUN_LOGS
    runs.mkdir()
    (runs / run_log_name(1000.0, "42")).write_text(f"{RUN_HEADER} job 42\n[train] epoch 5/10\n"
                                                   "slurmstepd: error: *** JOB 42 CANCELLED DUE TO TIME LIMIT ***\n")
    os.utime(log, (written, written))
    assert "DUE TO TIME LIMIT" in training_job_status(tmp_path, setting, 0, now=written + 4000)["detail"]
    (runs / run_log_name(5000.0, "43")).write_text(f"{RUN_HEADER} job 43\n[train] epoch 6/10\n")
    assert newest_run(folder, log) == [f"{RUN_HEADER} job 43", "[train] epoch 6/10"]
    assert "error" not in (training_job_status(tmp_path, setting, 0, now=written + 4000)["detail"] or "")


def test_status_knows_the_training_seed_of_each_job(tmp_path, capsys):
    """Table t's rows are trained with seeds 5 (the base seed: train/<s>/fold_0) and 9
    (train/<s>/seed_9/fold_0): one line per (setting, seed); each state read from its own folder."""
    cfg = tiny_grid_config(tmp_path, settings={"x": {}, "y": {}},
                           tables={"t": {"training_seeds": [5, 9], "rows": [{"setting": "x"}, {"setting": "y"}]}},
                           figures={"slices": False})
    res = tmp_path / "results"
    for folder, ema in ((res / "train" / "x" / "fold_0", 0.25), (res / "train" / "x" / "seed_9" / "fold_0", 0.75)):
        folder.mkdir(parents=True)
        (folder / "model.pt").write_bytes(b"weights")
        (folder / "summary.json").write_text(json.dumps({"final_pseudo_dice_ema": ema, "wall_seconds": 4.0}))
    (res / "metrics").mkdir()
    (res / "metrics" / "x__f0__s9.json").write_text("{}")
    lines = status_lines(capsys, cfg)
    assert "grid in " + str(res) + ": 4 training jobs (base seed 5; every random stream keyed on the tuple (seed, fold, ...))" in lines
    x = [line.split() for line in lines if re.match(r"x\s+0\s", line)]
    assert [r[2:6] for r in x] == [["5", "done", "2/2", "0.2500"], ["9", "done", "2/2", "0.7500"]]
    assert [line.split()[2:4] for line in lines if re.match(r"y\s+0\s", line)] == [["5", "pending"], ["9", "pending"]]
    assert "training: 2 done, 0 running, 0 failed, 2 pending" in lines
    assert "prediction sets: 1 of 4 evaluated" in lines and "  evaluated  x__f0__s9" in lines
