#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The units under a real systemd: boot one in a container, run uzswap as an operator would.

usage: test-systemd.py SRCDIR BUILDDIR

The container (tests/systemd/container.py): a cached Debian root with
systemd and the runtime libraries of uzswap, an overlay on top, uzswap
installed into it with `meson install --destdir` from a --prefix=/usr
build, booted with systemd-nspawn.  Then, in one boot, in this order:

  boot          systemd reaches "running"; sysusers made group uzswap,
                tmpfiles /var/lib/uzswap (0700)
  activation    only the two sockets started: a client (a transient
                service under the example drop-in's environment) connects
                before uzswapd runs, systemd starts uzswapd, the client is
                paged and verifies; uzswapctl starts it through the control
                socket the same way; the join and leave are in the journal
                with MESSAGE_ID=, UZSWAP_CLIENT_PID=, UZSWAP_CGROUP=
  enable        systemctl enable --now of the three units: enabled, active,
                `systemctl status` shows the daemon's STATUS= line, uzswapctl
                status names the MainPID
  watchdog      UZSWAP_TEST_STALL_FAULT_THREAD + a short WatchdogSec= in a
                runtime drop-in: the pings stop, systemd kills uzswapd
                (watchdog timeout) and restarts it; the stalled client runs on
  unprivileged  a User=nobody program without access to /dev/userfaultfd
                runs unmanaged (and verifies); with the node as
                60-uzswap.rules makes it (group uzswap, 0660; done by hand:
                no udev in a container) a User=nobody service with the
                example drop-in (SupplementaryGroups=uzswap) is paged and
                verifies
  enrolled      a service with the example drop-in
                (examples/systemd/redis-server.service.d/uzswap.conf, as is)
                and a cgroup.d budget: `uzswapctl clients` shows it in its
                cgroup with that budget, its pages are stored (stats, STATUS=),
                it verifies them on demand; journalctl -x knows the catalog
  reload        systemctl reload with a good file (new budget) and a bad one
                (reload fails, old budget kept, FILE:LINE: KEY in
                journalctl -u uzswapd, MESSAGE_ID= of a refused reload)
  events        shrink and a refused connection, with their fields
  cli-config    uzswapctl follows ControlSocket= and Socket= of uzswapd.conf
  hardening     in the daemon's own mount namespace only /var/lib/uzswap and
                /run/uzswap are writable, /tmp is private; its capability
                bounding set, NoNewPrivs and seccomp are what the unit says
  stop          systemctl stop with the enrolled service holding evicted
                pages: every page given back (the service sees all its pages
                resident and verifies them), it keeps running, the sockets
                stay and activate the daemon again; the service then stops
                cleanly after a last check

A SIGKILLed uzswapd restarted by systemd under a service holding evicted
pages is test-systemd-sigkill.py: not registered in meson until restart
without loss exists (see tests/systemd/meson.build).

Exit 77 only when this machine cannot boot a container (the reason is
printed).  The container is removed on every exit path (container.py).
"""
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import os
import re
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import container  # noqa: E402
from container import Fail, Skip, log, wait_for  # noqa: E402

SRC, BUILD = sys.argv[1:3]
DROPIN = os.path.join(SRC, "examples/systemd/redis-server.service.d/uzswap.conf")
WORKLOAD = "/usr/local/bin/uzswap-workload"
DEMO_CGROUP = "/system.slice/uzdemo.service"
ACTIVATE_CGROUP = "/system.slice/uzactivate.service"
USER_CGROUP = "/system.slice/uzuser.service"
MiB = 1 << 20

# MESSAGE_IDs, read from the daemon's own header so the test follows it.
IDS = dict(re.findall(r'#define UZ_MESSAGE_([A-Z_]+) "([0-9a-f]{32})"',
                      open(os.path.join(SRC, "daemon/log.h")).read()))


def check(cond, what):
    if not cond:
        raise Fail(what)
    log(f"ok: {what}")


def cgroup_conf(cgroup, resident_max):
    return f"[Match]\nCgroup={cgroup}\n[Limits]\nResidentMax={resident_max}\nCompressor=lz4\n"


def dropin_env():
    """The Environment= lines of the example drop-in, as systemd-run -p options."""
    envs = [line.strip() for line in open(DROPIN) if line.startswith("Environment=")]
    if not envs:
        raise Fail(f"{DROPIN} has no Environment= line")
    return [a for e in envs for a in ("-p", e)]


class Suite:
    def __init__(self, c):
        self.c = c

    # -- helpers
    def ctl_json(self, *args):
        import json
        p = self.c.run(["uzswapctl", *args, "--json"], timeout=30)
        return json.loads(p.stdout)

    def records(self, kind, *match):
        return self.c.journal("-u", "uzswapd", f"MESSAGE_ID={IDS[kind]}", *match)

    def daemon_pid(self):
        return int(self.c.show("uzswapd.service", "MainPID"))

    def demo_lines(self):
        return [r.get("MESSAGE", "") for r in self.c.journal("-u", "uzdemo.service", "_COMM=uzswap-workload")]

    def demo_check(self):
        """SIGUSR1 to the enrolled service; its next `check N:` line."""
        before = len([l for l in self.demo_lines() if l.startswith("check ")])
        self.c.run(["systemctl", "kill", "-s", "SIGUSR1", "--kill-who=main", "uzdemo.service"])
        lines = wait_for(lambda: [l for l in self.demo_lines() if l.startswith("check ")][before:],
                         120, "the enrolled service's check line")
        return lines[0]

    def demo_client(self):
        pid = int(self.c.show("uzdemo.service", "MainPID"))
        for cl in self.ctl_json("clients")["clients"]:
            if cl["pid"] == pid:
                return cl
        return None

    # -- the checks
    def t_boot(self):
        c = self.c
        check(c.run(["systemctl", "is-system-running"], check=False).stdout.strip() == "running",
              "the container's systemd is running")
        # What the README says to run after an install (boot did it already: idempotent).
        for cmd in (["systemd-sysusers"], ["systemd-tmpfiles", "--create"],
                    ["systemctl", "daemon-reload"]):
            c.run(cmd, timeout=60)
        check(True, "systemd-sysusers, systemd-tmpfiles --create, systemctl daemon-reload run cleanly")
        check(c.run(["getent", "group", "uzswap"], check=False).returncode == 0,
              "systemd-sysusers created group uzswap (uzswap.sysusers)")
        mode = c.run(["stat", "-c", "%a %U", "/var/lib/uzswap"]).stdout.split()
        check(mode == ["700", "root"], f"tmpfiles made /var/lib/uzswap 0700 root ({mode})")
        check(c.show("uzswapd.service", "LoadState") == "loaded", "uzswapd.service is loaded")
        check(c.show("uzswapd.service", "ActiveState") == "inactive",
              "uzswapd.service is not running before anything asks for it")

    def t_activation(self):
        c = self.c
        c.run(["systemctl", "start", "uzswapd.socket", "uzswapd-control.socket"])
        check(c.show("uzswapd.socket", "ActiveState") == "active" and
              c.show("uzswapd-control.socket", "ActiveState") == "active",
              "uzswapd.socket and uzswapd-control.socket listen")
        check(c.show("uzswapd.service", "ActiveState") == "inactive",
              "uzswapd.service is still not running")
        p = c.run(["systemd-run", "--wait", "--pipe", "--quiet", "--unit=uzactivate",
                   "-p", "Wants=uzswapd.socket", "-p", "After=uzswapd.socket", *dropin_env(),
                   WORKLOAD, "--size", "24M", "--passes", "1"], timeout=120, check=False)
        out = p.stdout + p.stderr
        log("client output:\n" + out)
        check(p.returncode == 0 and "verified:" in out,
              "a client started before uzswapd verified every page")
        m = re.search(r"pass 1: (\d+) pages were not resident", out)
        check(m and int(m.group(1)) > 0,
              f"it was paged by uzswapd: {m.group(1) if m else '?'} pages not resident")
        check(c.show("uzswapd.service", "ActiveState") == "active",
              "its connection made systemd start uzswapd.service")
        joins = [r for r in self.records("CLIENT_JOINED") if r.get("UZSWAP_CGROUP") == ACTIVATE_CGROUP]
        check(joins and joins[0].get("UZSWAP_CLIENT_PID", "").isdigit() and
              joins[0].get("UZSWAP_COMM") == "uzswap-workload" and
              joins[0].get("UZSWAP_RESIDENT_MAX") == str(8 * MiB),
              f"journal: join with MESSAGE_ID={IDS['CLIENT_JOINED']}, UZSWAP_CLIENT_PID=, "
              f"UZSWAP_CGROUP={ACTIVATE_CGROUP}, UZSWAP_RESIDENT_MAX=8M")
        pid = joins[0]["UZSWAP_CLIENT_PID"]
        leaves = wait_for(lambda: self.records("CLIENT_LEFT", f"UZSWAP_CLIENT_PID={pid}"), 20,
                          "the client's leave record")
        check(leaves[0].get("UZSWAP_REASON") == "exited" and
              int(leaves[0].get("UZSWAP_ZSWPOUT", "0")) > 0,
              f"journal: leave with MESSAGE_ID={IDS['CLIENT_LEFT']} for pid {pid}, "
              f"UZSWAP_REASON=exited, UZSWAP_ZSWPOUT={leaves[0].get('UZSWAP_ZSWPOUT')}")
        # The control socket activates the daemon too.
        c.run(["systemctl", "stop", "uzswapd.service"], timeout=60)
        check(c.show("uzswapd.service", "ActiveState") == "inactive", "uzswapd stopped")
        st = c.run(["uzswapctl", "status"], timeout=60)
        check("version" in st.stdout and c.show("uzswapd.service", "ActiveState") == "active",
              "uzswapctl status through uzswapd-control.socket started uzswapd and was answered")

    def t_enable(self):
        c = self.c
        c.run(["systemctl", "enable", "--now", "uzswapd.socket", "uzswapd-control.socket",
               "uzswapd.service"], timeout=60)
        for unit in ("uzswapd.socket", "uzswapd-control.socket", "uzswapd.service"):
            check(c.run(["systemctl", "is-enabled", unit], check=False).stdout.strip() == "enabled"
                  and c.show(unit, "ActiveState") == "active", f"{unit} enabled and active")
        status = wait_for(lambda: re.search(r'Status: "(\d+ clients?, resident .*)"',
                                            c.run(["systemctl", "status", "--no-pager", "uzswapd"],
                                                  check=False).stdout), 10, "a Status: line")
        check(True, f"systemctl status shows the daemon's STATUS=: \"{status.group(1)}\"")
        st = self.ctl_json("status")
        check(st.get("pid") == self.daemon_pid() and st.get("socket") == "/run/uzswap/uzswapd.sock",
              f"uzswapctl status: pid {st.get('pid')} is the MainPID, socket {st.get('socket')}")
        check(st["swap"]["file"] == "/var/lib/uzswap/swapfile" and
              c.run(["test", "-f", "/var/lib/uzswap/swapfile"], check=False).returncode == 0,
              "the swap file is in the state directory")

    def t_watchdog(self):
        c = self.c
        c.write("/run/systemd/system/uzswapd.service.d/50-test-watchdog.conf",
                "[Service]\nEnvironment=UZSWAP_TEST_STALL_FAULT_THREAD=30000\nWatchdogSec=4s\n")
        c.run(["systemctl", "daemon-reload"])
        c.run(["systemctl", "restart", "uzswapd.service"], timeout=60)
        pid_before = self.daemon_pid()
        restarts = int(c.show("uzswapd.service", "NRestarts"))
        c.run(["systemd-run", "--quiet", "--unit=uzstall", "-p", "RemainAfterExit=yes",
               *dropin_env(), WORKLOAD, "--size", "8M", "--passes", "1"])
        wait_for(lambda: int(c.show("uzswapd.service", "NRestarts")) > restarts and
                 c.show("uzswapd.service", "ActiveState") == "active" and
                 self.daemon_pid() not in (0, pid_before), 60,
                 "systemd to restart uzswapd after its watchdog ran out")
        sd = [r.get("MESSAGE", "") for r in c.journal("-u", "uzswapd", "_PID=1")]
        check(any("Watchdog timeout" in m for m in sd),
              "systemd: \"uzswapd.service: Watchdog timeout\", then a restart "
              f"(MainPID {pid_before} -> {self.daemon_pid()})")
        check(self.records("WATCHDOG_STUCK", f"_PID={pid_before}"),
              f"journal: the daemon said a fault thread is stuck (MESSAGE_ID={IDS['WATCHDOG_STUCK']})")
        # Every restarted daemon would stall again on the same hook: a healthy one now.
        c.run(["rm", "/run/systemd/system/uzswapd.service.d/50-test-watchdog.conf"])
        c.run(["systemctl", "daemon-reload"])
        c.run(["systemctl", "restart", "uzswapd.service"], timeout=60)
        wait_for(lambda: c.show("uzstall.service", "SubState") == "exited", 90,
                 "the stalled client to finish")
        check(c.show("uzstall.service", "ExecMainStatus") == "0",
              "the client whose fault thread stalled waited for a healthy uzswapd, re-joined "
              "it with its pages and verified")
        c.run(["systemctl", "stop", "uzstall.service"])

    def t_unprivileged(self):
        c = self.c
        # Without access to /dev/userfaultfd (root's 0600 here, no group)
        # and with vm.unprivileged_userfaultfd=0, libuzswap refuses to
        # manage the program rather than break its system calls.
        p = c.run(["systemd-run", "--wait", "--pipe", "--quiet", "-p", "User=nobody",
                   "--unit=uznobody", *dropin_env(), WORKLOAD, "--size", "24M", "--passes", "1"],
                  timeout=120, check=False)
        out = p.stdout + p.stderr
        check(p.returncode == 0 and "verified:" in out and "running unmanaged" in out and
              re.search(r"pass 1: 0 pages were not resident", out),
              "a User=nobody service without /dev/userfaultfd runs unmanaged and verifies: "
              + next((l for l in out.splitlines() if "libuzswap" in l), "?"))
        # What 60-uzswap.rules makes udev do (the container has no udev): the
        # node in group uzswap, mode 0660.  Only the container's view changes.
        rule = open(os.path.join(SRC, "systemd/60-uzswap.rules")).read()
        check('KERNEL=="userfaultfd", GROUP="uzswap", MODE="0660"' in rule,
              "60-uzswap.rules gives /dev/userfaultfd to group uzswap, 0660")
        c.run(["sh", "-c", "umount /dev/userfaultfd && rm -f /dev/userfaultfd && "
               "mknod -m 0660 /dev/userfaultfd c 10 257 && chgrp uzswap /dev/userfaultfd"])
        # A User=nobody service with the example drop-in as it is.
        c.run(["systemctl", "start", "uzuser.service"], timeout=120, check=False)
        out = "\n".join(r.get("MESSAGE", "") for r in c.journal("-u", "uzuser.service",
                                                                 "_COMM=uzswap-workload"))
        log("User=nobody with the drop-in:\n" + out)
        m = re.search(r"pass 1: (\d+) pages were not resident", out)
        check(c.show("uzuser.service", "Result") == "success" and "verified:" in out and
              m and int(m.group(1)) > 0,
              "a User=nobody service with the example drop-in is paged "
              f"({m.group(1) if m else '?'} pages not resident) and verifies")
        joins = self.records("CLIENT_JOINED", f"UZSWAP_CGROUP={USER_CGROUP}")
        check(joins and joins[-1].get("UZSWAP_CLIENT_UID") == "65534",
              f"journal: it joined as uid 65534 (UZSWAP_CLIENT_UID=), cgroup {USER_CGROUP}")

    def t_enrolled(self):
        c = self.c
        c.run(["systemctl", "start", "uzdemo.service"], timeout=60)
        wait_for(lambda: any(l.startswith("waiting:") for l in self.demo_lines()), 120,
                 "the enrolled service to write, read back and verify its memory")
        log("enrolled service: " + " | ".join(self.demo_lines()))
        check(any(l.startswith("verified:") for l in self.demo_lines()),
              "the enrolled service verified its data")
        client = wait_for(self.demo_client, 10, "the enrolled service in uzswapctl clients")
        check(client["cgroup"] == DEMO_CGROUP and client["resident_max"] == 16 * MiB,
              f"uzswapctl clients: pid {client['pid']} in {client['cgroup']} with the "
              f"cgroup.d budget ResidentMax=16M ({client['resident_max']})")
        table = c.run(["uzswapctl", "clients"]).stdout
        check(DEMO_CGROUP in table and "16.0 MiB" in table, "the table says the same:\n" + table)
        client = wait_for(lambda: (lambda cl: cl if cl and cl["stored_pages"] > 0 and
                                   cl["resident_bytes"] <= 16 * MiB else None)(self.demo_client()),
                          30, "the enrolled service held under its budget with pages stored")
        check(True, f"its pages are stored: {client['stored_pages']} pages, "
              f"{client['resident_bytes'] // MiB} MiB resident of 64 MiB")
        stats = self.ctl_json("stats", "--cgroup", DEMO_CGROUP)
        block = stats["cgroups"][0]
        check(block["gauges"]["stored_pages"] > 0 and block["counters"]["zswpout"] > 0 and
              block["gauges"]["compressed_bytes"] > 0,
              f"uzswapctl stats --cgroup {DEMO_CGROUP}: stored_pages "
              f"{block['gauges']['stored_pages']}, zswpout {block['counters']['zswpout']}, "
              f"compression ratio {block.get('compression_ratio')}")
        status = wait_for(lambda: re.search(r'Status: "(1 client, resident \d+ MiB, stored ([1-9]\d*) MiB.*)"',
                                            c.run(["systemctl", "status", "--no-pager", "uzswapd"],
                                                  check=False).stdout), 10,
                          "a live Status: line with the client's stored pages")
        check(True, f"systemctl status follows it live: \"{status.group(1)}\"")
        line = self.demo_check()
        m = re.match(r"check \d+: every page verified \((\d+) pages, (\d+) not resident", line)
        check(m and int(m.group(2)) > 0,
              f"the service reads every page back from uzswapd and verifies: \"{line}\"")
        pid = client["pid"]
        joins = self.records("CLIENT_JOINED", f"UZSWAP_CLIENT_PID={pid}")
        check(joins and joins[0].get("UZSWAP_CGROUP") == DEMO_CGROUP and
              joins[0].get("UZSWAP_CLIENT_ID") == str(client["id"]),
              f"journalctl -u uzswapd -o json MESSAGE_ID={IDS['CLIENT_JOINED']} "
              f"UZSWAP_CLIENT_PID={pid}: UZSWAP_CGROUP={DEMO_CGROUP}, "
              f"UZSWAP_CLIENT_ID={client['id']}")
        by_cgroup = c.journal("UZSWAP_CGROUP=" + DEMO_CGROUP)
        check(by_cgroup, f"journalctl UZSWAP_CGROUP={DEMO_CGROUP} finds its messages")
        c.run(["journalctl", "--update-catalog"], timeout=60)
        cat = c.run(["journalctl", "--no-pager", "-x", "-u", "uzswapd",
                     f"MESSAGE_ID={IDS['CLIENT_JOINED']}"]).stdout
        check("Subject: A process joined uzswapd" in cat and DEMO_CGROUP in cat,
              "journalctl -x explains the join from the installed catalog")

    def t_reload(self):
        c = self.c
        conf = "/etc/uzswap/cgroup.d/uzdemo.conf"
        c.write(conf, cgroup_conf(DEMO_CGROUP, "12M"))
        p = c.run(["systemctl", "reload", "uzswapd.service"], check=False, timeout=60)
        check(p.returncode == 0, "systemctl reload with a good file succeeds")
        client = wait_for(lambda: (lambda cl: cl if cl and cl["resident_max"] == 12 * MiB else None)(
            self.demo_client()), 10, "the new budget")
        check(True, f"the new budget applies: resident_max {client['resident_max']}")
        ok = self.records("RELOADED")
        check(ok and ok[-1].get("UZSWAP_CONFIG") == "/etc/uzswap/uzswapd.conf",
              f"journal: reload with MESSAGE_ID={IDS['RELOADED']}, UZSWAP_CONFIG=")
        c.write(conf, cgroup_conf(DEMO_CGROUP, "12Q"))
        p = c.run(["systemctl", "reload", "uzswapd.service"], check=False, timeout=60)
        check(p.returncode != 0, f"systemctl reload with a bad file fails: {p.stderr.strip()}")
        check(c.show("uzswapd.service", "ActiveState") == "active", "uzswapd keeps running")
        check(self.demo_client()["resident_max"] == 12 * MiB, "the running budget is kept (12M)")
        text = c.run(["journalctl", "--no-pager", "-u", "uzswapd", "-n", "30"]).stdout
        check(f"{conf}:4: ResidentMax" in text,
              f"journalctl -u uzswapd names the reason ({conf}:4: ResidentMax)")
        bad = self.records("RELOAD_REFUSED")
        check(bad and f"{conf}:4: ResidentMax" in bad[-1].get("UZSWAP_REASON", ""),
              f"journal: MESSAGE_ID={IDS['RELOAD_REFUSED']} with UZSWAP_REASON="
              f"\"{bad[-1].get('UZSWAP_REASON') if bad else ''}\"")
        c.write(conf, cgroup_conf(DEMO_CGROUP, "16M"))
        c.run(["systemctl", "reload", "uzswapd.service"], timeout=60)
        wait_for(lambda: self.demo_client()["resident_max"] == 16 * MiB, 10, "16M again")

    def t_events(self):
        c = self.c
        c.run(["uzswapctl", "shrink", "--cgroup", DEMO_CGROUP, "--bytes", "4M"])
        shrink = wait_for(lambda: self.records("SHRINK", f"UZSWAP_CGROUP={DEMO_CGROUP}"), 10,
                          "the shrink record")
        check(shrink[-1].get("UZSWAP_BYTES") == str(4 * MiB),
              f"journal: shrink with MESSAGE_ID={IDS['SHRINK']}, UZSWAP_CGROUP=, UZSWAP_BYTES=")
        # A malformed HELLO from a process in the container's pid namespace
        # (host python, through the container's /run): refused and logged.
        sock = f"/proc/{c.leader}/root/run/uzswap/uzswapd.sock"
        code = ("import os, socket, sys, time\n"
                "s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n"
                f"s.connect({sock!r})\n"
                "s.send(b'not a HELLO, sixteen+ bytes of it')\n"
                "s.settimeout(10)\n"
                "try:\n    s.recv(4096)\nexcept OSError:\n    pass\n"
                "print(os.getpid())\n")
        import subprocess
        p = subprocess.run(["nsenter", "-t", str(c.leader), "-p", "--", sys.executable, "-c", code],
                           capture_output=True, text=True, timeout=30)
        if p.returncode != 0:
            raise Fail(f"the malformed client failed: {p.stderr}")
        pid = p.stdout.strip()
        refused = wait_for(lambda: self.records("CLIENT_REFUSED", f"UZSWAP_CLIENT_PID={pid}"), 10,
                           "the refusal record")
        check("HELLO" in refused[-1].get("UZSWAP_REASON", ""),
              f"journal: refusal with MESSAGE_ID={IDS['CLIENT_REFUSED']}, UZSWAP_CLIENT_PID={pid}, "
              f"UZSWAP_REASON=\"{refused[-1].get('UZSWAP_REASON')}\"")
        check(c.show("uzswapd.service", "ActiveState") == "active", "uzswapd is unaffected")

    def t_cli_config(self):
        # uzswapctl in a private mount namespace with another uzswapd.conf.
        c = self.c
        def ctl_with(conf):
            c.write("/run/uzswap-test.conf", conf)
            return c.run(["unshare", "--mount", "sh", "-c",
                          "mount --bind /run/uzswap-test.conf /etc/uzswap/uzswapd.conf && "
                          "exec uzswapctl status"], check=False, timeout=30)
        p = ctl_with("[Daemon]\nControlSocket=/run/uzswap-elsewhere/ctl.sock\n")
        check(p.returncode == 3 and "/run/uzswap-elsewhere/ctl.sock" in p.stderr,
              f"uzswapctl follows ControlSocket= of uzswapd.conf: {p.stderr.strip()}")
        p = ctl_with("[Daemon]\nSocket=/run/uzswap-moved/uzswapd.sock\n")
        check(p.returncode == 3 and "/run/uzswap-moved/control.sock" in p.stderr,
              f"and looks next to a moved Socket=: {p.stderr.strip()}")
        p = ctl_with("# defaults\n")
        check(p.returncode == 0, "with the defaults it reaches /run/uzswap/control.sock")
        c.run(["rm", "-f", "/run/uzswap-test.conf"])

    def t_hardening(self):
        c = self.c
        pid = self.daemon_pid()
        status = dict(l.split(":\t", 1) for l in
                      c.run(["cat", f"/proc/{pid}/status"]).stdout.splitlines() if ":\t" in l)
        check(status["NoNewPrivs"].strip() == "1", "NoNewPrivileges=yes holds (NoNewPrivs: 1)")
        check(status["Seccomp"].strip() == "2", "a seccomp filter is on (SystemCallFilter=)")
        caps = int(status["CapBnd"], 16)
        allowed = (1 << 0) | (1 << 2) | (1 << 3) | (1 << 19) | (1 << 14)  # CHOWN DAC_READ_SEARCH FOWNER SYS_PTRACE IPC_LOCK
        check(caps & ~allowed == 0 and caps & (1 << 19),
              f"capability bounding set within the unit's list (CapBnd {caps:#x}; "
              "no CAP_SYS_ADMIN, CAP_NET_ADMIN, ...)")
        mounts = c.run(["cat", f"/proc/{pid}/mountinfo"]).stdout.splitlines()
        def opts(mountpoint):
            for l in mounts:
                f = l.split()
                if f[4] == mountpoint:
                    return f[5].split(",")
            return None
        check("ro" in (opts("/") or []), "its / is mounted read-only (ProtectSystem=strict)")
        check("rw" in (opts("/var/lib/uzswap") or []), "/var/lib/uzswap is writable for it")
        # Writes from inside the daemon's mount namespace, as the daemon would make them.
        probe = ("for d in /etc/uzswap /usr/lib /var /var/cache /root /home; do "
                 "  if touch $d/.uzswap-probe 2>/dev/null; then echo \"writable $d\"; rm -f $d/.uzswap-probe; fi; "
                 "done; "
                 "touch /var/lib/uzswap/.probe && echo state-ok && rm /var/lib/uzswap/.probe; "
                 "touch /run/uzswap/.probe && echo run-ok && rm /run/uzswap/.probe; "
                 "touch /tmp/uzswap-private-probe && echo tmp-ok")
        out = c.run(["nsenter", "-t", str(pid), "-m", "--", "sh", "-c", probe]).stdout
        check("writable" not in out,
              "from the daemon's mount namespace, /etc, /usr, /var, /root and /home refuse writes"
              + ("" if "writable" not in out else f": {out}"))
        check("state-ok" in out and "run-ok" in out,
              "only its state directory and runtime directory take writes")
        check("tmp-ok" in out and c.run(["test", "-e", "/tmp/uzswap-private-probe"],
                                        check=False).returncode != 0,
              "its /tmp is private (PrivateTmp=yes): the file is not in the system's /tmp")

    def t_sigkill(self):
        """systemctl kill -s SIGKILL while the enrolled service holds evicted pages:
        systemd restarts uzswapd, the service keeps running, re-joins and verifies every
        page (restart without loss: docs/ARCHITECTURE.md, "State that outlives the
        daemon")."""
        c = self.c
        client = self.demo_client()
        check(client and client["stored_pages"] > 0,
              f"the enrolled service has {client['stored_pages'] if client else 0} pages in uzswapd")
        demo_pid = client["pid"]
        daemon_pid = self.daemon_pid()
        restarts = int(c.show("uzswapd.service", "NRestarts"))
        c.run(["systemctl", "kill", "-s", "SIGKILL", "uzswapd.service"])
        wait_for(lambda: int(c.show("uzswapd.service", "NRestarts")) > restarts and
                 c.show("uzswapd.service", "ActiveState") == "active" and
                 self.daemon_pid() not in (0, daemon_pid), 60,
                 "systemd to restart the SIGKILLed uzswapd")
        check(True, f"systemd restarted uzswapd (MainPID {daemon_pid} -> {self.daemon_pid()})")
        check(c.show("uzdemo.service", "ActiveState") == "active" and
              int(c.show("uzdemo.service", "MainPID")) == demo_pid,
              "the enrolled service keeps running (same pid)")
        line = self.demo_check()
        check(re.match(r"check \d+: every page verified", line),
              f"it verifies every page after the restart: \"{line}\"")
        again = wait_for(self.demo_client, 30, "the enrolled service as a client of the new daemon")
        check(again["cgroup"] == DEMO_CGROUP and again["resident_max"] == 16 * MiB,
              f"the new daemon manages it again: {again['cgroup']}, budget {again['resident_max']}")
        recovered = wait_for(lambda: self.records("CLIENT_RECOVERED", f"UZSWAP_CLIENT_PID={demo_pid}"),
                             30, "the recovery record")
        check(recovered[-1].get("UZSWAP_CGROUP") == DEMO_CGROUP,
              f"journal: recovery with MESSAGE_ID={IDS['CLIENT_RECOVERED']}, "
              f"UZSWAP_CLIENT_PID={demo_pid}, UZSWAP_CGROUP={DEMO_CGROUP}")
        # Pages go out again under the new daemon, for the stop that follows.
        wait_for(lambda: (self.demo_client() or {}).get("stored_pages", 0) > 0, 30,
                 "pages stored again under the new daemon")

    def t_stop(self):
        c = self.c
        client = self.demo_client()
        check(client and client["stored_pages"] > 0,
              f"before the stop the enrolled service has {client['stored_pages'] if client else 0} "
              "pages in uzswapd")
        demo_pid = client["pid"]
        p = c.run(["systemctl", "stop", "uzswapd.service"], timeout=120)
        check(c.show("uzswapd.service", "ActiveState") == "inactive" and
              c.show("uzswapd.service", "Result") == "success",
              "systemctl stop uzswapd: stopped, Result=success" +
              (f" ({p.stderr.strip()})" if p.stderr.strip() else ""))
        left = wait_for(lambda: self.records("CLIENT_LEFT", f"UZSWAP_CLIENT_PID={demo_pid}"), 10,
                        "the enrolled service's leave record")
        check(left[-1].get("UZSWAP_REASON") == "every page given back, daemon stopping",
              f"journal: leave, UZSWAP_REASON=\"{left[-1].get('UZSWAP_REASON')}\"")
        check(c.show("uzdemo.service", "ActiveState") == "active" and
              int(c.show("uzdemo.service", "MainPID")) == demo_pid,
              "the enrolled service keeps running (same pid)")
        line = self.demo_check()
        m = re.match(r"check \d+: every page verified \((\d+) pages, (\d+) not resident", line)
        check(m and int(m.group(2)) == 0,
              f"every page was given back: all resident, all verified: \"{line}\"")
        check(c.show("uzswapd.socket", "ActiveState") == "active" and
              c.run(["test", "-S", "/run/uzswap/uzswapd.sock"], check=False).returncode == 0,
              "the sockets stay in /run/uzswap (RuntimeDirectoryPreserve=yes) and listen")
        c.run(["systemctl", "stop", "uzdemo.service"], timeout=120)
        check(c.show("uzdemo.service", "Result") == "success" and
              c.show("uzdemo.service", "ExecMainStatus") == "0",
              "the enrolled service stops cleanly after a last check of every page")
        st = c.run(["uzswapctl", "status"], timeout=60)
        check("version" in st.stdout and c.show("uzswapd.service", "ActiveState") == "active",
              "the next uzswapctl call activates uzswapd again")


TESTS = ["boot", "activation", "enable", "watchdog", "unprivileged", "enrolled", "reload", "events",
         "cli-config", "hardening", "sigkill", "stop"]


def prepare(c, prefix_build):
    """Install uzswap and the test's own units and files into the container tree."""
    c.install(prefix_build)
    workload_build = os.path.join(prefix_build, "examples", "uzswap-workload")
    files = {
        WORKLOAD: (open(workload_build, "rb").read(), 0o755),
        "/etc/systemd/system/uzdemo.service": (
            "[Unit]\nDescription=uzswap test: a service enrolled through the example drop-in\n"
            f"[Service]\nExecStart={WORKLOAD} --size 64M --passes 2 --wait-signals\n", 0o644),
        # The example drop-in, exactly as shipped.
        "/etc/systemd/system/uzdemo.service.d/uzswap.conf": (open(DROPIN).read(), 0o644),
        "/etc/systemd/system/uzuser.service": (
            "[Unit]\nDescription=uzswap test: a User= service enrolled through the example drop-in\n"
            f"[Service]\nType=oneshot\nUser=nobody\nExecStart={WORKLOAD} --size 24M --passes 1\n",
            0o644),
        "/etc/systemd/system/uzuser.service.d/uzswap.conf": (open(DROPIN).read(), 0o644),
        "/etc/uzswap/cgroup.d/uzdemo.conf": (cgroup_conf(DEMO_CGROUP, "16M"), 0o644),
        "/etc/uzswap/cgroup.d/uzactivate.conf": (cgroup_conf(ACTIVATE_CGROUP, "8M"), 0o644),
        "/etc/uzswap/cgroup.d/uzuser.conf": (cgroup_conf(USER_CGROUP, "8M"), 0o644),
    }
    for path, (content, mode) in files.items():
        dest = c.merged + path
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(dest, "wb") as f:
            f.write(content.encode() if isinstance(content, str) else content)
        os.chmod(dest, mode)


def run_suite(tests, suite_class=Suite, prepare_fn=prepare):
    started = time.monotonic()
    try:
        container.check_machine()
        container.sweep_stale_runs()
        # The libraries the installed programs load decide the root's packages.
        binaries = [os.path.join(BUILD, "daemon", "uzswapd"), os.path.join(BUILD, "cli", "uzswapctl"),
                    os.path.join(BUILD, "libclient", "libuzswap.so")]
        job = container.RootJob(container.runtime_packages(binaries))
        try:
            prefix_build = container.build_prefix_usr(SRC, BUILD)  # while mmdebstrap runs
        except BaseException:
            job.abort()
            raise
        root, lock = job.wait()
    except Skip as e:
        print(f"SKIP: {e}")
        return 77
    except Fail as e:
        print(f"FAIL: {e}")
        return 1
    failed = None
    try:
        with container.Container(root, SRC, BUILD) as c:
            prepare_fn(c, prefix_build)
            c.boot()
            log(f"container booted ({time.monotonic() - started:.0f} s since start)")
            suite = suite_class(c)
            for name in tests:
                log(f"--- {name}")
                t0 = time.monotonic()
                try:
                    getattr(suite, "t_" + name.replace("-", "_"))()
                except Fail as e:
                    failed = name
                    print(f"FAIL: {name}: {e}")
                    tail = c.run(["journalctl", "--no-pager", "-n", "60"], check=False).stdout
                    print("last journal lines of the container:\n" + tail)
                    break
                log(f"{name}: {time.monotonic() - t0:.1f} s")
    except Fail as e:
        print(f"FAIL: {e}")
        return 1
    except Exception:
        traceback.print_exc()
        return 1
    finally:
        os.close(lock)
    log(f"total {time.monotonic() - started:.0f} s")
    if failed:
        return 1
    print(f"PASS: {', '.join(tests)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_suite(sys.argv[3:] or TESTS))
