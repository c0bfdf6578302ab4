#!/usr/bin/env bash
# Quickstart: the whole chain on built-in synthetic data, on the CPU in a few minutes.
#   1. MFH Gaussian data: a teacher on xa, a no-KD baseline on xb, a KD student on xb, and their test metrics;
#      then modality focusing: rank-salience, a modality-general teacher (a channel mask) and its KD student.
#   2. CIBA orthogonal data: MSE feature distillation collapses the student's spectrum to the shared dimensions.
# Outputs go to ${OUT:-out/quickstart}.
set -euo pipefail
out=${OUT:-out/quickstart}
mkdir -p "$out"

echo "== 1. cross-modal KD on MFH Gaussian data (gamma = 0.5, App. B.2) =="
cmkdtool synth mfh --gamma 0.5 --seed 0 -o "$out/data.parquet"
lin=(--arch linear --epochs 200 --lr 0.01 --seed 0 --quiet)
cmkdtool pretrain "$out/data.parquet" --input xa "${lin[@]}" -o "$out/teacher.safetensors"
cmkdtool pretrain "$out/data.parquet" --input xb "${lin[@]}" --role student -o "$out/baseline.safetensors"
cmkdtool distill kd "$out/data.parquet" --teacher "$out/teacher.safetensors" --input xb "${lin[@]}" \
  --weighting mfh --rho 0.5 -o "$out/kd.safetensors"

echo "test-split metrics (teacher sees xa; the others see xb only):"
for model in teacher baseline kd; do
  cmkdtool eval "$out/$model.safetensors" "$out/data.parquet" --format csv --no-retrieval > "$out/$model.csv"
done
python3 - "$out" <<'PY'
import csv, sys
print(f"{'model':<10} {'accuracy':>8} {'ua':>8} {'f1_macro':>8}")
for m in ("teacher", "baseline", "kd"):
    row = next(csv.DictReader(open(f"{sys.argv[1]}/{m}.csv")))
    print(f"{m:<10} {float(row['accuracy']):>8.4f} {float(row['ua']):>8.4f} {float(row['f1_macro']):>8.4f}")
PY
echo "modality focusing (MFH Algorithm 1): keep the 10 of xa's 50 channels most salient for what xb shares"
cmkdtool rank-salience "$out/data.parquet" -a xa -b xb --arch linear --optimizer sgd --lr 0.01 --batch-size full \
  --epochs 300 --select last --repeats 50 --top 5 --quiet -o "$out/salience.parquet"
cmkdtool pretrain "$out/data.parquet" --input xa "${lin[@]}" --mask "$out/salience.parquet" --keep general \
  --ratio 0.8 -o "$out/general-teacher.safetensors"
cmkdtool distill kd "$out/data.parquet" --teacher "$out/general-teacher.safetensors" --input xb "${lin[@]}" \
  --weighting mfh --rho 0.5 -o "$out/general-kd.safetensors"
for model in general-teacher general-kd; do
  printf '%-16s accuracy %s\n' "$model" \
    "$(cmkdtool eval "$out/$model.safetensors" "$out/data.parquet" --format csv --no-retrieval | cut -d, -f4 | tail -1)"
done
cmkdtool eval "$out/kd.safetensors" "$out/data.parquet" --format json > "$out/kd.metrics.json"
cmkdtool eval "$out/baseline.safetensors" "$out/data.parquet" --format json > "$out/baseline.metrics.json"

echo "== 2. dimensional collapse in feature distillation (CIBA Sec. 3.5): D_g = 8 of 32 dims shared =="
cmkdtool synth orthogonal --dim 32 --general 8 --seed 0 -q -o "$out/ortho.parquet"
linfeat=(--arch mlp --hidden 32 --activation identity --batch-size full --epochs 300 --lr 0.02 --seed 0 --quiet)
cmkdtool pretrain "$out/ortho.parquet" --input xa "${linfeat[@]}" -o "$out/ortho-teacher.safetensors"
cmkdtool pretrain "$out/ortho.parquet" --input xb "${linfeat[@]}" --role student -o "$out/ortho-baseline.safetensors"
cmkdtool distill feature "$out/ortho.parquet" --teacher "$out/ortho-teacher.safetensors" --input xb \
  "${linfeat[@]}" --loss mse --task-weight 0 --select last --schedule cosine -o "$out/ortho-feature.safetensors"
cmkdtool spectrum "$out/ortho-baseline.safetensors" "$out/ortho-feature.safetensors" --layer encoders.xb.0.weight \
  --plot "$out/spectrum.png" -o "$out/spectrum.parquet"
echo "wrote $out/spectrum.png (the feature-distilled student's weights drop sharply after index 8)"
