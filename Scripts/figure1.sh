#!/usr/bin/env bash
# The Batch Normalization paper's Figure 1 on Fashion-MNIST: the paper's network (3 fully connected hidden
# layers of 100 sigmoids, batch 60) trained for the same steps without and with BatchNorm, then drawn from the
# runs' metrics.jsonl:
#   (a) test accuracy against training step, both nets;
#   (b, c) the 15th, 50th and 85th percentiles of a typical sigmoid's input (feature 0 of the last hidden
#       layer, over each logged step's batch) over training, without and with BatchNorm.
#
#   Scripts/figure1.sh [--steps N] [--figures DIR]     (defaults: 20000 steps, docs/figures)
#
# Runs go to runs/figure1/{without-bn,with-bn}; the figure to DIR/figure1.png. The test set is evaluated 40
# times a run (SYNCBN_FIGURE_EVALS; the test suite's smoke run takes 4).
set -euo pipefail
cd "$(dirname "$0")/.."
source Scripts/figure-support.sh
parse_options steps 20000 "$@"
prepare_figures
runs=${SYNCBN_RUNS:-runs}/figure1
log_every=$(( steps / 200 > 0 ? steps / 200 : 1 ))
evals=${SYNCBN_FIGURE_EVALS:-40}
eval_every=$(( steps / evals > 0 ? steps / evals : 1 ))
for variant in without-bn with-bn; do
    bn=sync; [ $variant = without-bn ] && bn=none
    run_quietly "$runs/$variant" "$syncbn" train --model bn-mlp --bn $bn --steps "$steps" --batch-size 60 \
        --log-every "$log_every" --eval-every "$eval_every" --out "$runs/$variant"
done

# The last hidden layer's sigmoid: its input is the Linear output without BN, BatchNorm's output with it.
sigmoid_of() { jq -r 'keys[] | select(test("Sigmoid/input_p50$")) | sub("/input_p50$"; "")' <(head -1 "$1/metrics.jsonl") | sort -n | tail -1; }
for variant in without-bn with-bn; do
    layer=$(sigmoid_of "$runs/$variant")
    jq -r 'select(.test_accuracy != null) | [.step, .test_accuracy] | @tsv' "$runs/$variant/metrics.jsonl" > "$work/$variant-accuracy.tsv"
    jq -r --arg l "$layer" '[.step, .[$l + "/input_p15"], .[$l + "/input_p50"], .[$l + "/input_p85"]] | @tsv' \
        "$runs/$variant/metrics.jsonl" > "$work/$variant-percentiles.tsv"
done

gnuplot <<EOF
set terminal pngcairo size 1500,430 font ",11"
set output "$figures/figure1.png"
set multiplot layout 1,3
set key bottom right
set grid
set xlabel "training step"
set xtics $(( steps / 4 ))
set title "(a) test accuracy"
plot "$work/without-bn-accuracy.tsv" using 1:2 with lines lw 2 title "without BN", \
     "$work/with-bn-accuracy.tsv" using 1:2 with lines lw 2 title "with BN"
set key top right
set ylabel "input to a sigmoid"
set title "(b) without BN: 15/50/85th percentiles"
set yrange [-6:6]
plot for [c=2:4] "$work/without-bn-percentiles.tsv" using 1:c with lines lw 1.5 lc rgb "#1f77b4" notitle
set title "(c) with BN: 15/50/85th percentiles"
plot for [c=2:4] "$work/with-bn-percentiles.tsv" using 1:c with lines lw 1.5 lc rgb "#d62728" notitle
unset multiplot
EOF
echo "figure1.sh: $figures/figure1.png; final test accuracy without BN $(tail -1 "$work/without-bn-accuracy.tsv" | cut -f2), with BN $(tail -1 "$work/with-bn-accuracy.tsv" | cut -f2) after $steps steps"
