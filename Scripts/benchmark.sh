#!/usr/bin/env bash
# Step-time benchmark of the foundation: a raw ZeroMQ round trip between two processes (the floor), the
# one-process step of bn-mlp at global batch 60, and `launch` with 2 and 4 workers — all in the same run,
# each repeated, medians reported, with the ratios to the targets.
#
#   Scripts/benchmark.sh [repeats] [steps]      (defaults: 5 repeats of 2000 steps)
#
# Targets: one-process step ≤ 0.7 ms; an N-worker step ≤ 1.5 × (its compute + 7 round trips), where
# 7 = 3 BatchNorm forward rounds + 3 backward rounds + 1 gradient round, and the round trip is the raw ipc
# one (launch's coordinator binds an ipc socket). `syncbn bench` measures more, with the stricter targets.
set -euo pipefail
cd "$(dirname "$0")/.."
repeats=${1:-5}
steps=${2:-2000}
swift build -c release --product syncbn >/dev/null
bin=.build/release/syncbn
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

median() { sort -g | awk '{v[NR]=$1} END {if (NR == 0) print "nan"; else print v[int((NR + 1) / 2)]}'; }

for r in $(seq "$repeats"); do
    $bin bench-roundtrip --transport tcp | sed -n 's/.*median \([0-9.]*\) us.*/\1/p' >> "$out/rtt-tcp"
    $bin bench-roundtrip --transport ipc | sed -n 's/.*median \([0-9.]*\) us.*/\1/p' >> "$out/rtt-ipc"
    $bin train --steps "$steps" --no-shuffle --out "$out/run-train" 2>&1 | sed -n 's/.*median step \([0-9.]*\) ms.*/\1/p' >> "$out/train"
    for n in 2 4; do
        log=$($bin launch --workers "$n" --steps "$steps" --no-shuffle --out "$out/run-launch$n" 2>&1)
        echo "$log" | sed -n 's/.*finished.*median step \([0-9.]*\) ms.*/\1/p' >> "$out/launch$n"
        echo "$log" | sed -n 's/.*median compute \([0-9.]*\) ms.*/\1/p' | median >> "$out/compute$n"
    done
done

rtt=$(median < "$out/rtt-tcp")
rtt_ipc=$(median < "$out/rtt-ipc")
train=$(median < "$out/train")
printf '\nbn-mlp, global batch 60, %s steps, median of %s runs (%s, %s cores)\n\n' "$steps" "$repeats" "$(uname -m)" "$(nproc)"
printf '%-34s %12s %14s %10s\n' "measure" "median" "target" "ratio"
printf '%-34s %9.1f us %14s %10s\n' "raw ZeroMQ round trip, tcp" "$rtt" "(baseline)" ""
printf '%-34s %9.1f us %14s %10s\n' "raw ZeroMQ round trip, ipc" "$rtt_ipc" "" ""
awk -v t="$train" 'BEGIN { printf "%-34s %9.3f ms %11.3f ms %9.2fx\n", "train, one process", t, 0.7, t / 0.7 }'
for n in 2 4; do
    step=$(median < "$out/launch$n")
    compute=$(median < "$out/compute$n")
    awk -v s="$step" -v c="$compute" -v r="$rtt_ipc" -v n="$n" 'BEGIN {
        target = 1.5 * (c + 7 * r / 1000)
        printf "%-34s %9.3f ms %11.3f ms %9.2fx\n", "launch, " n " workers (compute " c " ms)", s, target, s / target
    }'
done
printf '\nratio = median / target; at most 1.00 meets the target.\n'
