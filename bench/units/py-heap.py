#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""A python3 heap for bench/units/run-units: a dict of 200 000 strings and
50 000 byte strings, filled in order; then (after `settle` seconds, time for
the daemon to evict) every value is read back in key order and checked
against what was written.  Prints "filled" and then "verify OK" or
"verify MISMATCH"; exits 1 on a mismatch."""
import hashlib
import sys
import time

n = int(sys.argv[1]) if len(sys.argv) > 1 else 200000
settle = float(sys.argv[2]) if len(sys.argv) > 2 else 4
table = {f"key-{i:08d}": f"value {i} " * 8 for i in range(n)}
blobs = [(b"blob-%08d " % i) * 90 for i in range(50000)]
print("filled", flush=True)
time.sleep(settle)
got, want = hashlib.sha256(), hashlib.sha256()
for k in sorted(table):
    got.update(table[k].encode())
for b in blobs:
    got.update(b)
for i in range(n):
    want.update((f"value {i} " * 8).encode())
for i in range(50000):
    want.update((b"blob-%08d " % i) * 90)
ok = got.digest() == want.digest()
print("verify", "OK" if ok else "MISMATCH", flush=True)
sys.exit(0 if ok else 1)
