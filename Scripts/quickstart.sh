#!/usr/bin/env bash
# The main job on a fresh machine: install what is needed, build, and train the Batch Normalization
# paper's MNIST network on Fashion-MNIST with a coordinator and 4 worker processes, synchronized BN.
# Extra arguments go to `syncbn launch` (e.g. --epochs 5).
set -euo pipefail
cd "$(dirname "$0")/.."
Scripts/install-deps.sh
swift build -c release --product syncbn
.build/release/syncbn launch --workers 4 --model bn-cnn --epochs 1 --out runs/quickstart "$@"
.build/release/syncbn evaluate --model runs/quickstart/model.safetensors
