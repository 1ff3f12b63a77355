#!/usr/bin/env bash
# Fuzzes the wire protocol's decoder with libFuzzer for a bounded time, starting from the committed corpus
# (Fuzz/corpus/wire); new interesting inputs land in a scratch corpus, crashes in .build-fuzz/crash-* (Swift's
# own backtracer is off so that libFuzzer can save the crashing input).
#
#   Scripts/fuzz.sh [seconds]     (default 60)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
# lld: gold cannot link libFuzzer with Swift's debug info here.
swift build --product syncbn-fuzz-wire --scratch-path .build-fuzz \
    -Xswiftc -sanitize=fuzzer -Xswiftc -DFUZZING -Xswiftc -Xclang-linker -Xswiftc -fuse-ld=lld >/dev/null
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
SWIFT_BACKTRACE=enable=no .build-fuzz/debug/syncbn-fuzz-wire "$scratch" Fuzz/corpus/wire -max_total_time="$seconds" -max_len=4096 \
    -artifact_prefix=.build-fuzz/ > .build-fuzz/fuzz.log 2>&1 || { tail -30 .build-fuzz/fuzz.log; echo "fuzz: FAILED, the crashing input is in .build-fuzz/" >&2; exit 1; }
echo "fuzz: $(grep -E '^Done [0-9]+ runs' .build-fuzz/fuzz.log), no crash; corpus $(ls Fuzz/corpus/wire | wc -l) files + $(ls "$scratch" | wc -l) new"

