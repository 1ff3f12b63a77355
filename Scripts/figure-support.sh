# Shared by the figure scripts (sourced, not run): installs gnuplot and jq, builds syncbn in release mode,
# and runs training commands quietly (their output goes to a log shown only on failure).

# Sets $syncbn and $work (a scratch directory removed at exit) and creates $figures.
prepare_figures() {
    Scripts/install-deps.sh --figures
    swift build -c release --product syncbn >/dev/null
    syncbn=.build/release/syncbn
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    mkdir -p "$figures"
}

# run_quietly OUT_DIR COMMAND…: starts from an empty OUT_DIR; prints the run's last test accuracy.
run_quietly() {
    local out=$1; shift
    rm -rf "$out"
    mkdir -p "$(dirname "$out")"
    if ! "$@" > "$work/run.log" 2>&1; then
        tail -20 "$work/run.log" >&2
        echo "$(basename "$0"): failed: $*" >&2
        exit 1
    fi
    echo "  $out: test accuracy $(final_accuracy "$out")"
}

# The last test accuracy a run logged (metrics.jsonl).
final_accuracy() { jq -r 'select(.test_accuracy != null) | .test_accuracy' "$1/metrics.jsonl" | tail -1; }
