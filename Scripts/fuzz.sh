#!/usr/bin/env bash
# Fuzzes the wire protocol's decoder and then the data readers (IDX, .npy, CIFAR-10, --augment/--normalize
# text) with libFuzzer for a bounded time, shared between the two: half each (at least 1 second each).
# Each starts from its committed corpus (Fuzz/corpus/wire, Fuzz/DataParsers/corpus); new interesting inputs
# land in a scratch corpus, crashes in .build-fuzz/<target>-crash-* (Swift's own backtracer is off so that
# libFuzzer can save the crashing input).
#
#   Scripts/fuzz.sh [seconds]     (default 60, the total)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
wire_seconds=$(( seconds / 2 > 0 ? seconds / 2 : 1 ))
data_seconds=$(( seconds - wire_seconds > 0 ? seconds - wire_seconds : 1 ))
# lld: gold cannot link libFuzzer with Swift's debug info here.
for product in syncbn-fuzz-wire syncbn-fuzz-data; do
    swift build --product "$product" --scratch-path .build-fuzz \
        -Xswiftc -sanitize=fuzzer -Xswiftc -DFUZZING -Xswiftc -Xclang-linker -Xswiftc -fuse-ld=lld >/dev/null
done
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# fuzz NAME CORPUS SECONDS MAX_LEN
fuzz() {
    local name=$1 corpus=$2 seconds=$3 max_len=$4 log=.build-fuzz/fuzz-$1.log
    mkdir -p "$scratch/$name"
    SWIFT_BACKTRACE=enable=no ".build-fuzz/debug/syncbn-fuzz-$name" "$scratch/$name" "$corpus" -max_total_time="$seconds" \
        -max_len="$max_len" -artifact_prefix=".build-fuzz/$name-" > "$log" 2>&1 \
        || { tail -30 "$log"; echo "fuzz $name: FAILED, the crashing input is in .build-fuzz/" >&2; exit 1; }
    echo "fuzz $name: $(grep -E '^Done [0-9]+ runs' "$log"), no crash; corpus $(ls "$corpus" | wc -l) files + $(ls "$scratch/$name" | wc -l) new"
}
fuzz wire Fuzz/corpus/wire "$wire_seconds" 4096
# 8192 bytes hold two CIFAR-10 records.
fuzz data Fuzz/DataParsers/corpus "$data_seconds" 8192
