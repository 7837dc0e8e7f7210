#!/usr/bin/env bash
# The Python packages benchmarks/gpu/gpu_check.sh needs on a GPU machine that has Python + torch
# (numpy, scipy, pyyaml, scikit-image, pandas, ...) but no registry to install from: nnU-Net
# 2.8.1 and what it imports that such a machine lacks, plus what `seggrid bench step` and
# `seggrid.config` import beyond it (jsonschema and its pieces). Downloaded here (pip download
# --no-deps, pinned to the versions the benchmarks were written against), installed into one
# folder for the GPU machine's Python (--target, its version and platform) and packed as
# DIR/site.tar.xz; gpu_check.sh unpacks it (WHEELS=DIR) and puts it on PYTHONPATH.
#
# Usage: benchmarks/gpu/gpu_wheels.sh DIR [step|all]
#   step: what benchmarks/speed/step_vs_nnunet.sh and memory_per_setting.py need (about 1 MB)
#   all:  also what nnUNetTrainer and nnUNetPredictor import (epoch and inference benchmarks;
#         SimpleITK alone is 53 MB as a wheel, hence the xz archive: about 40 MB in all)
# Environment: PYTHON (a Python with pip, default .venv/bin/python or python3),
# GPU_PYTHON_VERSION (the GPU machine's Python, default 3.12).
# For a workplace whose runs carry ignored paths: put DIR inside the checkout, ignore it
# (echo /.whl/ >> .git/info/exclude) and carry it.
set -euo pipefail
DIR=${1:?give the folder to put the wheels in}
SET=${2:-all}
cd "$(dirname "$0")/../.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
PYV=${GPU_PYTHON_VERSION:-3.12}
STEP=(nnunetv2==2.8.1 batchgeneratorsv2==0.3.6 dynamic-network-architectures==0.4.4
      jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1)
TRAIN=(acvl-utils==0.2.6 batchgenerators==0.25.5 blosc2==4.14.1 ndindex==1.10.1 numexpr==2.14.2
       connected-components-3d==4.1.1 nibabel==5.4.2 simpleitk==2.5.7)
case "$SET" in
  step) SPECS=("${STEP[@]}") ;;
  all) SPECS=("${STEP[@]}" "${TRAIN[@]}") ;;
  *) echo "gpu_wheels.sh: the set must be step or all, not '$SET'" >&2; exit 2 ;;
esac
TARGET=(--only-binary=:all: --python-version "$PYV" --implementation cp)
for n in 1 17 24 27 28 31 34; do
  case $n in 1) TARGET+=(--platform manylinux1_x86_64) ;; 17) TARGET+=(--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64) ;;
    *) TARGET+=(--platform "manylinux_2_${n}_x86_64") ;; esac
done
mkdir -p "$DIR"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for spec in "${SPECS[@]}"; do
  if ! "$PYTHON" -m pip download -q --no-deps "${TARGET[@]}" -d "$tmp/whl" "$spec" 2>"$tmp/err"; then
    # no wheel published (acvl-utils: source only, pure Python): build one here
    "$PYTHON" -m pip wheel -q --no-deps -w "$tmp/whl" "$spec" 2>>"$tmp/err" \
      || { grep -v WARNING "$tmp/err" >&2; echo "gpu_wheels.sh: could not get $spec" >&2; exit 1; }
  fi
done
echo "wheels: $(du -sm "$tmp/whl" | cut -f1) MB in $(ls "$tmp/whl" | wc -l) files" >&2
"$PYTHON" -m pip install -q --no-deps --no-index --no-compile "${TARGET[@]}" --target "$tmp/site" "$tmp"/whl/*.whl
rm -rf "$tmp/site/bin"
XZ_OPT=${XZ_OPT:--6 -T0} tar -C "$tmp/site" -cJf "$DIR/site.tar.xz" .
printf '%s\n' "${SPECS[@]}" > "$DIR/packages.txt"
echo "python $PYV" >> "$DIR/packages.txt"
echo "$DIR/site.tar.xz: $(du -sm "$DIR/site.tar.xz" | cut -f1) MB ($SET; for Python $PYV)" >&2
