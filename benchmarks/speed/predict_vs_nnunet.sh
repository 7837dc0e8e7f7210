#!/usr/bin/env bash
# Whole-case inference, the same weights on both sides: `seggrid predict` against nnU-Net 2.8.1's
# nnUNetPredictor (as `nnUNetv2_predict` runs it, benchmarks/speed/nnunet_predict.py) on one raw case,
# step 0.5, 8 mirrorings, 1 and 5 folds.
# Usage: benchmarks/speed/predict_vs_nnunet.sh NNUNET_PYTHON [--device cpu|cuda] [--tiny] [--case-shape X Y Z]
#          [--case-spacing X Y Z] [--target-spacing Z Y X] [--patch Z Y X] [--base-features N]
#          [--max-features N] [--epochs N] [--iterations N] [--folds "1 5"] [--threads N] [--work DIR]
# Sizes:
#   --device cpu (default): a small case, 128 x 128 x 40 voxels at 1.6 x 1.6 x 3.2 mm -> (32, 102, 102)
#     at 4 x 2 x 2 mm (so both sides resample), patch 32 64 64, features 8..64, a model trained for
#     8 x 10 iterations (a few minutes on 2 cores);
#   --device cpu --tiny: 64 x 64 x 24 voxels, patch 16 32 32, features 4..16, 1 epoch (plumbing check);
#   --device cuda: one AMOS-sized case, 512 x 512 x 100 at 0.75 x 0.75 x 3 mm -> (150, 558, 558) at
#     2.0 x 0.688 x 0.688 mm, the paper's patch 64 160 160, features 32..320, fp16.
# Steps (our venv: $BIN/python, default .venv/bin): seggrid make-scale-data (2 training cases of the
# real CT sample + 1 validation case, the one predicted) -> validate -> fingerprint -> split (2 folds)
# -> plan -> preprocess -> train a small model on fold 0 (--epochs x --iterations, no augmentation,
# not compiled: it only has to give both sides the same non-trivial weights) -> seggrid export-nnunet. Then for each fold count:
# ours = `seggrid predict --cases evaluation --labels-out` (the model.pt given N times: with one trained
# fold, "5 folds" are the same weights 5 times, on both sides, so the work is 5 folds' work) and
# nnU-Net = nnunet_predict.py on the export (fold_0..fold_N-1), each under benchmarks/resources/tree_memory.py.
# Seconds per case: ours = the case's preprocessing (preprocess timings.json, one worker) + the
# predict process (start-up, model load, sliding window, labels in the input geometry); nnU-Net =
# its whole process (start-up, model load, predict_from_files: preprocessing, sliding window, export).
# --work DIR keeps the files and reuses the data and the model (same plan). Wall seconds on a shared
# machine follow its load: each side's process CPU seconds are printed too.
# Prints JSON: both sides per fold count, the agreement of the two label maps (share of equal voxels,
# Dice per organ between them), ratios, and what is not nnU-Net's default.
set -euo pipefail
cd "$(dirname "$0")/../.."
NNUNET_PYTHON=${1:?give the python of an environment with nnunetv2}
shift
BIN=${BIN:-.venv/bin}
DEVICE=cpu; TINY=0; SHAPE=""; SPACING=""; TARGET=""; PATCH=""; BASE=""; MAXF=""; EPOCHS=""; ITER=""
FOLDS="1 5"; THREADS=$(nproc); WORK=""
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --tiny) TINY=1; shift ;;
    --case-shape) SHAPE="$2 $3 $4"; shift 4 ;;
    --case-spacing) SPACING="$2 $3 $4"; shift 4 ;;
    --target-spacing) TARGET="$2 $3 $4"; shift 4 ;;
    --patch) PATCH="$2 $3 $4"; shift 4 ;;
    --base-features) BASE=$2; shift 2 ;;
    --max-features) MAXF=$2; shift 2 ;;
    --epochs) EPOCHS=$2; shift 2 ;;
    --iterations) ITER=$2; shift 2 ;;
    --folds) FOLDS=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    *) echo "predict_vs_nnunet.sh: unknown option $1 (see the header of this script)" >&2; exit 2 ;;
  esac
done
if [ "$DEVICE" = cpu ] && [ "$TINY" = 1 ]; then
  SHAPE=${SHAPE:-64 64 24}; SPACING=${SPACING:-1.6 1.6 3.2}; TARGET=${TARGET:-4 2 2}; PATCH=${PATCH:-16 32 32}
  BASE=${BASE:-4}; MAXF=${MAXF:-16}; EPOCHS=${EPOCHS:-1}; ITER=${ITER:-2}; GPUS=0; PRECISION=fp32
elif [ "$DEVICE" = cpu ]; then
  SHAPE=${SHAPE:-128 128 40}; SPACING=${SPACING:-1.6 1.6 3.2}; TARGET=${TARGET:-4 2 2}; PATCH=${PATCH:-32 64 64}
  BASE=${BASE:-8}; MAXF=${MAXF:-64}; EPOCHS=${EPOCHS:-8}; ITER=${ITER:-10}; GPUS=0; PRECISION=fp32
elif [ "$DEVICE" = cuda ]; then
  SHAPE=${SHAPE:-512 512 100}; SPACING=${SPACING:-0.75 0.75 3}; TARGET=${TARGET:-2.0 0.68825001 0.68825001}
  PATCH=${PATCH:-64 160 160}; BASE=${BASE:-32}; MAXF=${MAXF:-320}; EPOCHS=${EPOCHS:-2}; ITER=${ITER:-10}; GPUS=1
  PRECISION=fp16
else
  echo "predict_vs_nnunet.sh: --device must be cpu or cuda, not $DEVICE" >&2; exit 2
fi
if [ -z "$WORK" ]; then WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT; fi
mkdir -p "$WORK"
SEGGRID="env PYTHONPATH=workflow $BIN/python -m seggrid"
log() { echo "[predict_vs_nnunet] $*" >&2; }
run() { "$@" > "$WORK/step.log" 2>&1 || { tail -30 "$WORK/step.log" >&2; exit 1; }; }

t_data=$(date +%s)
# shellcheck source=benchmarks/speed/bench_data.sh
source benchmarks/speed/bench_data.sh      # cwd: the repository root (cd above)
bench_data 2 1 2
SETTING=$($BIN/python -c "
import json
print(json.dumps({'name': 'predict_bench', 'patch': [int(v) for v in '$PATCH'.split()], 'batch': 2, 'epochs': $EPOCHS,
                  'iterations_per_epoch': $ITER, 'val_iterations': 1, 'base_features': $BASE, 'max_features': $MAXF,
                  'precision': '$PRECISION', 'augmentation': 'none', 'compile': False, 'gpus': $GPUS, 'threads': $THREADS}))")
run $SEGGRID plan --setting-json "$SETTING" --fingerprint "$WORK/fingerprint.json" --dataset-check "$WORK/check.json" \
  --target-spacing $TARGET --out "$WORK/plan.json"
rm -rf "$WORK/export" "$WORK/ours_"* "$WORK/nnunet_"*
if [ -f "$WORK/model/model.pt" ] && cmp -s "$WORK/plan.json" "$WORK/model.plan.json"; then
  log "reusing the model trained in $WORK/model for this plan"
else
  log "training a small model ($EPOCHS epochs x $ITER iterations, patch $PATCH, features $BASE..$MAXF, $DEVICE)"
  rm -rf "$WORK/model"
  run $SEGGRID train --plan "$WORK/plan.json" --preprocessed "$WORK/pre" --splits "$WORK/splits.json" --fold 0 \
    --seed 1 --threads "$THREADS" --gpus "$GPUS" --out "$WORK/model"
  cp "$WORK/plan.json" "$WORK/model.plan.json"
fi
MAX_FOLDS=$(echo $FOLDS | tr ' ' '\n' | sort -n | tail -1)
run $SEGGRID export-nnunet --model $(for _ in $(seq "$MAX_FOLDS"); do printf '%s ' "$WORK/model/model.pt"; done) \
  --preprocessed "$WORK/pre" --out "$WORK/export"
data_seconds=$(( $(date +%s) - t_data ))
CASE=$($BIN/python -c "import json; print(json.load(open('$WORK/splits.json'))['evaluation'][0])")
IMAGE=$(env PYTHONPATH=workflow $BIN/python -c "
from seggrid.data.dataset import load_dataset
print(load_dataset('$WORK/data').case('$CASE').image)")

for n in $FOLDS; do
  log "$n fold(s): seggrid predict"
  models=$(for _ in $(seq "$n"); do printf '%s ' "$WORK/model/model.pt"; done)
  # shellcheck disable=SC2086
  $BIN/python benchmarks/resources/tree_memory.py "$WORK/ours_${n}_memory.json" -- env PYTHONPATH=workflow $BIN/python -m seggrid \
    predict --model $models --preprocessed "$WORK/pre" --splits "$WORK/splits.json" --cases evaluation \
    --dataset "$WORK/data" --step 0.5 --tta-flips 8 --threads "$THREADS" --gpus "$GPUS" \
    --labels-out "$WORK/ours_${n}" > "$WORK/ours_${n}.log" 2>&1 || { tail -30 "$WORK/ours_${n}.log" >&2; exit 1; }
  log "$n fold(s): nnUNetPredictor"
  # shellcheck disable=SC2046
  $BIN/python benchmarks/resources/tree_memory.py "$WORK/nnunet_${n}_memory.json" -- env nnUNet_raw="$WORK/nnUNet_raw" \
    nnUNet_preprocessed="$WORK/nnUNet_preprocessed" nnUNet_results="$WORK/nnUNet_results" "$NNUNET_PYTHON" \
    benchmarks/speed/nnunet_predict.py --model-folder "$WORK/export" --folds $(seq 0 $((n - 1))) --image "$IMAGE" \
    --out-dir "$WORK/nnunet_${n}" --device "$DEVICE" --save-input "$WORK/nnunet_${n}_input.npy" --json-out "$WORK/nnunet_${n}.json" \
    > "$WORK/nnunet_${n}.log" 2>&1 || { tail -30 "$WORK/nnunet_${n}.log" >&2; exit 1; }
done

$BIN/python - "$WORK" "$CASE" "$data_seconds" "$THREADS" "$FOLDS" <<'PY'
import json, os, sys
import nibabel as nib
import numpy as np
work, case, data_seconds, threads, folds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5].split()
load = lambda *p: json.load(open(os.path.join(work, *p)))
plan, pre_case = load("plan.json"), load("pre", f"{case}.json")
pre_seconds = load("pre", "timings.json")["cases"][case]["seconds"]
labels = {int(k): v for k, v in plan["labels"].items()}
runs, ratio = {}, {}
for n in folds:
    info = load(f"ours_{n}", "inference.json")
    mem_o, mem_n, nn = load(f"ours_{n}_memory.json"), load(f"nnunet_{n}_memory.json"), load(f"nnunet_{n}.json")
    cuda = info["device"].startswith("cuda")
    ours = {"side": "seggrid", "device": info["device"], "torch_threads": threads, "folds": len(info["models"]),
            "tta_flips": info["tta_flips"], "step": info["step"], "precision": plan["setting"]["precision"] if cuda else "fp32",
            "seconds_per_case": round(pre_seconds + mem_o["wall_seconds"], 2),
            "preprocess_seconds": round(pre_seconds, 2), "predict_process_seconds": round(mem_o["wall_seconds"], 2),
            "predict_in_job_seconds": round(info["cases"][case]["seconds"], 2),
            "peak_device_mb": round(info["cases"][case]["peak_mem_mb"], 1) if cuda else None,
            "peak_tree_rss_mb": mem_o["peak_tree_rss_mb"], "peak_tree_pss_mb": mem_o["peak_tree_pss_mb"],
            "process_cpu_seconds": mem_o.get("cpu_seconds")}
    nn.update({"seconds_per_case": round(mem_n["wall_seconds"], 2), "precision": "fp16 autocast" if cuda else "fp32",
               "peak_tree_rss_mb": mem_n["peak_tree_rss_mb"], "peak_tree_pss_mb": mem_n["peak_tree_pss_mb"],
               "peak_processes": mem_n["peak_processes"], "process_cpu_seconds": mem_n.get("cpu_seconds")})
    a = np.asarray(nib.load(os.path.join(work, f"ours_{n}", f"{case}.nii.gz")).dataobj)
    b = np.asarray(nib.load(nn["label_file"]).dataobj)
    agreement = {"shape_ours": list(a.shape), "shape_nnunet": list(b.shape)}
    if a.shape == b.shape:
        dice = {}
        for c, name in labels.items():
            if c == 0:
                continue
            x, y = a == c, b == c
            s = int(x.sum()) + int(y.sum())
            if s:
                dice[name] = round(2 * int((x & y).sum()) / s, 5)
        agreement.update({"voxels_equal": round(float((a == b).mean()), 6), "voxels_differing": int((a != b).sum()),
                          "foreground_share_ours": round(float((a > 0).mean()), 4),
                          "dice_between_per_organ": dice})
    x_ours, x_nn = np.load(os.path.join(work, "pre", f"{case}_img.npy")), np.load(os.path.join(work, f"nnunet_{n}_input.npy"))
    agreement["preprocessed_input"] = ({"max_abs_difference": float(np.abs(x_ours - x_nn).max()),
                                        "mean_abs_difference": float(np.abs(x_ours - x_nn).mean())}
                                       if x_ours.shape == x_nn.shape else
                                       {"shape_ours": list(x_ours.shape), "shape_nnunet": list(x_nn.shape)})
    runs[n] = {"seggrid": ours, "nnunet": nn, "agreement": agreement}
    r = lambda k, o=ours, t=nn: round(o[k] / t[k], 3) if t.get(k) else None
    ratio[f"seconds_per_case_{n}_fold{'s' if n != '1' else ''}"] = r("seconds_per_case")
    ratio[f"process_cpu_seconds_{n}"] = r("process_cpu_seconds")
    ratio[f"peak_tree_pss_{n}"] = r("peak_tree_pss_mb")
    if cuda:
        ratio[f"peak_device_{n}"] = r("peak_device_mb")
nn1 = runs[folds[0]]["nnunet"]
not_default = ["model: trained by seggrid (exported with `seggrid export-nnunet`), not by nnUNetTrainer",
               "plans: image_reader_writer NibabelIOWithReorient (nnU-Net's own planner picks SimpleITKIO for "
               ".nii.gz); it reorients to RAS as seggrid does"]
if int(max(folds, key=int)) > 1:
    not_default.append("folds > 1: the one trained fold exported as fold_0..fold_N-1 (the same weights N times)")
not_default += nn1["not_nnunet_default"]
print(json.dumps({
    "benchmark": "predict", "case": case, "device": runs[folds[0]]["seggrid"]["device"],
    "case_shape_file": list(nib.load(os.path.join(work, f"ours_{folds[0]}", f"{case}.nii.gz")).shape),
    "shape_preprocessed": pre_case["shape_preprocessed"], "patch": plan["topology"]["patch_effective"],
    "features": plan["topology"]["features"], "classes": plan["n_classes"], "step": 0.5, "mirrorings": 8,
    "host": {"cpu_count": os.cpu_count(), "load_average_at_end": os.getloadavg()},
    "data_and_training_seconds": data_seconds,
    "seconds_per_case": "ours: the case's preprocessing + the seggrid predict process; nnU-Net: its whole process "
                        "(model load, predict_from_files: preprocessing, sliding window, export)",
    "not_nnunet_default": not_default, "runs": runs, "ratio": ratio}, indent=1))
PY
