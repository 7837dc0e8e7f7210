"""`seggrid export-nnunet`: the exported nnU-Net model folder reads back into our network with the
same output; its layout, plans and parameter names are nnU-Net 2.8.1's (worked out here from
PlainConvUNet's naming, not imported: CI has no nnU-Net); bad input is refused naming the file.
nnU-Net's own predictor on an export is checked by benchmarks/speed/predict_vs_nnunet.sh."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import run_cli
from seggrid.errors import SeggridError
from seggrid.inference.predict import load_model
from seggrid.outputs.export_nnunet import export_nnunet, network_from_export


def expected_nnunet_keys(n_stages: int, norm_params=("weight", "bias")) -> set[str]:
    """PlainConvUNet(deep_supervision=False).state_dict() keys: each conv under `conv` and
    `all_modules.0`, each norm under `norm` and `all_modules.1`, the encoder again under
    `decoder.encoder`, one transposed conv and one seg layer per decoder stage."""
    def block(prefix):
        keys = set()
        for p in ("weight", "bias"):
            keys |= {f"{prefix}.conv.{p}", f"{prefix}.all_modules.0.{p}"}
        for p in norm_params:
            keys |= {f"{prefix}.norm.{p}", f"{prefix}.all_modules.1.{p}"}
        return keys
    keys = set()
    for i in range(n_stages):
        for j in range(2):
            keys |= block(f"encoder.stages.{i}.0.convs.{j}") | block(f"decoder.encoder.stages.{i}.0.convs.{j}")
    for d in range(n_stages - 1):
        for j in range(2):
            keys |= block(f"decoder.stages.{d}.convs.{j}")
        keys |= {f"decoder.transpconvs.{d}.{p}" for p in ("weight", "bias")}
        keys |= {f"decoder.seg_layers.{d}.{p}" for p in ("weight", "bias")}
    return keys


@pytest.fixture(scope="module")
def export(pipeline, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "nnunet_model"
    model = pipeline["train"] / "model.pt"
    assert run_cli("export-nnunet", "--model", model, model, "--folds", 0, 3, "--preprocessed",
                   pipeline["preprocessed"], "--out", out) == 0
    return out


def test_layout_plans_and_parameter_names(export, pipeline):
    assert sorted(p.relative_to(export).as_posix() for p in export.rglob("*") if p.is_file()) == [
        "dataset.json", "fold_0/checkpoint_final.pth", "fold_3/checkpoint_final.pth", "plans.json"]
    plan = json.loads(pipeline["plan"].read_text())
    manifest = json.loads((pipeline["preprocessed"] / "manifest.json").read_text())
    plans = json.loads((export / "plans.json").read_text())
    dataset = json.loads((export / "dataset.json").read_text())
    conf = plans["configurations"]["3d_fullres"]
    topo = plan["topology"]
    assert conf["patch_size"] == topo["patch_effective"]
    assert conf["spacing"] == [plan["target_spacing"][a] for a in plan["transpose"]] == [6.0, 6.0, 6.0]
    assert plans["transpose_forward"] == plan["transpose"] and plans["image_reader_writer"] == "NibabelIOWithReorient"
    arch = conf["architecture"]["arch_kwargs"]
    assert (arch["features_per_stage"], arch["kernel_sizes"], arch["strides"]) == (
        topo["features"], topo["kernels"], topo["strides"])
    # the demo dataset's channel is "CT": nnU-Net's CTNormalization with the fingerprint's statistics
    assert manifest["normalization"]["channel_name"] == "CT" and conf["normalization_schemes"] == ["CTNormalization"]
    stats = manifest["normalization"]["ct_statistics"]
    assert plans["foreground_intensity_properties_per_channel"]["0"]["percentile_99_5"] == stats["percentile_99_5"]
    assert dataset["labels"] == {name: int(i) for i, name in plan["labels"].items()}
    assert dataset["channel_names"] == {"0": "CT"}

    ckpt = torch.load(export / "fold_3" / "checkpoint_final.pth", weights_only=False)
    assert ckpt["trainer_name"] == "nnUNetTrainer" and ckpt["init_args"]["configuration"] == "3d_fullres"
    assert tuple(ckpt["inference_allowed_mirroring_axes"]) == (0, 1, 2)
    w = ckpt["network_weights"]
    n = len(topo["features"])
    assert set(w) == expected_nnunet_keys(n)
    # aliases are the same tensor; our full-resolution head is nnU-Net's last seg layer
    assert w["encoder.stages.1.0.convs.0.conv.weight"].data_ptr() == \
        w["decoder.encoder.stages.1.0.convs.0.all_modules.0.weight"].data_ptr()
    ours = torch.load(pipeline["train"] / "model.pt", weights_only=False)["state_dict"]
    assert torch.equal(w[f"decoder.seg_layers.{n - 2}.weight"], ours["heads.0.weight"])
    assert torch.equal(w["decoder.transpconvs.0.weight"], ours["decoder.0.upsample.weight"])
    # the lowest head (deep-supervision weight 0 in nnU-Net, absent in ours): nnU-Net's init, bias 0
    assert f"heads.{n - 2}.weight" not in ours and f"heads.{n - 3}.weight" in ours
    assert torch.count_nonzero(w["decoder.seg_layers.0.bias"]) == 0
    assert w["decoder.seg_layers.0.weight"].shape == (len(dataset["labels"]), topo["features"][-2], 1, 1, 1)


def test_export_reads_back_into_our_network_with_the_same_output(export, pipeline):
    model, plan, _ = load_model(pipeline["train"] / "model.pt", torch.device("cpu"))
    rebuilt = network_from_export(export, 3)
    x = torch.randn(2, 1, *plan.topology.patch_effective, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = model(x), rebuilt(x)
    assert got.shape == expected.shape and torch.equal(got, expected)


def test_export_is_reproducible(export, pipeline, tmp_path):
    again = export_nnunet([pipeline["train"] / "model.pt"], pipeline["preprocessed"], tmp_path / "again")
    a = torch.load(export / "fold_0" / "checkpoint_final.pth", weights_only=False)["network_weights"]
    b = torch.load(again / "fold_0" / "checkpoint_final.pth", weights_only=False)["network_weights"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_inputs_are_refused_naming_the_file(pipeline, tmp_path, capsys):
    model, pre = pipeline["train"] / "model.pt", pipeline["preprocessed"]
    alien = tmp_path / "alien.pt"
    torch.save({"state_dict": {}}, alien)
    with pytest.raises(SeggridError, match="alien.pt: not a seggrid model"):
        export_nnunet([alien], pre, tmp_path / "a")
    other = torch.load(model, weights_only=False)
    other["plan"]["setting"]["name"] = "other"
    torch.save(other, tmp_path / "other.pt")
    with pytest.raises(SeggridError, match="other.pt: setting 'other' differs"):
        export_nnunet([model, tmp_path / "other.pt"], pre, tmp_path / "b")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    assert run_cli("export-nnunet", "--model", model, "--preprocessed", pre, "--out", tmp_path / "full") == 2
    assert "full: exists and is not empty" in capsys.readouterr().err
    assert (tmp_path / "full" / "x").read_text() == "keep"
    assert run_cli("export-nnunet", "--model", model, "--preprocessed", pre, "--out", tmp_path / "full", "--force") == 0
    assert (tmp_path / "full" / "plans.json").exists() and not (tmp_path / "full" / "x").exists()
    with pytest.raises(SeggridError, match="manifest.json: not found"):
        export_nnunet([model], tmp_path, tmp_path / "c")


def test_plans_carry_zscore_with_its_mask_rule_and_refuse_mixed_schemes(pipeline):
    from pathlib import Path

    from seggrid.outputs.export_nnunet import make_plans

    plan = json.loads(pipeline["plan"].read_text())
    manifest = json.loads((pipeline["preprocessed"] / "manifest.json").read_text())
    for case in manifest["cases"].values():
        case["normalization"] = "zscore"
    manifest["normalization"].update(option="zscore", zscore_uses_nonzero_mask=True, ct_statistics=None)
    conf = make_plans(plan, manifest, Path("m.json"), "Dataset001_x")
    assert conf["configurations"]["3d_fullres"]["normalization_schemes"] == ["ZScoreNormalization"]
    assert conf["configurations"]["3d_fullres"]["use_mask_for_norm"] == [True]
    assert "0" in conf["foreground_intensity_properties_per_channel"]     # nnU-Net looks channel 0 up
    next(iter(manifest["cases"].values()))["normalization"] = "ct"
    with pytest.raises(SeggridError, match=r"m.json: cases normalised with different schemes \['ct', 'zscore'\]"):
        make_plans(plan, manifest, Path("m.json"), "Dataset001_x")
