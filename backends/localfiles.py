"""Handles of real local files: reads straight from the OS page cache (mmap, mincore,
cachestat, RWF_NOWAIT), writes in place, and atomic replaces through a temporary copy."""
from __future__ import annotations

import itertools
import mmap
import os
import shutil
import threading
from typing import Callable

from .kernel import cached_pages, resident
from .nodes import FileHandle

_NOWAIT = getattr(os, "RWF_NOWAIT", None)


_SETTLING = threading.Lock()


class OSFileHandle(FileHandle):
    """Reads of a real file, straight from the OS.

    With `drop_behind`, the pages a read brought into the page cache are dropped right
    after it: the kernel keeps its own cache of the mount's files, and keeping the
    source's pages as well would cache the data twice (and cost twice the fresh memory).
    A file that was already cached when opened is left alone (another program uses it),
    and so is every file where the kernel cannot tell (before Linux 6.5).

    With `mapped` (files on local storage), a read the page cache holds in full is
    answered with a view of a shared read-only mapping of the file: the reply is copied
    into the kernel straight from the source's page cache, once instead of twice. Only
    the kernel touches the mapped bytes, so a file cut short meanwhile costs that read an
    EIO (the kernel's copy fails), never a SIGBUS."""
    release_blocks = False          # closing a file on local storage does not wait

    def __init__(self, path: str | int, drop_behind: bool = False, release_blocks: bool = False,
                 mapped: bool = False):
        """`path` may be a descriptor already open for reading: the handle owns it. A file
        on NFS or FUSE may wait for its server at close: `release_blocks` then."""
        self._fd = path if isinstance(path, int) else os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self.release_blocks = release_blocks
        # both settled at the first read, not at open: a file whose pages the kernel keeps
        # (keep_cache) is opened and closed with no read at all
        self._drop = drop_behind
        self._mapping = mapped
        self._settled = False
        self._map: mmap.mmap | None = None
        self._lent: tuple[int, int] | None = None     # the range the last view showed

    def _reading(self) -> None:
        """At the first read: whether to drop behind (the file was not cached before), and
        the mapping (under a lock held for two system calls that never wait for the disk:
        the loop's cached_read and a worker's read may come at once)."""
        if self._settled:
            return
        with _SETTLING:
            if self._settled:
                return
            if self._drop:
                self._drop = cached_pages(self._fd) == 0
            if self._mapping:
                try:
                    self._map = mmap.mmap(self._fd, 0, prot=mmap.PROT_READ)
                except (ValueError, OSError):           # empty, or not mappable
                    pass
                else:
                    import numpy as np                  # (here: trees without arrays start without numpy)
                    self._address = np.frombuffer(self._map, np.uint8).ctypes.data     # for mincore
            self._settled = True

    def read(self, offset: int, size: int) -> bytes:
        self._reading()
        data = os.pread(self._fd, size, offset)
        self._dropped(offset, len(data))
        return data

    def cached_read(self, offset: int, size: int) -> bytearray | memoryview | None:
        """The bytes if the page cache holds them all: no worker thread needed. The OS
        reads ahead of a sequential reader, so even a cold file mostly answers here."""
        self._reading()
        if self._map is not None and not offset % mmap.PAGESIZE and offset < len(self._map):
            return self._mapped_read(offset, size)
        if _NOWAIT is None:
            return None
        buf = bytearray(size)
        try:
            done = os.preadv(self._fd, [buf], offset, _NOWAIT)
        except OSError:                 # EAGAIN: not cached; EOPNOTSUPP: no such reads here
            return None
        if done != size:
            return None                 # short: the worker thread reads on
        self._dropped(offset, size)
        return buf

    def _mapped_read(self, offset: int, size: int) -> memoryview | None:
        """A view of the mapped range if it is all in the page cache and read (a page that
        the disk has yet to fill would make the reply wait for it). A read past the end
        gets the bytes up to it, as pread would, if the file is still as long as when it
        was mapped. The daemon's reply has copied the last view's bytes by the time the
        next read comes (it replies before it takes another request), so that range can
        be dropped now."""
        mapped = len(self._map)
        if offset + size > mapped:
            if os.fstat(self._fd).st_size != mapped:
                return None                         # grown or cut since: pread knows
            size = mapped - offset
        if not resident(self._address + offset, size):
            return None
        self._return_lent()
        self._lent = (offset, size)
        return memoryview(self._map)[offset:offset + size]

    def _return_lent(self) -> None:
        if self._lent is not None and self._drop:
            offset, size = self._lent
            self._map.madvise(mmap.MADV_DONTNEED, offset, size)      # unmapped pages can go
            self._dropped(offset, size)
        self._lent = None

    def _dropped(self, offset: int, size: int) -> None:
        if self._drop and size:
            os.posix_fadvise(self._fd, offset, size, os.POSIX_FADV_DONTNEED)

    def fileno(self) -> int:
        """The open file (-1 once released)."""
        return self._fd

    def release(self) -> None:
        if self._map is not None:
            self._return_lent()
            try:
                self._map.close()
            except BufferError:         # a view still referenced: the mapping goes with it
                pass
        fd, self._fd = self._fd, -1
        os.close(fd)


class LocalWriteHandle(FileHandle):
    """A local file written in place, as a local disk would be."""
    fsync_blocks = True

    def __init__(self, path: str | int, flags: int, release_blocks: bool = False):
        """`path` may be a descriptor already open with `flags`: the handle owns it. A file
        on NFS or FUSE may wait for its server at close: `release_blocks` then."""
        keep = os.O_ACCMODE | os.O_TRUNC | os.O_APPEND | os.O_SYNC | os.O_DSYNC
        self.fd = path if isinstance(path, int) else os.open(path, (flags & keep) | os.O_CLOEXEC)
        self.release_blocks = release_blocks

    def fileno(self) -> int:
        return self.fd

    def read(self, offset: int, size: int) -> bytes:
        return os.pread(self.fd, size, offset)

    def write(self, offset: int, data: bytes) -> int:
        return os.pwrite(self.fd, data, offset)

    def truncate(self, size: int) -> None:
        os.ftruncate(self.fd, size)

    def fsync(self) -> None:
        os.fsync(self.fd)

    def release(self) -> None:
        fd, self.fd = self.fd, -1
        os.close(fd)


#: the name's end of TempFileHandle's temporary files (hidden: they start with '.')
TEMP_SUFFIX = ".scopefs-tmp"
#: names tried before a temporary file is given up (tempfile's fallback count; mkstemp
#: tries os.TMP_MAX where it exists)
_TEMP_TRIES = 10000


def _temp_numbers() -> itertools.count:
    """Numbers for this process's temporary files, from a random start (next() of a count
    is atomic under the GIL)."""
    return itertools.count(int.from_bytes(os.urandom(4), "big"))


_temp_number = _temp_numbers()


def _forked() -> None:
    global _temp_number
    _temp_number = _temp_numbers()      # (a child of a fork numbers from a start of its own)


os.register_at_fork(after_in_child=_forked)


def _new_temp(directory: str, name: str) -> tuple[int, str]:
    """A new hidden file beside `name`, created exclusively (0600), its name as long as
    mkstemp's: 8 hex digits of a counter, not mkstemp's random letters, which cost a small
    file's commit about 25 Python calls; a name taken is passed over."""
    for _ in range(_TEMP_TRIES):
        path = f"{directory}/.{name}.{next(_temp_number) & 0xFFFFFFFF:08x}{TEMP_SUFFIX}"
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600), path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free name for a temporary file beside {name} in {directory}")


class TempFileHandle(FileHandle):
    """Writes to a real file go to a temporary copy beside it; flush (close, fsync) hands
    the finished copy to `commit(temp_path)`, which renames it into place (an atomic
    replace) and registers it. Large files never pass through memory. The copy is
    fsynced first unless `durable_later` (the committer makes it durable itself before
    anything names it)."""
    flush_blocks = True
    release_blocks = True

    def __init__(self, target: str, copy_from: str | None, commit: Callable[[str], None], dirty: bool = False,
                 durable_later: bool = False):
        directory, name = os.path.split(target)
        self._fd, self.temp = _new_temp(directory or ".", name)
        if copy_from is not None:
            with open(copy_from, "rb") as src:
                shutil.copyfileobj(src, os.fdopen(os.dup(self._fd), "wb"))
        self._commit = commit
        self._dirty = dirty
        self._durable_later = durable_later
        self._committed = False
        self._lock = threading.Lock()

    def read(self, offset: int, size: int) -> bytes:
        return os.pread(self._fd, size, offset)

    def write(self, offset: int, data: bytes) -> int:
        with self._lock:
            self._dirty = True
            return os.pwrite(self._fd, data, offset)

    def truncate(self, size: int) -> None:
        with self._lock:
            self._dirty = True
            os.ftruncate(self._fd, size)

    def flush(self) -> None:
        with self._lock:
            if not self._dirty:
                return
            if not self._durable_later:
                os.fsync(self._fd)
            self._commit(self.temp)            # renames self.temp to its final name
            self._dirty = False
            self._committed = True
            self.release_blocks = False         # only the descriptor is left to close

    def release(self) -> None:
        os.close(self._fd)
        if not self._committed and os.path.exists(self.temp):
            os.unlink(self.temp)
