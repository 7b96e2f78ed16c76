"""pyfuse3 operations over a backend `Tree`.

Every handler is wrapped so that no exception but `FUSEError` ever reaches pyfuse3 (any
other would tear the mount down): OS errors keep their errno, anything else becomes
EIO, and each failure is logged once. Which backend calls run in worker threads and
which on the event loop: the thread rule in backends/nodes.py.
"""
from __future__ import annotations

import collections
import contextlib
import errno
import functools
import json
import logging
import os
import stat
import threading
import time
from dataclasses import dataclass, field
from itertools import islice
from typing import Callable

import pyfuse3
import trio

from ..backends.blocks import BytesHandle
from ..backends.nodes import (ABSENT, NAMESPACE_TYPES, ROOT_INO, Attr, CachePolicy, Directory, File, FileHandle,
                              Node, Owner, Symlink, Tree, writes)
from .control import CONTROL_NAME
from .listings import FS_ENCODING, FS_ERRORS, FolderListings, LeanRule, Listing, POSITION_MASK
from .prepared import PREPARED_ENV, PreparedListings
from .replies import ThreadReplies
from .unopened import UnopenedFiles

log = logging.getLogger(__name__)

#: attributes per worker-thread call when listing a directory
READDIR_BATCH = 4096
#: entries per listing batch made on the loop (`Directory.entries_nowait`): short, so other
#: requests wait at most a few milliseconds
NOWAIT_BATCH = 1024
#: EntryAttributes kept for listing entries, one per distinct Attr (`Operations._dirent`)
DIRENT_ATTRS = 4096
#: what st_blksize says: each Python open() buffers that much, and cp reads in chunks of it
#: (the kernel's read-ahead, read_ahead_kb, sizes the FUSE READs)
BLOCK_SIZE = 128 * 1024
#: what it says of a file written through the mount (a writable tree's, its owner's write
#: bit set; a read-only tree grafted in whose modes say writable says it too): cp writes a copy in chunks of it, and 1 MiB
#: is the most one FUSE WRITE carries (the kernel's max_pages: fs.fuse.max_pages_limit, 256
#: by default, as libfuse's buffer): a 4 MiB image copied in costs 4 WRITEs, not 32. (Not of
#: folders: glibc sizes readdir's buffer by it, and a listing read in one getdents would not
#: show a name renamed over while it is read on.)
WRITE_BLOCK_SIZE = 1 << 20
#: the hidden control file at the root: not listed, but `cat MOUNT/.scopefs` shows the
#: daemon's status as JSON (pid, source, counters). It replaces extended attributes:
#: answering getxattr at all costs `ls -l` two round trips per file (SELinux label and
#: ACL probes), so getxattr says ENOSYS once and the kernel stops asking.
CONTROL_INO = (1 << 63) - 2
#: how long a request that made changes waits for the kernel to be told of them
NOTIFY_WAIT = 2.0
#: bytes of contents offered for the kernel's page cache (`Tree.offer`) waiting to be sent:
#: beyond this the oldest are dropped (their reader then reads them as usual)
STORE_PENDING_BYTES = 64 << 20
#: set to 0 to make the daemon behave as with an unpatched pyfuse3 (listings never cached)
LISTING_CACHE_ENV = "SCOPEFS_LISTING_CACHE"
#: whether open can tell the kernel that a close commits nothing (FOPEN_NOFLUSH, the patch)
NOFLUSH = hasattr(pyfuse3.FileInfo, "noflush")
#: files of a read-only mount whose backend handles are kept open for the kernel's reads
#: (`read_unopened`): each may hold its whole content in memory
UNOPENED_FILES = 64
#: set to 0 to make a read-only mount answer OPEN and RELEASE as with an unpatched pyfuse3
KERNEL_OPEN_ENV = "SCOPEFS_KERNEL_OPEN"
#: set to 0 to give every listing entry its attributes, also where they need I/O (else
#: such files are listed without them while no walk stats them: `LeanRule`)
LEAN_LISTINGS_ENV = "SCOPEFS_LEAN_LISTINGS"
#: set to 0 to have readdir answer the empty READDIRPLUS that ends each listing the kernel
#: caches (else the session loop does: `pyfuse3.readdir_end_at`, the patch)
READDIR_END_ENV = "SCOPEFS_READDIR_END_IN_SESSION"
#: set to 0 to answer every FLUSH through the event loop (else the worker thread that
#: commits a written file answers it: `Operations.flush`)
FLUSH_REPLY_ENV = "SCOPEFS_FLUSH_REPLY_FROM_THREAD"
#: errors that are answers, not failures: not worth a log line above debug
_QUIET = {errno.ENOENT, errno.ENODATA, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EXDEV,
          errno.EEXIST, errno.ENOTEMPTY, errno.ENOSYS, errno.ESTALE}


@dataclass
class Counters:
    started: float = field(default_factory=time.time)
    requests: int = 0
    attr_requests: int = 0          # lookups and getattrs: what the kernel could not answer itself
    bytes_read: int = 0
    errors: int = 0
    invalidations: int = 0          # inodes and entries the kernel was told to drop
    worker_calls: int = 0           # backend calls run in worker threads (the rest is answered on the loop)
    stored_ahead: int = 0           # files put whole into the kernel's page cache before a read asked
    lookups_to_store: int = 0       # files the daemon looked up itself (a stat) to store them
    opendirs: int = 0               # one (answered ENOSYS) where the kernel opens directories itself
    opens: int = 0                  # OPEN requests (read-only mounts answer the first with ENOSYS)
    reads: int = 0                  # READ requests
    readdirs: int = 0               # what listings the kernel could not answer from its cache
    releasedirs: int = 0
    readlinks: int = 0              # none twice for one link where the kernel caches targets
    lookups: int = 0                # LOOKUP requests
    lean_entries: int = 0           # listing entries given without attributes (`LeanRule`)
    listings_made: int = 0          # listings read from the start anew (each a new snapshot of its folder)
    flushes: int = 0                # none for read-only opens where the kernel honours noflush
    notify_waits: int = 0           # changes that waited for the kernel to be told of them
    thread_replies: int = 0         # FLUSHes answered by their worker thread (the loop not woken)
    lookups_of_held: int = 0        # LOOKUPs of names whose inodes the kernel held (it revalidated)
    inodes_forgotten: int = 0       # FORGET entries: inodes the kernel let go (dentries reclaimed or dropped)
    readdirs_waited: int = 0        # READDIRPLUSes that waited in the loop for a listing made ahead
    #: requests per handler (lookup, getattr, ...): which kinds a change of `requests` is
    #: made of (readdirs answered in the session or prepared are counted apart)
    by_kind: collections.Counter = field(default_factory=collections.Counter)


class Notifier:
    """Tells the kernel what a backend reports changed (`Tree.report`), so that it may
    cache attributes and names for long, and stores what a backend read ahead (`Tree.offer`)
    in its page cache. Notifications may block in the kernel (on the page locks of a read
    we have yet to answer, on a folder whose change is in flight), so they are sent from
    threads of their own, never from the trio loop: one for inodes (which a request that
    made changes waits for, `when_sent`, so that the caller's next stat sees them), one for
    names (never waited for: a name's notification waits for any change in flight in its
    folder, possibly the very request that caused it), one for contents. A worker thread
    that answers its request itself (`held`) sends the inodes it reports on its own.
    A store from a read-ahead thread (`store(wait=True)`) the kernel refuses for want of
    the inode (a reader that opens files by name, not from a listing, has the kernel make
    each at its LOOKUP, just before its reads) is sent again after the daemon looked the
    file up itself (`_looked_up`): that thread then waits for the loop to answer the LOOKUP."""

    def __init__(self, counters: Counters, known: dict[int, int],
                 locate: Callable[[int], str | None] = lambda ino: None):
        self._counters = counters
        self._locate = locate                    # inode -> its path in the mount (`Tree.path_of`)
        self._parent: int | None = None          # the mount point's folder (O_PATH), from `live` to `stop`
        self._name = ""                          # ... the mount point's name in it
        self._device: int | None = None          # ... and the mount's device (`_looked_up` checks it)
        self._looking_up = 0                     # stats in flight (the last closes `_parent` after `stop`)
        # names are expired, not dropped, where the kernel can (`_drop_name`)
        self._expire = getattr(pyfuse3, "expire_entry", None)
        self._known = known                      # inodes the kernel holds (the daemon's lookup counts)
        lock = self._lock = threading.Lock()     # (taken bare where nobody waits: a store a frame)
        self._cond = threading.Condition(lock)
        self._stores_cond = threading.Condition(lock)    # (an offer wakes only the thread that sends it)
        self._inodes: dict[int, None] = {}       # pending, in order, without repeats
        self._entries: dict[tuple[int, str], None] = {}
        self._stores: dict[int, tuple[int, bytes]] = {}      # inode -> (offset, content from there)
        self._reported = 0                       # inode reports made (numbered) ...
        self._done = 0                           # ... and sent, all up to this one
        self._first_pending = 0                  # the first report in `_inodes` (0: none)
        self._in_flight: dict[int, int] = {}     # senders (thread ids) of batches -> their first report
        self._holder = threading.local()         # inodes a replying thread sends itself (`held`)
        self._waiters: list[tuple[int, Callable[[], None]]] = []    # (mark, wake) for when_sent
        self._running = False
        self._storing = 0                        # sent from other threads (`store(wait=True)`, `held`)
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Once the session is mounted: notifications need it."""
        self._running = True
        self._threads = [threading.Thread(target=self._send, args=(kind,), daemon=True, name=f"notify-{kind}")
                         for kind in ("inodes", "entries", "stores")]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Before the session closes (what was not sent is moot then)."""
        with self._cond:
            self._running = False
            self._cond.notify_all()
            self._stores_cond.notify_all()
        self._wake(everyone=True)
        for thread in self._threads:
            thread.join(timeout=5)
        with self._cond:
            self._cond.wait_for(lambda: not self._storing, timeout=5)
            self._close_parent()                 # (a stat nobody answers any more is not waited for)

    def live(self, parent: int, name: str, device: int) -> None:
        """The mount answers: `_looked_up` looks files up from `parent`, an O_PATH
        descriptor of the folder holding the mount point `name` (the notifier's, closed at
        `stop`), never walking the mount point's path from / (whose folders may be
        renamed, or on a hung NFS). Not a descriptor of the mount's root: that keeps the
        mount busy (`fusermount3 -u` failed with EBUSY). `device`: the mount's."""
        with self._cond:
            if self._running:
                self._parent, self._name, self._device = parent, name, device
                return
        os.close(parent)

    def _close_parent(self) -> None:
        """(Under `_cond`.) Once no stat uses it."""
        if self._parent is not None and not self._looking_up:
            os.close(self._parent)
            self._parent = None

    def report(self, inodes: tuple[int, ...], entries: tuple[tuple[int, str], ...], waited: bool = True) -> None:
        """From any thread (a backend's `Tree.report`)."""
        held = getattr(self._holder, "inodes", None)
        with self._cond:
            # waited for only if the kernel holds one of them (else it has nothing stale to
            # drop: a later lookup gets the new attributes; `_notify` checks again)
            if waited and any(ino in self._known for ino in inodes):
                self._reported += 1
                if held is not None:
                    self._in_flight.setdefault(threading.get_ident(), self._reported)
                elif not self._first_pending:
                    self._first_pending = self._reported
            if held is not None:
                held.update(dict.fromkeys(inodes))
            else:
                self._inodes.update(dict.fromkeys(inodes))
            self._entries.update(dict.fromkeys(entries))
            if entries or (inodes and held is None):
                self._cond.notify_all()

    @contextlib.contextmanager
    def held(self, on_loop: bool = False):
        """Around a change made in a worker thread that then answers its request itself
        (`Operations._flush_in_thread`): the inodes this thread reports meanwhile are sent
        from it at the end, not handed to the inodes' thread and waited for (two thread
        wake-ups a copied file), and what that thread is sending is waited for as
        `wait_sent` does. (An inode's notification blocks at most on the pages of reads
        that other threads answer.) `on_loop`: around a change made on the event loop,
        which must never block: only the inodes' attributes are dropped (which never waits
        on pages: the kernel drops a file's pages itself when it sees its new size or
        mtime), and the caller waits for the rest as `Operations._notified` does."""
        held = self._holder.inodes = {}
        sender = threading.get_ident()
        try:
            yield
        finally:
            del self._holder.inodes
            if held:                                # (else nothing of this thread's is in flight)
                with self._cond:
                    sending = self._running
                    self._storing += sending        # (`stop` waits: the session must outlive it)
                sent = 0
                try:
                    if sending:
                        sent = sum(not self._notify("inodes", ino, on_loop) for ino in held)
                finally:
                    self._batch_sent(sender, sent, sending)
            if not on_loop:
                self.wait_sent()

    def store(self, ino: int, data: bytes, offset: int = 0, wait: bool = False) -> bool:
        """From any thread (a backend's `Tree.offer`): sent by the stores' thread, never
        blocking; `wait`: sent from this (worker) thread before it returns, and whether
        the kernel took it."""
        if wait:
            failed = self._store_now(ino, (offset, data))
            if failed == errno.ENOENT and self._looked_up(ino):
                failed = self._store_now(ino, (offset, data))
            return failed == 0
        with self._stores_cond:
            self._stores[ino] = offset, data
            pending = sum(len(content) for _, content in self._stores.values())   # (a read-ahead's depth)
            while pending > STORE_PENDING_BYTES:
                pending -= len(self._stores.pop(next(iter(self._stores)))[1])
            self._stores_cond.notify()
        return False

    def _store_now(self, ino: int, data: tuple[int, bytes]) -> int | None:
        """Store content in the kernel's page cache from this thread: `_notify`'s errno,
        None if stopped."""
        with self._lock:
            if not self._running:
                return None
            self._storing += 1                   # (`stop` waits for it: the session must outlive it)
        failed = None
        try:
            failed = self._notify("stores", ino, data)
        finally:
            with self._lock:
                self._storing -= 1
                self._counters.stored_ahead += failed == 0
                if not self._running:
                    self._cond.notify_all()      # (`stop` waits)
        return failed

    def _looked_up(self, ino: int) -> bool:
        """Whether the daemon looked up file `ino`, which the kernel does not know, through
        its own mount (a stat, which the loop answers: `Tree.path_of` names only files whose
        LOOKUP needs no worker thread): the kernel then keeps that name, so a reader that
        opens it by name, storing it then, sends neither LOOKUP nor READ. Never waited for
        by `stop` (after which nobody answers). Found on another device (the mount point
        covered by another mount, or the mount moved), never again."""
        path = self._locate(ino)
        with self._cond:
            parent = self._parent
            if path is None or parent is None or self._device is None or not self._running:
                return False
            self._looking_up += 1
        device = None
        try:
            device = os.stat(os.path.join(self._name, path), dir_fd=parent).st_dev
        except OSError as exc:
            log.debug("looking up %s to store it: %s", path, exc)
        finally:
            with self._cond:
                self._looking_up -= 1
                found = device is not None and device == self._device
                self._counters.lookups_to_store += found
                if device is not None and not found and self._device is not None:
                    log.warning("%s is no longer this mount: frames read ahead reach only"
                                " readers that list them", self._name)
                    self._device = None
                if not self._running or self._device is None:
                    self._close_parent()
        return found

    def mark(self) -> int | None:
        """What `when_sent` must see sent, or None if nothing is pending."""
        return self._reported if self._reported != self._done else None

    def when_sent(self, mark: int, wake: Callable[[], None]) -> bool:
        """Call `wake` (from the sending thread) once `mark` is sent; False if it is already
        (or the notifier stopped): then `wake` is not called."""
        with self._cond:
            if self._done >= mark or not self._running:
                return False
            self._waiters.append((mark, wake))
            return True

    def wait_sent(self) -> None:
        """In a worker thread, what `Operations._notified` does on the loop: wait until
        the kernel was told of what is pending (at most NOTIFY_WAIT)."""
        mark = self.mark()
        if mark is None:
            return
        self._counters.notify_waits += 1
        sent = threading.Event()
        if self.when_sent(mark, sent.set):
            sent.wait(NOTIFY_WAIT)

    def _wake(self, everyone: bool = False) -> None:
        with self._cond:
            ready = [w for w in self._waiters if everyone or w[0] <= self._done]
            self._waiters = [w for w in self._waiters if w not in ready]
        for _, wake in ready:
            try:
                wake()
            except Exception:                    # (the loop has ended: nobody waits any more)
                pass

    def _send(self, kind: str) -> None:
        pending = {"inodes": self._inodes, "entries": self._entries, "stores": self._stores}[kind]
        wake = self._stores_cond if kind == "stores" else self._cond
        while True:
            with wake:
                wake.wait_for(lambda: pending or not self._running)
                if not self._running:
                    return
                batch = list(pending.items())
                pending.clear()
                if kind == "inodes" and self._first_pending:
                    self._in_flight[threading.get_ident()], self._first_pending = self._first_pending, 0
            sent = 0
            try:
                for item, data in batch:
                    sent += not self._notify(kind, item, data)
            finally:                                 # (a request never waits on a dead thread)
                if kind == "inodes":
                    self._batch_sent(threading.get_ident(), sent)
                else:
                    with self._cond:
                        if kind == "stores":
                            self._counters.stored_ahead += sent
                        else:
                            self._counters.invalidations += sent

    def _batch_sent(self, sender: int, sent: int, outside: bool = False) -> None:
        """A batch of inodes was sent (`outside`: by a replying thread): every report
        before the first of those still pending or being sent is done now."""
        with self._cond:
            self._counters.invalidations += sent
            self._storing -= outside
            self._in_flight.pop(sender, None)
            unsent = [*self._in_flight.values(), *([self._first_pending] if self._first_pending else [])]
            self._done = min(unsent) - 1 if unsent else self._reported
            if not self._running:
                self._cond.notify_all()             # (`stop` waits)
        self._wake()

    def _notify(self, kind: str, item, data: tuple[int, bytes] | bool | None) -> int:
        """Send one notification (`data`: a store's (offset, content); of an inode, whether
        only its attributes go): 0 if sent, else why not (an errno, ENOENT: the kernel
        does not know the inode, -1: an unforeseen failure)."""
        try:
            if kind == "inodes":
                if item not in self._known:          # the kernel has nothing of it to drop
                    return errno.ENOENT
                if data:                             # (the attributes only)
                    pyfuse3.invalidate_inode(item, True)
                else:
                    pyfuse3.invalidate_inode(item)
            elif kind == "entries":
                self._drop_name(*item)
            else:
                pyfuse3.notify_store(item, *data)
            return 0
        except OSError as exc:                       # ENOENT: the kernel had already let it go
            if exc.errno != errno.ENOENT:
                log.warning("notifying %s %r: %s", kind, item, exc)
            return exc.errno or -1
        except Exception:
            log.exception("notifying %s %r failed", kind, item)
        return -1

    def _drop_name(self, parent: int, name: str) -> None:
        """Make the kernel look `name` up again at its next use. Expired, the kernel keeps
        the entry until that lookup answers differently: a folder reported changed (a
        file written in it, a copy-up) stays reachable for a process that has it as its
        working directory (dropped, its getcwd failed with ENOENT: rsync, git). Dropped
        where the kernel cannot expire (before Linux 6.2) or pyfuse3 has no expire_entry
        (daemon/pyfuse3-patches)."""
        if self._expire is not None:
            try:
                return self._expire(parent, os.fsencode(name))
            except OSError as exc:
                if exc.errno != errno.ENOSYS:
                    raise
                self._expire = None
        pyfuse3.invalidate_entry(parent, os.fsencode(name))


def _patch_used(present: bool, what: str, env: str, otherwise: str) -> bool:
    """Whether the daemon uses a feature of daemon/pyfuse3-patches (`./dev setup` builds
    pyfuse3 with them): `present` in this pyfuse3 (`what`), and not turned off by `env`=0.
    Says why not (`otherwise`: how the daemon works then), once a mount."""
    if not present:
        log.info("pyfuse3 %s has no %s (daemon/pyfuse3-patches): %s", getattr(pyfuse3, "__version__", "?"),
                 what, otherwise)
        return False
    if os.environ.get(env) == "0":
        log.info("%s=0: %s", env, otherwise)
        return False
    return True


def kernel_listing_cache() -> bool:
    """Whether the kernel may open directories itself and cache their listings: a pyfuse3
    built with daemon/pyfuse3-patches (`./dev setup` does) tells readdir the directory
    (`ReaddirToken.inode`); with any other every directory is opened and listed by the
    daemon, as it always was."""
    return _patch_used(hasattr(pyfuse3.ReaddirToken, "inode"), "ReaddirToken.inode", LISTING_CACHE_ENV,
                       "directory listings are not cached in the kernel")


def kernel_opens_files(tree: Tree) -> bool:
    """Whether OPEN is answered with ENOSYS, so that the kernel opens files itself: for
    read-only trees (writers need handles: their flush commits), with a pyfuse3 that
    tells reads of such files their inode (`Operations.read_unopened`)."""
    return not tree.writable and _patch_used(hasattr(pyfuse3.Operations, "read_unopened"),
                                             "Operations.read_unopened", KERNEL_OPEN_ENV,
                                             "every file read costs an open and a release")


def _guard(fn):
    """Map every exception of a handler to FUSEError, logging it once."""
    name = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self, *args):
        self.counters.requests += 1
        self.counters.by_kind[name] += 1
        if self.log_requests:                   # -d: every request
            log.debug("%s%r", name, args[:2])
        try:
            return await fn(self, *args)
        except pyfuse3.FUSEError as exc:
            if exc.errno not in _QUIET:
                self.counters.errors += 1
            raise
        except Exception as exc:
            raise pyfuse3.FUSEError(_errno_of(exc, self.counters, name, args)) from None
    return wrapper


def _errno_of(exc: Exception, counters: Counters, name: str, args: tuple) -> int:
    """What a failed handler answers: an OSError its errno, anything else EIO; logged
    once (errors that are answers only at debug level)."""
    if isinstance(exc, OSError):
        code = exc.errno or errno.EIO
        if code in _QUIET:
            log.debug("%s%r: %s", name, args[:2], exc)
        else:
            counters.errors += 1
            log.warning("%s%r: %s", name, args[:2], exc)
        return code
    counters.errors += 1
    log.error("%s%r failed", name, args[:2], exc_info=exc)
    return errno.EIO


def _gone(exc: Exception) -> bool:
    """Whether `exc` says an inode's object is gone (the tree no longer has its node, or
    the backend answers ENOENT for it): an operation on the inode then answers ESTALE,
    not ENOENT.

    The kernel may hold a name for an inode the daemon no longer shows under it: a
    READDIRPLUS links every name it carries (fs/fuse/readdir.c `fuse_direntplus_link`
    has no check that the name is still there), and a listing goes on in the snapshot
    it was made from (`listings.py`), so a name removed since would come back linked to
    its old inode (`_names_gone` has the daemon's own removals looked up again); a name
    removed or replaced behind the mount keeps its entry until a report of it reaches
    the kernel, or for its timeout where nothing reports it (a copick static root).
    Asked by inode, the daemon cannot tell which name the kernel went by, so ENOENT
    would be wrong for it: `open(O_CREAT)` of a name that is gone must create it, and
    `stat` of a name that was replaced must show the new file. ESTALE is what the VFS
    expects instead (as NFS answers for a deleted file's handle): open, stat, chmod,
    truncate, readlink and the other path calls walk the path once more with
    LOOKUP_REVAL (`do_filp_open`, `retry_estale`), which makes FUSE look every name up
    again (`fuse_dentry_revalidate`); a name that is gone or names another inode is
    dropped and looked up afresh (`lookup_open` then creates). Only a call by file
    descriptor sees ESTALE itself, for an object that is gone. (Asked in an `except`,
    not in a context manager's exit: every GETATTR would pay its two Python calls.)"""
    return isinstance(exc, FileNotFoundError) or (isinstance(exc, pyfuse3.FUSEError) and exc.errno == errno.ENOENT)


def _file_type(node: Node) -> int:
    """What a lean listing may give `node` as its type without its attributes: files
    and symbolic links; 0 for a folder (any walker that enters it looks it up)."""
    if isinstance(node, File):
        return stat.S_IFREG
    return stat.S_IFLNK if isinstance(node, Symlink) else 0


def _lookup_sizing(directory: Directory, name: str, unsized: dict[str, Node]):
    """`directory.lookup_attr(name)`, and the attributes of the folder's other files a
    lean listing gave without them (`LeanRule.unsized`, name -> node), in this one worker
    call: a walk that stats each name looks them up next, and a backend sizes a folder's
    views together (the first asked sizes the rest: copick's picks views), as a listing
    with attributes would. A file that cannot be sized is left to its own LOOKUP."""
    found = directory.lookup_attr(name)
    sized = {}
    for other, node in unsized.items():
        if other != name:
            try:
                sized[other] = node, node.attr()
            except OSError as exc:
                log.debug("sizing %s, listed without attributes: %s", other, exc)
    return found, sized


def _check_offsets(base: int, rows: list) -> None:
    """A listing numbered in the high 32 bits of its offsets (`base`) needs the backend's
    own offsets, the first of each row, below 2**32."""
    if base and rows and rows[-1][0] > POSITION_MASK:
        raise OSError(errno.EOVERFLOW, "directory offsets beyond 2**32")


class Operations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False

    def __init__(self, tree: Tree, *, threads: int = 8, timeout: float = 60.0, policy: CachePolicy | None = None,
                 info: dict[str, str] | None = None, kernel_opens: bool = False):
        super().__init__()
        self.tree = tree
        self.policy = policy or tree.cache_policy
        # read by pyfuse3 before init (which turns them off where the kernel cannot): the
        # kernel opens directories itself and keeps their listings (`listings.py`), and
        # keeps symbolic links' targets; a tree that lets it promises to report changes
        self.kernel_opens_dirs = self.cache_symlinks = self.policy.cache_listings and kernel_listing_cache()
        self.kernel_opens = kernel_opens       # OPEN says ENOSYS: see `kernel_opens_files`
        self.unopened = UnopenedFiles(UNOPENED_FILES, self._release_later)
        # file contents and names get threads of their own, so that reads stuck on a hung
        # source cannot starve `ls` of the threads it needs
        self.data_limiter = trio.CapacityLimiter(threads)
        self.meta_limiter = trio.CapacityLimiter(max(2, threads // 2))
        self.timeout = timeout
        self.counters = Counters()
        # asked once: logging's own check costs a request more than the rest of `_guard`
        self.log_requests = log.isEnabledFor(logging.DEBUG)
        self.info = dict(info or {})
        self._lookups: dict[int, int] = {}
        self._handles: dict[int, FileHandle] = {}
        self._listings: dict[int, Listing] = {}          # by handle, for directories opened by the daemon
        # a listing's last READDIRPLUS (empty) answered in the session loop, without readdir
        self.ends_in_session = self.kernel_opens_dirs and _patch_used(
            hasattr(pyfuse3, "readdir_end_at"), "readdir_end_at", READDIR_END_ENV,
            "readdir answers the empty READDIRPLUS that ends each listing")
        self.folder_listings = FolderListings(          # for those the kernel opened itself
            dropped=pyfuse3.readdir_end_forget if self.ends_in_session else None)
        # small folders' listings prepared ahead of a walk, answered in the session loop
        self.prepared = PreparedListings(self.kernel_opens_dirs and _patch_used(
            hasattr(pyfuse3, "readdir_prepared_at"), "readdir_prepared_at", PREPARED_ENV,
            "readdir answers every folder's listing"), tree.get, self._dirent, self._remember, self._give_back,
            self.ends_in_session)
        # the policy's attribute timeouts, for `_entry`: of folders and links, of the rest
        self._namespace_attr_timeout = self.policy.attr_timeout_of(stat.S_IFDIR)
        self._file_attr_timeout = self.policy.attr_timeout_of(stat.S_IFREG)
        self.lean_rule = LeanRule(tree.lean_listings and _patch_used(
            hasattr(pyfuse3, "readdir_reply_name"), "readdir_reply_name", LEAN_LISTINGS_ENV,
            "every listing entry carries its attributes"), self.policy.entry_timeout, self._file_attr_timeout)
        self._dirents: dict[Attr, pyfuse3.EntryAttributes] = {}     # see `_dirent`
        self._next_fh = 1
        self._uid, self._gid = os.getuid(), os.getgid()
        self._files_written = tree.writable    # (whether `_entry` asks which files say WRITE_BLOCK_SIZE)
        self._control = b"", 0       # the status file's content and mtime: made anew at each lookup
        self._last_failure: tuple[int, str] | None = None     # (inode, error) of the last failed read
        self.notifier = Notifier(self.counters, self._lookups, tree.path_of)
        self.thread_replies = ThreadReplies(threads) if tree.writable and _patch_used(
            hasattr(pyfuse3, "FlushReply"), "FlushReply", FLUSH_REPLY_ENV,
            "a FLUSH's result wakes the event loop, which answers it") else None
        tree.count_requests(lambda: self.counters.requests)
        # listeners run in this order: what the daemon holds turns stale before the kernel
        # is told (else a walk told first could re-read a folder from a stale prepared reply)
        tree.listen(self.prepared.changed)
        tree.listen(self.lean_rule.changed)
        tree.listen(self.notifier.report)
        tree.listen_content(self.notifier.store)

    # -- helpers ----------------------------------------------------------------------
    async def _run(self, fn, *args, data: bool = False, change: bool = False):
        """Run blocking backend work in a worker thread. After `timeout` seconds the
        request fails with EIO and the thread is left to finish on its own: a hung source
        costs an error, never a hung `ls` or `umount`. A `change` (a write, a new name, a
        copy-up) is waited for however long it takes: an error must mean it did not
        happen."""
        limiter = self.data_limiter if data or change else self.meta_limiter
        self.counters.worker_calls += 1
        try:
            with trio.fail_after(self.timeout) if self.timeout and not change else contextlib.nullcontext():
                return await trio.to_thread.run_sync(fn, *args, limiter=limiter, abandon_on_cancel=True)
        except trio.TooSlowError:
            raise OSError(errno.EIO, f"the source did not answer within {self.timeout:g} s") from None
        finally:
            if change:
                self.prepared.changed()         # (as before it began: `_writable`)
                await self._notified()

    async def _notified(self) -> None:
        """Wait until the kernel was told of the inodes a change reported (bounded: a
        notification must never hold a request for long)."""
        mark = self.notifier.mark()
        if mark is None:
            return
        self.counters.notify_waits += 1
        sent = trio.Event()
        token = trio.lowlevel.current_trio_token()
        if self.notifier.when_sent(mark, lambda: token.run_sync_soon(sent.set)):     # (no thread hop)
            with trio.move_on_after(NOTIFY_WAIT):
                await sent.wait()

    async def _wait_in_loop(self, pending: tuple | None) -> bool:
        """Wait in the loop for `pending`, (a backend's `concurrent.futures.Future`, the
        seconds it is worth waiting for), if any: no worker thread waits on it, the thread
        that completes it wakes the loop. Whether it is done."""
        if pending is None:
            return False
        self.counters.readdirs_waited += 1
        future, seconds = pending
        done = trio.Event()
        token = trio.lowlevel.current_trio_token()

        def wake(_) -> None:
            try:
                token.run_sync_soon(done.set)
            except trio.RunFinishedError:       # (unmounted meanwhile)
                pass
        future.add_done_callback(wake)
        with trio.move_on_after(seconds):
            await done.wait()
        return future.done()

    async def _call(self, fn, blocks: bool, **where):
        """`fn` in a worker thread (`_run`) if the backend declared that it may block,
        else right here."""
        if blocks:
            return await self._run(fn, **where)
        if where.get("change"):
            self.prepared.changed()
        return fn()

    def _node(self, ino: int) -> Node:
        node = self.tree.get(ino)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def _directory(self, ino: int) -> Directory:
        node = self.tree.get(ino)
        if not isinstance(node, Directory):
            raise pyfuse3.FUSEError(errno.ENOENT if node is None else errno.ENOTDIR)
        return node

    def _entry(self, ino: int, attr: Attr) -> pyfuse3.EntryAttributes:
        entry = pyfuse3.EntryAttributes()          # generation and st_rdev start at 0
        entry.st_ino = ino
        entry.entry_timeout = self.policy.entry_timeout
        entry.attr_timeout = (self._namespace_attr_timeout if stat.S_IFMT(attr.mode) in NAMESPACE_TYPES
                              else self._file_attr_timeout)
        entry.st_mode = attr.mode
        entry.st_nlink = attr.nlink
        entry.st_size = attr.size
        # (of the attributes alone: a listing's entries are shared by attributes, `_dirent`)
        entry.st_blksize = WRITE_BLOCK_SIZE if self._files_written and stat.S_ISREG(attr.mode) and \
            attr.mode & stat.S_IWUSR else BLOCK_SIZE
        if attr.uid is None:                   # synthesized attributes: the daemon's defaults
            entry.st_uid = self._uid
            entry.st_gid = self._gid
            entry.st_blocks = (attr.size + 511) // 512
            entry.st_atime_ns = entry.st_mtime_ns = entry.st_ctime_ns = attr.mtime_ns
        else:                                  # a real file's
            entry.st_uid = attr.uid
            entry.st_gid = attr.gid
            entry.st_blocks = attr.blocks
            entry.st_atime_ns = attr.atime_ns
            entry.st_mtime_ns = attr.mtime_ns
            entry.st_ctime_ns = attr.ctime_ns
            entry.st_rdev = attr.rdev
        return entry

    def _remember(self, ino: int, node: Node | None = None) -> None:
        count = self._lookups.get(ino, 0)
        if not count and node is not None:
            self.tree.adopt(node)
        self._lookups[ino] = count + 1

    @property
    def known_inodes(self) -> int:
        return len(self._lookups)

    # -- namespace --------------------------------------------------------------------
    @_guard
    async def lookup(self, parent_inode, name, ctx=None):
        if parent_inode == ROOT_INO and name == CONTROL_NAME.encode():
            self._remember(CONTROL_INO)
            self._control = self._control_bytes(), max(time.time_ns(), self._control[1] + 1)
            return self._control_entry()
        directory = self._directory(parent_inode)

        name = name.decode(FS_ENCODING, FS_ERRORS)
        self.counters.attr_requests += 1
        self.counters.lookups += 1
        found = directory.lookup_attr_nowait(name)
        if found is None:
            found = self.lean_rule.answer(parent_inode, name)
        if found is None:
            unsized = self.lean_rule.unsized(parent_inode)
            if unsized:
                changes = self.lean_rule.changes
                found, sized = await self._run(_lookup_sizing, directory, name, unsized)
                self.lean_rule.sized(parent_inode, sized, changes)
            else:
                found = await self._run(directory.lookup_attr, name)
        if found is None or found is ABSENT:
            timeout = directory.negative_timeout_of(name)
            if timeout is None:
                timeout = self.policy.negative_timeout
            if timeout > 0:
                negative = pyfuse3.EntryAttributes()
                negative.st_ino = 0
                negative.entry_timeout = timeout
                return negative
            raise pyfuse3.FUSEError(errno.ENOENT)
        child, attr = found
        if not stat.S_ISDIR(attr.mode):
            listed_lean = self.lean_rule.looked_up(parent_inode)
            if listed_lean:                     # (their listings kept by the kernel: dropped
                self.notifier.report(listed_lean, ())       # before a walk reaches one)
                await self._notified()
        if child.ino in self._lookups:
            self.counters.lookups_of_held += 1
        self._remember(child.ino, child)
        return self._entry(child.ino, attr)

    @_guard
    async def getattr(self, inode, ctx=None):
        if inode == CONTROL_INO:
            return self._control_entry()
        self.counters.attr_requests += 1
        node = self.tree.get(inode)
        if node is None:
            raise pyfuse3.FUSEError(errno.ESTALE)       # (see `_gone`)
        try:
            return self._entry(inode, node.cached_attr() or await self._run(node.attr))
        except (FileNotFoundError, pyfuse3.FUSEError) as exc:
            if _gone(exc):
                raise pyfuse3.FUSEError(errno.ESTALE) from None
            raise

    def forget(self, inode_list):
        self.counters.inodes_forgotten += len(inode_list)
        self._give_back(inode_list)

    def _give_back(self, inode_list):
        """Lookups the kernel (or a prepared reply taken back unsent) gave back."""
        # must never raise: pyfuse3 gives forget no way to report an error
        try:
            lookups = self._lookups
            for ino, count in inode_list:
                left = lookups.pop(ino, 0) - count
                if left > 0:
                    lookups[ino] = left
                elif ino != ROOT_INO and ino != CONTROL_INO:
                    self.folder_listings.forget(ino)            # the kernel's listing went with the inode
                    self.prepared.forget(ino)
                    self.unopened.forget(ino)
                    self.tree.forget(ino)
        except Exception:
            log.exception("forget failed")

    @_guard
    async def opendir(self, inode, ctx):
        self.counters.opendirs += 1
        if self.kernel_opens_dirs:
            # the kernel opens every directory itself from now on, keeping its listing
            # (FOPEN_CACHE_DIR): no OPENDIR and no RELEASEDIR; readdir gets fh 0
            raise pyfuse3.FUSEError(errno.ENOSYS)
        fh = self._next_fh
        self._next_fh += 1
        self._listings[fh] = self._opendir(inode)
        return fh

    def _opendir(self, ino: int, again: Listing | None = None) -> Listing:
        """A new listing of folder `ino`: lean or not (`LeanRule`), or read on in the
        reader of the lean listing it gives `again` (`LeanRule.replay`)."""
        if again is not None:
            return Listing(again.reader, ino)
        self.counters.listings_made += 1
        lean = self.lean_rule.lean()
        return Listing(self._directory(ino).opendir(), ino, lean=lean, rows=[] if lean else None,
                       changes=self.lean_rule.changes)

    def _with_attributes(self, rows: list, blocking: bool) -> list | None:
        """The rows a lean listing fetched, each with its attributes: from memory, or (if
        `blocking`, in a worker thread) sized as a listing with attributes would; None if
        one needs I/O and not `blocking`."""
        out = []
        for row in rows:
            next_offset, name, ino, entry, child = row
            if entry.__class__ is int:
                try:
                    attr = child.attr() if blocking else child.cached_attr()
                    if attr is None:
                        return None
                    row = (next_offset, name, ino, self._dirent(attr), child)
                except OSError as exc:
                    log.warning("listing %s: %s", os.fsdecode(name), exc)
                    row = (next_offset, None, None, None, None)
            out.append(row)
        return out

    def _dirent(self, attr: Attr) -> pyfuse3.EntryAttributes:
        """The EntryAttributes of a listing entry with `attr`, made once and shared by
        every entry with equal attributes (readdir sets st_ino just before each reply,
        which copies it): a walk's entries come in a few sets of attributes (a folder's
        files share an mtime, sizes repeat), so most replies make none. At most
        DIRENT_ATTRS are kept."""
        made = self._dirents.get(attr)
        if made is None:
            if len(self._dirents) >= DIRENT_ATTRS:
                self._dirents.clear()
            made = self._dirents[attr] = self._entry(0, attr)
        return made

    def _listing_batch(self, reader, offset: int, lean: bool, ready=None) -> tuple[list, bool] | None:
        """The next entries as (next offset, name, inode, EntryAttributes, node), made in a
        worker thread, and whether more may follow. Entries of an `entry_batch` come
        without a node and are not counted: `Tree.get` builds them from the number
        whenever asked, so their life does not hang on the kernel's forget. In a `lean`
        listing, a file whose attributes are not in memory comes as its file type in
        place of the EntryAttributes (`readdir_reply_name`: the kernel takes no reference
        to its node, which `LeanRule` keeps to size at the folder's first LOOKUP). Given
        the entries a reader has in memory (`ready`: `entries_ready`), made in the trio
        thread, or None if one needs I/O."""
        dirents, dirent = self._dirents, self._dirent
        batch = getattr(reader, "entry_batch", None)       # numbered children (`Directory`)
        rows = batch(offset, READDIR_BATCH) if batch is not None else None
        if rows is not None:
            return [(next_offset, name, ino, dirents.get(attr) or dirent(attr), None)
                    for next_offset, name, ino, attr in rows], len(rows) == READDIR_BATCH
        out = []
        for next_offset, name, child, attr in islice(ready or reader.entries(offset), READDIR_BATCH):
            try:
                if lean and attr is None and (attr := child.cached_attr()) is None:
                    file_type = _file_type(child)
                    if file_type:
                        out.append((next_offset, name.encode(FS_ENCODING, FS_ERRORS), child.ino, file_type, child))
                        continue
                if ready is not None and attr is None and (attr := child.cached_attr()) is None:
                    return None
                out.append((next_offset, name.encode(FS_ENCODING, FS_ERRORS), child.ino, dirent(attr or child.attr()), child))
            except OSError as exc:
                log.warning("listing %s: %s", name, exc)
                out.append((next_offset, None, None, None, None))
        return out, len(out) == READDIR_BATCH

    def _reply_nowait(self, token, listing: Listing, offset: int, counted: list) -> int | None:
        """Reply to a readdir at `offset` straight from `entries_nowait` rows while the
        directory can list from memory: no batch is built unless the buffer fills, when
        the rows left wait in `listing.pending` as `_listing_batch` makes them (the inodes
        of entries counted as lookups added to `counted`). The offset a worker thread must
        go on listing from (also at a name removed since the listing was made: `_as_now`),
        or None once the reply is complete."""
        nowait = getattr(listing.reader, "entries_nowait", None)
        if nowait is None:
            return offset
        base, gone = listing.base, listing.gone
        dirents, dirent = self._dirents, self._dirent
        reply, reply_name, remember = pyfuse3.readdir_reply, pyfuse3.readdir_reply_name, self._remember
        lean = []                               # (name, node) given without attributes, noted at once
        try:
            while True:
                rows = nowait(offset, NOWAIT_BATCH)
                if rows is None:
                    return offset
                more = len(rows) == NOWAIT_BATCH
                _check_offsets(base, rows)
                for position, (next_offset, name, child, attr) in enumerate(rows):
                    encoded = name.encode(FS_ENCODING, FS_ERRORS)
                    if gone and encoded in gone:
                        return offset
                    if attr is None:            # (a file to size: `files_unsized`)
                        if not listing.lean:
                            return offset       # (a worker thread sizes it)
                        # (`_file_type`, without its call for a file: most of a lean listing)
                        replied = reply_name(token, encoded, child.ino,
                                             stat.S_IFREG if isinstance(child, File) else _file_type(child),
                                             base + next_offset)
                        if replied:
                            lean.append((name, child))
                    else:
                        made = dirents.get(attr) or dirent(attr)
                        made.st_ino = ino = child.ino
                        replied = reply(token, encoded, made, base + next_offset)
                        if replied:
                            remember(ino, child)
                            counted.append(ino)
                    if not replied:
                        self._keep_pending(listing, rows[position:], more, offset)
                        return None
                    offset = next_offset
                if not more:
                    self._ended(listing, offset)
                    return None
        finally:
            if lean:
                self._given_lean(listing, lean)

    def _keep_pending(self, listing: Listing, rows: list, more: bool, offset: int) -> None:
        """`entries_nowait` rows the kernel's buffer had no room for, from `offset`, kept
        for its next readdir as `_listing_batch` makes them (in a lean listing a file's
        type stands for attributes memory does not hold; elsewhere such a row and those
        after it are left to a worker)."""
        dirents, dirent, pending = self._dirents, self._dirent, []
        for next_offset, name, child, attr in rows:
            if attr is None and not listing.lean:
                more = True
                break
            pending.append((next_offset, name.encode(FS_ENCODING, FS_ERRORS), child.ino,
                            _file_type(child) if attr is None else dirents.get(attr) or dirent(attr), child))
        listing.pending, listing.position, listing.more, listing.offset = pending, 0, more, offset

    def _reply_lean(self, token, listing: Listing, name: bytes, file_type: int, child: Node, next_id: int) -> bool:
        """Give `child`, a file whose attributes are not in memory, without them
        (`readdir_reply_name`, `file_type` as its entry carries it); False if the kernel's
        buffer had no room."""
        if not pyfuse3.readdir_reply_name(token, name, child.ino, file_type, next_id):
            return False
        self._given_lean(listing, [(os.fsdecode(name), child)])
        return True

    def _given_lean(self, listing: Listing, given: list) -> None:
        """(name, node) of `listing`'s files given without their attributes: counted and
        kept for the folder's first LOOKUP to size (`LeanRule.listed_lean`)."""
        self.counters.lean_entries += len(given)
        self.lean_rule.listed_lean(listing.ino, given)

    @_guard
    async def readdir(self, fh, start_id, token):
        self.counters.readdirs += 1
        if fh:                                  # opened by opendir
            listing, offset = self._listings.get(fh), start_id
            if listing is None:
                raise pyfuse3.FUSEError(errno.EBADF)
            if offset == 0:                     # (rewinddir: listed anew)
                listing.pending, listing.end, listing.gone = [], None, set()
        else:                                   # opened by the kernel (`kernel_opens_dirs`)
            ino = token.inode
            again = None if start_id or not self.lean_rule.enabled else self.lean_rule.replay(ino)
            listing, offset = self.folder_listings.find(ino, start_id, lambda: self._opendir(ino, again))
            if again is not None:               # (its kept copy dropped at a trip: no new scan)
                rows = self._with_attributes(again.rows, False)
                if rows is None:
                    rows = await self._run(self._with_attributes, again.rows, True)
                listing.pending, listing.position, listing.more, listing.offset = rows, 0, False, 0
        first, counted = offset, []             # (the entries given, each counted once)
        try:
            if listing.end == offset:
                return                      # the end, found before: the kernel asks once more
            base = listing.base
            while True:
                # what the last reply could not take is where the kernel resumes: no thread hop
                if listing.pending and listing.offset == offset:
                    entries, position, more = listing.pending, listing.position, listing.more
                else:
                    listing.pending = []
                    offset = self._reply_nowait(token, listing, offset, counted)
                    if offset is None:
                        return
                    position = 0
                    ready = getattr(listing.reader, "entries_ready", None)
                    ready = ready and ready(offset)
                    later = None if ready else getattr(listing.reader, "ready_later", None)
                    if later is not None and await self._wait_in_loop(later(offset)):
                        ready = listing.reader.entries_ready(offset)
                    batch = ready and self._listing_batch(listing.reader, offset, listing.lean, ready)
                    entries, more = batch or await self._run(self._listing_batch, listing.reader, offset, listing.lean)
                    _check_offsets(base, entries)
                    if listing.rows is not None and listing.record(offset, entries, more):
                        self.lean_rule.recorded(listing)
                if listing.gone:
                    entries = await self._as_now(listing, entries, position)
                listing.pending = []
                for position in range(position, len(entries)):
                    next_offset, name, ino, entry, child = entries[position]
                    if name is None:
                        pass
                    elif entry.__class__ is int:    # (lean: the file type)
                        if not self._reply_lean(token, listing, name, entry, child, base + next_offset):
                            listing.pending, listing.position, listing.more = entries, position, more
                            listing.offset = offset
                            return
                    else:
                        entry.st_ino = ino
                        if not pyfuse3.readdir_reply(token, name, entry, base + next_offset):
                            listing.pending, listing.position, listing.more = entries, position, more
                            listing.offset = offset
                            return
                        if child is not None:
                            self._remember(ino, child)
                            counted.append(ino)
                    offset = next_offset
                if not more:
                    self._ended(listing, offset)
                    return
        except BaseException:                   # answered by an error (or not at all, at unmount):
            self._give_back([(ino, 1) for ino in counted])      # the entries given are never sent
            counted = None
            raise
        finally:
            if counted is not None and not fh and self.prepared.enabled:    # (a reply made)
                self.prepared.listed(listing.ino, first, listing)

    def _ended(self, listing: Listing, offset: int) -> None:
        """The reply being made gives the last of `listing`'s entries, the kernel's next
        readdir comes at `offset` and is answered empty: where the kernel opened the
        folder, in the session loop (`ends_in_session`), once the folder had entries."""
        listing.end = offset
        if offset and self.ends_in_session:
            pyfuse3.readdir_end_at(listing.ino, listing.base + offset)

    async def _as_now(self, listing: Listing, entries: list, start: int) -> list:
        """`entries` (those from `start` on) with the rows of names removed through the
        mount since the listing was made (`_names_gone`) as the folder shows them now: the
        file the name was given since (an editor's or rsync's rename over it, a file made
        again), or no row where the name is gone. One worker call, for those names only."""
        names = {row[1] for row in entries[start:] if row[1] in listing.gone}
        if not names:
            return entries
        directory = self._directory(listing.ino)
        found = await self._run(lambda: {name: directory.lookup_attr(os.fsdecode(name)) for name in names})
        now = entries[:start]
        for row in entries[start:]:
            if row[1] in found:
                hit = found[row[1]]             # (None: gone, skipped; its offset passed)
                row = (row[0], None, None, None, None) if hit is None else \
                    (row[0], row[1], hit[0].ino, self._entry(hit[0].ino, hit[1]), hit[0])
            now.append(row)
        return now

    @_guard
    async def releasedir(self, fh):
        self.counters.releasedirs += 1
        self._listings.pop(fh, None)

    @_guard
    async def readlink(self, inode, ctx):
        self.counters.readlinks += 1
        try:
            node = self._node(inode)
            if not isinstance(node, Symlink):
                raise pyfuse3.FUSEError(errno.EINVAL)
            return os.fsencode(await self._call(lambda: node.target, node.target_blocks))
        except (FileNotFoundError, pyfuse3.FUSEError) as exc:
            if _gone(exc):
                raise pyfuse3.FUSEError(errno.ESTALE) from None
            raise

    # -- files ------------------------------------------------------------------------
    @_guard
    async def open(self, inode, flags, ctx):
        self.counters.opens += 1
        if self.kernel_opens:
            # the kernel then opens every file itself (and sends no RELEASE): reads come by
            # inode to `read_unopened`, and the file's pages are kept across opens
            raise pyfuse3.FUSEError(errno.ENOSYS)
        if inode == CONTROL_INO:
            if (flags & os.O_ACCMODE) != os.O_RDONLY:
                raise pyfuse3.FUSEError(errno.EACCES)
            return self._add_handle(BytesHandle(self._control_bytes()), direct_io=True, noflush=True)
        try:
            handle = await self._open_file(inode, flags)
        except (FileNotFoundError, pyfuse3.FUSEError) as exc:
            if _gone(exc):
                raise pyfuse3.FUSEError(errno.ESTALE) from None
            raise
        return self._add_handle(handle, noflush=not writes(flags))

    async def _open_file(self, inode: int, flags: int) -> FileHandle:
        node = self._node(inode)
        if not isinstance(node, File):
            raise pyfuse3.FUSEError(errno.EISDIR if isinstance(node, Directory) else errno.EINVAL)
        writing = writes(flags)
        if writing:
            self._writable(inode)
        return node.open_nowait(flags) or await self._run(node.open, flags, data=True, change=writing)

    def _add_handle(self, handle: FileHandle, direct_io: bool = False, noflush: bool = False) -> pyfuse3.FileInfo:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = handle
        # direct_io: content that changes under a fixed name must not be cut at a stale size
        keep_cache = (self.policy.keep_cache or handle.keep_cache) and not direct_io
        info = pyfuse3.FileInfo(fh=fh, keep_cache=keep_cache, direct_io=direct_io)
        if noflush and NOFLUSH:
            # an open that cannot change the file has nothing to commit at close (the
            # FileHandle contract): the kernel then sends no FLUSH
            info.noflush = True
        return info

    @_guard
    async def read(self, fh, off, size):
        self.counters.reads += 1
        return await self._read(self._handle(fh), off, size)

    async def _read(self, handle: FileHandle, off: int, size: int) -> bytes:
        data = handle.cached_read(off, size)
        if data is None:
            data = await self._run(handle.read, off, size, data=True)
        self.counters.bytes_read += len(data)
        return data

    @_guard
    async def read_unopened(self, inode, off, size):
        """A read of a file the kernel opened itself (`open` answered ENOSYS): through the
        handle kept for its inode, opened at its first read. The status file serves what
        its last lookup made (each open by name looks it up: its attributes time out at
        once, and a new mtime makes the kernel drop the pages it kept). A file that fails
        is logged once while it keeps failing: the kernel asks again at once."""
        self.counters.reads += 1
        if inode == CONTROL_INO:
            data = self._control[0][off:off + size]
            self.counters.bytes_read += len(data)
            return data
        try:
            data = await self._read_by_inode(inode, off, size)
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:
            failure = inode, repr(exc)
            if failure == self._last_failure:
                raise pyfuse3.FUSEError(getattr(exc, "errno", None) or errno.EIO) from None
            self._last_failure = failure
            raise
        self._last_failure = None
        return data

    async def _read_by_inode(self, inode: int, off: int, size: int) -> bytes:
        held = self.unopened.begin(inode) or self.unopened.add(inode, await self._open_file(inode, os.O_RDONLY))
        at_end = True
        try:
            data = await self._read(held.handle, off, size)
            at_end = len(data) < size
            return data
        finally:
            self.unopened.end(inode, held, at_end)

    def _release_later(self, handle: FileHandle) -> None:
        """Release a handle off the request path (`UnopenedFiles`): nobody waits for it."""
        async def release():
            try:
                await self._call(handle.release, handle.release_blocks, data=True)
            except Exception as exc:
                log.warning("releasing a file handle failed: %s", exc)
        trio.lowlevel.spawn_system_task(release)

    # -- changes (writable trees; read-only ones are mounted `ro` and never get here) --
    def _writable(self, *inodes: int) -> None:
        """Refuse a change of a read-only tree, or of one grafted read-only into a writable
        one (a view of a file inside a database): the nodes of such trees are never asked.
        Every change request comes here first: no lean listing is given again after it."""
        if not self.tree.writable or not all(map(self.tree.writable_at, inodes)):
            raise pyfuse3.FUSEError(errno.EROFS)
        self.lean_rule.changed()
        self.prepared.changed()

    def _owner(self, ctx) -> tuple:
        """The maker of a new entry, for trees whose entries have real owners."""
        return (Owner(ctx.uid, ctx.gid),) if self.tree.real_owners else ()

    async def _new_entry(self, make, *args) -> pyfuse3.EntryAttributes:
        """Make a node and learn its attributes in one worker-thread call."""
        def made():
            node = make(*args)
            return node, node.attr()

        node, attr = await self._run(made, change=True)
        self._remember(node.ino, node)
        return self._entry(node.ino, attr)

    async def _made_nowait(self, node: Node, attr: Attr) -> pyfuse3.EntryAttributes:
        """A node a `*_nowait` change made on the loop, as `_new_entry` gives it."""
        self._remember(node.ino, node)
        await self._notified()
        return self._entry(node.ino, attr)

    @_guard
    async def create(self, parent_inode, name, mode, flags, ctx):
        self._writable(parent_inode)
        directory = self._directory(parent_inode)
        handles = []

        owner = self._owner(ctx)
        made = directory.create_nowait(os.fsdecode(name), mode, flags, *owner)
        if made is not None:
            node, attr, handle = made
            return self._add_handle(handle), await self._made_nowait(node, attr)

        def make():
            node = directory.create(os.fsdecode(name), mode, *owner)
            handles.append(node.open(flags))
            return node

        entry = await self._new_entry(make)
        return self._add_handle(handles[0]), entry

    @_guard
    async def mkdir(self, parent_inode, name, mode, ctx):
        self._writable(parent_inode)
        directory, args = self._directory(parent_inode), (os.fsdecode(name), mode, *self._owner(ctx))
        made = directory.mkdir_nowait(*args)
        return await self._made_nowait(*made) if made is not None else await self._new_entry(directory.mkdir, *args)

    @_guard
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        self._writable(parent_inode)
        return await self._new_entry(self._directory(parent_inode).mknod, os.fsdecode(name), mode, rdev,
                                     *self._owner(ctx))

    @_guard
    async def symlink(self, parent_inode, name, target, ctx):
        self._writable(parent_inode)
        return await self._new_entry(self._directory(parent_inode).symlink, os.fsdecode(name), os.fsdecode(target),
                                     *self._owner(ctx))

    @_guard
    async def unlink(self, parent_inode, name, ctx):
        self._writable(parent_inode)
        await self._run(self._directory(parent_inode).unlink, os.fsdecode(name), change=True)
        self._names_gone(parent_inode, name)

    @_guard
    async def rmdir(self, parent_inode, name, ctx):
        self._writable(parent_inode)
        await self._run(self._directory(parent_inode).rmdir, os.fsdecode(name), change=True)
        self._names_gone(parent_inode, name)

    @_guard
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        self._writable(parent_inode_old, parent_inode_new)
        old, new = self._directory(parent_inode_old), self._directory(parent_inode_new)
        if flags & ~old.rename_flags & ~pyfuse3.RENAME_NOREPLACE:
            raise pyfuse3.FUSEError(errno.EINVAL)     # RENAME_WHITEOUT, or EXCHANGE where not done
        new_name = os.fsdecode(name_new)

        def move():
            if not flags:
                old.rename(os.fsdecode(name_old), new, new_name)
            elif not flags & ~old.rename_flags:
                old.rename(os.fsdecode(name_old), new, new_name, flags)
            elif new.lookup(new_name) is not None:    # NOREPLACE, checked here for the directory
                raise FileExistsError(errno.EEXIST, "exists", new_name)
            else:
                old.rename(os.fsdecode(name_old), new, new_name)

        await self._run(move, change=True)
        self._names_gone(parent_inode_old, name_old)
        self._names_gone(parent_inode_new, name_new)         # (the inode it named, if any, is gone)

    def _names_gone(self, folder: int, *names: bytes) -> None:
        """Names of a folder that no longer name the inode they did (unlink, rmdir, rename)
        are looked up again where a listing of the folder made before, which the kernel
        may be reading on in (`listings.py`), comes to them (`_as_now`). The kernel links
        every name of a READDIRPLUS (`fuse_direntplus_link`, with no check that the name
        is still there): a row of the snapshot would bring the name back with its old
        inode and attributes after the call that removed it returned (`stat` found it,
        `open(O_CREAT)` opened what is gone: `_gone`). Left out, a name an
        editor or rsync renames a new file onto would be missing from a listing. Names
        changed behind the mount are told to the kernel by the `Notifier` instead, as
        expired, and an inode that is gone answers ESTALE (`_gone`)."""
        self.folder_listings.names_gone(folder, names)
        self.lean_rule.names_gone(folder, names)
        for listing in self._listings.values():
            if listing.ino == folder:
                listing.gone.update(names)

    @_guard
    async def write(self, fh, off, buf):
        self._writable()
        handle = self._handle(fh)
        written = handle.write_nowait(off, buf)
        return written if written is not None else await self._run(handle.write, off, buf, change=True)

    @_guard
    async def setattr(self, inode, attr, fields, fh, ctx):
        try:
            return await self._set_attributes(inode, attr, fields, fh)
        except (FileNotFoundError, pyfuse3.FUSEError) as exc:
            if _gone(exc):
                raise pyfuse3.FUSEError(errno.ESTALE) from None
            raise

    async def _set_attributes(self, inode, attr, fields, fh) -> pyfuse3.EntryAttributes:
        """At most one worker call: a truncate, a `set_attr` that blocks and the attributes
        after them are made in one; a `set_attr` that does not (formats that ignore modes
        and times) runs here, and the attributes come from memory where known (`cp -a`,
        `rsync -a`: chmod, chown and utimens of every file they copy)."""
        node = self._node(inode)
        handle = self._handles.get(fh) if fh is not None else None
        changes = {}
        if fields.update_mode:
            changes["mode"] = stat.S_IMODE(attr.st_mode)
        if fields.update_mtime:
            changes["mtime_ns"] = attr.st_mtime_ns
        if fields.update_atime:
            changes["atime_ns"] = attr.st_atime_ns
        if self.tree.real_owners:              # elsewhere owners are the daemon's: chown is a no-op
            if fields.update_uid:
                changes["uid"] = attr.st_uid
            if fields.update_gid:
                changes["gid"] = attr.st_gid
        if changes or fields.update_size:
            self._writable(inode)
        set_attr = functools.partial(node.set_attr, handle=handle, **changes) if changes else None
        if not fields.update_size and (set_attr is None or not node.set_attr_blocks):
            if set_attr is not None:
                set_attr()
                await self._notified()
            found = node.cached_attr()
            return self._entry(inode, found if found is not None else await self._run(node.attr))

        def change() -> Attr:
            if fields.update_size:
                (handle if handle is not None else node).truncate(attr.st_size)
            if set_attr is not None:
                set_attr()
            return node.attr()
        return self._entry(inode, await self._run(change, change=True))

    @_guard
    async def link(self, inode, new_parent_inode, new_name, ctx):
        self._writable(new_parent_inode)
        node, directory = self._node(inode), self._directory(new_parent_inode)
        return await self._new_entry(directory.link, os.fsdecode(new_name), node)

    @_guard
    async def flush(self, fh):
        self.counters.flushes += 1
        if not self.tree.writable:
            # nothing to commit at close anywhere in the tree: ENOSYS makes the kernel stop
            # sending FLUSH at every close(2), one request less per file read
            raise pyfuse3.FUSEError(errno.ENOSYS)
        handle = self._handle(fh)
        # only of a class that defines it (not a wrapper that hands other calls on, as the
        # overlay's, no FileHandle): every other flush costs no call more
        if getattr(type(handle), "flushes_nowait", False):
            done = True                         # (a refusal too: it raises)
            try:
                with self.notifier.held(on_loop=True):
                    done = handle.flush_nowait()
            finally:
                if done:                        # (a commit in memory: no worker thread)
                    self.prepared.changed()
                    await self._notified()
            if done:
                return
        if handle.flush_blocks and self.thread_replies is not None and self.thread_replies.take():
            self.counters.worker_calls += 1
            self.counters.thread_replies += 1
            return functools.partial(self._flush_in_thread, handle, fh)
        await self._call(handle.flush, handle.flush_blocks, change=True)

    def _flush_in_thread(self, handle: FileHandle, fh: int, reply) -> None:
        """`handle.flush` in a worker thread, which answers the FLUSH itself (`reply`, a
        pyfuse3.FlushReply) once the flush is done and the kernel told of what it
        changed, as `_run` with `change` would have: no timeout (an answer of success
        means the file is committed, an error that it is not), errors mapped as `_guard`
        does. The loop does not wake for it."""
        def flush() -> None:
            with self.notifier.held():
                handle.flush()

        def answer(result) -> None:
            try:
                code = 0
                try:
                    result.unwrap()
                except Exception as exc:
                    code = _errno_of(exc, self.counters, "flush", (fh,))
                self.prepared.changed()
                reply(code)
            finally:
                self.thread_replies.done()
        try:
            trio.lowlevel.start_thread_soon(flush, answer)
        except Exception as exc:                # (no thread to be had)
            self.thread_replies.done()
            reply(_errno_of(exc, self.counters, "flush", (fh,)))

    @_guard
    async def fsync(self, fh, datasync):
        handle = self._handle(fh)
        await self._call(handle.fsync, handle.fsync_blocks or handle.flush_blocks, change=True)
        await self._run(self.tree.sync, change=True)

    @_guard
    async def fsyncdir(self, fh, datasync):
        await self._run(self.tree.sync, data=True)

    def _handle(self, fh: int) -> FileHandle:
        handle = self._handles.get(fh)
        if handle is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        return handle

    async def sync_when_idle(self, period: float = 0.5) -> None:
        """Write back changes that have waited long enough (a writable tree's own rule)."""
        while True:
            await trio.sleep(period)
            try:
                if self.tree.sync_due():
                    await self._run(self.tree.sync, data=True)
            except Exception:
                log.exception("write-back failed; will try again")

    def flush_open_files(self) -> None:
        """At shutdown: commit what writers still hold open (each refusal is logged)."""
        for fh, handle in list(self._handles.items()):
            try:
                handle.flush()
            except Exception as exc:
                log.warning("at shutdown, file handle %d could not be saved: %s", fh, exc)

    @_guard
    async def release(self, fh):
        handle = self._handles.pop(fh, None)
        if handle is not None:
            await self._call(handle.release, handle.release_blocks, data=True)
            await self._notified()

    # -- filesystem -------------------------------------------------------------------
    @_guard
    async def statfs(self, ctx):
        st = pyfuse3.StatvfsData()
        real = await self._call(self.tree.statvfs, self.tree.statvfs_blocks)
        if real is not None:                   # the filesystem written to
            for name in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree", "f_favail"):
                setattr(st, name, getattr(real, name))
            st.f_namemax = 255
            return st
        used, files = self.tree.statfs_counts()
        st.f_bsize = BLOCK_SIZE
        st.f_frsize = 512
        st.f_blocks = (used + 511) // 512
        st.f_bfree = st.f_bavail = 0
        st.f_files = files
        st.f_ffree = st.f_favail = 0
        st.f_namemax = 255
        return st

    @_guard
    async def getxattr(self, inode, name, ctx):
        raise pyfuse3.FUSEError(errno.ENOSYS)     # the kernel then stops asking (see CONTROL_NAME)

    # -- the control file -------------------------------------------------------------
    def status(self) -> dict:
        c = self.counters
        status = dict(self.info)
        ends = pyfuse3.readdir_ends_answered() if self.ends_in_session else 0     # (not seen by `_guard`)
        prepared = self.prepared.answered
        status.update(pid=os.getpid(), uptime_s=round(time.time() - c.started, 3),
                      requests=c.requests + ends + prepared, requests_by_kind=dict(c.by_kind),
                      attr_requests=c.attr_requests, invalidations=c.invalidations,
                      bytes_read=c.bytes_read, errors=c.errors, worker_calls=c.worker_calls,
                      stored_ahead=c.stored_ahead, lookups_to_store=c.lookups_to_store,
                      opendir_requests=c.opendirs, readdir_requests=c.readdirs + ends + prepared,
                      readdir_ends_in_session=ends,
                      listings_prepared_in_session=self.prepared.enabled, listings_prepared=self.prepared.made,
                      readdirs_answered_prepared=prepared, prepared_listings_held=len(self.prepared),
                      prepared_listings_taken_back=self.prepared.taken_back,
                      prepare_queue=self.prepared.queued, prepare_queue_dropped=self.prepared.dropped,
                      prepare_failed=self.prepared.failed,
                      releasedir_requests=c.releasedirs, readlink_requests=c.readlinks,
                      flush_requests=c.flushes,
                      listings_cached_in_kernel=self.kernel_opens_dirs,
                      symlinks_cached_in_kernel=self.cache_symlinks,
                      listings_kept=len(self.folder_listings),
                      open_requests=c.opens, read_requests=c.reads, files_opened_by_kernel=self.kernel_opens,
                      files_held_by_inode=len(self.unopened),
                      notify_waits=c.notify_waits, lookup_requests=c.lookups,
                      lookups_of_held_inodes=c.lookups_of_held, inodes_forgotten=c.inodes_forgotten,
                      readdirs_waited_in_loop=c.readdirs_waited,
                      flushes_answered_by_thread=c.thread_replies,
                      lean_entries=c.lean_entries, lean_rule_trips=self.lean_rule.trips,
                      lean_lookups_answered=self.lean_rule.answered,
                      listings_made=c.listings_made, lean_listings_given_again=self.lean_rule.replayed,
                      full_listings_left=self.lean_rule.full_left,
                      known_inodes=self.known_inodes,
                      open_files=len(self._handles))
        status.update(self.tree.status())
        return status

    def _control_bytes(self) -> bytes:
        return (json.dumps(self.status(), indent=2, sort_keys=True) + "\n").encode()

    def _control_entry(self) -> pyfuse3.EntryAttributes:
        data, mtime_ns = self._control
        entry = self._entry(CONTROL_INO, Attr(stat.S_IFREG | 0o444, len(data), mtime_ns))
        entry.entry_timeout = entry.attr_timeout = 0
        return entry
