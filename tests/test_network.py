"""The nnU-Net U-Net: heads at their own resolution, init, norms, the parameter count of
nnU-Net's PlainConvUNet, and the training-step benchmark."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import run_cli
from seggrid.engine.network import PlainUNet, build_network, deep_supervision_outputs
from seggrid.engine.planner import plan_topology
from seggrid.plan import plan_from_topology

AMOS_SPACING = [2.0, 0.68825001, 0.68825001]


def _plan(patch, spacing, base=4, cap=16, classes=3, ds=True, weights="nnunet", norm="instance", pools=5):
    return plan_from_topology(plan_topology(patch, spacing, base, cap, pools, "down"), classes,
                              deep_supervision=ds, deep_supervision_weights=weights, norm=norm)


def test_heads_come_out_at_their_own_resolution():
    plan = _plan([32, 64, 64], AMOS_SPACING)
    net = build_network(plan)
    x = torch.randn(2, 1, 32, 64, 64)
    outputs = net(x)
    scales = [[1, 1, 1], [1, 2, 2], [2, 4, 4]]           # strides (1,1,1), (1,2,2), (2,2,2), ...
    assert len(outputs) == deep_supervision_outputs(plan) == 3
    for out, f in zip(outputs, scales):
        assert out.shape == (2, 3, *[s // k for s, k in zip(x.shape[2:], f)])
    net.eval()
    with torch.no_grad():
        assert net(x).shape == (2, 3, 32, 64, 64)          # inference: the full-resolution head only
    no_ds = build_network(_plan([32, 64, 64], AMOS_SPACING, ds=False))
    assert isinstance(no_ds(x), torch.Tensor) and len(no_ds.heads) == 1


def test_he_init_and_zero_bias():
    torch.manual_seed(0)
    net = PlainUNet(3, [32, 64], [[3, 3, 3], [3, 3, 3]], [[1, 1, 1], [2, 2, 2]])
    conv = net.encoder[1][1][0]                           # 64 -> 64, kernel 27: fan_in 1728
    expected = math.sqrt(2 / (1 + 1e-2 ** 2) / (64 * 27))
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.02)
    assert all(float(m.bias.abs().max()) == 0 for m in net.modules() if isinstance(m, torch.nn.Conv3d))


@pytest.mark.parametrize("norm,kind", [("instance", torch.nn.InstanceNorm3d), ("batch", torch.nn.BatchNorm3d),
                                       ("group", torch.nn.GroupNorm)])
def test_norm_registry(norm, kind):
    net = build_network(_plan([16, 32, 32], [1.0, 1.0, 1.0], norm=norm))
    norms = [m for m in net.modules() if isinstance(m, (torch.nn.InstanceNorm3d, torch.nn.BatchNorm3d, torch.nn.GroupNorm))]
    assert norms and all(type(m) is kind for m in norms)
    assert net(torch.randn(2, 1, 16, 32, 32))[0].shape == (2, 3, 16, 32, 32)


def test_paper_network_has_nnunets_parameter_count():
    """(64,160,160) at AMOS spacing, 16 classes: dynamic-network-architectures 0.4.4's
    PlainConvUNet (what nnU-Net 2.8.1 trains) has 31,124,368 parameters, counted with
    benchmarks/speed/nnunet_step.py; it also builds the lowest head, which nnU-Net weights 0
    (320 * 16 + 16 = 5,136 parameters) and we leave out."""
    net = build_network(_plan([64, 160, 160], AMOS_SPACING, base=32, cap=320, classes=16))
    assert sum(p.numel() for p in net.parameters()) == 31_124_368 - 5_136


def test_bench_step_prints_measurements(capsys):
    assert run_cli("bench", "step", "--patch", 8, 16, 16, "--batch", 2, "--base-features", 4, "--max-features", 8,
                   "--classes", 3, "--steps", 2, "--warmup", 1, "--threads", 1) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["patch"] == [8, 16, 16] and out["classes"] == 3 and len(out["seconds_per_step"]) == 2
    assert out["seconds_per_step_median"] > 0 and out["peak_memory_mb"] >= out["memory_before_first_step_mb"] > 0
    assert 0 <= out["data_wait_fraction"] <= 1 and math.isfinite(out["final_loss"])
    assert out["deterministic"]["deterministic_kernels"] is True and out["memory_kind"] == "peak_rss"
    # the warm-up step is timed apart, never among the timed steps; nothing compiled by default
    assert len(out["first_steps_seconds"]) == 1 and out["first_steps_seconds"][0] > 0
    assert out["compile_mode"] == "auto" and out["compile"] is False and out["compiled"] == []   # auto: off on CPU
    assert out["peak_memory_timed_steps_mb"] is None        # CPU: one peak RSS, no reset between phases


def test_bench_step_rejects_cuda_without_a_gpu(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert run_cli("bench", "step", "--device", "cuda") == 2
    assert "no CUDA device" in capsys.readouterr().err

