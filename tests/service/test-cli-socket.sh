#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# uzswapctl finds the control socket the way uzswapctl(8) says, without
# --socket: $UZSWAP_CONTROL_SOCKET first, else control.sock next to
# $UZSWAP_SOCKET (where a daemon started with that variable puts it).  A
# wrong place is reported by path with exit status 3.  (ControlSocket= and
# Socket= of /etc/uzswap/uzswapd.conf are checked by the systemd suite,
# inside its container, where that file may be changed.)
set -euo pipefail
uzswapd=$1 uzswapctl=$2
tmp=$(mktemp -d)
daemon_pid=
cleanup() {
    if [ -n "$daemon_pid" ]; then
        kill -TERM "$daemon_pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$daemon_pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; exit 1; }

# The daemon finds its client socket through UZSWAP_SOCKET and puts the
# control socket beside it.
UZSWAP_SOCKET="$tmp/run/d.sock" "$uzswapd" --config /dev/null --swap-size 0 \
    --foreground 2>"$tmp/daemon.log" &
daemon_pid=$!
for _ in $(seq 100); do [ -S "$tmp/run/control.sock" ] && break; sleep 0.1; done
[ -S "$tmp/run/control.sock" ] || { cat "$tmp/daemon.log"; fail "uzswapd did not create $tmp/run/control.sock"; }

check() { # description, expected exit status, expected text, [VAR=value...] [-- uzswapctl options]
    local what=$1 want=$2 text=$3 out rc=0 envs=()
    shift 3
    while [ $# -gt 0 ] && [ "$1" != -- ]; do envs+=("$1"); shift; done
    [ $# -gt 0 ] && shift
    out=$(env -u UZSWAP_SOCKET -u UZSWAP_CONTROL_SOCKET "${envs[@]}" \
        timeout 20 "$uzswapctl" "$@" status 2>&1) || rc=$?
    [ "$rc" = "$want" ] || { echo "$out"; fail "$what: exit status $rc, expected $want"; }
    grep -qF -- "$text" <<<"$out" || { echo "$out"; fail "$what: no \"$text\" in the output"; }
    echo "ok: $what"
}
check "UZSWAP_SOCKET: control.sock next to it" 0 "pid " UZSWAP_SOCKET="$tmp/run/d.sock"
check "UZSWAP_CONTROL_SOCKET" 0 "pid " UZSWAP_CONTROL_SOCKET="$tmp/run/control.sock"
check "UZSWAP_CONTROL_SOCKET wins over UZSWAP_SOCKET" 3 "$tmp/nowhere/control.sock" \
    UZSWAP_SOCKET="$tmp/run/d.sock" UZSWAP_CONTROL_SOCKET="$tmp/nowhere/control.sock"
check "--socket wins over both" 0 "pid " UZSWAP_SOCKET="$tmp/nowhere/d.sock" \
    UZSWAP_CONTROL_SOCKET="$tmp/nowhere/control.sock" -- --socket "$tmp/run/control.sock"
check "a missing socket is named" 3 "$tmp/gone/control.sock" UZSWAP_SOCKET="$tmp/gone/d.sock"
# uzswapctl --help says the same as this test.
"$uzswapctl" --help | grep -q 'UZSWAP_CONTROL_SOCKET' || fail "uzswapctl --help does not mention UZSWAP_CONTROL_SOCKET"
"$uzswapctl" --help | grep -q 'UZSWAP_SOCKET' || fail "uzswapctl --help does not mention UZSWAP_SOCKET"
echo "PASS: uzswapctl finds the control socket from UZSWAP_CONTROL_SOCKET and UZSWAP_SOCKET"
