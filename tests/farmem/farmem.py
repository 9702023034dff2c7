#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The far-memory tier (issue 14): uzswapd writing back to an NBD export.

Each test starts a real nbdkit (memory or file plugin, on a unix socket or
on 127.0.0.1, with the delay or error filter, or TLS with a PSK file), a
real uzswapd whose [Swap] Backend=nbd points at it, and an itest-wb client
in mode "far": it fills 32 MiB with a per-page (page, generation) pattern,
waits until half of it lives on the export, and reads every page back,
twice (generation 1, then 2), each page verified or -- only where the test
breaks the server -- poisoned (SIGBUS), which the client counts and the
test compares with the daemon's counters.  The records themselves are
checksummed by the daemon: a record that does not verify is never served.

  far-unix          memory plugin on a unix socket: nothing poisoned
  far-tcp           memory plugin on 127.0.0.1: nothing poisoned
  far-restart       file plugin killed (SIGKILL) as the read pass starts and
                    again during the rewrite pass, restarted 1.5 s later:
                    every page survives, backend_reconnects counted
  far-restart-lost  memory plugin killed and restarted: its data is gone, so
                    every page read back from it fails its checksum and is
                    poisoned (the documented outcome), exactly as many as
                    swap_checksum_errors; the next pass is clean
  far-slow          delay filter (2 ms per read and write): nothing poisoned,
                    backend read latency p50 >= 2 ms
  far-stall         the server (file plugin) stopped (SIGSTOP) for 3 s with
                    ReadTimeout=1s: the reads that time out poison their page
                    only, exactly backend_read_timeouts of them; after SIGCONT
                    all is well (an nbdkit that aborted on resuming, a bug of
                    nbdkit 1.32, is started again on the same file)
  far-daemon-killed uzswapd SIGKILLed with half the client on the export, a
                    new one started on the same metadata file: the client
                    re-joins and every page comes back from the export
  far-error-write   error filter, 30% of writes fail: entries stay in the
                    pool and are written again; nothing poisoned
  far-error-read    error filter, 1% of reads fail: those pages poisoned,
                    exactly io_errors of them; the rest verified
  far-tls           TLS with a PSK file (nbds://, tls-psk-file=): nothing
                    poisoned

Every nbdkit, uzswapd and client is killed and the temp dir removed on
every exit path (nbdkit also runs with --exit-with-parent).  Exit 77 only
when nbdkit (or its memory/file plugin, delay/error filter) is not
installed, or uzswapd was built without libnbd.

usage: farmem.py TEST   (env: UZSWAPD, UZSWAPCTL, LIBUZSWAP, ITEST_BINDIR,
                         FARMEM_HAVE_NBD, ITEST_SRCDIR)
"""
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.environ.get("ITEST_SRCDIR", os.path.join(os.path.dirname(
    os.path.abspath(__file__)), "..", "integration")))
from wbsteps import Env, Fail, log, need  # noqa: E402

SKIP = 77
SIZE = "32M"


def skip_reason():
    if os.environ.get("FARMEM_HAVE_NBD") != "1":
        return "uzswapd was built without libnbd (install libnbd-dev, tools/install-deps)"
    if not shutil.which("nbdkit"):
        return "nbdkit is not installed (apt-get install nbdkit, tools/install-deps)"
    for what in (["memory"], ["file"], ["--filter=delay", "--filter=error", "null"]):
        r = subprocess.run(["nbdkit", *what, "--dump-plugin"], capture_output=True)
        if r.returncode != 0:
            return f"nbdkit lacks {' '.join(what)} (the nbdkit package has them)"
    return None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nbdkit:
    """One nbdkit server; start() again after kill() serves the same address."""

    def __init__(self, tmp, plugin, filters=(), tcp=False, psk=None):
        self.tmp = tmp
        self.plugin = plugin
        self.filters = list(filters)
        self.tcp = tcp
        self.psk = psk
        self.sock = os.path.join(tmp, "nbd.sock")
        self.port = free_port() if tcp else None
        self.proc = None

    def uri(self):
        if self.psk:
            return f"nbds://uzswap@127.0.0.1:{self.port}/?tls-psk-file={self.psk}"
        if self.tcp:
            return f"nbd://127.0.0.1:{self.port}/"
        return f"nbd+unix:///?socket={self.sock}"

    def start(self):
        args = ["nbdkit", "-f", "--exit-with-parent"]
        if self.tcp:
            args += ["-i", "127.0.0.1", "-p", str(self.port)]
        else:
            args += ["-U", self.sock]
        if self.psk:
            args += ["--tls=require", f"--tls-psk={self.psk}"]
        for f in self.filters:
            args.append(f"--filter={f[0]}")
        args += self.plugin
        for f in self.filters:
            args += f[1:]
        log("start: " + " ".join(args))
        # Its messages go to a file (a pipe nobody reads could fill and stall it).
        self.log_path = os.path.join(self.tmp, "nbdkit.log")
        with open(self.log_path, "a") as out:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        end = time.time() + 10
        while time.time() < end:
            if self.proc.poll() is not None:
                raise Fail("nbdkit exited at start: " + self.output())
            try:
                if self.tcp:
                    socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                else:
                    with socket.socket(socket.AF_UNIX) as s:
                        s.connect(self.sock)
                return
            except OSError:
                time.sleep(0.05)
        raise Fail("nbdkit does not listen")

    def output(self):
        try:
            with open(self.log_path) as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def alive(self):
        """None while it runs, else how it ended (and what it said)."""
        if self.proc and self.proc.poll() is not None:
            return f"nbdkit exited with {self.proc.returncode}: {self.output()}"
        return None

    def signal(self, sig):
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        if not self.tcp and os.path.exists(self.sock):
            os.unlink(self.sock)


def far_config(uri, timeout=None):
    text = f"[Pool]\nMaxSize=1M\n[Swap]\nBackend=nbd\nURI={uri}\nFile=@TMP@/farmem.meta\n"
    if timeout:
        text += f"ReadTimeout={timeout}\n"
    return text + "[Defaults]\nWriteback=yes\n"


def poisoned(out, npass):
    """Pages poisoned in read pass npass (1, 2) or in the rewrite ("fill")."""
    prefix = "far fill:" if npass == "fill" else f"far pass {npass}:"
    for line in out.splitlines():
        if line.startswith(prefix):
            return int(line.split()[2 if npass == "fill" else 3])
    raise Fail(f"no result of pass {npass}")


def backend(e):
    return json.loads(e.ctl("stats", "--json"))["global"]["backend"]


TEST_BUDGET_S = 100  # under meson's 120 s: a stuck step fails with diagnostics


def diagnose(e, p):
    """What everyone was doing when a step did not come."""
    try:
        log(f"client {p.pid}: wchan {open(f'/proc/{p.pid}/wchan').read()!r}")
        for t in sorted(os.listdir(f"/proc/{p.pid}/task")):
            log(f"  task {t}: {open(f'/proc/{p.pid}/task/{t}/wchan').read()!r}")
    except OSError:
        pass
    try:
        log("daemon: " + json.dumps(json.loads(e.ctl("stats", "--json"))["global"]))
    except Exception as err:  # noqa: BLE001 - diagnostics only
        log(f"no daemon stats: {err}")
    for s in e.servers:
        log(f"server: {s.alive() or 'running'}")


def step(e, p, name):
    """Wait for the client's STEP name within the test's budget.  A client
    that says nothing is killed when the budget is spent (after the state of
    everyone is logged), so the read ends and the test fails cleanly."""
    left = max(e.deadline - time.time(), 1)

    def expire():
        log(f"step {name}: nothing within the test's budget")
        diagnose(e, p)
        p.kill()
    watchdog = threading.Timer(left, expire)
    watchdog.daemon = True
    watchdog.start()
    try:
        return e.expect_step(p, name, left)
    finally:
        watchdog.cancel()


def run_far(e, server, timeout=None, on_ondisk=None, on_read=None, check=None):
    """Start uzswapd on server's URI, run the far client through its steps."""
    e.config(far_config(server.uri(), timeout))
    e.start()
    p = e.client("far", SIZE)
    out = step(e, p, "ondisk")
    before = e.stats()
    need(before["on_disk_pages"] > 2048, f"{before['on_disk_pages']} pages on the export")
    if on_ondisk:
        on_ondisk()
    e.go_on(p)
    out += step(e, p, "read")
    mid = e.stats()
    if on_read:
        on_read()
    e.go_on(p)
    out += step(e, p, "ondisk2")
    e.go_on(p)
    try:
        out += e.finish(p, max(e.deadline - time.time(), 1))
    except subprocess.TimeoutExpired:
        diagnose(e, p)
        raise Fail("the client did not finish within the test's budget")
    e.fill_poisoned = poisoned(out, "fill")
    return poisoned(out, 1), poisoned(out, 2), before, mid, e.stats()


def check_text_formats(e):
    text = e.ctl("stats")
    for word in ("backend_reconnects", "backend_errors", "backend read latency",
                 "backend write latency"):
        need(word in text, f"uzswapctl stats shows {word}")
    prom = e.ctl("stats", "--format=prometheus")
    for word in ("uzswap_backend_reconnects_total", "uzswap_backend_errors_total",
                 'uzswap_backend_read_latency_seconds{quantile="0.99"}',
                 'uzswap_backend_write_latency_seconds{quantile="0.5"}'):
        need(word in prom, f"prometheus output has {word}")


def t_plain(e, tcp=False, psk=None):
    server = Nbdkit(e.tmp, ["memory", "256M"], tcp=tcp, psk=psk)
    e.servers.append(server)
    server.start()
    p1, p2, before, mid, after = run_far(e, server)
    need(p1 == 0 and p2 == 0 and e.fill_poisoned == 0,
         f"nothing poisoned (passes: {p1}, {e.fill_poisoned}, {p2})")
    need(after["disk_swapins"] > 2048, f"{after['disk_swapins']} pages read back from the export")
    b = backend(e)
    need(b["kind"] == "nbd" and b["links_up"] >= 1, f"backend nbd, {b['links_up']} links up")
    need(b["backend_errors"] == 0, f"{b['backend_errors']} backend errors")
    need(b["read_latency_ns"]["count"] > 0 and b["write_latency_ns"]["count"] > 0,
         "read and write latency recorded")
    check_text_formats(e)


def t_unix(e):
    t_plain(e)


def t_tcp(e):
    t_plain(e, tcp=True)


def t_tls(e):
    psk = os.path.join(e.tmp, "psk")
    with open(psk, "w") as f:
        f.write(f"uzswap:{secrets.token_hex(32)}\n")
    os.chmod(psk, 0o600)
    t_plain(e, tcp=True, psk=psk)


def background(e, fn):
    """Run fn in a thread that lives until the test ends: nbdkit runs with
    --exit-with-parent, which is the thread that started it (PDEATHSIG)."""
    def run():
        fn()
        e.done.wait()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    e.threads.append(t)


def bounce(e, server, down_s, delay_s=0.0):
    """Kill the server (after delay_s), start it again down_s later; in the background."""
    def run():
        time.sleep(delay_s)
        log("killing nbdkit")
        server.kill()
        time.sleep(down_s)
        log("restarting nbdkit")
        server.start()
    background(e, run)


def t_restart(e):
    image = os.path.join(e.tmp, "export.img")
    with open(image, "wb") as f:
        f.truncate(256 << 20)
    server = Nbdkit(e.tmp, ["file", f"file={image}"])
    e.servers.append(server)
    server.start()
    # Killed as the read pass starts, then while the rewrite pass writes back.
    p1, p2, before, mid, after = run_far(
        e, server, timeout="20s",
        on_ondisk=lambda: bounce(e, server, 1.5),
        on_read=lambda: bounce(e, server, 1.5, 0.5))
    need(p1 == 0 and p2 == 0 and e.fill_poisoned == 0,
         f"every page survived the restarts (poisoned: {p1}, {e.fill_poisoned}, {p2})")
    b = backend(e)
    need(b["backend_reconnects"] >= 2, f"{b['backend_reconnects']} reconnects")
    need(after["swap_checksum_errors"] == 0, "no record failed its checksum")


def t_restart_lost(e):
    server = Nbdkit(e.tmp, ["memory", "256M"])
    e.servers.append(server)
    server.start()

    def lose():
        server.kill()
        server.start()  # empty: every record on it is gone
    p1, p2, before, mid, after = run_far(e, server, timeout="20s", on_ondisk=lose)
    need(p1 > 0, f"{p1} pages poisoned after the export lost its data")
    lost = mid["swap_checksum_errors"] - before["swap_checksum_errors"]
    need(p1 == lost, f"poisoned pages ({p1}) = swap_checksum_errors ({lost})")
    need(p2 == 0 and e.fill_poisoned == 0,
         f"the next passes are clean ({e.fill_poisoned}, {p2} poisoned)")
    need(backend(e)["backend_reconnects"] >= 1, "reconnected")


def t_slow(e):
    server = Nbdkit(e.tmp, ["memory", "256M"],
                    filters=[("delay", "delay-read=2ms", "delay-write=2ms")])
    e.servers.append(server)
    server.start()
    p1, p2, before, mid, after = run_far(e, server)
    need(p1 == 0 and p2 == 0 and e.fill_poisoned == 0,
         f"nothing poisoned (passes: {p1}, {e.fill_poisoned}, {p2})")
    b = backend(e)
    need(b["read_latency_ns"]["p50"] >= 2000000,
         f"read latency p50 {b['read_latency_ns']['p50']} ns >= 2 ms")


def t_stall(e):
    # The file plugin: nbdkit 1.32 sometimes aborts (SIGABRT, after "sending
    # newstyle handshake: Broken pipe") when it resumes with connections its
    # client gave up on while it was stopped.  Then it is started again, on
    # the same file, as an operator (or systemd) would: the test is about
    # what the daemon does meanwhile, and the pages survive.
    image = os.path.join(e.tmp, "export.img")
    with open(image, "wb") as f:
        f.truncate(256 << 20)
    server = Nbdkit(e.tmp, ["file", f"file={image}"])
    e.servers.append(server)
    server.start()
    def stall():
        def run():
            log("SIGSTOP nbdkit for 3 s")
            server.signal(signal.SIGSTOP)
            time.sleep(3)
            server.signal(signal.SIGCONT)
            log("SIGCONT nbdkit")
            time.sleep(1)
            gone = server.alive()
            log(f"server after the stall: {gone or 'running'}")
            if gone:
                server.kill()
                server.start()
        background(e, run)
    p1, p2, before, mid, after = run_far(e, server, timeout="1s", on_ondisk=stall)
    b = backend(e)
    need(p1 >= 1, f"{p1} pages poisoned by the stall")
    need(p1 == b["backend_read_timeouts"],
         f"poisoned pages ({p1}) = backend_read_timeouts ({b['backend_read_timeouts']})")
    need(p1 < before["on_disk_pages"] // 4, f"only the stalled reads poisoned ({p1})")
    need(p2 == 0 and e.fill_poisoned == 0,
         f"after the stall nothing is poisoned ({e.fill_poisoned}, {p2})")


def t_daemon_killed(e):
    server = Nbdkit(e.tmp, ["memory", "256M"])
    e.servers.append(server)
    server.start()

    def kill_daemon():
        log("SIGKILL uzswapd; a new one on the same metadata file and export")
        os.killpg(e.daemon.pid, signal.SIGKILL)
        e.daemon.wait()
        e.daemon.stdout.close()
        for name in ("d.sock", "control.sock"):
            try:
                os.unlink(os.path.join(e.tmp, name))
            except FileNotFoundError:
                pass
        e.start()
    p1, p2, before, mid, after = run_far(e, server, on_ondisk=kill_daemon)
    need(p1 == 0 and p2 == 0 and e.fill_poisoned == 0,
         f"every page on the export survived the daemon's death (poisoned: {p1}, "
         f"{e.fill_poisoned}, {p2})")
    need(mid["recovered_clients"] >= 1 and mid["disk_swapins"] > 2048,
         f"the client re-joined ({mid['recovered_clients']}) and read "
         f"{mid['disk_swapins']} pages back from the export")


def t_error_write(e):
    server = Nbdkit(e.tmp, ["memory", "256M"],
                    filters=[("error", "error-pwrite=EIO", "error-pwrite-rate=30%")])
    e.servers.append(server)
    server.start()
    p1, p2, before, mid, after = run_far(e, server)
    need(p1 == 0 and p2 == 0 and e.fill_poisoned == 0,
         f"nothing poisoned (passes: {p1}, {e.fill_poisoned}, {p2})")
    b = backend(e)
    need(b["backend_errors"] > 0 and after["io_errors"] > 0,
         f"failed writes counted ({b['backend_errors']} backend errors)")


def t_error_read(e):
    server = Nbdkit(e.tmp, ["memory", "256M"],
                    filters=[("error", "error-pread=EIO", "error-pread-rate=1%")])
    e.servers.append(server)
    server.start()
    p1, p2, before, mid, after = run_far(e, server)
    total = p1 + e.fill_poisoned + p2
    need(total > 0, f"{total} pages poisoned by failed reads ({p1}, {e.fill_poisoned}, {p2})")
    need(total == after["io_errors"],
         f"poisoned pages ({total}) = io_errors ({after['io_errors']})")
    need(total < after["disk_swapins"] // 20, "only the failed reads poisoned")


TESTS = {
    "far-unix": t_unix,
    "far-tcp": t_tcp,
    "far-restart": t_restart,
    "far-restart-lost": t_restart_lost,
    "far-slow": t_slow,
    "far-stall": t_stall,
    "far-daemon-killed": t_daemon_killed,
    "far-error-write": t_error_write,
    "far-error-read": t_error_read,
    "far-tls": t_tls,
}


def main():
    name = sys.argv[1]
    why = skip_reason()
    if why:
        print(f"SKIP: {name}: {why}")
        return SKIP
    e = Env(name)
    e.deadline = time.time() + TEST_BUDGET_S
    e.servers = []
    e.threads = []
    e.done = threading.Event()
    try:
        TESTS[name](e)
    except Fail as err:
        print(f"FAIL: {name}: {err}")
        return 1
    finally:
        for s in e.servers:
            s.signal(signal.SIGCONT)
        e.cleanup()  # uzswapd drains through the server: kill it after
        for s in e.servers:
            s.kill()
        e.done.set()
    print(f"PASS: {name}")
    return 0


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)  # nothing lost if meson kills us
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(1))  # meson's timeout: clean up
    sys.exit(main())
