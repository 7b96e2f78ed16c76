"""The Linux calls os lacks (backends/kernel.py): answers that let the daemon skip a
worker thread must be right when given, and absent (None) when the kernel cannot tell."""
from __future__ import annotations

import mmap
import os

import numpy as np
import pytest
from conftest import uncached_file, wait_for

from scopefs.backends import kernel
from scopefs.backends.overlay import LocalRoot


def test_open_cached_opens_what_the_lookup_cache_knows_and_nothing_else(tmp_path):
    present = tmp_path / "present"
    present.write_bytes(b"data")
    present.stat()                                   # now in the lookup cache
    fd = kernel.open_cached(str(present), os.O_RDONLY)
    if fd is None:
        pytest.skip("this kernel has no cached-only open (openat2 RESOLVE_CACHED)")
    try:
        assert os.read(fd, 10) == b"data"
        assert os.get_inheritable(fd) is False       # close-on-exec, as os.open does
    finally:
        os.close(fd)
    missing = tmp_path / "missing"
    assert not missing.exists()                      # the kernel now knows it is missing
    with pytest.raises(FileNotFoundError):
        kernel.open_cached(str(missing), os.O_RDONLY)


@pytest.mark.drops_kernel_caches
def test_open_cached_declines_a_path_that_needs_the_disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("emptying the lookup cache (drop_caches) needs root")
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    (deep / "f").write_text("x")
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as fh:
        fh.write("2\n")
    fd = kernel.open_cached(str(deep / "f"), os.O_RDONLY)
    if fd is not None:
        os.close(fd)
        pytest.skip("the lookup cache kept these entries (or the kernel cannot tell)")
    assert (deep / "f").read_text() == "x"          # an ordinary open still works
    fd = kernel.open_cached(str(deep / "f"), os.O_RDONLY)
    assert fd is not None
    os.close(fd)


def test_cached_pages_counts_what_the_page_cache_holds(tmp_path):
    path = tmp_path / "f"
    uncached_file(path, 1 << 20)
    fd = os.open(path, os.O_RDONLY)
    try:
        if kernel.cached_pages(fd) is None:
            pytest.skip("this kernel cannot tell (cachestat, Linux 6.5)")
        assert kernel.cached_pages(fd) == 0
        os.pread(fd, 1 << 20, 0)
        assert kernel.cached_pages(fd) == (1 << 20) // os.sysconf("SC_PAGE_SIZE")
    finally:
        os.close(fd)


def test_resident_tells_whether_a_mapped_range_is_in_memory(tmp_path):
    path = tmp_path / "f"
    uncached_file(path, 1 << 20)
    fd = os.open(path, os.O_RDONLY)
    mapping = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
    try:
        address = np.frombuffer(mapping, np.uint8).ctypes.data
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)     # no read-ahead past what is read
        assert kernel.resident(address, 1 << 20) is False
        os.pread(fd, 64 << 10, 0)                        # read, not mapped: still counts
        assert kernel.resident(address, 64 << 10) is True
        assert kernel.resident(address, 1 << 20) is False
    finally:
        mapping.close()
        os.close(fd)


def test_the_filesystem_type_of_a_path_is_that_of_its_own_mount(tmp_path):
    assert kernel.filesystem_type("/proc/self") == "proc"
    assert kernel.filesystem_type(str(tmp_path)) == kernel.filesystem_type(str(tmp_path.parent))


def test_a_root_on_a_fuse_mount_is_never_answered_from_caches(mount, tmp_path):
    """An open or fstat on FUSE (or NFS) may wait for a server even when the lookup is
    cached: such roots always go through a worker thread."""
    static, overlay = tmp_path / "static", tmp_path / "overlay"
    static.mkdir()
    overlay.mkdir()
    (static / "f").write_text("x")
    mnt = mount(str(static), "-t", "copick", "-o", f"overlay={overlay}")
    assert kernel.filesystem_type(str(mnt)).startswith("fuse")
    on_fuse, on_disk = LocalRoot(str(mnt)), LocalRoot(str(static))
    try:
        check_roots_on_fuse_and_on_disk(mnt, on_fuse, on_disk)
    finally:                        # the root's descriptor would keep the mount busy at unmount
        on_fuse.close()
        on_disk.close()


def check_roots_on_fuse_and_on_disk(mnt, on_fuse, on_disk) -> None:
    assert not on_fuse.local_storage
    (mnt / "f").stat()
    assert on_fuse.stat_cached("f") is None and on_fuse.open_read_cached("f") is None
    assert on_fuse.exists_cached("f") is None
    handle = on_fuse.open_read("f")
    try:
        assert handle.read(0, 10) == b"x"
        assert handle.release_blocks                 # its close may wait too: a worker thread
    finally:
        handle.release()
    writer = on_fuse.open_write("f", os.O_WRONLY)
    assert writer.release_blocks
    writer.release()
    if on_disk.local_storage and on_disk.stat_cached("f") is not None:
        assert on_disk.stat_cached("f").size == 1


def test_process_alive_counts_a_zombie_as_dead():
    import subprocess
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert kernel.process_alive(child.pid)
        child.kill()
        assert wait_for(lambda: not kernel.process_alive(child.pid))    # exited, not yet reaped: a zombie
        with open(f"/proc/{child.pid}/stat") as fh:
            assert fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    finally:
        child.kill()
        child.wait()
    assert not kernel.process_alive(child.pid)


def test_set_times_of_an_open_file_and_of_a_name(tmp_path):
    """Without a name, the open file's own times (futimens); a None time is left as it is."""
    path = tmp_path / "f"
    path.write_bytes(b"x")
    fd = os.open(path, os.O_RDONLY)
    try:
        before = os.stat(path)
        kernel.set_times(fd, None, None, 5_000_000_000)
        assert os.stat(path).st_mtime_ns == 5_000_000_000 and os.stat(path).st_atime_ns == before.st_atime_ns
    finally:
        os.close(fd)
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        kernel.set_times(dir_fd, "f", 7_000_000_000, None)
        assert os.stat(path).st_atime_ns == 7_000_000_000 and os.stat(path).st_mtime_ns == 5_000_000_000
    finally:
        os.close(dir_fd)


def test_mountinfo_gives_mount_points_with_spaces_tabs_newlines_and_backslashes(tmp_path, mount):
    """The kernel writes these four as octal escapes (\\040, \\011, \\012, \\134)."""
    from scopefs.formats.samples import make_iid
    source = make_iid(str(tmp_path / "cells.iid"))
    point = mount(source, mountpoint=tmp_path / "a b\tc\nd\\e \\134")
    points = [m.point for m in kernel.mounts()]
    assert str(point) in points
    assert kernel.filesystem_type(str(point / "README.txt")).startswith("fuse.scopefs")
