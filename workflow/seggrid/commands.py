"""What each ``seggrid <subcommand>`` does: one function per subcommand, ``cmd_<name>(args)``.

``cli.py`` builds the parser and maps each subcommand to its function here. Heavy modules
(torch, MONAI) are imported inside the functions that need them, so the light steps start
fast.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

from seggrid.errors import SeggridError


def _json_arg(text: str):
    """A JSON value given inline or as @path."""
    if text.startswith("@"):
        text = Path(text[1:]).read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SeggridError(f"invalid JSON argument ({exc}): {text[:80]!r}") from exc


def _read(path):
    from seggrid.io import read_json

    return read_json(path)


def cmd_make_demo_data(a):
    from seggrid.data.demo_data import make_demo_dataset

    make_demo_dataset(a.out, a.seed, a.ct_train, a.mr_train, a.ct_val, a.mr_val, organs=a.organs)


def cmd_slurm_profile(a):
    from seggrid.site_profile import write_site_profile

    path = write_site_profile(a.name, a.account, a.partition, a.gpu_model, a.jobs, a.force, a.cpu_partition)
    print(f"[slurm-profile] wrote {path}; run: snakemake --profile {a.name} --configfile config/amos22_task1.yaml")


def cmd_status(a):
    from seggrid.config import load_config
    from seggrid.outputs.status import format_status, grid_status

    status = grid_status(load_config(*a.configfile))
    print(json.dumps(status, indent=1, default=str) if a.json else format_status(status))


def cmd_cost(a):
    import torch

    from seggrid.config import load_config
    from seggrid.io import read_json, write_json
    from seggrid.outputs.cost import activations, allreduce_shares, measure, project
    from seggrid.outputs.cost_measure import device_key, import_seconds
    from seggrid.outputs.cost_report import table_lines, write_outputs, write_resources

    config = load_config(*a.configfile)
    missing = [k for k in ("median_shape", "classes", "training_cases", "evaluation_cases") if config["cost"][k] is None]
    if missing:
        raise SeggridError(f"{', '.join(a.configfile)}: cost.{missing[0]} is not set; seggrid cost plans without data "
                           f"and needs cost.median_shape, classes, training_cases and evaluation_cases (docs/cost.md)")
    if config["preprocessing"]["target_spacing"] is None:
        raise SeggridError(f"{', '.join(a.configfile)}: preprocessing.target_spacing is null; seggrid cost plans "
                           f"without data and needs the spacing stated")
    if min(a.gpu_mem) <= 0 or a.budget_s < 0:
        raise SeggridError("cost: --gpu-mem must be positive GB and --budget-s not negative")
    if a.device not in ("auto", "cpu", "cuda"):
        raise SeggridError(f"cost: --device {a.device}: use auto, cpu or cuda")
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SeggridError("cost: --device cuda but no CUDA device is usable here")
    device = torch.device("cuda" if a.device == "cuda" or (a.device == "auto" and torch.cuda.is_available()) else "cpu")
    out = Path(a.out or Path(config["outdir"]) / "cost")
    cache_path = out / "calibration.json"
    cache = {} if a.recalibrate or not cache_path.exists() else read_json(cache_path)
    imports = cache.setdefault("import_s", {})
    dev = json.dumps(device_key(device), sort_keys=True)
    if dev not in imports:
        imports[dev] = import_seconds()
    calibrations = cache.setdefault("topologies", {})
    try:
        measured = measure(config, device, calibrations, a.budget_s, a.threads)
        memory = activations(config, device, cache.setdefault("activations", {}))
        gloo = allreduce_shares(config, memory, cache.setdefault("gloo_allreduce_s", {}))
    finally:
        out.mkdir(parents=True, exist_ok=True)
        write_json(cache_path, cache)          # whatever was measured is kept, even after an error
    projection = project(config, measured, memory, device, imports[dev], a.gpu_mem, a.threads)
    projection["config_files"] = list(a.configfile)
    projection["gloo_allreduce_s"] = gloo
    write_outputs(out, projection)
    print("\n".join(table_lines(projection)))
    print(f"[cost] wrote {out / 'cost.json'} and {out / 'cost.md'}")
    if a.write_resources:
        folder = write_resources(Path(a.write_resources), a.configfile, config, projection, config["cost"]["margin"])
        print(f"[cost] wrote {folder / 'resources.yaml'}; use: snakemake --profile {folder} -n")


def cmd_config_docs(a):
    from seggrid.config_docs import write_config_docs

    print(f"[config-docs] wrote {write_config_docs(a.out)}")


def cmd_make_scale_data(a):
    from seggrid.data.scale_data import make_scale_dataset

    make_scale_dataset(a.out, a.seed, a.ct_train, a.mr_train, a.ct_val, a.mr_val, tuple(a.shape), tuple(a.spacing))


def cmd_check_config(a):
    from seggrid.config import load_config
    from seggrid.layout import prediction_sets, training_jobs

    cfg = load_config(*a.configs)
    jobs = training_jobs(cfg)
    print(f"config OK: {len(cfg['settings'])} settings, {len(jobs)} training jobs, "
          f"{len(prediction_sets(cfg))} prediction sets")


def cmd_validate(a):
    from seggrid.io import write_json
    from seggrid.data.validate import validate_dataset

    report = validate_dataset(a.dataset, a.mr_case_id_min, a.modalities)
    write_json(a.out, report)
    print(f"[validate] OK: {report['n_training']} training, {report['n_validation']} validation cases")


def cmd_fingerprint(a):
    from seggrid.data.fingerprint import compute_fingerprint
    from seggrid.io import write_json

    write_json(a.out, compute_fingerprint(a.dataset, a.mr_case_id_min, a.seed, a.modalities))


def cmd_plan(a):
    from seggrid.io import write_json
    from seggrid.config import complete_setting
    from seggrid.engine.planner import make_plan
    from seggrid.plan import Plan

    fingerprint, check = _read(a.fingerprint), _read(a.dataset_check)
    target = a.target_spacing or fingerprint["target_spacing_rule"]
    plan = make_plan(complete_setting(_json_arg(a.setting_json)), target, fingerprint, check["labels"])
    t = Plan.from_dict(plan, a.out).topology          # validated before it is written
    write_json(a.out, plan)
    print(f"[plan] {plan['setting']['name']}: patch {list(t.patch_requested)} -> {list(t.patch_effective)}, "
          f"pools {list(t.pools_per_axis)}, {len(t.strides)} stages")


def cmd_preprocess(a):
    from seggrid.data.preprocess import preprocess_dataset

    preprocess_dataset(a.dataset, _read(a.fingerprint), a.target_spacing, a.out, a.mr_case_id_min, a.seed,
                       a.threads, a.modalities, normalization_option=a.normalization, test_cases=a.test_cases)


def cmd_split(a):
    from seggrid.io import write_json
    from seggrid.data.split import make_splits

    check = _read(a.dataset_check)
    write_json(a.out, make_splits(check["training"], check["validation"], a.folds, a.seed, a.holdout_fraction))


@contextmanager
def run_log(out_dir: Path):
    """Rank 0 of a training job copies its output to a log of its own run in the training dir
    (layout.RUN_LOGS): Snakemake's log of the job keeps only the latest run of a requeued job."""
    import os
    import time

    from seggrid.io import tee_to
    from seggrid.layout import RUN_HEADER, RUN_LOGS, run_log_name

    if os.environ.get("RANK", "0") != "0":
        yield
        return
    started, job = time.time(), os.environ.get("SLURM_JOB_ID")
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started))
    with tee_to(out_dir / RUN_LOGS / run_log_name(started, job), f"{RUN_HEADER} {stamp} job {job or 'none'}"):
        yield


def cmd_train(a):
    from seggrid.engine.train import train
    from seggrid.plan import Plan

    splits = _read(a.splits)
    if not 0 <= a.fold < len(splits["folds"]):
        raise SeggridError(f"{a.splits}: no fold {a.fold} (has {len(splits['folds'])})")
    raw = _read(a.plan)
    plan = Plan.from_dict(raw, a.plan)
    # a workflow plan holds no scheduling keys: the job's GPUs come from --gpus; a hand-made
    # plan may still name its ``gpus`` (torchrun without the workflow)
    gpus = a.gpus if a.gpus is not None else int(raw["setting"].get("gpus", 0))
    with run_log(Path(a.out)):
        train(plan, a.preprocessed, splits, a.fold, a.out, a.seed, a.threads, a.checkpoint_every, gpus=gpus,
              requeue_margin_min=a.requeue_margin_min)


def cmd_predict(a):
    from seggrid.data.dataset import load_dataset, submission_cases
    from seggrid.inference.predict import predict

    ds = load_dataset(a.dataset, a.mr_case_id_min, a.modalities) if a.dataset else None
    ending = ".nii.gz"
    if a.cases == "test":                       # the submission: the dataset's test images, no splits
        if ds is None:
            raise SeggridError("predict: --cases test needs --dataset (its test images)")
        cases, ending = [c.case_id for c in submission_cases(ds)], ds.file_ending
    elif a.splits is None:
        raise SeggridError(f"predict: --cases {a.cases} needs --splits")
    elif a.cases == "evaluation":
        cases = _read(a.splits)["evaluation"]
    else:
        splits = _read(a.splits)
        if a.fold is None or not 0 <= a.fold < len(splits["folds"]):
            raise SeggridError(f"{a.splits}: --cases cv needs --fold in 0..{len(splits['folds']) - 1}")
        cases = splits["folds"][a.fold]["val"]
    predict(a.model, a.preprocessed, cases, labels_out=a.labels_out, probabilities_out=a.probabilities_out,
            target_labels_out=a.target_labels_out, postprocessing=a.postprocessing, dataset=ds, step=a.step,
            flips=a.tta_flips, threads=a.threads, gpus=a.gpus, file_ending=ending)


def cmd_ensemble(a):
    from seggrid.data.dataset import load_dataset, submission_cases
    from seggrid.inference.ensemble import ensemble

    ds = load_dataset(a.dataset, a.mr_case_id_min, a.modalities)
    ending = ".nii.gz"
    if a.cases == "test":                       # the submission: labels named <case><file_ending>
        ending = ds.file_ending
        expected, members = {c.case_id for c in submission_cases(ds)}, [Path(m) for m in a.members]
        predicted = {p.stem for p in members[0].glob("*.npy")}
        if members[0].is_dir() and predicted != expected:
            raise SeggridError(f"{members[0]}: predicts {len(predicted)} case(s), the dataset lists "
                               f"{len(expected)} test cases (missing e.g. {sorted(expected - predicted)[:3]})")
    ensemble(a.members, a.preprocessed, ds, a.out, a.seed, file_ending=ending)


def cmd_postprocess_decide(a):
    from seggrid.inference.ensemble import decide_postprocessing

    decide_postprocessing(a.cv_predictions, a.preprocessed, a.out, a.seed)


def _name_value(text: str, option: str) -> tuple[str, str]:
    if "=" not in text:
        raise SeggridError(f"{option}: expected NAME=PATH, got {text!r}")
    name, value = text.split("=", 1)
    return name, value


def cmd_evaluate(a):
    from seggrid.evaluation.evaluate import evaluate

    s = evaluate(a.predictions, a.dataset, _read(a.splits)["evaluation"], _json_arg(a.metrics_json), a.out_csv,
                 a.out_json, a.mr_case_id_min, a.modalities, a.seed, a.threads)
    print(f"[evaluate] mean DSC {s['dsc']:.4f}, NSD {s['nsd']:.4f} over {s['n_cases']} cases")


def cmd_tables(a):
    from seggrid.outputs.report import write_table

    config = _json_arg(a.config_json)
    for name in a.table or list(config["tables"]):
        if name not in config["tables"]:
            raise SeggridError(f"--table: unknown table '{name}'; the config has {sorted(config['tables'])}")
        write_table(config, name, a.outdir, a.tables_dir)


def cmd_per_organ(a):
    from seggrid.outputs.report import write_per_organ

    write_per_organ(a.metrics_csv, a.out_csv, a.out_md, a.title)


def cmd_figures(a):
    from seggrid.outputs.figures import figure1

    figure1(dict(_name_value(item, "--log") for item in a.log), a.out)


def cmd_slices(a):
    from seggrid.data.dataset import load_dataset
    from seggrid.outputs.figures import slice_figure

    ds = load_dataset(a.dataset, a.mr_case_id_min, a.modalities)
    predicted = {p.name[:-7] for p in Path(a.predictions).glob("*.nii.gz")}
    cases = [ds.case(c) for c in _read(a.splits)["evaluation"] if c in predicted]
    if not cases:
        raise SeggridError(f"{a.predictions}: no predicted evaluation case to show")
    ct = [c for c in cases if c.modality == "CT"]
    other = [c for c in cases if c.modality != "CT"] or ct[1:] or cases
    for case, out, fig in ((ct[0] if ct else cases[0], a.out_first, 2), (other[0], a.out_second, 3)):
        zs = slice_figure(case.image, Path(a.predictions) / f"{case.case_id}.nii.gz", case.label, ds.labels,
                          case.modality, f"Figure {fig}: {case.case_id} ({case.modality}), {a.name}", out)
        print(f"[slices] Figure {fig}: {case.case_id} ({case.modality}), {len(zs)} slices -> {out}")


def cmd_trends(a):
    import pandas as pd

    from seggrid.outputs.figures import trend_plot

    trend_plot(pd.read_csv(a.table), a.varied, a.title, a.out)


def cmd_rank_plot(a):
    from seggrid.io import read_json
    from seggrid.outputs.figures import rank_plot

    ranks = read_json(a.ranks)
    if not ranks.get("frequencies"):
        raise SeggridError(f"{a.ranks}: no bootstrap ranks (a rank plot needs a table with 3 or more rows)")
    rank_plot(ranks, a.out)


def cmd_export_nnunet(a):
    from seggrid.outputs.export_nnunet import export_nnunet

    out = export_nnunet(a.model, a.preprocessed, a.out, a.folds, a.force, a.dataset_name)
    print(f"[export-nnunet] wrote {out} ({len(a.model)} fold(s)); load it with nnUNetPredictor."
          f"initialize_from_trained_model_folder('{out}', use_folds=None)")


def cmd_bench(a):
    import json

    from seggrid.bench import bench_augment, bench_step

    if min(a.patch) < 1 or a.batch < 1 or a.batches < 1 or a.steps < 1 or a.warmup < 0:
        raise SeggridError("bench: --patch, --batch, --batches and --steps must be positive")
    if a.device.startswith("cuda") and not __import__("torch").cuda.is_available():
        raise SeggridError(f"bench: --device {a.device} but no CUDA device is usable here")
    if a.what == "augment":
        result = bench_augment(a.patch, a.batch, a.batches, a.threads, a.device, a.volume)
    elif a.spatial_partitions > 1:
        from seggrid.bench import bench_spatial

        if a.device != "cpu":
            raise SeggridError("bench step --spatial-partitions runs gloo ranks on the CPU; use --device cpu")
        result = bench_spatial(a.patch, a.batch, a.spacing, a.spatial_partitions, a.base_features, a.max_features,
                               a.classes, a.threads, a.steps, a.warmup)
    else:
        result = bench_step(a.patch, a.batch, a.spacing, a.base_features, a.max_features, a.classes, a.precision,
                            a.device, a.steps, a.warmup, a.threads, a.loss, not a.no_batch_dice, a.augmentation,
                            {"auto": "auto", "true": True, "false": False}[a.deterministic],
                            {"auto": "auto", "true": True, "false": False}[a.compile],
                            a.channels_last, a.max_pools_per_axis)
    print(json.dumps(result, indent=1))
