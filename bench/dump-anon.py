#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Write the private anonymous memory of a process to a file, page by page.

  bench/dump-anon.py PID OUT

Every private, writable, anonymous mapping of /proc/PID/maps ([heap]
included, [stack] and file mappings left out) is read from /proc/PID/mem
in address order, pages not present in RAM included (they read as zeros,
which unit-ratio leaves out as same-filled).  Needs ptrace rights on PID
(root).  The image feeds bench/unit-ratio.
"""
import sys


def main():
    pid, out = int(sys.argv[1]), sys.argv[2]
    total = 0
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem, \
            open(out, "wb") as dst:
        for line in maps:
            fields = line.split()
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            perms, inode = fields[1], fields[4]
            name = fields[5] if len(fields) > 5 else ""
            if perms[:2] != "rw" or perms[3] != "p" or inode != "0" or \
                    name not in ("", "[heap]"):
                continue
            for addr in range(lo, hi, 1 << 20):
                n = min(1 << 20, hi - addr)
                try:
                    mem.seek(addr)
                    data = mem.read(n)
                except OSError:
                    data = b""
                dst.write(data + bytes(n - len(data)))
                total += n
    print(f"{total >> 20} MiB of private anonymous memory of {pid} written to {out}")


if __name__ == "__main__":
    main()
