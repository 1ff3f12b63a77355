#!/usr/bin/env bash
# The whole test suite: a bounded fuzzing run of the wire decoder and the data and model-file parsers, the
# library example, then unit tests, protocol tests and
# multi-process tests (real processes, real sockets on loopback, hosts in network namespaces), and TensorBoard
# reading our event files. Installs the Debian packages it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
Scripts/install-deps.sh --tests --figures
Scripts/fuzz.sh "${SYNCBN_FUZZ_SECONDS:-30}"
swift build --build-tests
# The library: a program that imports SyncBN builds, and trains the same bits in one process and as a
# coordinator with two workers.
swift build --package-path Examples/LibraryExample --scratch-path .build-example >/dev/null
.build-example/debug/LibraryExample
swift test --skip-build --disable-swift-testing
# TensorBoard's own reader (in a virtual environment the script makes) reads back short runs' event files.
Tests/tensorboard/run-checks.sh .build/debug/syncbn
# The figure scripts still run and draw (a few steps, this build; the committed figures come from full runs).
figures=$(mktemp -d)
trap 'rm -rf "$figures"' EXIT
SYNCBN_BIN=.build/debug/syncbn SYNCBN_RUNS="$figures" SYNCBN_FIGURE_EVALS=4 Scripts/figure1.sh --steps 100 --figures "$figures" >/dev/null
SYNCBN_BIN=.build/debug/syncbn SYNCBN_RUNS="$figures" Scripts/bn-backward-ablation.sh --steps 100 --figures "$figures" >/dev/null
for png in figure1 bn-backward-ablation; do
    [ "$(stat -c %s "$figures/$png.png")" -gt 10000 ] || { echo "test.sh: $png.png was not drawn" >&2; exit 1; }
done
echo "figure scripts: figure1.png and bn-backward-ablation.png drawn from short runs"
# The benchmark still runs: its transport section once, which must have measured the round trip and a bare wait.
.build/debug/syncbn bench --sections transport --repeats 1 --quick --json "$figures/bench.json" >"$figures/bench.log" 2>&1 \
    || { cat "$figures/bench.log" >&2; exit 1; }
python3 -c 'import json, sys; raw = json.load(open(sys.argv[1]))["raw"]
sys.exit(0 if all(raw.get(key, 0) > 0 for key in ("roundTripIpcMicroseconds", "bareWaitCPUMicroseconds")) else 1)' "$figures/bench.json" \
    || { echo "test.sh: syncbn bench --sections transport measured no round trip or bare wait" >&2; exit 1; }
echo "bench: the transport section runs"
