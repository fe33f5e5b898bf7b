#!/usr/bin/env bash
# Installs the system packages the native stack needs, when they are missing:
# Debian's prometheus (Prometheus and promtool). Go must already be installed
# (it builds the Collector).
set -euo pipefail

say() { printf '[system-deps] %s\n' "$*" >&2; }

missing=()
command -v prometheus >/dev/null || missing+=(prometheus)
command -v promtool >/dev/null || missing+=(prometheus)

if ((${#missing[@]} == 0)); then
    exit 0
fi

if ! command -v apt-get >/dev/null; then
    say "error: missing ${missing[*]} and apt-get is not available; install Prometheus 2.x yourself"
    exit 1
fi
sudo=""
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { say "error: run as root or install sudo to install: ${missing[*]}"; exit 1; }
    sudo="sudo"
fi
say "installing Debian packages: ${missing[*]} (apt-get update first)"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    $(printf '%s\n' "${missing[@]}" | sort -u) >&2
# Debian's package starts a system service where systemd runs; the stack
# starts its own Prometheus on its own ports and data directory.
say "installed: $(prometheus --version 2>&1 | head -1)"
