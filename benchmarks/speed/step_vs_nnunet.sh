#!/usr/bin/env bash
# One training step, side by side in one run: ours (`seggrid bench step`), then nnU-Net v2's
# network + loss + step on the same topology, patch, batch, classes, precision and device,
# as nnUNetTrainer runs it by default there (on CUDA it compiles the network and its Dice
# term; on the CPU nothing; benchmarks/speed/nnunet_step.py). The two sides alternate for ROUNDS
# rounds (default 2: ours, nnU-Net, then nnU-Net, ours: each round swaps who goes first), so a
# slow spell or a drift of a noisy machine hits
# both; medians are over every timed step of a side. Each process's warm-up steps
# (--warmup: compilation, cuDNN autotuning) are timed apart, in first_steps_seconds (one list
# per round), and never counted as step time.
# Usage: benchmarks/speed/step_vs_nnunet.sh NNUNET_PYTHON [--patch Z Y X] [--batch N] [...]
# (any `seggrid bench step` flag, e.g. --device cuda --precision fp16 --compile false --warmup 3;
# ours compiles as recipe.compile: auto, i.e. on CUDA, unless --compile false;
# NNUNET_PYTHON: a Python with nnunetv2 installed, e.g. a venv made with
# `python -m venv /tmp/nnunet && /tmp/nnunet/bin/pip install nnunetv2`). Our side runs
# under $PYTHON (default .venv/bin/python). nnUNet_compile=0 in the environment turns
# nnU-Net's compilation off, as it does for nnUNetv2_train.
# Prints {"seggrid": {...}, "nnunet": {...}, "compiled": {...}, "first_steps_seconds": {...},
# "ratio": {...}} as JSON.
set -euo pipefail
cd "$(dirname "$0")/../.."
NNUNET_PYTHON=${1:?give the python of an environment with nnunetv2}
shift
PYTHON=${PYTHON:-.venv/bin/python}
ROUNDS=${ROUNDS:-2}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export nnUNet_raw=${nnUNet_raw:-$tmp/nnunet_raw} nnUNet_preprocessed=${nnUNet_preprocessed:-$tmp/nnunet_pre}
export nnUNet_results=${nnUNet_results:-$tmp/nnunet_results}
# Rounds alternate which side goes first (ours, nnU-Net; nnU-Net, ours; ...), so a machine whose
# speed drifts during the run favours neither side. nnU-Net's side takes its shapes from the
# last JSON of ours (the same every round).
ours() { PYTHONPATH=workflow${PYTHONPATH:+:$PYTHONPATH} "$PYTHON" -m seggrid bench step "$@" > "$tmp/ours_$r.json"; }
for r in $(seq "$ROUNDS"); do
  if (( r % 2 == 1 )); then
    ours "$@"
    "$NNUNET_PYTHON" benchmarks/speed/nnunet_step.py "$tmp/ours_$r.json" > "$tmp/nnunet_$r.json"
  else
    "$NNUNET_PYTHON" benchmarks/speed/nnunet_step.py "$tmp/ours_$((r - 1)).json" > "$tmp/nnunet_$r.json"
    ours "$@"
  fi
done
"$PYTHON" - "$tmp" "$ROUNDS" <<'PY'
import json, statistics, sys
tmp, rounds = sys.argv[1], int(sys.argv[2])
def merged(side):
    runs = [json.load(open(f"{tmp}/{side}_{r}.json")) for r in range(1, rounds + 1)]
    out = dict(runs[0])
    out["seconds_per_step"] = [t for run in runs for t in run["seconds_per_step"]]
    out["seconds_per_step_median"] = round(statistics.median(out["seconds_per_step"]), 4)
    out["first_steps_seconds"] = [run["first_steps_seconds"] for run in runs]     # one list per round
    for key in ("peak_memory_mb", "memory_before_first_step_mb"):
        out[key + "_per_round"] = [run[key] for run in runs]
        out[key] = max(run[key] for run in runs)
    return out
ours, ref = merged("ours"), merged("nnunet")
print(json.dumps({
    "seggrid": ours, "nnunet": ref, "rounds": rounds,
    "compiled": {"seggrid": ours["compiled"], "nnunet": ref["compiled"]},
    "first_steps_seconds": {"seggrid": ours["first_steps_seconds"], "nnunet": ref["first_steps_seconds"]},
    "ratio": {
        "seconds_per_step": round(ours["seconds_per_step_median"] / ref["seconds_per_step_median"], 3),
        "peak_memory": round(ours["peak_memory_mb"] / ref["peak_memory_mb"], 3),
        "peak_memory_above_start": round((ours["peak_memory_mb"] - ours["memory_before_first_step_mb"])
                                         / (ref["peak_memory_mb"] - ref["memory_before_first_step_mb"]), 3)}}, indent=1))
PY
