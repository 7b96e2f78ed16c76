"""The node interface between backends and the daemon.

A backend is a `Tree` of nodes. Every node has an inode number that the backend
assigns and keeps for the life of the mount, so the daemon never has to hold a table
of every node the kernel has seen: it asks `Tree.get(ino)`. Large regular directories
(a million frames) reserve a range of inode numbers and build their nodes on demand.

Node methods may block (disk, decoding): the daemon always calls them from worker
threads, so they must be thread-safe. None of them knows about FUSE.
"""
from __future__ import annotations

import bisect
import errno
import itertools
import mmap
import os
import shutil
import stat
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple

from .cache import ByteCache
from .kernel import cached_pages, resident

ROOT_INO = 1
_NOWAIT = getattr(os, "RWF_NOWAIT", None)
#: a grafted tree numbers its inodes from slot << GRAFT_SHIFT (trees at the top level
#: stay far below that)
GRAFT_SHIFT = 40


class Attr(NamedTuple):
    """What stat shows of a node (a tuple: one is made per entry of every listing).

    The fields after `nlink` are given by backends whose nodes are real files
    (`attr_of`); left None, the daemon shows its own uid/gid, mtime as atime and ctime,
    and blocks counted from the size."""
    mode: int                 # including the file type bits
    size: int = 0
    mtime_ns: int = 0
    nlink: int = 1
    uid: int | None = None
    gid: int | None = None
    atime_ns: int | None = None
    ctime_ns: int | None = None
    blocks: int | None = None
    rdev: int = 0
    backing: tuple[int, int] | None = None    # (st_dev, st_ino): hard links share a node


def attr_of(st: os.stat_result) -> Attr:
    """Everything stat says of a real file."""
    return Attr(st.st_mode, st.st_size, st.st_mtime_ns, st.st_nlink, st.st_uid, st.st_gid, st.st_atime_ns,
                st.st_ctime_ns, st.st_blocks, st.st_rdev, (st.st_dev, st.st_ino))


class Owner(NamedTuple):
    """Who makes a new entry (the caller of the request), for trees with `real_owners`.
    gid None: the entry takes its directory's group (a set-group-ID directory)."""
    uid: int
    gid: int | None


@dataclass(frozen=True)
class CachePolicy:
    """How long the kernel may trust what it was told, and whether file pages survive
    close/open. Read-only sources can be trusted for long; writable ones cannot."""
    entry_timeout: float = 3600.0
    attr_timeout: float = 3600.0
    negative_timeout: float = 60.0
    keep_cache: bool = True
    #: for directories and symbolic links, where a tree can trust them longer than its
    #: files (None: attr_timeout). The kernel checks each directory of a path it
    #: resolves and each link it follows: at 0, each costs a round trip.
    namespace_attr_timeout: float | None = None

    def attr_timeout_of(self, mode: int) -> float:
        if self.namespace_attr_timeout is not None and (stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
            return self.namespace_attr_timeout
        return self.attr_timeout


class Node:
    __slots__ = ()              # lets a backend with millions of nodes give them slots
    ino: int = 0

    def attr(self) -> Attr:
        raise NotImplementedError

    def cached_attr(self) -> Attr | None:
        """The attributes if known without any I/O (the daemon then skips a thread hop)."""
        return None

    def set_attr(self, mode: int | None = None, mtime_ns: int | None = None, *, atime_ns: int | None = None,
                 uid: int | None = None, gid: int | None = None, handle: "FileHandle | None" = None) -> None:
        """chmod/chown/utimens (None: unchanged), through `handle` if the caller holds
        one open (fchmod...). Formats without modes, owners or times accept and ignore
        them."""


def read_only(what: str = "") -> OSError:
    return OSError(errno.EROFS, "read-only", what)


class Directory(Node):
    __slots__ = ()

    def lookup(self, name: str) -> Node | None:
        raise NotImplementedError

    def lookup_attr(self, name: str) -> tuple[Node, Attr] | None:
        """A child and its attributes: directories that learn both at once override it."""
        node = self.lookup(name)
        return None if node is None else (node, node.attr())

    def lookup_attr_nowait(self, name: str) -> tuple[Node, Attr] | None:
        """What `lookup_attr` finds, if that needs no I/O and no wait; None otherwise
        (then `lookup_attr` is called in a thread, and decides what is missing)."""
        return None

    #: the renameat2 flags (RENAME_NOREPLACE 1, RENAME_EXCHANGE 2) `rename` does itself
    rename_flags = 0

    def opendir(self) -> "Directory":
        """What one open directory handle lists from: anything with `entries`. A directory
        that changes while it is read returns a snapshot of its own per handle (stable
        offsets for that reader); by default the directory itself. Must not block."""
        return self

    def entries(self, offset: int) -> Iterator[tuple[int, str, Node, Attr | None]]:
        """(next offset, name, node, attributes) from `offset` on. Offsets are stable: 0 is
        the start and the same offset always resumes at the same entry. Attributes are
        given where the listing already knows them (a stat saved per entry), else None."""
        raise NotImplementedError

    def entries_nowait(self, offset: int, count: int) -> list[tuple[int, str, Node, Attr]] | None:
        """Up to `count` of `entries` from `offset`, each with its attributes, if that needs
        no I/O and no wait; None otherwise (then `entries` is read in a worker thread)."""
        return None

    def entry_batch(self, offset: int, count: int) -> list[tuple[int, bytes, int, Attr]] | None:
        """Up to `count` entries from `offset` as (next offset, name as bytes, inode number,
        attributes), for directories of numbered children in a reserved range (`Tree.get`
        builds them from the number): listing a million of them then builds no node and
        calls no Python per entry. None (the default): the daemon lists through `entries`."""
        return None

    # writable directories override these; by default they refuse
    def create(self, name: str, mode: int) -> "File":
        raise read_only(name)

    def mkdir(self, name: str, mode: int) -> "Directory":
        raise read_only(name)

    def symlink(self, name: str, target: str) -> "Symlink":
        raise read_only(name)

    def unlink(self, name: str) -> None:
        raise read_only(name)

    def rmdir(self, name: str) -> None:
        raise read_only(name)

    def rename(self, name: str, new_parent: "Directory", new_name: str, flags: int = 0) -> None:
        """flags: only those of `rename_flags` are ever given."""
        raise read_only(name)

    def mknod(self, name: str, mode: int, rdev: int) -> Node:
        """A FIFO, socket or device node."""
        raise OSError(errno.EPERM, "special files are not supported here", name)

    def link(self, name: str, target: "Node") -> "Node":
        raise OSError(errno.EPERM, "hard links are not supported here", name)


class FileHandle:
    """One open file. `read` may block; `cached_read` must not (it answers only when
    the bytes are already in memory, so the daemon can skip a thread hop). `release`
    runs in a worker thread only if `release_blocks`. Writable handles also implement
    `write`, `truncate` and `flush` (close and fsync call it; it may refuse what was
    written with an OSError, which the writer sees as the error of close or fsync)."""

    release_blocks = False
    #: the content is what an earlier open of the same file served: the kernel may keep
    #: the pages it cached then (the tree's CachePolicy may allow that for every file)
    keep_cache = False

    def read(self, offset: int, size: int) -> bytes:
        raise NotImplementedError

    def cached_read(self, offset: int, size: int) -> bytes | None:
        return None

    def write(self, offset: int, data: bytes) -> int:
        raise OSError(errno.EBADF, "not open for writing")

    def truncate(self, size: int) -> None:
        raise OSError(errno.EBADF, "not open for writing")

    def flush(self) -> None:
        pass

    def fsync(self) -> None:
        """fsync(2): by default what close does."""
        self.flush()

    def release(self) -> None:
        pass


class File(Node):
    __slots__ = ()

    def open(self, flags: int) -> FileHandle:
        """May block (it runs in a worker thread)."""
        raise NotImplementedError

    def truncate(self, size: int) -> None:
        """truncate(2) without an open file."""
        raise read_only()

    def open_nowait(self, flags: int) -> FileHandle | None:
        """A handle if opening needs no I/O, else None (then `open` is called in a thread)."""
        return None


class Symlink(Node):
    #: whether reading `target` may block (then the daemon reads it in a worker thread)
    target_blocks = False

    def __init__(self, target: str, mtime_ns: int = 0):
        self.target = target
        self.mtime_ns = mtime_ns

    def attr(self) -> Attr:
        return Attr(stat.S_IFLNK | 0o777, len(self.target.encode()), self.mtime_ns)

    def cached_attr(self) -> Attr | None:
        """A target held in memory tells the attributes without I/O; one read from disk
        (`target_blocks`) does not."""
        return None if self.target_blocks else self.attr()


# -- simple building blocks -------------------------------------------------------------

class ListedDirectory(Directory):
    """A directory whose children come as one list (small, or cached by the subclass);
    offsets are positions in it."""

    def listing(self) -> list[tuple[str, Node]]:
        raise NotImplementedError

    def entries(self, offset: int):
        listing = self.listing()
        for pos in range(offset, len(listing)):
            yield pos + 1, listing[pos][0], listing[pos][1], None


class StaticDirectory(ListedDirectory):
    """A directory whose children are fixed when the tree is built."""

    def __init__(self, mtime_ns: int = 0, mode: int = 0o555):
        self.mtime_ns = mtime_ns
        self.mode = mode
        self._children: dict[str, Node] = {}
        self._listing: list[tuple[str, Node]] = []

    def add(self, name: str, node: Node) -> Node:
        if name in self._children:
            raise ValueError(f"duplicate name {name!r}")
        self._children[name] = node
        self._listing.append((name, node))
        return node

    def attr(self) -> Attr:
        subdirs = sum(isinstance(n, Directory) for n in self._children.values())
        return Attr(stat.S_IFDIR | self.mode, 0, self.mtime_ns, 2 + subdirs)

    def lookup(self, name: str) -> Node | None:
        return self._children.get(name)

    def listing(self) -> list[tuple[str, Node]]:
        return self._listing


class BytesHandle(FileHandle):
    def __init__(self, data: bytes):
        self.data = data

    def read(self, offset: int, size: int) -> bytes:
        return self.data[offset:offset + size]

    cached_read = read


class BufferHandle(FileHandle):
    """Writes go to a private copy; `commit(data)` runs when the handle is flushed after
    a change (close, fsync), so a file that must be valid as a whole (a mask, a JSON
    document) is applied whole or not at all. A refused commit leaves the copy dirty
    and raises again at the next flush, so the error reaches close(2)."""

    def __init__(self, data: bytes, commit: Callable[[bytes], None]):
        self.buf = bytearray(data)
        self.commit = commit
        self.dirty = False
        self._lock = threading.Lock()

    def read(self, offset: int, size: int) -> bytes:
        with self._lock:
            return bytes(self.buf[offset:offset + size])

    def write(self, offset: int, data: bytes) -> int:
        with self._lock:
            if offset > len(self.buf):
                self.buf.extend(bytes(offset - len(self.buf)))
            self.buf[offset:offset + len(data)] = data
            self.dirty = True
        return len(data)

    def truncate(self, size: int) -> None:
        with self._lock:
            del self.buf[size:]
            self.buf.extend(bytes(size - len(self.buf)))
            self.dirty = True

    def flush(self) -> None:
        with self._lock:
            if not self.dirty:
                return
            data = bytes(self.buf)
        self.commit(data)
        self.dirty = False


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
        self._drop = drop_behind and cached_pages(self._fd) == 0
        self._map: mmap.mmap | None = None
        self._lent: tuple[int, int] | None = None     # the range the last view showed
        if mapped:
            try:
                self._map = mmap.mmap(self._fd, 0, prot=mmap.PROT_READ)
            except (ValueError, OSError):           # empty, or not mappable
                pass
            else:
                import numpy as np                  # (here: trees without arrays start without numpy)
                self._address = np.frombuffer(self._map, np.uint8).ctypes.data     # for mincore

    def read(self, offset: int, size: int) -> bytes:
        data = os.pread(self._fd, size, offset)
        self._dropped(offset, len(data))
        return data

    def cached_read(self, offset: int, size: int) -> bytearray | memoryview | None:
        """The bytes if the page cache holds them all: no worker thread needed. The OS
        reads ahead of a sequential reader, so even a cold file mostly answers here."""
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


class TempFileHandle(FileHandle):
    """Writes to a real file go to a temporary copy beside it; flush (close, fsync) hands
    the finished copy to `commit(temp_path)`, which renames it into place (an atomic
    replace) and registers it. Large files never pass through memory. The copy is
    fsynced first unless `durable_later` (the committer makes it durable itself before
    anything names it)."""
    release_blocks = True

    def __init__(self, target: str, copy_from: str | None, commit: Callable[[str], None], dirty: bool = False,
                 durable_later: bool = False):
        directory, name = os.path.split(target)
        self._fd, self.temp = tempfile.mkstemp(prefix=f".{name}.", suffix=".scopefs-tmp", dir=directory)
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

    def release(self) -> None:
        os.close(self._fd)
        if not self._committed and os.path.exists(self.temp):
            os.unlink(self.temp)


class MemoryFile(File):
    """A plain writable file kept in memory (new files, editors' temporary files).
    All handles share its content, as they would on a disk."""

    def __init__(self, data: bytes = b"", mode: int = 0o644, mtime_ns: int | None = None):
        self.data = bytearray(data)
        self.mode = mode
        self.mtime_ns = mtime_ns if mtime_ns is not None else time.time_ns()
        self.lock = threading.Lock()

    def attr(self) -> Attr:
        return Attr(stat.S_IFREG | (self.mode & 0o7777), len(self.data), self.mtime_ns)

    def open(self, flags: int) -> FileHandle:
        if flags & os.O_TRUNC:
            self.truncate(0)
        return MemoryHandle(self)

    open_nowait = open

    def truncate(self, size: int) -> None:
        with self.lock:
            del self.data[size:]
            self.data.extend(bytes(size - len(self.data)))
            self.mtime_ns = time.time_ns()


class MemoryHandle(FileHandle):
    def __init__(self, file: MemoryFile):
        self.file = file

    def read(self, offset: int, size: int) -> bytes:
        with self.file.lock:
            return bytes(self.file.data[offset:offset + size])

    cached_read = read

    def write(self, offset: int, data: bytes) -> int:
        f = self.file
        with f.lock:
            if offset > len(f.data):
                f.data.extend(bytes(offset - len(f.data)))
            f.data[offset:offset + len(data)] = data
            f.mtime_ns = time.time_ns()
        return len(data)

    def truncate(self, size: int) -> None:
        self.file.truncate(size)


class View(File):
    """A file whose content is derived from the model and that writes back through it:
    a writer's bytes are committed whole when it closes, or refused with nothing changed.
    `owner` (an entry folder, or the tree) carries the mtime."""

    def __init__(self, owner):
        self.owner = owner
        self.staged: bytes | None = None          # truncated or created, not yet committed
        self._served_tag = None                   # the content the kernel's pages hold, if known
        self._open_tags: dict = {}                # handles open now, by tag (None: writers)
        self._tags_lock = threading.Lock()

    def content(self) -> bytes:
        raise NotImplementedError

    def content_tag(self):
        """Something hashable that changes whenever the content does, or None if the view
        cannot tell. While it stays the same, opens let the kernel keep the file's pages."""
        return None

    def commit(self, data: bytes) -> None:
        raise NotImplementedError

    def attr(self) -> Attr:
        data = self.staged if self.staged is not None else self.content()
        return Attr(stat.S_IFREG | 0o644, len(data), self.owner.mtime_ns)

    def open(self, flags: int) -> FileHandle:
        if flags & os.O_TRUNC:
            self.staged = b""
        if (flags & os.O_ACCMODE) == os.O_RDONLY:
            tag = self.content_tag() if self.staged is None else None     # before the content
            return self._reader(self.staged if self.staged is not None else self.content(), tag)
        current = self.staged if self.staged is not None else self.content()
        # committed only once written to: a shell's `>` closes a dup of the file first
        writer = ViewWriter(self, current)
        self._opened(None)                     # the writer's bytes land in the kernel's pages
        return writer

    def _reader(self, data: bytes, tag) -> "ViewReader":
        reader = ViewReader(self, data, tag)
        reader.keep_cache = self._opened(tag)
        return reader

    def _opened(self, tag) -> bool:
        """Count a handle open under `tag`; True if the kernel may keep the pages it has of
        this file: every handle that could have filled them since they were last dropped
        served this same content (a handle left open from before a change still can)."""
        with self._tags_lock:
            keep = tag is not None and tag == self._served_tag
            others = any(t != tag for t in self._open_tags)
            self._served_tag = None if others else tag
            self._open_tags[tag] = self._open_tags.get(tag, 0) + 1
            return keep

    def _released(self, tag) -> None:
        with self._tags_lock:
            self._open_tags[tag] -= 1
            if not self._open_tags[tag]:
                del self._open_tags[tag]

    def truncate(self, size: int) -> None:
        # `> file` truncates before it writes: keep that staged until a writer closes
        current = self.staged if self.staged is not None else self.content()
        self.staged = current[:size] + bytes(max(0, size - len(current)))
        with self._tags_lock:
            self._served_tag = None

    def _commit(self, data: bytes) -> None:
        try:
            self.commit(data)
        finally:
            self.staged = None         # accepted, or refused: either way the model shows
        self.owner.mtime_ns = time.time_ns()


class ViewReader(BytesHandle):
    """A read-only open of a View, counted until released (see View._opened)."""

    def __init__(self, view: View, data: bytes, tag):
        super().__init__(data)
        self._view, self._tag = view, tag

    def release(self) -> None:
        self._view._released(self._tag)


class ViewWriter(BufferHandle):
    """A writable open of a View, counted until released: its bytes reach the kernel's pages."""

    def __init__(self, view: View, data: bytes):
        super().__init__(data, view._commit)
        self._view = view

    def release(self) -> None:
        self._view._released(None)


_GENERATED = itertools.count()


class GeneratedFile(File):
    """A read-only file whose content is made on demand (CSV of a million rows, JSON
    summaries...). The content is generated once for its size and kept in `cache`
    (bounded); if evicted, it is made again, identically."""

    def __init__(self, make: Callable[[], bytes], mtime_ns: int = 0, cache: ByteCache | None = None):
        self._token = next(_GENERATED)      # a key never reused (an id() is, once a file is dropped)
        self._make = make
        self.mtime_ns = mtime_ns
        self._size: int | None = None
        self._cache = cache
        self._data: bytes | None = None
        self._lock = threading.Lock()

    def content(self) -> bytes:
        if self._cache is None:
            with self._lock:
                if self._data is None:
                    self._data = self._make()
                return self._data
        data = self._cache.get_or_make(("generated", self._token), self._make)
        self._size = len(data)
        return data

    def attr(self) -> Attr:
        if self._size is None:
            self._size = len(self.content())
        return Attr(stat.S_IFREG | 0o444, self._size, self.mtime_ns)

    def cached_attr(self) -> Attr | None:
        return None if self._size is None else Attr(stat.S_IFREG | 0o444, self._size, self.mtime_ns)

    def open(self, flags: int) -> FileHandle:
        return BytesHandle(self.content())

    def open_nowait(self, flags: int) -> FileHandle | None:
        data = self._data if self._cache is None else self._cache.get(("generated", self._token))
        return None if data is None else BytesHandle(data)


class RowsFile(File):
    """A large read-only text table (a CSV of a million frames) served by ranges.

    `row_lengths()` gives the byte length of every row, computed once (vectorised) when
    the size is first asked for; `render(lo, hi)` formats rows lo..hi-1 and must give
    exactly those lengths. A read formats only the rows it covers, so neither `stat` nor
    a read ever builds the whole file.
    """

    def __init__(self, header: bytes, row_lengths: Callable[[], "np.ndarray"],
                 render: Callable[[int, int], bytes], mtime_ns: int = 0):
        self.header = header
        self._row_lengths = row_lengths
        self.render = render
        self.mtime_ns = mtime_ns
        self._ends: "np.ndarray | None" = None
        self._lock = threading.Lock()

    def row_ends(self) -> "np.ndarray":
        """Byte offset just past each row, counted from the end of the header."""
        with self._lock:
            if self._ends is None:
                import numpy as np                  # (here: trees without tables start without numpy)
                self._ends = np.cumsum(self._row_lengths(), dtype=np.int64)
            return self._ends

    def attr(self) -> Attr:
        ends = self.row_ends()
        return Attr(stat.S_IFREG | 0o444, len(self.header) + (int(ends[-1]) if ends.size else 0), self.mtime_ns)

    def open(self, flags: int) -> FileHandle:
        return RowsHandle(self)


class RowsHandle(FileHandle):
    def __init__(self, table: RowsFile):
        self.table = table

    def read(self, offset: int, size: int) -> bytes:
        header, ends = self.table.header, self.table.row_ends()
        out = header[offset:offset + size]
        start, stop = max(offset - len(header), 0), offset + size - len(header)
        if stop <= 0 or not ends.size:
            return out
        lo = int(ends.searchsorted(start, side="right"))
        hi = min(int(ends.searchsorted(stop, side="left")) + 1, ends.size)
        if lo >= hi:
            return out
        first = int(ends[lo - 1]) if lo else 0
        chunk = self.table.render(lo, hi)
        return out + chunk[start - first:stop - first]


# -- inode numbering --------------------------------------------------------------------

class Tree:
    """Owns the inode numbers of one backend.

    Fixed nodes get numbers in order of `add`. A `reserve`d range maps numbers to nodes
    built on demand by a factory. Dynamic nodes (made by a lookup, such as a name that
    resolves a timestamp) are numbered by key while the kernel remembers them, and
    dropped when it forgets them.
    """

    cache_policy = CachePolicy()
    writable = False
    #: entries have real owners, times and modes: create/mkdir/symlink/mknod get the
    #: caller as an `Owner`, chown changes the owner, and the modes the kernel gives
    #: (the caller's umask applied) are used as they are (the daemon's umask is 0)
    real_owners = False
    #: one line the mount command prints once mounted (why a source is read-only...)
    notice: str | None = None

    def __init__(self, base: int = ROOT_INO):
        self.base = base
        self._fixed: dict[int, Node] = {}
        self._range_starts: list[int] = []
        self._ranges: list[tuple[int, int, Callable[[int], Node]]] = []
        self._next = base
        self._dynamic_by_key: dict[object, Node] = {}
        self._grafts: dict[int, "Tree"] = {}
        self._lock = threading.Lock()

    @property
    def root(self) -> Directory:
        return self._fixed[self.base]

    def graft(self, make: Callable[[int], "Tree"]) -> "Tree":
        """Another tree shown inside this one (an .iid file inside a database), numbered
        in a range of its own: `make(base)` builds it with its first inode at `base`.
        Only a top-level tree grafts."""
        if self.base != ROOT_INO:
            raise OSError(errno.EPERM, "a grafted tree cannot graft again")
        with self._lock:
            slot = len(self._grafts) + 1
            tree = make(slot << GRAFT_SHIFT)
            self._grafts[slot] = tree
            return tree

    def _graft_of(self, ino: int) -> "Tree | None":
        return self._grafts.get(ino >> GRAFT_SHIFT) if ino >> GRAFT_SHIFT else None

    def add(self, node: Node) -> Node:
        with self._lock:
            node.ino = self._next
            self._next += 1
            self._fixed[node.ino] = node
        return node

    def reserve(self, count: int, factory: Callable[[int], Node]) -> int:
        """Reserve `count` numbers; node k is `factory(k)` and has number base + k."""
        with self._lock:
            base = self._next
            self._next += max(count, 0)
            self._range_starts.append(base)
            self._ranges.append((base, count, factory))
        return base

    def dynamic(self, key: object, factory: Callable[[], Node]) -> Node:
        with self._lock:
            node = self._dynamic_by_key.get(key)
            if node is None:
                node = factory()
                node.ino = self._next
                self._next += 1
                node._dynamic_key = key
                self._dynamic_by_key[key] = node
                self._fixed[node.ino] = node
            return node

    def get(self, ino: int) -> Node | None:
        graft = self._graft_of(ino)
        if graft is not None:
            return graft.get(ino)
        node = self._fixed.get(ino)
        if node is not None:
            return node
        pos = bisect.bisect_right(self._range_starts, ino) - 1
        if pos >= 0:
            base, count, factory = self._ranges[pos]
            if ino < base + count:
                node = factory(ino - base)
                node.ino = ino
                return node
        return None

    def forget(self, ino: int) -> None:
        """The kernel holds no reference to `ino` any more."""
        graft = self._graft_of(ino)
        if graft is not None:
            graft.forget(ino)
            return
        if ino not in self._fixed:
            return                      # a numbered node (a reserved range): nothing to drop
        with self._lock:
            node = self._fixed.get(ino)
            key = getattr(node, "_dynamic_key", None)
            if key is not None:
                del self._fixed[ino]
                del self._dynamic_by_key[key]

    def adopt(self, node: Node) -> None:
        """The daemon hands `node` to the kernel, which held no reference to it: a node let
        go at the kernel's forget while a lookup was finding it must answer again."""
        graft = self._graft_of(node.ino)
        if graft is not None:
            graft.adopt(node)
            return
        key = getattr(node, "_dynamic_key", None)
        if key is not None and self._fixed.get(node.ino) is not node:
            with self._lock:
                self._fixed[node.ino] = node
                self._dynamic_by_key.setdefault(key, node)

    def alias(self, ino: int, node: Node) -> None:
        """Let `ino` answer as `node`: after a file is renamed onto a name the backend
        serves itself, the kernel still knows that name by the renamed file's inode."""
        with self._lock:
            self._fixed[ino] = node

    def discard(self, ino: int) -> None:
        """Forget a fixed node that was deleted (handles still open keep the object)."""
        with self._lock:
            self._fixed.pop(ino, None)

    def sync(self) -> None:
        """Write pending changes back to the source (writable trees)."""

    def sync_due(self) -> bool:
        """True when changes have waited long enough to be written back unasked."""
        return False

    def statfs_counts(self) -> tuple[int, int]:
        """(bytes used, files) for statfs; cheap estimates are fine."""
        return 0, self._next

    def statvfs(self) -> os.statvfs_result | None:
        """The statvfs of the filesystem that holds what is written, if there is one."""
        return None

    def status(self) -> dict:
        """What the backend adds to the mount's status (the control file)."""
        return {}

    def close(self) -> None:
        for tree in self._grafts.values():
            tree.close()


