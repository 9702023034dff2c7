#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Verifies the generated systemd units with `systemd-analyze verify`: the
# syntax, the dependencies between uzswapd.service and its two sockets
# (uzswapd.socket, uzswapd-control.socket), and
# every hardening option being known to this systemd.  ExecStart and
# ExecReload are pointed at the freshly built daemon and CLI so the
# executable check means something.
# Skips (77) only when systemd-analyze is not installed.
set -euo pipefail
build=$1
uzswapd=$2
uzswapctl=$3
command -v systemd-analyze >/dev/null || { echo "SKIP: systemd-analyze not installed"; exit 77; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for unit in uzswapd.service uzswapd.socket uzswapd-control.socket; do
    sed -e "s|^ExecStart=[^ ]*|ExecStart=$uzswapd|" \
        -e "s|^ExecReload=[^ ]*/uzswapctl |ExecReload=$uzswapctl |" "$build/systemd/$unit" > "$tmp/$unit"
done
grep -q "^ExecStart=$uzswapd" "$tmp/uzswapd.service"
# Reload goes through uzswapctl (synchronous, fails on a bad config), not kill.
grep -q "^ExecReload=$uzswapctl --socket /.*/control.sock reload$" "$tmp/uzswapd.service" ||
    { grep ExecReload "$tmp/uzswapd.service"; echo "FAIL: ExecReload is not uzswapctl reload"; exit 1; }
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
# The journal catalog explains exactly the MESSAGE_IDs the daemon sends.
src=$(dirname "$0")/../..
ids_code=$(grep -o '^#define UZ_MESSAGE_[A-Z_]* "[0-9a-f]\{32\}"' "$src/daemon/log.h" | grep -o '[0-9a-f]\{32\}' | sort)
ids_catalog=$(grep -o '^-- [0-9a-f]\{32\}$' "$src/systemd/uzswap.catalog" | cut -c4- | sort)
[ -n "$ids_code" ] || { echo "FAIL: no MESSAGE_ID in daemon/log.h"; exit 1; }
[ "$(echo "$ids_code" | uniq -d)" = "" ] || { echo "FAIL: a MESSAGE_ID is used twice in daemon/log.h"; exit 1; }
if [ "$ids_code" != "$ids_catalog" ]; then
    diff <(echo "$ids_code") <(echo "$ids_catalog") || true
    echo "FAIL: daemon/log.h and systemd/uzswap.catalog list different MESSAGE_IDs (<: code, >: catalog)"
    exit 1
fi
for id in $ids_code; do
    grep -q "^\.B $id\$" "$src/man/uzswapd.8" || { echo "FAIL: MESSAGE_ID $id is not in uzswapd(8), JOURNAL"; exit 1; }
done
echo "ok: the catalog and uzswapd(8) explain the $(echo "$ids_code" | wc -l) MESSAGE_IDs of daemon/log.h"
echo "PASS: units verify cleanly"
