"""Fixtures that mount through the real `scopefs` command and always clean up.

Every mount made by a test is unmounted in teardown (`fusermount3 -u`, then `-uz`), and
the daemon it started (its PID comes from the mount's control file) is waited for, then
ended by PID if it lingers. Nothing else is ever signalled. Then the daemon's log is
checked: a warning or traceback the test does not expect fails it (tests/daemon_log.py).
"""
from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import daemon_log
from control_file import daemon_status
from scopefs.backends.kernel import process_alive as alive

ROOT = Path(__file__).resolve().parent.parent
SCOPEFS = [sys.executable, "-m", "scopefs.daemon"]


class MountFailed(Exception):
    def __init__(self, returncode: int, stderr: str):
        super().__init__(stderr)
        self.returncode = returncode
        self.stderr = stderr


def run_scopefs(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*SCOPEFS, *args], capture_output=True, text=True, timeout=timeout)


def daemon_pid(mountpoint: Path) -> int | None:
    try:
        return daemon_status(mountpoint)["pid"]
    except (OSError, ValueError):
        return None


def is_stale(mountpoint: Path) -> bool:
    """A mount whose daemon is gone (statvfs reaches the daemon; stat may be cached)."""
    try:
        os.statvfs(mountpoint)
        return False
    except OSError as exc:
        return exc.errno in (errno.ENOTCONN, errno.ECONNABORTED)


def wait_for(predicate, timeout: float = 10.0, every: float = 0.01):
    """`predicate()`'s value once it is true, polled every `every` seconds, or its last
    (false) value after `timeout`: for what a daemon's threads or the kernel do in their
    own time (a loaded machine takes seconds for what takes milliseconds alone)."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()) and time.monotonic() < deadline:
        time.sleep(every)
    return value


def wait_gone(pid: int, timeout: float) -> bool:
    return wait_for(lambda: not alive(pid), timeout, every=0.02)


def cleanup_mount(mountpoint: Path, pid: int | None) -> None:
    unmount(mountpoint)
    end_daemon(pid)


def unmount(mountpoint: Path) -> None:
    if os.path.ismount(mountpoint) or is_stale(mountpoint):
        if subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True).returncode != 0:
            subprocess.run(["fusermount3", "-uz", str(mountpoint)], capture_output=True)


def end_daemon(pid: int | None) -> None:
    """Wait for an unmounted mount's daemon to finish; end it by its PID if it lingers."""
    if pid is not None and not wait_gone(pid, 20):
        os.kill(pid, signal.SIGTERM)
        if not wait_gone(pid, 10):
            os.kill(pid, signal.SIGKILL)


def wait_mounted(proc: subprocess.Popen, mountpoint: Path, timeout: float = 30) -> None:
    """Wait for a foreground daemon's mount to appear (failing if the daemon exits)."""
    deadline = time.monotonic() + timeout
    while not os.path.ismount(mountpoint):
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "daemon exited"
        assert time.monotonic() < deadline, "mount did not appear"
        time.sleep(0.05)


def stop_foreground(proc: subprocess.Popen, mountpoint: Path) -> None:
    """Teardown for a daemon a test started with -f: end it (by its own PID) and unmount."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    cleanup_mount(mountpoint, None)


def uncached_file(path: Path, size: int) -> bytes:
    """A file of random bytes written to disk, none of them left in the page cache."""
    data = os.urandom(size)
    path.write_bytes(data)
    os.sync()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return data


def caches_dropped() -> int | None:
    """A count that moves when the kernel's caches are dropped (drop_caches) or its
    dentries and inodes reclaimed (/proc/vmstat; None: not known)."""
    try:
        with open("/proc/vmstat") as fh:
            return sum(int(line.split()[1]) for line in fh
                       if line.startswith(("drop_pagecache ", "drop_slab ", "slabs_scanned ")))
    except (OSError, ValueError, IndexError):
        return None


class KernelLetNamesGo(AssertionError):
    """A check failed in a walk during which a daemon counted the kernel letting names it
    had been given go (FORGETs, LOOKUPs of inodes it held: `inodes_forgotten`,
    `lookups_of_held_inodes`): it then looks them up again, which the check counts as work."""


def made_ahead(tree, folder) -> None:
    """Until the listing of `folder` being made ahead, if one is, is made."""
    pending = tree.scan_ahead.under_way(folder)
    if pending is not None:
        pending[0].result(timeout=60)


def patient(tree):
    """`tree`, its listings made ahead given whenever the walker comes and waited for as
    long as they take (a loaded machine makes none too old)."""
    tree.scan_ahead.horizon = tree.scan_ahead.wait = 600.0
    return tree


def unless_caches_dropped(check, tries: int = 5) -> None:
    """`check()`, tried again only where the kernel's own doing is counted: its caches
    dropped or shrunk while it ran (/proc/vmstat: another program's drop_caches, a
    benchmark run as root), or `KernelLetNamesGo`. Any other failure fails at once."""
    for attempt in range(tries):
        before = caches_dropped()
        try:
            return check()
        except KernelLetNamesGo:
            if attempt == tries - 1:
                raise
        except AssertionError:
            if attempt == tries - 1 or before is None or caches_dropped() == before:
                raise


class Mounter:
    def __init__(self, base: Path):
        self.base = base
        self.mounts: list[tuple[Path, int | None]] = []
        self.log_file = base / "scopefs.log"
        self.stderr = ""
        self.expected_log: list[str] = []       # patterns of log records the test expects
        self.refused = 0                        # mounts that failed (MountFailed)

    def __call__(self, source, *args: str, mountpoint: Path | None = None) -> Path:
        if mountpoint is None:
            mountpoint = self.base / f"mnt{len(self.mounts)}"
        try:
            mountpoint.mkdir(parents=True)
        except FileExistsError:      # (a stale mount point cannot even be stat'ed)
            pass
        result = run_scopefs("mount", str(source), str(mountpoint), "--log-file", str(self.log_file), *args)
        if result.returncode != 0:
            if os.path.ismount(mountpoint):        # must never happen; clean up all the same
                self.mounts.append((mountpoint, daemon_pid(mountpoint)))
            self.refused += 1
            raise MountFailed(result.returncode, result.stderr)
        assert os.path.ismount(mountpoint), "scopefs mount returned 0 but nothing is mounted"
        self.mounts.append((mountpoint, daemon_pid(mountpoint)))
        self.stderr = result.stderr                # a notice the mount printed, if any
        self.expected_log += [re.escape(line.removeprefix("scopefs: ")) for line in result.stderr.splitlines()]
        return mountpoint

    def log(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""

    def expect_log(self, *patterns: str) -> None:
        """Log records (regular expressions) this test expects the daemon to write."""
        self.expected_log += patterns

    def check_log(self, node) -> None:
        """At teardown, once unmounted: fail on a warning or traceback nobody expected."""
        daemon_log.check(self.log(), node, self.expected_log, self.refused)

    def cleanup(self) -> None:
        for mountpoint, _ in reversed(self.mounts):     # all unmounted first: their daemons
            unmount(mountpoint)                          # finish side by side
        for _, pid in self.mounts:
            end_daemon(pid)
        self.mounts.clear()


@pytest.fixture(autouse=True)
def kernel_caches_shared(request, tmp_path_factory):
    """A test marked `drops_kernel_caches` runs while no other test of the run does (the
    suite runs in two processes, see ./dev): many tests count what the kernel keeps of a
    mount, and a drop_caches meanwhile empties it. Others share the lock."""
    exclusive = request.node.get_closest_marker("drops_kernel_caches") is not None
    with open(tmp_path_factory.getbasetemp().parent / "kernel-caches.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield


@pytest.fixture
def mount(request, tmp_path):
    mounter = Mounter(tmp_path)
    try:
        yield mounter
    finally:
        mounter.cleanup()
    mounter.check_log(request.node)


@pytest.fixture
def iid_mount(tmp_path, mount):
    """A mount of scopefs's sample .iid (`make_iid`)."""
    from scopefs.formats.samples import make_iid
    return mount(make_iid(str(tmp_path / "cells.iid")))


@pytest.fixture
def fsdb_mount(tmp_path, mount):
    """A mount of scopefs's sample FSDB database (`make_fsdb`)."""
    from scopefs.formats.samples import make_fsdb
    return mount(make_fsdb(str(tmp_path / "db")))


def iid_entry(mnt: Path, address: str) -> Path:
    """The entry folder of an .iid mount whose name ends with `address`."""
    return next(p for p in mnt.iterdir() if p.name.endswith(address))


@pytest.fixture(scope="module")
def module_mount(request, tmp_path_factory):
    mounter = Mounter(tmp_path_factory.mktemp("mounts"))
    try:
        yield mounter
    finally:
        mounter.cleanup()
    mounter.check_log(request.node)


def pytest_configure(config):
    daemon_log.register_marker(config)
    missing = [tool for tool in ("fusermount3", "ffmpeg") if shutil.which(tool) is None]
    if missing:
        raise pytest.UsageError(f"missing {', '.join(missing)}: run ./dev setup first")
    # what daemons keep across mounts (copick's view sizes) stays in this run, never the user's
    os.environ["XDG_CACHE_HOME"] = config.cache_dir_for_tests = tempfile.mkdtemp(prefix="scopefs-tests-cache-")


def pytest_unconfigure(config):
    shutil.rmtree(getattr(config, "cache_dir_for_tests", ""), ignore_errors=True)
