#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Hammer a real uzswapd with malformed input, then check it is unharmed.

usage: fuzz-daemon.py UZSWAPD UZSWAPCTL LIBUZSWAP WORKLOAD [SECONDS] [SEED]

Client socket (common/protocol.h), for SECONDS (default 20) with a printed
seed (set UZSWAP_FUZZ_SEED or pass SEED to replay):
  - before HELLO: random bytes and sizes, truncated and oversized HELLOs,
    wrong magic/version/type/page size/flags, no fd, two fds where one is
    announced, fds of the wrong kind (pipe, /dev/null, memfd, socket, an
    eventfd) where the userfaultfd belongs, a graveyard that is not mapped;
  - after a valid HELLO (a real userfaultfd made here with ctypes, MOVE and
    the event features negotiated, a registered graveyard): messages of
    every type with wrong sizes, out-of-range or unaligned addresses,
    overlapping ranges, bad hints, EVICT_DONE for batches never sent,
    unsolicited SHUTDOWN_ACK, fds attached after HELLO, a flood of
    requests never read, truncated messages, then close or shutdown;
  - floods of connections opened at once and dropped.
Control socket: random bytes, malformed and non-object JSON, wrong types,
unknown commands, lines beyond the 4096-byte limit (up to 1 MiB), a line
without newline then EOF, more connections than the limit.

Then the daemon must still run, a correct client (the workload, verified
data, evicted and faulted back) must work, and its open fds
(/proc/PID/fd) and VmRSS must not have grown beyond a bound.
Needs root (a userfaultfd with kernel-mode faults): exit 77 otherwise.
"""
import ctypes
import errno
import json
import mmap
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback

UZSWAPD, UZSWAPCTL, LIBUZSWAP, WORKLOAD = sys.argv[1:5]
SECONDS = float(sys.argv[5]) if len(sys.argv) > 5 else 20.0
SEED = int(sys.argv[6]) if len(sys.argv) > 6 else int(
    os.environ.get("UZSWAP_FUZZ_SEED", str(int(time.time()) % 100000)))
FD_GROWTH_MAX = 4          # fds the daemon may open lazily after warm-up
RSS_GROWTH_MAX = 32 << 20  # bytes of VmRSS growth tolerated (allocator slack)

MAGIC, VERSION = 0x77737A75, 2
(HELLO, HELLO_REPLY, REGISTER, UNREGISTER, REPLY, EVICT, EVICT_DONE, FORK_PREPARE,
 FORK_DONE, SHUTDOWN, SHUTDOWN_ACK, STATS, STATS_REPLY, HINT, REGISTER_BATCH,
 REGISTER_BATCH_REPLY, MSG_MAX) = range(1, 18)
PAGE = 4096
BATCH_MAX = 512
HELLO_SIZE = 64

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]

SYS_userfaultfd = {"x86_64": 323, "aarch64": 282}.get(os.uname().machine)
UFFDIO_API, UFFDIO_REGISTER = 0xC018AA3F, 0xC020AA00
FEATURES = (1 << 2) | (1 << 3) | (1 << 6) | (1 << 16)  # EVENT_REMAP|REMOVE|UNMAP, MOVE


def log(msg):
    print(f"# {msg}", flush=True)


class Fail(Exception):
    pass


def connect(path, kind=socket.SOCK_SEQPACKET):
    """Connect, waiting while the daemon's backlog is full (EAGAIN)."""
    end = time.time() + 10
    while True:
        s = socket.socket(socket.AF_UNIX, kind)
        try:
            s.connect(path)
            return s
        except BlockingIOError:
            s.close()
            if time.time() > end:
                raise Fail(f"{path}: backlog still full after 10 s: the daemon stopped accepting")
            time.sleep(0.01)


def header(mtype, size, seq=0, magic=MAGIC, version=VERSION):
    return struct.pack("<IHHII", magic, version, mtype, size, seq)


def make_uffd():
    """A userfaultfd with the features the daemon requires, or None."""
    fd = libc.syscall(SYS_userfaultfd, os.O_CLOEXEC | os.O_NONBLOCK)
    if fd < 0:
        return None
    api = (ctypes.c_uint64 * 3)(0xAA, FEATURES, 0)
    if libc.ioctl(fd, UFFDIO_API, api) < 0:
        os.close(fd)
        return None
    return fd


def map_anon(pages):
    addr = libc.mmap(None, pages * PAGE, mmap.PROT_READ | mmap.PROT_WRITE,
                     mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "mmap")
    return addr


def uffd_register(fd, addr, length):
    reg = (ctypes.c_uint64 * 4)(addr, length, 1, 0)  # MODE_MISSING
    return libc.ioctl(fd, UFFDIO_REGISTER, reg)


class Session:
    """One valid client connection: a real uffd, a registered graveyard."""

    def __init__(self, path):
        self.uffd = make_uffd()
        if self.uffd is None:
            raise OSError("no userfaultfd with MOVE")
        self.graveyard = map_anon(BATCH_MAX)
        if uffd_register(self.uffd, self.graveyard, BATCH_MAX * PAGE) < 0:
            raise OSError(ctypes.get_errno(), "UFFDIO_REGISTER")
        self.sock = connect(path)
        self.sock.settimeout(5)
        hello = header(HELLO, HELLO_SIZE) + struct.pack(
            "<QQQII16s", FEATURES, self.graveyard, BATCH_MAX * PAGE, PAGE, 0, b"uzfuzz")
        self.sock.sendmsg([hello], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                     struct.pack("i", self.uffd))])
        data, anc, _, _ = self.sock.recvmsg(256, socket.CMSG_SPACE(16))
        for level, kind, raw in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                for (fd,) in struct.iter_unpack("i", raw[: len(raw) - len(raw) % 4]):
                    os.close(fd)
        if len(data) < 24:
            raise Fail(f"short HELLO_REPLY ({len(data)} bytes)")
        self.status = struct.unpack_from("<i", data, 16)[0]
        # Memory of our own the daemon may legitimately be told about: never
        # registered with the uffd, so nothing here can ever fault.
        self.arena = map_anon(64)

    def close(self):
        self.sock.close()
        os.close(self.uffd)
        libc.munmap(ctypes.c_void_p(self.graveyard), ctypes.c_size_t(BATCH_MAX * PAGE))
        libc.munmap(ctypes.c_void_p(self.arena), ctypes.c_size_t(64 * PAGE))


def junk_fd(rng):
    """An fd of some wrong kind, and what it is."""
    kind = rng.choice(["pipe", "null", "memfd", "socket", "eventfd", "dir", "pagemap"])
    if kind == "pipe":
        r, w = os.pipe()
        os.close(w)
        return r, kind
    if kind == "null":
        return os.open("/dev/null", os.O_RDWR), kind
    if kind == "memfd":
        return os.memfd_create("uzfuzz"), kind
    if kind == "socket":
        return socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).detach(), kind
    if kind == "eventfd":
        return os.eventfd(0), kind
    if kind == "dir":
        return os.open("/", os.O_RDONLY), kind
    return os.open("/proc/self/pagemap", os.O_RDONLY), kind


def send(sock, data, fds=()):
    try:
        if fds:
            sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                   struct.pack(f"{len(fds)}i", *fds))])
        else:
            sock.send(data)
        return True
    except (BrokenPipeError, ConnectionResetError, ConnectionRefusedError, OSError):
        return False


def drain(sock, seconds=0.0):
    sock.settimeout(seconds)
    try:
        while True:
            data, anc, _, _ = sock.recvmsg(16384, socket.CMSG_SPACE(64))
            for level, kind, raw in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    for (fd,) in struct.iter_unpack("i", raw[: len(raw) - len(raw) % 4]):
                        os.close(fd)
            if not data:
                return
    except (socket.timeout, BlockingIOError, OSError):
        return


def fuzz_hello(path, rng):
    """One connection with a bad first message."""
    s = connect(path)
    fds = []
    case = rng.randrange(10)
    features = FEATURES
    grave = map_anon(BATCH_MAX) if case in (5, 6, 7) else 0x7F0000000000
    body = struct.pack("<QQQII16s", features, grave, BATCH_MAX * PAGE, PAGE, 0, b"uzfuzz")
    msg = header(HELLO, HELLO_SIZE) + body
    if case == 0:    # random bytes, random size
        msg = rng.randbytes(rng.choice([0, 1, 15, 16, 63, 64, 65, 200, 8192]))
    elif case == 1:  # truncated or oversized
        msg = msg[: rng.randrange(0, HELLO_SIZE)] if rng.random() < 0.5 else msg + b"\0" * 64
    elif case == 2:  # a corrupted header field
        msg = header(rng.choice([HELLO, 0, MSG_MAX, 0xFFFF, REGISTER]), rng.choice(
            [HELLO_SIZE, 0, 16, 0xFFFFFFFF]), 1, rng.choice([MAGIC, 0, MAGIC ^ 1]),
            rng.choice([VERSION, 0, 2])) + body
    elif case == 3:  # wrong page size, flags, graveyard length
        msg = header(HELLO, HELLO_SIZE) + struct.pack(
            "<QQQII16s", features, grave, rng.choice([0, PAGE, 1 << 62]),
            rng.choice([0, 1, 65536]), rng.choice([0, 4, 0xFFFFFFFF]), b"x" * 16)
    uffd = make_uffd() if case in (5, 6, 7, 8) else None
    if case == 4:    # a junk fd where the uffd belongs
        fd, _ = junk_fd(rng)
        fds = [fd]
    elif case == 5:  # no fd at all with a valid-looking HELLO
        fds = []
    elif case == 6:  # uffd plus an unannounced extra fd
        fds = [uffd, junk_fd(rng)[0]]
    elif case == 7:  # announced pagemap that is a wrong kind of fd
        msg = header(HELLO, HELLO_SIZE) + struct.pack(
            "<QQQII16s", features, grave, BATCH_MAX * PAGE, PAGE, 1, b"uzfuzz")
        fds = [uffd, junk_fd(rng)[0]]
    elif case == 8:  # a uffd but the graveyard is not mapped / not registered
        fds = [uffd]
    elif case == 9:  # connect and say nothing, or half a message then close
        msg = msg[:8] if rng.random() < 0.5 else b""
    if msg:
        send(s, msg, fds)
    drain(s, 0.05)
    s.close()
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
    if uffd is not None and uffd not in fds:
        os.close(uffd)
    if case in (5, 6, 7):
        libc.munmap(ctypes.c_void_p(grave), ctypes.c_size_t(BATCH_MAX * PAGE))


def random_message(rng, arena):
    """One post-HELLO message, mostly malformed."""
    mtype = rng.choice([REGISTER, UNREGISTER, HINT, EVICT_DONE, FORK_PREPARE, FORK_DONE,
                        STATS, SHUTDOWN_ACK, HELLO, HELLO_REPLY, REPLY, EVICT, SHUTDOWN,
                        STATS_REPLY, REGISTER_BATCH, REGISTER_BATCH_REPLY, 0, MSG_MAX,
                        rng.randrange(65536)])
    addr = rng.choice([arena, arena + 1, arena + PAGE, 0, PAGE, 1 << 47, (1 << 64) - PAGE,
                       rng.randrange(1 << 64) & ~(PAGE - 1), rng.randrange(1 << 64)])
    length = rng.choice([PAGE, 64 * PAGE, 0, 1, 1 << 44, (1 << 64) - PAGE, rng.randrange(1 << 64)])
    seq = rng.randrange(1 << 32)
    if mtype in (REGISTER, UNREGISTER):
        body = struct.pack("<QQII", addr, length, rng.choice([0, 1, 2, 0xFFFFFFFF]),
                           rng.choice([0, 0, 1]))
    elif mtype == REGISTER_BATCH:
        count = rng.choice([0, 1, 2, 256, 257, 0xFFFFFFFF])
        n = min(count, 300) if rng.random() < 0.7 else rng.randrange(0, 300)
        body = struct.pack("<II", count, rng.choice([0, 1, 2, 0xFFFFFFFF])) + b"".join(
            struct.pack("<QQ", rng.choice([addr, arena + i * PAGE]), length) for i in range(n))
    elif mtype == HINT:
        body = struct.pack("<QQII", addr, length, rng.choice([1, 2, 0, 3, 0xFFFFFFFF]), 0)
    elif mtype == EVICT_DONE:
        count = rng.choice([0, 1, 2, BATCH_MAX, BATCH_MAX + 1, 0xFFFFFFFF])
        n = min(count, BATCH_MAX + 1) if rng.random() < 0.7 else rng.randrange(0, 600)
        body = struct.pack("<II", rng.randrange(4), count) + struct.pack(
            f"<{n}i", *[rng.choice([0, -errno.EBUSY, -errno.EINVAL]) for _ in range(n)])
    else:
        body = rng.randbytes(rng.choice([0, 0, 8, 16, 100]))
    size = 16 + len(body)
    if rng.random() < 0.3:  # lie about the size
        size = rng.choice([0, 15, size - 1, size + 1, 1 << 31, 0xFFFFFFFF])
    msg = header(mtype, size, seq) + body
    if rng.random() < 0.1:  # truncated on the wire
        msg = msg[: rng.randrange(len(msg) + 1)]
    return msg


def fuzz_session(path, rng):
    """A valid HELLO, then a stream of bad (and some good) messages."""
    s = Session(path)
    if s.status != 0:
        s.close()
        raise Fail(f"a valid HELLO was refused: status {s.status}")
    mode = rng.randrange(4)
    for _ in range(rng.randrange(1, 40)):
        if mode == 0:    # anything
            msg = random_message(rng, s.arena)
        elif mode == 1:  # well-formed requests on addresses never registered with the uffd
            msg = header(rng.choice([REGISTER, UNREGISTER]), 40, rng.randrange(1 << 32)) + \
                struct.pack("<QQII", rng.choice([s.arena, s.graveyard, PAGE, 1 << 46]),
                            rng.choice([PAGE, 16 * PAGE, 64 * PAGE]), rng.choice([0, 1]), 0)
        elif mode == 2:  # request flood, replies never read
            msg = header(STATS, 16, rng.randrange(1 << 32))
        else:            # an fd after HELLO (not allowed)
            msg = header(STATS, 16, 7)
        fds = [junk_fd(rng)[0]] if mode == 3 or rng.random() < 0.02 else []
        ok = send(s.sock, msg, fds)
        for fd in fds:
            os.close(fd)
        if not ok:
            break
    if mode == 2:
        for _ in range(1100):  # beyond UZ_CLIENT_REQUESTS_MAX unanswered
            if not send(s.sock, header(STATS, 16, 1)):
                break
    drain(s.sock, 0.02)
    if rng.random() < 0.5:
        try:
            s.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        drain(s.sock, 0.05)
    s.close()


def fuzz_flood(path, rng):
    """Many connections at once, dropped without a word or mid-HELLO."""
    socks = []
    for _ in range(rng.randrange(50, 300)):
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            s.setblocking(False)
            s.connect(path)
            socks.append(s)
        except OSError:
            break
    for s in socks:
        if rng.random() < 0.3:
            send(s, header(HELLO, HELLO_SIZE)[: rng.randrange(17)])
        s.close()


# --- control socket -----------------------------------------------------------

def ctl_line(cpath, data, rng, read=True):
    s = connect(cpath, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.sendall(data)
        if rng.random() < 0.5:
            s.shutdown(socket.SHUT_WR)
        if read:
            s.settimeout(0.5)
            try:
                while s.recv(65536):
                    pass
            except (socket.timeout, OSError):
                pass
    except OSError:
        pass
    finally:
        s.close()


def fuzz_control(cpath, rng):
    case = rng.randrange(8)
    if case == 0:
        ctl_line(cpath, rng.randbytes(rng.randrange(1, 5000)), rng)
    elif case == 1:
        ctl_line(cpath, rng.choice([b"{", b"}", b"[]\n", b"null\n", b"42\n", b"\"status\"\n",
                                    b"{\"command\":}\n", b"{\"command\": 1}\n", b"\n",
                                    b"{\"command\": \"status\"\0}\n", b"\xff\xfe\n"]), rng)
    elif case == 2:
        ctl_line(cpath, json.dumps({"command": rng.choice(
            ["stats", "shrink", "clients", "nope", "", "reload" * 100]),
            "cgroup": rng.choice(["/", "", "x", "/../..", "/a" * 2000, 5, None]),
            "bytes": rng.choice([-1, 0, 1 << 70, "1M", 1.5, None, []])}).encode() + b"\n", rng)
    elif case == 3:  # beyond the 4096-byte line limit
        n = rng.choice([4097, 5000, 65536, 1 << 20])
        ctl_line(cpath, b"{\"command\": \"" + b"a" * n + b"\"}\n", rng)
    elif case == 4:  # no newline, then EOF
        ctl_line(cpath, b"{\"command\": \"status\"}", rng)
    elif case == 5:  # many requests on one connection, replies read late
        ctl_line(cpath, b"{\"command\": \"status\"}\n" * rng.randrange(1, 200), rng)
    elif case == 6:  # deep nesting
        d = rng.randrange(10, 3000)
        ctl_line(cpath, b"[" * d + b"]" * d + b"\n", rng)
    else:            # more connections than the limit, held, then dropped
        socks = []
        for _ in range(rng.randrange(65, 200)):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect(cpath)
            except OSError:
                s.close()
                break
            socks.append(s)
        for s in socks:
            s.close()


# --- checks -------------------------------------------------------------------

def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def ctl_json(cpath, *args):
    r = subprocess.run([UZSWAPCTL, "--socket", cpath, *args, "--json"],
                       capture_output=True, text=True, timeout=20)
    if r.returncode != 0:
        raise Fail(f"uzswapctl {' '.join(args)}: rc {r.returncode}: {r.stderr.strip()}")
    return json.loads(r.stdout)


def run_workload(sock):
    env = dict(os.environ, UZSWAP_SOCKET=sock, LD_PRELOAD=LIBUZSWAP, UZSWAP_JOIN_MIN="0")
    r = subprocess.run([WORKLOAD, "--size", "24M", "--passes", "2"], env=env,
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0 or "verified" not in r.stdout:
        raise Fail(f"a correct client failed: rc {r.returncode}: {r.stdout}{r.stderr}")


def wait_idle(cpath, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        if not ctl_json(cpath, "clients")["clients"]:
            return
        time.sleep(0.1)
    raise Fail("fuzz clients still connected after 30 s")


def main():
    if os.geteuid() != 0:
        print("# needs root (a userfaultfd with kernel-mode faults)")
        return 77
    if SYS_userfaultfd is None or make_uffd() is None:
        print("# this kernel has no userfaultfd with UFFD_FEATURE_MOVE")
        return 77
    rng = random.Random(SEED)
    log(f"seed {SEED} (replay: UZSWAP_FUZZ_SEED={SEED}), {SECONDS:.0f} s")
    tmp = tempfile.mkdtemp(prefix="uzfuzz-")
    sock, cpath = os.path.join(tmp, "d.sock"), os.path.join(tmp, "control.sock")
    conf = os.path.join(tmp, "uzswapd.conf")
    with open(conf, "w") as f:
        f.write("[Daemon]\nLogLevel=err\n")
    d = subprocess.Popen([UZSWAPD, "--config", conf, "--cgroup-dir", os.path.join(tmp, "none"),
                          "--socket", sock, "--control-socket", cpath, "--resident-max", "4M",
                          "--swap-size", "0"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    rc = 1
    try:
        end = time.time() + 10
        while not os.path.exists(cpath) and time.time() < end:
            time.sleep(0.05)
        run_workload(sock)  # warm-up: lazily opened fds and pools exist now
        wait_idle(cpath)
        fds0, rss0 = fd_count(d.pid), rss(d.pid)
        log(f"after warm-up: {fds0} fds, VmRSS {rss0 >> 10} KiB")

        counts = {"hello": 0, "session": 0, "flood": 0, "control": 0}
        end = time.time() + SECONDS
        while time.time() < end:
            if d.poll() is not None:
                raise Fail(f"uzswapd died (rc {d.returncode}) during the fuzz")
            what = rng.choices(list(counts), weights=[40, 30, 3, 27])[0]
            if what == "hello":
                fuzz_hello(sock, rng)
            elif what == "session":
                fuzz_session(sock, rng)
            elif what == "flood":
                fuzz_flood(sock, rng)
            else:
                fuzz_control(cpath, rng)
            counts[what] += 1
        log(f"rounds: {counts}")

        if d.poll() is not None:
            raise Fail(f"uzswapd died (rc {d.returncode})")
        log("ok: uzswapd still running")
        wait_idle(cpath)
        st = ctl_json(cpath, "status")
        log(f"ok: control socket answers (clients {st['clients']})")
        run_workload(sock)
        log("ok: a correct client works, its data verified")
        wait_idle(cpath)
        time.sleep(0.5)
        fds1, rss1 = fd_count(d.pid), rss(d.pid)
        log(f"after the fuzz: {fds1} fds, VmRSS {rss1 >> 10} KiB")
        if fds1 > fds0 + FD_GROWTH_MAX:
            raise Fail(f"fd leak: {fds0} -> {fds1} fds: {sorted(os.listdir(f'/proc/{d.pid}/fd'))}")
        log(f"ok: open fds {fds0} -> {fds1} (bound +{FD_GROWTH_MAX})")
        if rss1 > rss0 + RSS_GROWTH_MAX:
            raise Fail(f"memory growth: VmRSS {rss0 >> 10} -> {rss1 >> 10} KiB")
        log(f"ok: VmRSS grew {(rss1 - rss0) >> 10} KiB (bound {RSS_GROWTH_MAX >> 20} MiB)")
        d.send_signal(signal.SIGTERM)
        d.communicate(timeout=30)
        if d.returncode != 0:
            raise Fail(f"uzswapd exit code {d.returncode} on SIGTERM")
        log("ok: uzswapd exits 0 on SIGTERM")
        rc = 0
    except (Fail, subprocess.TimeoutExpired, OSError, ValueError, KeyError) as e:
        print(f"not ok: {e} (seed {SEED})", flush=True)
        traceback.print_exc()
    finally:
        if d.poll() is None:
            d.kill()
        try:
            _, err = d.communicate(timeout=30)
            if rc:
                sys.stdout.write(err.decode(errors="replace")[-4000:])
        except (subprocess.TimeoutExpired, ValueError):
            pass
        subprocess.run(["rm", "-rf", tmp])
    return rc


if __name__ == "__main__":
    sys.exit(main())
