#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Verifies the generated systemd units with `systemd-analyze verify`: the
# syntax, the dependencies between uzswapd.service and its two sockets
# (uzswapd.socket, uzswapd-control.socket), and
# every hardening option being known to this systemd.  ExecStart is pointed
# at the freshly built daemon so the executable check means something.
# Skips (77) only when systemd-analyze is not installed.
set -euo pipefail
build=$1
uzswapd=$2
command -v systemd-analyze >/dev/null || { echo "SKIP: systemd-analyze not installed"; exit 77; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for unit in uzswapd.service uzswapd.socket uzswapd-control.socket; do
    sed "s|^ExecStart=[^ ]*|ExecStart=$uzswapd|" "$build/systemd/$unit" > "$tmp/$unit"
done
grep -q "^ExecStart=$uzswapd" "$tmp/uzswapd.service"
out=$(cd "$tmp" && systemd-analyze verify --man=no ./uzswapd.service ./uzswapd.socket ./uzswapd-control.socket 2>&1) || {
    echo "$out"
    echo "FAIL: systemd-analyze verify"
    exit 1
}
if [ -n "$out" ]; then
    echo "$out"
    echo "FAIL: systemd-analyze verify printed warnings"
    exit 1
fi
# The properties issue 6 asks for are really there.
for want in '^Type=notify' '^WatchdogSec=' '^Restart=on-failure' '^OOMScoreAdjust=-' '^NotifyAccess=main'; do
    grep -q "$want" "$tmp/uzswapd.service" || { echo "FAIL: uzswapd.service lacks $want"; exit 1; }
done
grep -q '^ListenSequentialPacket=' "$tmp/uzswapd.socket" || { echo "FAIL: socket unit lacks ListenSequentialPacket"; exit 1; }
# The control socket is named so the daemon tells it from the client socket.
grep -q '^ListenStream=.*/control.sock' "$tmp/uzswapd-control.socket" &&
    grep -q '^FileDescriptorName=control$' "$tmp/uzswapd-control.socket" &&
    grep -q '^Service=uzswapd.service' "$tmp/uzswapd-control.socket" ||
    { echo "FAIL: uzswapd-control.socket lacks ListenStream/FileDescriptorName=control/Service"; exit 1; }
echo "PASS: units verify cleanly"
