"""The mount life cycle: daemonising, umount, signals, stale mounts."""
from __future__ import annotations

import errno
import os
import signal
import subprocess

import pytest

from conftest import SCOPEFS, MountFailed, stop_foreground, wait_mounted, alive, daemon_pid, daemon_status, is_stale, run_scopefs, wait_gone
from stores import make_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("cli") / "store", "npy", shape=(48, 64)).path


def test_mount_returns_once_live_and_umount_waits_for_the_daemon(store, mount):
    mnt = mount(store)
    # no waiting: the mount is usable the moment the command returned
    assert sorted(os.listdir(mnt))[:3] == ["at-time", "by-number", "frames"]
    pid = daemon_pid(mnt)
    assert alive(pid)
    status = daemon_status(mnt)
    assert status["source"] == str(store) and status["type"] == "imgstore" and status["frames"] == 12
    assert ".scopefs" not in os.listdir(mnt)
    result = run_scopefs("umount", str(mnt))
    assert result.returncode == 0, result.stderr
    assert not os.path.ismount(mnt)
    assert not alive(pid)


def test_detects_metadata_yaml_path_and_forced_type(store, mount):
    assert os.listdir(mount(store / "metadata.yaml") / "frames")
    assert os.listdir(mount(store, "-t", "imgstore") / "frames")


def test_mount_point_problems_are_one_line_errors(store, mount, tmp_path):
    mounted = mount(store)
    with pytest.raises(MountFailed) as err:
        mount(store, mountpoint=mounted)
    assert "already a mount point" in err.value.stderr
    result = run_scopefs("mount", str(store), str(tmp_path / "missing" / "dir"))
    assert result.returncode != 0 and "does not exist" in result.stderr
    (tmp_path / "plainfile").write_text("x")
    result = run_scopefs("mount", str(store), str(tmp_path / "plainfile"))
    assert result.returncode != 0 and "not a directory" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_unmounts_cleanly(store, mount, sig):
    mnt = mount(store)
    pid = daemon_pid(mnt)
    held_open = open(mnt / "frames" / "000001.png", "rb")
    held_open.read(100)
    os.kill(pid, sig)
    assert wait_gone(pid, 20)
    assert not os.path.ismount(mnt) and not is_stale(mnt)
    try:
        held_open.close()         # its connection is gone with the mount
    except OSError as exc:
        assert exc.errno == errno.ENOTCONN
    assert "unmounted" in mount.log()


def test_killed_daemon_leaves_stale_mount_that_next_mount_recovers(store, mount):
    mnt = mount(store)
    pid = daemon_pid(mnt)
    os.kill(pid, signal.SIGKILL)
    assert wait_gone(pid, 10)
    with pytest.raises(OSError) as err:
        os.listdir(mnt)
    assert err.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    assert is_stale(mnt)
    again = mount(store, mountpoint=mnt)
    assert os.listdir(again / "frames")


def test_foreground_mode_serves_until_interrupted(store, tmp_path):
    mnt = tmp_path / "fg"
    mnt.mkdir()
    proc = subprocess.Popen([*SCOPEFS, "mount", "-f", str(store), str(mnt)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_mounted(proc, mnt)
        assert len(os.listdir(mnt / "frames")) == 12
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
        assert "mounted" in proc.stderr.read()
        assert not os.path.ismount(mnt)
    finally:
        stop_foreground(proc, mnt)


def test_umount_of_something_not_mounted(tmp_path):
    result = run_scopefs("umount", str(tmp_path))
    assert result.returncode == 1 and "not mounted" in result.stderr
