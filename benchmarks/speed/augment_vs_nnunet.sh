#!/usr/bin/env bash
# Side by side in one run: our augmentation pipeline, then nnU-Net v2's on the same synthetic
# case, patch and thread count. Usage: benchmarks/speed/augment_vs_nnunet.sh NNUNET_PYTHON [BATCHES]
# (NNUNET_PYTHON: a Python with nnunetv2 installed, e.g. a venv made with `pip install nnunetv2`).
set -euo pipefail
cd "$(dirname "$0")/../.."
NNUNET_PYTHON=${1:?give the python of an environment with nnunetv2}
BATCHES=${2:-20}
PYTHONPATH=workflow .venv/bin/python -m seggrid bench augment --patch 64 160 160 --batch 2 --batches "$BATCHES" --threads 2
"$NNUNET_PYTHON" benchmarks/speed/nnunet_augment.py --patch 64 160 160 --batch 2 --batches "$BATCHES" --threads 2
