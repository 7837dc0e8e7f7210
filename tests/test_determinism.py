"""Same seed on CPU -> identical weights; a resumed run ends where an uninterrupted one does."""

from __future__ import annotations

import json

import torch

from conftest import run_cli
from seggrid.plan import Plan



def _plan(pipeline, **changes) -> Plan:
    """The tiny pipeline's plan, with ``changes`` to its setting."""
    plan = Plan.from_dict(json.loads(pipeline["plan"].read_text()), str(pipeline["plan"]))
    return plan.with_setting(**changes) if changes else plan

def _weights(path):
    return torch.load(path, weights_only=False)["state_dict"]


def _train(pipeline, out, *extra):
    assert run_cli("train", "--plan", pipeline["plan"], "--preprocessed", pipeline["preprocessed"],
                   "--splits", pipeline["splits"], "--fold", 0, "--seed", 3, "--out", out, *extra) == 0


def test_same_seed_same_weights(pipeline, tmp_path):
    _train(pipeline, tmp_path / "again")
    a, b = _weights(pipeline["train"] / "model.pt"), _weights(tmp_path / "again" / "model.pt")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the run kept its own log (a requeued job's runs each keep one; Snakemake's log is truncated)
    from seggrid.layout import RUN_HEADER, RUN_LOGS

    (run,) = (tmp_path / "again" / RUN_LOGS).glob("*_jobnone.log")
    text = run.read_text()
    assert text.startswith(RUN_HEADER) and "[train] tiny fold 0 epoch 2/2" in text, text[-500:]


def test_different_seed_different_weights(pipeline, tmp_path):
    assert run_cli("train", "--plan", pipeline["plan"], "--preprocessed", pipeline["preprocessed"],
                   "--splits", pipeline["splits"], "--fold", 0, "--seed", 4, "--out", tmp_path / "s4") == 0
    a, b = _weights(pipeline["train"] / "model.pt"), _weights(tmp_path / "s4" / "model.pt")
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_resume_after_kill_mid_epoch_matches_uninterrupted(pipeline, tmp_path, monkeypatch):
    """Kill training in epoch 2 (after epoch 1's checkpoint), start it again: it resumes and
    ends with exactly the weights of the uninterrupted run."""
    import seggrid.engine.train as tr
    from seggrid.engine.sampling import PatchSampler

    plan = _plan(pipeline)
    splits = json.loads(pipeline["splits"].read_text())
    per_epoch = plan.setting.iterations_per_epoch + plan.setting.val_iterations
    calls = {"n": 0}
    real_next = PatchSampler.draw_batch

    class Killed(Exception):
        pass

    def dying_next(self):                                    # runs in the prefetch thread; the
        calls["n"] += 1                                      # training loop re-raises its error
        if calls["n"] == per_epoch + 2:                      # second batch of epoch 2
            raise Killed
        return real_next(self)

    out = tmp_path / "resumed"
    monkeypatch.setattr(PatchSampler, "draw_batch", dying_next)
    try:
        tr.train(plan, pipeline["preprocessed"], splits, 0, out, 3, checkpoint_every=1)
    except Killed:
        pass
    monkeypatch.setattr(PatchSampler, "draw_batch", real_next)
    assert (out / "checkpoint_latest.pt").exists() and not (out / "model.pt").exists()
    summary = tr.train(plan, pipeline["preprocessed"], splits, 0, out, 3, checkpoint_every=1)
    assert summary["epochs"] == 2 and not (out / "checkpoint_latest.pt").exists()
    log = (out / "log.csv").read_text().splitlines()
    assert len(log) == 3                                     # header + 2 epochs, none repeated
    a, b = _weights(pipeline["train"] / "model.pt"), _weights(out / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_stale_checkpoint_of_another_plan_is_ignored(pipeline, tmp_path, capsys):
    import seggrid.engine.train as tr

    plan = _plan(pipeline)
    splits = json.loads(pipeline["splits"].read_text())
    out = tmp_path / "t"
    out.mkdir()
    torch.save({"plan_hash": "something else", "seed": 3, "epoch": 1}, out / "checkpoint_latest.pt")
    tr.train(plan, pipeline["preprocessed"], splits, 0, out, 3)
    assert "ignoring" in capsys.readouterr().out
    a, b = _weights(pipeline["train"] / "model.pt"), _weights(out / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sigkill_mid_epoch_then_restart_gives_the_uninterrupted_weights(pipeline, tmp_path):
    """A real `seggrid train` process is SIGKILLed in epoch 2 (after epoch 1's checkpoint) and
    started again with the same command: it resumes and ends with the uninterrupted weights."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import ROOT

    plan = json.loads(pipeline["plan"].read_text())
    plan["setting"].update(epochs=3, iterations_per_epoch=40, cache_cases=2, cache_replace=0.5,
                           foreground_sampling="adaptive", name="killed")
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps(plan))
    env = dict(os.environ, PYTHONPATH=str(ROOT / "workflow"))

    def command(out):
        return [sys.executable, "-m", "seggrid", "train", "--plan", str(plan_path), "--preprocessed",
                str(pipeline["preprocessed"]), "--splits", str(pipeline["splits"]), "--fold", "0", "--seed", "3",
                "--checkpoint-every", "1", "--out", str(out)]

    subprocess.run(command(tmp_path / "whole"), check=True, env=env, capture_output=True, timeout=300)
    out = tmp_path / "killed"
    proc = subprocess.Popen(command(out), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not (out / "checkpoint_latest.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)                                          # well inside epoch 2
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (out / "model.pt").exists()
    rerun = subprocess.run(command(out), env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert "resumed from" in rerun.stdout
    assert len((out / "log.csv").read_text().splitlines()) == 4
    a, b = _weights(tmp_path / "whole" / "model.pt"), _weights(out / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_non_finite_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(pipeline, tmp_path, monkeypatch):
    import pytest

    import seggrid.engine.train as tr
    from seggrid.errors import SeggridError
    from seggrid.engine.losses import DeepSupervisionLoss

    plan = _plan(pipeline)
    splits = json.loads(pipeline["splits"].read_text())
    real = DeepSupervisionLoss.forward
    calls = {"n": 0}

    def poisoned(self, outputs, target):
        calls["n"] += 1
        value = real(self, outputs, target)
        return value * float("nan") if calls["n"] > plan.setting.iterations_per_epoch + 1 else value

    monkeypatch.setattr(DeepSupervisionLoss, "forward", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(SeggridError, match="non-finite loss .* at epoch 1; stopped, the last good checkpoint"):
        tr.train(plan, pipeline["preprocessed"], splits, 0, out, 3, checkpoint_every=1)
    assert torch.load(out / "checkpoint_latest.pt", weights_only=False)["epoch"] == 1
    assert not (out / "model.pt").exists()


def test_wall_time_stop_checkpoints_and_the_resumed_runs_give_the_uninterrupted_weights(pipeline, tmp_path,
                                                                                         monkeypatch, capsys):
    """A job whose time limit is already near (SEGGRID_WALLTIME_DEADLINE in the past) stops after
    its first epoch with a checkpoint and exit 75 (outside SLURM: nothing to requeue); run three
    times, a 3-epoch training is stopped twice and ends with the uninterrupted run's weights."""
    import time

    import pytest

    import seggrid.engine.train as tr
    from seggrid.engine.walltime import DEADLINE_ENV, EXIT_REQUEUE

    plan = _plan(pipeline, epochs=3, checkpoint_every=5)        # no ordinary checkpoint in 3 epochs
    splits = json.loads(pipeline["splits"].read_text())
    whole = tr.train(plan, pipeline["preprocessed"], splits, 0, tmp_path / "whole", 3)
    assert whole["wall_time_requeues"] == 0 and [r["stopped"] for r in whole["runs"]] == ["done"]
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setenv(DEADLINE_ENV, str(time.time() - 1))
    out = tmp_path / "stopped"
    for epoch in (1, 2):
        with pytest.raises(SystemExit) as stop:
            tr.train(plan, pipeline["preprocessed"], splits, 0, out, 3, requeue_margin_min=0)
        assert stop.value.code == EXIT_REQUEUE and not (out / "model.pt").exists()
        assert torch.load(out / "checkpoint_latest.pt", weights_only=False)["epoch"] == epoch
        printed = capsys.readouterr().out
        assert f"stopped at epoch {epoch} before the wall-time limit" in printed and "run the job again" in printed
    summary = tr.train(plan, pipeline["preprocessed"], splits, 0, out, 3, requeue_margin_min=0)
    assert "resumed from" in capsys.readouterr().out
    assert [(r["start_epoch"], r["end_epoch"], r["stopped"]) for r in summary["runs"]] == [
        (0, 1, "wall time"), (1, 2, "wall time"), (2, 3, "done")]
    assert summary["wall_time_requeues"] == 2 and len((out / "log.csv").read_text().splitlines()) == 4
    a, b = _weights(tmp_path / "whole" / "model.pt"), _weights(out / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_slurm_time_left_formats():
    from seggrid.engine.walltime import WallTimeGuard, parse_slurm_duration

    assert parse_slurm_duration("1-02:03:04") == 86400 + 2 * 3600 + 3 * 60 + 4
    assert parse_slurm_duration("02:03:04") == 2 * 3600 + 3 * 60 + 4
    assert parse_slurm_duration("3:04") == 184 and parse_slurm_duration("45") == 45
    assert parse_slurm_duration("2-05") == 2 * 86400 + 5 * 3600
    for text in ("UNLIMITED", "NOT_SET", "INVALID", ""):
        assert parse_slurm_duration(text) is None
    import time

    guard = WallTimeGuard(margin_s=60, deadline=time.time() + 100)
    assert not guard.should_stop(30)          # 100 s left > 60 s margin + 30 s epoch
    assert guard.should_stop(50)              # the longest epoch (50 s) no longer fits
    assert not WallTimeGuard(60, None).should_stop(1e9)


def test_compile_auto_is_off_on_cpu_and_a_compiled_training_saves_the_plain_network(pipeline, tmp_path,
                                                                                     monkeypatch):
    """recipe.compile: auto runs eager on the CPU (summary says so); compile: true trains
    through torch.compile (here with dynamo's "eager" backend: the inductor C++ build takes
    minutes on this CPU) and model.pt is the plain network's state_dict (no `_orig_mod.`
    keys), loadable without compile."""
    import seggrid.engine.train as tr

    compiled_calls = []
    real_compile = torch.compile

    def eager_compile(module):
        compiled_calls.append(type(module).__name__)
        return real_compile(module, backend="eager")

    monkeypatch.setattr(tr.torch, "compile", eager_compile)
    from seggrid.engine.device import use_compile

    assert use_compile("auto", torch.device("cpu")) is False
    assert use_compile("auto", torch.device("cuda", 0)) is True
    assert use_compile("auto", torch.device("cuda", 0), spatial=True) is False
    assert use_compile(True, torch.device("cpu")) is True and use_compile(False, torch.device("cuda", 0)) is False
    plan = _plan(pipeline, compile="auto")
    splits = json.loads(pipeline["splits"].read_text())
    assert tr.train(plan, pipeline["preprocessed"], splits, 0, tmp_path / "auto", 3)["compile"] is False
    assert compiled_calls == []
    plan = plan.with_setting(compile=True, epochs=1)
    summary = tr.train(plan, pipeline["preprocessed"], splits, 0, tmp_path / "compiled", 3)
    assert summary["compile"] is True and len(compiled_calls) == 1
    state = _weights(tmp_path / "compiled" / "model.pt")
    assert state.keys() == _weights(pipeline["train"] / "model.pt").keys()
    assert not any(k.startswith("_orig_mod.") for k in state)


def test_bf16_on_the_cpu_is_deterministic_and_differs_from_fp32(pipeline, tmp_path):
    """bf16 on the CPU (the demo's precision where the CPU has bfloat16; autocast, no grad scaler): the same
    seed gives bitwise the same weights twice, the run really is bf16 (its weights differ
    from the fp32 run's), and the summary records what ran. Determinism is set without
    importing torch's compiler when nothing is compiled."""
    import subprocess
    import sys

    import seggrid.engine.train as tr

    plan = _plan(pipeline, precision="bf16")
    splits = json.loads(pipeline["splits"].read_text())
    runs = [tr.train(plan, pipeline["preprocessed"], splits, 0, tmp_path / name, 3) for name in ("a", "b")]
    assert all(r["precision"] == "bf16" for r in runs), [r["precision"] for r in runs]
    a, b = _weights(tmp_path / "a" / "model.pt"), _weights(tmp_path / "b" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    fp32 = _weights(pipeline["train"] / "model.pt")
    assert not all(torch.equal(a[k], fp32[k]) for k in a)
    probe = ("import sys, torch; from seggrid.engine.device import configure_determinism as c; "
             "c('auto', torch.device('cpu'), compiling=False); "
             "print(torch.are_deterministic_algorithms_enabled(), 'torch._inductor' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "False"], out


def test_seed_and_fold_streams_are_keyed_on_the_tuple_not_a_sum(pipeline, tmp_path):
    """(seed 4, fold 0) and (seed 3, fold 1) share seed + fold = 4 but no random stream: other
    initial weights and other first batches (a sum-derived seed gave both the same)."""
    import numpy as np

    import seggrid.engine.train as tr
    from seggrid.engine.device import BATCH_STREAM, stream_key, stream_seed

    plan = _plan(pipeline)
    splits = json.loads(pipeline["splits"].read_text())
    runs = {}
    for seed, fold in ((4, 0), (3, 1)):
        t = tr.setup(plan, pipeline["preprocessed"], splits, fold, tmp_path / f"s{seed}f{fold}", seed, 1, 0)
        runs[seed, fold] = ({k: v.clone() for k, v in t.net.state_dict().items()}, t.rng.integers(2**62, size=4))
    (wa, ra), (wb, rb) = runs[4, 0], runs[3, 1]
    assert any(not torch.equal(wa[k], wb[k]) for k in wa if wa[k].is_floating_point())
    assert not np.array_equal(ra, rb)
    assert stream_key(3, 1, 0, purpose=BATCH_STREAM) == [3, 1, 0, BATCH_STREAM]
    assert len({stream_seed(s, f, purpose=0) for s in range(5) for f in range(5)}) == 25


def test_precision_auto_runs_bf16_only_on_a_cpu_with_native_bfloat16(tmp_path, monkeypatch):
    from seggrid.engine import recipe

    with_bf16, without = tmp_path / "amd", tmp_path / "intel"
    with_bf16.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n")
    without.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni\n")
    assert recipe.cpu_has_native_bf16(str(with_bf16)) and not recipe.cpu_has_native_bf16(str(without))
    assert not recipe.cpu_has_native_bf16(str(tmp_path / "missing"))
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(recipe, "cpu_has_native_bf16", lambda native=native: native)
        assert recipe.effective_precision("auto", cpu) == expected
        assert recipe.effective_precision("auto", cuda) == "fp16"
        assert recipe.effective_precision("bf16", cpu) == "bf16"          # asked for explicitly: what runs


def test_determinism_flag_without_the_compiler_uses_a_torch_call_that_still_exists():
    """configure_determinism sets only the eager kernels' flag through torch's private
    ``_set_deterministic_algorithms`` (the public call imports the compiler: 1.4 s a job) and
    falls back to the public call if it disappears; this fails loudly when a torch upgrade
    removes it, so the fallback's start-up cost is noticed."""
    from seggrid.engine.device import configure_determinism

    assert callable(getattr(torch._C, "_set_deterministic_algorithms", None)), \
        "torch._C._set_deterministic_algorithms is gone: configure_determinism now imports the compiler"
    before = torch.are_deterministic_algorithms_enabled()
    try:
        assert configure_determinism("auto", torch.device("cpu"), compiling=False)["deterministic_kernels"]
        assert torch.are_deterministic_algorithms_enabled()
        configure_determinism(False, torch.device("cpu"), compiling=False)
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(before, warn_only=True)
