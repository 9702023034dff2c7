# SPDX-License-Identifier: MIT
"""A real systemd in a container, for the `systemd` suite.

    job = container.RootJob(runtime_packages)   # cached, or mmdebstrap in the background
    prefix_build = container.build_prefix_usr(src, build)   # meanwhile
    root, lock = job.wait()
    with container.Container(root, src, build) as c:  # a throw-away copy
        c.install(prefix_build)
        c.boot()
        c.run(["systemctl", "is-system-running"])

The root.  `mmdebstrap --variant=minbase --include=systemd,systemd-sysv,dbus,
<the runtime libraries of the installed binaries> bookworm` into
/var/cache/uzswap-tests/ (UZSWAP_TEST_CACHE overrides it), outside the
repository.  The directory name carries a hash of the recipe (suite,
variant, packages), so a changed package list builds a new root.  A root is
used only when its marker file matches the recipe and systemd runs in it
(`chroot ROOT systemctl --version`); anything else is removed and built
again.  An exclusive flock guards the check and the build; a shared one is
held while a run uses the root, so nobody rebuilds it under a running test.
The runtime packages are not listed by hand: they are found from
`ldd` of the freshly built binaries and `dpkg -S` on the host, so a new
library dependency is noticed.  mmdebstrap runs in the background while
the --prefix=/usr build compiles (measured here: ≈ 80–200 s for the root,
depending on the mirror).

The container.  The cached root is never written: each run mounts an
overlay (the root as its lower layer, a fresh upper layer in
/var/cache/uzswap-tests/runs/RUN/), installs uzswap into the merged tree
with `meson install --destdir` from a build configured as the README says
(--prefix=/usr --sysconfdir=/etc --localstatedir=/var, in
BUILD/tests/systemd/prefix-usr), and boots it:

    systemd-nspawn -D MERGED --register=no --keep-unit --private-network
        --link-journal=no --bind=/dev/userfaultfd --console=passive -b

Commands run inside with `nsenter -t LEADER -a env -i PATH=... CMD`.  Note
that a command run this way is outside the container's cgroups: anything
that must be in a unit's cgroup is started with systemd-run or as a unit.

Cleaning up.  The container must never outlive the run, whatever kills
it.  Normal exit, an exception or SIGTERM/SIGINT/SIGHUP (meson's timeout
sends SIGTERM to the test's process group) run Container.close(): SIGKILL
to the container's PID 1 (which ends every process in it), wait for
nspawn, unmount the overlay, remove the run directory.  Because meson
follows its SIGTERM with a SIGKILL half a second later, and a SIGKILLed
nspawn leaves its container running, a guard process in a session of its
own (out of reach of that process-group kill) watches the test through a
pidfd and does the same cleanup as soon as the test is gone, or after a
hard deadline.  A run directory that neither cleaned (a machine that
rebooted mid-run) is swept by the next run.
"""
import fcntl
import hashlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time

CACHE = os.environ.get("UZSWAP_TEST_CACHE", "/var/cache/uzswap-tests")
SUITE = "bookworm"
VARIANT = "minbase"
BASE_PACKAGES = ["systemd", "systemd-sysv", "dbus"]
# No translations, docs or locales, no fsync per file: a smaller root built
# faster (part of the recipe).
MMDEBSTRAP_OPTIONS = ["--aptopt=Acquire::Languages \"none\"", "--dpkgopt=force-unsafe-io",
                      "--dpkgopt=path-exclude=/usr/share/doc/*",
                      "--dpkgopt=path-exclude=/usr/share/locale/*"]
ROOT_MARKER = ".uzswap-test-root"
ROOT_BUILD_TIMEOUT = 420  # seconds; measured 80–200 s on the 2-vCPU VM, more under load
BOOT_TIMEOUT = 60
GUARD_DEADLINE = 1200  # a container is killed after this long whatever happens
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Skip(Exception):
    """The machine cannot boot a container: exit 77 with this reason."""


class Fail(Exception):
    pass


def log(msg):
    print(f"# {msg}", flush=True)


def sh(cmd, timeout=60, check=True, **kw):
    """Run a host command; output captured as text."""
    p = subprocess.run(cmd, timeout=timeout, capture_output=True, text=True, **kw)
    if check and p.returncode != 0:
        raise Fail(f"{' '.join(cmd)}: exit {p.returncode}\n{p.stdout}{p.stderr}")
    return p


# --- prerequisites --------------------------------------------------------------

def check_machine():
    """Raise Skip when this machine cannot boot a container, Fail when a tool is missing."""
    if os.geteuid() != 0:
        raise Skip("needs root: mmdebstrap, overlay mounts and systemd-nspawn")
    if not os.path.exists("/dev/userfaultfd"):
        raise Skip("the kernel has no /dev/userfaultfd to give the container")
    missing = [t for t in ("mmdebstrap", "systemd-nspawn", "nsenter", "meson", "ninja")
               if not shutil.which(t)]
    if missing:
        raise Fail(f"missing {', '.join(missing)}: run tools/install-deps "
                   "(packages mmdebstrap, systemd-container)")
    p = subprocess.run(["unshare", "--mount", "--pid", "--uts", "--ipc", "--net", "--fork",
                        "true"], capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        raise Skip(f"cannot create the namespaces a container needs here: {p.stderr.strip()}")


# --- the root -----------------------------------------------------------------------

def runtime_packages(binaries):
    """The Debian packages of the shared libraries the binaries load (ldd + dpkg -S)."""
    packages = set()
    for binary in binaries:
        for line in sh(["ldd", binary]).stdout.splitlines():
            parts = line.split("=>")
            if len(parts) != 2 or not parts[1].split():
                continue
            lib = parts[1].split()[0]
            if not lib.startswith("/"):
                continue
            owner = None
            for path in (lib, os.path.realpath(lib)):
                p = sh(["dpkg", "-S", path], check=False)
                if p.returncode == 0:
                    owner = p.stdout.split(":")[0].strip()
                    break
            if not owner:
                raise Fail(f"{binary} needs {lib}, which no Debian package owns")
            packages.add(owner)
    return sorted(packages)


def _root_usable(root, recipe):
    try:
        if json.load(open(os.path.join(root, ROOT_MARKER))) != recipe:
            return False
    except (OSError, ValueError):
        return False
    p = subprocess.run(["chroot", root, "systemctl", "--version"], capture_output=True,
                       timeout=30)
    return p.returncode == 0


def _mounts_under(path):
    path = path.rstrip("/")
    try:
        points = [line.split()[4] for line in open("/proc/self/mountinfo")]
    except OSError:
        return []
    return [p for p in points if p == path or p.startswith(path + "/")]


def remove_tree(path):
    """rm -rf path, but never into a mount: whatever is mounted below is unmounted first
    (a killed mmdebstrap leaves the chroot's /proc mounted); a tree that still has a mount
    in it is left alone for the next run's sweep."""
    if not os.path.lexists(path):
        return
    for point in sorted(_mounts_under(path), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], capture_output=True, timeout=30)
    if _mounts_under(path):
        log(f"not removing {path}: something is still mounted in it")
        return
    shutil.rmtree(path, ignore_errors=True)


def _looks_like_no_network(text):
    return any(s in text for s in ("Could not resolve", "Temporary failure resolving",
                                   "Failed to fetch", "Network is unreachable",
                                   "Connection timed out", "Could not connect"))


class RootJob:
    """A usable root with BASE_PACKAGES + packages: cached, or built in the background.

        job = RootJob(packages)     # returns at once; mmdebstrap runs meanwhile if needed
        root, lock_fd = job.wait()  # keep lock_fd open while the root is in use
    """

    def __init__(self, packages):
        self.recipe = {"suite": SUITE, "variant": VARIANT,
                       "packages": sorted(set(BASE_PACKAGES) | set(packages)),
                       "options": MMDEBSTRAP_OPTIONS}
        digest = hashlib.sha256(json.dumps(self.recipe, sort_keys=True).encode()).hexdigest()[:12]
        os.makedirs(CACHE, exist_ok=True)
        self.root = os.path.join(CACHE, f"{SUITE}-{digest}")
        self.proc = None
        self.lock = os.open(self.root + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(self.lock, fcntl.LOCK_EX)
            if _root_usable(self.root, self.recipe):
                log(f"container root: cached {self.root}")
                fcntl.flock(self.lock, fcntl.LOCK_SH)  # in use: nobody rebuilds it now
                return
            if os.path.exists(self.root):
                log(f"container root {self.root} is incomplete or stale: building it again")
                remove_tree(self.root)
            # Under the exclusive lock every half-built tree of this root is stale.
            for name in os.listdir(CACHE):
                if name.startswith(os.path.basename(self.root) + ".tmp-"):
                    remove_tree(os.path.join(CACHE, name))
            self.tmp = f"{self.root}.tmp-{os.getpid()}"
            cmd = ["mmdebstrap", f"--variant={VARIANT}",
                   "--include=" + ",".join(self.recipe["packages"]), *MMDEBSTRAP_OPTIONS,
                   SUITE, self.tmp]
            log("building the container root (once per machine): " + " ".join(cmd))
            self.log = open(self.root + ".build.log", "w")
            self.started = time.monotonic()
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.log,
                                         stderr=subprocess.STDOUT)
        except BaseException:
            os.close(self.lock)
            raise

    def wait(self):
        try:
            if self.proc:
                self._finish()
        except BaseException:
            self.abort()
            raise
        return self.root, self.lock

    def abort(self):
        """Stop a build in progress (nothing half-built is left) and drop the lock."""
        if self.proc:
            if self.proc.poll() is None:
                # SIGTERM lets mmdebstrap unmount what it mounted in the chroot.
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            remove_tree(self.tmp)
            self.proc = None
        if self.lock >= 0:
            os.close(self.lock)
            self.lock = -1

    def _finish(self):
        try:
            rc = self.proc.wait(timeout=max(1, ROOT_BUILD_TIMEOUT - (time.monotonic() - self.started)))
        except subprocess.TimeoutExpired:
            raise Fail(f"mmdebstrap took more than {ROOT_BUILD_TIMEOUT} s")
        self.log.close()
        if rc != 0:
            tail = open(self.root + ".build.log").read()[-3000:]
            if _looks_like_no_network(tail):
                raise Skip("cannot build the container root: the Debian mirror is "
                           f"unreachable from this machine\n{tail}")
            raise Fail(f"mmdebstrap failed (exit {rc})\n{tail}")
        with open(os.path.join(self.tmp, ROOT_MARKER), "w") as f:
            json.dump(self.recipe, f)
        os.rename(self.tmp, self.root)
        if not _root_usable(self.root, self.recipe):
            raise Fail(f"the freshly built root {self.root} does not run systemctl")
        log(f"container root built in {time.monotonic() - self.started:.0f} s")
        fcntl.flock(self.lock, fcntl.LOCK_SH)
        _remove_other_roots(self.root)


def _remove_other_roots(keep):
    """Roots of older recipes nobody uses (their lock is free) go: one root per machine."""
    for name in os.listdir(CACHE):
        path = os.path.join(CACHE, name)
        if not name.startswith(SUITE + "-") or not name.endswith(".lock") or \
                path == keep + ".lock":
            continue
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        root = path[:-len(".lock")]
        log(f"removing the root of an older recipe: {root}")
        remove_tree(root)
        for leftover in (path, root + ".build.log"):
            try:
                os.unlink(leftover)
            except OSError:
                pass
        os.close(fd)


def build_prefix_usr(src, build):
    """uzswap configured as the README installs it, built in BUILD/tests/systemd/prefix-usr."""
    prefix_build = os.path.join(build, "tests", "systemd", "prefix-usr")
    started = time.monotonic()
    if not os.path.exists(os.path.join(prefix_build, "build.ninja")):
        sh(["meson", "setup", prefix_build, src, "--prefix=/usr", "--sysconfdir=/etc",
            "--localstatedir=/var", "-Dtests=false"], timeout=120)
    sh(["ninja", "-C", prefix_build], timeout=300)
    log(f"--prefix=/usr build up to date in {time.monotonic() - started:.0f} s")
    return prefix_build


# --- processes --------------------------------------------------------------------

def _start_time(pid):
    """Start time of pid (field 22 of /proc/PID/stat), None when it is gone."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _kill_checked(pid, start, sig=signal.SIGKILL):
    """Signal pid only if it is still the process that started at `start`."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return False
    try:
        if _start_time(pid) != start:
            return False
        signal.pidfd_send_signal(fd, sig)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _wait_gone(pid, start, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _start_time(pid) != start:
            return True
        time.sleep(0.05)
    return False


def _mounted(path):
    try:
        return any(line.split()[4] == path for line in open("/proc/self/mountinfo"))
    except OSError:
        return False


def _teardown(state):
    """Kill the container, unmount, remove: from the test, the guard or a later sweep."""
    leader, leader_start = state.get("leader"), state.get("leader_start")
    nspawn, nspawn_start = state.get("nspawn"), state.get("nspawn_start")
    if leader and _kill_checked(leader, leader_start):
        _wait_gone(leader, leader_start, 10)
    if nspawn and _kill_checked(nspawn, nspawn_start, signal.SIGTERM):
        if not _wait_gone(nspawn, nspawn_start, 5):
            _kill_checked(nspawn, nspawn_start)
    merged = state.get("merged")
    if merged and _mounted(merged):
        subprocess.run(["umount", merged], capture_output=True, timeout=30)
    rundir = state.get("rundir")
    if rundir:
        remove_tree(rundir)


def _save_state(state):
    tmp = os.path.join(state["rundir"], "state.json.tmp")
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.rename(tmp, os.path.join(state["rundir"], "state.json"))


def sweep_stale_runs():
    """Clean run directories whose test and guard are both gone."""
    runs = os.path.join(CACHE, "runs")
    if not os.path.isdir(runs):
        return
    for name in os.listdir(runs):
        rundir = os.path.join(runs, name)
        try:
            state = json.load(open(os.path.join(rundir, "state.json")))
        except (OSError, ValueError):
            state = {"rundir": rundir}
            # Being set up right now by another run?  Its owner file says.
            try:
                owner, owner_start = map(int, open(os.path.join(rundir, "owner")).read().split())
                if _start_time(owner) == owner_start:
                    continue
            except (OSError, ValueError):
                pass
            state["merged"] = os.path.join(rundir, "merged")
        alive = [p for p in ("owner", "guard")
                 if state.get(p) and _start_time(state[p]) == state.get(p + "_start")]
        if alive:
            continue
        log(f"cleaning a run left behind: {rundir}")
        _teardown(state)


def guard_main(argv):
    """The guard (its own session): wait for the test to go, or the deadline; then clean up."""
    rundir = argv[0]
    state = json.load(open(os.path.join(rundir, "state.json")))
    deadline = time.monotonic() + GUARD_DEADLINE
    try:
        fd = os.pidfd_open(state["owner"])
        if _start_time(state["owner"]) == state["owner_start"]:
            select.select([fd], [], [], max(0, deadline - time.monotonic()))
    except OSError:
        pass
    try:
        state = json.load(open(os.path.join(rundir, "state.json")))
    except (OSError, ValueError):
        return 0  # the test cleaned up itself
    _teardown(state)
    return 0


# --- the container ---------------------------------------------------------------

class Container:
    def __init__(self, root, src, build):
        self.root, self.src, self.build = root, src, build
        self.state = {}
        self.closed = False

    # -- set up
    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        try:
            self._setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def _on_signal(self, signo, frame):
        log(f"received signal {signo}: removing the container")
        self.close()
        sys.exit(128 + signo)

    def _setup(self):
        runs = os.path.join(CACHE, "runs")
        os.makedirs(runs, exist_ok=True)
        rundir = os.path.join(runs, f"{os.getpid()}-{int(time.time())}")
        os.makedirs(rundir)
        with open(os.path.join(rundir, "owner"), "w") as f:
            f.write(f"{os.getpid()} {_start_time(os.getpid())}")
        self.state = {"rundir": rundir, "owner": os.getpid(),
                      "owner_start": _start_time(os.getpid())}
        upper, work, merged = (os.path.join(rundir, d) for d in ("upper", "work", "merged"))
        for d in (upper, work, merged):
            os.makedirs(d)
        self.state["merged"] = merged
        _save_state(self.state)
        self._start_guard()
        p = subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                            f"lowerdir={self.root},upperdir={upper},workdir={work}", merged],
                           capture_output=True, text=True, timeout=30)
        if p.returncode != 0:
            log(f"no overlay mount ({p.stderr.strip()}): copying the root instead")
            os.rmdir(merged)
            sh(["cp", "-a", "--reflink=auto", self.root, merged], timeout=300)
        self.merged = merged

    def _start_guard(self):
        guard = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "guard", self.state["rundir"]],
            start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, close_fds=True)
        self.state["guard"] = guard.pid
        self.state["guard_start"] = _start_time(guard.pid)
        _save_state(self.state)

    def install(self, prefix_build):
        """meson install --destdir into the tree, from the --prefix=/usr build."""
        sh(["meson", "install", "-C", prefix_build, "--destdir", self.merged, "--no-rebuild",
            "--quiet"], timeout=120)
        self.prefix_build = prefix_build
        # What a package's postinst would do; sysusers and tmpfiles run at boot.
        sh(["chroot", self.merged, "ldconfig"], timeout=60)

    def boot(self):
        machine = f"uzswap-test-{os.getpid()}"
        self.console = open(os.path.join(self.state["rundir"], "console.log"), "w")
        nspawn = subprocess.Popen(
            ["systemd-nspawn", "-D", self.merged, f"--machine={machine}", "--register=no",
             "--keep-unit", "--private-network", "--link-journal=no",
             "--bind=/dev/userfaultfd", "--console=passive", "-b"],
            stdin=subprocess.DEVNULL, stdout=self.console, stderr=subprocess.STDOUT)
        self.nspawn = nspawn
        self.state["nspawn"] = nspawn.pid
        self.state["nspawn_start"] = _start_time(nspawn.pid)
        _save_state(self.state)
        deadline = time.monotonic() + BOOT_TIMEOUT
        leader = None
        while time.monotonic() < deadline and nspawn.poll() is None:
            try:
                children = open(f"/proc/{nspawn.pid}/task/{nspawn.pid}/children").read().split()
            except OSError:
                children = []
            for child in children:
                try:
                    nspid = [l for l in open(f"/proc/{child}/status") if l.startswith("NSpid:")]
                except OSError:
                    continue
                if nspid and nspid[0].split()[-1] == "1":
                    leader = int(child)
            if leader:
                break
            time.sleep(0.1)
        if not leader:
            raise Fail(f"systemd-nspawn did not start a container\n{self.console_log()}")
        self.leader = leader
        self.state["leader"] = leader
        self.state["leader_start"] = _start_time(leader)
        _save_state(self.state)
        state = ""
        while time.monotonic() < deadline:
            p = self.run(["systemctl", "is-system-running", "--wait"], check=False,
                         timeout=max(1, deadline - time.monotonic()))
            state = p.stdout.strip()
            if state in ("running", "degraded"):
                break
            time.sleep(0.2)
        if state != "running":
            failed = self.run(["systemctl", "--failed", "--no-legend"], check=False).stdout
            raise Fail(f"the container's systemd reports \"{state}\", not running; "
                       f"failed units:\n{failed}\n{self.console_log()}")

    def console_log(self):
        try:
            return open(os.path.join(self.state["rundir"], "console.log")).read()[-4000:]
        except OSError:
            return ""

    # -- use
    def run(self, cmd, timeout=60, check=True, input=None):
        """Run cmd inside the container (every namespace of its PID 1), clean environment."""
        full = ["nsenter", "-t", str(self.leader), "-a", "env", "-i", f"PATH={PATH}",
                "LANG=C.UTF-8", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0", "TERM=dumb"] + cmd
        try:
            p = subprocess.run(full, timeout=timeout, capture_output=True, text=True,
                               input=input)
        except subprocess.TimeoutExpired as e:
            raise Fail(f"in the container: {' '.join(cmd)}: no answer within {timeout} s\n"
                       f"{e.stdout or ''}{e.stderr or ''}")
        if check and p.returncode != 0:
            raise Fail(f"in the container: {' '.join(cmd)}: exit {p.returncode}\n"
                       f"{p.stdout}{p.stderr}")
        return p

    def write(self, path, content, mode=0o644):
        """Write a file inside the running container (through its root)."""
        dest = f"/proc/{self.leader}/root{path}"
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(dest, "w") as f:
            f.write(content)
        os.chmod(dest, mode)

    def journal(self, *args):
        """journalctl -o json records (dicts) of the container's journal."""
        out = self.run(["journalctl", "--no-pager", "-o", "json", *args], timeout=60).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def show(self, unit, prop):
        return self.run(["systemctl", "show", "-P", prop, unit]).stdout.strip()

    # -- tear down
    def close(self):
        if self.closed:
            return
        self.closed = True
        _teardown(self.state)
        if getattr(self, "nspawn", None):
            try:
                self.nspawn.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.nspawn.kill()


def wait_for(predicate, timeout, what, interval=0.25):
    """Poll predicate() until it returns something true; Fail naming `what` after timeout s."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = predicate()
        except Fail as e:
            last = None
            err = e
        else:
            err = None
        if last:
            return last
        if time.monotonic() >= deadline:
            raise Fail(f"timed out after {timeout} s waiting for {what}" +
                       (f"\n{err}" if err else ""))
        time.sleep(interval)


if __name__ == "__main__" and len(sys.argv) > 2 and sys.argv[1] == "guard":
    sys.exit(guard_main(sys.argv[2:]))
