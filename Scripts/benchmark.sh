#!/usr/bin/env bash
# The quick speed check: `syncbn bench` (the one benchmark entry point) on the transport and the training
# step times, shortened (--quick), with medians of N repeats and the ratios to the targets in one table.
#
#   Scripts/benchmark.sh [repeats]      (default 3); `syncbn bench --help` for everything else
set -euo pipefail
cd "$(dirname "$0")/.."
swift build -c release --product syncbn >/dev/null
exec .build/release/syncbn bench --sections transport,training --quick --repeats "${1:-3}"
