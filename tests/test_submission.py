"""The submission: the dataset's test images, listed in both layouts,
preprocessed and predicted by the same code as the evaluation cases, written in each test
image's geometry; the workflow plans it only when the dataset lists test images."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import yaml

from conftest import ROOT, run_cli, tiny_grid_config
from seggrid.data.dataset import listed_test_case_ids, load_dataset, submission_cases
from seggrid.errors import SeggridError
from seggrid.inference.maps import read_target_labels
from seggrid.inference.postprocess import largest_component
from test_dataset_layouts import to_v2

MR = ("--mr-case-id-min", 500)


def with_test_images(src, dst, cases: list[str], as_object: bool = True) -> dict[str, str]:
    """Copy the MSD dataset ``src`` to ``dst`` and list copies of ``cases``' images (under the
    new ids ``ts_<case>``, same modality by the id rule) as its test images; {test id: case}."""
    shutil.copytree(src, dst)
    meta = json.loads((dst / "dataset.json").read_text())
    images = {_id(e["image"]): e["image"] for e in meta["training"] + meta["validation"]}
    (dst / "imagesTs").mkdir()
    ids = {}
    for cid in cases:
        shutil.copy(dst / images[cid], dst / "imagesTs" / f"ts_{cid}.nii.gz")
        ids[f"ts_{cid}"] = cid
    meta["test"] = [{"image": f"./imagesTs/{t}.nii.gz"} if as_object else f"./imagesTs/{t}.nii.gz" for t in ids]
    (dst / "dataset.json").write_text(json.dumps(meta))
    return ids


def _id(path: str) -> str:
    return path.split("/")[-1][: -len(".nii.gz")]


def test_msd_test_cases_listed_and_checked(demo_dataset, tmp_path):
    ids = with_test_images(demo_dataset, tmp_path / "ds", ["amos_0001", "amos_0501"], as_object=False)
    ds = load_dataset(tmp_path / "ds", mr_case_id_min=500)
    assert [c.case_id for c in ds.test] == list(ids) == ["ts_amos_0001", "ts_amos_0501"]
    assert [c.modality for c in ds.test] == ["CT", "MR"] and all(c.label is None for c in ds.test)
    assert [c.case_id for c in submission_cases(ds)] == list(ids) and ds.case("ts_amos_0501").image.is_file()
    # Task 1 keeps CT only, the test images too; the training cases are unchanged
    ct = load_dataset(tmp_path / "ds", mr_case_id_min=500, modalities=["CT"])
    assert [c.case_id for c in ct.test] == ["ts_amos_0001"] and len(ct.training) == 3
    assert listed_test_case_ids(tmp_path / "ds", 500, ["CT"]) == ["ts_amos_0001"]
    # no dataset on disk (snakemake -n before the download), or none listed: nothing
    assert listed_test_case_ids(tmp_path / "absent") == [] and listed_test_case_ids(demo_dataset) == []
    with pytest.raises(SeggridError, match="lists no test images"):
        submission_cases(load_dataset(demo_dataset))


def test_listed_test_image_missing_is_named(demo_dataset, tmp_path, capsys):
    with_test_images(demo_dataset, tmp_path / "ds", ["amos_0001", "amos_0002"])
    missing = tmp_path / "ds" / "imagesTs" / "ts_amos_0002.nii.gz"
    missing.unlink()
    ds = load_dataset(tmp_path / "ds")                     # listing reads dataset.json only
    with pytest.raises(SeggridError, match=re.escape(str(missing)) + ".*not found"):
        submission_cases(ds)
    meta = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    meta["test"] = [{"label": "x"}]
    (tmp_path / "ds" / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(SeggridError, match=r"dataset.json: 'test'\[0\] must be an image path"):
        load_dataset(tmp_path / "ds")
    # the CLI: exit status 2 and the file named, no output left behind
    meta["test"] = ["./imagesTs/ts_amos_0002.nii.gz"]
    (tmp_path / "ds" / "dataset.json").write_text(json.dumps(meta))
    (tmp_path / "fingerprint.json").write_text("{}")       # not reached: the test images are checked first
    capsys.readouterr()
    assert run_cli("preprocess", "--dataset", tmp_path / "ds", "--fingerprint", tmp_path / "fingerprint.json",
                   "--target-spacing", 6, 6, 6, "--test-cases", "--out", tmp_path / "pre") == 2
    assert f"{missing}: test image of case 'ts_amos_0002'" in capsys.readouterr().err
    assert not (tmp_path / "pre").exists()


def test_v2_test_cases_from_images_ts(demo_dataset, tmp_path):
    to_v2(demo_dataset, tmp_path / "v2")
    (tmp_path / "v2" / "imagesTs").mkdir()
    for cid in ("amos_0001", "amos_0501"):
        shutil.copy(tmp_path / "v2" / "imagesTr" / f"{cid}_0000.nii.gz", tmp_path / "v2" / "imagesTs" / f"ts{cid}_0000.nii.gz")
    ds = load_dataset(tmp_path / "v2", mr_case_id_min=500)
    assert [c.case_id for c in submission_cases(ds)] == ["tsamos_0001", "tsamos_0501"]
    assert ds.file_ending == ".nii.gz" and [c.modality for c in ds.test] == ["CT", "MR"]
    # a second channel (or a misnamed file) in imagesTs is named
    bad = tmp_path / "v2" / "imagesTs" / "tsamos_0001_0001.nii.gz"
    shutil.copy(tmp_path / "v2" / "imagesTs" / "tsamos_0001_0000.nii.gz", bad)
    with pytest.raises(SeggridError, match=re.escape(str(bad)) + ".*<case>_0000.nii.gz"):
        load_dataset(tmp_path / "v2")
    bad.unlink()
    # a test id equal to a training id is refused (the submission would overwrite nothing, but
    # Dataset.case would find the wrong image)
    shutil.copy(tmp_path / "v2" / "imagesTr" / "amos_0001_0000.nii.gz", tmp_path / "v2" / "imagesTs")
    with pytest.raises(SeggridError, match="'amos_0001'.*id of another case"):
        submission_cases(load_dataset(tmp_path / "v2"))


def _labels(path):
    img = nib.load(str(path))
    return np.asarray(img.dataobj), img.affine, img.shape


def test_cli_submission_in_input_geometry(pipeline, tmp_path):
    """preprocess --test-cases, predict --cases test (postprocessed; probabilities for an ensemble)
    and ensemble --cases test: each test image's labels have its shape and affine, are labels of
    the dataset, and equal what the evaluation path writes for the same image."""
    evaluation = json.loads(pipeline["splits"].read_text())["evaluation"]
    ids = with_test_images(pipeline["dataset"], tmp_path / "ds", evaluation)
    ds_args = ("--dataset", tmp_path / "ds", *MR)
    pre = tmp_path / "pre_test"
    assert run_cli("preprocess", *ds_args, "--fingerprint", pipeline["fingerprint"], "--target-spacing", 6, 6, 6,
                   "--test-cases", "--out", pre) == 0
    manifest = json.loads((pre / "manifest.json").read_text())
    assert manifest["test"] == list(ids) and manifest["training"] == [] and not list(pre.glob("*_seg.npy"))
    for t, cid in ids.items():       # the same preprocessing as the evaluation copy of the image
        assert np.array_equal(np.load(pre / f"{t}_img.npy"), np.load(pipeline["preprocessed"] / f"{cid}_img.npy"))

    # a decision that keeps each class's largest component (the job's own decision file format)
    decision = tmp_path / "decision.json"
    decision.write_text(json.dumps({"foreground_as_one": False, "per_class": list(range(1, 16))}))
    model = pipeline["train"] / "model.pt"
    common = ("--model", model, "--tta-flips", 2, "--postprocessing", decision)
    assert run_cli("predict", *common, "--preprocessed", pre, "--cases", "test", *ds_args,
                   "--labels-out", tmp_path / "sub", "--probabilities-out", tmp_path / "probs_test",
                   "--target-labels-out", tmp_path / "target_test") == 0
    assert run_cli("predict", *common, "--preprocessed", pipeline["preprocessed"], "--splits", pipeline["splits"],
                   *ds_args, "--labels-out", tmp_path / "eval_pp") == 0
    assert run_cli("ensemble", "--cases", "test", "--members", tmp_path / "probs_test", tmp_path / "probs_test",
                   "--preprocessed", pre, *ds_args, "--out", tmp_path / "sub_ens") == 0
    changed = 0
    for t, cid in ids.items():
        image = nib.load(str(tmp_path / "ds" / "imagesTs" / f"{t}.nii.gz"))
        for out in ("sub", "sub_ens"):
            labels, affine, shape = _labels(tmp_path / out / f"{t}.nii.gz")
            assert shape == image.shape and np.array_equal(affine, image.affine), (out, t)
            assert set(np.unique(labels).tolist()) <= set(range(16))
        sub = _labels(tmp_path / "sub" / f"{t}.nii.gz")[0]
        assert np.array_equal(sub, _labels(tmp_path / "eval_pp" / f"{cid}.nii.gz")[0])
        # postprocessing applied: at the target spacing each class is one component, so it
        # differs from the unpostprocessed prediction wherever that had several
        raw = _labels(pipeline["labels"] / f"{cid}.nii.gz")[0]
        changed += int(not np.array_equal(sub, raw))
        assert np.load(tmp_path / "probs_test" / f"{t}.npy").shape[0] == 16
        target = read_target_labels(tmp_path / "target_test" / f"{t}.npz")
        for c in np.unique(target)[1:]:
            assert np.array_equal(largest_component(target == c), target == c), (t, c)
    assert changed >= 1, "the decision removed nothing: the test cannot see postprocessing"
    # the ensemble path (unpostprocessed members) equals the evaluation ensemble of the same images
    assert run_cli("predict", "--model", model, "--tta-flips", 2, "--preprocessed", pre, "--cases", "test", *ds_args,
                   "--probabilities-out", tmp_path / "probs_raw") == 0
    assert run_cli("ensemble", "--cases", "test", "--members", tmp_path / "probs_raw", "--preprocessed", pre,
                   *ds_args, "--out", tmp_path / "ens_raw") == 0
    for t, cid in ids.items():
        assert np.array_equal(_labels(tmp_path / "ens_raw" / f"{t}.nii.gz")[0],
                              _labels(pipeline["ensemble"] / f"{cid}.nii.gz")[0])
    # a member that lacks a test case is named
    (tmp_path / "probs_raw" / f"{next(iter(ids))}.npy").unlink()
    assert run_cli("ensemble", "--cases", "test", "--members", tmp_path / "probs_raw", "--preprocessed", pre,
                   *ds_args, "--out", tmp_path / "ens_bad") == 2


def snakemake_n(*args, cwd=ROOT):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    return out


def _jobs(out: str) -> dict[str, int]:
    """{rule: count} of the dry run's job table."""
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", out, re.M)}


def _grid(tmp, dataset_root, last_row: dict, submission=None):
    path = tiny_grid_config(tmp, settings={"a": {}, "b": {"loss": "dice_focal"}},
                            tables={"t1": {"rows": [{"setting": "a"}]}, "t2": {"rows": [last_row]}},
                            figures={"fig1_settings": [], "slices": False})
    cfg = yaml.safe_load(path.read_text())
    cfg["dataset"] = {"root": str(dataset_root), "demo": False, "mr_case_id_min": 500}
    if submission is not None:
        cfg["inference"]["submission"] = submission
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_dry_run_plans_the_submission(demo_dataset, tmp_path):
    ids = with_test_images(demo_dataset, tmp_path / "ds", ["amos_0001", "amos_0501"])
    ens = {"models": ["a", "b"], "folds": "all"}
    out = snakemake_n("--configfile", _grid(tmp_path, tmp_path / "ds", ens))
    jobs = _jobs(out)
    assert jobs["preprocess_test"] == 1 and jobs["predict_test_member"] == 2 and jobs["submission"] == 1, jobs
    assert "preprocess --dataset" in out and "--test-cases --fingerprint" in out
    for m in ("a", "b"):
        assert re.search(rf"predict --model \S+/train/{m}/fold_0/model.pt \S+/train/{m}/fold_1/model.pt "
                         rf"--postprocessing \S+/postprocessing/{m}.json --preprocessed \S+/preprocessed_test "
                         r".*--cases test", out), m
    assert re.search(r"ensemble --members \S+/probabilities_test/a__f0-1 \S+/probabilities_test/b__f0-1 "
                     r"--preprocessed \S+/preprocessed_test --cases test .* --out \S+/results/submission ", out)
    # a single-model last row: one predict job writes the labels
    out = snakemake_n("--configfile", _grid(tmp_path, tmp_path / "ds", {"setting": "b", "folds": "all"}))
    assert "predict_test_member" not in _jobs(out) and _jobs(out)["submission"] == 1
    assert re.search(r"--cases test .* --labels-out \S+/results/submission ", out)
    # switched off; and auto with a dataset without test images
    for root, mode in ((tmp_path / "ds", False), (demo_dataset, "auto")):
        jobs = _jobs(snakemake_n("--configfile", _grid(tmp_path, root, ens, submission=mode)))
        assert "submission" not in jobs and "preprocess_test" not in jobs and jobs["predict_member"] == 2, (mode, jobs)
    assert len(ids) == 2


def test_amos_dry_run_submission_only_when_asked(tmp_path):
    """No AMOS data on disk: auto plans no submission (the grid dry-runs without one); true plans
    Table 4's A & B ensemble on the test images, CT only."""
    jobs = _jobs(snakemake_n("--configfile", ROOT / "config" / "amos22_task1.yaml", "--directory", ROOT))
    assert "submission" not in jobs and "preprocess_test" not in jobs
    cfg = yaml.safe_load((ROOT / "config" / "amos22_task1.yaml").read_text())
    cfg["inference"]["submission"] = True
    (tmp_path / "amos.yaml").write_text(yaml.safe_dump(cfg))
    out = snakemake_n("--configfile", tmp_path / "amos.yaml", "--directory", ROOT)
    jobs = _jobs(out)
    assert jobs["submission"] == 1 and jobs["predict_test_member"] == 2 and jobs["preprocess_test"] == 1
    assert re.search(r"ensemble --members \S+/p160_bs16_ce__f0-1-2-3-4 \S+/p288_bs8_focal__f0-1-2-3-4 "
                     r".*--cases test .*--modalities CT .*--out results/amos22_task1/submission ", out)
    assert not (ROOT / "data" / "amos22").exists()


@pytest.mark.slow
def test_workflow_writes_the_submission(demo_dataset, tmp_path):
    """The rules for real on a tiny grid (2 settings x 2 folds, their A & B ensemble last): the
    submission holds one label file per test image in its geometry, equal to the evaluation
    ensemble's labels of the same image (same models, postprocessing, ensembling); done once."""
    validation = [_id(e["image"]) for e in json.loads((demo_dataset / "dataset.json").read_text())["validation"]]
    ids = with_test_images(demo_dataset, tmp_path / "ds", validation)
    config = _grid(tmp_path, tmp_path / "ds", {"models": ["a", "b"], "folds": "all"})
    res = tmp_path / "results"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", res / "submission",
                           res / "predictions" / "a+b__f0-1", "--configfile", config], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert sorted(p.name for p in (res / "submission").glob("*.nii.gz")) == sorted(f"{t}.nii.gz" for t in ids)
    for t, cid in ids.items():
        image = nib.load(str(tmp_path / "ds" / "imagesTs" / f"{t}.nii.gz"))
        labels, affine, shape = _labels(res / "submission" / f"{t}.nii.gz")
        assert shape == image.shape and np.array_equal(affine, image.affine)
        assert np.array_equal(labels, _labels(res / "predictions" / "a+b__f0-1" / f"{cid}.nii.gz")[0]), t
        assert labels.any()
    assert json.loads((res / "postprocessing" / "a.json").read_text()) is not None
    assert not (res / "probabilities_test").exists() or not any((res / "probabilities_test").iterdir())   # temp
    assert "Nothing to be done" in snakemake_n(res / "submission", "--configfile", config)


def test_submission_table_chooses_the_submitted_row_apart_from_the_figures(demo_dataset, tmp_path):
    """`inference.submission_table` names the table whose last row is submitted (default the
    last table); the slice figures' `figures.slices_table` no longer decides it."""
    root = with_test_images(demo_dataset, tmp_path / "ds", ["amos_0001"])
    path = _grid(tmp_path, root, {"setting": "b"}, submission=True)
    cfg = yaml.safe_load(path.read_text())
    cfg["inference"]["submission_table"] = "t1"
    cfg["figures"]["slices_table"] = "t2"
    path.write_text(yaml.safe_dump(cfg))
    out = snakemake_n("--configfile", path)
    assert re.search(r"predict --model \S+/train/a/fold_0/model.pt .*--cases test .* --labels-out \S+/submission ", out), \
        out[-3000:]
