"""``seggrid <subcommand>``: one subcommand per workflow step (each Snakemake rule calls one).

Heavy modules (torch, MONAI) are imported inside the subcommands that need them, so the
light steps start fast. User errors (bad config, dataset, file) print one clear message
naming the file or key and exit with status 2; no partial output is left behind.
"""

from __future__ import annotations

import argparse
import json
import sys
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
    import json

    from seggrid.config import load_config
    from seggrid.outputs.status import format_status, grid_status

    status = grid_status(load_config(*a.configfile))
    print(json.dumps(status, indent=1, default=str) if a.json else format_status(status))


def cmd_config_docs(a):
    from seggrid.config_docs import write_config_docs

    print(f"[config-docs] wrote {write_config_docs(a.out)}")


def cmd_make_scale_data(a):
    from seggrid.data.scale_data import make_scale_dataset

    make_scale_dataset(a.out, a.seed, a.ct_train, a.mr_train, a.ct_val, a.mr_val, tuple(a.shape), tuple(a.spacing))


def cmd_check_config(a):
    from seggrid.config import load_config, prediction_sets, training_jobs

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

    fingerprint, check = _read(a.fingerprint), _read(a.dataset_check)
    target = a.target_spacing or fingerprint["target_spacing_rule"]
    plan = make_plan(complete_setting(_json_arg(a.setting_json)), target, fingerprint, check["labels"])
    write_json(a.out, plan)
    t = plan["topology"]
    print(f"[plan] {plan['setting']['name']}: patch {t['patch_requested']} -> {t['patch_effective']}, "
          f"pools {t['pools_per_axis']}, {len(t['strides'])} stages")


def cmd_preprocess(a):
    from seggrid.data.preprocess import preprocess_dataset

    preprocess_dataset(a.dataset, _read(a.fingerprint), a.target_spacing, a.out, a.mr_case_id_min, a.seed,
                       a.threads, a.modalities, normalization_option=a.normalization, test_cases=a.test_cases)


def cmd_split(a):
    from seggrid.io import write_json
    from seggrid.data.split import make_splits

    check = _read(a.dataset_check)
    write_json(a.out, make_splits(check["training"], check["validation"], a.folds, a.seed, a.holdout_fraction))


def cmd_train(a):
    from seggrid.engine.train import train

    splits = _read(a.splits)
    if not 0 <= a.fold < len(splits["folds"]):
        raise SeggridError(f"{a.splits}: no fold {a.fold} (has {len(splits['folds'])})")
    train(_read(a.plan), a.preprocessed, splits, a.fold, a.out, a.seed, a.threads, a.checkpoint_every, gpus=a.gpus,
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


def _add(sub, name: str, func, help_: str) -> argparse.ArgumentParser:
    """A subcommand ``name`` running ``func(args)``."""
    sp = sub.add_parser(name, help=help_, description=help_)
    sp.set_defaults(func=func)
    return sp


def _dataset_args(sp: argparse.ArgumentParser, required: bool = True) -> None:
    """--dataset, --mr-case-id-min and --modalities: which dataset and which of its cases."""
    sp.add_argument("--dataset", required=required, help="folder holding dataset.json")
    sp.add_argument("--mr-case-id-min", type=int, default=None, help="case ids numbered >= this are MR")
    sp.add_argument("--modalities", nargs="+", choices=("CT", "MR"), default=None,
                    help="keep only cases of these modalities")


def _add_setup_commands(sub) -> None:
    """Set-up and housekeeping: demo data, site profile, status, config docs and checks."""
    sp = _add(sub, "make-demo-data", cmd_make_demo_data, "build the embedded demo dataset (AMOS-style)")
    sp.add_argument("--out", required=True)
    sp.add_argument("--seed", type=int, default=12345)
    for k, d in (("ct-train", 8), ("mr-train", 4), ("ct-val", 2), ("mr-val", 2)):
        sp.add_argument(f"--{k}", type=int, default=d)
    sp.add_argument("--organs", nargs="+", default=None,
                    help="keep these AMOS organs (numbered 1.. in AMOS order), every other one background; default all")

    sp = _add(sub, "slurm-profile", cmd_slurm_profile,
             "write the SLURM site profile to ~/.config/snakemake/slurm (for `snakemake --profile slurm`)")
    sp.add_argument("--name", default="slurm")
    sp.add_argument("--account", default=None, help="sbatch --account (omit: --slurm-no-account)")
    sp.add_argument("--partition", default=None, help="sbatch --partition of GPU jobs (and of CPU steps, "
                    "unless --cpu-partition)")
    sp.add_argument("--cpu-partition", default=None, help="sbatch --partition of CPU steps (default: --partition)")
    sp.add_argument("--gpu-model", default=None,
                    help="e.g. a100: jobs with GPUs ask --gpus=a100:<n>; CPU steps ask for no GPU")
    sp.add_argument("--jobs", type=int, default=50, help="jobs queued at once")
    sp.add_argument("--force", action="store_true", help="replace an existing profile")

    sp = _add(sub, "status", cmd_status, "one line per training job (state, epoch, EMA pseudo-Dice, s/epoch, ETA), "
             "then the prediction sets and tables done; read from the outputs only")
    sp.add_argument("--configfile", nargs="+", default=["config/config.yaml"],
                    help="the config(s) the grid runs with, as given to snakemake (default config/config.yaml)")
    sp.add_argument("--json", action="store_true", help="machine-readable output")

    sp = _add(sub, "config-docs", cmd_config_docs, "write config/README.md (every config key) from the schema")
    sp.add_argument("--out", default="config/README.md")

    sp = _add(sub, "make-scale-data", cmd_make_scale_data,
             "build AMOS-sized cases (CT and MR, both orientations) for benchmarks/scale.sh")
    sp.add_argument("--out", required=True)
    sp.add_argument("--seed", type=int, default=0)
    for k, d in (("ct-train", 4), ("mr-train", 2), ("ct-val", 1), ("mr-val", 1)):
        sp.add_argument(f"--{k}", type=int, default=d)
    sp.add_argument("--shape", type=int, nargs=3, default=[512, 512, 100], help="voxels, file axes")
    sp.add_argument("--spacing", type=float, nargs=3, default=[0.75, 0.75, 3.0], help="mm, file axes")

    sp = _add(sub, "check-config", cmd_check_config, "validate config file(s) against the schema")
    sp.add_argument("configs", nargs="+")


def _add_data_commands(sub) -> None:
    """The data stage and planning: validate, fingerprint, plan, preprocess, split."""
    sp = _add(sub, "validate", cmd_validate, "check every case of a dataset; report all problems")
    _dataset_args(sp)
    sp.add_argument("--out", required=True)

    sp = _add(sub, "fingerprint", cmd_fingerprint, "spacing, shape and CT intensity statistics")
    _dataset_args(sp)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--out", required=True)

    sp = _add(sub, "plan", cmd_plan, "network topology and effective patch for one setting")
    sp.add_argument("--setting-json", required=True, help="resolved setting (JSON or @file)")
    sp.add_argument("--fingerprint", required=True)
    sp.add_argument("--dataset-check", required=True, help="output of 'seggrid validate'")
    sp.add_argument("--target-spacing", type=float, nargs=3, default=None, metavar=("Z", "Y", "X"))
    sp.add_argument("--out", required=True)

    sp = _add(sub, "preprocess", cmd_preprocess, "resample and normalise every case")
    _dataset_args(sp)
    sp.add_argument("--fingerprint", required=True)
    sp.add_argument("--target-spacing", type=float, nargs=3, default=None, metavar=("Z", "Y", "X"))
    sp.add_argument("--normalization", choices=["channel_name", "ct", "zscore", "per_modality"],
                    default="channel_name", help="intensity scheme (config key preprocessing.normalization)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--threads", type=int, default=1)
    sp.add_argument("--test-cases", action="store_true",
                    help="the dataset's test images instead (no labels; for the submission)")
    sp.add_argument("--out", required=True)

    sp = _add(sub, "split", cmd_split, "cross-validation folds and evaluation cases")
    sp.add_argument("--dataset-check", required=True)
    sp.add_argument("--folds", type=int, default=5)
    sp.add_argument("--seed", type=int, default=12345)
    sp.add_argument("--holdout-fraction", type=float, default=0.2)
    sp.add_argument("--out", required=True)


def _add_engine_commands(sub) -> None:
    """The engine: training one (setting, fold)."""
    sp = _add(sub, "train", cmd_train, "train one (setting, fold); run under torchrun for several GPUs")
    sp.add_argument("--plan", required=True)
    sp.add_argument("--preprocessed", required=True)
    sp.add_argument("--splits", required=True)
    sp.add_argument("--fold", type=int, required=True)
    sp.add_argument("--seed", type=int, default=12345)
    sp.add_argument("--threads", type=int, default=1)
    sp.add_argument("--checkpoint-every", type=int, default=None, help="default: the setting's checkpoint_every")
    sp.add_argument("--gpus", type=int, default=None,
                    help="GPUs of the job (a scheduling key, not in the plan); default: the plan's, else 0")
    sp.add_argument("--requeue-margin-min", type=float, default=10.0,
                    help="minutes kept before the job's time limit: the run stops at the last epoch boundary that "
                         "leaves them, checkpoints and is requeued (exit 75 outside SLURM); default 10")
    sp.add_argument("--out", required=True)


def _add_inference_commands(sub) -> None:
    """Inference: predicting, ensembling, the postprocessing decision."""
    sp = _add(sub, "predict", cmd_predict, "predict one model (its folds averaged) on the evaluation or CV cases")
    sp.add_argument("--model", nargs="+", required=True, help="model.pt of each fold of ONE setting")
    sp.add_argument("--preprocessed", required=True)
    sp.add_argument("--splits", default=None, help="splits.json (for --cases evaluation and cv)")
    sp.add_argument("--cases", choices=("evaluation", "cv", "test"), default="evaluation",
                    help="the evaluation cases, (cv) the validation cases of --fold, or (test) the dataset's test "
                         "images (labels named <case><file_ending>; --preprocessed from preprocess --test-cases)")
    sp.add_argument("--fold", type=int, default=None)
    sp.add_argument("--step", type=float, default=0.5)
    sp.add_argument("--tta-flips", type=int, choices=(1, 2, 8), default=8)
    sp.add_argument("--postprocessing", default=None, help="decision JSON (postprocess-decide) to apply")
    sp.add_argument("--threads", type=int, default=1)
    sp.add_argument("--gpus", type=int, default=0)
    _dataset_args(sp, required=False)
    sp.add_argument("--labels-out", default=None, help="folder: <case>.nii.gz labels in the input's geometry")
    sp.add_argument("--probabilities-out", default=None,
                    help="folder: <case>.npy uint8-quantised probabilities at the target spacing (for ensembles)")
    sp.add_argument("--target-labels-out", default=None,
                    help="folder: <case>.npz labels at the target spacing (for the postprocessing decision)")

    sp = _add(sub, "ensemble", cmd_ensemble, "average models' quantised probabilities; write NIfTI labels in input geometry")
    sp.add_argument("--members", nargs="+", required=True, help="predict --probabilities-out folders, one per model")
    sp.add_argument("--preprocessed", required=True)
    sp.add_argument("--seed", type=int, default=None, help="recorded in the provenance")
    sp.add_argument("--cases", choices=("evaluation", "test"), default="evaluation",
                    help="test: the members predicted the dataset's test images (the submission; labels named "
                         "<case><file_ending>)")
    _dataset_args(sp)
    sp.add_argument("--out", required=True)

    sp = _add(sub, "postprocess-decide", cmd_postprocess_decide,
             "keep-largest-component decision from a model's cross-validation predictions")
    sp.add_argument("--cv-predictions", nargs="+", required=True, help="one predict --cases cv --target-labels-out folder per fold")
    sp.add_argument("--preprocessed", required=True)
    sp.add_argument("--seed", type=int, default=None)
    sp.add_argument("--out", required=True)


def _add_evaluation_and_output_commands(sub) -> None:
    """Evaluation and outputs: metrics, tables, figures, the nnU-Net export."""
    sp = _add(sub, "evaluate", cmd_evaluate, "DSC and NSD per organ per case")
    sp.add_argument("--predictions", required=True)
    _dataset_args(sp)
    sp.add_argument("--splits", required=True)
    sp.add_argument("--metrics-json", required=True)
    sp.add_argument("--seed", type=int, default=None, help="recorded in the provenance")
    sp.add_argument("--threads", type=int, default=1, help="cases scored in parallel")
    sp.add_argument("--out-csv", required=True)
    sp.add_argument("--out-json", required=True)

    sp = _add(sub, "tables", cmd_tables, "the paper's tables as CSV, Markdown and LaTeX, with CIs and p-values")
    sp.add_argument("--config-json", required=True)
    sp.add_argument("--outdir", required=True)
    sp.add_argument("--tables-dir", required=True)
    sp.add_argument("--table", action="append", help="only this table (repeat); default all")

    sp = _add(sub, "per-organ", cmd_per_organ, "per-organ table of one prediction set")
    sp.add_argument("--metrics-csv", required=True)
    sp.add_argument("--title", required=True)
    sp.add_argument("--out-csv", required=True)
    sp.add_argument("--out-md", required=True)

    sp = _add(sub, "figures", cmd_figures, "Figure 1: training curves")
    sp.add_argument("--log", action="append", required=True, help="NAME=path/to/log.csv (repeat)")
    sp.add_argument("--out", required=True)

    sp = _add(sub, "slices", cmd_slices, "Figures 2-3: axial slices of a CT and an MR (or second CT) case")
    sp.add_argument("--predictions", required=True)
    sp.add_argument("--splits", required=True)
    sp.add_argument("--name", required=True, help="what predicted (shown in the title)")
    _dataset_args(sp)
    sp.add_argument("--out-first", required=True)
    sp.add_argument("--out-second", required=True)

    sp = _add(sub, "trends", cmd_trends, "DSC/NSD with CIs against a table's varied factor")
    sp.add_argument("--table", required=True, help="a table CSV")
    sp.add_argument("--varied", required=True)
    sp.add_argument("--title", required=True)
    sp.add_argument("--out", required=True)

    sp = _add(sub, "export-nnunet", cmd_export_nnunet,
             "write trained folds of ONE setting as an nnU-Net 2.8.1 model folder (plans.json, dataset.json, "
             "fold_<k>/checkpoint_final.pth) that nnUNetPredictor loads")
    sp.add_argument("--model", nargs="+", required=True, help="model.pt of each fold of ONE setting")
    sp.add_argument("--preprocessed", required=True,
                    help="the `seggrid preprocess` folder the models trained on (its manifest.json: normalisation)")
    sp.add_argument("--folds", type=int, nargs="+", default=None, help="fold number of each --model (default 0, 1, ...)")
    sp.add_argument("--dataset-name", default=None, help="plans' dataset_name (default Dataset000_<setting>)")
    sp.add_argument("--force", action="store_true", help="replace a non-empty --out")
    sp.add_argument("--out", required=True, help="the model folder to write")


def _add_bench_command(sub) -> None:
    """Benchmarks of the engine (bench.py)."""
    sp = _add(sub, "bench", cmd_bench, "benchmarks; print JSON (augment: data pipeline; step: one training step)")
    sp.add_argument("what", choices=["augment", "step"])
    sp.add_argument("--patch", type=int, nargs=3, default=[64, 160, 160], metavar=("Z", "Y", "X"))
    sp.add_argument("--batch", type=int, default=2, help="batch per process (per GPU)")
    sp.add_argument("--batches", type=int, default=10, help="augment: timed batches per variant")
    sp.add_argument("--threads", type=int, default=2)
    sp.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    sp.add_argument("--volume", type=int, nargs=3, default=None, help="augment: synthetic case shape (default 2.5 x patch)")
    sp.add_argument("--spacing", type=float, nargs=3, default=[2.0, 0.68825001, 0.68825001], metavar=("Z", "Y", "X"),
                    help="step: spacing the topology is planned for (mm; AMOS Task 1)")
    sp.add_argument("--base-features", type=int, default=32)
    sp.add_argument("--max-features", type=int, default=320)
    sp.add_argument("--max-pools-per-axis", type=int, default=5)
    sp.add_argument("--classes", type=int, default=16, help="step: output classes incl. background")
    sp.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32")
    sp.add_argument("--loss", choices=["dice_ce", "dice_focal", "dice_topk", "dice_perimeter", "topk"], default="dice_ce")
    sp.add_argument("--no-batch-dice", action="store_true", help="step: per-sample Dice (default: batch Dice, as AMOS)")
    sp.add_argument("--augmentation", choices=["nnunet", "mirror", "none"], default="none")
    sp.add_argument("--deterministic", choices=["auto", "true", "false"], default="auto")
    sp.add_argument("--compile", nargs="?", const="true", default="auto", choices=["auto", "true", "false"],
                    help="step: torch.compile the network (auto: on CUDA, as recipe.compile; bare --compile: true)")
    sp.add_argument("--channels-last", action="store_true", help="step: channels-last-3d memory format")
    sp.add_argument("--spatial-partitions", type=int, default=1,
                    help="step: split each sample into N slabs, one gloo rank each, against 1 partition (CPU)")
    sp.add_argument("--steps", type=int, default=3, help="step: timed steps")
    sp.add_argument("--warmup", type=int, default=1, help="step: untimed steps first")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="seggrid", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    _add_setup_commands(sub)
    _add_data_commands(sub)
    _add_engine_commands(sub)
    _add_inference_commands(sub)
    _add_evaluation_and_output_commands(sub)
    _add_bench_command(sub)
    return p

def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (SeggridError, OSError) as exc:      # OSError messages name the file
        print(f"seggrid {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
