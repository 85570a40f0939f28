#!/usr/bin/env bash
# The SEP regime search on mnist5k: train SEP at a grid of λ (and σ / input space), measure each point
# with the sweep protocol, and write the table (models_zoo/mnist5k/sep_sweep.{json,csv}).
#   bash models_zoo/sep_sweep.sh POINT...     POINT = name:lam:sigma:space, e.g. neg_m3k:-3000:0.1:model
#   bash models_zoo/sep_sweep.sh table        (re)build the table from what has been measured
# Same recipe as the shipped zoo (models_zoo/build.sh: ConvNet, 8 epochs, batch 50, Adam 1e-3, PGD-5 at
# ε = 0.3), so a chosen point can be shipped as it is. Checkpoints stay in $SWEEP (not committed).
# The sweep protocol is a cheaper cut of the zoo's `sep_mnist` protocol: PGD-20 at ε = 0.3 on 500 test
# images, the targeted attack (model-space gradient×input, 200 steps) on the first 60 stored Way3 pairs.
set -euo pipefail
cd "$(dirname "$0")/.."
E=${EXPLROBUST:-.venv/bin/explrobust}
SWEEP=${SWEEP:-runs/sep_sweep}
PAIRS=models_zoo/mnist5k/pairs_way3.json
NOTE="λ sweep of SEP on mnist5k (ConvNet, 8 epochs, PGD-5 at ε = 0.3, σ = 0.1, maps clamped, mean reduction), \
trained by models_zoo/sep_sweep.sh. Protocol of this table (cheaper than the zoo's): PGD-20 at ε = 0.3 on the FIRST \
500 test images — the embedded split is sorted by class, so these are the digits 0–4 only (a defect found during this \
sweep; the zoo is measured on all 1,000) — and the targeted attack on model-space gradient×input (200 steps) on the \
first 60 stored Way3 pairs. clean_accuracy_whole_split / worst_class_accuracy cover all 1,000 test images. ref_* rows \
are models of the previous zoo (pixel-space SEP) and the shipped natural / pgd_at models, measured the same way."
mkdir -p "$SWEEP"
export OMP_NUM_THREADS=1

measure() {  # CKPT JSON
  $E evaluate --checkpoint "$1" --preset sep_mnist --pairs-file "$PAIRS" --n-images 500 --eps-list '[0.3]' \
    --n-explanation-images 60 --attack-batch-size 60 --subset first --json "$2" > /dev/null  # as the table was made
}

point() {  # name:lam:sigma:space
  IFS=: read -r name lam sigma space <<< "$1"
  if [ ! -f "$SWEEP/$name.safetensors" ]; then
    $E train --name "$name" --objective sep --lam "$lam" --sigma "$sigma" --space "$space" \
      --explainer gradient_x_input --eps 0.3 --steps 5 --dataset mnist5k --architecture convnet --epochs 8 \
      --batch-size 50 --lr 0.001 --seed 0 --eval-images 200 --eval-pgd-eps 0.3 --eval-pgd-steps 10 --quiet \
      --out "$SWEEP" > "$SWEEP/$name.log" 2>&1
  fi
  [ -f "$SWEEP/$name.sweep.json" ] || measure "$SWEEP/$name.safetensors" "$SWEEP/$name.sweep.json"
  echo "done $name"
}

case "${1:-}" in
  table) .venv/bin/python -m explrobust_core.sweep table "$SWEEP" --reference models_zoo/mnist5k --whole-split --note "$NOTE" \
           --json models_zoo/mnist5k/sep_sweep.json --csv models_zoo/mnist5k/sep_sweep.csv ;;
  one) point "$2" ;;
  "") echo "usage: sep_sweep.sh POINT... | table" >&2; exit 2 ;;
  *) printf '%s\n' "$@" | xargs -P "${PARALLEL:-2}" -n 1 bash "$0" one ;;
esac
