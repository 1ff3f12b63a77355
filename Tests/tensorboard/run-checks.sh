#!/usr/bin/env bash
# The TensorBoard part of the test suite: short runs of the built syncbn whose event files TensorBoard's own
# reader must read back with every scalar of metrics.jsonl at its step, and the histograms:
#   1. launch --workers 2, bn-cnn: BatchNorm2d/1d inputs, ReLU inputs, γ and β; live workers and redone steps;
#   2. a train run resumed from a checkpoint taken before its last logged step, with more steps (so that the
#      learning rate of the re-run steps differs): TensorBoard must show the resumed values, not the old ones.
#
#   Tests/tensorboard/run-checks.sh [path/to/syncbn]     (default .build/debug/syncbn)
set -euo pipefail
cd "$(dirname "$0")/../.."
syncbn=${1:-.build/debug/syncbn}
check=Tests/tensorboard/check-events.sh
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
data=${SYNCBN_DATA:-/usr/share/datasets/fashion-mnist}
quiet() { "$@" >"$work/log" 2>&1 || { cat "$work/log" >&2; echo "run-checks: failed: $*" >&2; exit 1; }; }

# bn-cnn, batch 8 (two chunks of 4): BatchNorm2d over 8·32·28·28 values, BatchNorm1d over 8·128.
quiet "$syncbn" launch --workers 2 --model bn-cnn --data "$data" --steps 12 --batch-size 8 --chunk-size 4 \
    --log-every 4 --eval-every 12 --out "$work/cnn"
"$check" "$work/cnn" \
    --histogram "1.BatchNorm2d/input=200704" --histogram "2.ReLU/input=200704" \
    --histogram "5.BatchNorm2d/input=100352" --histogram "10.BatchNorm1d/input=1024" \
    --histogram "1.BatchNorm2d/weight=32" --histogram "1.BatchNorm2d/bias=32" --histogram "10.BatchNorm1d/weight=128"
grep -q '"live_workers":2' "$work/cnn/metrics.jsonl" || { echo "run-checks: launch logged no live_workers 2" >&2; exit 1; }

# Resumed: 30 steps logged every 10 with a checkpoint at 20 — then resumed from it to 40 steps.
quiet "$syncbn" train --data "$data" --steps 30 --log-every 10 --checkpoint-every 20 --out "$work/resumed"
quiet "$syncbn" train --resume "$work/resumed" --steps 40
[ "$(ls "$work/resumed" | grep -c tfevents)" -eq 2 ] || { echo "run-checks: expected two event files after a resume" >&2; exit 1; }
"$check" "$work/resumed" --histogram "1.BatchNorm1d/input=6000"
