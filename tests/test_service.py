"""Running as a service: systemd units, sd_notify, journald logs, mount(8) and fstab,
status, shutdown with open files, and hung sources."""
from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, SCOPEFS, MountFailed, stop_foreground, wait_mounted, alive, cleanup_mount, daemon_pid, run_scopefs, \
    wait_gone
from stores import make_store

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("svc") / "store", "npy", shape=(48, 64), numbers=range(40),
                      chunksize=2).path


# -- units ---------------------------------------------------------------------------------

def test_units_verify_and_keep_the_mount_visible(tmp_path):
    units = sorted((ROOT / "systemd").glob("*.service"))
    assert units
    for unit in units:
        text = unit.read_text()
        assert "/usr/local/bin/scopefs" in text and "Type=notify" in text
        for hiding in ("PrivateDevices", "PrivateTmp", "PrivateMounts", "ProtectSystem", "ProtectHome",
                       "ReadOnlyPaths", "ProtectKernelTunables", "ProtectControlGroups"):
            assert f"\n{hiding}=" not in text, hiding
        # the binary path is where the README installs it; here it is this venv's
        (tmp_path / unit.name).write_text(text.replace("/usr/local/bin/scopefs", str(BIN / "scopefs")))
        instance = tmp_path / unit.name.replace("@.", "@example.")
        result = subprocess.run(["systemd-analyze", "verify", str(instance)], capture_output=True, text=True)
        assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    for example in (ROOT / "systemd" / "examples").glob("*.conf"):
        keys = dict(line.split("=", 1) for line in example.read_text().splitlines()
                    if line and not line.startswith("#"))
        assert {"SOURCE", "MOUNTPOINT", "TYPE", "OPTIONS"} <= set(keys)
        assert keys["TYPE"] in ("imgstore", "iid", "fsdb", "copick")


# -- sd_notify -----------------------------------------------------------------------------

class NotifyListener:
    def __init__(self, path: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path if not path.startswith("@") else "\0" + path[1:])
        self.sock.settimeout(30)
        self.messages: list[str] = []

    def wait_for(self, field: str) -> list[str]:
        while True:
            message = self.sock.recv(4096).decode()
            self.messages.append(message)
            if field in message.split("\n"):
                return message.split("\n")


@pytest.mark.parametrize("abstract", [False, True])
def test_ready_only_once_the_mount_answers_then_stopping(store, tmp_path, abstract):
    address = f"@scopefs-test-{os.getpid()}" if abstract else str(tmp_path / "notify.sock")
    listener = NotifyListener(address)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = dict(os.environ, NOTIFY_SOCKET=address, JOURNAL_STREAM="8:1234")
    proc = subprocess.Popen([*SCOPEFS, "mount", "-f", str(store), str(mnt)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        listener.wait_for("READY=1")
        # at the moment READY arrives, the mount answers
        os.statvfs(mnt)
        assert len(os.listdir(mnt / "frames")) == 40
        assert any(m.startswith("STATUS=indexing") for m in listener.messages), listener.messages
        proc.send_signal(signal.SIGTERM)
        listener.wait_for("STOPPING=1")
        assert proc.wait(timeout=30) == 0
        err = proc.stderr.read()
        # journald priority prefixes on every line when run by systemd
        lines = [line for line in err.splitlines() if line]
        assert lines and all(line[:3] in ("<6>", "<4>", "<3>", "<7>") for line in lines), lines
        assert not os.path.ismount(mnt)
    finally:
        stop_foreground(proc, mnt)
        listener.sock.close()


def test_no_credential_in_any_log_line(tmp_path, mount):
    secret = "supersecret-Kx93"
    with pytest.raises(MountFailed) as err:
        mount(f"s3://AKIAEXAMPLE:{secret}@127.0.0.1/bucket/store", "-t", "imgstore", "-o", f"token={secret}")
    assert secret not in err.value.stderr
    assert secret not in mount.log()
    assert "***" in err.value.stderr or "unknown option" in err.value.stderr


# -- mount(8), fstab, the helper --------------------------------------------------------------

@pytest.fixture
def path_with_scopefs():
    """mount(8) looks for /sbin/mount.fuse.scopefs (README: link it to mount.scopefs).
    The link is made for the test and removed after; an existing one is left alone."""
    link = Path("/sbin/mount.fuse.scopefs")
    made = False
    if not link.exists() and not link.is_symlink():
        link.symlink_to(BIN / "mount.scopefs")
        made = True
    try:
        yield dict(os.environ)
    finally:
        if made:
            link.unlink()


def test_mount_t_fuse_scopefs_and_umount(store, tmp_path, path_with_scopefs):
    mnt = tmp_path / "m"
    mnt.mkdir()
    result = subprocess.run(["mount", "-t", "fuse.scopefs", str(store), str(mnt),
                             "-o", "ro,noauto,_netdev,nofail,x-systemd.automount,image_format=tiff"],
                            env=path_with_scopefs, capture_output=True, text=True)
    pid = None
    try:
        assert result.returncode == 0, result.stderr
        pid = daemon_pid(mnt)
        assert sorted(os.listdir(mnt / "frames"))[0] == "000000.tif"
        assert subprocess.run(["umount", str(mnt)]).returncode == 0
        assert wait_gone(pid, 20)
    finally:
        cleanup_mount(mnt, pid)


def test_fstab_line(store, tmp_path, path_with_scopefs):
    mnt = tmp_path / "fstab-mnt"
    mnt.mkdir()
    fstab = tmp_path / "fstab"
    fstab.write_text(f"# scopefs\n{store} {mnt} fuse.scopefs noauto,_netdev,x-systemd.automount,"
                     f"allow_other,image_format=npy 0 0\n")
    result = subprocess.run(["mount", "-T", str(fstab), str(mnt)], env=path_with_scopefs,
                            capture_output=True, text=True)
    pid = None
    try:
        assert result.returncode == 0, result.stderr
        pid = daemon_pid(mnt)
        assert np.load(mnt / "frames" / "000007.npy").shape == (48, 64)
        assert "allow_other" in Path("/proc/mounts").read_text()
    finally:
        cleanup_mount(mnt, pid)


def test_mount_helper_called_as_mount_would(store, tmp_path):
    mnt = tmp_path / "h"
    mnt.mkdir()
    helper = str(BIN / "mount.scopefs")
    assert subprocess.run([helper, str(store), str(mnt), "-f", "-o", "ro"]).returncode == 0
    assert not os.path.ismount(mnt)                    # -f: fake, nothing mounted
    pid = None
    try:
        assert subprocess.run([helper, f"scopefs#{store}", str(mnt), "-n", "-o", "ro,defaults,auto"]).returncode == 0
        pid = daemon_pid(mnt)
        assert os.listdir(mnt / "frames")
    finally:
        cleanup_mount(mnt, pid)


# -- status ----------------------------------------------------------------------------------

def test_status_lists_live_and_stale_mounts(store, mount, tmp_path):
    a = mount(store)
    b = mount(store, "-o", "image_format=bmp")
    (a / "frames" / "000003.png").read_bytes()
    os.kill(daemon_pid(b), signal.SIGKILL)
    assert wait_gone(mount.mounts[-1][1], 10)
    rows = {r["mountpoint"]: r for r in json.loads(run_scopefs("status", "--json").stdout)}
    assert rows[str(a)]["state"] == "live" and rows[str(a)]["type"] == "imgstore"
    assert rows[str(a)]["frames_decoded"] >= 1 and rows[str(a)]["bytes_read"] > 0
    assert rows[str(a)]["source"] == str(store) and rows[str(a)]["uptime_s"] >= 0
    assert rows[str(b)]["state"] == "stale"
    table = run_scopefs("status").stdout
    assert str(a) in table and "stale" in table and "MOUNTPOINT" in table
    one = run_scopefs("status", str(a), "--json")
    assert [r["mountpoint"] for r in json.loads(one.stdout)] == [str(a)]
    assert run_scopefs("status", str(tmp_path)).returncode == 1


# -- shutdown and faults -----------------------------------------------------------------------

def test_sigterm_with_reader_and_writer_saves_and_exits_zero(tmp_path):
    from scopefs.formats.iid import IIDFile
    f = IIDFile()
    f.add(np.ones((4, 4), bool), (0, 0, 4, 4), address=b"a")
    f.meta = {"v": 0}
    source = tmp_path / "s.iid"
    f.save(str(source))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.Popen([*SCOPEFS, "mount", "-f", str(source), str(mnt), "-o", "writeback_delay=3600"],
                            stderr=subprocess.PIPE, text=True)
    stop = threading.Event()
    errors = []

    def reader():
        while not stop.is_set():
            try:
                (mnt / "000000-a" / "mask.png").read_bytes()
            except OSError as exc:
                errors.append(exc.errno)
                return
    try:
        wait_mounted(proc, mnt)
        (mnt / "000000-a" / "entry.json").write_text(json.dumps({"address": "committed"}))
        writer = open(mnt / "meta.json", "w")
        writer.write('{"v": "written, not yet closed"}')
        writer.flush()                                 # in the daemon's buffer, not committed
        thread = threading.Thread(target=reader)
        thread.start()
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        stop.set()
        thread.join(10)
        try:
            writer.close()
        except OSError:
            pass
        saved = IIDFile.open(str(source))
        assert saved.entries[0].address == b"committed"
        assert saved.meta == {"v": "written, not yet closed"}
        assert not os.path.ismount(mnt)
    finally:
        stop.set()
        stop_foreground(proc, mnt)


@pytest.mark.daemon_log(r"the source did not answer within 1 s", reason="each timed-out request is logged")
def test_hung_source_gives_eio_after_timeout_and_never_blocks_ls_or_umount(tmp_path, mount, monkeypatch):
    sample = make_store(tmp_path / "hang", "png", shape=(16, 16, 3), numbers=range(6))
    frame = sample.path / "000000" / "000002.png"
    frame.unlink()
    os.mkfifo(frame)                                  # opening it blocks: a source that never answers
    # where the kernel opens files itself, the daemon opens the source at the first read,
    # which a FIFO's size 0 never brings: here the daemon opens at each open(2)
    monkeypatch.setenv("SCOPEFS_KERNEL_OPEN", "0")
    mnt = mount(sample.path, "-o", "timeout=1")
    results = []

    def read_hung():
        t = time.monotonic()
        try:
            (mnt / "frames" / "000002.png").read_bytes()
            results.append(("ok", time.monotonic() - t))
        except OSError as exc:
            results.append((exc.errno, time.monotonic() - t))

    threads = [threading.Thread(target=read_hung) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    started = time.monotonic()
    assert "frames" in os.listdir(mnt)                 # the root still answers at once
    assert len(os.listdir(mnt / "frames")) == 6
    assert (mnt / "frames" / "000001.png").read_bytes()[:4] == b"\x89PNG"
    assert time.monotonic() - started < 1.0
    for t in threads:
        t.join(20)
    assert [r[0] for r in results] == [errno.EIO] * 3 and all(r[1] < 5 for r in results)
    pid = daemon_pid(mnt)
    started = time.monotonic()
    assert run_scopefs("umount", str(mnt), timeout=30).returncode == 0
    assert time.monotonic() - started < 10 and not alive(pid)
    assert "did not answer within 1 s" in mount.log()
