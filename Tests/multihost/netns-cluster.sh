#!/usr/bin/env bash
# A throw-away cluster of "hosts" on this machine: N network namespaces, each with a veth pair to a bridge
# in a namespace of its own, an address in a private test range, and an sshd listening on that address
# that admits root with one client key. Nothing in the root namespace changes (no interface, no route,
# no address); root's ssh files are not touched: everything lives in DIR.
#
#   netns-cluster.sh up DIR N [NAME]   create NAME-h0..NAME-h(N-1) and NAME-br (NAME: syncbn-mh<pid>)
#   netns-cluster.sh down DIR          stop every process in those namespaces, delete them, remove DIR
#   netns-cluster.sh sweep             remove clusters left by test runs whose process is gone
#
# Or source it and call cluster_up / cluster_down / cluster_sweep: the sshds are then children of the
# caller, which can reap them (`wait`).
#
# `up` writes DIR/cluster.env (NAME, SUBNET, HOSTS, ADDRS, SSHD_PIDS: sourceable), DIR/ssh_config (host
# aliases h0..h(N-1) with their addresses, the client key, DIR/known_hosts; use `ssh -F DIR/ssh_config h1`),
# and the keys. Run clients inside a namespace (`ip netns exec NAME-h0 ...`): only there are the hosts
# reachable. Needs root, iproute2, openssh-server and openssh-client.

cluster_die() { printf 'netns-cluster.sh: %s\n' "$*" >&2; exit 1; }
cluster_run() { "$@" || cluster_die "failed: $*"; }

cluster_find_sshd() {
    local s
    s=$(command -v sshd 2>/dev/null || true)
    [[ -n $s ]] || { [[ -x /usr/sbin/sshd ]] && s=/usr/sbin/sshd; }
    [[ -n $s ]] || cluster_die "sshd not found (apt-get install openssh-server)"
    printf '%s' "$s"
}

# Every process in namespace NS, then the namespace itself.
cluster_remove_namespace() {
    local ns=$1 pids n
    ip netns list 2>/dev/null | awk '{print $1}' | grep -qxF "$ns" || return 0
    for sig in TERM KILL; do
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        [[ -n $pids ]] || break
        # shellcheck disable=SC2086 # one pid per word
        kill -s "$sig" $pids 2>/dev/null || true
        n=0
        while [[ -n $(ip netns pids "$ns" 2>/dev/null || true) ]] && (( ++n <= 30 )); do sleep 0.1; done
    done
    ip netns del "$ns" 2>/dev/null || true
}

cluster_down() {
    local dir=$1 pid ns
    [[ -f $dir/cluster.env ]] || { rm -rf "$dir"; return 0; }
    # shellcheck disable=SC1091
    source "$dir/cluster.env"
    local NAME=$NAME HOSTS=$HOSTS SSHD_PIDS=$SSHD_PIDS
    for pid in ${SSHD_PIDS:-}; do   # our sshds, by pid (checked to be the sshd with our config)
        if grep -qF "$dir/sshd_config" "/proc/$pid/cmdline" 2>/dev/null; then kill "$pid" 2>/dev/null || true; fi
    done
    for ns in ${HOSTS:-} "$NAME-br"; do cluster_remove_namespace "$ns"; done
    rm -rf "$dir"
}

cluster_sweep() { # namespaces named syncbn-mh<pid>-* whose <pid> is no longer running
    local ns pid
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^syncbn-mh[0-9]+-' || true); do
        pid=${ns#syncbn-mh}; pid=${pid%%-*}
        if ! kill -0 "$pid" 2>/dev/null; then
            printf 'netns-cluster.sh: removing %s, left by a run (pid %s) that is gone\n' "$ns" "$pid" >&2
            cluster_remove_namespace "$ns"
        fi
    done
}

cluster_up() {
    local dir=$1 count=$2 name=${3:-syncbn-mh$PPID}
    [[ $count =~ ^[1-9][0-9]?$ ]] || cluster_die "N must be 1..99"
    (( ${#name} <= 40 )) || cluster_die "NAME too long"
    local sshd
    sshd=$(cluster_find_sshd) || exit 1
    command -v ssh-keygen >/dev/null || cluster_die "ssh-keygen not found (apt-get install openssh-client)"
    cluster_run mkdir -p "$dir"
    cluster_run chmod 700 "$dir"
    # A /24 in 10.77.0.0/16 picked from the pid; only these namespaces ever hold these addresses.
    local subnet="10.77.$(( $$ % 250 + 1 ))"
    local br="$name-br" i ns
    local -a hosts=() addrs=() sshd_pids=()
    for ((i = 0; i < count; i++)); do hosts+=("$name-h$i"); addrs+=("$subnet.$((i + 1))"); done
    # Written first, so that `down` can undo a half-made cluster.
    write_env() {
        {
            printf 'NAME=%q\nSUBNET=%q\nBRIDGE_NS=%q\n' "$name" "$subnet" "$br"
            printf 'HOSTS=%q\nADDRS=%q\nSSHD_PIDS=%q\n' "${hosts[*]}" "${addrs[*]}" "${sshd_pids[*]:-}"
        } >"$dir/cluster.env"
    }
    write_env

    cluster_run ip netns add "$br"
    cluster_run ip -n "$br" link set lo up
    cluster_run ip -n "$br" link add br0 type bridge
    cluster_run ip -n "$br" link set br0 up
    for ((i = 0; i < count; i++)); do
        ns=${hosts[i]}
        cluster_run ip netns add "$ns"
        cluster_run ip -n "$ns" link set lo up
        cluster_run ip link add eth0 netns "$ns" type veth peer name "p$i" netns "$br"
        cluster_run ip -n "$br" link set "p$i" master br0
        cluster_run ip -n "$br" link set "p$i" up
        cluster_run ip -n "$ns" addr add "${addrs[i]}/24" dev eth0
        cluster_run ip -n "$ns" link set eth0 up
    done

    # Keys: one host key per sshd, one client key; known_hosts pins every host key.
    cluster_run ssh-keygen -q -t ed25519 -N '' -C syncbn-multihost-client -f "$dir/id_ed25519"
    cluster_run cp "$dir/id_ed25519.pub" "$dir/authorized_keys"
    : >"$dir/known_hosts"
    for ((i = 0; i < count; i++)); do
        cluster_run ssh-keygen -q -t ed25519 -N '' -C "h$i" -f "$dir/host_h${i}_ed25519"
        printf '%s %s\n' "${addrs[i]}" "$(cut -d' ' -f1,2 "$dir/host_h${i}_ed25519.pub")" >>"$dir/known_hosts"
    done
    cat >"$dir/sshd_config" <<EOF
# sshd for the SyncBN multi-host test: root by key only, no forwarding; ListenAddress, HostKey and PidFile
# are given on the command line per namespace.
Port 22
AuthorizedKeysFile $dir/authorized_keys
PermitRootLogin prohibit-password
AllowUsers root
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowTcpForwarding no
AllowAgentForwarding no
X11Forwarding no
PermitTunnel no
PermitUserEnvironment no
PrintMotd no
PrintLastLog no
UseDNS no
ClientAliveInterval 5
ClientAliveCountMax 3
MaxStartups 100
MaxSessions 50
LogLevel ERROR
EOF
    {
        for ((i = 0; i < count; i++)); do printf 'Host h%d\n    HostName %s\n' "$i" "${addrs[i]}"; done
        cat <<EOF
Host *
    User root
    IdentityFile $dir/id_ed25519
    IdentitiesOnly yes
    IdentityAgent none
    UserKnownHostsFile $dir/known_hosts
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    UpdateHostKeys no
    BatchMode yes
    ConnectTimeout 5
    ControlMaster no
    ControlPath none
    LogLevel ERROR
EOF
    } >"$dir/ssh_config"

    # sshd's privilege-separation directory (the package makes it at boot, which a container skips).
    [[ -d /run/sshd ]] || install -d -m 0755 /run/sshd
    for ((i = 0; i < count; i++)); do
        ip netns exec "${hosts[i]}" "$sshd" -D -e -f "$dir/sshd_config" \
            -h "$dir/host_h${i}_ed25519" -o ListenAddress="${addrs[i]}" -o PidFile="$dir/sshd-h$i.pid" \
            </dev/null >>"$dir/sshd-h$i.log" 2>&1 &
        sshd_pids+=($!)
    done
    write_env

    # Ready when every sshd answers, from h0.
    local ok deadline
    for ((i = 0; i < count; i++)); do
        ok=0
        deadline=$((SECONDS + 15))
        while (( SECONDS < deadline )); do
            if ! kill -0 "${sshd_pids[i]}" 2>/dev/null; then
                cluster_die "sshd in ${hosts[i]} exited: $(tail -n 3 "$dir/sshd-h$i.log" | tr '\n' ' ')"
            fi
            if ip netns exec "${hosts[0]}" timeout 3 ssh -F "$dir/ssh_config" "h$i" true </dev/null 2>"$dir/probe.err"; then
                ok=1; break
            fi
            sleep 0.1
        done
        (( ok )) || cluster_die "sshd in ${hosts[i]} does not answer within 15 s: $(tail -n 1 "$dir/probe.err")"
    done
    rm -f "$dir/probe.err"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    set -euo pipefail
    [[ $(id -u) -eq 0 ]] || cluster_die "needs root (network namespaces)"
    case ${1:-} in
        up) [[ $# -ge 3 ]] || cluster_die "usage: $0 up DIR N [NAME]"; cluster_up "$2" "$3" "${4:-}" ;;
        down) [[ $# -eq 2 ]] || cluster_die "usage: $0 down DIR"; cluster_down "$2" ;;
        sweep) cluster_sweep ;;
        *) cluster_die "usage: $0 up DIR N [NAME] | down DIR | sweep" ;;
    esac
fi
