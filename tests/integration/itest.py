#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Integration test harness for uzswap: real uzswapd, real client processes.

usage: itest.py TEST-NAME [DEADLINE-SECONDS]

Each test gets a fresh temp dir (TMPDIR of every process it starts) and a
private daemon socket in it.  The harness starts uzswapd with a resident
budget, waits until the socket accepts a connection, runs client programs
(LD_PRELOAD=libuzswap.so, or linked) and checks their exit status and
output.  The client programs verify page contents themselves (itest.h).

Cleanup is the point of this file: whatever happens (a failed check, a
client frozen on a fault, an exception, SIGTERM from meson on timeout),
every process the test made is killed and the temp dir removed:
  - every process is started in its own process group, with
    PR_SET_PDEATHSIG=SIGKILL so it dies if the harness itself is killed;
  - the harness is a child subreaper, so grandchildren that outlive their
    parent are re-parented to it and killed at the end;
  - every wait has a timeout, after which the process group gets SIGKILL;
  - the whole test has a deadline (SIGALRM), a little shorter than meson's.

Paths come from meson (tests/integration/meson.build): UZSWAPD, LIBUZSWAP,
ITEST_BINDIR, EXAMPLE_WORKLOAD, EXAMPLE_API.  Exit status: 0 pass, 1 fail,
77 skip (only when something this test needs is missing on the host).
"""

import ctypes
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
CAP_SYS_PTRACE = 19

libc = ctypes.CDLL(None, use_errno=True)

# Lines a truncated report keeps from the part it cuts (Proc.report).
_REPORT_KEEP = re.compile(r"(?i)error|bug|poison|zeros|fail|missing|warn|lost_pages")


class TestFailure(Exception):
    pass


class TestSkip(Exception):
    pass


class Deadline(BaseException):
    """Raised from a signal handler: the test ran out of time or was told to stop."""


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _drop_cap_sys_ptrace():
    """In a forked child before exec: remove CAP_SYS_PTRACE for good."""
    if libc.prctl(PR_CAPBSET_DROP, CAP_SYS_PTRACE, 0, 0, 0) != 0:
        os._exit(126)
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (_CapData * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        os._exit(126)
    mask = ~(1 << CAP_SYS_PTRACE) & 0xffffffff
    data[0].effective &= mask
    data[0].permitted &= mask
    data[0].inheritable &= mask
    if libc.capset(ctypes.byref(header), data) != 0:
        os._exit(126)


def log(msg):
    print(f"[itest {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Proc:
    """A process the harness started, in its own process group."""

    def __init__(self, harness, name, argv, env, drop_ptrace, stdin_pipe=False):
        self.name = name
        self.argv = argv
        self.out_path = os.path.join(harness.tmp, f"{name}.out")
        self.err_path = os.path.join(harness.tmp, f"{name}.err")
        self.reported = False

        def preexec():
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if drop_ptrace:
                _drop_cap_sys_ptrace()

        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.popen = subprocess.Popen(argv, env=env,
                                          stdin=subprocess.PIPE if stdin_pipe else
                                          subprocess.DEVNULL,
                                          stdout=out, stderr=err, cwd=harness.tmp,
                                          start_new_session=True, preexec_fn=preexec)
        self.pid = self.popen.pid
        log(f"started {name} (pid {self.pid}): {' '.join(argv)}")

    def stdout(self):
        with open(self.out_path, "r", errors="replace") as f:
            return f.read()

    def stderr(self):
        with open(self.err_path, "r", errors="replace") as f:
            return f.read()

    def alive(self):
        return self.popen.poll() is None

    def kill(self, sig=signal.SIGKILL):
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass

    def wait(self, timeout):
        """Exit status, or kill -9 the whole group and fail after timeout seconds."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self.popen.wait()
            self.report()
            raise TestFailure(f"{self.name} did not finish within {timeout} s (killed)")

    def report(self):
        if self.reported:
            return
        self.reported = True
        for label, text in (("stdout", self.stdout()), ("stderr", self.stderr())):
            lines = text.splitlines()
            if len(lines) > 60:
                # What the cut would hide and a failure needs: errors and losses.
                middle = [ln for ln in lines[20:-30] if _REPORT_KEEP.search(ln)][:40]
                lines = (lines[:20] + [f"... ({len(lines) - 50} lines, of them these:) ..."] +
                         middle + ["... (end of the cut) ..."] + lines[-30:])
            if lines:
                print(f"---- {self.name} {label} ----")
                print("\n".join(lines), flush=True)

    def wait_for_output(self, needle, timeout, stderr=False):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if needle in (self.stderr() if stderr else self.stdout()):
                return
            if not self.alive():
                self.report()
                raise TestFailure(f"{self.name} exited ({self.popen.returncode}) "
                                  f"before printing {needle!r}")
            time.sleep(0.05)
        self.report()
        raise TestFailure(f"{self.name} did not print {needle!r} within {timeout} s")


def parse_stats(text):
    """Counters from a daemon stats summary: 'name: N', 'name=N' or 'name   N'."""
    aliases = {"stored": "stored_pages", "resident": "resident_pages", "statistics": "clients"}
    stats = {}
    for m in re.finditer(r"(?m)\b([a-z][a-z0-9_]*)\b\s*(?:[:=]\s*|\s+)(\d+)\b", text):
        stats[aliases.get(m.group(1), m.group(1))] = int(m.group(2))
    return stats


class Harness:
    def __init__(self, test):
        self.test = test
        self.procs = []
        self.daemon = None
        self.tmp = tempfile.mkdtemp(prefix=f"uzswap-itest-{test}-")
        self.socket = os.path.join(self.tmp, "uzswapd.sock")
        self.control = os.path.join(self.tmp, "control.sock")
        self.uzswapd = self._path("UZSWAPD")
        # uzswapctl reads the daemon's statistics (stats --json); without it
        # the harness falls back to the SIGUSR1 text summary.
        self.uzswapctl = os.environ.get("UZSWAPCTL") or None
        self.libuzswap = self._path("LIBUZSWAP")
        self.bindir = self._path("ITEST_BINDIR")
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)

    @staticmethod
    def _path(var):
        value = os.environ.get(var)
        if not value:
            raise TestFailure(f"${var} is not set: run through meson test")
        return os.path.abspath(value)

    def env(self, preload=True, socket_path=None, extra=None):
        env = dict(os.environ)
        for var in ("LD_PRELOAD", "UZSWAP_SOCKET", "UZSWAP_MIN_REGION", "UZSWAP_JOIN_MIN",
                    "UZSWAP_SCAN_INTERVAL", "UZSWAP_DISABLE"):
            env.pop(var, None)
        env["TMPDIR"] = self.tmp
        env["UZSWAP_SOCKET"] = socket_path or self.socket
        # Join at start (no lazy join): these tests measure managed processes
        # from their first mapping on.  tests/apps uses the default.
        env["UZSWAP_JOIN_MIN"] = "0"
        if preload:
            env["LD_PRELOAD"] = self.libuzswap
        env.update(extra or {})
        return env

    def spawn(self, name, argv, preload=True, socket_path=None, extra_env=None,
              drop_ptrace=False, stdin_pipe=False):
        proc = Proc(self, name, argv, self.env(preload, socket_path, extra_env), drop_ptrace,
                    stdin_pipe)
        self.procs.append(proc)
        return proc

    def client(self, name, argv, timeout, expect_rc=0, **kwargs):
        """Run a client to completion; fail unless it exits with expect_rc
        (None: any status, the caller looks at it)."""
        proc = self.spawn(name, argv, **kwargs)
        start = time.monotonic()
        rc = proc.wait(timeout)
        log(f"{name} exited {rc} after {time.monotonic() - start:.1f} s")
        proc.report()
        if expect_rc is not None and rc != expect_rc:
            raise TestFailure(f"{name} exited with {rc}, expected {expect_rc}")
        return proc

    def bin(self, name):
        return os.path.join(self.bindir, name)

    # --- the daemon ---------------------------------------------------------

    def start_daemon(self, budget="16M", low=None, threads=2, extra=(), name="uzswapd",
                     extra_env=None):
        if low is None:
            low = f"{max(1, int(budget[:-1]) * 3 // 4)}{budget[-1]}"
        argv = [self.uzswapd, "--socket", self.socket, "--control-socket", self.control,
                "--foreground",
                "--resident-max", budget, "--resident-low", low,
                "--fault-threads", str(threads), "--log-level", "info", *extra]
        if "--config" not in extra and "--swap-size" not in extra:
            # A swap file of the test's own, removed with its temp dir, not
            # the host's default one (which another daemon may hold).
            argv += ["--swap-file", os.path.join(self.tmp, "swapfile"), "--swap-size", "64M"]
        self.daemon = self.spawn(name, argv, preload=False, extra_env=extra_env)
        self.wait_daemon_ready(self.daemon)
        return self.daemon

    def wait_daemon_ready(self, daemon, timeout=10):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if not daemon.alive():
                daemon.report()
                raise TestFailure(f"uzswapd exited ({daemon.popen.returncode}) at start")
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
                try:
                    s.connect(self.socket)
                    log("uzswapd accepts connections")
                    return
                except OSError:
                    pass
            time.sleep(0.05)
        raise TestFailure(f"uzswapd socket {self.socket} did not accept within {timeout} s")

    def daemon_alive(self):
        if not self.daemon.alive():
            self.daemon.report()
            raise TestFailure(f"uzswapd died (status {self.daemon.popen.returncode})")

    def _wait_stderr_growth(self, proc, before, timeout):
        """Wait until proc's stderr grew past `before` bytes and stopped growing."""
        end = time.monotonic() + timeout
        last = before
        stable_since = None
        while time.monotonic() < end:
            size = os.path.getsize(proc.err_path)
            if size > before and size == last:
                if stable_since and time.monotonic() - stable_since > 0.3:
                    break
                stable_since = stable_since or time.monotonic()
            else:
                stable_since = None
            last = size
            time.sleep(0.05)
        with open(proc.err_path, "r", errors="replace") as f:
            f.seek(before)
            return f.read()

    def daemon_stats(self):
        """SIGUSR1 the daemon and parse the summary it prints."""
        self.daemon_alive()
        before = os.path.getsize(self.daemon.err_path)
        self.daemon.popen.send_signal(signal.SIGUSR1)
        text = self._wait_stderr_growth(self.daemon, before, 5)
        self.daemon_alive()
        return parse_stats(text), text

    def ctl_stats(self):
        """`uzswapctl --socket CONTROL stats --json`: the global counters and
        gauges in one dict (plus "clients" from `status`), and the raw reply."""
        self.daemon_alive()
        out = {}
        for args in (("stats",), ("status",)):
            r = subprocess.run([self.uzswapctl, "--socket", self.control, *args, "--json"],
                               capture_output=True, text=True, timeout=20)
            if r.returncode != 0:
                raise TestFailure(f"uzswapctl {args[0]} --json failed ({r.returncode}): "
                                  f"{r.stdout}{r.stderr}")
            out[args[0]] = json.loads(r.stdout)
        g = out["stats"]["global"]
        stats = {**g.get("counters", {}), **g.get("gauges", {}),
                 "clients": out["status"].get("clients", 0)}
        if isinstance(g.get("pool"), dict) and "pool_total_size" in g["pool"]:
            stats["pool_total_size"] = g["pool"]["pool_total_size"]
        return stats, json.dumps(out, indent=1)

    def ctl_json(self, *args):
        """`uzswapctl --socket CONTROL ARGS --json`, parsed."""
        self.daemon_alive()
        r = subprocess.run([self.uzswapctl, "--socket", self.control, *args, "--json"],
                           capture_output=True, text=True, timeout=20)
        if r.returncode != 0:
            raise TestFailure(f"uzswapctl {' '.join(args)} --json failed ({r.returncode}): "
                              f"{r.stdout}{r.stderr}")
        return json.loads(r.stdout)

    def client_figures(self, pid):
        """The daemon's `clients` row of process pid, or None."""
        for row in self.ctl_json("clients").get("clients", []):
            if row.get("pid") == pid:
                return row
        return None

    def stats(self):
        """The daemon's statistics: uzswapctl JSON, else the SIGUSR1 summary."""
        return self.ctl_stats() if self.uzswapctl else self.daemon_stats()

    def wait_daemon_empty(self, timeout=15):
        """After every client exited: the daemon's stored_pages must return to 0."""
        end = time.monotonic() + timeout
        while True:
            stats, text = self.stats()
            if "stored_pages" not in stats:
                print(text)
                raise TestFailure("the daemon's statistics have no stored_pages")
            if stats["stored_pages"] == 0:
                source = "uzswapctl stats --json" if self.uzswapctl else "SIGUSR1 summary"
                log(f"daemon holds no pages ({source}): {self._brief(stats)}")
                return stats
            if time.monotonic() > end:
                print(text)
                raise TestFailure(f"daemon still holds {stats['stored_pages']} pages "
                                  f"{timeout} s after every client exited")
            time.sleep(0.5)

    @staticmethod
    def _brief(stats):
        keys = ("stored_pages", "zswpout", "zswpin", "faults", "clients",
                "pool_total_size", "same_filled_pages")
        return ", ".join(f"{k}={stats[k]}" for k in keys if k in stats)

    def stop_daemon(self, timeout=30, check_empty=True, require_activity=False):
        """SIGTERM, expect a clean exit; check the exit summary."""
        daemon = self.daemon
        before = os.path.getsize(daemon.err_path)
        self.daemon_alive()
        daemon.popen.send_signal(signal.SIGTERM)
        rc = daemon.wait(timeout)
        text = daemon.stderr()[before:]
        stats = parse_stats(text)
        log(f"uzswapd exited {rc}; exit summary: {self._brief(stats) or '(no counters found)'}")
        if rc != 0:
            daemon.report()
            raise TestFailure(f"uzswapd exited with status {rc} on SIGTERM")
        if check_empty and stats.get("stored_pages", 0) != 0:
            daemon.report()
            raise TestFailure(f"exit summary: stored_pages={stats['stored_pages']} "
                              "with no client left")
        if require_activity and stats.get("zswpout", 1) == 0:
            daemon.report()
            raise TestFailure("the daemon stored no page: the test proved nothing")
        return stats

    # --- cleanup ------------------------------------------------------------

    def _orphans(self):
        me = os.getpid()
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2:].split()
            if int(fields[1]) == me:
                found.append(int(entry))
        return found

    def cleanup(self):
        for proc in self.procs:
            if proc.alive():
                log(f"killing {proc.name} (pid {proc.pid}), still running at cleanup")
            proc.kill()
        for proc in self.procs:
            try:
                proc.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                log(f"{proc.name} (pid {proc.pid}) survives SIGKILL (stuck in the kernel?)")
        # Grandchildren re-parented to us (we are a subreaper).
        for _ in range(100):
            orphans = self._orphans()
            if not orphans:
                break
            for pid in orphans:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
            try:
                while os.waitpid(-1, os.WNOHANG)[0] > 0:
                    pass
            except ChildProcessError:
                pass
        else:
            log(f"processes left behind: {self._orphans()}")
        shutil.rmtree(self.tmp, ignore_errors=True)


# --- helpers for the tests ---------------------------------------------------

def write_text_file(path, size, seed):
    """A text-like file of about `size` bytes: words from a small dictionary."""
    words = ("the page fault memory swap zone of and cold hot compress pool entry daemon "
             "to is a in kernel write read back store lru queue batch evict ring with "
             "for that client sort merge").split()
    rng = random.Random(seed)
    with open(path, "w") as f:
        written = 0
        while written < size:
            line_words = rng.choices(words, k=200000)
            block = " ".join(line_words).replace(" a ", "\na ")
            f.write(block)
            f.write("\n")
            written += len(block) + 1


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def lines_mentioning(text):
    return [line for line in text.splitlines() if line.strip()]


# --- the tests ----------------------------------------------------------------
# Each function's docstring says what it verifies; the harness prints it.

def t_threads_8x_budget(h):
    """8 threads doing verified random reads and writes over 8x the resident budget
    (16 MiB budget, 128 MiB region); the daemon ends with no stored page."""
    h.start_daemon(budget="16M")
    h.client("itest-threads", [h.bin("itest-threads"), "128M", "8", "10", "yes"], timeout=120)
    h.wait_daemon_empty()
    h.stop_daemon(require_activity=True)


def _fork_test(h, drop_ptrace):
    h.start_daemon(budget="16M")
    h.client("itest-fork", [h.bin("itest-fork"), "64M", "yes", "no" if drop_ptrace else "yes"],
             timeout=90, drop_ptrace=drop_ptrace)
    h.wait_daemon_empty()
    h.stop_daemon(require_activity=True)


def t_fork_with_ptrace(h):
    """fork with evicted pages, as root with CAP_SYS_PTRACE: parent and child both verify,
    each sees only its own writes."""
    _fork_test(h, drop_ptrace=False)


def t_fork_without_ptrace(h):
    """the same fork test with CAP_SYS_PTRACE dropped (bounding, effective, permitted,
    inheritable) before exec: the fork-event privilege is absent."""
    _fork_test(h, drop_ptrace=True)


def _wait_family_gone(h):
    """Once every process of a fork family has gone: no stored page, and within
    15 s no pool byte and no compressed byte left (every shared reference
    dropped, or given back with the family); nothing lost on the way.  Returns
    the daemon's statistics and their text."""
    h.wait_daemon_empty()
    end = time.monotonic() + 15
    while True:
        stats, text = h.stats()
        if stats.get("pool_total_size", 0) == 0 and stats.get("compressed_bytes", 0) == 0:
            break
        if time.monotonic() > end:
            print(text)
            raise TestFailure(f"pool_total_size {stats.get('pool_total_size')}, compressed_bytes "
                              f"{stats.get('compressed_bytes')} 15 s after every process of "
                              "the family exited: shared references were leaked")
        time.sleep(0.5)
    for key in ("lost_pages", "resident_missing_faults", "swap_checksum_errors"):
        if stats.get(key, 0) != 0:
            print(text)
            raise TestFailure(f"{key} = {stats[key]}")
    return stats, text


def _forkshare(h, scenario, size, budget="16M", timeout=150, pool_max=None):
    """One itest-forkshare scenario; then the daemon's side: forks counted as
    shared (fork_snapshots, fork_shared_pages), nothing lost or served as
    zeros, and once every process has gone no stored page and no pool byte
    left (every reference of every child dropped)."""
    extra = ()
    if pool_max:
        os.makedirs(os.path.join(h.tmp, "cgroup.d"), exist_ok=True)
        extra = _restart_config(h, pool_max=pool_max, swap="512M")
    h.start_daemon(budget=budget, extra=extra)
    argv = [h.bin("itest-forkshare"), scenario, size]
    if scenario == "big":
        argv.append(budget)
    h.client("itest-forkshare", argv, timeout=timeout)
    stats, text = _wait_family_gone(h)
    for key in ("fork_snapshots", "fork_shared_pages"):
        if stats.get(key, 0) == 0:
            print(text)
            raise TestFailure(f"{key} = 0: the fork child did not share its parent's pages")
    log(f"fork_snapshots={stats['fork_snapshots']} fork_shared_pages="
        f"{stats['fork_shared_pages']} evict_shared_pages={stats.get('evict_shared_pages')} "
        f"zswpwb={stats.get('zswpwb')}; pool empty at the end")
    h.stop_daemon(require_activity=True)


def t_forkshare_big(h):
    """fork of a 256 MiB process under a 32 MiB budget with most pages in the pool and
    on disk (pool capped at 24 MiB): the parent's RssAnon stays under budget + 10 %
    through fork(), then parent and child read, rewrite and read every page at once."""
    _forkshare(h, "big", "256M", budget="32M", pool_max="24M", timeout=300)


def t_forkshare_exec(h):
    """4 forks whose child execs /bin/true at once: its references go with the exec."""
    _forkshare(h, "exec", "64M")


def t_forkshare_exit(h):
    """4 forks whose child _exits at once: its references go with it."""
    _forkshare(h, "exit", "64M")


def t_forkshare_bomb(h):
    """32 children forked back to back, each verifying a random sample of the parent's
    evicted pages and writing its own."""
    _forkshare(h, "bomb", "64M", timeout=200)


def t_forkshare_threads(h):
    """4 forks from a parent whose 4 threads fault, verify and rewrite pages all along;
    every child verifies every page as of its fork."""
    _forkshare(h, "threads", "32M", timeout=180)


def t_forkshare_nested(h):
    """child rewrites half, is evicted, forks a grandchild: each of the three sees only
    its own writes over the shared pages."""
    _forkshare(h, "nested", "64M")


def t_forkshare_stacknext(h):
    """fork while two sleeping threads' descriptors are evicted and each thread stack
    is followed by another mapping: every child comes out of fork() alive (glibc
    writes those descriptors in the child before any handler runs) and verifies."""
    _forkshare(h, "stacknext", "32M", budget="8M")


def _second_daemon_client_done(h, client, extra, timeout):
    """Start the daemon that takes over (uzswapd-2) and wait for the client to pass."""
    h.start_daemon(budget="16M", extra=extra, name="uzswapd-2")
    rc = client.wait(timeout)
    client.report()
    if rc != 0:
        raise TestFailure(f"itest-forkshare exited with {rc}")


def t_forkshare_orphan(h):
    """SIGKILL of uzswapd while a fork child holds references to its parent's pages;
    the child exits while no daemon runs, so nobody can drop them.  The next daemon
    takes the parent back, every page verifies, and once the parent has gone the
    pool and compressed_bytes return to 0 (the leaked references end with the
    family) and nothing is lost."""
    os.makedirs(os.path.join(h.tmp, "cgroup.d"), exist_ok=True)
    extra = _restart_config(h, pool_max="16M", swap="256M")
    flag = os.path.join(h.tmp, "child-may-exit")
    h.start_daemon(budget="16M", extra=extra, name="uzswapd-1")
    client = h.spawn("itest-forkshare", [h.bin("itest-forkshare"), "orphan", "64M", flag])
    client.wait_for_output("CHILD READY", 90)
    stats, text = h.stats()
    if stats.get("fork_snapshots", 0) == 0 or stats.get("compressed_bytes", 0) == 0:
        print(text)
        raise TestFailure("the child does not share any stored page with its parent: "
                          "the test would prove nothing")
    log("SIGKILL to uzswapd while the child holds shared references")
    h.daemon.kill()
    h.daemon.wait(10)
    with open(flag, "w"):
        pass
    client.wait_for_output("CHILD GONE", 30)
    time.sleep(0.5)
    _second_daemon_client_done(h, client, extra, 150)
    stats, _ = _wait_family_gone(h)
    if stats.get("recovered_clients", 0) < 1:
        raise TestFailure("the parent did not re-join the second daemon")
    h.stop_daemon()


def t_forkshare_dropafter(h):
    """the parent drops every page (MADV_DONTNEED) right after fork() returns, while
    the daemon is slow to read its socket (UZSWAP_TEST_FORK_DONE_DELAY_MS) and the
    child slow to join (UZSWAP_TEST_FORK_CHILD_HELLO_DELAY_MS): that drop
    came after the fork, so it must not reach the child's snapshot; the child reads
    its parent's data on every page, the parent zeros."""
    h.start_daemon(budget="16M", extra_env={"UZSWAP_TEST_FORK_DONE_DELAY_MS": "300"})
    h.client("itest-forkshare", [h.bin("itest-forkshare"), "dropafter", "64M"], timeout=120,
             extra_env={"UZSWAP_TEST_FORK_CHILD_HELLO_DELAY_MS": "200"})
    _wait_family_gone(h)
    h.stop_daemon(require_activity=True)


def t_forkshare_agentless(h):
    """SIGKILL of uzswapd after it adopted a fork child and before the child's agent
    thread runs (the child's library pauses there, UZSWAP_TEST_FORK_CHILD_PAUSE_MS,
    then touches an evicted page): with no agent nobody would find the next daemon.
    The child's main thread re-joins it itself (libclient/rescue.c); the child
    verifies every page, the parent too, and nothing is lost."""
    os.makedirs(os.path.join(h.tmp, "cgroup.d"), exist_ok=True)
    extra = _restart_config(h, pool_max="16M", swap="256M")
    h.start_daemon(budget="16M", extra=extra, name="uzswapd-1")
    client = h.spawn("itest-forkshare", [h.bin("itest-forkshare"), "agentless", "64M"],
                     extra_env={"UZSWAP_TEST_FORK_CHILD_PAUSE_MS": "3000"})
    # The child's own line: adopted, holes registered, no agent yet (a loaded
    # machine may take longer to get there than the parent to print FORKED).
    client.wait_for_output("fork child paused before its agent starts", 90, stderr=True)
    log("SIGKILL to uzswapd while the child pauses before its agent starts")
    h.daemon.kill()
    h.daemon.wait(10)
    time.sleep(0.5)
    _second_daemon_client_done(h, client, extra, 120)
    if "re-joining from the main thread" not in client.stderr():
        raise TestFailure("the child never needed its rescue: the test proved nothing "
                          "(did the daemon die after the child's agent ran?)")
    stats, _ = _wait_family_gone(h)
    if stats.get("recovered_clients", 0) < 2:
        raise TestFailure(f"recovered_clients = {stats.get('recovered_clients', 0)}: the "
                          "parent and the child should both have re-joined the second daemon")
    h.stop_daemon()


def _vmops(h, scenario):
    h.start_daemon(budget="8M")
    # A bound for a hung client, not a speed test: on a loaded 2-core machine
    # the verify passes over 128 MiB at an 8 MiB budget took over 60 s.
    h.client(f"itest-vmops-{scenario}", [h.bin("itest-vmops"), scenario, "64M", "yes"],
             timeout=150)
    h.wait_daemon_empty()
    h.stop_daemon(require_activity=True)


def t_mremap_move(h):
    """mremap move of a chunk holding evicted pages: data follows, hole reads zeros."""
    _vmops(h, "mremap-move")


def t_mremap_grow(h):
    """mremap grow (moved and in place) of a region holding evicted pages."""
    _vmops(h, "mremap-grow")


def t_mremap_shrink(h):
    """mremap shrink of a region holding evicted pages."""
    _vmops(h, "mremap-shrink")


def t_munmap_partial(h):
    """munmap of part of a region holding evicted pages: the rest still verifies."""
    _vmops(h, "munmap")


def t_dontneed(h):
    """MADV_DONTNEED of evicted pages: they read as zeros, the rest verifies."""
    _vmops(h, "dontneed")


def t_syscalls_read_write(h):
    """read(2) and write(2) whose buffers are evicted pages (file and pipe)."""
    _vmops(h, "syscalls")


def _vmops_slow_agent(h, scenario):
    """An itest-vmops scenario with the agent slowed (UZSWAP_TEST_AGENT_DELAY_US, as a
    preempted one would be), then the daemon's side: nothing counted lost."""
    inject = {"UZSWAP_TEST_AGENT_DELAY_US": "3000", "UZSWAP_MIN_REGION": "4M"}
    h.start_daemon(budget="4M")
    h.client(f"itest-vmops-{scenario}", [h.bin("itest-vmops"), scenario, "16M", "yes"],
             timeout=150, extra_env=inject)
    stats, text = h.stats()
    for key in ("resident_missing_faults", "lost_pages"):
        if stats.get(key, 0):
            print(text)
            raise TestFailure(f"{key} = {stats[key]}")
    h.wait_daemon_empty()
    h.stop_daemon(require_activity=True)


def t_dontneed_race(h):
    """Single pages dropped with MADV_DONTNEED and written again at once, for 8 s,
    while a slow agent (UZSWAP_TEST_AGENT_DELAY_US, as a preempted one would be)
    has eviction batches out.  A dropped victim's address must not be served
    before the agent is done with it: the agent would then move the page just
    written and it would read zeros.  Every page verifies; the daemon counted no
    page it had as present faulting (resident_missing_faults)."""
    _vmops_slow_agent(h, "dontneed-race")


def t_mremap_race(h):
    """A region moved (mremap MREMAP_FIXED) onto the address of one just unmapped,
    over and over for 8 s, while a slow agent (UZSWAP_TEST_AGENT_DELAY_US) has
    eviction batches out: victims of the unmapped region were sent at addresses
    that now hold the moved region's pages, and the agent moves those.  They must
    be stored as the moved region's, not dropped with the unmapped one's: every
    page verifies, and the daemon counted no loss."""
    _vmops_slow_agent(h, "mremap-race")


def t_evict_move_short(h):
    """UFFDIO_MOVE reporting one page fewer than it moved, with EAGAIN (seen
    on 6.18, docs/RELIABILITY.md), injected into every 3rd multi-page move
    of the agent.  First with the agent's reconciliation switched off: the
    page the kernel moved unreported must be lost (the client finds it
    corrupt), which proves the injection fires.  Then with reconciliation,
    as shipped: every page of every pass verifies."""
    # Only the test's region (UZSWAP_MIN_REGION): a page lost on purpose must
    # be one the client verifies, not its heap or stack, where it would crash.
    inject = {"UZSWAP_TEST_MOVE_SHORT": "3", "UZSWAP_MIN_REGION": "4M"}
    h.start_daemon(budget="8M")
    broken = h.client("no-reconcile", [h.bin("itest-loop"), "48M", "2", "4", "yes"],
                      timeout=90, expect_rc=None,
                      extra_env={**inject, "UZSWAP_TEST_NO_RECONCILE": "1"})
    out = broken.stdout() + broken.stderr()
    # A lost page shows as zeros, or as the contents of another page or
    # generation ("page holds ..."), depending on where the slot went.
    if broken.popen.returncode == 0 or not re.search(r"corrupt|zeros|page holds", out):
        raise TestFailure("without reconciliation the injected short moves lost no page: "
                          "the injection did not fire, so the second run proves nothing")
    log("without reconciliation the client saw lost pages, as expected")
    stats, _ = h.stats()
    if stats.get("evict_absent_pages", 0) == 0:
        raise TestFailure("the daemon counted no absent victim (evict_absent_pages = 0) "
                          "although the agent dropped pages it reported not moved")
    h.client("reconciled", [h.bin("itest-loop"), "48M", "2", "6", "yes"], timeout=90,
             extra_env=inject)
    h.wait_daemon_empty()
    h.stop_daemon(require_activity=True)


def _wait_rejoined(h, clients, timeout):
    """Wait until `clients` clients re-joined the new daemon (recovered_clients); its stats."""
    end = time.monotonic() + timeout
    while True:
        stats, text = h.stats()
        if stats.get("recovered_clients", 0) >= clients:
            return stats, text
        if time.monotonic() > end:
            raise TestFailure(f"only {stats.get('recovered_clients', 0)} of {clients} clients "
                              f"re-joined the new daemon within {timeout} s")
        time.sleep(0.2)


def _restart_config(h, pool_max="48M", swap="768M"):
    """A config with a small pool and a swap file of the test's own: pages end up
    in the pool and on disk."""
    path = os.path.join(h.tmp, "uzswapd.conf")
    with open(path, "w") as f:
        f.write(f"[Pool]\nMaxSize={pool_max}\n[Swap]\nFile={h.tmp}/swapfile\nSize={swap}\n")
    return ["--config", path, "--cgroup-dir", os.path.join(h.tmp, "cgroup.d")]


def t_daemon_killed_restart(h):
    """SIGKILL of uzswapd while 4 clients (2 threads each) hold evicted pages in the pool
    and on disk, twice; a new uzswapd on the same socket each time.  Every client
    re-joins by itself, and every page of every pass verifies: nothing lost, nothing
    poisoned, no page read as zeros."""
    os.makedirs(os.path.join(h.tmp, "cgroup.d"), exist_ok=True)
    extra = _restart_config(h)
    h.start_daemon(budget="16M", extra=extra, name="uzswapd-1")
    clients = [h.spawn(f"client{i}", [h.bin("itest-loop"), "128M", "2", "30", "yes"])
               for i in range(4)]
    for c in clients:
        c.wait_for_output("READY", 90)
    # READY comes after each client's fill; the daemon may still be evicting
    # and writing back the last of it: give it up to 20 s to hold them.
    end = time.monotonic() + 20
    while True:
        stats, _ = h.stats()
        held = stats["stored_pages"] + stats.get("on_disk_pages", 0)
        if (held >= 100000 and stats.get("on_disk_pages", 0) > 0) or time.monotonic() > end:
            break
        time.sleep(0.2)
    log(f"before the first kill: stored {stats['stored_pages']}, on disk "
        f"{stats.get('on_disk_pages', 0)}, zswpwb {stats.get('zswpwb', 0)}")
    if held < 100000 or stats.get("on_disk_pages", 0) == 0:
        raise TestFailure(f"the clients hold {held} evicted pages ({stats.get('on_disk_pages', 0)} "
                          "on disk): fewer than 100000, or none on disk; the test would prove little")
    recovered = 0
    for round_ in (1, 2):
        log(f"SIGKILL to uzswapd (round {round_})")
        h.daemon.kill()
        h.daemon.wait(10)
        time.sleep(0.5)
        for c in clients:
            if not c.alive():
                c.report()
                raise TestFailure(f"{c.name} exited ({c.popen.returncode}) with no daemon")
        h.start_daemon(budget="16M", extra=extra, name=f"uzswapd-{round_ + 1}")
        stats, _ = _wait_rejoined(h, 4, 60)
        recovered += stats.get("recovered_pages", 0)
        log(f"round {round_}: 4 clients re-joined, {stats.get('recovered_pages', 0)} pages "
            f"taken back, {stats.get('lost_pages', 0)} lost")
        if stats.get("lost_pages", 0):
            raise TestFailure(f"{stats['lost_pages']} pages were lost across the restart")
        time.sleep(3)
    for c in clients:
        rc = c.wait(120)
        c.report()
        if rc != 0:
            raise TestFailure(f"{c.name} exited with {rc} after the restarts")
    stats, _ = h.stats()
    for key in ("lost_pages", "resident_missing_faults", "decompress_fail"):
        if stats.get(key, 0):
            raise TestFailure(f"{key} = {stats[key]} after the restarts")
    h.wait_daemon_empty()
    h.stop_daemon()


def t_daemon_handover(h):
    """SIGUSR2: uzswapd hands over (an upgrade): it exits 75 without giving any page back,
    the clients keep their evicted pages where they are (pool and disk) and re-join the
    next uzswapd, which takes them back; every page verifies."""
    os.makedirs(os.path.join(h.tmp, "cgroup.d"), exist_ok=True)
    extra = _restart_config(h, pool_max="16M", swap="256M")
    h.start_daemon(budget="16M", extra=extra, name="uzswapd-1")
    clients = [h.spawn(f"client{i}", [h.bin("itest-loop"), "64M", "2", "15", "yes"])
               for i in range(2)]
    for c in clients:
        c.wait_for_output("READY", 60)
    before, _ = h.stats()
    held = before["stored_pages"] + before.get("on_disk_pages", 0)
    log(f"before the handover: stored {before['stored_pages']}, on disk "
        f"{before.get('on_disk_pages', 0)}")
    h.daemon.popen.send_signal(signal.SIGUSR2)
    rc = h.daemon.wait(30)
    if rc != 75:
        h.daemon.report()
        raise TestFailure(f"uzswapd exited {rc} on SIGUSR2, expected 75 (handed over)")
    if "handing over" not in h.daemon.stderr():
        raise TestFailure("uzswapd did not say it was handing over")
    for c in clients:
        if not c.alive():
            c.report()
            raise TestFailure(f"{c.name} exited ({c.popen.returncode}) at the handover")
    h.start_daemon(budget="16M", extra=extra, name="uzswapd-2")
    stats, _ = _wait_rejoined(h, 2, 30)
    log(f"after the handover: {stats.get('recovered_pages', 0)} pages taken back, "
        f"{stats.get('lost_pages', 0)} lost, zswpin {stats.get('zswpin', 0)}")
    if stats.get("lost_pages", 0):
        raise TestFailure(f"{stats['lost_pages']} pages lost at the handover")
    if stats.get("recovered_pages", 0) < held * 9 // 10:
        raise TestFailure(f"only {stats.get('recovered_pages', 0)} of the {held} evicted pages "
                          "were handed over: the old daemon gave pages back")
    for c in clients:
        rc = c.wait(90)
        c.report()
        if rc != 0:
            raise TestFailure(f"{c.name} exited with {rc} after the handover")
    h.wait_daemon_empty()
    h.stop_daemon()


def t_daemon_never_returns(h):
    """SIGKILL of uzswapd and no new one: after UZSWAP_RECONNECT_TIMEOUT (2 s here) the
    client fails closed -- a notice, then SIGBUS on the first evicted page it touches,
    never a page read as zeros."""
    h.start_daemon(budget="8M", extra=("--swap-size", "0"))
    client = h.spawn("client", [h.bin("itest-loop"), "48M", "2", "20", "yes"],
                     extra_env={"UZSWAP_RECONNECT_TIMEOUT": "2"})
    client.wait_for_output("READY", 60)
    h.daemon.kill()
    h.daemon.wait(10)
    rc = client.wait(60)
    client.report()
    if re.search(r"page reads as zeros|corrupt|FAIL", client.stdout() + client.stderr()):
        raise TestFailure("the client read a lost page as zeros or corrupt data")
    if "poisoned" not in client.stderr() or "lost uzswapd" not in client.stderr():
        raise TestFailure("the client did not say it lost the daemon and failed closed")
    if rc != -signal.SIGBUS:
        raise TestFailure(f"the client exited with {rc}, expected death by SIGBUS on a "
                          "lost page")


def _chaos_daemon_clean(h, kills):
    """The running daemon's own count of losses must be 0: lost_pages (not taken
    back at a restart), resident_missing_faults (a page it believed present was
    not), decompress_fail."""
    try:
        stats, text = h.stats()
    except Exception as e:  # the daemon may be starting: nothing to read yet
        log(f"no statistics from uzswapd-{kills}: {e}")
        return
    bad = {k: stats.get(k, 0) for k in ("lost_pages", "resident_missing_faults",
                                        "decompress_fail") if stats.get(k, 0)}
    if bad:
        print(text)
        time.sleep(2)  # its main loop logs the first page of each kind once a second
        raise TestFailure(f"uzswapd-{kills} counted {bad}: pages were lost")


def t_chaos(h):
    """Chaos: 3 clients (3 threads each, mremap, MADV_DONTNEED, munmap+mmap and fork
    under them; budgets far below their footprint, writeback on) while uzswapd is
    SIGKILLed at random moments and started again, at least CHAOS_KILLS times (10)
    within CHAOS_SECONDS (100), with CHAOS_UNIT as --compression-unit if set.  Every
    page every client reads verifies; after the clients exit, the pool and the swap
    accounting are back to zero."""
    kills_wanted = int(os.environ.get("CHAOS_KILLS", "10"))
    seconds = int(os.environ.get("CHAOS_SECONDS", "100"))
    rng = random.Random(int(os.environ.get("CHAOS_SEED", str(os.getpid()))))
    os.makedirs(os.path.join(h.tmp, "cgroup.d"), exist_ok=True)
    extra = _restart_config(h, pool_max="16M", swap="512M")
    if os.environ.get("CHAOS_UNIT"):
        extra += ["--compression-unit", os.environ["CHAOS_UNIT"]]
    h.start_daemon(budget="8M", extra=extra, name="uzswapd-0")
    client_seconds = seconds - 15
    clients = [h.spawn(f"chaos{i}", [h.bin("itest-chaos"), "40M", "3", str(client_seconds),
                                     "yes", str(rng.randrange(1 << 30))])
               for i in range(3)]
    for c in clients:
        c.wait_for_output("READY", 60)
    kills = 0
    end = time.monotonic() + client_seconds - 5
    while time.monotonic() < end or kills < kills_wanted:
        if time.monotonic() > end + 30:
            raise TestFailure(f"only {kills} of {kills_wanted} kills in time")
        time.sleep(rng.uniform(0.1, 2.0 * client_seconds / max(kills_wanted, 1) * 0.8))
        for c in clients:
            if not c.alive() and c.popen.returncode != 0:
                c.report()
                _chaos_daemon_clean(h, kills)
                raise TestFailure(f"{c.name} failed ({c.popen.returncode}) after {kills} kills")
        # What this daemon saw before it dies: a page it had to serve as
        # zeros, or could not take back, is a loss even if no client read it.
        _chaos_daemon_clean(h, kills)
        h.daemon.kill()
        h.daemon.wait(10)
        kills += 1
        time.sleep(rng.uniform(0.0, 0.8))
        h.start_daemon(budget="8M", extra=extra, name=f"uzswapd-{kills}")
        if all(not c.alive() for c in clients):
            break
    log(f"{kills} kills of uzswapd")
    for c in clients:
        rc = c.wait(client_seconds + 120)
        c.report()
        if rc != 0:
            raise TestFailure(f"{c.name} exited with {rc} after {kills} kills of the daemon")
    stats = h.wait_daemon_empty(timeout=30)
    # A family's pool goes with its last reference, which a fork snapshot may hold
    # until the thread's next sweep (every 200 ms): the pool is given a while to go.
    end = time.monotonic() + 30
    keys = ("on_disk_pages", "swap_bytes_on_disk", "compressed_bytes", "pool_total_size",
            "resident_missing_faults")
    while any(stats.get(key, 0) for key in keys) and time.monotonic() < end:
        time.sleep(0.5)
        stats, _ = h.stats()
    for key in keys:
        if stats.get(key, 0):
            raise TestFailure(f"{key} = {stats[key]} 30 s after every client exited")
    h.stop_daemon()


def t_client_killed(h):
    """clients SIGKILLed in the middle of faults (and of their first fill): the daemon
    survives, serves another client correctly, and holds no page afterwards."""
    h.start_daemon(budget="16M")
    victim = h.spawn("victim", [h.bin("itest-loop"), "64M", "4", "120", "yes"])
    victim.wait_for_output("READY", 40)
    time.sleep(1.5)
    h.daemon_alive()
    log("SIGKILL to the victim while its 4 threads fault")
    victim.kill()
    victim.wait(10)
    early = h.spawn("early-victim", [h.bin("itest-loop"), "64M", "4", "120", "any"])
    time.sleep(0.4)
    log("SIGKILL to a second victim during its first fill")
    early.kill()
    early.wait(10)
    time.sleep(0.5)
    h.daemon_alive()
    h.client("survivor", [h.bin("itest-loop"), "64M", "4", "5", "yes"], timeout=60)
    h.wait_daemon_empty()
    h.stop_daemon(require_activity=True)


def t_daemon_stopped(h):
    """SIGTERM to the daemon while two clients fault: it exits cleanly, having given every
    page back, and the clients go on to verify every page."""
    h.start_daemon(budget="16M")
    clients = [h.spawn(f"client{i}", [h.bin("itest-loop"), "64M", "4", "12", "yes"])
               for i in range(2)]
    for c in clients:
        c.wait_for_output("READY", 40)
    time.sleep(1)
    t0 = time.monotonic()
    h.stop_daemon(check_empty=False)
    log(f"uzswapd stopped in {time.monotonic() - t0:.1f} s")
    for c in clients:
        if not c.alive():
            c.report()
            raise TestFailure(f"{c.name} exited (status {c.popen.returncode}) while the "
                              "daemon stopped")
    for c in clients:
        rc = c.wait(60)
        c.report()
        if rc != 0:
            raise TestFailure(f"{c.name} exited with {rc} after the daemon stopped")


def t_client_before_daemon(h):
    """a client started before the daemon runs correctly (unmanaged is acceptable), says at
    most one line on stderr; a client started after the daemon is managed."""
    early = h.spawn("early-client", [h.bin("itest-loop"), "64M", "2", "6", "any"])
    time.sleep(1)
    h.start_daemon(budget="16M")
    rc = early.wait(60)
    early.report()
    if rc != 0:
        raise TestFailure(f"early client exited with {rc}")
    if len(lines_mentioning(early.stderr())) > 1:
        raise TestFailure("early client printed more than one line on stderr")
    h.client("late-client", [h.bin("itest-loop"), "64M", "2", "2", "yes"], timeout=60)
    h.wait_daemon_empty()
    h.stop_daemon(require_activity=True)


def t_no_daemon(h):
    """no daemon at all: clients (threads, fork) run correctly, unmanaged, and libuzswap
    prints exactly one line on stderr."""
    missing = os.path.join(h.tmp, "no-such-daemon.sock")
    for name, argv in (("loop", [h.bin("itest-loop"), "64M", "2", "3", "no"]),
                       ("fork", [h.bin("itest-fork"), "32M", "no", "any"])):
        proc = h.client(name, argv, timeout=60, socket_path=missing)
        lines = lines_mentioning(proc.stderr())
        if len(lines) != 1:
            raise TestFailure(f"{name}: expected exactly one line on stderr, got {len(lines)}")


def t_many_vmas(h):
    """3000 mappings of 16 pages made with the raw mmap system call (the hooks never see
    them) and 64 MiB of brk heap grown after join: the library's scan registers every one
    (REGISTER_BATCH), pages are evicted, and every page verifies."""
    h.start_daemon(budget="16M")
    h.client("itest-vmas", [h.bin("itest-vmas"), "3000", "16"], timeout=90)
    h.wait_daemon_empty()
    h.stop_daemon(require_activity=True)


def t_example_workload(h):
    """examples/uzswap-workload (the quick-start workload) under LD_PRELOAD with a budget
    far below its footprint verifies all its data."""
    path = os.path.abspath(os.environ.get("EXAMPLE_WORKLOAD", ""))
    if not os.environ.get("EXAMPLE_WORKLOAD"):
        raise TestFailure("EXAMPLE_WORKLOAD not set (examples/ not built?)")
    h.start_daemon(budget="32M")
    proc = h.client("workload", [path, "--size", "128M"], timeout=90)
    if "verified" not in proc.stdout():
        raise TestFailure("the workload did not report verified data")
    h.wait_daemon_empty()
    h.stop_daemon(require_activity=True)


def t_example_api(h):
    """examples/uzswap-api-example (linked, no LD_PRELOAD): register, hints, stats."""
    path = os.path.abspath(os.environ.get("EXAMPLE_API", ""))
    if not os.environ.get("EXAMPLE_API"):
        raise TestFailure("EXAMPLE_API not set (examples/ not built?)")
    h.start_daemon(budget="16M")
    h.client("api-example", [path], timeout=45, preload=False)
    h.wait_daemon_empty()
    h.stop_daemon()


def _debian_program(h, name, argv, budget, outputs, timeout, extra_env=None):
    """Run argv unmanaged for reference output, then under LD_PRELOAD; compare outputs."""
    def run(tag, preload):
        for out in outputs:
            if os.path.exists(out):
                os.unlink(out)
        p = h.client(f"{name}-{tag}", argv, timeout=timeout, preload=preload,
                     extra_env=extra_env)
        digests = [sha256_file(o) for o in outputs]
        for out in outputs:
            os.rename(out, f"{out}.{tag}")
        return p, digests

    tool = shutil.which(argv[0])
    if not tool:
        raise TestSkip(f"{argv[0]} is not installed")
    argv[0] = tool
    _, reference = run("reference", False)
    h.start_daemon(budget=budget)
    t0 = time.monotonic()
    _, managed = run("uzswap", True)
    log(f"{name} under uzswap took {time.monotonic() - t0:.1f} s")
    stats, _ = h.stats()
    log(f"daemon after {name}: {h._brief(stats)}")
    if reference != managed:
        raise TestFailure(f"{name}: output under uzswap differs from the reference run")
    log(f"{name}: output identical to the reference run ({reference[0][:16]}...)")
    h.wait_daemon_empty()
    h.stop_daemon(require_activity=True)


def t_debian_sort(h):
    """GNU sort (LC_ALL=C, -S 400M, 2 threads) of a generated 200 MB file of 1 KiB text
    lines under LD_PRELOAD with a 96 MiB budget: output identical to sort's without
    uzswap."""
    data = os.path.join(h.tmp, "input.txt")
    words = ("the page fault memory swap zone of and cold hot compress pool entry daemon "
             "to is a in kernel write read back store lru queue batch evict ring").split()
    rng = random.Random(7)
    fillers = [" ".join(rng.choices(words, k=250))[:1000] for _ in range(256)]
    with open(data, "w") as f:
        for _ in range(200 * 1024 * 1024 // 1018):
            f.write(f"{rng.getrandbits(64):016x} {fillers[rng.getrandbits(8)]}\n")
    out = os.path.join(h.tmp, "sorted.txt")
    _debian_program(h, "sort", ["sort", "-S", "400M", "--parallel=2", "-T", h.tmp, "-o", out,
                                data], "96M", [out], timeout=150, extra_env={"LC_ALL": "C"})


PYTHON_WORKLOAD = r"""
import hashlib, sys
items = [str(i * 7919 % 10000019) for i in range(1000000)]
items.sort()
blob = bytearray("\n".join(items).encode()) * 28
for i in range(0, len(blob), 4097):
    blob[i] = (blob[i] + i) & 0xff
table = {i: i * i for i in range(300000)}
h = hashlib.sha256(blob)
h.update(repr(sum(table.values())).encode())
with open(sys.argv[1], "w") as f:
    print(len(blob), h.hexdigest(), file=f)
"""


def t_debian_python3(h):
    """Debian's python3 -c sorting a 1M-entry list of strings, building a ~220 MB bytearray
    and a dict, hashing them, under LD_PRELOAD with a 96 MiB budget (all of its anonymous
    memory is managed, its heap included, about 400 MB): same digest as without uzswap."""
    out = os.path.join(h.tmp, "python.out")
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else "python3"
    _debian_program(h, "python3", [python, "-c", PYTHON_WORKLOAD, out], "96M", [out],
                    timeout=150)


def t_debian_xz(h):
    """xz with a 64 MiB dictionary (about 200 MB resident without uzswap) compressing a
    48 MB text file, then xz -d of the result, both under LD_PRELOAD with a 16 MiB budget:
    the archive is identical to the reference run's, and decompression gives back the
    input."""
    data = os.path.join(h.tmp, "input.txt")
    write_text_file(data, 48 << 20, seed=3)
    packed = os.path.join(h.tmp, "input.txt.xz")
    _debian_program(h, "xz", ["xz", "--lzma2=preset=1,dict=64MiB", "-T1", "-k", "-f", data],
                    "16M", [packed], timeout=120)
    # Decompress the reference archive under uzswap and compare with the input.
    shutil.copy(f"{packed}.reference", packed)
    original = sha256_file(data)
    os.rename(data, f"{data}.orig")
    h.start_daemon(budget="16M")
    h.client("xz-decompress", [shutil.which("xz"), "-d", "-T1", packed], timeout=120)
    if sha256_file(data) != original:
        raise TestFailure("xz -d under uzswap did not give back the input")
    log("xz -d under uzswap gave back the input exactly")
    h.wait_daemon_empty()
    h.stop_daemon(require_activity=True)


def _faultaround(h, pattern, passes, window):
    """One itest-around run under a 16 MiB budget over 64 MiB; returns the daemon's
    counters (global, after the client exited) and the client's own figures."""
    h.start_daemon(budget="16M", extra=("--fault-around", str(window)))
    proc = h.client("itest-around", [h.bin("itest-around"), "64M", pattern, str(passes), "yes"],
                    timeout=150)
    figures = dict(line.split() for line in proc.stdout().splitlines()
                   if len(line.split()) == 2 and line.split()[1].isdigit())
    stats = h.wait_daemon_empty()
    h.stop_daemon(require_activity=True)
    pages, hits, zswpin = (stats.get(k, 0) for k in ("faultaround_pages", "faultaround_hits",
                                                       "zswpin"))
    log(f"{pattern}, window {window}: zswpin {zswpin}, faultaround_pages {pages}, "
        f"faultaround_hits {hits}, absent accesses {figures.get('absent_accesses')}")
    if "faultaround_pages" not in stats or "faultaround_hits" not in stats:
        raise TestFailure("uzswapctl stats --json has no faultaround_pages/faultaround_hits")
    if hits > pages:
        raise TestFailure(f"faultaround_hits {hits} > faultaround_pages {pages}")
    return stats, figures


IDLE_WORKLOAD = r"""
import hashlib, os, sys, time
size = 48 << 20
blob = bytearray(size)
for i in range(0, size, 4096):
    blob[i:i + 64] = (b"%016d" % i) * 4
digest = hashlib.sha256(blob).hexdigest()
with open(sys.argv[1] + ".tmp", "w") as f:
    print(digest, file=f)
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
while not os.path.exists(sys.argv[2]):  # the test says when to go on
    time.sleep(0.05)
if hashlib.sha256(blob).hexdigest() != digest:
    sys.exit("python3: the data changed while it slept")
"""


def _cpu_seconds(pid):
    """utime + stime of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def t_idle_daemon_cpu(h):
    """An idle daemon takes no CPU, spinning on (the default, UZSWAPD_FAULT_SPIN_USEC up to
    1000 us): python3 fills 48 MiB under a 16 MiB budget and waits, joined; once the daemon
    has pages of it stored and its figures stop moving, the daemon may use at most 0.3 s of
    CPU over 3 s (a spin left running would take up to 3 s).  Then python3 reads everything
    back and checks its digest."""
    h.start_daemon(budget="16M")
    ready, go = os.path.join(h.tmp, "idle.ready"), os.path.join(h.tmp, "idle.go")
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else "python3"
    proc = h.spawn("python3-idle", [python, "-c", IDLE_WORKLOAD, ready, go])
    end = time.monotonic() + 90
    last = None
    while True:
        if not proc.alive():
            proc.report()
            raise TestFailure(f"python3 exited ({proc.popen.returncode}) before it was ready")
        if time.monotonic() > end:
            raise TestFailure(f"python3 was not filled and settled within 90 s: {last}")
        row = h.client_figures(proc.pid) if os.path.exists(ready) else None
        figures = row and (row["stored_pages"], row["resident_bytes"], row["zswpout"])
        if figures and figures[0] and figures == last:
            break
        last = figures
        time.sleep(0.5)
    before = _cpu_seconds(h.daemon.pid)
    time.sleep(3)
    used = _cpu_seconds(h.daemon.pid) - before
    log(f"daemon CPU over 3 s of an idle client: {used:.2f} s ({last[0]} pages stored)")
    with open(go, "w"):
        pass
    rc = proc.wait(60)
    proc.report()
    if rc != 0:
        raise TestFailure(f"python3 exited {rc}")
    if used > 0.3:
        raise TestFailure(f"the daemon used {used:.2f} s of CPU in 3 s with its only "
                          "client asleep")
    h.wait_daemon_empty()
    h.stop_daemon(require_activity=True)


def _check_scan_faultaround(stats, figures, what):
    """What fault-around must do on a scan: put pages back ahead, have >= 70% of them used,
    and leave fewer absent accesses than a quarter of the pages read back from the pool
    (about 1/30 here; a window stuck open the wrong way left 1/3)."""
    pages, hits = stats["faultaround_pages"], stats["faultaround_hits"]
    if pages == 0 or hits == 0:
        raise TestFailure(f"{what}: faultaround_pages {pages}, hits {hits}: "
                          "fault-around never worked")
    if hits < 0.7 * pages:
        raise TestFailure(f"{what}: only {hits} of {pages} pages put back ahead used")
    absent = int(figures["absent_accesses"])
    if absent * 4 > stats["zswpin"]:
        raise TestFailure(f"{what}: {absent} absent accesses for {stats['zswpin']} "
                          "pages read back: fault-around saved less than 3/4 of the faults")


def t_faultaround_sequential(h):
    """fault-around on sequential scans: 64 MiB read back 3 times (and partly rewritten)
    under a 16 MiB budget, every read checked by checksum and pattern; faultaround_pages
    and faultaround_hits > 0, hits >= 70% of pages, fewer absent accesses than a quarter
    of the pages read back from the pool."""
    stats, figures = _faultaround(h, "sequential", 3, 32)
    _check_scan_faultaround(stats, figures, "sequential scans")


def t_faultaround_strided(h):
    """fault-around on strided scans: 64 MiB read back twice with a stride of 4 pages (every
    4th page, then shifted by one; partly rewritten) under a 16 MiB budget, every read checked
    by checksum and pattern; the window finds the stride: hits >= 70% of the pages put back
    ahead, and fewer absent accesses than a quarter of the pages read back from the pool."""
    stats, figures = _faultaround(h, "strided", 2, 32)
    _check_scan_faultaround(stats, figures, "strided scans")


def t_faultaround_descending(h):
    """fault-around on scans from the last page down: 64 MiB read back twice in descending
    page order (partly rewritten) under a 16 MiB budget, every read checked by checksum and
    pattern; the window opens downward: hits >= 70% of the pages put back ahead, and fewer
    absent accesses than a quarter of the pages read back from the pool.  (Then the final
    pass goes up: the window must turn round.)"""
    stats, figures = _faultaround(h, "descending", 2, 32)
    _check_scan_faultaround(stats, figures, "descending scans")


def t_faultaround_random(h):
    """fault-around on random access: 64 MiB, 3 passes' worth of uniform reads and writes
    under a 16 MiB budget, every read checked by checksum and pattern; the window stays
    shut: pages put back ahead are under 10% of the pages read back."""
    stats, _ = _faultaround(h, "random", 3, 32)
    if stats["faultaround_pages"] > 0.1 * stats["zswpin"]:
        raise TestFailure(f"random access: {stats['faultaround_pages']} pages put back ahead "
                          f"for {stats['zswpin']} read back: the window did not close")


def t_faultaround_off(h):
    """--fault-around 0: the sequential scans of faultaround-sequential, every read checked,
    and not one page put back ahead."""
    stats, _ = _faultaround(h, "sequential", 2, 0)
    if stats["faultaround_pages"] or stats["faultaround_hits"]:
        raise TestFailure(f"fault-around off: faultaround_pages {stats['faultaround_pages']}, "
                          f"hits {stats['faultaround_hits']}")


# --- multi-page compression units (itest-units) ------------------------------
# 4 adjacent pages, aligned to 4 in vpn, compressed as one pool object when
# they fit (docs/PERFORMANCE.md).  The client prints "STEP NAME" and waits for
# a line on stdin; at each step the test reads the daemon's unit figures.

UNIT_KEYS = ("unit_pages", "unit_stores", "unit_restored_pages", "unit_split_pages")


def _units_option(h, pages):
    """--compression-unit PAGES, or () with a warning if this uzswapd has no such
    option (the unit checks then fail and say why)."""
    r = subprocess.run([h.uzswapd, "--help"], capture_output=True, text=True, timeout=10)
    if "--compression-unit" in r.stdout + r.stderr:
        return ("--compression-unit", str(pages))
    log("this uzswapd has no --compression-unit option: started without it")
    return ()


def _units_config(h, unit=None, pool_max=None, swap="256M", writeback=True):
    """A main config of the test's own ([Defaults] CompressionUnit= when unit is set,
    [Pool] MaxSize= when pool_max is) with a swap file in the temp dir; the
    daemon's --config and --cgroup-dir arguments."""
    os.makedirs(os.path.join(h.tmp, "cgroup.d"), exist_ok=True)
    path = os.path.join(h.tmp, "uzswapd.conf")
    with open(path, "w") as f:
        if pool_max:
            f.write(f"[Pool]\nMaxSize={pool_max}\n")
        f.write(f"[Swap]\nFile={h.tmp}/swapfile\nSize={swap}\n")
        f.write(f"[Defaults]\nWriteback={'yes' if writeback else 'no'}\n")
        if unit is not None:
            f.write(f"CompressionUnit={unit}\n")
    return ["--config", path, "--cgroup-dir", os.path.join(h.tmp, "cgroup.d")]


def _units_client(h, mode, data, size="64M", extra_env=None):
    return h.spawn(f"itest-units-{mode}", [h.bin("itest-units"), mode, size, data, "yes"],
                   stdin_pipe=True, extra_env=extra_env)


def _units_step(proc, name, timeout=120):
    """Wait until the client is at STEP name (it then waits for us)."""
    proc.wait_for_output(f"STEP {name}\n", timeout)
    log(f"client at step {name}")


def _units_go(proc):
    try:
        proc.popen.stdin.write(b"go\n")
        proc.popen.stdin.flush()
    except BrokenPipeError:
        proc.report()
        raise TestFailure(f"{proc.name} exited ({proc.popen.poll()}) while at a step")


def _units_figures(h, proc, when):
    """Global statistics (with the unit figures, which must be there) and the
    client's own row of `uzswapctl clients` (None when it has no unit figures)."""
    stats, text = h.stats()
    missing = [k for k in UNIT_KEYS if k not in stats]
    if missing:
        print(text)
        raise TestFailure(f"{when}: uzswapctl stats --json has no {', '.join(missing)}: "
                          "this uzswapd does not know compression units")
    # The client's own figures: those of its cgroup (uzswapctl stats --cgroup),
    # where it is the only managed process.
    row = None
    client = h.client_figures(proc.pid) if proc and proc.alive() else None
    if client and client.get("cgroup"):
        blocks = h.ctl_json("stats", "--cgroup", client["cgroup"]).get("cgroups", [])
        if blocks:
            row = {**blocks[0].get("counters", {}), **blocks[0].get("gauges", {})}
    if row is not None and not all(k in row for k in UNIT_KEYS):
        print(text)
        raise TestFailure(f"{when}: the client's cgroup statistics have no unit figures")
    log(f"{when}: " + ", ".join(f"{k}={stats.get(k)}" for k in
                                (*UNIT_KEYS, "stored_pages", "on_disk_pages", "zswpout",
                                 "zswpin", "faultaround_pages", "same_filled_pages")) +
        (f"; the client's cgroup: unit_pages={row['unit_pages']} "
         f"unit_stores={row['unit_stores']} stored_pages={row.get('stored_pages')}"
         if row else "; no figures of the client's own"))
    return stats, row, text


def _units_require(cond, what, text=None):
    if not cond:
        if text:
            print(text)
        raise TestFailure(what)


def _units_held(h, proc, when, min_fraction=0.25):
    """Units are stored and make up a fair part of what is stored: the figures at
    a step where the client's pages are evicted and it touches nothing."""
    stats, row, text = _units_figures(h, proc, when)
    _units_require(stats["unit_stores"] > 0, f"{when}: unit_stores = 0: no unit was formed",
                   text)
    _units_require(stats["unit_pages"] > 0,
                   f"{when}: unit_pages = 0 with {stats.get('stored_pages')} pages stored",
                   text)
    _units_require(stats["unit_pages"] <= stats["stored_pages"],
                   f"{when}: unit_pages {stats['unit_pages']} > stored_pages "
                   f"{stats['stored_pages']}", text)
    _units_require(stats["unit_pages"] >= min_fraction * stats["stored_pages"],
                   f"{when}: only {stats['unit_pages']} of {stats['stored_pages']} stored "
                   f"pages are unit members (less than {min_fraction:.0%}) although the "
                   "client filled its pages in order with data that compresses far "
                   "beyond 4:1", text)
    if row is not None:
        _units_require(row["unit_pages"] > 0 and row["unit_stores"] > 0,
                       f"{when}: global unit figures > 0 but the client's cgroup says "
                       f"unit_pages={row['unit_pages']} unit_stores={row['unit_stores']}",
                       text)
    return stats


def _units_restored(h, proc, when, since=None):
    """Faults on unit members put back their units' other pages (since the figures
    `since`, when given: in the phase that ends now)."""
    stats, row, text = _units_figures(h, proc, when)
    before = since["unit_restored_pages"] if since else 0
    _units_require(stats["unit_restored_pages"] > before,
                   f"{when}: unit_restored_pages {stats['unit_restored_pages']} (was {before}): "
                   "no fault put back a unit's other pages", text)
    _units_require(stats["unit_restored_pages"] <= stats["zswpin"],
                   f"{when}: unit_restored_pages {stats['unit_restored_pages']} > zswpin "
                   f"{stats['zswpin']} (they are counted in zswpin too)", text)
    return stats


def _units_none(h, proc, when):
    """No unit at all: unit_stores, unit_pages and unit_restored_pages are 0 while pages
    are stored."""
    stats, _, text = _units_figures(h, proc, when)
    _units_require(stats["stored_pages"] + stats.get("on_disk_pages", 0) > 0 or
                   stats["zswpout"] > 0, f"{when}: nothing stored: the test proves nothing",
                   text)
    for key in ("unit_stores", "unit_pages", "unit_restored_pages", "unit_split_pages"):
        _units_require(stats[key] == 0, f"{when}: {key} = {stats[key]}, expected 0", text)
    return stats


def _units_few(h, proc, when, fraction=0.01):
    """Next to no unit: pages stored, and the pages that went into units (4 per unit
    stored) at most `fraction` of them.  The client's own memory besides its test region
    (its tables, heap, stacks) is managed too and compresses well: a few units of it may
    form however incompressible the region's data is."""
    stats, _, text = _units_figures(h, proc, when)
    _units_require(stats["zswpout"] > 0, f"{when}: nothing stored: the test proves nothing",
                   text)
    _units_require(stats["unit_stores"] * 4 <= fraction * stats["zswpout"],
                   f"{when}: {stats['unit_stores']} units stored for {stats['zswpout']} pages "
                   f"stored, more than {fraction:.0%} of them in units", text)
    return stats


def _units_finish(h, proc, timeout=150):
    """The client's last step passed: let it end, then the daemon ends empty (no
    stored page, no pool byte, no unit member, nothing lost)."""
    _units_go(proc)
    rc = proc.wait(timeout)
    proc.report()
    if rc != 0 or "PASS" not in proc.stdout():
        raise TestFailure(f"{proc.name} exited with {rc}")
    stats, text = _wait_family_gone(h)
    for key in ("unit_pages", "on_disk_pages", "decompress_fail"):
        if stats.get(key, 0) != 0:
            print(text)
            raise TestFailure(f"{key} = {stats[key]} after the client exited")
    h.stop_daemon(require_activity=True)
    return stats


def t_units_basic(h):
    """multi-page units: 64 MiB of text-like pages (a per-page header, then a phrase
    repeated: 4 pages compress far beyond 4:1) under a 16 MiB budget, --compression-unit 4.
    Once evicted, units are stored (unit_stores > 0, unit_pages > 0 and at least a
    quarter of the stored pages); then a pass in page order, random reads and writes,
    a pass in page order and one with a stride, every read checked by checksum and
    pattern; faults put units back (unit_restored_pages > 0, <= zswpin); at the end no
    stored page, no pool byte and no unit member is left."""
    h.start_daemon(budget="16M", extra=_units_option(h, 4))
    _units_evict_and_read(h, "basic", "reread", "after the re-reads")


def t_units_vmops(h):
    """multi-page units and VM operations: with every page of the units concerned evicted
    (units held: unit_pages > 0), munmap of member 1 (and of members 1-2) of units, fresh
    memory mapped into some holes before the unit faults, MADV_DONTNEED of members 0, 2
    and 3, mremap of 16 whole units to an aligned address and of 29 pages from mid-unit
    to an address one page past alignment; the members left are read first, then the
    pages that left read as zeros, fresh memory reads zeros, moved pages verify at their
    new address, every page verifies (unit_restored_pages > 0); every page is rewritten,
    evicted and verified again."""
    _units_vmops(h, around=None)


def t_units_vmops_noaround(h):
    """units-vmops with --fault-around 0: every page a fault puts back beside the one
    faulted is its unit's (the paths of a unit that lost members, unmixed with
    fault-around runs)."""
    _units_vmops(h, around=0)


def _units_evict_and_read(h, mode, step, when, timeout=120):
    """The itest-units client in `mode` on text-like pages: evicted with units held, then
    its reads up to `step` put units back (unit_restored_pages grew); it ends clean."""
    proc = _units_client(h, mode, "text")
    _units_step(proc, "evicted")
    before = _units_held(h, proc, "evicted")
    _units_go(proc)
    _units_step(proc, step, timeout=timeout)
    _units_restored(h, proc, when, since=before)
    _units_finish(h, proc)


def _units_vmops(h, around):
    extra = _units_option(h, 4)
    if around is not None:
        extra = (*extra, "--fault-around", str(around))
    h.start_daemon(budget="16M", extra=extra)
    proc = _units_client(h, "vmops", "text")
    _units_step(proc, "evicted")
    before = _units_held(h, proc, "evicted")
    _units_go(proc)
    _units_step(proc, "operated")
    # 24 members were unmapped or dropped, with no access to them; units
    # stored since (a late eviction) add 4 members each.  The daemon reads
    # the unmap events from the client's uffd when it gets to them: up to 10 s.
    end = time.monotonic() + 10
    while True:
        after, _, text = _units_figures(h, proc, "after munmap, MADV_DONTNEED and mremap")
        left = before["unit_pages"] + 4 * (after["unit_stores"] - before["unit_stores"]) - \
            after["unit_pages"]
        if left > 0 or time.monotonic() > end:
            break
        time.sleep(0.5)
    log(f"unit members gone with the operations: {left}")
    _units_require(left > 0, "no unit member went with munmap or MADV_DONTNEED of 24 "
                   "evicted members: the operations hit no unit", text)
    _units_go(proc)
    _units_step(proc, "verified")
    _units_restored(h, proc, "after the operations", since=after)
    _units_finish(h, proc)


def t_units_random(h):
    """multi-page units and random access: 64 MiB of text-like pages under a 16 MiB budget,
    units held after the fill; then only random reads (one in eight a write), every
    read verified.  Units put back pages that go unused, so the daemon stops forming
    them: over the second half of the reads, pages stored in new units are under 10 %
    of the pages stored."""
    h.start_daemon(budget="16M", extra=_units_option(h, 4))
    proc = _units_client(h, "random", "text")
    _units_step(proc, "evicted")
    _units_held(h, proc, "evicted")
    _units_go(proc)
    _units_step(proc, "random", timeout=150)
    first = _units_restored(h, proc, "after the first round of random reads")
    _units_go(proc)
    _units_step(proc, "verified", timeout=150)
    second, _, text = _units_figures(h, proc, "after the second round")
    unit_stored = 4 * (second["unit_stores"] - first["unit_stores"])
    stored = second["zswpout"] - first["zswpout"]
    log(f"second round: {unit_stored} pages stored in units of {stored} stored")
    _units_require(stored > 0, "no page stored in the second round: proves nothing", text)
    _units_require(unit_stored < 0.1 * stored,
                   f"random access: {unit_stored} of the {stored} pages stored in the second "
                   "round went into units: the daemon kept forming units whose put-back "
                   "pages go unused", text)
    _units_finish(h, proc)


def _units_locality(h, around):
    extra = _units_option(h, 4)
    if around is not None:
        extra = (*extra, "--fault-around", str(around))
    h.start_daemon(budget="16M", extra=extra)
    proc = _units_client(h, "locality", "text")
    _units_step(proc, "evicted")
    _units_held(h, proc, "evicted")
    _units_go(proc)
    _units_step(proc, "random", timeout=150)
    random_phase, _, _ = _units_figures(h, proc, "after the random reads")
    _units_go(proc)
    _units_step(proc, "sequential", timeout=150)
    stats, _, text = _units_figures(h, proc, "after the passes in page order")
    unit_stored = 4 * (stats["unit_stores"] - random_phase["unit_stores"])
    stored = stats["zswpout"] - random_phase["zswpout"]
    log(f"passes in page order: {unit_stored} of {stored} pages stored went into units, "
        f"{stats['unit_restored_pages'] - random_phase['unit_restored_pages']} put back "
        "with their unit")
    _units_require(stored > 0, "nothing stored in the passes in page order", text)
    _units_require(unit_stored >= 0.25 * stored,
                   f"after random access, 3 passes in page order stored only {unit_stored} of "
                   f"{stored} pages in units: units did not come back with locality", text)
    _units_go(proc)
    _units_step(proc, "verified", timeout=150)
    _units_finish(h, proc)


def t_units_locality(h):
    """multi-page units come back with locality: 64 MiB of text-like pages under a 16 MiB
    budget; after 2 x page count random reads (units stop being formed), 3 passes in page
    order (every 16th page rewritten after each) store at least a quarter of what they
    store in units again; every read verified."""
    _units_locality(h, around=None)


def t_units_locality_noaround(h):
    """units-locality with --fault-around 0: units must come back with locality without
    fault-around runs too (a unit's own put-back pages, used, show it)."""
    _units_locality(h, around=0)


def t_units_aligned(h):
    """multi-page units are aligned to 4 pages: with --fault-around 0, a read of member 0 of
    consecutive evicted units (each one page past the run the last put back, so what
    units put back is used) makes present no page outside its aligned group of 4 (vpn
    % 4 == 0 first), and probes find their whole group put back (the client sees unit
    restores in its pagemap; unit_restored_pages grows); every page verifies."""
    h.start_daemon(budget="16M", extra=(*_units_option(h, 4), "--fault-around", "0"))
    proc = _units_client(h, "aligned", "text")
    _units_step(proc, "evicted")
    before = _units_held(h, proc, "evicted")
    _units_go(proc)
    _units_step(proc, "verified")
    _units_restored(h, proc, "after the probes", since=before)
    m = re.search(r"(?m)^probes restored (\d+)$", proc.stdout())
    if not m or int(m.group(1)) == 0:
        raise TestFailure("no probe of member 0 of consecutive units found its whole aligned "
                          f"group of 4 put back: {m.group(0) if m else 'no probe figures'}")
    log(f"{m.group(1)} probes found their whole aligned group put back")
    _units_finish(h, proc)


def t_units_threads(h):
    """multi-page units and concurrent faults: 4 client threads, thread t reading member t
    of every unit in order (the 4 members of a unit fault at about the same time, on 2
    fault threads), then at random rewriting one in four; every page verified, evicted
    again (units stored again: unit_stores grows), the threads again, every page
    verified; unit_restored_pages > 0."""
    h.start_daemon(budget="16M", extra=_units_option(h, 4))
    _units_evict_and_read(h, "threads", "verified", "after the threads", timeout=150)


def t_units_cgroup(h):
    """CompressionUnit= of a cgroup.d file wins over [Defaults]: [Defaults]
    CompressionUnit=1, a cgroup.d file for Cgroup=/ (every cgroup, the client's too)
    with [Limits] CompressionUnit=4: units are stored (unit_stores > 0, unit_pages > 0)
    and put back (unit_restored_pages > 0), and every page of units-basic's reads
    verifies."""
    extra = _units_config(h, unit=1, swap="64M")
    with open(os.path.join(h.tmp, "cgroup.d", "all.conf"), "w") as f:
        # The budget too: the command line's --resident-max would be taken
        # for it otherwise (a file's keys win, key by key).
        f.write("[Match]\nCgroup=/\n[Limits]\nResidentMax=16M\nResidentLow=12M\n"
                "CompressionUnit=4\n")
    h.start_daemon(budget="16M", extra=extra)
    _units_evict_and_read(h, "basic", "reread", "after the re-reads")


def t_cgroup_file_cli_budget(h):
    """A cgroup.d file that sets no budget takes the command line's: [Limits]
    Compressor=zstd only, for Cgroup=/ (every cgroup), and --resident-max 8M; a 32 MiB
    client is evicted (under the built-in 64M it would not be: zswpout > 0) and every
    page it reads verifies."""
    extra = _units_config(h, swap="64M")
    with open(os.path.join(h.tmp, "cgroup.d", "all.conf"), "w") as f:
        f.write("[Match]\nCgroup=/\n[Limits]\nCompressor=zstd\n")
    h.start_daemon(budget="8M", extra=extra)
    h.client("loop", [h.bin("itest-loop"), "32M", "2", "4", "yes"], timeout=120)
    stats, _ = h.stats()
    if stats.get("zswpout", 0) == 0:
        raise TestFailure(f"nothing evicted under --resident-max 8M: {stats}")
    h.stop_daemon()


def t_units_race(h):
    """multi-page units and pages dropped while eviction batches are out: a slow agent
    (UZSWAP_TEST_AGENT_DELAY_US=3000), 16 MiB of text-like pages under a 4 MiB budget;
    for 8 s a random page is dropped with MADV_DONTNEED and written again at once and an
    aligned group of 4 is read, every read verified; units are stored all along
    (unit_stores grows) and the daemon counts no page lost and no page it had as
    present faulting (resident_missing_faults)."""
    inject = {"UZSWAP_TEST_AGENT_DELAY_US": "3000", "UZSWAP_MIN_REGION": "4M"}
    h.start_daemon(budget="4M", extra=_units_option(h, 4))
    proc = _units_client(h, "race", "text", size="16M", extra_env=inject)
    _units_step(proc, "evicted")
    before = _units_held(h, proc, "evicted")
    _units_go(proc)
    _units_step(proc, "verified", timeout=150)
    stats = _units_restored(h, proc, "after the drops", since=before)
    _units_require(stats["unit_stores"] > before["unit_stores"],
                   f"unit_stores {stats['unit_stores']}: no unit stored during the drops")
    for key in ("resident_missing_faults", "lost_pages"):
        _units_require(stats.get(key, 0) == 0, f"{key} = {stats.get(key)}")
    _units_finish(h, proc)


def t_units_fork(h):
    """multi-page units and fork: a process whose pages are evicted in units (unit_pages >
    0) forks; each drops (MADV_DONTNEED) members of shared units that the other keeps;
    child (in page order) and parent (from the last page down) verify every
    page at the same time and each writes its own pages (every 8th, members 3 and 1),
    each sees only its own writes, both are evicted again and verify again; units were
    shared (fork_snapshots > 0) and put back by faults (unit_restored_pages > 0); once
    both have gone no pool byte is left."""
    h.start_daemon(budget="16M", extra=_units_option(h, 4))
    _units_fork(h, "text")


def t_units_fork_writeback(h):
    """units-fork with dense pages, a 2 MiB pool and a swap file (CompressionUnit=4 in
    [Defaults]): units shared by parent and child are written back member by member
    (unit_split_pages > 0) while both fault, drop and rewrite them; every page verifies
    in both and nothing is left in the pool or on disk at the end."""
    h.start_daemon(budget="16M", extra=_units_config(h, unit=4, pool_max="2M", swap="256M"))
    stats = _units_fork(h, "dense")
    _units_require(stats["unit_split_pages"] > 0,
                   "unit_split_pages = 0: no unit member was written back")


def _units_fork(h, data):
    proc = _units_client(h, "fork", data)
    _units_step(proc, "evicted")
    before = _units_held(h, proc, "evicted", min_fraction=0.25 if data == "text" else 0)
    _units_go(proc)
    _units_step(proc, "verified", timeout=150)
    stats = _units_restored(h, proc, "after the fork", since=before)
    _units_require(stats.get("fork_snapshots", 0) > 0,
                   "fork_snapshots = 0: the child did not share its parent's stored pages")
    _units_finish(h, proc)
    return stats


def t_units_writeback(h):
    """multi-page units and writeback: 64 MiB of dense pages (768 random bytes each: a unit
    compresses to about 3.4 KiB, still one object) under a 16 MiB budget with a 1 MiB pool
    and a swap file, CompressionUnit=4 in [Defaults]: units are stored (unit_stores > 0)
    and their members written to disk one by one (unit_split_pages > 0, on_disk_pages >
    0); every page faulted back (from disk, from units, singly) verifies by checksum and
    pattern; at the end nothing is left in the pool or on disk."""
    extra = _units_config(h, unit=4, pool_max="1M", swap="256M")
    h.start_daemon(budget="16M", extra=extra)
    proc = _units_client(h, "writeback", "dense")
    _units_step(proc, "ondisk", timeout=150)
    # The client saw a quarter of its pages on disk; the writeback of the
    # rest may still go on.  Wait (bounded) for a unit member among them.
    end = time.monotonic() + 20
    while True:
        stats, _, text = _units_figures(h, proc, "pages on disk")
        if stats["unit_split_pages"] > 0 or time.monotonic() > end:
            break
        time.sleep(0.5)
    _units_require(stats["unit_stores"] > 0, "unit_stores = 0: no unit was formed", text)
    _units_require(stats.get("on_disk_pages", 0) > 0, "no page on disk", text)
    _units_require(stats["unit_split_pages"] > 0,
                   "unit_split_pages = 0: no unit member was written back", text)
    _units_require(stats["unit_split_pages"] <= 4 * stats["unit_stores"],
                   f"unit_split_pages {stats['unit_split_pages']} > 4 x unit_stores "
                   f"{stats['unit_stores']}", text)
    _units_go(proc)
    _units_step(proc, "verified", timeout=150)
    _units_figures(h, proc, "after the reads")
    _units_finish(h, proc)


def t_units_off(h):
    """CompressionUnit=1 ([Defaults] of the main config): the text-like pages of
    units-basic, evicted and read back the same way, every read verified; pages are
    stored but not one unit (unit_stores, unit_pages, unit_restored_pages,
    unit_split_pages all 0)."""
    extra = _units_config(h, unit=1, swap="64M")
    h.start_daemon(budget="16M", extra=extra)
    proc = _units_client(h, "basic", "text")
    _units_step(proc, "evicted")
    _units_none(h, proc, "evicted")
    _units_go(proc)
    _units_step(proc, "reread")
    _units_none(h, proc, "after the re-reads")
    _units_finish(h, proc)


def t_units_incompressible(h):
    """multi-page units and incompressible data: 64 MiB of random pages (no fill or zero
    page among them) under a 16 MiB budget, --compression-unit 4: 4 random pages do not
    compress into four poor pages, so no unit of them fits: at most 1% of the pages stored
    go into units (the client's own tables and heap, managed too, may form a few); every
    page evicted and read back (in order, at random, with a stride) verifies by checksum
    and pattern."""
    h.start_daemon(budget="16M", extra=_units_option(h, 4))
    proc = _units_client(h, "basic", "random")
    _units_step(proc, "evicted")
    _units_few(h, proc, "evicted")
    _units_go(proc)
    _units_step(proc, "reread")
    _units_few(h, proc, "after the re-reads")
    _units_finish(h, proc)


def t_units_recovery(h):
    """multi-page units and a daemon killed: 64 MiB of dense pages under a 16 MiB budget, a
    4 MiB pool and a swap file, CompressionUnit=4: with units held in the pool
    (unit_pages > 0) and pages on disk, uzswapd gets SIGKILL while the client waits; a
    new uzswapd takes the client back (recovered_clients 1, lost_pages 0), and every
    page read back (in order, at random with writes, in order, with a stride) verifies
    by checksum and pattern."""
    _units_recovery(h, "recovery", "dense", pool_max="4M")


def t_units_recovery_vmops(h):
    """multi-page units that lost members, and a daemon killed: 64 MiB of text-like pages
    (all in the pool, most in units) under a 16 MiB budget; with every page of the units
    concerned evicted, MADV_DONTNEED of member 1 of 8 units, munmap of member 2 of 8
    (fresh memory mapped there), mremap of 29 pages from mid-unit to an address one page
    past alignment; then SIGKILL of uzswapd and a new one: the members left, the moved
    pages and every other page verify, dropped pages and fresh memory read zeros."""
    _units_recovery(h, "recovery-vmops", "text", pool_max="48M")


def _units_recovery(h, mode, data, pool_max):
    extra = _units_config(h, unit=4, pool_max=pool_max, swap="256M")
    h.start_daemon(budget="16M", extra=extra, name="uzswapd-1")
    proc = _units_client(h, mode, data)
    _units_step(proc, "evicted")
    # Eviction and writeback of the last of the fill may still be going on;
    # up to 20 s for pages on disk as well (with a pool too small to hold them).
    end = time.monotonic() + 20
    while True:
        stats, _, text = _units_figures(h, proc, "before the kill")
        if stats.get("on_disk_pages", 0) > 0 or pool_max == "48M" or time.monotonic() > end:
            break
        time.sleep(0.5)
    _units_held(h, proc, "before the kill", min_fraction=0)
    held = stats["stored_pages"] + stats.get("on_disk_pages", 0)
    log(f"SIGKILL to uzswapd with {stats['unit_pages']} unit members among "
        f"{stats['stored_pages']} stored pages, {stats.get('on_disk_pages', 0)} on disk")
    h.daemon.kill()
    h.daemon.wait(10)
    time.sleep(0.5)
    if not proc.alive():
        proc.report()
        raise TestFailure(f"the client exited ({proc.popen.returncode}) with no daemon")
    h.start_daemon(budget="16M", extra=extra, name="uzswapd-2")
    stats, text = _wait_rejoined(h, 1, 60)
    log(f"after the restart: {stats.get('recovered_pages', 0)} pages taken back of {held}, "
        f"{stats.get('lost_pages', 0)} lost, unit_pages {stats.get('unit_pages')}")
    _units_require(stats.get("lost_pages", 0) == 0,
                   f"{stats.get('lost_pages')} pages lost across the restart", text)
    _units_go(proc)
    _units_step(proc, "verified", timeout=150)
    stats, _, text = _units_figures(h, proc, "after the reads")
    for key in ("lost_pages", "resident_missing_faults", "decompress_fail"):
        _units_require(stats.get(key, 0) == 0, f"{key} = {stats.get(key)} after the restart",
                       text)
    _units_finish(h, proc)


TESTS = {name[2:].replace("_", "-"): fn for name, fn in globals().items()
         if name.startswith("t_") and callable(fn)}


def main():
    if len(sys.argv) < 2 or sys.argv[1] not in TESTS:
        print(f"usage: {sys.argv[0]} TEST [DEADLINE]\ntests: {' '.join(sorted(TESTS))}")
        return 2
    name = sys.argv[1]
    deadline = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    fn = TESTS[name]

    def on_signal(signum, frame):
        raise Deadline(f"signal {signal.Signals(signum).name}")

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGALRM):
        signal.signal(sig, on_signal)
    if deadline:
        signal.alarm(deadline)
    log(f"test {name}: {' '.join(fn.__doc__.split())}")
    h = None
    status = 1
    try:
        h = Harness(name)
        fn(h)
        status = 0
        log(f"PASS {name}")
    except TestSkip as e:
        status = 77
        log(f"SKIP {name}: {e}")
    except TestFailure as e:
        log(f"FAIL {name}: {e}")
    except Exception as e:
        import traceback
        traceback.print_exc()
        log(f"FAIL {name}: unexpected {type(e).__name__}: {e}")
    except Deadline as e:
        log(f"FAIL {name}: stopped by {e} (deadline {deadline} s)")
    finally:
        signal.alarm(0)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        if h:
            if status != 0:
                if h.daemon and h.daemon.alive():
                    try:
                        h.daemon_stats()  # its SIGUSR1 summary lands in the report below
                    except Exception as e:
                        log(f"no summary from the daemon: {e}")
                for proc in h.procs:
                    proc.report()
            h.cleanup()
    return status


if __name__ == "__main__":
    sys.exit(main())
