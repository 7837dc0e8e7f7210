"""Resources are not part of a model: scheduling keys stay out of the plan and its
hash, a half-done training resumes after its GPU count changes, a job that died after its
last epoch finishes from checkpoint_final.pt, and a GPU job without CUDA stops loudly."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, TINY_SETTING, run_cli
from seggrid.config import SCHEDULING_KEYS, model_setting
from seggrid.engine.device import ALLOW_CPU_ENV, require_cuda
from seggrid.engine.checkpoint import model_hash
from seggrid.errors import SeggridError
from seggrid.plan import Plan


def _env(**extra) -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT / "workflow"), PYTHONUNBUFFERED="1", **extra)


def _train_cmd(pipeline, plan, out, *extra) -> list[str]:
    return ["-m", "seggrid", "train", "--plan", str(plan), "--preprocessed", str(pipeline["preprocessed"]),
            "--splits", str(pipeline["splits"]), "--fold", "0", "--seed", "3", "--out", str(out), *map(str, extra)]


def test_plans_and_their_hash_ignore_scheduling_keys(pipeline, tmp_path):
    assert set(SCHEDULING_KEYS) == {"gpus", "threads", "mem_mb", "runtime_min"}
    plans = []
    for i, resources in enumerate([{}, {"gpus": 2, "threads": 8, "mem_mb": 64000, "runtime_min": 4320}]):
        out = tmp_path / f"plan{i}.json"
        assert run_cli("plan", "--setting-json", json.dumps({**TINY_SETTING, **resources}), "--fingerprint",
                       pipeline["fingerprint"], "--dataset-check", pipeline["check"], "--target-spacing", 6, 6, 6,
                       "--out", out) == 0
        plans.append(json.loads(out.read_text()))
    assert plans[0] == plans[1] and not set(SCHEDULING_KEYS) & set(plans[0]["setting"])
    assert model_setting({"gpus": 1, "batch": 2}) == {"batch": 2}
    # a hand-made plan that still carries gpus hashes like one without: old checkpoints resume
    with_gpus = {**plans[0], "setting": {**plans[0]["setting"], "gpus": 4, "threads": 3}}
    assert model_hash(Plan.from_dict(with_gpus, "hand.json")) == model_hash(Plan.from_dict(plans[0], "plan.json"))


def test_final_checkpoint_finishes_a_job_that_died_before_model_pt(pipeline, tmp_path):
    """The job died between checkpoint_final.pt and model.pt: the rerun trains no epoch and
    writes the same weights and log."""
    out = tmp_path / "train"
    shutil.copytree(pipeline["train"], out)
    assert (out / "checkpoint_final.pt").exists() and not (out / "checkpoint_latest.pt").exists()
    before = torch.load(out / "model.pt", weights_only=False)["state_dict"]
    log_before = (out / "log.csv").read_text()
    for name in ("model.pt", "log.csv", "summary.json"):        # what Snakemake removes before a rerun
        (out / name).unlink()
    proc = subprocess.run([sys.executable, *_train_cmd(pipeline, pipeline["plan"], out)], capture_output=True,
                          text=True, timeout=120, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "all epochs done: writing model.pt from it, no training" in proc.stdout
    assert " epoch 1/" not in proc.stdout and " epoch 2/" not in proc.stdout
    after = torch.load(out / "model.pt", weights_only=False)["state_dict"]
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert (out / "log.csv").read_text() == log_before
    assert json.loads((out / "summary.json").read_text())["epochs"] == TINY_SETTING["epochs"]


def _kill_after_first_checkpoint(proc: subprocess.Popen, out, keep) -> None:
    """Stop a running training as soon as it has written checkpoint_latest.pt (a half-done job)."""
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (out / "checkpoint_latest.pt").exists():
            try:
                shutil.copy(out / "checkpoint_latest.pt", keep)   # atomic replace: a whole checkpoint
                break
            except FileNotFoundError:
                pass
        time.sleep(0.02)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)      # torchrun stops its ranks (a SIGKILL would orphan them)
    proc.wait(timeout=60)


@pytest.mark.skipif(torch.cuda.is_available(), reason="gloo ranks on the CPU")
def test_half_done_training_resumes_after_gpus_change_from_2_to_1(pipeline, tmp_path):
    """2 gloo ranks (gpus 2) stop after a checkpoint; the job restarted with gpus 1 resumes at
    that epoch (model, optimizer, log) and re-seeds its samplers, saying so."""
    plan = json.loads(pipeline["plan"].read_text())
    plan["setting"].update(epochs=6, checkpoint_every=1, iterations_per_epoch=20)     # ~1 s per epoch
    plan_path, out, keep = tmp_path / "plan.json", tmp_path / "out", tmp_path / "half_done.pt"
    plan_path.write_text(json.dumps(plan))
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    two = subprocess.Popen([torchrun, "--standalone", "--nproc_per_node=2",
                            *_train_cmd(pipeline, plan_path, out, "--gpus", 2, "--threads", 2)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_env(), start_new_session=True)
    _kill_after_first_checkpoint(two, out, keep)
    assert keep.exists(), f"the 2-rank training wrote no checkpoint_latest.pt: {two.stdout.read()[-3000:]}"
    half = torch.load(keep, weights_only=False)
    assert len(half["ranks"]) == 2 and 1 <= half["epoch"] < 6
    for name in ("model.pt", "checkpoint_final.pt", "log.csv", "summary.json"):
        (out / name).unlink(missing_ok=True)
    shutil.copy(keep, out / "checkpoint_latest.pt")
    one = subprocess.run([sys.executable, *_train_cmd(pipeline, plan_path, out, "--gpus", 1)], capture_output=True,
                         text=True, timeout=240, env=_env(**{ALLOW_CPU_ENV: "1"}))
    assert one.returncode == 0, one.stderr[-3000:]
    assert f"resumed from {out / 'checkpoint_latest.pt'} at epoch {half['epoch']}" in one.stdout
    assert "written by 2 rank(s), this job has 1" in one.stdout and "NOT bit-identical" in one.stdout
    trained = [line for line in one.stdout.splitlines() if " epoch " in line and line.startswith("[train] tiny")]
    assert len(trained) == 6 - half["epoch"]                      # only the missing epochs ran
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 1
    log = (out / "log.csv").read_text().splitlines()
    assert len(log) == 1 + 6
    assert [float(r.split(",")[1]) for r in log[1:1 + half["epoch"]]] == pytest.approx(
        [r["train_loss"] for r in half["log"]], rel=1e-12)      # the 2-rank epochs are kept exactly


def test_gpu_job_without_cuda_stops_unless_allowed(monkeypatch, capsys):
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    assert require_cuda("train: setting 'x'", 0) is False          # a CPU job is a CPU job
    monkeypatch.delenv(ALLOW_CPU_ENV, raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    with pytest.raises(SeggridError) as err:
        require_cuda("train: setting 'big' fold 0", 2)
    msg = str(err.value)
    for part in ("setting 'big'", "2 GPU(s)", "CUDA_VISIBLE_DEVICES=3", f"torch.version.cuda={torch.version.cuda}",
                 f"{ALLOW_CPU_ENV}=1", "CUDA build of torch"):
        assert part in msg, (part, msg)
    monkeypatch.setenv(ALLOW_CPU_ENV, "1")
    assert require_cuda("train: setting 'big' fold 0", 2) is False
    assert f"running on the CPU because {ALLOW_CPU_ENV}=1" in capsys.readouterr().out


@pytest.mark.parametrize("step", ["train", "predict"])
def test_gpu_train_and_predict_jobs_exit_non_zero_at_once_without_cuda(pipeline, tmp_path, step):
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    env = {k: v for k, v in _env().items() if k != ALLOW_CPU_ENV}
    if step == "train":
        args = _train_cmd(pipeline, pipeline["plan"], tmp_path / "out", "--gpus", 1)
    else:
        args = ["-m", "seggrid", "predict", "--model", str(pipeline["train"] / "model.pt"), "--preprocessed",
                str(pipeline["preprocessed"]), "--splits", str(pipeline["splits"]), "--gpus", "1",
                "--target-labels-out", str(tmp_path / "t")]
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode != 0
    assert "CUDA is not usable" in proc.stderr + proc.stdout and ALLOW_CPU_ENV in proc.stderr + proc.stdout
    assert not (tmp_path / "out" / "model.pt").exists() and not (tmp_path / "t").exists()
