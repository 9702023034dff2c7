#!/bin/sh
# SPDX-License-Identifier: MIT
# Every config key of the parser's key table (daemon/config/config.c) is in
# uzswapd.conf(5); every flag of `uzswapd --help` is in uzswapd(8) and every
# flag and command of `uzswapctl --help` in uzswapctl(8); the example config
# files pass `uzswapctl config-check`.
# usage: test-man.sh SRCDIR UZSWAPD UZSWAPCTL
set -u
src=$1 uzswapd=$2 uzswapctl=$3
fail=0
# man source: "\-\-flag" or "\fB\-\-flag" -> plain text for grepping
plain() { sed -e 's/\\-/-/g' -e 's/\\f[BIRP]//g' "$1"; }

keys=$(grep -o '{FILE_[A-Z]*, "[A-Za-z]*", "[A-Za-z]*"' "$src/daemon/config/config.c" |
	sed 's/.*"\([A-Za-z]*\)"$/\1/' | sort -u)
[ -n "$keys" ] || { echo "not ok: no keys found in the key table"; exit 1; }
for k in $keys; do
	plain "$src/man/uzswapd.conf.5" | grep -q "^$k=\|[^A-Za-z]$k=\|^\.B $k\|$k\b" ||
		{ echo "not ok: key $k missing from uzswapd.conf(5)"; fail=1; }
done
for f in $(timeout 10 "$uzswapd" --help | grep -o -- '--[a-z][a-z-]*' | sort -u); do
	plain "$src/man/uzswapd.8" | grep -q -- "$f" ||
		{ echo "not ok: uzswapd $f missing from uzswapd(8)"; fail=1; }
done
for f in $(timeout 10 "$uzswapctl" --help | grep -o -- '--[a-z][a-z-]*' | sort -u) \
	status stats clients config reload shrink config-check; do
	plain "$src/man/uzswapctl.8" | grep -q -- "$f" ||
		{ echo "not ok: uzswapctl $f missing from uzswapctl(8)"; fail=1; }
done
for f in "$src/examples/config/uzswapd.conf" "$src"/examples/config/cgroup.d/*.conf; do
	timeout 10 "$uzswapctl" config-check "$f" >/dev/null ||
		{ echo "not ok: $f fails config-check"; fail=1; }
done
[ $fail = 0 ] && echo "ok: every key and flag is documented, examples pass config-check"
exit $fail
