#!/usr/bin/env bash
# Quickstart: synthetic MFH data -> a teacher on xa and a no-KD baseline student on xb -> their test metrics.
# Runs on the CPU in well under a minute. Outputs go to ${OUT:-out/quickstart}.
set -euo pipefail
out=${OUT:-out/quickstart}
mkdir -p "$out"

# Gaussian data of the MFH paper (App. B.2) at its Table 2 setting: half of x* is shared (gamma = 0.5).
cmkdtool synth mfh --gamma 0.5 --seed 0 -o "$out/data.parquet"

# Logistic-regression teacher on the teacher modality xa, and the same model on the student modality xb.
common=(--arch linear --epochs 200 --lr 0.01 --seed 0)
cmkdtool pretrain "$out/data.parquet" --input xa "${common[@]}" -o "$out/teacher.safetensors"
cmkdtool pretrain "$out/data.parquet" --input xb "${common[@]}" --role student -o "$out/baseline.safetensors"

# Test-split metrics, as a table for people and as JSON for scripts.
for model in teacher baseline; do
  echo "== $model =="
  cmkdtool eval "$out/$model.safetensors" "$out/data.parquet" --split test
done
cmkdtool eval "$out/baseline.safetensors" "$out/data.parquet" --format json > "$out/baseline.metrics.json"
echo "wrote $out/baseline.metrics.json"
