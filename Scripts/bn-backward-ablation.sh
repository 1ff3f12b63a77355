#!/usr/bin/env bash
# Why BatchNorm back-propagates through the batch statistics (the paper, §2): the paper's network (bn-mlp:
# 3 × 100 sigmoids, each Linear's output into BatchNorm) trained twice for the same steps, once as usual and
# once with `--bn-backward no-stats`, which treats the batch mean and variance as constants in the backward
# pass. Drawn from the runs' metrics.jsonl: the norm of the biases of the Linear layers that feed BatchNorm,
# and the training loss, over the steps. The paper predicts that without the statistics the biases grow
# without bound while the loss does not improve: BatchNorm cancels every step the biases take.
# A constant learning rate, so that nothing but the gradient decides how far the biases go.
#
#   Scripts/bn-backward-ablation.sh [--steps N] [--figures DIR]     (defaults: 10000 steps, docs/figures)
set -euo pipefail
cd "$(dirname "$0")/.."
source Scripts/figure-support.sh
parse_options steps 10000 "$@"
prepare_figures
runs=${SYNCBN_RUNS:-runs}/bn-backward-ablation
log_every=$(( steps / 200 > 0 ? steps / 200 : 1 ))
for backward in full no-stats; do
    run_quietly "$runs/$backward" "$syncbn" train --model bn-mlp --bn-backward $backward --steps "$steps" --lr-schedule constant \
        --log-every "$log_every" --eval-every "$steps" --out "$runs/$backward"
    # step, the biases' joint norm √(Σ ‖b_l‖²) over the layers feeding BatchNorm, the training loss.
    jq -r '[.step, ([to_entries[] | select(.key | endswith("/bias_norm")) | .value * .value] | add | sqrt), .loss] | @tsv' \
        "$runs/$backward/metrics.jsonl" > "$work/$backward.tsv"
done

gnuplot <<GNUPLOT
set terminal pngcairo size 1100,430 font ",11"
set output "$figures/bn-backward-ablation.png"
set multiplot layout 1,2
set grid
set xlabel "training step"
set xtics $(( steps / 4 ))
set key top left
set title "norm of the biases feeding BatchNorm"
plot "$work/full.tsv" using 1:2 with lines lw 2.5 lc rgb "#9400d3" title "backward through the statistics", \
     "$work/no-stats.tsv" using 1:2 with lines lw 2.5 lc rgb "#009e73" title "--bn-backward no-stats"
set key top right
set title "training loss (batch of 60)"
set logscale y
plot "$work/full.tsv" using 1:3 with lines lw 0.5 lc rgb "#c8a0e0" notitle, \
     "$work/no-stats.tsv" using 1:3 with lines lw 0.5 lc rgb "#a0d8c0" notitle, \
     "$work/full.tsv" using 1:3 smooth bezier with lines lw 2.5 lc rgb "#9400d3" title "backward through the statistics (smoothed)", \
     "$work/no-stats.tsv" using 1:3 smooth bezier with lines lw 2.5 lc rgb "#009e73" title "--bn-backward no-stats (smoothed)"
unset multiplot
GNUPLOT
for backward in full no-stats; do
    echo "  $backward: bias norm $(head -1 "$work/$backward.tsv" | cut -f2) → $(tail -1 "$work/$backward.tsv" | cut -f2), loss $(head -1 "$work/$backward.tsv" | cut -f3) → $(tail -1 "$work/$backward.tsv" | cut -f3), test accuracy $(final_accuracy "$runs/$backward")"
done
echo "bn-backward-ablation.sh: $figures/bn-backward-ablation.png"
