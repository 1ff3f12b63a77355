#!/usr/bin/env bash
# The whole test suite: a bounded fuzzing run of the wire decoder and the data and model-file parsers, the
# library example, then unit tests, protocol tests and
# multi-process tests (real processes, real sockets on loopback, hosts in network namespaces), and TensorBoard
# reading our event files. Installs the Debian packages it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
Scripts/install-deps.sh --tests
Scripts/fuzz.sh "${SYNCBN_FUZZ_SECONDS:-30}"
swift build --build-tests
# The library: a program that imports SyncBN builds, and trains the same bits in one process and as a
# coordinator with two workers.
swift build --package-path Examples/LibraryExample --scratch-path .build-example >/dev/null
.build-example/debug/LibraryExample
swift test --skip-build --disable-swift-testing
# TensorBoard's own reader (in a virtual environment the script makes) reads back short runs' event files.
Tests/tensorboard/run-checks.sh .build/debug/syncbn
