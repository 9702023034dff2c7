#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Integration tests of the writeback tier (issue 4): real uzswapd, real clients.

Each test writes a config with a tiny pool ([Pool] MaxSize) and a swap file
in a temp dir, starts uzswapd, runs itest-loop (which verifies every page it
reads against a per-page (page, generation) pattern) under LD_PRELOAD, and
checks the client's final statistics line.  Every process gets a timeout
and is killed at the end; the temp dir (swap file included) is removed.

usage: wbtest.py TEST   (environment as for itest.py: UZSWAPD, LIBUZSWAP, ITEST_BINDIR)
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time


class Fail(Exception):
    pass


def run_test(name, pool="1M", swap_size="64M", writeback=True, inject=None, size="64M",
             expect_signal=None, check=None, managed="yes"):
    tmp = tempfile.mkdtemp(prefix=f"wbtest-{name}-")
    sock = os.path.join(tmp, "uzswapd.sock")
    conf = os.path.join(tmp, "uzswapd.conf")
    with open(conf, "w") as f:
        f.write(f"[Pool]\nMaxSize={pool}\n[Swap]\nFile={tmp}/swapfile\nSize={swap_size}\n")
        f.write(f"[Defaults]\nWriteback={'yes' if writeback else 'no'}\n")
    env = dict(os.environ)
    env.pop("UZSWAP_TEST_INJECT", None)
    if inject:
        env["UZSWAP_TEST_INJECT"] = inject
    daemon = subprocess.Popen(
        [os.environ["UZSWAPD"], "--socket", sock, "--control-socket",
         os.path.join(tmp, "control.sock"), "--cgroup-dir", os.path.join(tmp, "cgroup.d"),
         "--foreground", "--config", conf, "--resident-max", "8M"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    try:
        for _ in range(100):
            if os.path.exists(sock):
                break
            if daemon.poll() is not None:
                raise Fail("uzswapd exited at start: " + daemon.stdout.read())
            time.sleep(0.05)
        cenv = dict(os.environ, UZSWAP_SOCKET=sock, LD_PRELOAD=os.environ["LIBUZSWAP"],
                    UZSWAP_JOIN_MIN="0", UZSWAP_MIN_REGION="4M")  # the test's region only
        cenv.pop("UZSWAP_TEST_INJECT", None)
        loop = os.path.join(os.environ["ITEST_BINDIR"], "itest-loop")
        client = subprocess.run([loop, size, "2", "4", managed], env=cenv, timeout=60,
                                capture_output=True, text=True)
        out = client.stdout + client.stderr
        print(out)
        if expect_signal:
            if client.returncode != -expect_signal:
                raise Fail(f"client exited {client.returncode}, expected signal {expect_signal}")
        elif client.returncode != 0 or "PASS" not in out:
            raise Fail(f"client exited {client.returncode}")
        if daemon.poll() is not None:
            raise Fail("uzswapd died")
        m = re.search(r"on-disk (\d+) pages", out)
        on_disk = int(m.group(1)) if m else None
        if check:
            check(out, on_disk)
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(daemon.pid, signal.SIGKILL)
                daemon.wait()
        print(daemon.stdout.read())
        shutil.rmtree(tmp, ignore_errors=True)


def need(cond, msg):
    if not cond:
        raise Fail(msg)


TESTS = {
    # Most pages go to disk and come back, verified.
    "wb-to-disk-and-back": dict(
        check=lambda out, d: need(d is not None and d > 4096, f"only {d} pages on disk")),
    # Writeback off: the pool refuses past its limit, pages stay resident.
    "wb-off": dict(writeback=False, managed="any",
                   check=lambda out, d: need(d == 0, f"{d} pages on disk with writeback off")),
    # No swap file at all: the same, through the global pool limit.
    "wb-no-swap": dict(swap_size="0", managed="any",
                       check=lambda out, d: need(d == 0, f"{d} pages on disk without swap")),
    # Every write fails: entries stay in the pool, data intact.
    "wb-write-error": dict(inject="write:100", managed="any",
                           check=lambda out, d: need(d == 0, f"{d} pages on disk")),
    # Short writes and reads are resubmitted: data intact.
    "wb-short-io": dict(inject="short-read:50"),
    # A swap file of one data cluster (after its metadata cluster): full at once; stores
    # stay in the pool or resident.
    "wb-swap-full": dict(swap_size="128K", managed="any"),
    # A read fails: that page is poisoned, the client gets SIGBUS (never wrong data).
    "wb-read-error": dict(inject="read:100:1", expect_signal=signal.SIGBUS),
}


def main():
    name = sys.argv[1]
    try:
        run_test(name, **TESTS[name])
    except Fail as e:
        print(f"FAIL: {name}: {e}")
        return 1
    print(f"PASS: {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
