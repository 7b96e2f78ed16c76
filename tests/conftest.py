"""Fixtures that mount through the real `scopefs` command and always clean up.

Every mount made by a test is unmounted in teardown (`fusermount3 -u`, then `-uz`), and
the daemon it started (its PID comes from the mount's control file) is waited for, then
ended by PID if it lingers. Nothing else is ever signalled.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

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


def daemon_status(mountpoint: Path) -> dict:
    """The JSON a mount shows in its hidden control file."""
    return json.loads((mountpoint / ".scopefs").read_text())


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


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.02)
    return False


def cleanup_mount(mountpoint: Path, pid: int | None) -> None:
    if os.path.ismount(mountpoint) or is_stale(mountpoint):
        if subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True).returncode != 0:
            subprocess.run(["fusermount3", "-uz", str(mountpoint)], capture_output=True)
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


class Mounter:
    def __init__(self, base: Path):
        self.base = base
        self.mounts: list[tuple[Path, int | None]] = []
        self.log_file = base / "scopefs.log"
        self.stderr = ""

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
            raise MountFailed(result.returncode, result.stderr)
        assert os.path.ismount(mountpoint), "scopefs mount returned 0 but nothing is mounted"
        self.mounts.append((mountpoint, daemon_pid(mountpoint)))
        self.stderr = result.stderr                # a notice the mount printed, if any
        return mountpoint

    def log(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""

    def cleanup(self) -> None:
        for mountpoint, pid in reversed(self.mounts):
            cleanup_mount(mountpoint, pid)
        self.mounts.clear()


@pytest.fixture
def mount(tmp_path):
    mounter = Mounter(tmp_path)
    try:
        yield mounter
    finally:
        mounter.cleanup()


@pytest.fixture(scope="module")
def module_mount(tmp_path_factory):
    mounter = Mounter(tmp_path_factory.mktemp("mounts"))
    try:
        yield mounter
    finally:
        mounter.cleanup()


def pytest_configure(config):
    missing = [tool for tool in ("fusermount3", "ffmpeg") if shutil.which(tool) is None]
    if missing:
        raise pytest.UsageError(f"missing {', '.join(missing)}: run ./dev setup first")
