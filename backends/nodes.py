"""The node contract between backends and the daemon: the node types, their attributes
and `Tree`, which owns the inode numbers. No FUSE and no I/O here: the building blocks
that implement it are in blocks.py (in memory) and localfiles.py (real local files).

A backend is a `Tree` of nodes. Every node has an inode number that the backend
assigns and keeps for the life of the mount, so the daemon never has to hold a table
of every node the kernel has seen: it asks `Tree.get(ino)`. Large regular directories
(a million frames) reserve a range of inode numbers and build their nodes on demand.

The thread rule. The daemon answers the kernel from one event loop. What may block
(disk, network, decoding, waiting for a lock held across them) it calls in a worker
thread, under a capacity limit and (reads and lookups) a timeout: every method must be
thread-safe. What must not block it calls on the loop itself: that answers from memory at
once, or says "cannot tell" (None) and the daemon calls its blocking twin in a thread.
There a lock may be taken if it is only ever held briefly (one that a change holds long
only with a non-blocking try), and system calls made that cannot wait (an RWF_NOWAIT
read, a RESOLVE_CACHED open, fstat of an open local file). A method listed with a flag
runs in a thread if its class sets the flag (because it may block), else on the loop.

    may block: in a worker thread              must not block: on the event loop
    -----------------------------------------  ------------------------------------------
    Node.attr                                  Node.cached_attr
    Node.set_attr       if set_attr_blocks     Node.set_attr otherwise
    Directory.lookup, lookup_attr              Directory.lookup_attr_nowait (ABSENT: known
                                                 missing), negative_timeout_of
    Directory.entries, entry_batch (of what    Directory.opendir, and entries_nowait
      opendir gave)                              (of what opendir gave), entry_count_nowait
    Directory.create, mkdir, symlink, mknod,    Directory.mkdir_nowait, create_nowait
      link, unlink, rmdir, rename                (and its open)
    File.open, truncate                        File.open_nowait
    FileHandle.read, write, truncate           FileHandle.cached_read, write_nowait
    Symlink.target         if target_blocks    Symlink.target otherwise
    FileHandle.flush       if flush_blocks     FileHandle.flush otherwise (every close),
                                                 and flush_nowait (a commit in memory)
    FileHandle.fsync       if fsync_blocks     FileHandle.fsync otherwise
                           or flush_blocks
    FileHandle.release     if release_blocks   FileHandle.release otherwise
    Tree.sync                                  Tree.get (a reserved range's factory too),
                                               forget, adopt, status, statfs_counts,
                                               sync_due, writable_at, report and offer
                                               (any thread)
    Tree.statvfs         if statvfs_blocks     Tree.statvfs otherwise

What the daemon reads as attributes (these flags, `rename_flags`, `keep_cache`, a tree's
`cache_policy`, `writable`, `real_owners`, `lean_listings`) are plain values. `Tree.close`
runs once the loop has ended.
"""
from __future__ import annotations

import bisect
import errno
import os
import stat
import threading
from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple

ROOT_INO = 1
#: a grafted tree numbers its inodes from slot << GRAFT_SHIFT (trees at the top level
#: stay far below that)
GRAFT_SHIFT = 40


class Absent:
    """What a nowait lookup answers for a name it knows is missing (None: cannot tell).
    False as a truth value, like None."""
    __slots__ = ()

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT = Absent()


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


#: the file types a policy's `namespace_attr_timeout` is for: folders and links
NAMESPACE_TYPES = frozenset((stat.S_IFDIR, stat.S_IFLNK))


@dataclass(frozen=True)
class CachePolicy:
    """How long the kernel may trust what it was told, and whether file pages survive
    close/open. Read-only sources can be trusted for long; writable ones cannot."""
    entry_timeout: float = 3600.0
    attr_timeout: float = 3600.0
    negative_timeout: float = 60.0
    keep_cache: bool = True
    #: whether the kernel may keep a directory's listing until told otherwise (then a
    #: second `ls` of an unchanged folder never reaches the daemon). The kernel drops it on
    #: changes made through the mount and on an invalidation of the folder's inode (of its
    #: attributes only, after `View.commit_nowait`: at the next readdir from offset 0,
    #: which finds a new mtime), so a tree that sets it either never changes behind the
    #: kernel's back or reports every such change of a folder's names through
    #: `Tree.report` (the folder's inode). The kernel then also keeps symbolic links'
    #: targets: such a tree gives a link a new inode for a new target, or reports the link.
    cache_listings: bool = True
    #: for directories and symbolic links, where a tree can trust them longer than its
    #: files (None: attr_timeout). The kernel checks each directory of a path it
    #: resolves and each link it follows: at 0, each costs a round trip.
    namespace_attr_timeout: float | None = None

    def attr_timeout_of(self, mode: int) -> float:
        if self.namespace_attr_timeout is not None and stat.S_IFMT(mode) in NAMESPACE_TYPES:
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

    #: whether `set_attr` may block (a node that keeps modes, owners or times on disk)
    set_attr_blocks = False

    def set_attr(self, mode: int | None = None, mtime_ns: int | None = None, *, atime_ns: int | None = None,
                 uid: int | None = None, gid: int | None = None, handle: "FileHandle | None" = None) -> None:
        """chmod/chown/utimens (None: unchanged), through `handle` if the caller holds
        one open (fchmod...). Formats without modes, owners or times accept and ignore
        them (here, on the loop: `cp -a` costs no thread per file)."""


def read_only(what: str = "") -> OSError:
    return OSError(errno.EROFS, "read-only", what)


def writes(flags: int) -> bool:
    """Whether an open with `flags` may change the file (to write, or to truncate)."""
    return (flags & os.O_ACCMODE) != os.O_RDONLY or bool(flags & os.O_TRUNC)


class Directory(Node):
    __slots__ = ()

    def lookup(self, name: str) -> Node | None:
        raise NotImplementedError

    def lookup_attr(self, name: str) -> tuple[Node, Attr] | None:
        """A child and its attributes: directories that learn both at once override it."""
        node = self.lookup(name)
        return None if node is None else (node, node.attr())

    def lookup_attr_nowait(self, name: str) -> "tuple[Node, Attr] | None | Absent":
        """What `lookup_attr` finds, if that needs no I/O and no wait; `ABSENT` if memory
        tells that the name is missing; None otherwise (then `lookup_attr` decides)."""
        return None

    #: the renameat2 flags (RENAME_NOREPLACE 1, RENAME_EXCHANGE 2) `rename` does itself
    rename_flags = 0
    #: how long the kernel may remember that a name is missing here (None: the tree's
    #: `cache_policy`). A folder of a writable tree whose names appear only through the
    #: kernel's own calls (mkdir, create, rename, link, symlink into it) may let it
    #: remember for long: `cp` looks a target up three times before it makes it.
    negative_timeout: float | None = None

    def negative_timeout_of(self, name: str) -> float | None:
        """`negative_timeout` for one missing name: a name that may appear without a
        kernel call naming it (a view made at a file's close) says 0, so it is not
        remembered missing (the names a change reports are never waited for). No I/O."""
        return self.negative_timeout

    def opendir(self) -> "Directory":
        """What one open directory handle lists from: anything with `entries`. A directory
        that changes while it is read returns a snapshot of its own per handle (stable
        offsets for that reader); by default the directory itself. Where the kernel caches
        listings (`CachePolicy.cache_listings`), any later reader may go on in a snapshot
        it was given offsets of (daemon/listings.py), at offsets other than 0 only."""
        return self

    def entries(self, offset: int) -> Iterator[tuple[int, str, Node, Attr | None]]:
        """(next offset, name, node, attributes) from `offset` on. Offsets are stable: 0 is
        the start and the same offset always resumes at the same entry; they grow along
        the listing and stay below 2**32 (the daemon adds a listing's number above them). Attributes are
        given where the listing already knows them (a stat saved per entry), else None."""
        raise NotImplementedError

    def entries_nowait(self, offset: int, count: int, anew: bool = True) -> list[tuple[int, str, Node, Attr]] | None:
        """Up to `count` of `entries` from `offset`, each with its attributes, if that needs
        no I/O and no wait; None otherwise (then `entries` is read in a worker thread).
        From 0 a snapshot lists anew unless `anew` is False: then it reads again the listing
        it gave its reader (the daemon's helpers read a reply's rows after the reply)."""
        return None

    def entry_count_nowait(self) -> int | None:
        """How many entries it lists, at most (it may over-count, never under-count), if
        memory tells without making the listing (no I/O, no wait); None: unknown. A folder
        it says is too big for what a walker's helper prepares is not listed for it."""
        return None

    def entry_batch(self, offset: int, count: int) -> list[tuple[int, bytes, int, Attr]] | None:
        """Up to `count` entries from `offset` as (next offset, name as bytes, inode number,
        attributes), for directories of numbered children in a reserved range (`Tree.get`
        builds them from the number): listing a million of them then builds no node and
        calls no Python per entry. None (the default): the daemon lists through `entries`."""
        return None

    # writable directories override these; by default they refuse
    def mkdir_nowait(self, name: str, mode: int, *owner) -> "tuple[Directory, Attr] | None":
        """`mkdir` and the new folder's attributes, if that needs no I/O and no wait (a
        tree held in memory); None otherwise (then `mkdir` runs in a worker thread).
        `owner` as for `mkdir` (trees with real owners)."""
        return None

    def create_nowait(self, name: str, mode: int, flags: int, *owner) -> "tuple[File, Attr, FileHandle] | None":
        """`create`, the new file's attributes and its `open(flags)`, if all of that needs
        no I/O and no wait; None otherwise (then they run in a worker thread)."""
        return None

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
    """One open file. `cached_read` answers only with bytes already in memory (None:
    then `read`). Writable handles also implement `write`, `truncate` and `flush` (close
    and fsync call it; it may refuse what was written with an OSError, which the writer
    sees as the error of close or fsync). A handle opened without
    `writes(flags)` has nothing to flush: the kernel is told not to send its close
    (FOPEN_NOFLUSH). On a read-only tree the kernel opens files without asking: the daemon
    then opens a handle at a file's first read, may serve several readers with it, and
    releases it later than their close (daemon/unopened.py)."""

    #: flush, fsync (by default flush) or release may block: each that may says so, and
    #: the daemon calls it in a worker thread (the thread rule above); a write that goes
    #: into memory is answered by `write_nowait` (then it costs no thread: a `cp` of a
    #: small file is one write)
    flush_blocks = False
    fsync_blocks = False
    release_blocks = False
    #: the content is what an earlier open of the same file served: the kernel may keep
    #: the pages it cached then (the tree's CachePolicy may allow that for every file)
    keep_cache = False
    #: the class defines `flush_nowait` (worked out once a class): the daemon calls it only then
    flushes_nowait = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.flushes_nowait = cls.flush_nowait is not FileHandle.flush_nowait

    def read(self, offset: int, size: int) -> bytes:
        raise NotImplementedError

    def cached_read(self, offset: int, size: int) -> bytes | None:
        return None

    def write(self, offset: int, data: bytes) -> int:
        raise OSError(errno.EBADF, "not open for writing")

    def write_nowait(self, offset: int, data: bytes) -> int | None:
        """`write` if it needs no I/O and no wait (kept in memory); None otherwise."""
        return None

    def truncate(self, size: int) -> None:
        raise OSError(errno.EBADF, "not open for writing")

    def flush(self) -> None:
        pass

    def flush_nowait(self) -> bool:
        """`flush` if it needs no I/O and no wait: True once done (a refusal raises as
        `flush` does); False with nothing done otherwise. Called only of a class that
        defines it (every other flush costs no call more). Each node it reports must have
        a new size or mtime: the kernel is told only of their attributes."""
        return False

    def fsync(self) -> None:
        """fsync(2): by default what close does."""
        self.flush()

    def release(self) -> None:
        pass


class File(Node):
    __slots__ = ()
    #: an open to write only may be given though the mode has no write bit: the handle
    #: takes back only the file's own bytes, refusing any other with EROFS (a copick view
    #: written over by a copy of itself)
    takes_own_bytes_back = False

    def open(self, flags: int) -> FileHandle:
        raise NotImplementedError

    def truncate(self, size: int) -> None:
        """truncate(2) without an open file."""
        raise read_only()

    def open_nowait(self, flags: int) -> FileHandle | None:
        """A handle if opening needs no I/O, else None (then `open`)."""
        return None


class Symlink(Node):
    #: reading `target` may block (a link on disk): the daemon reads it in a thread
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
    #: files whose attributes are not in memory may be listed without them (the daemon's
    #: lean listings): for trees where such a file costs real work to size (a generated
    #: view, a stat) and walks of names are common; trees that know their sizes keep them
    lean_listings = False
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
        self._listeners: list[Callable[[tuple[int, ...], tuple[tuple[int, str], ...], bool], None]] = []
        self._content_listeners: list[Callable[[int, bytes, int, bool], bool | None]] = []
        self._requests: Callable[[], int] = lambda: 0

    def count_requests(self, requests: Callable[[], int]) -> None:
        """`requests()` counts the requests the daemon has answered so far (the daemon's):
        work a backend does in the background waits while they come (`requests_answered`)."""
        self._requests = requests

    def requests_answered(self) -> int:
        return self._requests()

    def listen(self, listener: Callable[[tuple[int, ...], tuple[tuple[int, str], ...], bool], None]) -> None:
        """Call `listener(inodes, entries, waited)` for every `report` (the daemon's, to tell
        the kernel); grafted trees report through it too."""
        self._listeners.append(listener)

    def report(self, *inodes: int, entries: tuple[tuple[int, str], ...] = (), waited: bool = True) -> None:
        """Tell the kernel what changed without a request of its own on it, so that it
        may cache the rest for long: `inodes` whose attributes or content changed, and
        `entries` ((folder inode, name)) that went away or now name another node.
        Changes the kernel made itself (the file written, the name unlinked) need none.
        `waited`: the change request being answered waits until the kernel was told (a
        change seen from outside any request, such as a watch of the disk's, says False)."""
        for listener in self._listeners:
            listener(inodes, entries, waited)

    def listen_content(self, listener: Callable[[int, bytes, int, bool], bool | None]) -> None:
        """Call `listener(ino, data, offset, wait)` for every `offer` (the daemon's, to fill
        the kernel's page cache; true if the kernel took it); grafted trees offer through it too."""
        self._content_listeners.append(listener)

    def offer(self, ino: int, data: bytes, offset: int = 0, wait: bool = False) -> bool:
        """Content of file `ino` from `offset` (a multiple of the page size), made ahead of
        a reader (read-ahead) or of its next reads: the kernel may cache it, so that the
        reader finds it there and sends no read. A leading part of whole pages (the rest
        is read as usual) lets a backend see such a reader pass, which it does not
        otherwise where the kernel opens files itself. Only for content that never
        changes and whose handles say `keep_cache` (an open that does not keep the cache
        drops it). From any thread, never blocking; `wait` (worker threads only): the
        kernel has it when this returns, which may wait for a read of it in flight, and,
        for a file the kernel does not know yet, for the loop to answer the daemon's own
        LOOKUP of it (`path_of`). True if the kernel has it when this returns (`wait` only):
        a backend then need not keep a copy of its own."""
        stored = False
        for listener in self._content_listeners:
            stored = bool(listener(ino, data, offset, wait)) or stored
        return stored

    def path_of(self, ino: int) -> str | None:
        """A path (from the mount's root) of file `ino`, which a backend `offer`s content
        of: the daemon looks it up where the kernel does not know the inode yet (a reader
        that opens files by name), so that the kernel can keep the content. Only for a
        file whose attributes `cached_attr` knows: that LOOKUP is answered on the loop,
        never waiting for a worker thread (all may be waiting for the offering thread).
        None: unknown, or not so."""
        return None

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
            tree._listeners = self._listeners          # shared: listeners added later hear it too
            tree._content_listeners = self._content_listeners
            self._grafts[slot] = tree
            return tree

    def _graft_of(self, ino: int) -> "Tree | None":
        return self._grafts.get(ino >> GRAFT_SHIFT) if ino >> GRAFT_SHIFT else None

    def writable_at(self, ino: int) -> bool:
        """Whether the node numbered `ino` may change: not if a read-only tree grafted into
        this one numbers it (the daemon refuses the change; such nodes are never asked).
        One call for an ungrafted node: the daemon asks it of every writable file it stats."""
        graft = self._graft_of(ino) if ino >> GRAFT_SHIFT else None
        return self.writable if graft is None else graft.writable_at(ino)

    def add(self, node: Node) -> Node:
        # (not through add_all: one node costs no second call, a listing's budget counts calls)
        with self._lock:
            node.ino = self._next
            self._next += 1
            self._fixed[node.ino] = node
        return node

    def add_all(self, nodes) -> None:
        """`add` each of nodes, numbered in their order under one hold of the lock (a
        folder's thousands of views)."""
        with self._lock:
            for node in nodes:
                node.ino = self._next
                self._next += 1
                self._fixed[node.ino] = node

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
        if ino >> GRAFT_SHIFT:          # (`_graft_of` inline: every request by inode asks)
            graft = self._grafts.get(ino >> GRAFT_SHIFT)
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
        key = getattr(node, "_dynamic_key", None)
        if key is None:
            return                      # (a node the tree keeps whatever the kernel does)
        graft = self._graft_of(node.ino)
        if graft is not None:
            graft.adopt(node)
            return
        if self._fixed.get(node.ino) is not node:
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

    #: whether `statvfs` asks a real filesystem (file managers call statfs once per file
    #: they show: a tree that asks none answers it on the loop)
    statvfs_blocks = False

    def statvfs(self) -> os.statvfs_result | None:
        """The statvfs of the filesystem that holds what is written, if there is one."""
        return None

    def status(self) -> dict:
        """What the backend adds to the mount's status (the control file)."""
        return {}

    def close(self) -> None:
        for tree in self._grafts.values():
            tree.close()
