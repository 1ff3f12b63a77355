#!/usr/bin/env bash
# Runs the deterministic simulation on random seeds for as long as asked (release build), and prints every
# seed that breaks an invariant with the command that replays it.
#
#   Scripts/swarm.sh [seconds] [first-seed]    random schedules (default 60 s, a random first seed)
#   Scripts/swarm.sh --exhaustive              kill each participant at every message boundary of a short run
#   SYNCBN_SIM_SEED=123 Scripts/swarm.sh       replay one seed with its trace
#   SYNCBN_SIM_PAIRS=1 Scripts/swarm.sh ...    the same with two workers that exchange BatchNorm rounds
#
# A seed that fails belongs in Tests/SyncBNSimulationTests/SimulationTests.swift (regressionSeeds) once fixed.
set -euo pipefail
cd "$(dirname "$0")/.."
swift build -c release --product syncbn-swarm >&2
exec .build/release/syncbn-swarm "$@"
