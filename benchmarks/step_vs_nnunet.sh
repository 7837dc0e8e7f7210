#!/usr/bin/env bash
# One training step, side by side in one run: ours (`seggrid bench step`), then nnU-Net v2's
# network + loss + step on the same topology, patch, batch, classes, precision and device.
# Usage: benchmarks/step_vs_nnunet.sh NNUNET_PYTHON [--patch Z Y X] [--batch N] [...]
# (any `seggrid bench step` flag; NNUNET_PYTHON: a Python with nnunetv2 installed, e.g. a venv
# made with `python -m venv /tmp/nnunet && /tmp/nnunet/bin/pip install nnunetv2`).
# Prints {"seggrid": {...}, "nnunet": {...}, "ratio": {...}} as JSON.
set -euo pipefail
cd "$(dirname "$0")/.."
NNUNET_PYTHON=${1:?give the python of an environment with nnunetv2}
shift
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
PYTHONPATH=workflow .venv/bin/python -m seggrid bench step "$@" > "$tmp/ours.json"
"$NNUNET_PYTHON" benchmarks/nnunet_step.py "$tmp/ours.json" > "$tmp/nnunet.json"
.venv/bin/python - "$tmp/ours.json" "$tmp/nnunet.json" <<'PY'
import json, sys
ours, ref = (json.load(open(p)) for p in sys.argv[1:3])
print(json.dumps({"seggrid": ours, "nnunet": ref, "ratio": {
    "seconds_per_step": round(ours["seconds_per_step_median"] / ref["seconds_per_step_median"], 3),
    "peak_memory": round(ours["peak_memory_mb"] / ref["peak_memory_mb"], 3),
    "peak_memory_above_start": round((ours["peak_memory_mb"] - ours["memory_before_first_step_mb"])
                                     / (ref["peak_memory_mb"] - ref["memory_before_first_step_mb"]), 3)}}, indent=1))
PY
