#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Verifies `meson install` into a DESTDIR: the daemon, the CLI, the client
# library (with its soname link), the public header, uzswap.pc, the units,
# sysusers/tmpfiles/udev entries, the default config, an empty cgroup.d and
# the four man pages all land where a distribution expects them, and
# nothing escapes the DESTDIR.
set -euo pipefail
build=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
meson install -C "$build" --destdir "$tmp/root" --no-rebuild --quiet >"$tmp/log" 2>&1 || {
    cat "$tmp/log"
    echo "FAIL: meson install"
    exit 1
}
cd "$tmp/root"
missing=0
expect() { # glob description
    local hits
    hits=$(find . -path "$1" | head -1)
    if [ -z "$hits" ]; then
        echo "missing: $2 ($1)"
        missing=1
    else
        echo "ok: $2 -> ${hits#.}"
    fi
}
expect './*/sbin/uzswapd' 'daemon'
expect './*/bin/uzswapctl' 'CLI'
expect './*/lib*/libuzswap.so.0*' 'client library'
expect './*/lib*/libuzswap.so' 'client library development link'
expect './*/include/uzswap.h' 'public header'
expect './*/pkgconfig/uzswap.pc' 'pkg-config file'
expect './*systemd/system/uzswapd.service' 'service unit'
expect './*systemd/system/uzswapd.socket' 'socket unit'
expect './*systemd/system/uzswapd-control.socket' 'control socket unit'
expect './*/sysusers.d/uzswap.conf' 'sysusers entry'
expect './*/tmpfiles.d/uzswap.conf' 'tmpfiles entry'
expect './*/udev/rules.d/60-uzswap.rules' 'udev rule for /dev/userfaultfd'
expect './*/systemd/catalog/uzswap.catalog' 'journal message catalog'
expect './*etc/uzswap/uzswapd.conf' 'default config'
expect './*etc/uzswap/cgroup.d' 'cgroup.d directory'
for page in man8/uzswapd.8 man8/uzswapctl.8 man5/uzswapd.conf.5 man3/libuzswap.3; do
    expect "./*/man/$page" "man page $page"
done
# Installed man pages are finished pages: no @PLACEHOLDER@ left.
if grep -rl '@[A-Z_]*@' ./*/share/man 2>/dev/null; then
    echo "an installed man page still has a @PLACEHOLDER@"
    missing=1
fi
# The installed library exports only its API and the mmap-family and fork hooks: no
# malloc of its own, the program's allocator stays the program's.
lib=$(find . -name 'libuzswap.so.0*' -type f | head -1)
if [ -n "$lib" ]; then
    bad=$(nm -D --defined-only "$lib" | awk '{print $3}' | sed 's/@.*//' |
        grep -Ev '^(uzswap_[a-z_]+|UZSWAP_[0-9_.]+|mmap|mmap64|munmap|mremap|fork)$' || true)
    if [ -n "$bad" ]; then
        echo "libuzswap exports more than its API:"
        echo "$bad"
        missing=1
    fi
fi
[ $missing -eq 0 ] || { echo "FAIL: install is incomplete"; exit 1; }
echo "PASS: install into DESTDIR is complete"
