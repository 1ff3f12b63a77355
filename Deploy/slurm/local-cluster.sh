#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for trying Deploy/slurm/syncbn.sbatch without a real cluster.
#
#   Deploy/slurm/local-cluster.sh up       install slurm-wlm + munge if missing, write the config,
#                                          start munged, slurmctld and slurmd; wait for the node to be idle
#   Deploy/slurm/local-cluster.sh status   which of the daemons it started are running; sinfo
#   Deploy/slurm/local-cluster.sh down     stop the daemons it started (by their pids), nothing else
#
# Both `up` and `down` can be run again safely. It needs root and works without systemd: the daemons
# are started directly, their pids are kept in $STATE_DIR, and `down` signals those pids only.
# The node is this host (`hostname -s`), addressed as 127.0.0.1, with all its CPUs, in partition
# "debug"; daemons talk over loopback only. Logs: $STATE_DIR/*.log.
#
# /etc/slurm/slurm.conf is written only if it is absent or was written by this script (marker line);
# set LOCAL_CLUSTER_FORCE=1 to replace another one (it is kept as slurm.conf.before-local-cluster).
set -euo pipefail

STATE_DIR=${LOCAL_CLUSTER_STATE_DIR:-/run/syncbn-local-cluster}
CONF=/etc/slurm/slurm.conf
MARKER="# Written by SyncBN Deploy/slurm/local-cluster.sh"

log() { echo "local-cluster: $*" >&2; }
die() { log "$*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root"

node=$(hostname -s)
cpus=$(nproc)
mem_mb=$(awk '/MemTotal/ { printf "%d", $2 / 1024 * 0.9 }' /proc/meminfo)

# Is the pid recorded in $STATE_DIR/NAME.pid alive and still running program NAME?
running() {
    local name=$1 pid
    [ -s "$STATE_DIR/$name.pid" ] || return 1
    pid=$(<"$STATE_DIR/$name.pid")
    [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "$name"
}

install_packages() {
    local missing=() p
    for p in slurm-wlm munge; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

write_config() {
    if [ -e "$CONF" ] && ! grep -qxF "$MARKER" "$CONF"; then
        [ "${LOCAL_CLUSTER_FORCE:-0}" = 1 ] || die "$CONF exists and was not written by this script (LOCAL_CLUSTER_FORCE=1 replaces it)"
        cp -p "$CONF" "$CONF.before-local-cluster"
    fi
    mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
    cat >"$CONF.tmp" <<EOF
$MARKER
# A one-node test cluster; see that script. Daemons run as root and talk over 127.0.0.1.
ClusterName=syncbn-local
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
# No cgroup plugins: they need a delegated cgroup tree, which a machine without systemd lacks.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
SlurmctldPidFile=$STATE_DIR/slurmctld.slurm-pid
SlurmdPidFile=$STATE_DIR/slurmd.slurm-pid
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=$STATE_DIR/slurmctld.log
SlurmdLogFile=$STATE_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$CONF.tmp" "$CONF"
}

start_munged() {
    if running munged; then return 0; fi
    if [ ! -s /etc/munge/munge.key ]; then
        log "creating /etc/munge/munge.key"
        if command -v mungekey >/dev/null; then mungekey --create --force; else
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
        fi
        chown munge:munge /etc/munge/munge.key
        chmod 0400 /etc/munge/munge.key
    fi
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
    # munged forks into the background and writes its own pid file; copy it to ours.
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
    for _ in $(seq 50); do [ -s /run/munge/munged.pid ] && break; sleep 0.1; done
    cp /run/munge/munged.pid "$STATE_DIR/munged.pid"
    running munged || die "munged did not start (see /var/log/munge/munged.log)"
    munge -n | unmunge >/dev/null || die "munge round trip failed"
}

# start_daemon NAME: run NAME -D in the background, record its pid.
start_daemon() {
    local name=$1 pid
    if running "$name"; then return 0; fi
    "/usr/sbin/$name" -D >"$STATE_DIR/$name.out" 2>&1 &
    pid=$!
    echo "$pid" >"$STATE_DIR/$name.pid"
    sleep 1
    running "$name" || { cat "$STATE_DIR/$name.out" >&2; die "$name exited at once (above; log $STATE_DIR/$name.log)"; }
}

up() {
    install_packages
    mkdir -p "$STATE_DIR"
    write_config
    start_munged
    start_daemon slurmctld
    start_daemon slurmd
    local state=""
    for _ in $(seq 60); do
        state=$(sinfo -h -n "$node" -o %T 2>/dev/null || true)
        case $state in
            idle*|mixed*|allocated*) log "node $node is $state"; sinfo; return 0 ;;
            down*|drain*) scontrol update nodename="$node" state=resume 2>/dev/null || true ;;
        esac
        sleep 1
    done
    die "node $node did not become idle (state '$state'); see $STATE_DIR/*.log"
}

# stop NAME: SIGTERM the recorded pid, wait, SIGKILL if needed; forget the pid.
stop() {
    local name=$1 pid
    if running "$name"; then
        pid=$(<"$STATE_DIR/$name.pid")
        log "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 100); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
        if [ -d "/proc/$pid" ]; then log "$name did not stop; SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; fi
    fi
    rm -f "$STATE_DIR/$name.pid"
}

down() {
    stop slurmd
    stop slurmctld
    stop munged
}

status() {
    local name rc=0
    for name in munged slurmctld slurmd; do
        if running "$name"; then echo "$name: running (pid $(<"$STATE_DIR/$name.pid"))"
        else echo "$name: not running"; rc=1; fi
    done
    [ $rc -eq 0 ] && sinfo
    return $rc
}

case ${1:-} in
    up) up ;;
    down) down ;;
    status) status ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
