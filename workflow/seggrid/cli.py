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
    from seggrid.demo_data import make_demo_dataset

    make_demo_dataset(a.out, a.seed, a.ct_train, a.mr_train, a.ct_val, a.mr_val)


def cmd_check_config(a):
    from seggrid.config import load_config, prediction_sets, training_jobs

    cfg = load_config(*a.configs)
    jobs = training_jobs(cfg)
    print(f"config OK: {len(cfg['settings'])} settings, {len(jobs)} training jobs, "
          f"{len(prediction_sets(cfg))} prediction sets")


def cmd_validate(a):
    from seggrid.io import write_json
    from seggrid.validate import validate_dataset

    report = validate_dataset(a.dataset, a.mr_case_id_min, a.modalities)
    write_json(a.out, report)
    print(f"[validate] OK: {report['n_training']} training, {report['n_validation']} validation cases")


def cmd_fingerprint(a):
    from seggrid.fingerprint import compute_fingerprint
    from seggrid.io import write_json

    write_json(a.out, compute_fingerprint(a.dataset, a.mr_case_id_min, a.seed, a.modalities))


def cmd_plan(a):
    from seggrid.io import write_json
    from seggrid.config import complete_setting
    from seggrid.planner import make_plan

    fingerprint, check = _read(a.fingerprint), _read(a.dataset_check)
    target = a.target_spacing or fingerprint["target_spacing_rule"]
    plan = make_plan(complete_setting(_json_arg(a.setting_json)), target, fingerprint, check["labels"])
    write_json(a.out, plan)
    t = plan["topology"]
    print(f"[plan] {plan['setting']['name']}: patch {t['patch_requested']} -> {t['patch_effective']}, "
          f"pools {t['pools_per_axis']}, {len(t['strides'])} stages")


def cmd_preprocess(a):
    from seggrid.preprocess import preprocess_dataset

    preprocess_dataset(a.dataset, _read(a.fingerprint), a.target_spacing, a.out, a.mr_case_id_min, a.seed,
                       a.threads, a.modalities)


def cmd_split(a):
    from seggrid.io import write_json
    from seggrid.split import make_splits

    check = _read(a.dataset_check)
    write_json(a.out, make_splits(check["training"], check["validation"], a.folds, a.seed, a.holdout_fraction))


def cmd_train(a):
    from seggrid.train import train

    splits = _read(a.splits)
    if not 0 <= a.fold < len(splits["folds"]):
        raise SeggridError(f"{a.splits}: no fold {a.fold} (has {len(splits['folds'])})")
    train(_read(a.plan), a.preprocessed, splits, a.fold, a.out, a.seed, a.threads, a.checkpoint_every)


def cmd_predict(a):
    from seggrid.predict import predict

    predict(a.model, a.preprocessed, _read(a.splits)["evaluation"], a.out, a.step, a.tta_flips, a.threads, a.gpus)


def cmd_ensemble(a):
    from seggrid.ensemble import ensemble

    ensemble(a.members, a.preprocessed, a.dataset, a.out, a.mr_case_id_min, a.modalities, a.seed)


def cmd_evaluate(a):
    from seggrid.evaluate import evaluate

    s = evaluate(a.predictions, a.dataset, _read(a.splits)["evaluation"], _json_arg(a.metrics_json), a.out_csv,
                 a.out_json, a.mr_case_id_min, a.modalities, a.seed)
    print(f"[evaluate] mean DSC {s['dsc']:.4f}, NSD {s['nsd']:.4f} over {s['n_cases']} cases")


def cmd_tables(a):
    from seggrid.report import write_tables

    write_tables(_json_arg(a.config_json), a.outdir, a.tables_dir)


def cmd_figures(a):
    from seggrid.report import figure1

    logs = {}
    for item in a.log:
        name, _, path = item.partition("=")
        if not path:
            raise SeggridError(f"--log expects NAME=PATH, got {item!r}")
        logs[name] = path
    figure1(logs, a.out)


def cmd_bench(a):
    import json

    from seggrid.bench import bench_augment

    if min(a.patch) < 1 or a.batch < 1 or a.batches < 1:
        raise SeggridError("bench: --patch, --batch and --batches must be positive")
    print(json.dumps(bench_augment(a.patch, a.batch, a.batches, a.threads, a.device, a.volume), indent=1))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="seggrid", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    def add(name, func, help_):
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(func=func)
        return sp

    def dataset_args(sp):
        sp.add_argument("--dataset", required=True, help="folder holding dataset.json")
        sp.add_argument("--mr-case-id-min", type=int, default=None, help="case ids numbered >= this are MR")
        sp.add_argument("--modalities", nargs="+", choices=("CT", "MR"), default=None,
                        help="keep only cases of these modalities")

    sp = add("make-demo-data", cmd_make_demo_data, "build the embedded demo dataset (AMOS-style)")
    sp.add_argument("--out", required=True)
    sp.add_argument("--seed", type=int, default=12345)
    for k, d in (("ct-train", 8), ("mr-train", 4), ("ct-val", 2), ("mr-val", 2)):
        sp.add_argument(f"--{k}", type=int, default=d)

    sp = add("check-config", cmd_check_config, "validate config file(s) against the schema")
    sp.add_argument("configs", nargs="+")

    sp = add("validate", cmd_validate, "check every case of a dataset; report all problems")
    dataset_args(sp)
    sp.add_argument("--out", required=True)

    sp = add("fingerprint", cmd_fingerprint, "spacing, shape and CT intensity statistics")
    dataset_args(sp)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--out", required=True)

    sp = add("plan", cmd_plan, "network topology and effective patch for one setting")
    sp.add_argument("--setting-json", required=True, help="resolved setting (JSON or @file)")
    sp.add_argument("--fingerprint", required=True)
    sp.add_argument("--dataset-check", required=True, help="output of 'seggrid validate'")
    sp.add_argument("--target-spacing", type=float, nargs=3, default=None, metavar=("Z", "Y", "X"))
    sp.add_argument("--out", required=True)

    sp = add("preprocess", cmd_preprocess, "resample and normalise every case")
    dataset_args(sp)
    sp.add_argument("--fingerprint", required=True)
    sp.add_argument("--target-spacing", type=float, nargs=3, default=None, metavar=("Z", "Y", "X"))
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--threads", type=int, default=1)
    sp.add_argument("--out", required=True)

    sp = add("split", cmd_split, "cross-validation folds and evaluation cases")
    sp.add_argument("--dataset-check", required=True)
    sp.add_argument("--folds", type=int, default=5)
    sp.add_argument("--seed", type=int, default=12345)
    sp.add_argument("--holdout-fraction", type=float, default=0.2)
    sp.add_argument("--out", required=True)

    sp = add("train", cmd_train, "train one (setting, fold); run under torchrun for several GPUs")
    sp.add_argument("--plan", required=True)
    sp.add_argument("--preprocessed", required=True)
    sp.add_argument("--splits", required=True)
    sp.add_argument("--fold", type=int, required=True)
    sp.add_argument("--seed", type=int, default=12345)
    sp.add_argument("--threads", type=int, default=1)
    sp.add_argument("--checkpoint-every", type=int, default=5)
    sp.add_argument("--out", required=True)

    sp = add("predict", cmd_predict, "sliding-window probabilities for the evaluation cases")
    sp.add_argument("--model", required=True)
    sp.add_argument("--preprocessed", required=True)
    sp.add_argument("--splits", required=True)
    sp.add_argument("--step", type=float, default=0.5)
    sp.add_argument("--tta-flips", type=int, choices=(1, 2, 8), default=8)
    sp.add_argument("--threads", type=int, default=1)
    sp.add_argument("--gpus", type=int, default=0)
    sp.add_argument("--out", required=True)

    sp = add("ensemble", cmd_ensemble, "average probabilities; write NIfTI labels in input geometry")
    sp.add_argument("--members", nargs="+", required=True)
    sp.add_argument("--preprocessed", required=True)
    sp.add_argument("--seed", type=int, default=None, help="recorded in the provenance")
    dataset_args(sp)
    sp.add_argument("--out", required=True)

    sp = add("evaluate", cmd_evaluate, "DSC and NSD per organ per case")
    sp.add_argument("--predictions", required=True)
    dataset_args(sp)
    sp.add_argument("--splits", required=True)
    sp.add_argument("--metrics-json", required=True)
    sp.add_argument("--seed", type=int, default=None, help="recorded in the provenance")
    sp.add_argument("--out-csv", required=True)
    sp.add_argument("--out-json", required=True)

    sp = add("tables", cmd_tables, "Tables 1-4 as CSV and Markdown")
    sp.add_argument("--config-json", required=True)
    sp.add_argument("--outdir", required=True)
    sp.add_argument("--tables-dir", required=True)

    sp = add("figures", cmd_figures, "Figure 1: training curves")
    sp.add_argument("--log", action="append", required=True, help="NAME=path/to/log.csv (repeat)")
    sp.add_argument("--out", required=True)

    sp = add("bench", cmd_bench, "benchmarks; print JSON")
    sp.add_argument("what", choices=["augment"])
    sp.add_argument("--patch", type=int, nargs=3, default=[64, 160, 160], metavar=("Z", "Y", "X"))
    sp.add_argument("--batch", type=int, default=2)
    sp.add_argument("--batches", type=int, default=10, help="timed batches per variant")
    sp.add_argument("--threads", type=int, default=2)
    sp.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    sp.add_argument("--volume", type=int, nargs=3, default=None, help="synthetic case shape (default 2.5 x patch)")
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
