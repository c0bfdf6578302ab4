#!/usr/bin/env bash
# CIBA end to end (Understanding Dimensional Collapse in Cross-modal Feature Distillation), on the CPU in a few minutes:
#   teacher -> student baseline -> fit-bottleneck --dims sweep -> distill ciba (and distill feature mse to compare)
#   -> eval -> spectrum of the baseline, MSE and CIBA students' features.
# Data: synth orthogonal with a modality gap: xa = [G; S'] (teacher side), xb = [G; S] (student side), 8 of 32
# channels shared, labels from all three parts, so the student modality carries its own decisive information.
# Models: the teacher is an MLP with one hidden layer of 64 ReLU units; every student (baseline, MSE, CIBA) has a
# trunk below the distilled layer: two hidden layers of 64, distilled at the second. The distilled layer is the same
# kind for MSE and CIBA, and the one benchmarks/ciba_study.py reports first (trunk-linear): the Linear output before
# the ReLU (teacher encoders.xa.0, student encoders.xb.2), where the signed bottleneck code h' can be matched.
# distill ciba's loss is Algorithm 2's ||z[:H] - h'||^2 per row; distill feature's mse is Eq. 1's 1/2 ||s - t||^2.
# Outputs go to ${OUT:-out/ciba}; EPOCHS (default 60) shortens every training run, DIMS sets the sweep.
set -euo pipefail
out=${OUT:-out/ciba}
epochs=${EPOCHS:-60}
dims=${DIMS:-1,2,4,8,16,32}
mkdir -p "$out"
gap=(--dim 32 --general 8 --classes 4 --seed 0)
opt=(--epochs "$epochs" --lr 0.001 --seed 0 --quiet)
teacher=(--hidden 64 "${opt[@]}")
train=(--hidden 64,64 "${opt[@]}")                        # students: a trunk layer below the distilled one
layers=(--teacher-layer encoders.xa.0 --student-layer encoders.xb.2)  # before the ReLU, on both sides

echo "== data: the teacher learns from 5000 rows, the student and the bottleneck from 400 =="
cmkdtool synth orthogonal "${gap[@]}" --train 5000 --train-seed 1000 -o "$out/teacher-data.parquet" 2>/dev/null
cmkdtool synth orthogonal "${gap[@]}" --train 400 -o "$out/data.parquet" 2>/dev/null
cmkdtool pretrain "$out/teacher-data.parquet" --input xa "${teacher[@]}" -o "$out/teacher.safetensors"
cmkdtool pretrain "$out/data.parquet" --input xb "${train[@]}" --role student -o "$out/baseline.safetensors"

echo "== fit-bottleneck: one bottleneck per H; the H where the decoded spectrum stops changing is kept =="
cmkdtool fit-bottleneck "$out/teacher.safetensors" "$out/baseline.safetensors" "$out/data.parquet" \
  "${layers[@]}" --dims "$dims" --epochs "$epochs" --lr 0.001 --quiet --plot "$out/bottleneck-sweep.png" \
  -o "$out/bottleneck.safetensors"

echo "== distill: MSE on the whole layer vs CIBA on its first H dimensions (the bottleneck's layers; equal task weight) =="
cmkdtool distill feature "$out/data.parquet" --teacher "$out/teacher.safetensors" --input xb "${train[@]}" \
  --loss mse "${layers[@]}" -o "$out/mse.safetensors"
cmkdtool distill ciba "$out/data.parquet" --teacher "$out/teacher.safetensors" --input xb "${train[@]}" \
  --bottleneck "$out/bottleneck.safetensors" --base mse -o "$out/ciba.safetensors"

echo "== test accuracy and feature spectra (effective rank: exp of the spectral entropy) =="
for model in teacher baseline mse ciba; do
  data="$out/data.parquet"
  printf '%-9s accuracy %s\n' "$model" \
    "$(cmkdtool eval "$out/$model.safetensors" "$data" --format csv --no-retrieval | cut -d, -f4 | tail -1)"
done
cmkdtool spectrum "$out/baseline.safetensors" "$out/mse.safetensors" "$out/ciba.safetensors" \
  --data "$out/data.parquet" --layer embedding --split test --plot "$out/spectrum.png" -o "$out/spectrum.parquet"
echo "plots: $out/bottleneck-sweep.png (CIBA Fig. 5b), $out/spectrum.png (Fig. 5a)"
