#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Writeback tests that watch the daemon between the client's steps (issue 4).

Each test starts its own uzswapd (temp dir: config, cgroup.d, sockets, swap
file), runs itest-wb clients (every page they read is verified) with
stdin/stdout pipes — a client prints "STEP NAME" and waits for a line —
and reads `uzswapctl stats --json` / `status --json` at those points.
Waits are polls with a bound, never timings.  Every process is killed,
every cgroup removed and the temp dir deleted, pass or fail.

  wb-cgroup-budget   two memory cgroups, only one with a tiny PoolMax:
                     only its pages go to disk (zswpwb per cgroup)
  wb-shrink          uzswapctl shrink --cgroup writes back the group's pages
  wb-pool-limit      global [Pool] MaxSize, no swap: pool_limit_hit rises,
                     pages stay resident; after munmap, stores resume
  wb-space-reuse     munmap of a region on disk frees its swap space; a
                     second round in a tight swap file reuses it
  wb-read-error-one  an injected read error: SIGBUS on that page only
  wb-bad-record      a byte flipped in a record of the swap file: SIGBUS on
                     that record's page only, swap_checksum_errors 1, logged once
  wb-compaction      after a fault-back workload the pool's total size
                     comes back within 1.25 x the compressed bytes

usage: wbsteps.py TEST   (env: UZSWAPD, UZSWAPCTL, LIBUZSWAP, ITEST_BINDIR)
"""
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time

MiB = 1 << 20


class Fail(Exception):
    pass


def log(msg):
    print(f"# {msg}", flush=True)


def need(cond, what):
    if not cond:
        raise Fail(what)
    log(f"ok: {what}")


def cgroup_root():
    root = "/sys/fs/cgroup/memory"
    if os.path.exists(os.path.join(root, "cgroup.procs")):
        return root
    root = "/sys/fs/cgroup"
    if os.path.exists(os.path.join(root, "cgroup.controllers")) and \
            "memory" in open(os.path.join(root, "cgroup.controllers")).read():
        return root
    return None


class Env:
    def __init__(self, name):
        self.tmp = tempfile.mkdtemp(prefix=f"wbsteps-{name}-")
        os.chmod(self.tmp, 0o755)
        self.procs = []
        self.cgroups = []
        self.daemon = None

    # --- setup ---------------------------------------------------------
    def config(self, main, cgroup_files=None):
        os.makedirs(os.path.join(self.tmp, "cgroup.d"), exist_ok=True)
        with open(os.path.join(self.tmp, "uzswapd.conf"), "w") as f:
            f.write(main.replace("@TMP@", self.tmp))
        for name, text in (cgroup_files or {}).items():
            with open(os.path.join(self.tmp, "cgroup.d", name + ".conf"), "w") as f:
                f.write(text)

    def cgroup(self, name):
        root = cgroup_root()
        if not root:
            raise Fail("no memory cgroup hierarchy")
        path = os.path.join(root, f"{name}-{os.getpid()}")
        os.makedirs(path, exist_ok=True)
        self.cgroups.append(path)
        return "/" + os.path.basename(path), path

    def start(self, resident_max="8M", inject=None, fault_threads=2):
        env = dict(os.environ)
        for k in ("UZSWAP_TEST_INJECT", "NOTIFY_SOCKET", "LISTEN_FDS"):
            env.pop(k, None)
        if inject:
            env["UZSWAP_TEST_INJECT"] = inject
        t = self.tmp
        self.daemon = subprocess.Popen(
            [os.environ["UZSWAPD"], "--foreground", "--config", f"{t}/uzswapd.conf",
             "--cgroup-dir", f"{t}/cgroup.d", "--socket", f"{t}/d.sock",
             "--control-socket", f"{t}/control.sock", "--resident-max", resident_max,
             "--fault-threads", str(fault_threads)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)
        self.wait(lambda: os.path.exists(f"{t}/control.sock") and os.path.exists(f"{t}/d.sock"),
                  10, "uzswapd listens")

    def client(self, mode, size, cgroup_dir=None):
        def pre():
            if cgroup_dir:
                with open(os.path.join(cgroup_dir, "cgroup.procs"), "w") as f:
                    f.write(str(os.getpid()))
        env = dict(os.environ, UZSWAP_SOCKET=f"{self.tmp}/d.sock",
                   LD_PRELOAD=os.environ["LIBUZSWAP"], UZSWAP_JOIN_MIN="0",
                   # only the test's own region: an injected I/O error must hit
                   # a page the client guards, not its heap or stdio buffers
                   UZSWAP_MIN_REGION="4M")
        env.pop("UZSWAP_TEST_INJECT", None)
        p = subprocess.Popen([os.path.join(os.environ["ITEST_BINDIR"], "itest-wb"), mode, size],
                             env=env, preexec_fn=pre, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.procs.append(p)
        return p

    # --- talking to them ----------------------------------------------
    def ctl(self, *args):
        r = subprocess.run([os.environ["UZSWAPCTL"], "--socket", f"{self.tmp}/control.sock",
                            *args], capture_output=True, text=True, timeout=20)
        if r.returncode != 0:
            raise Fail(f"uzswapctl {' '.join(args)}: rc {r.returncode}: {r.stdout}{r.stderr}")
        return r.stdout

    def stats(self, cgroup=None):
        """Counters and gauges in one dict (global, or of one cgroup)."""
        if cgroup:
            blk = json.loads(self.ctl("stats", "--json", "--cgroup", cgroup))["cgroups"][0]
        else:
            blk = json.loads(self.ctl("stats", "--json"))["global"]
        return {**blk["counters"], **blk["gauges"]}

    def pool_total_size(self):
        return json.loads(self.ctl("status", "--json"))["pool"]["pool_total_size"]

    @staticmethod
    def wait(pred, timeout, what):
        end = time.time() + timeout
        while time.time() < end:
            v = pred()
            if v:
                return v
            time.sleep(0.1)
        raise Fail(f"timed out ({timeout} s): {what}")

    @staticmethod
    def expect_step(p, name, timeout=30):
        """Read the client's output up to its line STEP name; that output."""
        end = time.time() + timeout
        seen = ""
        while time.time() < end:
            line = p.stdout.readline()
            if not line:
                raise Fail(f"client exited before step {name} (rc {p.wait()})")
            print(line, end="")
            seen += line
            if line.strip() == f"STEP {name}":
                return seen
        raise Fail(f"timed out waiting for step {name}")

    @staticmethod
    def go_on(p):
        p.stdin.write("go\n")
        p.stdin.flush()

    def wait_writeback_settled(self, min_on_disk, what, timeout=20):
        """Settled: the pool is below the shrinker's start threshold (90% of
        MaxSize=1M, writeback.c), so no more writeback is due, and the pages
        on disk have not changed for a second -- longer than a writeback
        back-off, so a pause between two batches is not taken for the end."""
        last = {"value": -1, "since": 0.0}

        def settled():
            s = self.stats()
            now = time.time()
            if s["on_disk_pages"] != last["value"]:
                last.update(value=s["on_disk_pages"], since=now)
                return None
            quiet = now - last["since"] >= 1.0
            idle = s["compressed_bytes"] <= MiB * 9 // 10
            return s if s["on_disk_pages"] > min_on_disk and quiet and idle else None
        return self.wait(settled, timeout, what)

    def stop(self):
        """SIGTERM the daemon (it gives every page back and exits); its output."""
        if self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.daemon.pid, signal.SIGKILL)
                self.daemon.wait()
        out = self.daemon.stdout.read()
        print(out, end="")
        self.daemon = None
        return out

    def finish(self, p, timeout=60):
        out, _ = p.communicate(timeout=timeout)
        print(out, end="")
        if p.returncode != 0 or "PASS" not in out:
            raise Fail(f"client exited {p.returncode}")
        return out

    def cleanup(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        if self.daemon:
            self.stop()
        for c in reversed(self.cgroups):
            for _ in range(50):
                try:
                    os.rmdir(c)
                    break
                except OSError:
                    time.sleep(0.1)
        shutil.rmtree(self.tmp, ignore_errors=True)


def t_cgroup_budget(e):
    name_a, dir_a = e.cgroup("uzwb-a")
    name_b, dir_b = e.cgroup("uzwb-b")
    e.config("[Pool]\nMaxSize=1G\n[Swap]\nFile=@TMP@/swapfile\nSize=128M\n",
             {"a": f"[Match]\nCgroup={name_a}\n[Limits]\nResidentMax=4M\nPoolMax=1M\n",
              "b": f"[Match]\nCgroup={name_b}\n[Limits]\nResidentMax=4M\n"})
    # one fault thread: both clients' pages are on the same thread, whose LRUs must
    # keep the groups apart
    e.start(fault_threads=1)
    pa = e.client("hold", "24M", dir_a)
    pb = e.client("hold", "24M", dir_b)
    e.expect_step(pa, "filled")
    e.expect_step(pb, "filled")
    # (24 - 4) MiB evicted from each; a's pool holds no more than ~1 MiB
    e.wait(lambda: e.stats(name_a)["zswpwb"] > 2000, 15, f"{name_a} writes back")
    e.wait(lambda: (lambda s: s["stored_pages"] + s["on_disk_pages"])(e.stats(name_b)) > 4000,
           15, f"{name_b} evicts")
    sa, sb = e.stats(name_a), e.stats(name_b)
    log(f"{name_a}: zswpwb {sa['zswpwb']} on disk {sa['on_disk_pages']} "
        f"compressed {sa['compressed_bytes']}; {name_b}: zswpwb {sb['zswpwb']} "
        f"stored {sb['stored_pages']} compressed {sb['compressed_bytes']}")
    need(sa["on_disk_pages"] > 2000, f"{name_a} (PoolMax=1M) has its pages on disk")
    need(sa["compressed_bytes"] <= 1 * MiB + 256 * 1024, f"{name_a} pool within its PoolMax")
    need(sb["zswpwb"] == 0 and sb["on_disk_pages"] == 0,
         f"{name_b} (no PoolMax) had none of its pages written back")
    for p in (pa, pb):
        e.go_on(p)
        e.expect_step(p, "shrunk")
        e.go_on(p)
    e.finish(pa)
    e.finish(pb)
    need(e.stats(name_b)["zswpwb"] == 0, f"{name_b} still untouched after the verify pass")


def t_shrink(e):
    name, path = e.cgroup("uzwb-s")
    e.config("[Pool]\nMaxSize=1G\n[Swap]\nFile=@TMP@/swapfile\nSize=128M\n",
             {"s": f"[Match]\nCgroup={name}\n[Limits]\nResidentMax=4M\n"})
    e.start()
    p = e.client("hold", "24M", path)
    e.expect_step(p, "filled")
    e.wait(lambda: e.stats(name)["stored_pages"] > 4000, 15, "pages stored")
    before = e.stats(name)
    need(before["zswpwb"] == 0, "nothing written back before the shrink")
    r = json.loads(e.ctl("shrink", "--cgroup", name, "--bytes", "4M", "--json"))
    log(f"shrink: {r}")
    e.wait(lambda: e.stats(name)["zswpwb"] > 0, 10, "shrink writes back")
    # let the shrink finish: zswpwb stops moving
    last = [-1]

    def settled():
        v = e.stats(name)["zswpwb"]
        done = v == last[0]
        last[0] = v
        return done
    e.wait(settled, 10, "shrink settles")
    after = e.stats(name)
    log(f"after shrink: zswpwb {after['zswpwb']}, on disk {after['on_disk_pages']} pages "
        f"{after['swap_bytes_on_disk']} bytes, pool bytes {before['compressed_bytes']} -> "
        f"{after['compressed_bytes']}")
    need(after["zswpwb"] > 256, "uzswapctl shrink wrote pages of the group back")
    need(after["swap_bytes_on_disk"] <= 4 * MiB + 64 * 4096 + after["on_disk_pages"] * 512,
         "bounded by the bytes asked (4 MiB, plus a batch and granule padding)")
    e.go_on(p)
    e.expect_step(p, "shrunk")
    e.go_on(p)
    e.finish(p)
    need(e.stats(name)["disk_swapins"] > 0, "the written-back pages came back verified")


def t_pool_limit(e):
    e.config("[Pool]\nMaxSize=2M\n[Swap]\nSize=0\n")
    e.start(resident_max="8M")
    p = e.client("limit", "32M")
    e.expect_step(p, "filled")
    e.wait(lambda: e.stats()["pool_limit_hit"] > 0, 15, "pool_limit_hit rises")
    time.sleep(0.5)
    s1 = e.stats()
    log(f"over the limit: zswpout {s1['zswpout']} stored {s1['stored_pages']} compressed "
        f"{s1['compressed_bytes']} resident {s1['resident_pages']} pool_limit_hit "
        f"{s1['pool_limit_hit']}")
    need(s1["compressed_bytes"] <= 2 * MiB, "the pool stays within [Pool] MaxSize")
    need(s1["resident_pages"] * 4096 > 16 * MiB,
         "refused pages stay resident (over the 8M resident budget)")
    need(s1["on_disk_pages"] == 0, "nothing on disk without a swap file")
    e.go_on(p)
    e.expect_step(p, "freed")
    # the first half is gone: the pool falls below the accept threshold, stores resume
    s2 = e.wait(lambda: (lambda s: s if s["zswpout"] > s1["zswpout"] + 256 else None)(e.stats()),
                15, "stores resume after the client freed memory")
    log(f"after munmap: zswpout {s2['zswpout']} stored {s2['stored_pages']} compressed "
        f"{s2['compressed_bytes']} resident {s2['resident_pages']}")
    need(True, f"zswpout rose {s1['zswpout']} -> {s2['zswpout']} below the accept threshold")
    e.go_on(p)
    e.finish(p)


def t_space_reuse(e):
    e.config("[Pool]\nMaxSize=1M\n[Swap]\nFile=@TMP@/swapfile\nSize=@SWAP@\n"
             .replace("@SWAP@", os.environ.get("WB_REUSE_SWAP", "20M")))
    e.start(resident_max="4M")
    p = e.client("reuse", "32M")
    e.expect_step(p, "filled")
    s1 = e.wait_writeback_settled(3000, "first round on disk")
    log(f"round 1: on disk {s1['on_disk_pages']} pages, {s1['swap_bytes_on_disk']} bytes")
    e.go_on(p)
    e.expect_step(p, "unmapped")
    s2 = e.wait(lambda: (lambda s: s if s["on_disk_pages"] == 0 else None)(e.stats()), 10,
                "munmap frees the pages on disk")
    log(f"after munmap: on disk {s2['on_disk_pages']} pages, {s2['swap_bytes_on_disk']} bytes")
    need(s2["swap_bytes_on_disk"] == 0, "munmap freed every byte on disk")
    e.go_on(p)
    e.expect_step(p, "refilled")
    s3 = e.wait_writeback_settled(3000, "second round on disk")
    log(f"round 2: on disk {s3['on_disk_pages']} pages, {s3['swap_bytes_on_disk']} bytes, "
        f"reject_reclaim_fail {s3['reject_reclaim_fail']}")
    need(s3["on_disk_pages"] >= s1["on_disk_pages"] * 9 // 10,
         "the second round fits in the same (tight) swap file: freed space was reused")
    need(s3["swap_bytes_on_disk"] <= s1["swap_bytes_on_disk"] * 11 // 10,
         "the second round does not grow the space used")
    e.go_on(p)
    e.finish(p)


def t_read_error_one(e):
    e.config("[Pool]\nMaxSize=1M\n[Swap]\nFile=@TMP@/swapfile\nSize=64M\n")
    e.start(resident_max="4M", inject="read:100:1")
    p = e.client("readerr", "24M")
    out = e.finish(p)
    need("SIGBUS on 1 page(s)" in out, "exactly one page poisoned, every other page verified")
    need(e.stats()["io_errors"] == 1, "the read error was counted once")


# The swap file's superblock and record header (docs/SWAP.md, "On-disk layout").
SUPER = struct.Struct("<8sIIQ16sIIQQQQQQIIQ")
SUPER_MAGIC = b"UZSWAPF\n"
RECORD = struct.Struct("<IHHQQQ")
RECORD_MAGIC = 0x31525A55


def damage_live_record(path):
    """Flip one byte in the middle of the object of a live record (one whose
    slot has a nonzero reference count) of the swap file; its vpn."""
    with open(path, "r+b") as f:
        (magic, _version, _state, _gen, _boot, granule, cluster, clusters, _size, data_offset,
         _owners, _maps, refs_offset, _cap, header, _sum) = SUPER.unpack(f.read(SUPER.size))
        if magic != SUPER_MAGIC or header != RECORD.size:
            raise Fail(f"swap file superblock not understood ({magic!r}, header {header})")
        f.seek(refs_offset)
        refs = f.read(clusters * (cluster // granule))
        live = [g for g, count in enumerate(refs) if count]
        if not live:
            raise Fail("no live record in the swap file")
        granule_index = live[len(live) // 2]
        at = data_offset + granule_index * granule
        f.seek(at)
        magic, length, _reserved, _owner, vpn, _checksum = RECORD.unpack(f.read(RECORD.size))
        if magic != RECORD_MAGIC or not 0 < length <= 4096:
            raise Fail(f"granule {granule_index}: not a record (magic {magic:#x}, len {length})")
        f.seek(at + RECORD.size + length // 2)
        byte = f.read(1)
        f.seek(at + RECORD.size + length // 2)
        f.write(bytes([byte[0] ^ 0x5A]))
        f.flush()
        os.fsync(f.fileno())
    log(f"flipped a byte of the record at granule {granule_index} ({len(live)} live): "
        f"vpn {vpn:#x}, {length} bytes")
    return vpn


def t_bad_record(e):
    e.config("[Pool]\nMaxSize=1M\n[Swap]\nFile=@TMP@/swapfile\nSize=64M\n")
    e.start(resident_max="4M")
    p = e.client("badrecord", "24M")
    before = e.expect_step(p, "ondisk")
    e.wait_writeback_settled(1000, "pages on disk, writeback done")
    vpn = damage_live_record(os.path.join(e.tmp, "swapfile"))
    e.go_on(p)
    out = e.finish(p)
    need("SIGBUS on 1 page(s)" in out, "exactly one page poisoned, every other page verified")
    region = re.search(r"region at (0x[0-9a-f]+)", before)
    bad = re.search(r"SIGBUS on 1 page\(s\) \(page (\d+)\)", out)
    need(region and bad and int(region.group(1), 16) + int(bad.group(1)) * 4096 == vpn * 4096,
         "the poisoned page is the one whose record was damaged")
    s = e.stats()
    need(s["swap_checksum_errors"] == 1, "swap_checksum_errors counted once")
    need(s["io_errors"] == 0, "not counted as an I/O error")
    daemon_out = e.stop()
    need(daemon_out.count("did not verify") == 1, "the daemon logged it once")


def t_compaction(e):
    e.config("[Pool]\nMaxSize=1G\n[Swap]\nSize=0\n")
    e.start(resident_max="4M")
    p = e.client("compact", "48M")
    e.expect_step(p, "settled")
    s = e.stats()
    total = e.pool_total_size()
    ratio0 = total / max(s["compressed_bytes"], 1)
    log(f"after the workload: pool_total_size {total}, compressed {s['compressed_bytes']}, "
        f"ratio {ratio0:.2f}")
    seen = {}

    def bounded():
        st, tot = e.stats(), e.pool_total_size()
        seen.update(st, total=tot)
        return tot <= st["compressed_bytes"] * 1.25 and st["compressed_bytes"] > 0
    e.wait(bounded, 15, "pool total size within 1.25 x compressed bytes")
    log(f"settled: pool_total_size {seen['total']}, compressed {seen['compressed_bytes']}, "
        f"ratio {seen['total'] / seen['compressed_bytes']:.2f}, "
        f"compacted_objects {seen.get('compacted_objects')}")
    need(True, "fragmentation bounded (ratio <= 1.25)")
    # On a loaded machine compaction may have run before the first look:
    # then the objects it had moved already are the proof of a sparse pool.
    need(seen["compacted_objects"] > 0 and (ratio0 > 1.25 or s.get("compacted_objects", 0) > 0),
         f"it was compaction that bounded it (the workload left the pool sparse: ratio "
         f"{ratio0:.2f} at the first look, {s.get('compacted_objects', 0)} objects moved by then)")
    e.go_on(p)
    e.finish(p)


TESTS = {
    "wb-cgroup-budget": (t_cgroup_budget, True),
    "wb-shrink": (t_shrink, True),
    "wb-pool-limit": (t_pool_limit, False),
    "wb-space-reuse": (t_space_reuse, False),
    "wb-read-error-one": (t_read_error_one, False),
    "wb-bad-record": (t_bad_record, False),
    "wb-compaction": (t_compaction, False),
}


def main():
    name = sys.argv[1]
    fn, needs_cgroups = TESTS[name]
    if needs_cgroups and (os.geteuid() != 0 or not cgroup_root()):
        print("# needs root and a memory cgroup controller")
        return 77
    e = Env(name)
    try:
        fn(e)
    except (Fail, subprocess.TimeoutExpired, OSError, KeyError, ValueError) as ex:
        print(f"FAIL: {name}: {ex}", flush=True)
        return 1
    finally:
        e.cleanup()
    print(f"PASS: {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
