#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Where the microseconds of a fault served from the pool go, from a perf trace.

  perf record -a -e exceptions:page_fault_user -e sched:sched_switch \\
      -e sched:sched_wakeup -e syscalls:sys_exit_epoll_wait \\
      -e syscalls:sys_enter_ioctl -e syscalls:sys_exit_ioctl -o perf.data -- sleep 5
  perf script -i perf.data -F comm,tid,cpu,time,event,trace | \\
      bench/profile/fault-timeline.py --pid PID_OF_PROGRAM

(bench/profile/run-profile does all of it around bench/hotcold/hotcold.)

For every page fault of the program's thread that ends in a UFFDIO_COPY
by a uzswapd fault thread, the segments between these events:

  fault      exceptions:page_fault_user of the program
  woken      sched_wakeup of the fault thread (handle_userfault wakes the uffd's
             pollers before the program sleeps)
  blocked    sched_switch away from the program (it sleeps in handle_userfault)
  running    sched_switch to the fault thread
  epoll_ret  sys_exit_epoll_wait of the fault thread
  copy_in    sys_enter_ioctl UFFDIO_COPY (after read, index lookup, decompress)
  copy_out   sys_exit_ioctl
  resumed    sched_switch back to the program

It prints fault -> resumed for every fault that blocked and was served by
a UFFDIO_COPY, split by whether a sleeping fault thread had to be woken or
it was busy (then the fault waits for whatever it is doing: compressing an
eviction batch, serving another fault), then the median, p10 and p90 of
each segment over the faults where every event was seen.
"""
import argparse
import re
import statistics
import sys

UFFDIO_COPY = 0xC028AA03
LINE = re.compile(r"^\s*(?P<comm>.+?)\s+(?P<tid>\d+)\s+\[(?P<cpu>\d+)\]\s+(?P<time>\d+\.\d+):\s+"
                  r"(?P<event>[\w:]+):\s*(?P<trace>.*)$")
STEPS = ("fault", "woken", "blocked", "running", "epoll_ret", "copy_in", "copy_out", "resumed")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--pid", type=int, required=True, help="the program's (single) thread id")
    args = p.parse_args()
    target = args.pid
    done = []
    cur = None  # the fault being followed: {"step": time}
    handler = None  # tid of the fault thread woken for it
    for line in sys.stdin:
        m = LINE.match(line)
        if not m:
            continue
        tid, t, ev, trace = int(m["tid"]), float(m["time"]) * 1e6, m["event"], m["trace"]
        comm = m["comm"].strip()
        if ev == "exceptions:page_fault_user" and tid == target:
            cur, handler = {"fault": t}, None
            continue
        if cur is None:
            continue
        if ev == "sched:sched_switch":
            prev = re.search(r"prev_pid=(\d+)", trace)
            nxt = re.search(r"next_pid=(\d+)", trace)
            if prev and int(prev[1]) == target and "blocked" not in cur:
                cur["blocked"] = t
            if nxt and handler and int(nxt[1]) == handler and "running" not in cur:
                cur["running"] = t
            if nxt and int(nxt[1]) == target and "blocked" in cur:
                cur["resumed"] = t
                done.append(cur)
                cur = None
        elif ev == "sched:sched_wakeup" and "woken" not in cur and "copy_in" not in cur:
            wm = re.search(r"comm=(\S+) pid=(\d+)", trace)
            if wm and wm[1].startswith("uzswapd-fault"):
                cur["woken"], handler = t, int(wm[2])
        elif ev == "syscalls:sys_exit_epoll_wait" and tid == handler and "running" in cur:
            cur.setdefault("epoll_ret", t)
        elif ev == "syscalls:sys_enter_ioctl" and comm.startswith("uzswapd-fault") and \
                "copy_in" not in cur:
            cm = re.search(r"cmd: (0x[0-9a-f]+)", trace)
            if cm and int(cm[1], 16) == UFFDIO_COPY and (handler is None or tid == handler):
                cur["copy_in"], handler = t, tid
        elif ev == "syscalls:sys_exit_ioctl" and tid == handler and "copy_in" in cur:
            cur.setdefault("copy_out", t)
    def line(label, xs):
        xs = sorted(xs)
        q = statistics.quantiles(xs, n=10) if len(xs) > 1 else [xs[0]] * 9
        print(f"{label:<34}{q[0]:>9.1f}{statistics.median(xs):>9.1f}{q[8]:>9.1f}"
              f"{len(xs):>9}")

    served = [f for f in done if "copy_out" in f]
    woke = [f["resumed"] - f["fault"] for f in served if "woken" in f]
    busy = [f["resumed"] - f["fault"] for f in served if "woken" not in f]
    if served:
        print(f"{'every blocked fault served by a UFFDIO_COPY':<34}{'p10 µs':>9}{'p50 µs':>9}"
              f"{'p90 µs':>9}{'faults':>9}")
        line("  fault -> resumed, all", [f["resumed"] - f["fault"] for f in served])
        if woke:
            line("  ... the fault thread was asleep", woke)
        if busy:
            line("  ... it was busy (no wake-up)", busy)
        print()
    full = [f for f in done if all(s in f for s in STEPS)]
    if not full:
        print("no complete fault sequence found (is the program single-threaded and "
              "faulting on the pool? is the fault thread sleeping, not spinning?)")
        return 1
    print(f"{len(full)} faults served from the pool followed end to end "
          f"({len(done)} ended, the rest lacked an event)")
    print(f"{'segment (faults with every event)':<34}{'p10 µs':>9}{'p50 µs':>9}{'p90 µs':>9}")
    for a, b in zip(STEPS, STEPS[1:]):
        xs = sorted(f[b] - f[a] for f in full)
        q = statistics.quantiles(xs, n=10) if len(xs) > 1 else [xs[0]] * 9
        print(f"{a + ' -> ' + b:<34}{q[0]:>9.1f}{statistics.median(xs):>9.1f}{q[8]:>9.1f}")
    xs = sorted(f["resumed"] - f["fault"] for f in full)
    q = statistics.quantiles(xs, n=10) if len(xs) > 1 else [xs[0]] * 9
    print(f"{'total: fault -> resumed':<34}{q[0]:>9.1f}{statistics.median(xs):>9.1f}{q[8]:>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
