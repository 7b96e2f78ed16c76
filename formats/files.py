"""How format readers reach files: the OS by default, or another `Files` (a source in
object storage, given by the backend) with the same few calls."""
from __future__ import annotations

import errno
import io
import os
import stat
from typing import NamedTuple


class FileStat(NamedTuple):
    mode: int
    size: int
    mtime_ns: int


class Files:
    """read, listdir and stat (FileNotFoundError when missing), and what follows from them."""
    remote = False

    def read(self, path: str) -> bytes:
        raise NotImplementedError

    def listdir(self, path: str) -> list[str]:
        raise NotImplementedError

    def stat(self, path: str) -> FileStat:
        raise NotImplementedError

    def exists(self, path: str) -> bool:
        try:
            self.stat(path)
            return True
        except OSError:
            return False

    def isdir(self, path: str) -> bool:
        try:
            return stat.S_ISDIR(self.stat(path).mode)
        except OSError:
            return False

    def isfile(self, path: str) -> bool:
        try:
            return stat.S_ISREG(self.stat(path).mode)
        except OSError:
            return False

    def local_path(self, path: str) -> str:
        """A path the OS can open for this file (decoders that want one)."""
        return path

    def close(self) -> None:
        """At unmount: what reaching the files holds open (connections)."""


class LocalFiles(Files):
    """Files through the OS."""

    def read(self, path: str) -> bytes:
        fd, st = open_regular(path)
        try:
            return read_to_end(fd, st.st_size)
        finally:
            os.close(fd)

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def stat(self, path: str) -> FileStat:
        st = os.stat(path)
        return FileStat(st.st_mode, st.st_size, st.st_mtime_ns)


LOCAL = LocalFiles()

#: the most asked of one read (Linux gives at most 2 GiB less a page)
READ_MAX = 1 << 30


def open_regular(path: str, wait: bool = True) -> tuple[int, os.stat_result]:
    """A regular file open for reading, and its fstat. Anything else is refused (EISDIR,
    EINVAL), never waited on: a FIFO's open waits for a writer, a device may read forever.
    (Opened non-blocking for that only: a read of the file then waits as any read does,
    and so does an open under a lease held elsewhere, Samba's or knfsd's: only a regular
    file has one; with `wait` False, BlockingIOError instead: a file nobody asked for yet.)"""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(path, flags | os.O_NONBLOCK)
    except BlockingIOError:
        if not wait:
            raise
        fd = os.open(path, flags)
    try:
        return fd, regular_made_blocking(fd, path)
    except BaseException:
        os.close(fd)
        raise


def regular_made_blocking(fd: int, path: str) -> os.stat_result:
    """The fstat of `fd`, opened O_NONBLOCK so that its open waited on nothing, now made
    blocking (its reads wait as any read does) where it is a regular file; anything else
    refused (EISDIR, EINVAL)."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EISDIR if stat.S_ISDIR(st.st_mode) else errno.EINVAL, "not a regular file", path)
    os.set_blocking(fd, True)
    return st


def read_to_end(fd: int, size: int) -> bytes:
    """All the bytes of a regular file open as `fd` whose fstat said `size`: read until a
    read gives none (a read may stop short before the end, on FUSE or NFS): a small file
    in two reads, the first asking one byte more than `size` (a file grown since is read
    on). Over READ_MAX, in one buffer grown in place (`FileIO.readall`), not chunks joined."""
    if size >= READ_MAX:
        return io.FileIO(fd, closefd=False).readall()
    chunks, want = [], size + 1
    while chunk := os.read(fd, want):
        chunks.append(chunk)
        want = max(want - len(chunk), 1 << 16)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
