# Shared by the figure scripts (sourced, not run): parses their options, installs gnuplot and jq, builds
# syncbn in release mode, and runs training commands quietly (their output goes to a log shown only on failure).

# parse_options NAME DEFAULT ARGS…: sets the variable NAME from --NAME VALUE (default DEFAULT) and $figures
# from --figures DIR (default docs/figures); anything else is an error.
parse_options() {
    local name=$1
    printf -v "$name" '%s' "$2"
    shift 2
    figures=docs/figures
    while [ $# -gt 0 ]; do
        case $1 in
            --"$name") printf -v "$name" '%s' "$2"; shift 2 ;;
            --figures) figures=$2; shift 2 ;;
            *) echo "$(basename "$0"): unknown option $1 (use --$name VALUE, --figures DIR)" >&2; exit 2 ;;
        esac
    done
}

# Sets $syncbn (a release build, or $SYNCBN_BIN if set: the test suite's smoke run uses its debug build) and
# $work (a scratch directory removed at exit), and creates $figures.
prepare_figures() {
    Scripts/install-deps.sh --figures
    if [ -n "${SYNCBN_BIN:-}" ]; then
        syncbn=$SYNCBN_BIN
    else
        swift build -c release --product syncbn >/dev/null
        syncbn=.build/release/syncbn
    fi
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
