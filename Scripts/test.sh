#!/usr/bin/env bash
# The whole test suite: a bounded fuzzing run of the wire decoder, then unit tests, protocol tests and
# multi-process tests (real processes, real sockets on loopback, hosts in network namespaces). Installs the
# Debian packages it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
Scripts/install-deps.sh --tests
Scripts/fuzz.sh "${SYNCBN_FUZZ_SECONDS:-30}"
swift build --build-tests
swift test --skip-build --disable-swift-testing
