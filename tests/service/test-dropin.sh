#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Verifies the "enrol a service without editing it" example
# (examples/systemd/redis-server.service.d/uzswap.conf):
#  1. systemd accepts it: a stand-in service plus the drop-in, loaded from
#     a private unit path, passes `systemd-analyze verify`;
#  2. it does what it says: a program started with exactly the drop-in's
#     Environment= lines (the library found by its soname, as an installed
#     one would be) joins a running uzswapd, is paged (pages stored) and
#     verifies all its data.  It is sized well above UZSWAP_JOIN_MIN's
#     default (32M): the library joins once the process is that large.
set -euo pipefail
src=$1 uzswapd=$2 workload=$3 libdir=$4
dropin=$src/examples/systemd/redis-server.service.d/uzswap.conf
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

if command -v systemd-analyze >/dev/null; then
    mkdir -p "$tmp/units/uzdemo.service.d"
    cat > "$tmp/units/uzdemo.service" <<UNIT
[Unit]
Description=stand-in for a service enrolled through a drop-in
[Service]
ExecStart=$workload --size 8M
UNIT
    cp "$dropin" "$tmp/units/uzdemo.service.d/uzswap.conf"
    out=$(SYSTEMD_UNIT_PATH="$tmp/units:" systemd-analyze verify --man=no uzdemo.service 2>&1 | grep -v 'uzswapd.socket' || true)
    if [ -n "$out" ]; then
        echo "$out"
        echo "FAIL: the drop-in does not verify"
        exit 1
    fi
    echo "ok: stand-in service with the drop-in verifies"
else
    echo "note: systemd-analyze absent, unit syntax not checked"
fi

envs=()
while IFS= read -r line; do
    envs+=("${line#Environment=}")
done < <(grep '^Environment=' "$dropin")
[ "${#envs[@]}" -gt 0 ] || { echo "FAIL: no Environment= in the drop-in"; exit 1; }
printf 'drop-in environment: %s\n' "${envs[*]}"

"$uzswapd" --socket "$tmp/d.sock" --control-socket "$tmp/c.sock" --resident-max 4M \
    --swap-file "$tmp/swapfile" --swap-size 16M \
    --foreground 2>"$tmp/daemon.log" &
daemon_pid=$!
for _ in $(seq 100); do [ -S "$tmp/d.sock" ] && break; sleep 0.1; done
[ -S "$tmp/d.sock" ] || { cat "$tmp/daemon.log"; echo "FAIL: uzswapd did not start"; exit 1; }

out=$(env "${envs[@]}" LD_LIBRARY_PATH="$libdir" UZSWAP_SOCKET="$tmp/d.sock" \
    timeout 60 "$workload" --size 96M --passes 1 --hold 2 2>&1) || {
    echo "$out"
    echo "FAIL: the program under the drop-in's environment failed"
    exit 1
}
echo "$out"
echo "$out" | grep -q '^verified' || { echo "FAIL: no verification line"; exit 1; }
grep -q 'client 1 joined' "$tmp/daemon.log" || {
    cat "$tmp/daemon.log"
    echo "FAIL: the program did not join uzswapd"
    exit 1
}
echo "$out" | grep -Eq 'pass 1: [1-9][0-9]* pages were not resident' || {
    echo "FAIL: nothing was evicted: the program was not paged"
    exit 1
}
echo "PASS: the drop-in's environment enrols a program, which is paged and verifies its data"
