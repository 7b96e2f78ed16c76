"""Read-only mounts let the kernel open files itself (the daemon answers OPEN with
ENOSYS once): a file read again costs no request at all, the status file stays fresh
on every read, and a file that fails to generate fails alone, at its read. Counted
through the daemon's status (`requests`: every request it answered)."""
from __future__ import annotations

import errno
import json
import subprocess
from pathlib import Path

import pytest

import walk_samples
from conftest import alive, daemon_pid, daemon_status
from stores import make_store


def requests_during(mnt: Path, work) -> int:
    """Requests the daemon answered while `work` ran, less what reading the status costs
    (give or take its GETATTRs: the kernel asks again only in a new jiffy)."""
    before, start = daemon_status(mnt), daemon_status(mnt)
    work()
    return daemon_status(mnt)["requests"] - start["requests"] - (start["requests"] - before["requests"])


def counts_during(mnt: Path, work) -> tuple[int, int]:
    """OPEN and READ requests while `work` ran (the status file's own read is one READ)."""
    start = daemon_status(mnt)
    work()
    end = daemon_status(mnt)
    return end["open_requests"] - start["open_requests"], end["read_requests"] - start["read_requests"] - 1


def read_all(files: list[Path]) -> None:
    for path in files:
        with open(path, "rb") as fh:          # open, read to the end, close: what cat does
            while fh.read(1 << 16):
                pass


def every_file(mnt: Path) -> list[Path]:
    """Regular files (not the links to them: each open through one reads the link)."""
    return sorted(p for p in mnt.rglob("*") if p.is_file() and not p.is_symlink() and p.name != ".scopefs")


@pytest.mark.parametrize("kind", ["imgstore", "iid"])
def test_files_read_again_cost_no_request(kind, mount, tmp_path):
    if kind == "imgstore":
        mnt = mount(make_store(tmp_path / "store", "png", numbers=range(12)).path)
    else:
        mnt = mount(walk_samples.iid(tmp_path / "cells.iid", 12).path, "-o", "ro")
    files = every_file(mnt)
    assert len(files) > 12
    read_all(files)                                # the first read of each file
    # no OPEN, READ or RELEASE (the fewest of three passes: anyone's drop_caches meanwhile
    # makes the kernel look files up and read them again, but still never open them)
    assert min(requests_during(mnt, lambda: read_all(files)) for _ in range(3)) <= 2
    assert min(counts_during(mnt, lambda: read_all(files)) for _ in range(3)) == (0, 0)
    state = daemon_status(mnt)
    assert state["files_opened_by_kernel"] and state["open_requests"] == 1     # the one answered ENOSYS
    assert state["files_held_by_inode"] <= 64


def test_the_status_file_is_fresh_on_every_read(mount, tmp_path):
    mnt = mount(make_store(tmp_path / "store", "png", numbers=range(3)).path)
    seen = []
    for _ in range(3):
        text = subprocess.run(["cat", str(mnt / ".scopefs")], capture_output=True, check=True).stdout
        seen.append(json.loads(text)["requests"])       # whole and valid each time
        (mnt / "frames" / "000001.png").stat()
    assert seen[0] < seen[1] < seen[2]
    with open(mnt / ".scopefs", "rb") as fh:            # what one open shows stays whole
        assert json.loads(fh.read())["files_opened_by_kernel"] is True


@pytest.mark.daemon_log(r"frame 11: .*video chunk is missing", reason="the failed frame is logged")
def test_a_file_that_fails_gives_eio_at_read_and_the_mount_keeps_serving(mount, tmp_path):
    store = make_store(tmp_path / "avi", "mjpeg/avi", shape=(120, 160, 3), video=True, numbers=range(15)).path
    (store / "000002.avi").unlink()
    mnt = mount(store)
    bad, good = mnt / "frames" / "000011.png", mnt / "frames" / "000004.png"
    for _ in range(2):
        with open(bad, "rb") as fh:                     # the kernel opens it: the read fails
            with pytest.raises(OSError) as err:
                fh.read()
        assert err.value.errno == errno.EIO
    assert mount.log().count("frame 11:") == 1          # logged once while it keeps failing
    assert good.read_bytes()[:4] == b"\x89PNG"
    state = daemon_status(mnt)
    assert state["files_opened_by_kernel"] and state["files_held_by_inode"] <= 1
    assert alive(daemon_pid(mnt))


def test_turned_off_each_file_read_is_an_open_and_a_release(mount, tmp_path, monkeypatch):
    """SCOPEFS_KERNEL_OPEN=0 (as with an unpatched pyfuse3): handles opened per OPEN."""
    monkeypatch.setenv("SCOPEFS_KERNEL_OPEN", "0")
    mnt = mount(make_store(tmp_path / "store", "png", numbers=range(4)).path)
    files = every_file(mnt)
    read_all(files)
    assert requests_during(mnt, lambda: read_all(files)) >= 2 * len(files)     # OPEN and RELEASE
    assert counts_during(mnt, lambda: read_all(files))[0] == len(files) + 1     # (and the status file's)
    state = daemon_status(mnt)
    assert not state["files_opened_by_kernel"] and state["open_requests"] > len(files)
