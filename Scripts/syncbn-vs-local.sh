#!/usr/bin/env bash
# SyncBN against per-device BatchNorm at small per-device batches (the shape of the Group Normalization
# paper's Figure 1): bn-cnn on Fashion-MNIST split over 8 workers with 32, 16, 8, 4 and 2 samples each, for
# the same number of epochs, with BatchNorm over the global batch (--bn sync) and over each worker's own
# slice; test error against the per-worker batch, drawn from the runs' metrics.jsonl.
#
# Each point is computed in one process — the determinism that SyncBN guarantees makes that the same model:
# sync is `train --batch-size 8B`, per-worker BN is `train --bn-group-size B` (BatchNorm groups of one slice,
# which is `launch --workers 8 --bn local` bit for bit, as the test suite checks). For the smallest batch the
# sync run is also done for real, as a coordinator and 8 worker processes, and its model must be the same
# bytes as the one-process run.
# The learning rate follows the batch (linear scaling: 0.1 × global batch / 64).
#
#   Scripts/syncbn-vs-local.sh [--epochs E] [--figures DIR]     (defaults: 0.5 epoch, docs/figures)
set -euo pipefail
cd "$(dirname "$0")/.."
source Scripts/figure-support.sh
parse_options epochs 0.5 "$@"
prepare_figures
runs=${SYNCBN_RUNS:-runs}/syncbn-vs-local workers=8
printf '#samples_per_worker\tsync_error_%%\tper_worker_BN_error_%%\n' > "$work/errors.tsv"
for per_worker in 32 16 8 4 2; do
    global=$(( workers * per_worker ))
    chunk=$(( per_worker < 8 ? per_worker : 8 ))
    lr=$(awk -v g=$global 'BEGIN { printf "%.5f", 0.1 * g / 64 }')
    common=(--model bn-cnn --epochs "$epochs" --batch-size "$global" --chunk-size "$chunk" --lr "$lr" --log-every 100)
    run_quietly "$runs/sync-$per_worker" "$syncbn" train "${common[@]}" --out "$runs/sync-$per_worker"
    run_quietly "$runs/local-$per_worker" "$syncbn" train "${common[@]}" --bn-group-size "$per_worker" --out "$runs/local-$per_worker"
    printf '%s\t%s\t%s\n' "$per_worker" \
        "$(awk -v a="$(final_accuracy "$runs/sync-$per_worker")" 'BEGIN { print 100 * (1 - a) }')" \
        "$(awk -v a="$(final_accuracy "$runs/local-$per_worker")" 'BEGIN { print 100 * (1 - a) }')" >> "$work/errors.tsv"
done

# The smallest batch for real: a coordinator and 8 worker processes, the same bytes as one process.
smallest=2
common=(--model bn-cnn --epochs "$epochs" --batch-size $(( workers * smallest )) --chunk-size $smallest
        --lr "$(awk -v g=$(( workers * smallest )) 'BEGIN { printf "%.5f", 0.1 * g / 64 }')" --log-every 100)
run_quietly "$runs/launch-sync-$smallest" "$syncbn" launch --workers $workers "${common[@]}" --out "$runs/launch-sync-$smallest"
cmp "$runs/launch-sync-$smallest/model.safetensors" "$runs/sync-$smallest/model.safetensors"
echo "  8 worker processes: the same model bytes as one process (SyncBN, $smallest samples per worker)"
sync_launch=$(awk -v a="$(final_accuracy "$runs/launch-sync-$smallest")" 'BEGIN { print 100 * (1 - a) }')
cp "$work/errors.tsv" "$runs/errors.tsv"

gnuplot <<GNUPLOT
set terminal pngcairo size 800,520 font ",11"
set output "$figures/syncbn-vs-local.png"
set title "bn-cnn on Fashion-MNIST, 8 workers, $epochs epoch(s)"
set xlabel "samples per worker"
set ylabel "test error (%)"
set logscale x 2
set xrange [40:1.6] 
set xtics ("32" 32, "16" 16, "8" 8, "4" 4, "2" 2)
set grid
set key top left
plot "$work/errors.tsv" using 1:2 with linespoints lw 2 pt 7 title "SyncBN (global batch statistics)", \
     "$work/errors.tsv" using 1:3 with linespoints lw 2 pt 5 title "per-worker BN", \
     "< echo '$smallest $sync_launch'" using 1:2 with points pt 6 ps 3 lc rgb "black" title "SyncBN run as 8 processes: same bytes as 1 (cmp)"
GNUPLOT
column -t "$work/errors.tsv"
echo "syncbn-vs-local.sh: $figures/syncbn-vs-local.png"
