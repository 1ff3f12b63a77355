#!/usr/bin/env bash
# Installs the Debian packages SyncBN builds against and trains on (with --tests, also what the test suite
# needs: sshd and iproute2 for the multi-host test in network namespaces). Safe to run again: it does
# nothing when everything is already there.
set -euo pipefail
packages=(libzmq3-dev libopenblas-dev zlib1g-dev pkg-config dataset-fashion-mnist)
[ "${1:-}" = "--tests" ] && packages+=(openssh-server openssh-client iproute2)
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing ${missing[*]}" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
