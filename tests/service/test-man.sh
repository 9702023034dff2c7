#!/bin/sh
# SPDX-License-Identifier: MIT
# Every config key of the parser's key table (daemon/config/config.c) is in
# uzswapd.conf(5); every flag of `uzswapd --help` is in uzswapd(8) and every
# flag and command of `uzswapctl --help` in uzswapctl(8), each command's
# options in its own paragraph, every statistic in its STATISTICS section;
# the example config files pass `uzswapctl config-check`; every page's .TH
# line names the version `uzswapd --version` prints.
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
# Each command's own options (from its lines of `uzswapctl --help`) are in
# that command's paragraph of uzswapctl(8); every statistic of UZ_STATS_LIST
# is in its STATISTICS section, and every name listed there is a real one.
python3 - "$src" "$(timeout 10 "$uzswapctl" --help)" <<'PY' || fail=1
import re, subprocess, sys
src = sys.argv[1]
help_text = sys.argv[2]
man = open(f"{src}/man/uzswapctl.8").read()
plain = re.sub(r"\\f[BIRP]", "", man.replace("\\-", "-"))
# paragraphs: ".TP\n.B command ..." up to the next .TP/.SH
paras = {}
for m in re.finditer(r"(?ms)^\.TP\n\.B ([a-z-]+)(.*?)(?=^\.TP|^\.SH)", plain):
    paras.setdefault(m.group(1), m.group(0))
bad = 0
cmd = None
for line in help_text.split("Options:")[0].splitlines():
    m = re.match(r"  ([a-z][a-z-]*)\b", line)
    if m:
        cmd = m.group(1)
        if cmd not in paras:
            print(f"not ok: command {cmd} has no paragraph in uzswapctl(8)")
            bad = 1
            continue
    if not cmd or cmd not in paras:
        continue
    for opt in re.findall(r"--[a-z][a-z-]*", line):
        if opt not in paras[cmd]:
            print(f"not ok: uzswapctl {cmd} {opt} missing from its paragraph in uzswapctl(8)")
            bad = 1
stats_h = open(f"{src}/daemon/stats/stats.h").read()
names = set(re.findall(r"X\((\w+), (?:COUNTER|GAUGE),", stats_h))
section = plain.split(".SH STATISTICS", 1)[1].split(".SH", 1)[0] if ".SH STATISTICS" in plain else ""
listed = set(re.findall(r"(?m)^\.B ([a-z_0-9]+)$", section))
derived = {"compression_ratio", "pool_total_size", "fault_latency_ns"}
# The swap backend's block (global.backend in the JSON): its keys, as the daemon writes them.
json_c = open(f"{src}/daemon/control/json.c").read()
derived |= {"backend"} | set(re.findall(r'add\(o, "(backend_\w+)"', json_c))
for n in sorted(names - listed):
    print(f"not ok: statistic {n} missing from STATISTICS in uzswapctl(8)")
    bad = 1
for n in sorted(listed - names - derived):
    print(f"not ok: uzswapctl(8) lists {n}, which is no statistic")
    bad = 1
if not bad and len(paras) >= 7 and listed:
    print(f"ok: every command and its options, {len(names)} statistics in uzswapctl(8)")
elif not bad:
    print("not ok: uzswapctl(8) has no command paragraphs or no STATISTICS section")
    bad = 1
sys.exit(bad)
PY
# Each page names the version the programs print (no placeholder left):
# the pages are installed as they are in the tree.
version=$(timeout 10 "$uzswapd" --version | awk '{print $NF}')
for page in "$src"/man/*.[0-9]; do
	th=$(grep -m1 '^\.TH ' "$page")
	case $th in
	*"\"uzswap $version\""*) ;;
	*) echo "not ok: $(basename "$page"): .TH line \"$th\" does not name uzswap $version"; fail=1 ;;
	esac
	if grep -n '@[A-Z_]*@' "$page"; then
		echo "not ok: $(basename "$page") has a @PLACEHOLDER@"
		fail=1
	fi
done
for f in "$src/examples/config/uzswapd.conf" "$src"/examples/config/cgroup.d/*.conf; do
	timeout 10 "$uzswapctl" config-check "$f" >/dev/null ||
		{ echo "not ok: $f fails config-check"; fail=1; }
done
[ $fail = 0 ] && echo "ok: every key and flag is documented, examples pass config-check"
exit $fail
