#!/usr/bin/env bash
# Checks a run directory's TensorBoard event files against its metrics.jsonl with TensorBoard's own reader.
#
#   Tests/tensorboard/check-events.sh RUN_DIR [--histogram TAG=NUM ...]
#
# Uses (and creates, with `pip install tensorboard numpy`, on first use) the virtual environment
# "${SYNCBN_VENV:-$PWD/.build-venv}" (the .build-* prefix is git-ignored); PYTHON picks the interpreter that
# creates it (default python3). Quiet on success but for the checker's one summary line; see
# check_events.py for what is checked.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${SYNCBN_VENV:-$PWD/.build-venv}"
python="${PYTHON:-python3}"

if [ $# -lt 1 ]; then
    echo "usage: $0 RUN_DIR [--histogram TAG=NUM ...]" >&2
    exit 2
fi

if ! "$venv/bin/python" -c 'import tensorboard, numpy' >/dev/null 2>&1; then
    log="$(mktemp)"
    trap 'rm -f "$log"' EXIT
    if ! { [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"; } >"$log" 2>&1 \
        || ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check tensorboard numpy >>"$log" 2>&1; then
        cat "$log" >&2
        echo "check-events.sh: could not set up the Python environment in $venv (needs $python with venv and network access to PyPI; remove $venv to start over)" >&2
        exit 1
    fi
    rm -f "$log"
    trap - EXIT
fi

exec "$venv/bin/python" "$here/check_events.py" "$@"
