#!/usr/bin/env bash
# Whole training epochs, side by side on the same preprocessed cases: `seggrid train` against
# nnU-Net 2.8.1's own nnUNetTrainer (its data loader, augmentation workers, transforms,
# train_step, validation), same recipe, network, patch, batch, iterations and epochs.
# Usage: benchmarks/speed/epoch_vs_nnunet.sh NNUNET_PYTHON [--device cpu|cuda] [--patch Z Y X] [--batch N]
#          [--iterations N] [--val-iterations N] [--epochs N] [--base-features N] [--max-features N]
#          [--cases N] [--case-shape X Y Z] [--case-spacing X Y Z] [--target-spacing Z Y X]
#          [--threads N] [--ours-setting JSON] [--work DIR]
# Defaults, cpu: patch 32 64 64, batch 2, 10 iterations + 2 validation, 3 epochs, features 8..64,
#   7 cases of 128 x 128 x 40 voxels at 2 x 2 x 4 mm (about 3-4 min on 2 cores);
# cuda: the paper's patch 64 160 160, batch 2, 250 + 50 iterations, 3 epochs, features 32..320,
#   6 AMOS-sized cases (512 x 512 x 100 at 0.75 x 0.75 x 3 mm, resampled to 2.0 x 0.688 x 0.688).
# Steps: seggrid make-scale-data -> validate -> fingerprint -> split (3 folds) -> plan ->
# preprocess (our venv); benchmarks/speed/plans_for_nnunet.py writes export-nnunet's plans (our side);
# benchmarks/speed/nnunet_layout.py writes the same arrays in nnU-Net's preprocessed layout (blosc2 + those plans); then ours trains fold 0, then nnU-Net
# (benchmarks/speed/nnunet_epoch.py), each under benchmarks/resources/tree_memory.py (host memory of the whole
# process tree, augmentation workers included). --ours-setting merges recipe keys into our
# setting (e.g. '{"compile": true}'); NNUNET_ENV (e.g. "nnUNet_n_proc_DA=4") is exported to the
# nnU-Net side only and reported as not its default. --work DIR keeps the files (data is reused).
# Prints {"seggrid": {...}, "nnunet": {...}, "ratio": {...}, ...} as JSON.
set -euo pipefail
cd "$(dirname "$0")/../.."
NNUNET_PYTHON=${1:?give the python of an environment with nnunetv2}
shift
BIN=${BIN:-.venv/bin}
DEVICE=cpu; PATCH=""; BATCH=2; ITER=""; VAL=""; EPOCHS=3; BASE=""; MAXF=""; CASES=""; SHAPE=""; SPACING=""
TARGET=""; THREADS=$(nproc); OURS='{}'; WORK=""
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --patch) PATCH="$2 $3 $4"; shift 4 ;;
    --batch) BATCH=$2; shift 2 ;;
    --iterations) ITER=$2; shift 2 ;;
    --val-iterations) VAL=$2; shift 2 ;;
    --epochs) EPOCHS=$2; shift 2 ;;
    --base-features) BASE=$2; shift 2 ;;
    --max-features) MAXF=$2; shift 2 ;;
    --cases) CASES=$2; shift 2 ;;
    --case-shape) SHAPE="$2 $3 $4"; shift 4 ;;
    --case-spacing) SPACING="$2 $3 $4"; shift 4 ;;
    --target-spacing) TARGET="$2 $3 $4"; shift 4 ;;
    --threads) THREADS=$2; shift 2 ;;
    --ours-setting) OURS=$2; shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    *) echo "epoch_vs_nnunet.sh: unknown option $1 (see the header of this script)" >&2; exit 2 ;;
  esac
done
if [ "$DEVICE" = cpu ]; then
  PATCH=${PATCH:-32 64 64}; ITER=${ITER:-10}; VAL=${VAL:-2}; BASE=${BASE:-8}; MAXF=${MAXF:-64}; CASES=${CASES:-7}
  SHAPE=${SHAPE:-128 128 40}; SPACING=${SPACING:-2 2 4}; TARGET=${TARGET:-4 2 2}; GPUS=0
elif [ "$DEVICE" = cuda ]; then
  PATCH=${PATCH:-64 160 160}; ITER=${ITER:-250}; VAL=${VAL:-50}; BASE=${BASE:-32}; MAXF=${MAXF:-320}; CASES=${CASES:-6}
  SHAPE=${SHAPE:-512 512 100}; SPACING=${SPACING:-0.75 0.75 3}; TARGET=${TARGET:-2.0 0.68825001 0.68825001}; GPUS=1
else
  echo "epoch_vs_nnunet.sh: --device must be cpu or cuda, not $DEVICE" >&2; exit 2
fi
if [ -z "$WORK" ]; then WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT; fi
mkdir -p "$WORK"
SEGGRID="env PYTHONPATH=workflow $BIN/python -m seggrid"
DATASET=Dataset990_SeggridBench
log() { echo "[epoch_vs_nnunet] $*" >&2; }
run() { "$@" > "$WORK/step.log" 2>&1 || { tail -30 "$WORK/step.log" >&2; exit 1; }; }

t_data=$(date +%s)
# shellcheck source=benchmarks/speed/bench_data.sh
source benchmarks/speed/bench_data.sh      # cwd: the repository root (cd above)
bench_data "$CASES" 0 3
SETTING=$($BIN/python - "$OURS" <<PY
import json, sys
s = {"name": "epoch_bench", "patch": [int(v) for v in "$PATCH".split()], "batch": $BATCH, "epochs": $EPOCHS,
     "iterations_per_epoch": $ITER, "val_iterations": $VAL, "base_features": $BASE, "max_features": $MAXF,
     "gpus": $GPUS, "threads": $THREADS}
s.update(json.loads(sys.argv[1]))
print(json.dumps(s))
PY
)
run $SEGGRID plan --setting-json "$SETTING" --fingerprint "$WORK/fingerprint.json" --dataset-check "$WORK/check.json" \
  --target-spacing $TARGET --out "$WORK/plan.json"
rm -rf "$WORK/nnUNet_preprocessed" "$WORK/nnUNet_results" "$WORK/ours"
log "writing nnU-Net's preprocessed layout"
NNUNET_ENV_VARS=(nnUNet_raw="$WORK/nnUNet_raw" nnUNet_preprocessed="$WORK/nnUNet_preprocessed" nnUNet_results="$WORK/nnUNet_results")
$BIN/python benchmarks/speed/plans_for_nnunet.py --plan "$WORK/plan.json" --preprocessed "$WORK/pre" \
  --dataset-name "$DATASET" --out "$WORK/nnunet_plans.json"
env "${NNUNET_ENV_VARS[@]}" "$NNUNET_PYTHON" benchmarks/speed/nnunet_layout.py --preprocessed "$WORK/pre" --plans "$WORK/nnunet_plans.json" \
  --splits "$WORK/splits.json" --dataset-json "$WORK/data/dataset.json" --threads "$THREADS" \
  --out "$WORK/nnUNet_preprocessed/$DATASET" > "$WORK/layout.json"
data_seconds=$(( $(date +%s) - t_data ))

log "seggrid train: $EPOCHS epochs x $ITER + $VAL iterations, patch $PATCH, batch $BATCH, $DEVICE"
$BIN/python benchmarks/resources/tree_memory.py "$WORK/ours_memory.json" -- env PYTHONPATH=workflow $BIN/python -m seggrid train \
  --plan "$WORK/plan.json" --preprocessed "$WORK/pre" --splits "$WORK/splits.json" --fold 0 --threads "$THREADS" \
  --gpus "$GPUS" --out "$WORK/ours" > "$WORK/ours.log" 2>&1 || { tail -30 "$WORK/ours.log" >&2; exit 1; }
log "nnUNetTrainer: the same"
# shellcheck disable=SC2086
$BIN/python benchmarks/resources/tree_memory.py "$WORK/nnunet_memory.json" -- env ${NNUNET_ENV:-} "${NNUNET_ENV_VARS[@]}" \
  "$NNUNET_PYTHON" benchmarks/speed/nnunet_epoch.py --preprocessed-root "$WORK/nnUNet_preprocessed" --dataset "$DATASET" \
  --results "$WORK/nnUNet_results" --epochs "$EPOCHS" --iterations "$ITER" --val-iterations "$VAL" --device "$DEVICE" \
  --out "$WORK/nnunet.json" > "$WORK/nnunet.log" 2>&1 || { tail -30 "$WORK/nnunet.log" >&2; exit 1; }

$BIN/python - "$WORK" "$data_seconds" "$THREADS" <<'PY'
import csv, json, os, statistics, sys
import torch
work, data_seconds, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
load = lambda name: json.load(open(os.path.join(work, name)))
plan, splits, nn, summary = load("plan.json"), load("splits.json"), load("nnunet.json"), load("ours/summary.json")
rows = list(csv.DictReader(open(os.path.join(work, "ours", "log.csv"))))
ours_epochs = [{"epoch": int(r["epoch"]), "seconds": round(float(r["seconds"]), 3),
                "data_wait_fraction": round(float(r["data_wait_fraction"]), 4),
                "peak_mem_mb": round(float(r["peak_mem_mb"]), 1), "train_loss": round(float(r["train_loss"]), 5),
                "val_loss": round(float(r["val_loss"]), 5), "pseudo_dice": round(float(r["pseudo_dice"]), 4)} for r in rows]
later = lambda xs: xs[1:] or xs
state = torch.load(os.path.join(work, "ours", "model.pt"), map_location="cpu", weights_only=False)["state_dict"]
s, cuda = plan["setting"], summary["device"].startswith("cuda")
ours = {
    "side": "seggrid", "device": summary["device"], "torch_threads": threads, "compile": summary["compile"],
    "precision": summary["precision"], "deterministic": summary["deterministic"],
    "data_pipeline": "one prefetch thread; augmentation batched on the training device",
    "parameters": sum(v.numel() for k, v in state.items()),
    "seconds_per_epoch_median": round(statistics.median(later([e["seconds"] for e in ours_epochs])), 3),
    "seconds_first_epoch": ours_epochs[0]["seconds"],
    "data_wait_fraction_median": round(statistics.median(later([e["data_wait_fraction"] for e in ours_epochs])), 4),
    "peak_mem_mb": max(e["peak_mem_mb"] for e in ours_epochs),
    "memory_kind": "cuda_max_allocated" if cuda else "peak_rss_main_process",
    "wall_seconds": round(summary["wall_seconds"], 2), "per_epoch": ours_epochs}
sides = {"seggrid": ours, "nnunet": nn}
for side, name in (("seggrid", "ours_memory.json"), ("nnunet", "nnunet_memory.json")):
    mem = load(name)
    sides[side].update({"process_wall_seconds": mem["wall_seconds"], "process_cpu_seconds": mem["cpu_seconds"],
                        "peak_tree_rss_mb": mem["peak_tree_rss_mb"],
                        "peak_tree_pss_mb": mem["peak_tree_pss_mb"], "peak_processes": mem["peak_processes"]})
ratio = lambda key: round(ours[key] / nn[key], 3) if nn.get(key) else None
fold = splits["folds"][0]
print(json.dumps({
    "benchmark": "epoch", "device": summary["device"], "patch": plan["topology"]["patch_effective"],
    "batch": s["batch"], "features": plan["topology"]["features"], "epochs": s["epochs"],
    "iterations_per_epoch": s["iterations_per_epoch"], "val_iterations": s["val_iterations"],
    "cases": {"train": len(fold["train"]), "val": len(fold["val"]), "layout": load("layout.json")["shapes"]},
    "host": {"cpu_count": os.cpu_count(), "load_average_at_end": os.getloadavg()},
    "data_preparation_seconds": data_seconds,
    "seconds_per_epoch": "median over epochs after the first (training + validation, no checkpoint writing); "
                         "first epoch separately (cuDNN autotuning, compilation, worker start-up)",
    "seggrid": ours, "nnunet": nn,
    "ratio": {"seconds_per_epoch": ratio("seconds_per_epoch_median"), "seconds_first_epoch": ratio("seconds_first_epoch"),
              "peak_mem": ratio("peak_mem_mb"), "peak_tree_pss": ratio("peak_tree_pss_mb"),
              "process_wall_seconds": ratio("process_wall_seconds"),
              "process_cpu_seconds": ratio("process_cpu_seconds")},
    "notes": ["process_*: the whole command (start-up, data loader workers, all epochs, final checkpoint), measured "
              "by benchmarks/resources/tree_memory.py; cpu seconds = user + system of the process and its workers, "
              "less sensitive than wall time to other load on a shared machine",
              "peak_tree_pss_mb: host memory of the process tree with shared pages split between the processes "
              "(nnU-Net's augmentation workers included); peak_mem_mb: each side's own figure (main process "
              "peak RSS on CPU, CUDA max allocated on a GPU)",
              "parameters: nnU-Net's PlainConvUNet keeps a segmentation head on the lowest decoder stage whose "
              "deep-supervision weight is 0; ours omits it (same trained network)"]
}, indent=1))
PY
