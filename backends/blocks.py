"""In-memory building blocks of trees: directories listed from memory, files whose
content is bytes, made on demand, derived from a model (`View`) or served by row ranges.
No I/O of their own; what they call (a `make`, a `commit`) may block, and runs where the
node contract says (see the table in nodes.py)."""
from __future__ import annotations

import errno
import itertools
import logging
import os
import stat
import threading
import time
from typing import Callable

from .cache import ByteCache
from .nodes import Attr, Directory, File, FileHandle, Node, Tree, read_only, writes
from .nowait import lookup_attr_nowait

log = logging.getLogger(__name__)

#: the largest file kept in memory (a view or a picks import being written, an editor's
#: scratch file): beyond it a write or truncate fails with EFBIG ("File too large"), as
#: at a filesystem's largest file size, instead of taking the daemon's memory. Not
#: ENOSPC: the filesystem is not full, other files can still be written.
MEMORY_FILE_LIMIT = 1 << 30


def _too_large() -> OSError:
    return OSError(errno.EFBIG, f"a file kept in memory holds at most {MEMORY_FILE_LIMIT} bytes")


def resize(buf: bytearray, size: int) -> None:
    """truncate(2) of a file in memory: cut, or padded with zeros."""
    if size > MEMORY_FILE_LIMIT:
        raise _too_large()
    del buf[size:]
    buf.extend(bytes(size - len(buf)))


def resized(data: bytes, size: int) -> bytes:
    """`resize` of immutable bytes."""
    if size > MEMORY_FILE_LIMIT:
        raise _too_large()
    return data[:size] + bytes(max(0, size - len(data)))


def view_attr(size: int | None, mtime_ns: int) -> Attr | None:
    """A view's attributes (read-only, its source's time), None while its size is not
    known: a generated file's, an MRC view's, and a listing's of a view not made yet
    (`DerivedFile`: as its node will give them)."""
    return None if size is None else Attr(stat.S_IFREG | 0o444, size, mtime_ns)


def write_into(buf: bytearray, offset: int, data: bytes) -> int:
    """pwrite(2) to a file in memory: a gap before `offset` reads as zeros. A write that
    would pass MEMORY_FILE_LIMIT is cut short at it, and one that starts there fails, as
    the kernel does at a filesystem's largest file size."""
    room = MEMORY_FILE_LIMIT - offset
    if len(data) > room:
        if room <= 0:
            raise _too_large()
        data = data[:room]
    if offset > len(buf):
        buf.extend(bytes(offset - len(buf)))
    buf[offset:offset + len(data)] = data
    return len(data)


class ListingSnapshot:
    """What one open directory handle lists: the directory's listing as it was when the
    handle read from offset 0, read on from there, so that its offsets (positions) keep
    naming the same entries while the directory changes: a reader that deletes what it
    has read skips nothing. It keeps the list `listing()` made; it copies nothing."""

    def __init__(self, listing: Callable[[], list[tuple[str, Node]]], attrs: bool = False,
                 lock: threading.Lock | threading.RLock | None = None,
                 listing_nowait: Callable[[], list[tuple[str, Node]] | None] | None = None,
                 files_unsized: bool = False):
        self._listing, self._attrs = listing, attrs        # attrs: give each node's cached_attr()
        # files_unsized: `entries_nowait` gives files whose attributes need I/O with None
        # (a lean listing gives them without; `Operations._reply_nowait`)
        self._files_unsized = files_unsized
        self._lock = lock               # listings from memory under it: `entries_nowait` may try it
        # where `listing` may need I/O: the listing from memory under `lock`, or None
        self._listing_nowait = listing_nowait or listing
        self._rows: list[tuple[str, Node]] | None = None

    def entries(self, offset: int):
        if offset == 0 or self._rows is None:
            self._rows = self._listing()
        rows = self._rows
        for pos in range(offset, len(rows)):
            name, node = rows[pos]
            yield pos + 1, name, node, node.cached_attr() if self._attrs else None

    def entries_nowait(self, offset: int, count: int, anew: bool = True) -> list[tuple[int, str, Node, Attr]] | None:
        """`Directory.entries_nowait`: for a listing made in memory under `lock`, which is
        only tried; None if it is held, or if an entry's attributes need work (but for
        files' with `files_unsized`: given as None). From 0, the listing is made anew
        unless `anew` is False (read again as another reader of the snapshot had it)."""
        if self._lock is None or not self._lock.acquire(blocking=False):
            return None
        try:
            if (offset == 0 and anew) or self._rows is None:
                rows = self._listing_nowait()
                if rows is None:
                    return None
                self._rows = rows
            rows = self._rows
            out = []
            for pos in range(offset, min(offset + count, len(rows))):
                name, node = rows[pos]
                attr = node.cached_attr()
                if attr is None and not (self._files_unsized and isinstance(node, File)):
                    return None             # (a view not made yet: a worker thread makes it)
                out.append((pos + 1, name, node, attr))
            return out
        finally:
            self._lock.release()


class ListedDirectory(Directory):
    """A directory whose children come as one list (small, or cached by the subclass);
    offsets are positions in it, and each open handle lists from a snapshot of it."""

    def listing(self) -> list[tuple[str, Node]]:
        raise NotImplementedError

    def opendir(self) -> ListingSnapshot:
        return ListingSnapshot(self.listing)

    def entries(self, offset: int):
        return ListingSnapshot(self.listing).entries(offset)


class StaticDirectory(ListedDirectory):
    """A directory whose children are fixed when the tree is built: names and listings
    are answered from memory, on the loop, for children whose attributes are known."""

    def __init__(self, mtime_ns: int = 0, mode: int = 0o555):
        self.mtime_ns = mtime_ns
        self.mode = mode
        self._children: dict[str, Node] = {}
        self._listing: list[tuple[str, Node]] = []
        self._lock = threading.Lock()

    def add(self, name: str, node: Node) -> Node:
        with self._lock:
            if name in self._children:
                raise ValueError(f"duplicate name {name!r}")
            self._children[name] = node
            self._listing.append((name, node))
        return node

    def cached_attr(self) -> Attr:
        return self.attr()

    def lookup_attr_nowait(self, name: str):
        return lookup_attr_nowait(self.lookup, name, self._lock)

    def opendir(self) -> ListingSnapshot:
        return ListingSnapshot(self.listing, lock=self._lock)

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
    flush_blocks = True

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
            written = write_into(self.buf, offset, data)
            self.dirty = True
        return written

    write_nowait = write       # into memory: no thread

    def truncate(self, size: int) -> None:
        with self._lock:
            resize(self.buf, size)
            self.dirty = True

    def flush(self) -> None:
        with self._lock:
            if not self.dirty:
                return
            data = bytes(self.buf)
        self.commit(data)
        self.dirty = False


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
            resize(self.data, size)
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
            written = write_into(f.data, offset, data)
            f.mtime_ns = time.time_ns()
        return written

    write_nowait = write       # into memory: no thread

    def truncate(self, size: int) -> None:
        self.file.truncate(size)


class View(File):
    """A file whose content is derived from the model and that writes back through it:
    a writer's bytes are committed whole when it closes, or refused with nothing changed.
    `owner` (an entry folder, or the tree) carries the mtime; `tree`, if set, hears
    of each commit (`Tree.report`)."""

    tree: "Tree | None" = None
    staged: bytes | None = None                   # truncated or created, not yet committed
    _served_tag = None                            # the content the kernel's pages hold, if known
    #: one for every view (a mount may list 100,000 views, made as a walk lists them):
    #: held only while `_opened`, `_released` or `truncate` update the open handles' tags
    _tags_lock = threading.Lock()
    #: the class defines `commit_nowait` (worked out once a class): its writers flush on the loop
    commits_nowait = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.commits_nowait = cls.commit_nowait is not View.commit_nowait

    def __init__(self, owner):
        self.owner = owner
        self._open_tags: dict = {}                # handles open now, by tag (None: writers)

    def content(self) -> bytes:
        raise NotImplementedError

    def content_tag(self):
        """Something hashable that changes whenever the content does, or None if the view
        cannot tell. While it stays the same, opens let the kernel keep the file's pages."""
        return None

    def commit(self, data: bytes) -> None:
        raise NotImplementedError

    def commit_nowait(self, data: bytearray) -> bool:
        """`commit` if it can be made here without I/O or a wait (True; a refusal raises
        as `commit` does), else False with nothing changed (then `commit` in a thread).
        `data` is the writer's buffer, only read during the call: it says False before it
        copies or decodes what it will not commit here. A view that defines it must
        change the size or mtime of every node its commit changes (the owner's mtime is
        set here): the daemon then tells the kernel only of their attributes, and the
        kernel drops a file's pages when it sees them change (FUSE_CAP_AUTO_INVAL_DATA,
        libfuse's default) and a folder's cached listing at its next readdir from offset
        0 (the folder's mtime), never waiting on pages a read holds."""
        return False

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
        writer = (NowaitViewWriter if self.commits_nowait else ViewWriter)(self, current)
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
        self.staged = resized(current, size)
        with self._tags_lock:
            self._served_tag = None

    def _commit(self, data: bytes | bytearray, nowait: bool = False) -> bool:
        """`commit` (`nowait`: `commit_nowait`, False if it could not); then the model shows."""
        done = True                    # (a refusal too)
        try:
            if nowait:
                done = self.commit_nowait(data)
            else:
                self.commit(data)
            if done:
                self.owner.mtime_ns = time.time_ns()
        finally:
            if done:                   # accepted, or refused: either way the model shows
                self.staged = None     # the kernel's pages hold what was written, not the model's
                # (dropped by the report; after `commit_nowait`, by the new size or mtime)
                if self.tree is not None:
                    self.tree.report(self.ino, *([self.owner.ino] if isinstance(self.owner, Node) else []))
        return done


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


class NowaitViewWriter(ViewWriter):
    """The writer of a View that defines `commit_nowait`: its flush is made on the
    daemon's loop where the view can (no copy of the buffer there)."""

    def flush_nowait(self) -> bool:
        with self._lock:
            if self.dirty and not self._view._commit(self.buf, nowait=True):
                return False
            self.dirty = False
        return True


_GENERATED = itertools.count()


class GeneratedFile(File):
    """A read-only file whose content is made on demand (CSV of a million rows, JSON
    summaries...). The content is generated once for its size and kept in `cache`
    (bounded; under `key`, where others make the same bytes into it, else a key of its
    own), never in the node; if evicted, it is made again, identically. Without a cache
    the node keeps it: only for small files a mount has a few of. With `kept` (a
    `kept_sizes.KeptSize`) its size comes from sizes learned before, on this mount or
    another, without making it; a kept size that proves wrong when the content is made
    (a renderer changed without its version) is corrected and `on_resized(self)` called.
    `sized()`, if given, tells the size without making the content (None: it cannot),
    when none is kept. `made_nowait()`, if given, gives the content where that needs no
    I/O (else None): an open is then answered on the daemon's loop, in a cache."""

    def __init__(self, make: Callable[[], bytes], mtime_ns: int = 0, cache: ByteCache | None = None,
                 kept=None, on_resized: Callable[["GeneratedFile"], None] | None = None,
                 sized: Callable[[], int | None] | None = None, key=None,
                 made_nowait: Callable[[], bytes | None] | None = None):
        self._key = key or ("generated", next(_GENERATED))    # never reused (an id() is, once a file is dropped)
        self._make, self._sized, self._made_nowait = make, sized, made_nowait
        self.mtime_ns = mtime_ns
        self._size: int | None = None
        self._cache = cache
        self._kept, self._on_resized = kept, on_resized
        self._data: bytes | None = None
        self._lock = threading.Lock() if cache is None else None    # (a mount may hold 100,000 of these)

    def content(self) -> bytes:
        if self._cache is None:
            with self._lock:
                if self._data is None:
                    self._data = self._made()
                return self._data
        return self._cache.get_or_make(self._key, self._made)

    def _made(self) -> bytes:
        if self._kept is not None:
            self._kept.digest()                 # the sources' versions before they are read
        data = self._make()
        told, self._size = self._size, len(data)
        if self._kept is not None:
            self._kept.learn(len(data))
        if told is not None and told != len(data):
            log.warning("a generated file's size was %d, its content is %d bytes: corrected", told, len(data))
            if self._on_resized is not None:
                self._on_resized(self)
        return data

    def attr(self) -> Attr:
        if self._size is None:
            kept = self._kept.get() if self._kept is not None else None
            sized = self._sized
            if kept is None and sized is not None:
                kept = sized()
                if kept is not None and self._kept is not None:
                    self._kept.learn(kept)
            if kept is None:            # (made here, or by another file of the same key)
                self._size = len(self.content())
            else:
                self._size = kept
            self._sized = None          # (it may hold a whole folder's sizes: not needed again)
        return view_attr(self._size, self.mtime_ns)

    def cached_attr(self) -> Attr | None:
        return view_attr(self._size, self.mtime_ns)

    def size_if_kept(self) -> None:
        """Its size taken from the kept sizes, if there (asked ahead of a walker: no content made)."""
        if self._size is None and self._kept is not None and (size := self._kept.peek()) is not None:
            self.told(size)

    def told(self, size: int) -> None:
        """The kernel was told this size before the node was made (a kept size found
        without it): taken as its own kept size (content of another size is reported),
        or reported at once if the node knows another."""
        known = self._size
        if known is None:
            self._size, self._sized = size, None
        elif known != size and self._on_resized is not None:
            self._on_resized(self)

    def open(self, flags: int) -> FileHandle:
        if writes(flags):           # (root passes the kernel's check of the mode)
            raise read_only()
        return BytesHandle(self.content())

    def open_nowait(self, flags: int) -> FileHandle | None:
        if writes(flags):
            return None
        data = self._data if self._cache is None else self._cache.get(self._key)
        if data is None and self._made_nowait is not None and self._cache is not None and self._size is not None:
            data = self._made_nowait()
            if data is None or len(data) != self._size:      # (a size that proved wrong: told in a thread)
                return None
            self._cache.put(self._key, data)
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

    def cached_attr(self) -> Attr | None:
        return None if self._ends is None else self.attr()

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
