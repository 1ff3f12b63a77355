#!/usr/bin/env bash
# Installs the Debian packages SyncBN builds against and trains on; with --tests, also what the test suite
# needs (sshd and iproute2 for the multi-host test in network namespaces, python3-venv for TensorBoard's
# reader); with --figures, what the figure scripts draw with (gnuplot-nox, jq). Safe to run again: it does
# nothing when everything is already there.
set -euo pipefail
packages=(libzmq3-dev libopenblas-dev zlib1g-dev pkg-config dataset-fashion-mnist)
for option in "$@"; do
    case $option in
        --tests) packages+=(openssh-server openssh-client iproute2 python3-venv) ;;
        --figures) packages+=(gnuplot-nox jq) ;;
        *) echo "install-deps.sh: unknown option $option (use --tests and/or --figures)" >&2; exit 2 ;;
    esac
done
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
