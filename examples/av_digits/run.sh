#!/usr/bin/env bash
# Audio-visual digits, end to end on real media files (in the spirit of the AV-MNIST case study, MFH Sec. 3):
#   make_data.py: sklearn's 8x8 handwritten digits (PCA-degraded, noisy) as PNG + spoken digit names synthesised
#   with espeak-ng (random voice, speed, pitch, offset, white noise) as WAV, paired by id within each class
#   -> extract image --raw (8x8 pixels) / extract audio mfcc (mean+std over time) -> pretrain an audio teacher (mlp)
#   and an image baseline (cnn2d) -> distill kd (an image student taught by the frozen audio teacher) -> eval.
# Usage: examples/av_digits/run.sh [WORKDIR]   (default: ${OUT:-out/av_digits}); a few minutes on two CPU cores.
# Needs the espeak-ng program and scikit-learn (in cmkdtool's Python); when one is missing it says what to install
# and exits with status 1 (it never installs anything).
# Environment: PER_CLASS (default 150 pairs per digit), EPOCHS (default 30, the image models), SEED (default 0).
# The data set is cached in WORKDIR/data: delete that folder to rebuild it (e.g. after changing PER_CLASS).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
W=${1:-${OUT:-out/av_digits}}
per_class=${PER_CLASS:-150}
epochs=${EPOCHS:-30}
seed=${SEED:-0}

# cmkdtool: the one on PATH, else the repository's virtual environment (as `make venv` builds it).
if ! command -v cmkdtool >/dev/null && [ -x "$root/.venv/bin/cmkdtool" ]; then
  export PATH="$root/.venv/bin:$PATH"
fi
if ! command -v cmkdtool >/dev/null; then
  echo "run.sh: cmkdtool not found; run 'make venv' or activate its environment" >&2
  exit 1
fi
# make_data.py runs with cmkdtool's own Python (it has numpy, pillow and soundfile already).
py=$(dirname "$(command -v cmkdtool)")/python
[ -x "$py" ] || py=python3

# An example never changes the machine: when a dependency is missing, say what to install and stop.
missing=0
if ! command -v espeak-ng >/dev/null; then
  echo "run.sh: the espeak-ng program is missing (the system package espeak-ng on Debian/Ubuntu and in" \
    "Homebrew); add it, then rerun" >&2
  missing=1
fi
if ! "$py" -c "import sklearn" 2>/dev/null; then
  echo "run.sh: scikit-learn is missing from $("$py" -c 'import sys; print(sys.prefix)');" \
    "add it to that Python (make venv does: the 'examples' extra), then rerun" >&2
  missing=1
fi
[ "$missing" -eq 0 ] || exit 1
mkdir -p "$W"

echo "== data: $per_class image/audio pairs per digit in $W/data =="
if [ -f "$W/data/manifest.csv" ]; then
  echo "(reusing $W/data; delete it to rebuild)"
else
  "$py" "$here/make_data.py" "$W/data" --per-class "$per_class" --seed "$seed" --force
fi

echo "== extract: image pixels [1, 8, 8] and audio MFCC statistics (16 kHz, 1 s), one table each, joined on id =="
cmkdtool extract image "$W/data/image" -o "$W/image.parquet" --raw --mode gray --quiet
cmkdtool extract audio "$W/data/audio" -o "$W/audio.parquet" --features mfcc --sample-rate 16000 --duration 1.0 \
  --pool mean+std --quiet

echo "== train: audio teacher, image baseline (no KD), image student (KD from the audio teacher) =="
cmkdtool pretrain "$W/audio.parquet" --input audio --arch mlp --epochs 60 --seed "$seed" --quiet \
  -o "$W/teacher.safetensors"
train=(--arch cnn2d --epochs "$epochs" --seed "$seed" --quiet)
cmkdtool pretrain "$W/image.parquet" --input image "${train[@]}" --role student -o "$W/baseline.safetensors"
# MFH Eq. 1 with rho = 0.5, the setting of the paper's AV-MNIST case study (App. B.1)
cmkdtool distill kd "$W/audio.parquet" "$W/image.parquet" --teacher "$W/teacher.safetensors" --input image \
  "${train[@]}" --weighting mfh --rho 0.5 -o "$W/student.safetensors"

echo "== test-split metrics (the teacher hears the audio; the baseline and the KD student see only the image) =="
cmkdtool eval "$W/teacher.safetensors" "$W/audio.parquet" --split test --format json --no-retrieval \
  > "$W/teacher.json"
for model in baseline student; do
  cmkdtool eval "$W/$model.safetensors" "$W/image.parquet" --split test --format json --no-retrieval \
    > "$W/$model.json"
done
"$py" - "$W" <<'PY'
import json, sys
w = sys.argv[1]
print(f"{'model':<26} {'input':<6} {'accuracy':>8} {'ua':>8} {'f1_macro':>8}")
for name, label, modality in (("teacher", "audio teacher", "audio"), ("baseline", "image baseline (no KD)", "image"),
                              ("student", "image student (KD)", "image")):
    m = json.load(open(f"{w}/{name}.json"))
    print(f"{label:<26} {modality:<6} {m['accuracy']:>8.4f} {m['ua']:>8.4f} {m['f1_macro']:>8.4f}")
PY
