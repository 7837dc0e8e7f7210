"""Wall-time limits: stop a training before its job's time limit, checkpoint, and requeue.

A paper setting trains for days; cluster partitions allow 24-48 h per job. A training job
reads its own deadline once, at the start (SLURM: ``squeue -h -j $SLURM_JOB_ID -o %L``, the
time the job has left; anywhere: ``SEGGRID_WALLTIME_DEADLINE``, a Unix time in seconds).
After every epoch it asks :meth:`WallTimeGuard.should_stop`: when the time left is less
than the margin plus the longest epoch so far, the next epoch might not finish, so the
trainer writes ``checkpoint_latest.pt`` at that epoch boundary and calls
:func:`request_requeue` (rank 0) and :func:`end_run`. Under SLURM that is ``scontrol requeue $SLURM_JOB_ID``: SLURM ends
this run of the job and queues the same job (same id, ``Restarts`` + 1); its next run
resumes from the checkpoint, so the weights equal an uninterrupted run's. Outside SLURM
(or when the requeue is refused) the process exits with :data:`EXIT_REQUEUE` (75,
EX_TEMPFAIL) and says how to continue.

Why not ``sbatch --signal``: through Snakemake's SLURM executor the training runs inside
``srun ... snakemake`` (a job step) under the job's own ``snakemake``; SLURM delivers a
``--signal`` to every process of every step (or, with ``B:``, to the batch shell only), and
for those Snakemake and shell processes the default action of SIGUSR1 is to terminate. The
deadline the job reads itself needs no signal to cross those layers. A SIGUSR1 that does
reach the trainer (a user's own ``srun seggrid train`` under ``--signal=USR1@600``) is
honoured the same way: :meth:`WallTimeGuard.install_signal_handler`.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

DEADLINE_ENV = "SEGGRID_WALLTIME_DEADLINE"
EXIT_REQUEUE = 75          # EX_TEMPFAIL: stopped on purpose, resume by running the job again


def parse_slurm_duration(text: str) -> float | None:
    """Seconds of a SLURM duration (``squeue -o %L``): ``[days-]hours:minutes:seconds``,
    ``minutes:seconds`` or ``seconds``; None for ``UNLIMITED``, ``NOT_SET``, ``INVALID`` or
    anything else that is not a duration."""
    text = text.strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not m:
        return None
    days, parts = int(m.group(1) or 0), [int(p) for p in m.groups()[1:] if p is not None]
    if m.group(1) is not None and len(parts) < 3:        # "D-HH" / "D-HH:MM"
        parts += [0] * (3 - len(parts))
    seconds = 0
    for p in parts:
        seconds = seconds * 60 + p
    return float(days * 86400 + seconds)


def slurm_time_left(job_id: str) -> float | None:
    """Seconds SLURM job ``job_id`` has left, or None (no limit, or squeue unusable)."""
    try:
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%L"], capture_output=True, text=True,
                             timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_slurm_duration(out.stdout.splitlines()[0]) if out.returncode == 0 and out.stdout.strip() else None


def job_deadline() -> tuple[float | None, str]:
    """(Unix time by which the job must have stopped, where that came from); (None, why) when
    the job has no time limit the trainer can see."""
    if os.environ.get(DEADLINE_ENV):
        try:
            return float(os.environ[DEADLINE_ENV]), DEADLINE_ENV
        except ValueError:
            return None, f"{DEADLINE_ENV}={os.environ[DEADLINE_ENV]!r} is not a Unix time; ignored"
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return None, "not a SLURM job and no deadline set"
    left = slurm_time_left(job)
    if left is None:
        return None, f"SLURM job {job}: no time limit (or squeue did not say)"
    return time.time() + left, f"SLURM job {job} time limit"


class WallTimeGuard:
    """Decides, after each epoch, whether the job should stop at this epoch boundary.

    ``margin_s``: seconds kept free before the deadline for the checkpoint and the requeue
    (``cluster.requeue_margin_min``). Stops when ``deadline - now < margin_s + longest epoch``.
    """

    def __init__(self, margin_s: float, deadline: float | None = None, source: str = ""):
        self.margin_s, self.deadline, self.source = margin_s, deadline, source
        self.longest_epoch_s = 0.0
        self.signalled = False

    @classmethod
    def for_this_job(cls, margin_s: float) -> "WallTimeGuard":
        return cls(margin_s, *job_deadline())

    def install_signal_handler(self, signum: int = signal.SIGUSR1) -> None:
        """A ``signum`` (SLURM ``--signal``) makes the next epoch boundary the last of this run."""
        def _flag(_sig, _frame):
            self.signalled = True
        signal.signal(signum, _flag)

    def describe(self) -> str:
        if self.deadline is None:
            return f"wall time: {self.source}; no stop before the last epoch"
        left = (self.deadline - time.time()) / 60
        return (f"wall time: {left:.1f} min left ({self.source}); stops at an epoch boundary "
                f"{self.margin_s / 60:.1f} min + one epoch before it, checkpoints and requeues")

    def should_stop(self, epoch_seconds: float) -> bool:
        self.longest_epoch_s = max(self.longest_epoch_s, epoch_seconds)
        if self.signalled:
            return True
        return self.deadline is not None and self.deadline - time.time() < self.margin_s + self.longest_epoch_s


def request_requeue(what: str) -> bool:
    """``scontrol requeue $SLURM_JOB_ID`` (rank 0 only): True when SLURM accepted it (it then
    ends this run of the job and queues the same job again)."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return False
    try:
        proc = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"[train] {what}: scontrol requeue {job} failed: {exc}", flush=True)
        return False
    if proc.returncode != 0:
        print(f"[train] {what}: scontrol requeue {job} failed: {proc.stderr.strip()}", flush=True)
    return proc.returncode == 0


def end_run(what: str, epoch: int, checkpoint: str, requeued: bool, announce: bool = True) -> None:
    """End this run after the stop at ``epoch``: a requeued job waits for SLURM to end it (its
    next run resumes from ``checkpoint``); otherwise exit with :data:`EXIT_REQUEUE`."""
    job = os.environ.get("SLURM_JOB_ID")
    if requeued:
        if announce:
            print(f"[train] {what}: stopped at epoch {epoch} before the wall-time limit; checkpoint {checkpoint}; "
                  f"SLURM job {job} requeued, its next run resumes from the checkpoint", flush=True)
        time.sleep(600)                          # SLURM ends this run (SIGTERM) well before this
    if announce:
        print(f"[train] {what}: stopped at epoch {epoch} before the wall-time limit; checkpoint {checkpoint}; "
              f"run the job again (snakemake reruns it) to resume from it", flush=True)
    raise SystemExit(EXIT_REQUEUE)
