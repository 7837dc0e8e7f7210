#!/usr/bin/env bash
# Preprocessing worker against nnU-Net 2.8.1, same AMOS-sized case, one core each, sides
# alternating for ROUNDS rounds (default 2); one JSON line per side and round, then the ratios.
#   benchmarks/speed/resample_vs_nnunet.sh NNUNET_PYTHON [WORKDIR]
# NNUNET_PYTHON: a venv with nnunetv2==2.8.1 (docs/benchmarks.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
NNUNET_PY=${1:?usage: benchmarks/speed/resample_vs_nnunet.sh NNUNET_PYTHON [WORKDIR]}
WORK=${2:-results/scale_resample}
PY=${PY:-.venv/bin/python}
ROUNDS=${ROUNDS:-2}
if [ ! -f "$WORK/data/dataset.json" ]; then
  "$PY" -m seggrid make-scale-data --out "$WORK/data" --ct-train 1 --mr-train 0 --ct-val 0 --mr-val 0 >/dev/null
fi
IMG="$WORK/data/imagesTr/amos_0001.nii.gz"
LAB="$WORK/data/labelsTr/amos_0001.nii.gz"
OUT="$WORK/rounds.jsonl"
: > "$OUT"
for r in $(seq "$ROUNDS"); do
  OMP_NUM_THREADS=1 taskset -c 0 "$PY" benchmarks/speed/resample_case.py seggrid "$IMG" "$LAB" | tee -a "$OUT"
  OMP_NUM_THREADS=1 taskset -c 0 "$NNUNET_PY" benchmarks/speed/resample_case.py nnunet "$IMG" "$LAB" | tee -a "$OUT"
done
"$PY" - "$OUT" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = lambda side, k: sorted(r[k] for r in rows if r["side"] == side)[len([r for r in rows if r["side"] == side]) // 2]
print(json.dumps({"seconds_seggrid": med("seggrid", "seconds"), "seconds_nnunet": med("nnunet", "seconds"),
                  "time_ratio": round(med("seggrid", "seconds") / med("nnunet", "seconds"), 3),
                  "peak_rss_mb_seggrid_resample": med("seggrid", "peak_rss_mb_resample"),
                  "peak_rss_mb_nnunet": med("nnunet", "peak_rss_mb"),
                  "memory_ratio": round(med("seggrid", "peak_rss_mb_resample") / med("nnunet", "peak_rss_mb"), 3),
                  "seggrid_preprocess_case_seconds": med("seggrid", "preprocess_case_seconds"),
                  "seggrid_preprocess_case_peak_rss_mb": med("seggrid", "peak_rss_mb")}))
PYEOF
