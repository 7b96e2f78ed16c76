"""Copy-up of a large static file in the merged copick view (issue 12, items 4 and 7): it
does not hold up the rest of the mount, and a daemon killed in the middle of one leaves
nothing partial, neither in the view nor (after the next mount) in the overlay root."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import Mounter, daemon_pid, uncached_file, wait_for, wait_gone

BIG = 384 << 20
MEDIUM = 8 << 20


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(8 << 20):
            digest.update(block)
    return digest.hexdigest()


def overlay_bytes(overlay: Path) -> dict[str, int]:
    """Every regular file in the overlay root (hidden ones included) with its size."""
    found = {}
    for folder, _, files in os.walk(overlay):
        for name in files:
            path = os.path.join(folder, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if os.path.isfile(path):
                found[os.path.relpath(path, overlay)] = st.st_size
    return found


def wait_for_copy_in_progress(overlay: Path, timeout: float = 30) -> None:
    """Until some file in the overlay root holds part of the copy."""
    assert wait_for(lambda: any(size > 0 for size in overlay_bytes(overlay).values()), timeout, every=0.002), \
        "no copy-up started"


@pytest.fixture(scope="module")
def big_static(tmp_path_factory):
    """A static root with one large file (out of the page cache: the copy reads the disk)."""
    static = tmp_path_factory.mktemp("copyup") / "static"
    (static / "run").mkdir(parents=True)
    uncached_file(static / "run" / "big.mrc", BIG)
    (static / "small.txt").write_text("small\n")
    (static / "run" / "medium.bin").write_bytes(os.urandom(MEDIUM))
    digest = {p: sha256(p) for p in static.rglob("*") if p.is_file()}
    yield static, digest
    assert {p: sha256(p) for p in static.rglob("*") if p.is_file()} == digest, "the static root was written"


@pytest.fixture
def merged(big_static, tmp_path):
    """(static root, its digest, overlay root, a function that mounts them at one place
    with extra options and returns the mount point); whatever it mounted is unmounted in
    teardown."""
    static, digest = big_static
    fd = os.open(static / "run" / "big.mrc", os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)        # each copy reads the disk
    finally:
        os.close(fd)
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    mounter = Mounter(tmp_path)
    try:
        yield static, digest, overlay, mounter, lambda *options: mounter(
            static, "-t", "copick", "-o", f"overlay={overlay}", *options, mountpoint=tmp_path / "mnt")
    finally:
        mounter.cleanup()


def test_a_long_copy_up_does_not_hold_up_other_operations(merged):
    static, _, overlay, _, mount = merged
    mnt = mount()
    os.listdir(mnt / "run")
    copy_done: list[float] = []

    def append():                                   # opening for writing copies the file up
        with open(mnt / "run" / "big.mrc", "ab") as fh:
            fh.write(b"x")
        copy_done.append(time.monotonic())
    writer = threading.Thread(target=append)
    writer.start()
    wait_for_copy_in_progress(overlay)
    finished = {}
    for label, op in [
        ("mkdir", lambda: os.mkdir(mnt / "new")),
        ("create", lambda: (mnt / "new" / "picks.json").write_text("{}")),
        ("rename", lambda: os.rename(mnt / "new" / "picks.json", mnt / "new" / "moved.json")),
        ("lookup", lambda: os.stat(mnt / "small.txt")),
        ("lookup of a missing name", lambda: os.path.exists(mnt / "run" / "missing")),
        ("create beside the copy", lambda: (mnt / "run" / "other.json").write_text("{}")),
        ("unlink", lambda: os.unlink(mnt / "new" / "moved.json")),
        ("listing", lambda: os.listdir(mnt / "run")),
    ]:
        op()
        finished[label] = time.monotonic()
    writer.join(timeout=300)
    assert copy_done, "the copy-up did not finish"
    late = [label for label, at in finished.items() if at >= copy_done[0]]
    assert not late, f"waited for the copy-up to finish: {late}"
    assert (mnt / "run" / "big.mrc").stat().st_size == BIG + 1
    assert sorted(os.listdir(mnt / "run")) == ["big.mrc", "medium.bin", "other.json"]


def test_a_daemon_killed_during_a_copy_up_leaves_nothing_partial(merged):
    static, digest, overlay, mounter, mount = merged
    mnt = mount()
    pid = daemon_pid(mnt)
    writer = subprocess.Popen([sys.executable, "-c", "import sys; open(sys.argv[1], 'ab').write(b'x')",
                               str(mnt / "run" / "big.mrc")], stderr=subprocess.DEVNULL)
    try:
        wait_for_copy_in_progress(overlay)
        os.kill(pid, signal.SIGKILL)
        assert wait_gone(pid, 20)
        writer.wait(timeout=60)                     # the aborted connection fails its write
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    mounter.cleanup()                               # the dead mount goes
    mnt = mount()
    shown = mnt / "run" / "big.mrc"
    # either the old content (static) or, had the copy finished, that plus the append
    assert shown.stat().st_size in (BIG, BIG + 1)
    if shown.stat().st_size == BIG:
        assert sha256(shown) == digest[static / "run" / "big.mrc"]
    assert sorted(os.listdir(mnt / "run")) == ["big.mrc", "medium.bin"]
    assert sorted(set(os.listdir(mnt)) - {"copick_config.json"}) == ["run", "small.txt"]
    # the next mount clears what the killed copy left in the overlay root
    def partial_copies() -> dict:
        return {p: s for p, s in overlay_bytes(overlay).items() if s not in (0, BIG, BIG + 1)}
    assert wait_for(lambda: not partial_copies(), every=0.05), \
        f"partial copies left in the overlay root: {partial_copies()}"
    full = [p for p, s in overlay_bytes(overlay).items() if s > 0]
    assert full in ([], ["run/big.mrc"]), full


def daemon_io(pid: int) -> dict[str, int]:
    """The daemon's I/O counters: bytes through read/write/copy_file_range calls (rchar,
    wchar) and bytes fetched from storage (read_bytes)."""
    with open(f"/proc/{pid}/io") as fh:
        return {key: int(value) for key, value in (line.split(": ") for line in fh)}


def test_an_open_that_truncates_copies_no_data(merged):
    """open(O_TRUNC) of a static file replaces it: the daemon reads and writes next to
    nothing of the old content (counted, not timed)."""
    static, digest, overlay, _, mount = merged
    mnt = mount()
    pid = daemon_pid(mnt)
    os.stat(mnt / "run" / "big.mrc")
    before = daemon_io(pid)
    with open(mnt / "run" / "big.mrc", "wb") as fh:
        fh.write(b"new")
    after = daemon_io(pid)
    moved = {key: after[key] - before[key] for key in ("rchar", "wchar", "read_bytes")}
    assert all(n < BIG // 4 for n in moved.values()), moved
    assert (mnt / "run" / "big.mrc").read_bytes() == b"new"
    assert (overlay / "run" / "big.mrc").read_bytes() == b"new"


def copy_settled(overlay: Path) -> bool:
    """No copy of run/big.mrc in progress: no temporary file, and a whole copy or none."""
    found = overlay_bytes(overlay)
    return set(found) <= {"run/big.mrc", "run/created.json"} and found.get("run/big.mrc", BIG) == BIG


def test_a_change_reported_as_failed_is_not_done(merged):
    """With a short request timeout, changes made while a copy-up runs either succeed or
    fail and leave no trace (issue 12 item 4: EIO, then done anyway)."""
    _, _, overlay, _, mount = merged
    mnt = mount("-o", "timeout=0.3")
    os.listdir(mnt / "run")
    writer = threading.Thread(target=lambda: os.close(os.open(mnt / "run" / "big.mrc", os.O_WRONLY)))
    writer.start()
    wait_for_copy_in_progress(overlay)
    outcomes = {}
    for path, make in [(mnt / "made", os.mkdir), (mnt / "run" / "created.json", lambda p: p.write_text("{}")),
                       (mnt / "run" / "dir", os.mkdir)]:
        try:
            make(path)
            outcomes[path] = True
        except OSError:
            outcomes[path] = False
    writer.join(timeout=300)                # (the open may fail too: it is not what is checked)
    assert wait_for(lambda: copy_settled(overlay), 120, every=0.05), "the copy-up never completed"
    time.sleep(0.5)                         # changes still carried out after the copy would show by then
    assert {path: os.path.exists(path) for path in outcomes} == outcomes


def test_concurrent_copy_ups_of_one_file_lose_no_write(merged):
    """Eight writers append to one static file at once: one copy-up, every line kept."""
    static, _, _, _, mount = merged
    mnt = mount()
    start = threading.Barrier(8)
    errors = []

    def append(k: int) -> None:
        try:
            start.wait()
            fd = os.open(mnt / "run" / "medium.bin", os.O_WRONLY | os.O_APPEND)
            try:
                os.write(fd, f"line {k}\n".encode())
            finally:
                os.close(fd)
        except OSError as exc:
            errors.append(exc)
    writers = [threading.Thread(target=append, args=(k,)) for k in range(8)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)
    assert not errors
    data = (mnt / "run" / "medium.bin").read_bytes()
    assert data[:MEDIUM] == (static / "run" / "medium.bin").read_bytes()
    assert sorted(data[MEDIUM:].decode().splitlines()) == [f"line {k}" for k in range(8)]
