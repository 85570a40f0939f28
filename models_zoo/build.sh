#!/usr/bin/env bash
# Rebuild the shipped zoo on mnist5k (CPU: ~30 min with two lanes), then measure every card.
# Each card records its own command; this script is the list of those commands.
set -euo pipefail
cd "$(dirname "$0")/.."
E=".venv/bin/explrobust"
OUT=models_zoo/mnist5k
COMMON=(--dataset mnist5k --architecture convnet --epochs 10 --batch-size 128 --lr 0.001 --seed 0
        --eval-images 500 --eval-pgd-eps 0.3 --eval-pgd-steps 10 --quiet --out "$OUT")
ADV=(--eps 0.3 --steps 10)

measure() {  # the evaluation code's numbers go into the card
  $E evaluate --checkpoint "$OUT/$1.safetensors" --n-images 1000 --eps-list '[0.1, 0.2, 0.3]' \
    --pgd-steps 20 --pgd-step-size 0.025 --explanation-attack targeted --n-explanation-images 50 \
    --attack-batch-size 50 --targeted-explainer gradient_x_input --targeted-steps 200 --targeted-record-every 50 \
    --write-card --json "$OUT/$1.eval.json" > /dev/null
}

lane_a() {
  $E train --name natural --objective natural "${COMMON[@]}" && measure natural
  $E train --name pgd_at --objective pgd_at "${ADV[@]}" "${COMMON[@]}" && measure pgd_at
  for b in 1 3 6; do
    $E train --name "trades_b$b" --objective trades --beta "$b" "${ADV[@]}" "${COMMON[@]}" && measure "trades_b$b"
  done
}

lane_b() {
  $E train --name sep_pos --objective sep --lam 50000 --explainer gradient_x_input "${ADV[@]}" "${COMMON[@]}" && measure sep_pos
  $E train --name sep_neg --objective sep --lam -3000 --explainer gradient_x_input "${ADV[@]}" "${COMMON[@]}" && measure sep_neg
  $E train --name ig_norm --objective ig_norm --lam 1 --m 10 --approx-factor 5 --eps 0.3 --steps 5 "${COMMON[@]}" && measure ig_norm
  $E train --name art --objective art --gamma 0.5 --k-top 200 --beta 50 --eps 0.3 --steps 3 "${COMMON[@]}" && measure art
}

# two single-threaded lanes use the two cores without fighting over them
export OMP_NUM_THREADS=1
lane_a > "$OUT/build_lane_a.log" 2>&1 &
lane_b > "$OUT/build_lane_b.log" 2>&1 &
wait
echo "zoo built"
