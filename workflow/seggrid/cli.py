"""``seggrid <subcommand>``: one subcommand per workflow step (each Snakemake rule calls one).

This module builds the parser; what each subcommand does is ``commands.cmd_<name>``. User
errors (bad config, dataset, file) print one clear message naming the file or key and exit
with status 2; no partial output is left behind.
"""

from __future__ import annotations

import argparse
import sys

from seggrid import commands
from seggrid.errors import SeggridError


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
    sp = _add(sub, "make-demo-data", commands.cmd_make_demo_data, "build the embedded demo dataset (AMOS-style)")
    sp.add_argument("--out", required=True)
    sp.add_argument("--seed", type=int, default=12345)
    for k, d in (("ct-train", 8), ("mr-train", 4), ("ct-val", 2), ("mr-val", 2)):
        sp.add_argument(f"--{k}", type=int, default=d)
    sp.add_argument("--organs", nargs="+", default=None,
                    help="keep these AMOS organs (numbered 1.. in AMOS order), every other one background; default all")

    sp = _add(sub, "slurm-profile", commands.cmd_slurm_profile,
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

    sp = _add(sub, "status", commands.cmd_status, "one line per training job (state, epoch, EMA pseudo-Dice, s/epoch, ETA), "
             "then the prediction sets and tables done; read from the outputs only")
    sp.add_argument("--configfile", nargs="+", default=["config/config.yaml"],
                    help="the config(s) the grid runs with, as given to snakemake (default config/config.yaml)")
    sp.add_argument("--json", action="store_true", help="machine-readable output")

    sp = _add(sub, "cost", commands.cmd_cost, "measure every training topology of a grid on this device and "
             "project wall time, GPU-hours, memory fit and the SLURM resources of each job (docs/cost.md)")
    sp.add_argument("--configfile", nargs="+", default=["config/config.yaml"],
                    help="the config(s) the grid runs with, as given to snakemake (default config/config.yaml)")
    sp.add_argument("--budget-s", type=float, default=90.0,
                    help="stop starting calibrations after this many seconds; the rest are extrapolated")
    sp.add_argument("--gpu-mem", type=float, nargs="+", default=[40.0, 80.0], help="GPU memory sizes (GB) to fit")
    sp.add_argument("--device", default="auto", help="auto (CUDA when usable, else CPU), cpu or cuda")
    sp.add_argument("--threads", type=int, default=None,
                    help="CPU threads of a calibration (default: each setting's `threads`, as its job gets)")
    sp.add_argument("--out", default=None, help="output folder (default <outdir>/cost)")
    sp.add_argument("--write-resources", default=None, metavar="DIR",
                    help="write DIR/resources.yaml (measured runtime_min, mem_mb) and DIR/config.yaml (a profile)")
    sp.add_argument("--recalibrate", action="store_true", help="ignore the cached calibrations")

    sp = _add(sub, "config-docs", commands.cmd_config_docs, "write config/README.md (every config key) from the schema")
    sp.add_argument("--out", default="config/README.md")

    sp = _add(sub, "make-scale-data", commands.cmd_make_scale_data,
             "build AMOS-sized cases (CT and MR, both orientations) for benchmarks/resources/scale.sh")
    sp.add_argument("--out", required=True)
    sp.add_argument("--seed", type=int, default=0)
    for k, d in (("ct-train", 4), ("mr-train", 2), ("ct-val", 1), ("mr-val", 1)):
        sp.add_argument(f"--{k}", type=int, default=d)
    sp.add_argument("--shape", type=int, nargs=3, default=[512, 512, 100], help="voxels, file axes")
    sp.add_argument("--spacing", type=float, nargs=3, default=[0.75, 0.75, 3.0], help="mm, file axes")

    sp = _add(sub, "check-config", commands.cmd_check_config, "validate config file(s) against the schema")
    sp.add_argument("configs", nargs="+")


def _add_data_commands(sub) -> None:
    """The data stage and planning: validate, fingerprint, plan, preprocess, split."""
    sp = _add(sub, "validate", commands.cmd_validate, "check every case of a dataset; report all problems")
    _dataset_args(sp)
    sp.add_argument("--out", required=True)

    sp = _add(sub, "fingerprint", commands.cmd_fingerprint, "spacing, shape and CT intensity statistics")
    _dataset_args(sp)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--out", required=True)

    sp = _add(sub, "plan", commands.cmd_plan, "network topology and effective patch for one setting")
    sp.add_argument("--setting-json", required=True, help="resolved setting (JSON or @file)")
    sp.add_argument("--fingerprint", required=True)
    sp.add_argument("--dataset-check", required=True, help="output of 'seggrid validate'")
    sp.add_argument("--target-spacing", type=float, nargs=3, default=None, metavar=("Z", "Y", "X"))
    sp.add_argument("--out", required=True)

    sp = _add(sub, "preprocess", commands.cmd_preprocess, "resample and normalise every case")
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

    sp = _add(sub, "split", commands.cmd_split, "cross-validation folds and evaluation cases")
    sp.add_argument("--dataset-check", required=True)
    sp.add_argument("--folds", type=int, default=5)
    sp.add_argument("--seed", type=int, default=12345)
    sp.add_argument("--holdout-fraction", type=float, default=0.2)
    sp.add_argument("--out", required=True)


def _add_engine_commands(sub) -> None:
    """The engine: training one (setting, fold)."""
    sp = _add(sub, "train", commands.cmd_train, "train one (setting, fold); run under torchrun for several GPUs")
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
    sp = _add(sub, "predict", commands.cmd_predict, "predict one model (its folds averaged) on the evaluation or CV cases")
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

    sp = _add(sub, "ensemble", commands.cmd_ensemble, "average models' quantised probabilities; write NIfTI labels in input geometry")
    sp.add_argument("--members", nargs="+", required=True, help="predict --probabilities-out folders, one per model")
    sp.add_argument("--preprocessed", required=True)
    sp.add_argument("--seed", type=int, default=None, help="recorded in the provenance")
    sp.add_argument("--cases", choices=("evaluation", "test"), default="evaluation",
                    help="test: the members predicted the dataset's test images (the submission; labels named "
                         "<case><file_ending>)")
    _dataset_args(sp)
    sp.add_argument("--out", required=True)

    sp = _add(sub, "postprocess-decide", commands.cmd_postprocess_decide,
             "keep-largest-component decision from a model's cross-validation predictions")
    sp.add_argument("--cv-predictions", nargs="+", required=True, help="one predict --cases cv --target-labels-out folder per fold")
    sp.add_argument("--preprocessed", required=True)
    sp.add_argument("--seed", type=int, default=None)
    sp.add_argument("--out", required=True)


def _add_evaluation_and_output_commands(sub) -> None:
    """Evaluation and outputs: metrics, tables, figures, the nnU-Net export."""
    sp = _add(sub, "evaluate", commands.cmd_evaluate, "DSC and NSD per organ per case")
    sp.add_argument("--predictions", required=True)
    _dataset_args(sp)
    sp.add_argument("--splits", required=True)
    sp.add_argument("--metrics-json", required=True)
    sp.add_argument("--seed", type=int, default=None, help="recorded in the provenance")
    sp.add_argument("--threads", type=int, default=1, help="cases scored in parallel")
    sp.add_argument("--out-csv", required=True)
    sp.add_argument("--out-json", required=True)

    sp = _add(sub, "tables", commands.cmd_tables, "the paper's tables as CSV, Markdown and LaTeX: CIs, comparisons, verdicts, ranks")
    sp.add_argument("--config-json", required=True)
    sp.add_argument("--outdir", required=True)
    sp.add_argument("--tables-dir", required=True)
    sp.add_argument("--table", action="append", help="only this table (repeat); default all")

    sp = _add(sub, "per-organ", commands.cmd_per_organ, "per-organ table of one prediction set")
    sp.add_argument("--metrics-csv", required=True)
    sp.add_argument("--title", required=True)
    sp.add_argument("--out-csv", required=True)
    sp.add_argument("--out-md", required=True)

    sp = _add(sub, "figures", commands.cmd_figures, "Figure 1: training curves")
    sp.add_argument("--log", action="append", required=True, help="NAME=path/to/log.csv (repeat)")
    sp.add_argument("--out", required=True)

    sp = _add(sub, "slices", commands.cmd_slices, "Figures 2-3: axial slices of a CT and an MR (or second CT) case")
    sp.add_argument("--predictions", required=True)
    sp.add_argument("--splits", required=True)
    sp.add_argument("--name", required=True, help="what predicted (shown in the title)")
    _dataset_args(sp)
    sp.add_argument("--out-first", required=True)
    sp.add_argument("--out-second", required=True)

    sp = _add(sub, "trends", commands.cmd_trends, "DSC/NSD with CIs against a table's varied factor")
    sp.add_argument("--table", required=True, help="a table CSV")
    sp.add_argument("--varied", required=True)
    sp.add_argument("--title", required=True)
    sp.add_argument("--out", required=True)

    sp = _add(sub, "rank-plot", commands.cmd_rank_plot, "blob plot of a table's bootstrap ranks")
    sp.add_argument("--ranks", required=True, help="a table's .ranks.json")
    sp.add_argument("--out", required=True)

    sp = _add(sub, "export-nnunet", commands.cmd_export_nnunet,
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
    sp = _add(sub, "bench", commands.cmd_bench, "benchmarks; print JSON (augment: data pipeline; step: one training step)")
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
    sp.add_argument("--precision", choices=["fp32", "fp16", "bf16", "auto"], default="fp32")
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
