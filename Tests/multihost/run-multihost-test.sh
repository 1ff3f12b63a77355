#!/usr/bin/env bash
# The multi-host scenario, on one machine: three network namespaces joined by veth pairs to a bridge, an
# sshd in each (see netns-cluster.sh), and Scripts/syncbn-hosts driving a real training job across them
# over TCP with CurveZMQ keys:
#
#   h0  syncbn-hosts and the coordinator (bound to h0's address)
#   h1  2 workers over ssh        h2  2 workers over ssh
#
# Checks, each bounded in time:
#   1. the model is byte-identical to `syncbn train` with the same options;
#   2. a worker with a key that is not in authorized_keys, started while the job trains, is refused
#      (non-zero exit, a message about authorization) within 2 s; the coordinator logs the refused key
#      once; training completes with the identical model;
#   3. a host cut off the network while the job trains (its veth taken down at the bridge): the coordinator
#      declares each of its 2 workers dead within 5 s, training completes with the identical model,
#      syncbn-hosts exits 0, and once the link is back no process of the job is left on any host;
#   4. an identical model too with the coordinator on the first host (started over ssh), 3 workers;
#   4b. the same short run with gradients exchanged among the workers across h1 and h2, without keys;
#   5. syncbn-hosts' one-line errors: an unreachable host, a missing binary, a port already in use;
#   6. syncbn-hosts stops everything, leaving no syncbn process on any host: when a worker fails, on
#      Ctrl-C (SIGINT to its process group), and when it is killed with SIGKILL.
# Everything the test made (namespaces, veths, bridge, sshds, processes, files) is removed on exit, even on
# failure. The last line is "multihost: OK model identical, unauthorized worker refused in X.XX s".
# Exit status: 0 passed, 1 failed, 77 skipped (network namespaces cannot be created here).
#
#   run-multihost-test.sh [--syncbn PATH] [--steps N] [--keep]
#
# PATH defaults to $SYNCBN_EXECUTABLE, else .build/debug/syncbn. Needs root, iproute2, openssh-server,
# openssh-client (and coreutils, diffutils, mawk: Essential), and the Fashion-MNIST data set.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
launcher="$root/Scripts/syncbn-hosts"
syncbn=${SYNCBN_EXECUTABLE:-$root/.build/debug/syncbn}
steps=600
keep=0
while [[ $# -gt 0 ]]; do
    case $1 in
        --syncbn) syncbn=$2; shift 2 ;;
        --steps) steps=$2; shift 2 ;;
        --keep) keep=1; shift ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "run-multihost-test.sh: unknown argument '$1'" >&2; exit 2 ;;
    esac
done

say() { printf 'multihost: %s\n' "$*"; }
fail() { say "FAIL $*"; exit 1; }                      # fatal: the rest cannot run
declare -a problems=()
problem() { say "FAIL $*"; problems+=("$*"); }         # a failed check; the others still run
skip() { say "SKIP $*"; exit 77; }
now() { printf '%s' "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

[[ $(id -u) -eq 0 ]] || skip "needs root to create network namespaces"
[[ $syncbn == /* ]] || syncbn="$PWD/$syncbn"
[[ -x $syncbn ]] || fail "no syncbn executable at $syncbn (build it, or pass --syncbn PATH)"
[[ -x $launcher ]] || fail "no launcher at $launcher"
for tool in ip ssh ssh-keygen timeout awk cmp; do
    command -v "$tool" >/dev/null || fail "'$tool' is missing (apt-get install iproute2 openssh-client coreutils)"
done
command -v sshd >/dev/null || [[ -x /usr/sbin/sshd ]] || fail "sshd is missing (apt-get install openssh-server)"

# Can this machine make network namespaces at all? (A container without CAP_SYS_ADMIN cannot.)
probe="syncbn-mh$$-probe"
if ! out=$(ip netns add "$probe" 2>&1); then
    skip "'ip netns add' is not permitted here: ${out//$'\n'/ }"
fi
ip netns del "$probe" 2>/dev/null

# shellcheck source=netns-cluster.sh disable=SC1091
source "$here/netns-cluster.sh"

work=$(mktemp -d /tmp/syncbn-multihost.XXXXXX) || fail "mktemp"
cluster="$work/cluster"
mkdir -p "$work/tmp"
export TMPDIR="$work/tmp"   # syncbn-hosts' temporary files (the SIGKILLed one cannot remove its own)
declare -a bg_pids=()   # processes this script started in the background, killed by pid on exit
cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${bg_pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    cluster_down "$cluster" 2>/dev/null
    for pid in "${bg_pids[@]}" ${SSHD_PIDS:-}; do
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    if (( keep )); then echo "multihost: kept $work" >&2; else rm -rf "$work"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
started=$(now)

# Processes named syncbn in the cluster's namespaces (pid per line).
syncbn_pids() {
    local ns p
    for ns in $HOSTS; do
        for p in $(ip netns pids "$ns" 2>/dev/null); do
            [[ $(cat "/proc/$p/comm" 2>/dev/null) == syncbn ]] && echo "$p"
        done
    done
    return 0
}
# Waits up to $2 seconds for file $1 to have a line matching regex $3; fails early if pid $4 has exited.
wait_for_line() {
    local file=$1 secs=$2 pattern=$3 pid=${4:-} deadline
    deadline=$(awk -v t="$EPOCHREALTIME" -v s="$secs" 'BEGIN { printf "%.3f", t + s }')
    while ! grep -Eq -- "$pattern" "$file" 2>/dev/null; do
        if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then return 2; fi
        awk -v t="$EPOCHREALTIME" -v d="$deadline" 'BEGIN { exit !(t > d) }' && return 1
        sleep 0.05
    done
}
# Waits up to $2 seconds for pid $1 (a child) to exit; sets `status`. Returns 1 on time-out.
wait_exit() {
    local pid=$1 n=0 limit=$(( $2 * 20 ))
    while kill -0 "$pid" 2>/dev/null && (( ++n <= limit )); do sleep 0.05; done
    if kill -0 "$pid" 2>/dev/null; then return 1; fi
    wait "$pid" 2>/dev/null; status=$?
}
# Waits up to $1 seconds until no syncbn runs in any namespace of the cluster.
wait_no_syncbn() {
    local n=0 limit=$(( $1 * 20 ))
    while [[ -n $(syncbn_pids) ]] && (( ++n <= limit )); do sleep 0.05; done
    [[ -z $(syncbn_pids) ]]
}
show_syncbn() { # the syncbn processes in the namespaces, with their arguments
    local p
    for p in $(syncbn_pids); do printf '    | %s %s\n' "$p" "$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null)"; done
}
show_log() { sed 's/^/    | /' "$1" | tail -n "${2:-25}"; }

# --- The reference, in one process ------------------------------------------------------------------
train_opts=(--steps "$steps" --no-shuffle --log-every 100)
t0=$(now)
timeout -k 5 300 "$syncbn" train "${train_opts[@]}" --out "$work/reference" >"$work/reference.log" 2>&1 ||
    { show_log "$work/reference.log"; fail "syncbn train failed"; }
say "reference: syncbn train ${train_opts[*]} in $(elapsed "$t0" "$(now)") s"

# --- The cluster --------------------------------------------------------------------------------------
cluster_sweep
t0=$(now)
cluster_up "$cluster" 3 "syncbn-mh$$" || fail "could not set up the namespaces"   # exits on failure
# shellcheck disable=SC1091
source "$cluster/cluster.env"   # NAME SUBNET HOSTS ADDRS SSHD_PIDS
# shellcheck disable=SC2153 # (set by cluster.env)
read -r -a ns <<<"$HOSTS"
# shellcheck disable=SC2153
read -r -a addr <<<"$ADDRS"
# shellcheck disable=SC2153
say "cluster: ${#ns[@]} namespaces ($HOSTS) on $SUBNET.0/24 with sshd, up in $(elapsed "$t0" "$(now)") s"

"$launcher" --make-keys "$work/keys" --syncbn "$syncbn" 2>/dev/null || fail "syncbn-hosts --make-keys failed"
mkdir -p "$work/rogue"
"$syncbn" keygen --out "$work/rogue/rogue" >/dev/null || fail "syncbn keygen failed"
rogue_pub=$(grep -v '^#' "$work/rogue/rogue.pub" | head -n 1)
[[ -n $rogue_pub ]] || fail "cannot read the rogue public key"

hosts_opts=(--ssh-option "-F $cluster/ssh_config" --syncbn "$syncbn" --check-timeout 5)
in_h0() { ip netns exec "${ns[0]}" "$@"; }   # (not for background jobs: $! would be a subshell)

# --- 1 + 2: training across the hosts, with an unauthorized worker while it trains -----------------
t0=$(now)
ip netns exec "${ns[0]}" timeout -k 5 240 "$launcher" -H h1:2,h2:2 "${hosts_opts[@]}" --keys "$work/keys" --port 5555 \
    -- "${train_opts[@]}" --out "$work/distributed" >"$work/main.log" 2>&1 &
main_pid=$!
bg_pids+=("$main_pid")
wait_for_line "$work/main.log" 120 '^\[coordinator\] .*training .* on 4 worker' "$main_pid" ||
    { show_log "$work/main.log"; fail "training across the hosts did not start"; }

rogue_start=$(now)
ip netns exec "${ns[1]}" timeout -k 2 20 "$syncbn" worker --connect "tcp://${addr[0]}:5555" \
    --secret-key "$work/rogue/rogue.key" --server-key "$work/keys/coordinator.pub" --connect-timeout 10 \
    >"$work/rogue.log" 2>&1
rogue_status=$?
rogue_end=$(now)
refused_in=$(elapsed "$rogue_start" "$rogue_end")
finished_before=0
grep -q '^\[coordinator\] .*finished ' "$work/main.log" && finished_before=1

wait_exit "$main_pid" 240 || fail "syncbn-hosts did not finish in time"
main_status=$status
main_secs=$(elapsed "$t0" "$(now)")
(( main_status == 0 )) || { show_log "$work/main.log"; fail "syncbn-hosts exited with status $main_status"; }
cmp -s "$work/reference/model.safetensors" "$work/distributed/model.safetensors" ||
    fail "the model trained across the hosts differs from syncbn train's ($(cmp "$work/reference/model.safetensors" "$work/distributed/model.safetensors" 2>&1))"
joined=$(grep -c '^\[coordinator\] .*worker [0-9]* joined' "$work/main.log")
(( joined == 4 )) || fail "the coordinator reports $joined workers joined, not 4"
for label in '\[h1 0\]' '\[h1 1\]' '\[h2 2\]' '\[h2 3\]'; do
    grep -q "^$label .*training finished" "$work/main.log" || fail "no line from $label saying training finished"
done
say "training over ssh: 4 workers (h1:2, h2:2) with CurveZMQ keys, model identical to syncbn train ($main_secs s)"

if (( rogue_status == 0 || rogue_status == 124 || rogue_status == 137 )); then
    show_log "$work/rogue.log"; fail "the unauthorized worker was not refused (exit status $rogue_status)"
fi
grep -qi 'authoriz' "$work/rogue.log" ||
    { show_log "$work/rogue.log"; fail "the unauthorized worker's message does not mention authorization"; }
awk -v s="$refused_in" 'BEGIN { exit !(s < 2.0) }' || fail "the unauthorized worker was refused after $refused_in s, not within 2 s"
(( finished_before == 0 )) || fail "training had finished before the unauthorized worker was refused: use more --steps"
refused_lines=$(grep -cF -- "$rogue_pub" "$work/main.log")
(( refused_lines == 1 )) || { show_log "$work/main.log"; fail "the coordinator logged the refused key $refused_lines times, not once"; }
say "unauthorized worker: exit status $rogue_status in $refused_in s: $(grep -i 'authoriz' "$work/rogue.log" | head -n 1 | sed 's/^[0-9:.]* //')"

# --- 3: a host cut off the network while the job trains ---------------------------------------------
# h2's veth is taken down at the bridge (the cable pulled at the switch: no FIN, no RST, nothing) halfway
# through the job (metrics.jsonl has the line of step 300 of 600). The coordinator must declare each of
# h2's workers dead within 5 s (ZMTP heartbeats, --heartbeat-timeout 2, then a probe), redo the step with
# h1's workers and finish with the model of `syncbn train` (the options of 1, so the same reference). The
# link stays down until the coordinator has finished, then comes back so that the launcher can stop h2's
# workers (trying to rejoin) over their ssh sessions, after --grace 1. syncbn-hosts exits with the
# coordinator's status (0) only if training ends before its ssh sessions to h2 time out (ServerAliveInterval
# 5 x ServerAliveCountMax 3: about 15-18 s after the cut): an ssh client's exit 255 while the coordinator
# runs counts as a failed worker, and syncbn-hosts then stops the whole job. Hence the cut halfway.
h2_syncbn() { local p; for p in $(ip netns pids "${ns[2]}" 2>/dev/null); do [[ $(cat "/proc/$p/comm" 2>/dev/null) == syncbn ]] && echo "$p"; done; return 0; }
tod() { date +%H:%M:%S.%N | awk -F: '{ printf "%.3f", $1 * 3600 + $2 * 60 + $3 }'; }   # the logs' clock
t0=$(now)
ip netns exec "${ns[0]}" timeout -k 5 240 "$launcher" -H h1:2,h2:2 "${hosts_opts[@]}" --keys "$work/keys" --port 5560 \
    --grace 1 -- "${train_opts[@]}" --heartbeat-timeout 2 --out "$work/cutoff" >"$work/cutoff.log" 2>&1 &
cut_pid=$!
bg_pids+=("$cut_pid")
# Halfway (with --steps N: about N/2); training cannot end before h2's workers are declared dead anyway.
cut_step=$(( steps / 2 - steps / 2 % 100 )); (( cut_step >= 100 )) || cut_step=100   # (--log-every 100)
wait_for_line "$work/cutoff/metrics.jsonl" 120 "\"step\":${cut_step}[,}]" "$cut_pid" ||
    { show_log "$work/cutoff.log"; fail "cut off: training across the hosts did not reach step $cut_step (metrics.jsonl)"; }
read -r -a h2_pids <<<"$(h2_syncbn | tr '\n' ' ')"
(( ${#h2_pids[@]} == 2 )) || { show_syncbn; fail "cut off: expected 2 syncbn workers in ${ns[2]}, found ${#h2_pids[@]}"; }
cut_tod=$(tod)
cut_at=$(now)
ip -n "$BRIDGE_NS" link set p2 down || fail "cut off: cannot take p2 down in $BRIDGE_NS"
link_down=1
restore_link() { (( link_down )) && ip -n "$BRIDGE_NS" link set p2 up && link_down=0; }
# The coordinator's "declared dead" line for each of h2's workers (named by pid in the worker's description).
declare -a dead_in=()
for p in "${h2_pids[@]}"; do
    wait_for_line "$work/cutoff.log" 10 "^\[coordinator\] .*\(.* pid $p[^0-9)]*\) declared dead" "$cut_pid"
    case $? in
        1) restore_link; show_log "$work/cutoff.log"; fail "cut off: worker pid $p on h2 was not declared dead within 10 s" ;;
        2) restore_link; show_log "$work/cutoff.log"; fail "cut off: syncbn-hosts ended before worker pid $p on h2 was declared dead (more --steps?)" ;;
    esac
    stamp=$(grep -m 1 -E "^\[coordinator\] .*\(.* pid $p[^0-9)]*\) declared dead" "$work/cutoff.log" | awk '{ print $2 }')
    dead_in+=("$(awk -v s="$stamp" -v c="$cut_tod" 'BEGIN { split(s, a, ":"); d = a[1] * 3600 + a[2] * 60 + a[3] - c
        if (d < -43200) d += 86400; printf "%.2f", d }')")
done
# Keep h2 cut off until the coordinator has finished (or the launcher ends), then reconnect it.
wait_for_line "$work/cutoff.log" 120 '^\[coordinator\] .*finished ' "$cut_pid"
restore_link || fail "cut off: cannot bring p2 back up in $BRIDGE_NS"
down_secs=$(elapsed "$cut_at" "$(now)")
wait_exit "$cut_pid" 60 || fail "cut off: syncbn-hosts did not finish in time"
cut_status=$status
cut_secs=$(elapsed "$t0" "$(now)")
t1=$(now)
wait_no_syncbn 20 || { show_syncbn; fail "cut off: syncbn processes left 20 s after syncbn-hosts ended"; }
# Nothing of the job on any host: the only processes left in the namespaces are the listening sshds
# (a remote wrapper may take a moment to notice that its syncbn is gone: wait up to 10 s for that).
non_sshd() {
    local n p
    for n in "${ns[@]}"; do
        for p in $(ip netns pids "$n" 2>/dev/null); do
            [[ " $SSHD_PIDS " == *" $p "* ]] || printf '    | %s: %s %s\n' "$n" "$p" "$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null)"
        done
    done
}
deadline=$(( SECONDS + 10 ))
left=$(non_sshd)
while [[ -n $left ]] && (( SECONDS < deadline )); do
    sleep 0.05
    left=$(non_sshd)
done
[[ -z $left ]] || { printf '%s\n' "$left"; problem "cut off: processes other than the sshds left in the namespaces"; }
cleared_in=$(elapsed "$t1" "$(now)")
ip netns exec "${ns[0]}" timeout 10 ssh -F "$cluster/ssh_config" h2 true </dev/null ||
    fail "cut off: h2 is not reachable over ssh again after its link came back"
dead_lines=$(grep -c '^\[coordinator\] .* declared dead' "$work/cutoff.log")
if (( cut_status != 0 )); then
    show_log "$work/cutoff.log" 40
    hint=""
    grep -q '^syncbn-hosts: \[h2 [23]\] exited with status 255; stopping every process' "$work/cutoff.log" &&
        hint=": its ssh session to h2 timed out (ServerAliveInterval 5 x ServerAliveCountMax 3) before training ended, and syncbn-hosts stops the job when a worker fails"
    problem "cut off: syncbn-hosts exited with status $cut_status (link down for $down_secs s)$hint"
elif ! grep -q '^\[coordinator\] .*finished ' "$work/cutoff.log"; then
    show_log "$work/cutoff.log"; problem "cut off: no 'finished' line from the coordinator"
elif ! cmp -s "$work/reference/model.safetensors" "$work/cutoff/model.safetensors"; then
    problem "cut off: the model differs from syncbn train's ($(cmp "$work/reference/model.safetensors" "$work/cutoff/model.safetensors" 2>&1))"
elif (( dead_lines != 2 )); then
    show_log "$work/cutoff.log" 40; problem "cut off: the coordinator declared $dead_lines workers dead, not 2 (h2's)"
elif ! grep -q '^\[coordinator\] .*step [0-9]* redone by 2 worker' "$work/cutoff.log"; then
    show_log "$work/cutoff.log" 40; problem "cut off: no 'step ... redone by 2 worker(s)' line from the coordinator"
elif ! awk -v a="${dead_in[0]}" -v b="${dead_in[1]}" 'BEGIN { exit !(a >= 0 && b >= 0 && a < 5 && b < 5) }'; then
    grep '^\[coordinator\] .* declared dead' "$work/cutoff.log" | sed 's/^/    | /'
    problem "cut off: h2's workers were declared dead ${dead_in[0]} s and ${dead_in[1]} s after the cut, not within 5 s"
else
    for label in '\[h1 0\]' '\[h1 1\]'; do
        grep -q "^$label .*training finished" "$work/cutoff.log" || problem "cut off: no line from $label saying training finished"
    done
    say "cut off h2: its 2 workers declared dead in ${dead_in[0]} s and ${dead_in[1]} s; model identical" \
        "(syncbn-hosts exit 0 in $cut_secs s, link down $down_secs s, no process left $cleared_in s later)"
fi

# --- 4: the coordinator on the first host (over ssh, like the workers), a short run -----------------
short_opts=(--steps 60 --no-shuffle)
timeout -k 5 120 "$syncbn" train "${short_opts[@]}" --out "$work/reference-short" >"$work/reference-short.log" 2>&1 ||
    { show_log "$work/reference-short.log"; fail "syncbn train (short) failed"; }
t0=$(now)
in_h0 timeout -k 5 120 "$launcher" -H h1:1,h2:2 --coordinator-on-first-host "${hosts_opts[@]}" --keys "$work/keys" \
    -- "${short_opts[@]}" --out "$work/first-host" >"$work/first-host.log" 2>&1
st=$?
if (( st != 0 )); then
    show_log "$work/first-host.log"; problem "coordinator on the first host: syncbn-hosts exited with status $st"
elif ! grep -q "^syncbn-hosts: coordinator on h1 at tcp://${addr[1]}:5555;" "$work/first-host.log"; then
    show_log "$work/first-host.log"; problem "coordinator on the first host: it did not run on h1 (${addr[1]})"
elif ! cmp -s "$work/reference-short/model.safetensors" "$work/first-host/model.safetensors"; then
    problem "coordinator on the first host: the model differs from syncbn train's"
else
    say "coordinator on the first host (h1, over ssh) with 3 workers: model identical ($(elapsed "$t0" "$(now)") s)"
fi

# --- 4b: gradients exchanged among the workers across the hosts (no keys: peer links are not encrypted) ----
t0=$(now)
in_h0 timeout -k 5 120 "$launcher" -H h1:2,h2:2 "${hosts_opts[@]}" --insecure \
    -- "${short_opts[@]}" --gradient-exchange peers --out "$work/peers" >"$work/peers.log" 2>&1
st=$?
if (( st != 0 )); then
    show_log "$work/peers.log"; problem "gradients among the workers: syncbn-hosts exited with status $st"
elif ! cmp -s "$work/reference-short/model.safetensors" "$work/peers/model.safetensors"; then
    problem "gradients among the workers: the model differs from syncbn train's"
else
    say "gradients among the workers (--gradient-exchange peers, h1:2 + h2:2, no keys): model identical ($(elapsed "$t0" "$(now)") s)"
fi

# --- 5: one-line errors --------------------------------------------------------------------------------
# An address of the test subnet that no namespace holds.
in_h0 timeout -k 5 60 "$launcher" -H "h1:1,$SUBNET.200:1" "${hosts_opts[@]}" --check-timeout 2 --keys "$work/keys" \
    -- "${train_opts[@]}" --out "$work/x" >"$work/unreachable.log" 2>&1
st=$?
{ (( st != 0 )) && grep -q "^syncbn-hosts: cannot reach host $SUBNET.200: " "$work/unreachable.log"; } ||
    { show_log "$work/unreachable.log"; problem "unreachable host: status $st, no 'cannot reach host' line"; }

in_h0 timeout -k 5 60 "$launcher" -H h1:1,h2:1 "${hosts_opts[@]}" --syncbn /nonexistent/syncbn --keys "$work/keys" \
    -- "${train_opts[@]}" --out "$work/x" >"$work/nobinary.log" 2>&1
st=$?
{ (( st != 0 )) && grep -q "^syncbn-hosts: h2: /nonexistent/syncbn is not there or not executable" "$work/nobinary.log"; } ||
    { show_log "$work/nobinary.log"; problem "missing binary: status $st, no 'not there' line"; }

ip netns exec "${ns[0]}" timeout -k 5 60 "$syncbn" coordinator --bind "tcp://${addr[0]}:5556" --workers 1 --join-timeout 60 \
    --secret-key "$work/keys/coordinator.key" --authorized-keys "$work/keys/authorized_keys" \
    --out "$work/squatter" >"$work/squatter.log" 2>&1 &
squatter=$!
bg_pids+=("$squatter")
wait_for_line "$work/squatter.log" 30 'listening' "$squatter" || { show_log "$work/squatter.log"; fail "the squatter did not start"; }
in_h0 timeout -k 5 60 "$launcher" -H h1:1 "${hosts_opts[@]}" --keys "$work/keys" --port 5556 \
    -- "${train_opts[@]}" --out "$work/x" >"$work/portinuse.log" 2>&1
st=$?
kill -TERM "$squatter" 2>/dev/null; wait "$squatter" 2>/dev/null
{ (( st != 0 )) && grep -q '^\[coordinator\] .*cannot bind' "$work/portinuse.log"; } ||
    { show_log "$work/portinuse.log" 12
  problem "port in use: status $st, no 'cannot bind' line; the coordinator said: $(grep -m 1 '^\[coordinator\]' "$work/portinuse.log" | cut -c15-)"; }
grep -q '^\[h1 ' "$work/portinuse.log" && problem "port in use: workers were started although the coordinator had failed"
say "errors: $(grep -h '^syncbn-hosts: cannot reach' "$work/unreachable.log" | head -n 1 | cut -c15-) |" \
    "$(grep -h '^syncbn-hosts: h2:' "$work/nobinary.log" | head -n 1 | cut -c15-) |" \
    "$(grep -h 'cannot bind' "$work/portinuse.log" | head -n 1 | sed 's/^.*ERROR [^:]*: //')"

# --- 6: stopping --------------------------------------------------------------------------------------
# A long job (no time to finish), started with job control so that it has a process group of its own
# that does not ignore SIGINT, as from a terminal.
long_job() { # PORT LOG [LAUNCHER OPTION...]
    set -m
    ip netns exec "${ns[0]}" "$launcher" -H h1:2,h2:2 "${hosts_opts[@]}" "${@:3}" --keys "$work/keys" --port "$1" \
        -- --steps 1000000 --no-shuffle --log-every 100000 --out "$work/long" >"$2" 2>&1 &
    job=$!
    set +m
    bg_pids+=("$job")
    wait_for_line "$2" 120 '^\[coordinator\] .*training .* on 4 worker' "$job" ||
        { show_log "$2"; fail "the long job did not start"; }
    sleep 0.3
    local n
    n=$(syncbn_pids | wc -l)
    (( n == 5 )) || { show_syncbn; fail "expected 5 syncbn processes in the namespaces, found $n"; }
}
# A worker fails, with --on-worker-failure stop: syncbn-hosts stops everything and exits non-zero.
long_job 5557 "$work/workerfails.log" --on-worker-failure stop
victim=$(for p in $(ip netns pids "${ns[2]}"); do [[ $(cat "/proc/$p/comm" 2>/dev/null) == syncbn ]] && echo "$p"; done | head -n 1)
[[ -n $victim ]] || fail "no worker process found in ${ns[2]}"
t0=$(now)
kill -TERM "$victim"
wait_exit "$job" 20 || fail "syncbn-hosts did not stop within 20 s after a worker failed"
(( status != 0 )) || problem "syncbn-hosts exited 0 after a worker failed"
wait_no_syncbn 10 || { show_syncbn; fail "syncbn processes left after a worker failed"; }
stop_worker=$(elapsed "$t0" "$(now)")
grep -q '^syncbn-hosts: \[h2 [23]\] exited with status' "$work/workerfails.log" ||
    { show_log "$work/workerfails.log"; problem "no line saying which worker failed"; }

# Ctrl-C.
long_job 5558 "$work/ctrlc.log"
t0=$(now)
kill -INT -- "-$job"
wait_exit "$job" 20 || fail "syncbn-hosts did not stop within 20 s after Ctrl-C"
(( status == 130 )) || { show_log "$work/ctrlc.log"; problem "syncbn-hosts exited with status $status after Ctrl-C, not 130"; }
wait_no_syncbn 10 || { show_syncbn; fail "syncbn processes left after Ctrl-C"; }
stop_int=$(elapsed "$t0" "$(now)")

# SIGKILL: no chance to clean up; the processes notice their stdin closing.
long_job 5559 "$work/sigkill.log"
t0=$(now)
kill -KILL "$job"
{ wait_exit "$job" 10; } 2>/dev/null || fail "syncbn-hosts survived SIGKILL"   # (no "Killed" notice)
wait_no_syncbn 15 || { show_syncbn; fail "syncbn processes left 15 s after syncbn-hosts was killed"; }
stop_kill=$(elapsed "$t0" "$(now)")
say "stopping: no syncbn left on any host ${stop_worker} s after a worker failed, ${stop_int} s after Ctrl-C, ${stop_kill} s after SIGKILL"

# --- Teardown, checked ---------------------------------------------------------------------------------
our_sshds=$SSHD_PIDS
cluster_down "$cluster"
for pid in $our_sshds; do wait "$pid" 2>/dev/null; done
for pid in $our_sshds; do kill -0 "$pid" 2>/dev/null && fail "sshd $pid still runs after teardown"; done
ip netns list | grep -q "^$NAME-" && fail "namespaces left after teardown: $(ip netns list | grep "^$NAME-" | tr '\n' ' ')"
say "teardown: namespaces, veths, bridge and sshds removed; total $(elapsed "$started" "$(now)") s"
if [[ ${#problems[@]} -gt 0 ]]; then
    say "FAILED ${#problems[@]} check(s): $(printf '%s; ' "${problems[@]}")"
    exit 1
fi
say "OK model identical, unauthorized worker refused in $refused_in s"
