#!/usr/bin/env bash
# Installs the system packages the native stack needs, when they are missing:
# Debian's prometheus (Prometheus and promtool) and prometheus-alertmanager
# (Alertmanager and amtool), chromium and an emoji font for the status page's
# browser test, and Debian's redis-server (the gateway's shared state in tests).
# Go must already be installed
# (it builds the Collector).
set -euo pipefail

say() { printf '[system-deps] %s\n' "$*" >&2; }

missing=()
command -v prometheus >/dev/null || missing+=(prometheus)
command -v promtool >/dev/null || missing+=(prometheus)
command -v prometheus-alertmanager >/dev/null || missing+=(prometheus-alertmanager)
command -v amtool >/dev/null || missing+=(prometheus-alertmanager)
# The status page's browser test: headless Chromium, and a font for its 🟢/🔴.
command -v chromium >/dev/null || missing+=(chromium)
[[ -e /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ]] || missing+=(fonts-noto-color-emoji)
# The gateway's shared state store (GATEWAY_STATE_URL) in the tests.
command -v redis-server >/dev/null || missing+=(redis-server)

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
# Debian's packages start system services where systemd runs; the stack
# starts its own Prometheus and Alertmanager on its own ports and data directories.
say "installed: $(prometheus --version 2>&1 | head -1)"
