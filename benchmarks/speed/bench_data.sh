# Sourced by epoch_vs_nnunet.sh and predict_vs_nnunet.sh: the cases both sides of a benchmark
# read, made and preprocessed with our own commands. Expects SEGGRID, WORK, SHAPE, SPACING,
# TARGET, THREADS and the functions log and run; reuses WORK/data and WORK/pre when the
# same cases were already made there.
# Usage: bench_data CT_TRAIN CT_VAL FOLDS
bench_data() {
  local key="$1 $2 $3 $SHAPE $SPACING $TARGET"
  if [ -f "$WORK/data.done" ] && [ "$(cat "$WORK/data.done")" = "$key" ]; then return; fi
  log "making $(($1 + $2)) cases of $SHAPE voxels at $SPACING mm and preprocessing them at $TARGET mm"
  rm -rf "$WORK/data" "$WORK/pre"
  run $SEGGRID make-scale-data --out "$WORK/data" --ct-train "$1" --mr-train 0 --ct-val "$2" --mr-val 0 \
    --shape $SHAPE --spacing $SPACING
  run $SEGGRID validate --dataset "$WORK/data" --out "$WORK/check.json"
  run $SEGGRID fingerprint --dataset "$WORK/data" --out "$WORK/fingerprint.json"
  run $SEGGRID split --dataset-check "$WORK/check.json" --folds "$3" --out "$WORK/splits.json"
  run $SEGGRID preprocess --dataset "$WORK/data" --fingerprint "$WORK/fingerprint.json" --target-spacing $TARGET \
    --threads "$THREADS" --out "$WORK/pre"
  echo "$key" > "$WORK/data.done"
}
