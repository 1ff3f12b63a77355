#!/usr/bin/env bash
# The whole test suite: unit tests, protocol tests and multi-process tests (real processes, real sockets on
# loopback). Installs the Debian packages it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
Scripts/install-deps.sh
swift build --build-tests
swift test --skip-build --disable-swift-testing
