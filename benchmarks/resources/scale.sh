#!/usr/bin/env bash
# The scale benchmark: a reduced grid on AMOS-sized cases, every rule kind, one JSON line per
# rule with peak RSS, seconds per case and bytes written per case (benchmarks/resources/scale_report.py).
#   benchmarks/resources/scale.sh [WORKDIR]        # default results/scale; about 30-40 min on 2 cores
# Not part of `make test`. Temporary files are kept (--notemp) so their size can be measured;
# in a normal run Snakemake deletes them once their consumers are done.
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=${1:-results/scale}
BIN=${BIN:-.venv/bin}
CORES=${CORES:-2}
mkdir -p "$WORK"
if [ ! -f "$WORK/data/dataset.json" ]; then
  "$BIN/python" -m seggrid make-scale-data --out "$WORK/data"
fi
sed -e "s#OUTDIR#$WORK/out#" -e "s#DATAROOT#$WORK/data#" benchmarks/resources/scale_config.yaml > "$WORK/config.yaml"
"$BIN/snakemake" --cores "$CORES" --configfile "$WORK/config.yaml" --notemp --rerun-incomplete --quiet rules \
  > "$WORK/snakemake.log" 2>&1 || { tail -40 "$WORK/snakemake.log"; exit 1; }
"$BIN/python" benchmarks/resources/scale_report.py "$WORK/config.yaml" | tee "$WORK/scale.json"
