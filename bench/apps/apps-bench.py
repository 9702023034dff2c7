#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The workloads of bench/apps/run-bench, and its report.

  apps-bench.py run --mode MODE --run N --size BYTES --budget SIZE
                    --workloads a,b,... --results FILE --tmp DIR [--cgroup PATH]
                    [--build DIR] [--of TEXT] [--progress]
  apps-bench.py report --results FILE --plots DIR [--command TEXT]

`run` runs each workload once in one mode and appends one JSON line per
workload to FILE (a failed one too, with its error; the logs of its
processes are kept in failed.MODE.WORKLOAD.runN/ beside FILE).  DIR holds
what the runs share: the sort input, the answers without paging that
sqlite3, python3 and sort are checked against (the unmanaged mode's, or
computed outside uzswap and the cgroup when it has not run first) and
the latency histograms.  --progress prints a line per workload started
and finished on stderr.  Modes: `unmanaged` (no uzswap, no limit), `uzswap` (a
private uzswapd per workload, --resident-max BUDGET, lz4, no swap file;
the program under LD_PRELOAD=libuzswap.so with the library's defaults),
`zram` and `zswap` (no uzswap; the program started inside the memory
cgroup PATH that run-bench made, limit BUDGET, the kernel's compressed
swap set up by bench/lib/kernel-swap.sh).  Every workload checks its own
data and fails the run when a byte is wrong.

The process handling (process groups, PDEATHSIG, a subreaper, everything
killed on every exit path) is the test harness's (tests/integration/
itest.py), and the redis, memcached, sqlite3 and python3 workloads reuse
the apps suite's code (tests/apps/apps.py).  Wall times are measured here,
around the workload's phases (server start-up excluded).

`report` prints the table (median of the runs per workload and mode,
uzswap/zram and uzswap/zswap ratios) and writes the PNG plots with
matplotlib (Debian python3-matplotlib): wall time per workload and mode,
and the program-seen fault latency CDF of the hotcold-based workloads.
"""

import argparse
import hashlib
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(TOP, "tests", "integration"))
sys.path.insert(0, os.path.join(TOP, "tests", "apps"))
import itest  # noqa: E402
import apps  # noqa: E402
from itest import TestFailure  # noqa: E402

WORKLOADS = ("memcached", "redis", "sqlite3", "python3", "sort", "hotcold", "seqscan",
             "strided")
MODES = ("unmanaged", "uzswap", "zram", "zswap")
MiB = 1 << 20


class Stop(BaseException):
    pass


class Bench(itest.Harness):
    """The harness with a mode: the preload for uzswap, the cgroup for the kernel."""

    def __init__(self, mode, cgroup, budget, tmpdir):
        os.environ.setdefault("ITEST_BINDIR", TOP)
        super().__init__(f"bench-{mode}")
        self.mode = mode
        self.cgroup = cgroup
        self.budget = budget
        self.shared_tmp = tmpdir

    def env(self, preload=True, socket_path=None, extra=None):
        env = super().env(preload and self.mode == "uzswap", socket_path, extra)
        env.pop("UZSWAP_JOIN_MIN", None)  # the library's defaults, lazy join included
        return env

    def spawn(self, name, argv, preload=True, **kwargs):
        if self.cgroup and preload:
            argv = ["bash", "-c", 'echo $$ >"$1/cgroup.procs" && shift && exec "$@"', "-",
                    self.cgroup, *argv]
        return super().spawn(name, argv, preload=preload, **kwargs)

    def daemon_up(self):
        if self.mode == "uzswap":
            # UZSWAPD_EXTRA_ARGS: more options for an A/B (--compression-unit 1, ...)
            more = os.environ.get("UZSWAPD_EXTRA_ARGS", "").split()
            self.start_daemon(budget=self.budget,
                              extra=("--swap-size", "0", "--compressor", "lz4", *more))

    def daemon_down(self, record):
        if self.mode != "uzswap" or not self.daemon:
            return
        stats, _ = self.ctl_stats()
        for key in ("zswpin", "zswpout", "disk_swapins", "zero_fill_faults", "inflight_faults",
                    "faultaround_pages", "faultaround_hits", "evict_requests"):
            if key in stats:
                record["uzswap_" + key] = stats[key]
        self.stop_daemon(check_empty=False)
        self.daemon = None


def cgroup_oom_kills(path):
    """The kernel's count of processes OOM-killed in the memory cgroup (v1
    memory.oom_control, v2 memory.events), or None."""
    for name in ("memory.oom_control", "memory.events"):
        try:
            with open(os.path.join(path, name)) as f:
                for line in f:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except OSError:
            continue
    return None


def vmstat():
    out = {}
    with open("/proc/vmstat") as f:
        for line in f:
            k, v = line.split()
            out[k] = int(v)
    return out


def timed(phases, name, fn, *args):
    t0 = time.monotonic()
    result = fn(*args)
    phases[name] = round(time.monotonic() - t0, 3)
    return result


# --- memcached ---------------------------------------------------------------------

def w_memcached(h, size, ctx):
    items = size // 1200
    port = apps.free_port()
    proc = h.spawn("memcached", [apps.need("memcached"), "-p", str(port), "-l", "127.0.0.1",
                                 "-U", "0", "-m", str(size * 3 // MiB + 64), "-t", "2", "-u",
                                 "root"])
    apps.wait_port(port, proc)
    phases = {}

    def set_all():
        for first in range(0, items, 20000):
            n = min(20000, items - first)
            payload = b"".join(b"set k%d 0 0 %d noreply\r\n%s\r\n" %
                               (i, apps.MEMCACHED_VALUE, apps.memcached_value(i))
                               for i in range(first, first + n))
            apps.memcached_exchange(port, payload + b"version\r\n", b"\r\n")

    def get_all():
        bad = 0
        for first in range(0, items, 5000):
            n = min(5000, items - first)
            keys = b" ".join(b"k%d" % i for i in range(first, first + n))
            reply = apps.memcached_exchange(port, b"get " + keys + b"\r\n", b"END\r\n")
            lines = reply.split(b"\r\n")
            got = {}
            i = 0
            while i < len(lines) and lines[i] != b"END":
                got[int(lines[i].split()[1][1:])] = lines[i + 1]
                i += 2
            bad += sum(1 for k in range(first, first + n) if got.get(k) != apps.memcached_value(k))
        if bad:
            raise TestFailure(f"memcached: {bad} of {items} items missing or wrong")

    timed(phases, "set", set_all)
    timed(phases, "get", get_all)
    proc.kill(signal.SIGTERM)
    proc.wait(60)
    return phases, f"{items} items of {apps.MEMCACHED_VALUE} B verified"


# --- redis -------------------------------------------------------------------------

REDIS_VALUE = 400


def redis_value(i):
    word = b"%08d:redis-value-of-key " % i
    return (word * (REDIS_VALUE // len(word) + 1))[:REDIS_VALUE]


def resp(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class RespReader:
    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()
        self.pos = 0

    def _line(self):
        while True:
            end = self.buf.find(b"\r\n", self.pos)
            if end >= 0:
                line = bytes(self.buf[self.pos:end])
                self.pos = end + 2
                return line
            self._more()

    def _more(self):
        if self.pos > (1 << 20):
            del self.buf[:self.pos]
            self.pos = 0
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise TestFailure("redis closed the connection")
        self.buf += chunk

    def reply(self):
        line = self._line()
        if line[:1] == b"$":
            n = int(line[1:])
            if n < 0:
                return None
            while len(self.buf) - self.pos < n + 2:
                self._more()
            data = bytes(self.buf[self.pos:self.pos + n])
            self.pos += n + 2
            return data
        if line[:1] == b"-":
            raise TestFailure(f"redis: {line.decode(errors='replace')}")
        return line[1:]


def w_redis(h, size, ctx):
    keys = size // 560
    port = apps.free_port()
    r = apps.Redis(h, "redis", port, True, h.tmp)
    phases = {}
    sock = socket.create_connection(("127.0.0.1", port), timeout=300)
    reader = RespReader(sock)

    def pipeline(cmds):
        sock.sendall(b"".join(cmds))
        return [reader.reply() for _ in cmds]

    def populate():
        for first in range(0, keys, 10000):
            n = min(10000, keys - first)
            pipeline([resp("SET", b"key:%d" % i, redis_value(i)) for i in range(first, first + n)])

    def get_all():
        order = list(range(keys))
        random.Random(1).shuffle(order)
        bad = 0
        for first in range(0, keys, 10000):
            part = order[first:first + 10000]
            got = pipeline([resp("GET", b"key:%d" % i) for i in part])
            bad += sum(1 for i, v in zip(part, got) if v != redis_value(i))
        if bad:
            raise TestFailure(f"redis: {bad} of {keys} values missing or wrong")

    def bgsave():
        before = r.info("rdb_last_save_time")
        r.cmd("BGSAVE")
        limit = max(120, 2 * size // MiB)  # a child stuck for good is a failure
        end = time.monotonic() + limit
        # Done when no save is in progress and either a new save time is in
        # (success) or the status says err (a child that died: the save time
        # stays the old one).
        while (r.info("rdb_bgsave_in_progress") != "0" or
               (r.info("rdb_last_save_time") == before and
                r.info("rdb_last_bgsave_status") == "ok")):
            if time.monotonic() > end:
                raise TestFailure(f"BGSAVE did not finish within {limit} s")
            time.sleep(0.05)
        if r.info("rdb_last_bgsave_status") != "ok":
            r.server_log()
            raise TestFailure(f"BGSAVE failed: {r.info('rdb_last_bgsave_status')} "
                              "(the child's end is in redis.log)")

    timed(phases, "populate", populate)
    digest = r.cmd("DEBUG", "DIGEST")
    timed(phases, "get", get_all)
    timed(phases, "bgsave", bgsave)
    if r.cmd("DEBUG", "DIGEST") != digest:
        raise TestFailure("redis: DEBUG DIGEST changed across BGSAVE")
    if os.path.getsize(os.path.join(h.tmp, "dump.rdb")) < keys * REDIS_VALUE // 8:
        raise TestFailure("redis: the RDB is too small")
    sock.close()
    subprocess.run([r.cli, "-p", str(port), "SHUTDOWN", "NOSAVE"], capture_output=True,
                   timeout=60)
    r.proc.wait(60)
    return phases, f"{keys} keys of {REDIS_VALUE} B verified, digest stable across BGSAVE"


# --- sqlite3, python3 (the apps suite's programs, scaled) ---------------------------

def reference(ctx, key, value, compute):
    """The answer without paging is the reference of every mode: the unmanaged run's
    (kept in a file), or compute() (the program run outside uzswap and the cgroup)
    when the unmanaged mode did not run first."""
    path = os.path.join(ctx["tmp"], f"reference.{key}")
    if not os.path.exists(path):
        fresh = value if ctx["mode"] == "unmanaged" else compute()
        with open(path + ".part", "w") as f:
            f.write(fresh)
        os.rename(path + ".part", path)
        if ctx["mode"] == "unmanaged":
            return "reference"
    with open(path) as f:
        expected = f.read()
    if expected != value:
        raise TestFailure(f"{key}: answered\n{value}\nexpected (without paging)\n{expected}")
    return "equal to the answer without paging"


def w_sqlite3(h, size, ctx):
    rows = size // 520
    build = apps.sqlite_build(rows)
    phases = {}
    answer = timed(phases, "build+query", apps.run_sqlite, h, "sqlite3", True, False, build)
    verdict = reference(ctx, f"sqlite3.{rows}", answer,
                        lambda: apps.run_sqlite(h, "sqlite3-reference", False, False, build))
    return phases, f"{rows} rows, aggregates {verdict}"


def w_python3(h, size, ctx):
    scale = size / (160 * MiB)
    keys, blobs = int(300000 * scale), int(100000 * scale)
    script = apps.python_script(keys, blobs)
    phases = {}
    answer = timed(phases, "build+checksums", apps.run_python, h, "python3", True, False,
                   script)
    verdict = reference(ctx, f"python3.{keys}", answer,
                        lambda: apps.run_python(h, "python3-reference", False, False, script))
    return phases, f"checksum twice equal, {verdict}"


# --- GNU sort ---------------------------------------------------------------------

def w_sort(h, size, ctx):
    data = os.path.join(ctx["tmp"], f"sort-input.{size}")
    if not os.path.exists(data):
        itest.write_text_file(data + ".part", size // 2, 12)
        os.rename(data + ".part", data)
    out = os.path.join(h.tmp, "sorted")

    def sort(name, preload):
        proc = h.spawn(name, [apps.need("sort"), "-S", str(size * 2), "--parallel=1", "-o",
                              out, data], preload=preload, extra_env={"LC_ALL": "C"})
        rc = proc.wait(1200)
        if rc != 0:
            proc.report()
            raise TestFailure(f"{name} exited with {rc}")

    def sorted_digest():
        digest = itest.sha256_file(out)
        os.unlink(out)
        return digest

    phases = {}
    timed(phases, "sort", sort, "sort", True)
    digest = sorted_digest()
    verdict = reference(ctx, f"sort.{size}", digest,
                        lambda: (sort("sort-reference", False), sorted_digest())[1])
    return phases, f"{size // 2 >> 20} MiB sorted, output {verdict}"


# --- hotcold and the scans ----------------------------------------------------------

def hotcold(h, name, argv, ctx):
    hist = os.path.join(ctx["tmp"], f"hist.{name}.{ctx['mode']}.{ctx['run']}")
    proc = h.spawn(name, [ctx["hotcold"], *argv, "--histogram", hist])
    rc = proc.wait(1800)
    out = proc.stdout()
    if rc != 0 or "verified_pages" not in out:
        proc.report()
        raise TestFailure(f"{name} exited with {rc}")
    res = dict(line.split(None, 1) for line in out.splitlines() if " " in line)
    phases = {k: float(res[k + "_seconds"]) for k in ("fill", "access", "verify")}
    extra = {"absent_page_accesses": int(res["absent_page_accesses"]),
             "fault_latency_p50_ns": int(res["fault_latency_p50_ns"]),
             "fault_latency_p99_ns": int(res["fault_latency_p99_ns"]),
             "histogram": [[int(a), int(b)] for a, b in
                           (line.split() for line in open(hist))]}
    return phases, f"{res['verified_pages'].strip()} pages verified", extra


def w_hotcold(h, size, ctx):
    return hotcold(h, "hotcold", ["--size", str(size), "--hot", str(max(size // 16, 1 << 20)),
                                  "--accesses", str(size // 4096 * 4)], ctx)


def w_seqscan(h, size, ctx):
    return hotcold(h, "seqscan", ["--size", str(size), "--hot", str(1 << 20), "--pattern",
                                  "sequential", "--write-percent", "0", "--accesses",
                                  str(size // 4096 * 2)], ctx)


def w_strided(h, size, ctx):
    return hotcold(h, "strided", ["--size", str(size), "--hot", str(1 << 20), "--pattern",
                                  "strided", "--stride", "4", "--write-percent", "0",
                                  "--accesses", str(size // 4096 * 2)], ctx)


def keep_failure(h, args, name, record):
    """Print what the failed workload's processes said, and keep their logs (the
    harness's temp dir goes at cleanup) beside the results file."""
    for proc in h.procs:
        proc.report()
    keep = os.path.join(os.path.dirname(os.path.abspath(args.results)),
                        f"failed.{args.mode}.{name}.run{args.run}")
    os.makedirs(keep, exist_ok=True)
    for entry in os.listdir(h.tmp):
        path = os.path.join(h.tmp, entry)
        if entry.endswith((".out", ".err", ".log")) and os.path.isfile(path):
            with open(path, "rb") as src, open(os.path.join(keep, entry), "wb") as dst:
                dst.write(src.read(16 << 20))
    record["logs"] = keep


def run(args):
    # The programs run with the harness's temp dir as cwd: every path absolute.
    build = os.path.abspath(args.build)
    ctx = {"mode": args.mode, "run": args.run, "tmp": os.path.abspath(args.tmp),
           "hotcold": os.path.join(build, "bench", "hotcold", "hotcold")}
    os.environ.setdefault("UZSWAPD", os.path.join(build, "daemon", "uzswapd"))
    os.environ.setdefault("LIBUZSWAP", os.path.join(build, "libclient", "libuzswap.so"))
    os.environ.setdefault("UZSWAPCTL", os.path.join(build, "cli", "uzswapctl"))

    def on_signal(signum, frame):
        raise Stop(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    # Stop (and so clean up) when run-bench dies without telling us.
    itest.libc.prctl(itest.PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    def say(msg):
        """The harness's log (stdout), and with --progress the terminal (stderr)."""
        itest.log(msg)
        if args.progress:
            print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    failed = 0
    names = args.workloads.split(",")
    for i, name in enumerate(names, 1):
        say(f"run {args.run}{args.of}, {args.mode}: {name} ({i}/{len(names)}), "
            f"load average {os.getloadavg()[0]:.1f}")
        h = Bench(args.mode, args.cgroup, args.budget, args.tmp)
        record = {"workload": name, "mode": args.mode, "run": args.run, "size": args.size,
                  "budget": args.budget, "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                  "loadavg_start": os.getloadavg()[0]}
        ooms = cgroup_oom_kills(args.cgroup) if args.cgroup else None
        try:
            h.daemon_up()
            before = vmstat()
            t0 = time.monotonic()
            got = globals()["w_" + name](h, args.size, ctx)
            record["elapsed"] = round(time.monotonic() - t0, 3)
            after = vmstat()
            phases, verdict = got[0], got[1]
            record.update(got[2] if len(got) > 2 else {})
            record["phases"] = phases
            record["wall"] = round(sum(phases.values()), 3)
            record["verified"] = verdict
            for k in ("pswpin", "pswpout", "zswpin", "zswpout"):
                record["kernel_" + k] = after.get(k, 0) - before.get(k, 0)
            h.daemon_down(record)
            say(f"  {args.mode} {name} run {args.run}: {record['wall']:.2f} s "
                f"({', '.join(f'{k} {v:.2f}' for k, v in phases.items())}): {verdict}")
        except (TestFailure, itest.TestSkip) as e:
            say(f"  {args.mode} {name} run {args.run}: FAILED: {e}")
            record["error"] = " ".join(str(e).split())
            failed += 1
        except Exception as e:  # a program that died mid-reply, a socket timeout
            import traceback
            traceback.print_exc()
            say(f"  {args.mode} {name} run {args.run}: FAILED: {type(e).__name__}: {e}")
            record["error"] = " ".join(f"{type(e).__name__}: {e}".split())
            failed += 1
        finally:
            record["loadavg_end"] = os.getloadavg()[0]
            if ooms is not None:
                record["kernel_oom_kills"] = cgroup_oom_kills(args.cgroup) - ooms
                if "error" in record and record["kernel_oom_kills"]:
                    record["error"] += (f" [the kernel OOM-killed {record['kernel_oom_kills']}"
                                        f" process(es) in the memory cgroup]")
                    say(f"  {args.mode} {name} run {args.run}: the kernel OOM-killed "
                        f"{record['kernel_oom_kills']} process(es) in the cgroup")
            if "error" in record:
                keep_failure(h, args, name, record)
                say(f"  logs of the failed {name} kept in {record['logs']}")
            h.cleanup()
        with open(args.results, "a") as f:
            f.write(json.dumps(record) + "\n")
    return 1 if failed else 0


# --- the report ----------------------------------------------------------------------

def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def medians(records):
    walls, errors = {}, {}
    for r in records:
        key = (r["workload"], r["mode"])
        if "error" in r:
            errors.setdefault(key, []).append(r)
        else:
            walls.setdefault(key, []).append(r["wall"])
    return {k: statistics.median(v) for k, v in walls.items()}, walls, errors


def phase_medians(rs):
    return {k: statistics.median(r["phases"][k] for r in rs) for k in rs[0]["phases"]}


def report(args):
    records = load(args.results)
    med, walls, errors = medians(records)
    workloads = [w for w in WORKLOADS if any(r["workload"] == w for r in records)]
    modes = [m for m in MODES if any(r["mode"] == m for r in records)]
    runs = max((r["run"] for r in records), default=0)
    print(f"\nbench/apps: median wall time (s) of {runs} run(s) per cell"
          f"{': ' + args.command if args.command else ''}")
    loads = [r[k] for r in records for k in ("loadavg_start", "loadavg_end") if k in r]
    if records:
        r0 = records[0]
        print(f"working set {r0['size'] >> 20} MiB, budget {r0['budget']}, {os.cpu_count()} CPUs, "
              f"{os.uname().release}" +
              (f", load average {min(loads):.1f}-{max(loads):.1f} during the runs" if loads else ""))
    head = f"{'workload':<11}" + "".join(f"{m:>11}" for m in modes)
    ratio_modes = [m for m in ("zram", "zswap") if m in modes and "uzswap" in modes]
    head += "".join(f"{'uz/' + m:>10}" for m in ratio_modes)
    print(head)
    partial = False
    for w in workloads:
        line = f"{w:<11}"
        for m in modes:
            if (w, m) in med:
                mark = "*" if (w, m) in errors else ""
                partial = partial or bool(mark)
                line += f"{med[(w, m)]:>10.2f}{mark or ' '}"
            else:
                line += f"{'FAIL' if (w, m) in errors else '-':>10} "
        for m in ratio_modes:
            if (w, "uzswap") in med and (w, m) in med and med[(w, m)] > 0:
                line += f"{med[(w, 'uzswap')] / med[(w, m)]:>10.2f}"
            else:
                line += f"{'-':>10}"
        print(line)
    if partial:
        print("(* some runs of this cell failed: the median of the others; see FAILED below)")
    print("\nphases (median s) and fault counts:")
    for w in workloads:
        for m in modes:
            rs = [r for r in records if r["workload"] == w and r["mode"] == m and "error" not in r]
            if not rs:
                continue
            phases = phase_medians(rs)
            # pages put back ahead (fault-around) are in zswpin but were no fault
            faults = (statistics.median(r.get("uzswap_zswpin", 0) + r.get("uzswap_disk_swapins", 0)
                                        - r.get("uzswap_faultaround_pages", 0)
                                        for r in rs) if m == "uzswap"
                      else statistics.median(r["kernel_pswpin"] + r["kernel_zswpin"] for r in rs))
            text = ", ".join(f"{k} {v:.2f}" for k, v in phases.items())
            extra = ""
            if "fault_latency_p50_ns" in rs[0]:
                extra = (f", program-seen fault p50 "
                         f"{statistics.median(r['fault_latency_p50_ns'] for r in rs) / 1000:.0f} µs"
                         f" p99 {statistics.median(r['fault_latency_p99_ns'] for r in rs) / 1000:.0f} µs")
            if m == "uzswap" and "uzswap_faultaround_pages" in rs[0]:
                fa = statistics.median(r["uzswap_faultaround_pages"] for r in rs)
                hits = statistics.median(r["uzswap_faultaround_hits"] for r in rs)
                extra += f", fault-around {fa:.0f} pages, {hits:.0f} hits"
                if fa:
                    extra += f" ({hits / fa:.2f})"
            print(f"  {w:<10} {m:<10} {text}; faults {faults:.0f}{extra}")
    lines = []
    for w in workloads:
        ups = [r for r in records if r["workload"] == w and r["mode"] == "uzswap"
               and "error" not in r]
        for m in ratio_modes:
            kps = [r for r in records if r["workload"] == w and r["mode"] == m
                   and "error" not in r]
            if not ups or not kps or len(ups[0]["phases"]) < 2:
                continue
            up, kp = phase_medians(ups), phase_medians(kps)
            parts = [f"{k} {up[k] / kp[k]:.2f}" for k in up if kp.get(k)]
            lines.append(f"  {w:<10} uzswap/{m:<6} {', '.join(parts)}")
    if lines:
        print("\nphase ratios (medians):")
        print("\n".join(lines))
    for (w, m), rs in sorted(errors.items()):
        for r in rs:
            where = f" (logs: {r['logs']})" if "logs" in r else ""
            print(f"  FAILED {w} {m} run {r['run']}: {r['error']}{where}")
    plots(args, records, med, errors, workloads, modes)
    return 1 if errors else 0


def plots(args, records, med, errors, workloads, modes):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("report: no matplotlib (apt-get install python3-matplotlib): no plots")
        return
    os.makedirs(args.plots, exist_ok=True)
    colors = {"unmanaged": "#999999", "uzswap": "#d62728", "zram": "#1f77b4", "zswap": "#2ca02c"}
    fig, ax = plt.subplots(figsize=(11, 5))
    width = 0.8 / max(len(modes), 1)
    top = max(med.values(), default=1)
    for i, m in enumerate(modes):
        xs = [j + (i - (len(modes) - 1) / 2) * width for j in range(len(workloads))]
        ys = [med.get((w, m), 0) for w in workloads]
        ax.bar(xs, ys, width, label=m, color=colors.get(m))
        for x, y, w in zip(xs, ys, workloads):
            n_ok = sum(1 for r in records if r["workload"] == w and r["mode"] == m
                       and "error" not in r)
            n_failed = len(errors.get((w, m), []))
            if n_failed and not n_ok:
                ax.text(x, top * 0.02, "FAIL", rotation=90, ha="center", va="bottom",
                        fontsize=8, color=colors.get(m))
            elif n_failed:
                ax.text(x, y + top * 0.01, f"{n_ok}/{n_ok + n_failed}", ha="center",
                        va="bottom", fontsize=7)
    ax.set_xticks(range(len(workloads)))
    ax.set_xticklabels(workloads)
    ax.set_ylabel("wall time, median (s)")
    ax.set_title("bench/apps: wall time per program (same memory limit); "
                 "n/N: runs that passed, FAIL: none did")
    ax.legend()
    fig.tight_layout()
    path = os.path.join(args.plots, "apps-wall.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"plot: {path}")

    hist_workloads = [w for w in workloads if any("histogram" in r for r in records
                                                   if r["workload"] == w)]
    if not hist_workloads:
        return
    fig, axes = plt.subplots(1, len(hist_workloads), figsize=(5 * len(hist_workloads), 4.5),
                             squeeze=False)
    for ax, w in zip(axes[0], hist_workloads):
        for m in ("uzswap", "zram", "zswap"):
            merged = {}
            for r in records:
                if r["workload"] == w and r["mode"] == m and "histogram" in r:
                    for low, count in r["histogram"]:
                        merged[low] = merged.get(low, 0) + count
            total = sum(merged.values())
            if not total:
                continue
            xs, ys, seen = [], [], 0
            for low in sorted(merged):
                seen += merged[low]
                xs.append(max(low, 1) / 1000)
                ys.append(seen / total)
            ax.step(xs, ys, where="post", label=f"{m} ({total} faults)", color=colors.get(m))
        ax.set_xscale("log")
        ax.set_xlabel("program-seen fault latency (µs)")
        ax.set_ylabel("fraction of faults")
        ax.set_title(w)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = os.path.join(args.plots, "fault-latency-cdf.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"plot: {path}")


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--mode", choices=MODES, required=True)
    r.add_argument("--run", type=int, default=1)
    r.add_argument("--size", type=int, required=True)
    r.add_argument("--budget", required=True)
    r.add_argument("--workloads", default=",".join(WORKLOADS))
    r.add_argument("--results", required=True)
    r.add_argument("--cgroup")
    r.add_argument("--tmp", required=True)
    r.add_argument("--build", default=os.path.join(TOP, "build"))
    r.add_argument("--of", default="", help="text after the run number (run-bench: '/N')")
    r.add_argument("--progress", action="store_true",
                   help="one line per workload started and finished on stderr")
    q = sub.add_parser("report")
    q.add_argument("--results", required=True)
    q.add_argument("--plots", required=True)
    q.add_argument("--command", default="")
    args = p.parse_args()
    try:
        return run(args) if args.cmd == "run" else report(args)
    except Stop as e:
        itest.log(f"stopped by {e}")
        return 130


if __name__ == "__main__":
    sys.exit(main())
