"""Each CLI step on tiny data: the files it writes and what they hold."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from conftest import ROOT, TINY_SETTING, run_cli
from seggrid.errors import SeggridError


def test_demo_dataset_layout_and_determinism(demo_dataset, tmp_path):
    meta = json.loads((demo_dataset / "dataset.json").read_text())
    assert len(meta["training"]) == 5 and len(meta["validation"]) == 2
    assert set(meta["labels"]) == {str(i) for i in range(16)}
    ids = [e["image"] for e in meta["training"]]
    assert sum("amos_05" in i for i in ids) == 2           # MR cases numbered from 501
    again = tmp_path / "again"
    assert run_cli("make-demo-data", "--out", again, "--seed", 7, "--ct-train", 3, "--mr-train", 2,
                   "--ct-val", 1, "--mr-val", 1) == 0
    for entry in meta["training"]:
        a = nib.load(demo_dataset / entry["label"])
        b = nib.load(again / entry["label"])
        assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
        assert np.allclose(a.affine, b.affine)


def test_demo_organ_subset_relabels_and_keeps_the_images(demo_dataset, tmp_path):
    """--organs: the listed AMOS organs numbered 1.. in AMOS order, every other organ background;
    the images and the draws are those of the full-label build; an unknown organ is refused."""
    out = tmp_path / "subset"
    assert run_cli("make-demo-data", "--out", out, "--seed", 7, "--ct-train", 3, "--mr-train", 2, "--ct-val", 1,
                   "--mr-val", 1, "--organs", "liver", "spleen", "left kidney") == 0
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["labels"] == {"0": "background", "1": "spleen", "2": "left kidney", "3": "liver"}
    full = json.loads((demo_dataset / "dataset.json").read_text())
    for entry in full["training"] + full["validation"]:
        whole = np.asarray(nib.load(demo_dataset / entry["label"]).dataobj)
        sub = np.asarray(nib.load(out / entry["label"]).dataobj)
        expected = np.select([whole == 1, whole == 3, whole == 6], [1, 2, 3], 0)
        assert np.array_equal(sub, expected)
        assert np.array_equal(np.asarray(nib.load(demo_dataset / entry["image"]).dataobj),
                              np.asarray(nib.load(out / entry["image"]).dataobj))
    with pytest.raises(SeggridError, match="unknown \\['kidneys'\\]"):
        from seggrid.data.demo_data import make_demo_dataset
        make_demo_dataset(tmp_path / "bad", ct_train=1, mr_train=1, ct_val=0, mr_val=0, organs=["kidneys"])
    assert not (tmp_path / "bad").exists()


def test_demo_cases_keep_organs_and_orientation(demo_dataset):
    meta = json.loads((demo_dataset / "dataset.json").read_text())
    for entry in meta["training"]:
        seg = nib.load(demo_dataset / entry["label"])
        present = set(np.unique(np.asarray(seg.dataobj)).tolist())
        assert {1, 2, 3, 6}.issubset(present)                 # spleen, kidneys, liver
        # storage flips change the array but not the anatomy: liver (6) right of spleen (1)
        data = np.asarray(seg.dataobj)
        world = lambda lab: (seg.affine @ np.r_[np.argwhere(data == lab).mean(0), 1])[:3]
        assert world(6)[0] > world(1)[0], "liver must lie to the patient's right (larger RAS x) of the spleen"


def test_validate_writes_report(pipeline):
    check = json.loads(pipeline["check"].read_text())
    assert check["n_training"] == 5 and check["n_validation"] == 2 and check["layout"] == "msd"
    modalities = {c["case_id"]: c["modality"] for c in check["cases"]}
    assert modalities["amos_0501"] == "MR" and modalities["amos_0001"] == "CT"


def test_fingerprint_statistics(pipeline):
    fp = json.loads(pipeline["fingerprint"].read_text())
    ct = fp["ct_foreground_intensity"]
    assert ct["percentile_00_5"] < ct["mean"] < ct["percentile_99_5"]
    assert all(2.5 < s < 4.0 for s in fp["median_spacing"])   # sample is 3 mm, demo spacing 0.9-1.15x
    assert fp["n_cases"] == 5


def test_splits_are_disjoint_and_cover(pipeline):
    s = json.loads(pipeline["splits"].read_text())
    assert s["evaluation"] == ["amos_0004", "amos_0503"]
    vals = [c for f in s["folds"] for c in f["val"]]
    assert sorted(vals) == sorted(set(vals)) and len(vals) == 5
    for f in s["folds"]:
        assert not set(f["train"]) & set(f["val"])


def test_preprocess_outputs(pipeline):
    from seggrid.data.locations import load_class_locations

    pp = pipeline["preprocessed"]
    manifest = json.loads((pp / "manifest.json").read_text())
    # the demo dataset.json names its channel "CT"
    assert manifest["normalization"]["channel_name"] == "CT"
    assert manifest["target_spacing"] == [6.0, 6.0, 6.0]
    for cid, info in manifest["cases"].items():
        img = np.load(pp / f"{cid}_img.npy", mmap_mode="r")
        assert list(img.shape) == info["shape"] and img.dtype == np.float32
        props = json.loads((pp / f"{cid}.json").read_text())
        assert np.isfinite(img).all()
        assert props["normalization"]["scheme"] == info["normalization"]
        if info["normalization"] == "zscore":            # per-image z-score
            assert abs(float(np.mean(img))) < 0.1
        seg = np.load(pp / f"{cid}_seg.npy")
        assert seg.shape == img.shape and seg.max() <= 15
        locations = load_class_locations(pp, cid, props)
        assert sorted(locations) == sorted(int(c) for c in np.unique(seg) if c)
        for cls, locs in locations.items():
            z, y, x = np.asarray(locs).T
            assert np.all(seg[z, y, x] == cls)


def test_preprocess_pool_gives_the_same_outputs_as_one_worker(pipeline, tmp_path, capsys):
    """--threads 2 runs cases in two worker processes: every file equals the one-worker run's."""
    out = tmp_path / "pre2"
    assert run_cli("preprocess", "--dataset", pipeline["dataset"], "--mr-case-id-min", 500, "--fingerprint",
                   pipeline["fingerprint"], "--target-spacing", 6, 6, 6, "--threads", 2, "--out", out) == 0
    log = capsys.readouterr().out
    assert "ETA" in log and "(2 workers)" in log
    one = sorted(p.name for p in pipeline["preprocessed"].iterdir() if p.name != "timings.json")
    assert sorted(p.name for p in out.iterdir() if p.name != "timings.json") == one
    timings = json.loads((out / "timings.json").read_text())
    assert timings["workers"] == 2 and all(t["worker_peak_rss_mb"] > 50 for t in timings["cases"].values())
    for name in one:
        a, b = pipeline["preprocessed"] / name, out / name
        if name.endswith(".npy"):
            assert np.array_equal(np.load(a), np.load(b)), name
        else:
            assert json.loads(a.read_text()) == json.loads(b.read_text()), name


def test_label_resampling_one_class_at_a_time_equals_the_one_hot_argmax():
    """resample_labels (slice by slice, one class at a time) equals the whole one-hot resampled
    at once as nnU-Net 2.8.1 does (batchgenerators' resize_segmentation order 1): every class's
    indicator linear on the half-voxel grid with edge values, argmax, ties to the nearest
    neighbour's label where it is among the tied; anisotropic: that per slice, nearest along z."""
    from scipy import ndimage

    from seggrid.data.preprocess import resample_labels

    def grid_zoom(a, shape, order):
        return ndimage.zoom(a, [o / i for o, i in zip(shape, a.shape)], order=order, mode="nearest", grid_mode=True)

    def whole(lab, shape):
        scores = np.stack([grid_zoom((lab == c).astype(np.float64), shape, 1) for c in range(8)])
        nearest = grid_zoom(lab, shape, 0).astype(np.int64)
        tied = np.take_along_axis(scores, nearest[None], 0)[0] == scores.max(0)
        return np.where(tied, nearest, scores.argmax(0)).astype(np.uint8)

    rng = np.random.default_rng(0)
    labels = ndimage.zoom(rng.integers(0, 6, (6, 8, 8)), 4, order=0).astype(np.uint8)[:, :30, :29]
    labels[labels == 3] = 0                                     # a class absent from the case
    shape = [31, 17, 41]
    assert np.array_equal(resample_labels(labels, shape, 8), whole(labels, shape))
    per_slice = np.stack([whole(s, shape[1:]) for s in labels])
    assert np.array_equal(resample_labels(labels, shape, 8, anisotropic=True), grid_zoom(per_slice, shape, 0))


def test_plan_records_requested_and_effective_patch(pipeline):
    plan = json.loads(pipeline["plan"].read_text())
    assert plan["topology"]["patch_requested"] == [8, 16, 16]
    assert plan["topology"]["patch_effective"] == [8, 16, 16]
    assert plan["n_classes"] == 16 and plan["setting"]["name"] == "tiny"


def test_train_outputs(pipeline):
    t = pipeline["train"]
    log = pd.read_csv(t / "log.csv")
    assert list(log["epoch"]) == [0, 1]
    assert log["train_loss"].notna().all() and (log["lr"] > 0).all()
    summary = json.loads((t / "summary.json").read_text())
    assert summary["provenance"]["seed"] == 3 and "torch" in summary["provenance"]["versions"]
    assert summary["wall_seconds"] > 0
    assert not (t / "checkpoint_latest.pt").exists()
    ckpt = torch.load(t / "model.pt", weights_only=False)
    assert ckpt["plan"]["setting"]["name"] == "tiny"
    assert summary["deterministic"] == {"mode": "auto", "deterministic_kernels": True, "cudnn_benchmark": False}
    assert 0 <= summary["data_wait_fraction"] <= 1 and (log["data_wait_fraction"].between(0, 1)).all()
    # the augmentation runs in the training thread: its share is reported apart from the wait
    assert 0 < summary["augment_fraction"] < 1 and (log["augment_fraction"].between(0, 1)).all()
    assert summary["augment_fraction"] + summary["data_wait_fraction"] < 1


def test_model_of_an_older_format_is_refused_with_a_clear_message(pipeline, tmp_path, capsys):
    ckpt = torch.load(pipeline["train"] / "model.pt", weights_only=False)
    del ckpt["format"]                                     # as written before the nnU-Net network
    old = tmp_path / "old" / "model.pt"
    old.parent.mkdir()
    torch.save(ckpt, old)
    rc = run_cli("predict", "--model", old, "--preprocessed", pipeline["preprocessed"], "--splits",
                 pipeline["splits"], "--probabilities-out", tmp_path / "pred")
    err = capsys.readouterr().err
    assert rc == 2 and "old/model.pt: a model of format unknown" in err and "train it again" in err
    assert not (tmp_path / "pred").exists()


def test_predict_writes_labels_and_quantised_probabilities(pipeline):
    from seggrid.inference.maps import read_quantised_class

    pp, probs_dir, labels_dir = pipeline["preprocessed"], pipeline["probs"], pipeline["labels"]
    for cid in ("amos_0004", "amos_0503"):
        probs = np.load(probs_dir / f"{cid}.npy")
        assert probs.dtype == np.uint8 and probs.shape[0] == 16
        assert list(probs.shape[1:]) == list(np.load(pp / f"{cid}_img.npy", mmap_mode="r").shape)
        total = probs.astype(np.int32).sum(0)                  # round(255 p) per class sums to ~255
        assert np.all(np.abs(total - 255) <= 8)
        assert np.array_equal(read_quantised_class(probs_dir / f"{cid}.npy", 5), probs[5])
        # labels written directly come from resampled LOGITS (nnU-Net's order: resample, then one
        # argmax); the one-member ensemble resamples its quantised PROBABILITIES (as nnUNetv2_ensemble
        # averages probabilities). The two agree except where this 2-iteration model is uncertain
        # (measured 8.7 % and 9.4 % of voxels: its outputs are near-uniform, so ties abound)
        direct = np.asarray(nib.load(labels_dir / f"{cid}.nii.gz").dataobj)
        via_member = np.asarray(nib.load(pipeline["ensemble"] / f"{cid}.nii.gz").dataobj)
        assert direct.shape == via_member.shape and (direct != via_member).mean() < 0.12
    timing = json.loads((probs_dir / "inference.json").read_text())
    assert timing["tta_flips"] == 2 and set(timing["cases"]) == {"amos_0004", "amos_0503"}
    assert sorted(p.name for p in labels_dir.iterdir()) == ["amos_0004.nii.gz", "amos_0503.nii.gz",
                                                            "inference.json"]


def test_predict_averages_the_folds_of_one_model_in_one_job(pipeline, tmp_path):
    """Two copies of the fold model as a '2-fold model': the job's average equals one model's
    map, and the out-of-fold target-spacing labels are its argmax."""
    from seggrid.inference.maps import read_target_labels

    model = pipeline["train"] / "model.pt"
    assert run_cli("predict", "--model", model, model, "--preprocessed", pipeline["preprocessed"], "--splits",
                   pipeline["splits"], "--tta-flips", 2, "--probabilities-out", tmp_path / "p",
                   "--target-labels-out", tmp_path / "t") == 0
    for cid in ("amos_0004", "amos_0503"):
        two, one = np.load(tmp_path / "p" / f"{cid}.npy"), np.load(pipeline["probs"] / f"{cid}.npy")
        assert np.abs(two.astype(int) - one.astype(int)).max() <= 1
        labels = read_target_labels(tmp_path / "t" / f"{cid}.npz")
        assert labels.dtype == np.uint8 and labels.shape == two.shape[1:]
        top = np.sort(two.astype(int), axis=0)
        clear = top[-1] - top[-2] >= 2                 # not a tie after quantisation
        assert clear.mean() > 0.5 and np.array_equal(labels[clear], two.argmax(0)[clear])
    info = json.loads((tmp_path / "t" / "inference.json").read_text())
    assert len(info["models"]) == 2


def test_predict_needs_an_output_and_the_dataset_for_labels(pipeline, tmp_path, capsys):
    args = ("predict", "--model", pipeline["train"] / "model.pt", "--preprocessed", pipeline["preprocessed"],
            "--splits", pipeline["splits"])
    assert run_cli(*args) == 2 and "at least one of --labels-out" in capsys.readouterr().err
    assert run_cli(*args, "--labels-out", tmp_path / "l") == 2
    assert "--labels-out needs --dataset" in capsys.readouterr().err and not (tmp_path / "l").exists()


def test_ensemble_writes_input_geometry(pipeline):
    meta = json.loads((pipeline["dataset"] / "dataset.json").read_text())
    for entry in meta["validation"]:
        cid = entry["image"].split("/")[-1].replace(".nii.gz", "")
        ref = nib.load(pipeline["dataset"] / entry["image"])
        out = nib.load(pipeline["ensemble"] / f"{cid}.nii.gz")
        assert out.shape == ref.shape
        assert np.allclose(out.affine, ref.affine)
        assert out.get_data_dtype() == np.uint8


def test_evaluate_table(pipeline):
    df = pd.read_csv(pipeline["csv"])
    assert set(df["case_id"]) == {"amos_0004", "amos_0503"} and len(df) == 2 * 15
    summary = json.loads(pipeline["summary"].read_text())
    assert 0 <= summary["dsc"] <= 1 and 0 <= summary["nsd"] <= 1
    absent = df[df["organ"] == "esophagus"]                # empty in every reference
    assert (absent["reference_voxels"] == 0).all()


def test_cli_error_exit_code_and_message(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "seggrid", "validate", "--dataset", str(tmp_path),
                           "--out", str(tmp_path / "x.json")], capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT / "workflow"), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2
    assert "dataset.json not found" in proc.stderr and str(tmp_path) in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "x.json").exists()


def test_unknown_fold_is_a_clear_error(pipeline, tmp_path, capsys):
    rc = run_cli("train", "--plan", pipeline["plan"], "--preprocessed", pipeline["preprocessed"],
                 "--splits", pipeline["splits"], "--fold", 7, "--out", tmp_path / "t")
    assert rc == 2 and "no fold 7" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


def test_corrupt_model_and_missing_inputs_are_clear_errors(pipeline, tmp_path, capsys):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a checkpoint")
    rc = run_cli("predict", "--model", bad, "--preprocessed", pipeline["preprocessed"], "--splits",
                 pipeline["splits"], "--probabilities-out", tmp_path / "pred")
    err = capsys.readouterr().err
    assert rc == 2 and "model.pt: not a readable seggrid model" in err and not (tmp_path / "pred").exists()
    broken = tmp_path / "splits.json"
    broken.write_text("{")
    rc = run_cli("train", "--plan", pipeline["plan"], "--preprocessed", pipeline["preprocessed"],
                 "--splits", broken, "--fold", 0, "--out", tmp_path / "t")
    assert rc == 2 and "splits.json: not valid JSON" in capsys.readouterr().err
    rc = run_cli("predict", "--model", pipeline["train"] / "model.pt", "--preprocessed", tmp_path / "nowhere",
                 "--splits", pipeline["splits"], "--probabilities-out", tmp_path / "pred")
    assert rc == 2 and "nowhere" in capsys.readouterr().err and not (tmp_path / "pred").exists()


def test_tables_and_figure_cli(pipeline, tmp_path):
    import shutil

    out = tmp_path / "results"
    (out / "metrics").mkdir(parents=True)
    (out / "plans").mkdir()
    (out / "train" / "tiny").mkdir(parents=True)
    shutil.copy(pipeline["summary"], out / "metrics" / "tiny__f0.json")
    shutil.copy(pipeline["csv"], out / "metrics" / "tiny__f0.csv")
    shutil.copy(pipeline["plan"], out / "plans" / "tiny.json")
    shutil.copytree(pipeline["train"], out / "train" / "tiny" / "fold_0")
    cfg = {"folds": 2, "seed": 3, "settings": {"tiny": {}}, "recipe": TINY_SETTING,
           "tables": {"table1": {"title": "T1", "rows": [{"label": "tiny row", "setting": "tiny",
                                                          "paper": {"dsc": 0.9, "nsd": 0.8}}]}}}
    assert run_cli("tables", "--config-json", json.dumps(cfg), "--outdir", out, "--tables-dir", out / "tables") == 0
    t1 = pd.read_csv(out / "tables" / "table1.csv")
    summary = json.loads(pipeline["summary"].read_text())
    assert t1.loc[0, "row"] == "tiny row" and t1.loc[0, "dsc"] == pytest.approx(summary["dsc"], rel=1e-5)
    assert t1.loc[0, "patch_effective"] == "(8, 16, 16)" and t1.loc[0, "batch"] == 2
    md = (out / "tables" / "table1.md").read_text()
    assert md.startswith("**T1**") and "DSC and NSD are means over " in md and "| tiny row |" in md
    assert "Paper DSC" in md and "| 0.9000 |" in md
    assert t1.loc[0, "dsc_ci_low"] <= t1.loc[0, "dsc"] <= t1.loc[0, "dsc_ci_high"]
    assert np.isnan(t1.loc[0, "p_dsc"])                              # the baseline row has no test
    tex = (out / "tables" / "table1.tex").read_text()
    assert tex.startswith("\\begin{table}") and "tiny row" in tex and "DSC [95 \\% CI]" in tex
    assert run_cli("per-organ", "--metrics-csv", pipeline["csv"], "--title", "tiny", "--out-csv", out / "po.csv",
                   "--out-md", out / "po.md") == 0
    po = pd.read_csv(out / "po.csv")
    cases = pd.read_csv(pipeline["csv"])
    assert set(po["organ"]) == set(cases["organ"])
    liver = cases[cases["organ"] == "liver"]
    # the CSV keeps 6 significant digits (%.6g): up to ~1e-5 relative
    assert po.set_index("organ").loc["liver", "dsc"] == pytest.approx(liver["dsc"].mean(), rel=1e-5)
    assert run_cli("tables", "--config-json", json.dumps(cfg), "--outdir", out, "--tables-dir", out / "t",
                   "--table", "nope") == 2
    prov = json.loads((out / "tables" / "table1.provenance.json").read_text())
    assert prov["seed"] == 3 and prov["config"]["tables"] == cfg["tables"] and prov["versions"]["torch"]
    png = out / "fig1.png"
    assert run_cli("figures", "--log", f"tiny (batch 2)={pipeline['train'] / 'log.csv'}", "--out", png) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_check_config_cli(tmp_path, capsys):
    assert run_cli("check-config", ROOT / "config" / "config.yaml") == 0
    assert "10 settings, 26 training jobs, 21 prediction sets" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("settings: {a: {batch: -1}}\ntables: {t: {rows: [{setting: a}]}}\n")
    assert run_cli("check-config", bad) == 2
    assert "key 'settings.a.batch': -1 is less than the minimum of 1" in capsys.readouterr().err


def test_metrics_record_provenance(pipeline):
    prov = json.loads(pipeline["summary"].read_text())["provenance"]
    assert prov["seed"] == 3 and prov["versions"]["surface-distance"] == "0.1"
    assert prov["config"]["metrics"] == {} and prov["config_hash"]
