#!/usr/bin/env bash
# One command for whoever has a GPU: every GPU figure (step, compile, epoch, inference, memory against nnU-Net) into one JSON file, within
# about 8 minutes on one GPU, from a checkout with a plain Python that has torch (no Snakemake).
#
# Usage: benchmarks/gpu/gpu_check.sh [-o FILE] [PYTHON [NNUNET_PYTHON]]
#   FILE           the JSON written (default gpu_check.json)
#   PYTHON         runs our side (default .venv/bin/python if present, else python3)
#   NNUNET_PYTHON  a Python with nnunetv2 2.8.1; default PYTHON, with the packages of WHEELS
# WHEELS=DIR: a folder made by benchmarks/gpu/gpu_wheels.sh (site.tar.xz), for a machine with no
#   registry: unpacked into a temporary folder that goes on PYTHONPATH (after what is there).
#   Used when PYTHON lacks what our side imports (jsonschema, yaml) or NNUNET_PYTHON is not
#   given and PYTHON lacks nnunetv2. Default .whl if that folder exists.
# GPU_CHECK_TINY=1: every part at a tiny size on the CPU (checks the plumbing, not speed).
# GPU_CHECK_BUDGET (seconds, default 465): no part starts with less than 20 s of it left and
#   each part's timeout (T_STEP 140, T_COMPILE 80, T_EPOCH 110, T_PREDICT 90, T_MEMORY 60 s
#   by default) is cut to what is left.
# STEP_ARGS, EPOCH_ARGS, PREDICT_ARGS: replace each part's default arguments (shell words,
#   quotes allowed: PREDICT_ARGS='--device cuda --folds "1 5"').
# GPU_CHECK_PARTS: the parts to run (default all: step epoch predict memory; the others are
#   written as skipped), e.g. GPU_CHECK_PARTS="epoch" T_EPOCH=400 for a longer epoch run.
#
# Parts, in this order (each under `timeout`, so one slow part cannot eat the budget):
#   step_vs_nnunet     benchmarks/speed/step_vs_nnunet.sh, 1 round: our step as a user runs it
#                      (--compile auto: compiled on CUDA, not on the CPU) against nnU-Net as
#                      nnUNetTrainer runs by default (on CUDA: network and Dice compiled)
#   step_other_compile `seggrid bench step` on the same shapes with compile the other way
#                      (CUDA: --compile false, our eager step; CPU: --compile true)
#   epoch_vs_nnunet    benchmarks/speed/epoch_vs_nnunet.sh, one size (skipped if the script is absent)
#   predict_vs_nnunet  benchmarks/speed/predict_vs_nnunet.sh (skipped if absent)
#   memory             benchmarks/resources/memory_per_setting.py config/amos22_task1.yaml --device cuda,
#                      smallest settings first, as many as its time box allows
# FILE: {"gpu_check": {machine, versions, budget, seconds}, "summary": {step figures side by
#   side}, "parts": {NAME: {"status": ok|failed|timeout|skipped, "reason", "seconds", "command",
#   "result": the part's JSON, "log_tail"}}}.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT_JSON=gpu_check.json
if [ "${1:-}" = -o ]; then OUT_JSON=${2:?-o needs a file}; shift 2; fi
if [ -n "${1:-}" ]; then PYTHON=$1; elif [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
NNUNET_PYTHON=${2:-}
PYTHON=$(command -v "$PYTHON") || { echo "gpu_check.sh: no python '$PYTHON'" >&2; exit 2; }
TINY=${GPU_CHECK_TINY:-0}
BUDGET=${GPU_CHECK_BUDGET:-465}
SELECTED=" ${GPU_CHECK_PARTS:-step epoch predict memory} "
wanted() { [[ "$SELECTED" == *" $1 "* ]]; }
START=$(date +%s)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
log() { echo "[gpu_check $(( $(date +%s) - START ))s] $*" >&2; }

# --- packages: our side needs jsonschema + yaml; the nnU-Net side nnunetv2 ---------------------
WHEELS=${WHEELS:-}
if [ -z "$WHEELS" ] && [ -d .whl ]; then WHEELS=.whl; fi
need_site=0
"$PYTHON" -c "import torch, numpy, scipy, yaml, jsonschema" 2>/dev/null || need_site=1
if [ -z "$NNUNET_PYTHON" ] && ! "$PYTHON" -c "import nnunetv2" 2>/dev/null; then need_site=1; fi
SITE_NOTE="none needed"
if [ "$need_site" = 1 ]; then
  if [ -n "$WHEELS" ] && [ -f "$WHEELS/site.tar.xz" ]; then
    "$PYTHON" - "$WHEELS/site.tar.xz" "$work/site" <<'PY' || { echo "gpu_check.sh: cannot unpack $WHEELS/site.tar.xz" >&2; exit 2; }
import sys, tarfile
with tarfile.open(sys.argv[1]) as tar:
    tar.extractall(sys.argv[2], **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
PY
    SITE_NOTE="$WHEELS/site.tar.xz: $(tr '\n' ' ' < "$WHEELS/packages.txt" 2>/dev/null)"
    log "packages from $WHEELS/site.tar.xz"
  else
    SITE_NOTE="missing: PYTHON lacks jsonschema/yaml or nnunetv2 and no WHEELS folder (benchmarks/gpu/gpu_wheels.sh)"
    log "$SITE_NOTE"
  fi
fi
# one wrapper for every python the parts start: the unpacked packages stay on PYTHONPATH even
# where a script sets PYTHONPATH=workflow itself
mkdir -p "$work/bin"
printf '#!/bin/sh\nexport PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}%s"\nexec "%s" "$@"\n' "$work/site" "$PYTHON" \
  > "$work/bin/python"
chmod +x "$work/bin/python"
PY="$work/bin/python"
if [ -z "$NNUNET_PYTHON" ]; then NNUNET_PYTHON=$PY; fi
HAVE_NNUNET=1
"$NNUNET_PYTHON" -c "import nnunetv2" 2>/dev/null || HAVE_NNUNET=0

# --- sizes -------------------------------------------------------------------------------------
DEVICE=$("$PY" -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
if [ "$TINY" = 1 ]; then
  DEVICE=cpu
  STEP_DEFAULT="--device cpu --patch 16 32 32 --batch 2 --base-features 8 --max-features 32 --classes 4 --steps 2 --warmup 1 --threads 2"
  EPOCH_DEFAULT="--device cpu --patch 16 32 32 --batch 2 --iterations 2 --val-iterations 1 --epochs 1 --base-features 4 --max-features 16 --cases 4 --case-shape 48 48 16 --threads 2"
  PREDICT_DEFAULT="--device cpu --tiny --folds 1 --threads 2"; T_PREDICT=${T_PREDICT:-100}
  MEMORY_ARGS="--device cpu --shrink 4 --threads 2"
else
  STEP_DEFAULT="--device $DEVICE --patch 64 160 160 --batch 2 --precision fp16 --steps 15 --warmup 3 --threads 4"
  EPOCH_DEFAULT="--device $DEVICE --epochs 2 --iterations 50 --val-iterations 10 --cases 4"
  PREDICT_DEFAULT="--device $DEVICE"
  MEMORY_ARGS="--device $DEVICE --threads 4"
fi
STEP_ARGS=${STEP_ARGS:-$STEP_DEFAULT}
EPOCH_ARGS=${EPOCH_ARGS:-$EPOCH_DEFAULT}
PREDICT_ARGS=${PREDICT_ARGS:-$PREDICT_DEFAULT}
[ "$DEVICE" = cuda ] || log "no CUDA device: the figures are CPU figures"

# --- parts -------------------------------------------------------------------------------------
PARTS=()
words() { [ -z "${1// /}" ] || eval "printf '%s\n' $1"; }   # a string of shell words -> one per line (quotes honoured)
skip() {   # NAME REASON
  PARTS+=("$1"); echo "$2" > "$work/$1.skip"; log "$1: skipped ($2)"
}
part() {   # NAME TIMEOUT COMMAND...: stdout -> NAME.out (the part's JSON), stderr -> NAME.err
  local name=$1 limit=$2; shift 2
  local left=$(( BUDGET - ($(date +%s) - START) ))
  if [ "$left" -lt 20 ]; then skip "$name" "overall budget GPU_CHECK_BUDGET=$BUDGET s spent"; return; fi
  [ "$limit" -le "$left" ] || limit=$left
  PARTS+=("$name"); printf '%s\n' "$*" > "$work/$name.cmd"; echo "$limit" > "$work/$name.limit"
  log "$name: up to $limit s: $*"
  local t0; t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$work/$name.out" 2> "$work/$name.err"
  echo "$? $(( $(date +%s) - t0 ))" > "$work/$name.rc"
  log "$name: rc $(cut -d' ' -f1 "$work/$name.rc") after $(cut -d' ' -f2 "$work/$name.rc") s"
}

mapfile -t step_args < <(words "$STEP_ARGS")
mapfile -t epoch_args < <(words "$EPOCH_ARGS")
mapfile -t predict_args < <(words "$PREDICT_ARGS")
if ! wanted step; then
  skip step_vs_nnunet "not in GPU_CHECK_PARTS"
elif [ "$HAVE_NNUNET" = 1 ]; then
  part step_vs_nnunet "${T_STEP:-140}" env ROUNDS=1 PYTHON="$PY" benchmarks/speed/step_vs_nnunet.sh "$NNUNET_PYTHON" \
    "${step_args[@]}"
else
  skip step_vs_nnunet "no nnunetv2 for NNUNET_PYTHON ($NNUNET_PYTHON); see WHEELS"
fi
if ! wanted step; then
  skip step_other_compile "not in GPU_CHECK_PARTS"
elif [ "$DEVICE" = cpu ] && [ "$TINY" = 1 ]; then
  skip step_other_compile "tiny run on the CPU: inductor's compilation alone takes minutes on a small CPU"
else
  if [ "$DEVICE" = cuda ]; then other=false; else other=true; fi
  part step_other_compile "${T_COMPILE:-80}" env PYTHONPATH=workflow "$PY" -m seggrid bench step "${step_args[@]}" \
    --compile $other
fi
for bench in epoch predict; do
  script=benchmarks/speed/${bench}_vs_nnunet.sh
  if [ "$bench" = epoch ]; then args=("${epoch_args[@]}"); limit=${T_EPOCH:-110}
  else args=("${predict_args[@]}"); limit=${T_PREDICT:-90}; fi
  if ! wanted "$bench"; then
    skip "${bench}_vs_nnunet" "not in GPU_CHECK_PARTS"
  elif [ ! -f "$script" ]; then
    skip "${bench}_vs_nnunet" "$script is not in this checkout"
  elif [ "$HAVE_NNUNET" = 0 ]; then
    skip "${bench}_vs_nnunet" "no nnunetv2 for NNUNET_PYTHON ($NNUNET_PYTHON)"
  else
    part "${bench}_vs_nnunet" "$limit" env BIN="$work/bin" PYTHON="$PY" bash "$script" "$NNUNET_PYTHON" "${args[@]}"
  fi
done
# the memory benchmark prints its JSON only at its end: its time box leaves one measurement's
# time (a first CUDA step is mostly cuDNN autotuning, tens of seconds) before the timeout
mem_limit=${T_MEMORY:-60}
left=$(( BUDGET - ($(date +%s) - START) ))
[ "$mem_limit" -le "$left" ] || mem_limit=$left
if wanted memory; then
  # shellcheck disable=SC2086
  part memory "$mem_limit" "$PY" benchmarks/resources/memory_per_setting.py config/amos22_task1.yaml $MEMORY_ARGS \
    --max-seconds $(( mem_limit > 50 ? mem_limit - 50 : 0 ))
else
  skip memory "not in GPU_CHECK_PARTS"
fi

# --- one JSON ----------------------------------------------------------------------------------
"$PY" - "$work" "$OUT_JSON" "$START" "$BUDGET" "$TINY" "$SITE_NOTE" "$NNUNET_PYTHON" "${PARTS[@]}" <<'PY'
import json, os, platform, sys, time
work, out, start, budget, tiny, site_note, nnunet_python, *parts = sys.argv[1:]
import torch

def read(name, ext):
    path = os.path.join(work, f"{name}.{ext}")
    return open(path).read() if os.path.exists(path) else None

sections = {}
for name in parts:
    if read(name, "skip") is not None:
        sections[name] = {"status": "skipped", "reason": read(name, "skip").strip()}
        continue
    rc, seconds = map(int, read(name, "rc").split())
    limit = int(read(name, "limit"))
    entry = {"status": "ok" if rc == 0 else "timeout" if rc in (124, 137) else "failed", "rc": rc,
             "seconds": seconds, "timeout_seconds": limit, "command": read(name, "cmd").strip()}
    if rc in (124, 137):
        entry["reason"] = f"stopped at its timeout of {limit} s"
    text = read(name, "out") or ""
    try:
        entry["result"] = json.loads(text)
    except ValueError:
        entry["result"] = None
        if text.strip():
            entry["output_tail"] = text[-2000:]
    if rc != 0 or entry["result"] is None:
        entry["log_tail"] = (read(name, "err") or "")[-3000:]
    sections[name] = entry

def result(name):
    entry = sections.get(name, {})
    return entry.get("result") if entry.get("status") == "ok" else None

summary = {}
pair, other = result("step_vs_nnunet"), result("step_other_compile")
label = lambda run: "seggrid_compiled" if run["compiled"] else "seggrid_eager"
if pair or other:
    sides = {}
    if pair:
        sides[label(pair["seggrid"])] = pair["seggrid"]
        sides["nnunet_default"] = pair["nnunet"]
    if other:
        sides[label(other)] = other
    pick = lambda key: {k: v.get(key) for k, v in sides.items()}
    summary["step"] = {
        "patch": next(iter(sides.values()))["patch"], "batch": next(iter(sides.values()))["batch"],
        "precision": pick("precision"), "compiled": pick("compiled"), "seggrid_default_compile": (
            label(pair["seggrid"]) == "seggrid_compiled") if pair else None,
        "seconds_per_step_median": pick("seconds_per_step_median"),
        "first_steps_seconds": {k: v.get("first_steps_seconds") for k, v in sides.items()},
        "peak_memory_mb": pick("peak_memory_mb"), "peak_memory_timed_steps_mb": pick("peak_memory_timed_steps_mb"),
    }
    if pair:
        ref = pair["nnunet"]["seconds_per_step_median"]
        summary["step"]["ratio_to_nnunet_default"] = {
            k: round(v["seconds_per_step_median"] / ref, 3) for k, v in sides.items() if k != "nnunet_default"}
for name in ("epoch_vs_nnunet", "predict_vs_nnunet"):
    if result(name) and "ratio" in result(name):
        summary[name.split("_")[0]] = {"ratio": result(name)["ratio"]}
mem = result("memory")
if mem:
    summary["memory"] = [{k: r.get(k) for k in ("settings", "patch", "batch_per_gpu", "loss", "peak_gb",
                          "peak_gb_second_step", "first_step_seconds", "seconds_per_step", "skipped")}
                         for r in mem["rows"] if r.get("measured")]
cuda = torch.cuda.is_available()
doc = {
    "gpu_check": {
        "tiny": tiny == "1", "device": torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if cuda else None,
        "python": platform.python_version(), "cpu_count": os.cpu_count(), "packages": site_note,
        "nnunet_python": nnunet_python, "budget_seconds": int(budget), "seconds": int(time.time()) - int(start),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    },
    "summary": summary, "parts": sections,
}
with open(out, "w") as fh:
    json.dump(doc, fh, indent=1)
print(json.dumps({"written": out, "seconds": doc["gpu_check"]["seconds"],
                  "status": {k: v["status"] for k, v in sections.items()}, "summary": summary}, indent=1))
PY
