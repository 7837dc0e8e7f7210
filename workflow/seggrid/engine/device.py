"""Where a job runs: CUDA asked for and usable (or a loud stop), determinism, seeds, torchrun ranks.

A job with ``gpus > 0`` on which CUDA is not usable stops at once (:func:`require_cuda`),
naming the job, ``CUDA_VISIBLE_DEVICES`` and ``torch.version.cuda``, unless the environment
sets ``SEGGRID_ALLOW_CPU_FOR_GPU_JOBS=1`` (the tests, a test cluster with fake GPUs): then it
warns and runs on the CPU.
"""

from __future__ import annotations

import os
import random
import resource
import socket

import numpy as np
import torch
import torch.distributed as dist

from seggrid.errors import SeggridError

ALLOW_CPU_ENV = "SEGGRID_ALLOW_CPU_FOR_GPU_JOBS"


def require_cuda(what: str, gpus: int, local_rank: int = 0) -> bool:
    """True when a job of ``gpus`` GPUs can use CUDA device ``local_rank``; False for a CPU job.
    A GPU job without a usable device raises (naming ``what``, CUDA_VISIBLE_DEVICES and
    torch.version.cuda) unless ``SEGGRID_ALLOW_CPU_FOR_GPU_JOBS=1``, which runs it on the CPU."""
    if gpus <= 0:
        return False
    usable = torch.cuda.is_available() and local_rank < torch.cuda.device_count()
    if usable:
        return True
    facts = (f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}, "
             f"torch.version.cuda={torch.version.cuda}, "
             f"{torch.cuda.device_count() if torch.cuda.is_available() else 0} usable CUDA device(s)")
    if os.environ.get(ALLOW_CPU_ENV) == "1":
        print(f"[{what}] WARNING: {gpus} GPU(s) asked but no usable CUDA device for local rank {local_rank} "
              f"({facts}); running on the CPU because {ALLOW_CPU_ENV}=1", flush=True)
        return False
    raise SeggridError(f"{what}: the job asks for {gpus} GPU(s) but CUDA is not usable for local rank {local_rank} "
                       f"({facts}). Install the CUDA build of torch (--sdm conda uses the CUDA env), run it on a "
                       f"node with GPUs and drivers, or set the setting's gpus to 0; to run GPU jobs on the CPU "
                       f"on purpose (tests, fake GPUs) set {ALLOW_CPU_ENV}=1")


def use_compile(mode: str | bool, device: torch.device, spatial: bool = False) -> bool:
    """Whether training runs the network through ``torch.compile`` (``recipe.compile``).

    ``auto``: on CUDA, as nnU-Net 2.8.1 does by default there (its step was 1.42x faster
    compiled on an H200); off on the CPU, where nnU-Net does not compile either, and with
    spatial partitions (their halo exchange is not traceable). ``true`` / ``false`` force it."""
    if mode == "auto":
        return device.type == "cuda" and not spatial
    return bool(mode)


def configure_determinism(mode: str | bool, device: torch.device, compiling: bool = True) -> dict:
    """Apply ``recipe.deterministic`` and return what ran (recorded in summary.json).

    ``auto``: deterministic kernels on a CPU (bitwise-reproducible runs), none on a GPU, where
    cudnn.benchmark picks the fastest convolution algorithms as nnU-Net does. ``true`` /
    ``false`` force either everywhere. ``compiling``: whether the network will run through
    ``torch.compile``. If not, only the eager kernels' flag is set: the public
    ``torch.use_deterministic_algorithms`` also sets the flag of torch's compiler (inductor),
    and importing the compiler for it cost 1.4 s of every CPU training job's start-up."""
    if mode not in ("auto", True, False):
        raise SeggridError(f"recipe.deterministic must be auto, true or false, got {mode!r}")
    deterministic = device.type != "cuda" if mode == "auto" else bool(mode)
    if deterministic and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")   # cuBLAS's deterministic workspace
    eager_only = getattr(torch._C, "_set_deterministic_algorithms", None)   # tests/test_determinism.py
    if compiling or eager_only is None:                                      # watches that it exists
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
    else:
        eager_only(deterministic, warn_only=True)
    # deterministic mode also fills every new tensor with NaN (measured: a fifth of a CPU step);
    # our kernels never read memory before writing it, so results stay bitwise the same
    torch.utils.deterministic.fill_uninitialized_memory = False
    if device.type == "cuda":
        torch.backends.cudnn.deterministic = deterministic
        torch.backends.cudnn.benchmark = not deterministic
    return {"mode": mode, "deterministic_kernels": deterministic,
            "cudnn_benchmark": device.type == "cuda" and not deterministic}


def distributed_context(gpus: int, what: str = "train") -> tuple[int, int, torch.device]:
    """(rank, world size, device). Initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = require_cuda(what, gpus, local)
    device = torch.device(f"cuda:{local}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        dist.init_process_group(backend=backend)
        if rank == 0:
            print(f"[train] distributed: {world} ranks, backend {backend}"
                  + ("" if use_cuda else " (no usable CUDA device: ranks run on CPU)"), flush=True)
        # SLURM names the node a task runs on; elsewhere the host name does
        node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
        print(f"[train] rank {rank} of {world} on node {node}, local rank {local}, device {device}", flush=True)
    return rank, world, device


#: what a random stream is for: the last element of its key (:func:`stream_seed`)
INIT_STREAM, BATCH_STREAM, VALIDATION_STREAM, RESUME_STREAM = 0, 1, 2, 3


def stream_key(seed: int, fold: int, *more: int, purpose: int) -> list[int]:
    """The key of one random stream of a training: (seed, fold, ...more, purpose). Streams come
    from ``numpy.random.SeedSequence`` on this tuple, never from a sum of its parts, so
    (S, f + 1) and (S + 1, f) draw unrelated numbers."""
    return [int(seed), int(fold), *(int(m) for m in more), int(purpose)]


def stream_seed(seed: int, fold: int, *more: int, purpose: int) -> int:
    """A 63-bit integer seed for a generator that takes one (torch, Python), drawn from the
    ``SeedSequence`` of :func:`stream_key`."""
    state = np.random.SeedSequence(stream_key(seed, fold, *more, purpose=purpose)).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))


def stream_rng(seed: int, fold: int, *more: int, purpose: int) -> np.random.Generator:
    """A NumPy generator on the ``SeedSequence`` of :func:`stream_key`."""
    return np.random.default_rng(np.random.SeedSequence(stream_key(seed, fold, *more, purpose=purpose)))


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's global and torch's generators with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated since the last reset, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
