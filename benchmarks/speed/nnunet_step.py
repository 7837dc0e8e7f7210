"""nnU-Net v2's own training step on the shapes of a `seggrid bench step` run.

Run it with a Python that has nnunetv2 installed (a separate environment: nnunetv2 pins its
own torch), from the repository root, giving the JSON that `seggrid bench step` printed:

    /path/to/nnunet-venv/bin/python benchmarks/speed/nnunet_step.py ours.json

It builds what nnUNetTrainer builds for that topology: dynamic-network-architectures'
PlainConvUNet (conv bias, instance norm eps 1e-5 affine, leaky ReLU in place, deep
supervision, its He init), DC_and_CE_loss with MemoryEfficientSoftDiceLoss (batch Dice as
given, no background, smooth 1e-5) in DeepSupervisionWrapper (1/2^i, lowest 0), SGD Nesterov
0.99, and runs nnUNetTrainer.train_step's body: zero_grad, forward (+ loss) under autocast on
CUDA, (scaled) backward, clip 12, step, loss to the host. Targets are downsampled with
nnU-Net's DownsampleSegForDSTransform before timing (its data loader does that in workers).

Compilation follows nnUNetTrainer's default on the device it runs on (``_do_i_compile``):
on CUDA the network (``initialize``) and the Dice term (``_build_loss``: ``loss.dc =
torch.compile(loss.dc)``) are compiled unless the environment sets ``nnUNet_compile`` to
something other than true/1/t; on the CPU, MPS and Windows nothing is compiled. The warm-up
steps (compilation, cuDNN autotuning) are timed apart, in ``first_steps_seconds``.
Prints JSON with the same fields as ours, plus ``compiled`` (what was compiled).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss


def rss_now_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def nnunet_would_compile(device: torch.device) -> tuple[bool, str]:
    """(compile?, why) as nnUNetTrainer._do_i_compile decides it for ``device``."""
    if device.type in ("cpu", "mps"):
        return False, f"nnU-Net never compiles on {device.type}"
    if os.name == "nt":
        return False, "nnU-Net never compiles on Windows"
    if "nnUNet_compile" not in os.environ:
        return True, "nnU-Net's default (nnUNet_compile unset)"
    value = os.environ["nnUNet_compile"]
    return value.lower() in ("true", "1", "t"), f"nnUNet_compile={value}"


def main(ours_path: str) -> None:
    ours = json.loads(Path(ours_path).read_text())
    dev = torch.device(ours["device"])
    torch.set_num_threads(ours["threads"])
    if dev.type == "cuda":                         # nnU-Net's run_training settings
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    strides, kernels, features = ours["strides"], ours["kernels"], ours["features"]
    n_stages, classes, batch, patch = len(features), ours["classes"], ours["batch"], ours["patch"]
    net = PlainConvUNet(1, n_stages, features, torch.nn.Conv3d, kernels, strides, 2, classes, 2, True,
                        torch.nn.InstanceNorm3d, {"eps": 1e-5, "affine": True}, None, None,
                        torch.nn.LeakyReLU, {"inplace": True}, deep_supervision=True).to(dev)
    net.apply(net.initialize)
    compile_, compile_reason = nnunet_would_compile(dev)
    if compile_:                                   # nnUNetTrainer.initialize, after .to(device)
        net = torch.compile(net)
    scales = [list(s) for s in 1 / np.cumprod(np.vstack(strides), axis=0)][:-1]
    weights = np.array([1 / 2 ** i for i in range(len(scales))])
    weights[-1] = 0
    weights = weights / weights.sum()
    dc_and_ce = DC_and_CE_loss({"batch_dice": ours["batch_dice"], "smooth": 1e-5, "do_bg": False, "ddp": False},
                               {}, weight_ce=1, weight_dice=1, ignore_label=None,
                               dice_class=MemoryEfficientSoftDiceLoss)
    if compile_:                                   # nnUNetTrainer._build_loss
        dc_and_ce.dc = torch.compile(dc_and_ce.dc)
    loss_fn = DeepSupervisionWrapper(dc_and_ce, weights)
    optimizer = torch.optim.SGD(net.parameters(), 0.01, weight_decay=3e-5, momentum=0.99, nesterov=True)
    fp16 = dev.type == "cuda" and ours["precision"] == "fp16"
    scaler = torch.amp.GradScaler("cuda") if fp16 else None
    if ours["precision"] == "bf16":
        raise SystemExit("nnU-Net trains in fp16 (CUDA) or fp32; bf16 has no nnU-Net counterpart")

    gen = torch.Generator().manual_seed(0)
    downsample = DownsampleSegForDSTransform(scales)

    def make_batch():
        data = torch.randn(batch, 1, *patch, generator=gen)
        seg = torch.randint(0, classes, (batch, 1, *patch), generator=gen, dtype=torch.uint8)
        targets = [torch.stack([downsample._apply_to_segmentation(s)[k] for s in seg]) for k in range(len(scales))]
        return data.pin_memory() if dev.type == "cuda" else data, targets

    batches = [make_batch() for _ in range(ours["warmup"] + ours["steps"])]
    baseline = torch.cuda.memory_allocated(dev) / 2**20 if dev.type == "cuda" else rss_now_mb()
    times, first_times = [], []
    first_peak = None
    for i, (data, target) in enumerate(batches):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            if i == ours["warmup"] and i:          # as ours: warm-up peaks (autotuning) apart
                first_peak = torch.cuda.max_memory_allocated(dev) / 2**20
                torch.cuda.reset_peak_memory_stats(dev)
        t0 = time.perf_counter()
        data = data.to(dev, non_blocking=True)
        target = [t.to(dev, non_blocking=True) for t in target]
        optimizer.zero_grad(set_to_none=True)
        # nnU-Net autocasts (fp16) whenever it runs on CUDA; we do so when the seggrid side did
        with torch.autocast(dev.type, enabled=fp16):
            output = net(data)
            loss = loss_fn(output, target)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
            optimizer.step()
        value = loss.detach().cpu().numpy()
        del output, loss
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        (times if i >= ours["warmup"] else first_times).append(time.perf_counter() - t0)
    timed_peak = (torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda"
                  else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    peak = max(timed_peak, first_peak or 0.0)
    import nnunetv2
    print(json.dumps({
        "benchmark": "step", "side": "nnunet", "patch": patch, "batch": batch, "classes": classes,
        "precision": "fp16" if fp16 else "fp32", "device": str(dev), "threads": ours["threads"],
        "parameters": sum(p.numel() for p in net.parameters()),
        "steps": ours["steps"], "warmup": ours["warmup"],
        "seconds_per_step_median": round(float(np.median(times)), 4),
        "seconds_per_step": [round(t, 4) for t in times],
        "first_steps_seconds": [round(t, 4) for t in first_times],
        "compiled": ["network", "dice"] if compile_ else [], "compile_decision": compile_reason,
        "peak_memory_mb": round(peak, 1), "memory_before_first_step_mb": round(baseline, 1),
        "peak_memory_first_steps_mb": None if first_peak is None else round(first_peak, 1),
        "peak_memory_timed_steps_mb": None if first_peak is None else round(timed_peak, 1),
        "memory_kind": "cuda_max_allocated" if dev.type == "cuda" else "peak_rss",
        "final_loss": round(float(value), 5),
        "versions": {"nnunetv2": getattr(nnunetv2, "__version__", "unknown"), "torch": torch.__version__},
    }, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
