"""The merged view: nodes, and the merge rules that decide what each name shows.

A node is its backing file: (layer, st_dev, st_ino), and a static file's ctime or a static
directory's path (inode numbers are reused), or (layer, path) in an object store. Hard links found by that
identity share one node (one inode number); a copy-up moves a node to the overlay layer
and keeps its number. A node knows where it is (its parent node and name, and for hard
links its other names), so a rename moves one node and never rewrites a table of paths;
a deleted node lives on, without a place, while the kernel holds it (an open file stays
usable: `attr` then asks an open handle).
"""
from __future__ import annotations

import bisect
import errno
import functools
import hashlib
import itertools
import logging
import math
import operator
import os
import stat
import threading
import time
import weakref
from collections import OrderedDict

from ..blocks import view_attr
from ..kept_sizes import identity
from ..kernel import RENAME_EXCHANGE, RENAME_NOREPLACE
from ..nodes import Attr, CachePolicy, Directory, File, FileHandle, Node, Owner, Symlink, Tree, read_only, writes
from ..options import list_ahead_wait, lists_ahead
from .root import Root
from .rules import OPAQUE, deleted_names, internal, refuse_reserved, whiteout_name
from .walk import ScanAhead, SiblingWarmer, SmallSiblings
from .watch import OverlayWatch

log = logging.getLogger(__name__)

#: what `static_visible` remembers of a directory with no copy in the overlay yet
BARE = "bare"
#: copy-ups of different files run at once; one file's wait for each other (striped)
COPY_LOCKS = 64
#: merged directories whose link count is remembered (until their overlay copy changes)
NLINK_COUNTS = 100_000
#: how long the kernel keeps names, attributes and listings when the overlay is watched
#: (changes in the overlay are told at once; the static root does not change)
WATCHED_TIMEOUT = 60.0
#: merged listings made ahead of a walker, at most (those it will reach after the current
#: folder's subtree wait here meanwhile: a run's siblings while it walks the run)
MERGED_AHEAD = 64
#: ... for this long at most where the overlay is watched (else the attribute timeout):
#: a walk within reaches them, and an `ls` of a big folder holds the window no longer
MERGED_AHEAD_FOR = 10.0
#: seconds after a view's size was asked (a walk that stats what it lists) during which a
#: listing made ahead looks up its views' kept sizes (`MergeAhead`): a `find` asks none
SIZES_WANTED_FOR = 10.0
#: ... of which the last half has a view left unsized for the walk to ask, one at most this
#: often (`OverlayTree.probe_due`): several chances before sizing ahead lapses
PROBE_EVERY = SIZES_WANTED_FOR / 8


def _join(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name


@functools.lru_cache(maxsize=1 << 16)     # (the same view names recur in every run's folders)
def _cookie(name: str) -> int:
    """The offset that resumes a listing after `name`: a hash of the name (not its place),
    so that a listing resumed at an offset of another snapshot of the folder (the kernel's
    cached listing, dropped and made again while a reader was half-way) goes on after the
    same name, never skipping or repeating one that stayed. Folders list in this order,
    as ext4 lists in hash order. Below 2**31, so that offsets stay inside the position bits
    the daemon gives a listing (daemon/listings.py) with room for collisions."""
    return int.from_bytes(hashlib.blake2b(os.fsencode(name), digest_size=4).digest(), "big") >> 1 or 1


def _cookie_before(name: str, after: str) -> int:
    """The cookie of name listed just before `after` (a view before its source)."""
    return max(1, _cookie(after) - 1 - _cookie(name) % 16)


def _in_cookie_order(found: list[tuple[str, Node, Attr | None]],
                     before: dict[str, str]) -> list[tuple[int, str, Node, Attr | None]]:
    """(offset, name, node, attr) in the order of the names' cookies (each offset above the
    last, should two names share a hash); a name of `before` just ahead of the name it maps to."""
    listing, last = [], 0
    # (a list, not a generator: a step of one is a Python call an entry, tens of thousands a walk)
    for cookie, name, node, info in sorted([(_cookie_before(name, before[name]) if name in before else _cookie(name),
                                             name, node, info) for name, node, info in found]):
        last = max(cookie, last + 1)
        listing.append((last, name, node, info))
    return listing


#: the name of a (name, ...) entry: a listing's sort key (in C, not a Python call an entry)
_name_of = operator.itemgetter(0)


def _after(listing: list, offset: int):
    """The entries of a listing made by `_in_cookie_order` that follow offset."""
    return iter(listing[bisect.bisect_right(listing, offset, key=lambda entry: entry[0]):])


def _ancestors(rel: str):
    """rel and the directories above it, up to the first level below the root."""
    while rel:
        yield rel
        rel = rel.rpartition("/")[0]


def _gone(what: str) -> FileNotFoundError:
    return FileNotFoundError(errno.ENOENT, "no such file or directory", what)


class OverlayTree(Tree):
    """A read-only static root under a writable overlay root, shown as one tree."""

    #: nodes the kernel forgot that are kept for a walk done again
    idle_nodes = 100_000
    #: directories whose static visibility is remembered (the oldest learnt go first)
    visible_kept = 100_000
    #: views sized by making them, files by a stat: a `find` needs neither
    lean_listings = True

    def __init__(self, static: Root, upper: Root, read_only: bool = False):
        super().__init__()
        self.static = static
        self.upper = upper
        self.writable = not read_only
        self.real_owners = upper.real_owners
        self.local = static.local_storage and upper.local_storage
        self.answers_nowait = static.answers_from_caches and upper.answers_from_caches
        # changes of names (short: a copy-up holds it only to rename its finished copy in)
        self.lock = threading.RLock()
        self._table = threading.Lock()                          # guards _by_key changes
        self._by_key: dict[tuple, MergedNode] = {}
        self._copying = [threading.Lock() for _ in range(COPY_LOCKS)]
        self._idle: OrderedDict[int, Node] = OrderedDict()      # forgotten by the kernel, kept a while
        self.extra: dict[str, Node] = {}      # virtual files at the root (copick_config.json)
        # derived read-only files: derive.listing(dir rel, {name: what it shows, or None}) -> [(name, source rel, make node(info),
        # what the source shows or None, the `KeptTogether` of its size or None)], derive.lookup(dir rel, name) ->
        # (source rel, make node, what the source shows: stat'ed once, by the lookup, its `KeptTogether` or None)
        self.derive = None
        self._derived: dict[str, Node] = {}
        # imports(dir rel, name) -> a node that converts what is written to it, for a new
        # name that is an import (copick picks or tomograms in other formats), else None
        self.imports = None
        self._visible: dict[str, bool] = {}     # static visibility of directories, until a write
        self._visible_lock = threading.Lock()
        # counts renames and deletions: a lookup that raced one does not move a node back
        self.moves = 0
        self._generation = 0                     # of `_visible`: changed() counts up
        # counts changes of names or attributes (through the mount, or seen by the watch): a
        # folder's attributes kept from before one are not given (`MergedDir.cached_attr`);
        # each change takes a new number (`edited`): equal to a snapshot means none since
        self._edit_numbers = itertools.count(1)
        self.edits = 0
        # (overlay directory's backing, rel): ((mtime, ctime), merged nlink). The path too: a
        # removed directory's inode number goes to the next mkdir (ext4), maybe a copy-up
        self._nlinks: dict[tuple, tuple] = {}
        # how long what was learnt is trusted where no watch reports changes: a second, five remote
        self.unwatched_timeout = 1.0 if self.local else 5.0
        # a walker waits for a listing under way no longer than the attribute timeout, also
        # where a watch lets made ones wait longer for it (`horizon`, set below)
        self.scan_ahead = MergeAhead(self, threads=2 if static.local_storage else 8, window=MERGED_AHEAD,
                                     horizon=self.unwatched_timeout, wait=list_ahead_wait(self.unwatched_timeout))
        self.lists_ahead = lists_ahead()
        # handles open for writing (their writes change what a listing made ahead shows;
        # their end counts as a change)
        self._writing: weakref.WeakSet[FileHandle] = weakref.WeakSet()
        # lookups answered without I/O (shown_nowait): from the kernel's caches, or from an
        # object store's listing
        self.warmer = SiblingWarmer(static) if self.answers_nowait else None
        # small files read whole one after another: read ahead with a sibling's cold read
        self.small_reads = SmallSiblings(lambda: self.edits)
        if self.writable:
            upper.clear_work()
        # source rel: the derived paths made of it (replaced, never changed in place: the
        # overlay watch reads them from its own thread)
        self._derived_by_source: dict[str, frozenset[str]] = {}
        self._view_copies = _ViewCopies()      # (`kept_at_view`)
        self.changes_reported = 0
        # listings made ahead unsized, taken once the walk asked sizes: sized in a worker (`listed_ahead`)
        self._to_size: dict[MergedDir, tuple] = {}      # (as `MergeAhead._scan` made it, with when it began)
        # (monotonic) when a derived view's size was last asked; when a listing sized ahead last
        # left one unsized (`probe_due`)
        self.size_asked_at = self.probed_at = -math.inf
        root = self.add(MergedDir(self, (None, "")))
        root_source, info = self.top("")
        root.kind, root.source, root.key = stat.S_IFDIR, root_source, self.key_of(root_source, "", info)
        # the overlay's changes are seen where it is a local directory (inotify): then the
        # kernel keeps listings and attributes, else it asks again after a second (five remote)
        self.watch = self._watch_overlay()
        watched = self.watch is not None
        # changes are counted where watched: a listing made ahead waits for the walker longer
        self.scan_ahead.horizon = MERGED_AHEAD_FOR if watched else self.unwatched_timeout
        # how long a folder's attributes are given from memory: as long as the kernel keeps them
        self.attrs_kept_for = WATCHED_TIMEOUT if watched else self.unwatched_timeout
        self.cache_policy = CachePolicy(entry_timeout=WATCHED_TIMEOUT if watched else 1.0,
                                        attr_timeout=WATCHED_TIMEOUT if watched else self.unwatched_timeout,
                                        negative_timeout=0.0, keep_cache=True, cache_listings=watched)

    def _watch_overlay(self) -> OverlayWatch | None:
        path = self.upper.local_path("") if self.upper.local_storage else None
        if path is None:
            return None
        try:
            return OverlayWatch(path, self.overlay_changed)
        except OSError as exc:                  # EMFILE: fs.inotify.max_user_instances reached
            log.warning("the overlay %s cannot be watched (%s): the kernel keeps nothing of the merged "
                        "tree for more than a second", path, exc)
            return None

    # -- resolving ------------------------------------------------------------------------
    def static_visible(self, rel: str) -> bool:
        """Whether the static root's entry at rel shows: no whiteout for it and no opaque
        directory or whiteout on the way down (remembered per parent until a write)."""
        if not rel:
            return True
        parent, _, name = rel.rpartition("/")
        seen = self._visible.get(parent)
        if seen is None:
            generation = self._generation
            if not self.static_visible(parent):
                seen = False
            elif self.upper.stat(parent) is None:
                seen = BARE
            else:
                seen = self.upper.stat(_join(parent, OPAQUE)) is None
            with self._visible_lock:
                if generation == self._generation:       # no change came meanwhile
                    visible = self._visible
                    if len(visible) >= self.visible_kept:
                        del visible[next(iter(visible))]
                    visible[parent] = seen
        return seen is BARE or seen and self.upper.stat(_join(parent, whiteout_name(name))) is None

    def _bare(self, rel: str) -> bool:
        """Whether rel's directory is known to have no copy in the overlay (then nothing
        there is the overlay's, and no whiteout needs looking for)."""
        return self._visible.get(rel.rpartition("/")[0]) is BARE

    def edited(self) -> None:
        """Names or attributes changed: a number no snapshot of `edits` holds yet (from
        any thread: `+= 1` could write back a value taken before another change)."""
        self.edits = next(self._edit_numbers)

    def changed(self) -> None:
        """Whiteouts or opaque markers may have changed: forget visibility (and what is
        being learnt of it right now)."""
        self.edited()
        with self._visible_lock:
            self._generation += 1
            self._visible.clear()

    def layers(self, rel: str) -> tuple[Attr | None, Attr | None]:
        """(overlay info, static info) of what rel shows; static is None if hidden."""
        up = None if self._bare(rel) else self.upper.stat(rel)
        st = self.static.stat(rel) if self.static_visible(rel) else None
        return up, st

    def top(self, rel: str) -> tuple[Root, Attr]:
        """The root whose copy of rel shows, and its info (the static root is not asked
        when the overlay has rel)."""
        up = None if self._bare(rel) else self.upper.stat(rel)
        if up is not None:
            return self.upper, up
        st = self.static.stat(rel) if self.static_visible(rel) else None
        if st is None:
            raise _gone(rel)
        return self.static, st

    def shown(self, rel: str) -> tuple[Root, Attr] | None:
        try:
            return self.top(rel)
        except FileNotFoundError:
            return None

    def _static_visible_cached(self, rel: str) -> bool:
        """Whether the static entry at rel shows, if known without I/O (else False)."""
        parent, _, name = rel.rpartition("/")
        seen = self._visible.get(parent)
        return seen is BARE or bool(seen) and self.upper.exists_cached(_join(parent, whiteout_name(name))) is False

    def shown_nowait(self, rel: str) -> tuple[Root, Attr] | None:
        """What rel shows, if the kernel's lookup cache (or an object store's recent
        listing) tells without I/O; None if it cannot, or if rel is missing."""
        if not self.answers_nowait:
            return None
        if not self._bare(rel):
            try:
                info = self.upper.stat_cached(rel)
                return None if info is None else (self.upper, info)
            except (FileNotFoundError, NotADirectoryError):
                pass
        if self._static_visible_cached(rel):
            try:
                info = self.static.stat_cached(rel)
                return None if info is None else (self.static, info)
            except (FileNotFoundError, NotADirectoryError):
                pass
        return None

    def _names(self, rel: str, touch: bool = True) -> tuple[list[str], set[str] | None, set[str]]:
        """What directory rel shows of each root: (the overlay's names, the static names
        the overlay hides or None if it hides the whole static directory, and the
        overlay's raw names). Whiteouts and opaqueness come from the overlay's listing
        (read as a plain read is, moving its atime, unless not `touch`)."""
        upper_names = self.upper.listdir(rel, touch=touch)
        upper = [n for n in upper_names or [] if not internal(n)]
        if upper_names is None:
            static_shows = self.upper.stat(rel) is None          # an overlay file hides a static dir
        else:
            static_shows = OPAQUE not in upper_names
        if not (static_shows and self.static_visible(rel)):
            return upper, None, set()
        raw = set(upper_names or [])
        return upper, set(upper) | deleted_names(raw), raw

    def dir_info(self, rel: str, info: Attr) -> Attr:
        """The overlay's copy of directory rel, with the nlink of the merged view (2 and
        its subdirectories, those of the static root that show included), as a plain
        directory has. Only the overlay's entries are looked at, and only when they
        changed since the last count (the copy's mtime and ctime say)."""
        if self.static is self.upper:
            return info
        known = self.dir_info_nowait(rel, info)
        if known is not None:
            return known
        nlink = self._count_links(rel)
        if info.backing is not None:
            if len(self._nlinks) >= NLINK_COUNTS:
                self._nlinks.clear()
            # a directory with nothing static merged in stays so (one made where a static
            # one was is opaque): its own count is right from now on
            self._nlinks[info.backing, rel] = (None if nlink is None else (info.mtime_ns, info.ctime_ns), nlink)
        return info if nlink is None else info._replace(nlink=nlink)

    def dir_info_nowait(self, rel: str, info: Attr) -> Attr | None:
        """What `dir_info` gives, if known without I/O (else None)."""
        counted = self._nlinks.get((info.backing, rel))
        if counted is None:
            return None
        if counted[0] is None:
            return info
        return info._replace(nlink=counted[1]) if counted[0] == (info.mtime_ns, info.ctime_ns) else None

    def count_before(self, node: "MergedDir") -> tuple[Attr, int] | None:
        """(the overlay copy's attributes, merged nlink) of directory node, if its count is
        remembered and current: a change then carries it over (`count_after`) instead of
        counting again (lock held)."""
        counted = self._nlinks.get((node.key[1], node.rel)) if node.source is self.upper else None
        if counted is None or counted[0] is None:
            return None
        before = self.upper.stat(node.rel)
        return (before, counted[1]) if before and counted[0] == (before.mtime_ns, before.ctime_ns) else None

    def count_after(self, node: "MergedDir", before: tuple[Attr, int] | None, delta: int) -> None:
        """A change made `delta` subdirectories in node (lock held)."""
        if before is not None:
            after = self.upper.stat(node.rel)
            if after is not None and after.backing == before[0].backing:
                self._nlinks[after.backing, node.rel] = ((after.mtime_ns, after.ctime_ns), before[1] + delta)

    def _count_links(self, rel: str) -> int | None:
        """The merged nlink of the overlay's directory rel; None if the overlay's own
        count is right for good (no static subdirectory merged in)."""
        st = self.static.stat(rel) if self.static_visible(rel) else None
        if st is None or not stat.S_ISDIR(st.mode) or st.nlink == 2 and rel:
            return None
        raw = self.upper.listdir(rel, touch=False) or []       # a stat is no read of the directory
        if OPAQUE in raw:
            return None
        if st.nlink < 2:                                # a filesystem that does not count (btrfs)
            return 1
        entries = [n for n in raw if not internal(n)]
        named = sorted(set(entries) | deleted_names(raw))
        upper_dirs = {n for n, i in zip(entries, self.upper.stat_many(rel, entries)) if i and stat.S_ISDIR(i.mode)}
        static_dirs = {n for n, i in zip(named, self.static.stat_many(rel, named)) if i and stat.S_ISDIR(i.mode)}
        return max(st.nlink + len(upper_dirs - static_dirs) - len(static_dirs - upper_dirs), 2)

    def shown_dir_exact(self, rel: str, root: Root, info: Attr) -> Attr:
        """info, corrected if it is the overlay's copy of a merged directory (object
        stores do not count links: their directories stay at 2)."""
        if root is self.upper and self.real_owners and stat.S_ISDIR(info.mode):
            return self.dir_info(rel, info)
        return info

    @staticmethod
    def _static_shows(name: str, hidden: set[str], raw: set[str]) -> bool:
        return not (name in hidden or internal(name) or (len(name) > 240 and whiteout_name(name) in raw))

    def listing(self, rel: str) -> list[str]:
        upper, hidden, raw = self._names(rel)
        if hidden is None:
            return sorted(upper)
        static = self.static.listdir(rel, touch=False) or []        # (never written, not even its atimes)
        return sorted(upper + [n for n in static if self._static_shows(n, hidden, raw)])

    def scan(self, rel: str, touch: bool = True) -> list[tuple[str, Root, Attr]]:
        """The listing with what each name shows: one stat per name, in the root that shows
        it (the static root's side may have been scanned ahead)."""
        upper, hidden, raw = self._names(rel, touch)
        found = [(n, self.upper, info) for n, info in zip(upper, self.upper.stat_many(rel, upper))]
        if hidden is not None:
            static_names = self.static.listdir(rel, touch=False) or []
            names = [n for n in static_names if self._static_shows(n, hidden, raw)]
            found += [(n, self.static, info) for n, info in zip(names, self.static.stat_many(rel, names))]
            merged = set(upper).intersection(static_names) if self.real_owners else ()  # counted in both
            found = [(n, root, self.dir_info(_join(rel, n), info) if n in merged and root is self.upper and info
                      and stat.S_ISDIR(info.mode) else info) for n, root, info in found]
        return sorted([entry for entry in found if entry[2] is not None], key=_name_of)

    def writing(self, handle: FileHandle) -> None:
        """`handle` may write into the overlay until it goes: no listing made ahead is given
        meanwhile, nor one begun before it went (the sizes it shows may be old)."""
        self.edited()
        self._writing.add(handle)
        weakref.finalize(handle, self.edited).atexit = False

    def in_overlay(self, rel: str) -> bool:
        """Whether the overlay has a copy of rel (at most one stat)."""
        return not self._bare(rel) and self.upper.stat(rel) is not None

    def listed_ahead(self, node: "MergedDir", wait: bool) -> list | None:
        """node's listing as a worker made it ahead of the walker (`MergeAhead`), if no
        change came since it began and no file is open for writing; `wait`: for one under
        way (at most the horizon), else only one made already. One made before the walk
        asked a size is sized as if made now: without `wait` (the trio thread) it is not
        given but kept for the worker call that follows, which sizes it (one call, not a
        LOOKUP a view) if the horizon since its listing began has not passed."""
        ahead = self._to_size.pop(node, None) if wait else None
        if ahead is not None and time.monotonic() - ahead[3] >= self.scan_ahead.horizon:
            ahead = None
        if ahead is None:
            ahead = self.scan_ahead.take(node) if wait else self.scan_ahead.take_nowait(node)
        if ahead is None:
            return None
        edits, listing, sized, _ = ahead
        if edits != self.edits or self._writing:
            return None
        if not sized and self.sizes_wanted():
            if not wait:
                self._keep_to_size(node, ahead)
                return None
            _size_views(node.rel, listing, probe=False)
        return listing

    def _keep_to_size(self, node: "MergedDir", ahead: tuple) -> None:
        """node's listing made ahead (`ahead`), kept for `listed_ahead` in a worker; those
        no longer to be given go (at most `MERGED_AHEAD` kept)."""
        kept, now, horizon = self._to_size, time.monotonic(), self.scan_ahead.horizon
        for other, (*_, began) in list(kept.items()):
            if now - began >= horizon:
                kept.pop(other, None)
        if len(kept) >= MERGED_AHEAD:
            kept.clear()
        kept[node] = ahead

    def sizes_wanted(self) -> bool:
        """Whether a walk stats what it lists: a view's size was asked within
        `SIZES_WANTED_FOR` (a `find` asks none)."""
        return time.monotonic() - self.size_asked_at < SIZES_WANTED_FOR

    def probe_due(self) -> bool:
        """Whether a listing sized ahead now leaves one view unsized (`MergeAhead`): half
        `SIZES_WANTED_FOR` passed since a view's size was last asked, and `PROBE_EVERY`
        since one was last left so (one whose ask never came: its listing not given, or
        sized by a later one). A walk given every size asks none: a `du` looks that one up
        (its size asked, sizing ahead stays on), a `find` does not (sizing ahead stops,
        also in a `find` begun just after a `du`) while its listings are lean: a full
        listing asks its views' sizes (the daemon's `LeanRule`), the one left too."""
        now = time.monotonic()
        return now - self.size_asked_at >= SIZES_WANTED_FOR / 2 and now - self.probed_at >= PROBE_EVERY

    # -- nodes ----------------------------------------------------------------------------
    def key_of(self, root: Root, rel: str, info: Attr) -> tuple:
        """A node's identity: its backing file, or its path where a root has no inodes.

        A static file's identity also has its ctime: a file deleted behind the mount frees
        its inode number, and a new file given it must not be taken for the deleted one's
        node (the kernel's name for that would open the new file). The daemon never
        changes the static side, so a ctime changes only with the file (written, renamed
        or replaced behind the mount: the node is gone, ESTALE, and the file a new node).
        Not the birth time: Python's stat has none on Linux (statx would be a second call).
        Not the overlay's files, which the daemon changes (their removals behind the mount
        are watched). A static directory's ctime moves with every change of its names:
        its path instead, which only a change behind the mount moves (one shown from the
        static root never moves through the mount: EXDEV, and a copy-up rekeys it)."""
        layer = 0 if root is self.upper else 1
        if info.backing is None:
            return layer, rel
        if layer:
            return layer, info.backing, rel if stat.S_ISDIR(info.mode) else info.ctime_ns
        return layer, info.backing

    def node_for(self, parent: "MergedDir", name: str, rel: str, root: Root, info: Attr,
                 wait: bool = True, moves: int | None = None) -> "MergedNode | None":
        """The node of what `parent/name` (at rel) shows: `info` from `root`. Making a new
        node takes the table's lock: without `wait`, None if another thread holds it.
        `moves`: `self.moves` before info was learnt (a node found is placed at name only
        if nothing was renamed or deleted since)."""
        key, kind = self.key_of(root, rel, info), stat.S_IFMT(info.mode)
        node = self._by_key.get(key)
        if node is None or node.kind != kind:
            if not self._table.acquire(blocking=wait):
                return None
            try:
                node = self._by_key.get(key)
                if node is None or node.kind != kind:
                    cls = _NODE_KINDS.get(kind, MergedSpecial)
                    node = self.add(cls(self, (parent, name)))
                    node.kind, node.source, node.key = kind, root, key
                    self._by_key[key] = node
                    return node
            finally:
                self._table.release()
        if moves is None or moves == self.moves:
            node.found_at(parent, name, info.nlink)
        return node

    def known(self, root: Root, rel: str, info: Attr) -> "MergedNode | None":
        return self._by_key.get(self.key_of(root, rel, info))

    def rekey(self, node: "MergedNode", root: Root, info: Attr) -> None:
        """node's backing file is now `info` in `root` (copied up, or renamed in a root
        without inodes)."""
        key = self.key_of(root, node.rel, info)
        with self._table:
            if self._by_key.get(node.key) is node:
                del self._by_key[node.key]
            node.source, node.key = root, key
            self._by_key.setdefault(key, node)

    def unplace(self, node: "MergedNode", parent: "MergedDir", name: str, gone: bool) -> None:
        """`parent/name` no longer shows node (deleted or replaced); `gone`: nor does any
        other name, so nothing may find it again (its backing inode may be reused)."""
        self.moves += 1
        node.drop_place(parent, name)
        if node.place is None or gone:
            with self._table:
                if self._by_key.get(node.key) is node:
                    del self._by_key[node.key]

    # -- writing into the overlay -----------------------------------------------------
    def ensure_upper_dir(self, node: "MergedDir") -> Attr:
        """The overlay gets node's directory and those on the way to it, each with the
        owner, mode and times of the static one (call with the lock held)."""
        rel = node.rel
        up = self.upper.stat(rel)
        if up is not None:
            if not stat.S_ISDIR(up.mode):
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", rel)
            return up
        parent = node.place[0]
        above = self.ensure_upper_dir(parent)
        st = self.static.stat(rel)
        if st is None:
            raise _gone(rel)
        self.upper.copy_dir(self.static, rel, st)
        self.changed()                                   # no longer bare
        self.keep_times(parent, above)
        up = self.upper.stat(rel)
        self.rekey(node, self.upper, up)
        return up

    def keep_times(self, directory: "MergedDir", before: Attr) -> None:
        """A copy-up placed something in directory: its times stay what they were (the
        view did not change)."""
        self.upper.set_attr(directory.rel, None, atime_ns=before.atime_ns, mtime_ns=before.mtime_ns)

    def copy_up(self, node: "MergedNode", data: bool = True) -> None:
        """node, shown from the static root, gets its copy in the overlay: written aside
        (content only if `data`), fsynced, then renamed into place. Copy-ups of one file
        wait for each other; nothing else waits for a copy to be made."""
        if node.source is self.upper:
            return
        self.edited()                                   # (the parent's copy changes)
        if isinstance(node, MergedDir):
            with self.lock:
                self.ensure_upper_dir(node)
            return
        with self._copying[node.ino % COPY_LOCKS]:
            if node.source is self.upper:
                return
            rel = node.rel
            info = self.static.stat(rel)
            if info is None:
                raise _gone(rel)
            staged = self.upper.stage_copy(self.static, rel, info, data)
            try:
                with self.lock:
                    if node.place is None or node.rel != rel or node.source is self.upper:
                        raise _gone(rel)                 # deleted or moved meanwhile
                    parent = node.place[0]
                    above = self.ensure_upper_dir(parent)
                    count = self.count_before(parent)
                    self.upper.place_copy(staged, rel)
                    staged = None
                    self.keep_times(parent, above)
                    self.count_after(parent, count, 0)
                    if isinstance(node, MergedFile):
                        node.links = None                # other static names stay the static file
                    self.rekey(node, self.upper, self.upper.stat(rel))
            finally:
                if staged is not None:
                    self.upper.drop_copy(staged)

    def whiteout(self, parent: "MergedDir", name: str) -> None:
        self.ensure_upper_dir(parent)
        self.upper.touch(_join(parent.rel, whiteout_name(name)))
        self.changed()

    def clear_whiteout(self, rel: str) -> bool:
        parent, _, name = rel.rpartition("/")
        marker = _join(parent, whiteout_name(name))
        if self.upper.stat(marker) is not None:
            self.upper.unlink(marker)
            self.changed()
            return True
        return False

    def make_opaque_if_static(self, rel: str) -> None:
        """A directory made or moved where the static root has one: the static entries
        must not show through it."""
        st = self.static.stat(rel)
        if st is not None and stat.S_ISDIR(st.mode):
            self.upper.touch(_join(rel, OPAQUE))
            self.changed()

    def opaque(self, rel: str) -> bool:
        return self.upper.stat(_join(rel, OPAQUE)) is not None

    # -- derived views ---------------------------------------------------------------------
    def derived(self, rel: str, infos: dict[str, Attr]) -> list[tuple[str, Node, str | None]]:
        """(name, node, its source's name if in this folder) of the derived files of a
        directory (never shadowing a real name), given what its entries show
        (`derive.listing` gives what a source elsewhere shows, if it knows)."""
        if self.derive is None:
            return []
        keys: dict[str, tuple] = {}         # each source's version, once for all its views
        wanted = []
        for name, source, make, info, kept in self.derive.listing(rel, infos):
            if name not in infos:
                folder, _, base = source.rpartition("/")
                here = folder == rel
                info = info or (infos.get(base) if here else None)
                key = keys.get(source)
                if key is None:
                    key = keys[source] = self.source_key(source, info)
                wanted.append((name, source, make, info, key, base if here else None, kept))
        return [(name, node, base) for (name, *_, base, _), node in zip(wanted, self._derived_nodes(rel, wanted))]

    def listed_before(self, rel: str, names, views: list[tuple[str, Node, str | None]]) -> dict[str, str]:
        """{name: the name of folder rel it is listed just before}: a view before its source,
        a folder that shows views of a sibling's files before that sibling. A view goes with
        its source and unlinking one is a no-op: a tool that removes in listing order (`rm
        -r`, `mv` copying across the overlay) then never meets a view its source took away."""
        before = {name: source for name, _, source in views if source is not None}
        return before | self.derive.folders_showing(rel, names) if self.derive is not None else before

    def derived_lookup(self, rel: str, name: str) -> Node | None:
        """One derived file by name: only its own source is looked at (one stat: what it
        shows makes the node and its key)."""
        if self.derive is None:
            return None
        found = self.derive.lookup(rel, name)
        if found is None:
            return None
        source, make, info, kept = found
        return self._derived_nodes(rel, [(name, source, make, info, self.source_key(source, info), None, kept)])[0]

    def view_at(self, rel: str) -> Node | None:
        """The derived view named rel, made again if a change its source did not make
        dropped it (a tomogram's metadata: STAR views): the kernel, told without waiting,
        may still name it, and `rm -r` unlinks what it listed."""
        node = self._derived.get(rel)
        return node if node is not None else self.derived_lookup(*rel.rpartition("/")[::2])

    def _derived_nodes(self, rel: str, wanted: list[tuple]) -> list[Node]:
        """The nodes of derived files of folder rel, each (name, source, make, what the
        source shows, its `source_key`, _, its `KeptTogether`): those missing, or of another version of their
        source, placed under one hold of the table's lock for the whole folder (not one a
        view) as `DerivedFile`s, each made (`make(info)`) when first asked for more than
        its name and type."""
        prefix, derived = _join(rel, ""), self._derived
        out, added, new = [], {}, []
        with self._table:
            for name, source, make, info, key, _, kept in wanted:
                path = prefix + name
                node = derived.get(path)
                if node is None or node.source_key != key:      # (one placed meanwhile by another thread stays)
                    if node is not None:        # (kept by the mount: it lets go of its listing's sizes)
                        node._kept = None
                    node = DerivedFile(self, make, info, key, path, kept)
                    new.append((source, node))
                out.append(node)
            self.add_all([node for _, node in new])             # (numbered before anyone finds them)
            for source, node in new:
                derived[node.derived_path] = node
                added.setdefault(source, set()).add(node.derived_path)
            for source, paths in added.items():
                self._derived_by_source[source] = self._derived_by_source.get(source, frozenset()) | paths
        return out

    def holds_view(self, at: str, rel: str, info: Attr) -> bool | None:
        """Whether the overlay's file rel (as `info` shows it) holds exactly the bytes the
        view named `at` serves now (a copy of that view); None if there is no such view."""
        folder, _, name = at.rpartition("/")
        found = self.derive.lookup(folder, name) if self.derive is not None and stat.S_ISREG(info.mode) else None
        if found is None:
            return None
        _, make, shown, _ = found
        handle = self.upper.open_read(rel)
        try:
            return _same_bytes(make(shown), info.size, handle.read)
        finally:
            handle.release()

    def kept_at_view(self, rel: str) -> None:
        """A real file written or renamed to rel, a name a view takes (or will once its
        source is there), not holding that view's bytes now: dropped once the view comes
        to serve them (`drop_view_copies`: `rsync -a` of a run copies Picks/'s CSV views
        before the picks files they are made of)."""
        folder, _, name = rel.rpartition("/")
        sources = tuple(self.derive.sources_of(folder, name)) if self.derive is not None else ()
        if sources:
            self._view_copies.add(rel, sources)

    def drop_view_copies(self, changed: str, following: list[str]) -> None:
        """The remembered real files at views' names whose views `changed` (a path) may
        change (made of it, or among `following`: its `derive.views_following`): each that
        now holds its view's bytes is removed, the view shows again. A store is looked at as
        a whole when its own folder changes (`cp -a` and `rsync -a` set its times last), not
        at each of its files."""
        for rel in self._view_copies.following(changed, following):
            info = self.upper.stat(rel)
            try:
                if info is None or not self.holds_view(rel, rel, info):
                    continue
            except Exception as exc:        # (a view that fails to make: the file stays)
                log.info("%s not compared with its view: %s", rel, exc)
                continue
            parent, name = self._node_at(rel.rpartition("/")[0]), rel.rpartition("/")[2]
            with self.lock:                 # (only the file compared: not one renamed there meanwhile)
                now = self.upper.stat(rel)
                if not isinstance(parent, MergedDir) or not _unchanged(info, now):
                    continue
                parent.unlink(name)
            self._view_copies.forget(rel)
            log.info("%s held its view's bytes: removed, the view shows", rel)
            self.report(parent.ino, entries=((parent.ino, name),), waited=False)

    def source_key(self, rel: str, info: Attr | None = None):
        """What a derived file's content depends on: its source's path, size and time."""
        if info is None:
            shown = self.shown(rel)
            info = shown[1] if shown else None
        return (rel, info.size, info.mtime_ns) if info else (rel, None, None)

    # -- changes seen in the overlay -----------------------------------------------------------
    def overlay_changed(self, changes: dict[str | None, set[str]], waited: bool = False,
                        followed: dict[str, list[str]] | None = None) -> None:
        """The overlay watch saw names change in these directories (None: events were lost,
        anything may have): the kernel is told to drop each directory's listing and
        attributes, the names, the nodes they showed, the derived views made of them, and the
        listings of folders that show views of files in these directories
        (`derive.folders_following`). From the watch's thread (no request waits for it), or
        from a request that made such a change itself (an import: `waited`); costs a stat or
        two per name, the listings `derive.views_following` reads, and a comparison of any
        file kept at a view's name with its view (`drop_view_copies`). `followed`: the
        views_following of changed paths the caller read already (not read again)."""
        with self.lock:     # a change through the mount seen half-done (an unlinked file's
            pass            # whiteout not yet written) ends first: what shows is then its outcome
        self.changed()
        if None in changes:
            self.report(*(node.ino for node in list(self._by_key.values()) + list(self._derived.values())),
                        waited=waited)
            return
        inodes: set[int] = set()
        entries: set[tuple[int, str]] = set()
        known, followed = followed or {}, {}        # path -> its views_following (read once)
        for rel, names in changes.items():
            parent = self._node_at(rel)
            following = self.derive.folders_following(rel) if self.derive is not None else []
            for node in [parent, *map(self._node_at, following)]:
                if node is not None:
                    inodes.add(node.ino)
            for name in names:
                path = _join(rel, name) if name else rel
                child = self._node_at(path) if name else None
                if child is not None:
                    inodes.add(child.ino)
                if parent is not None and name:
                    entries.add((parent.ino, name))
                followed[path] = (known[path] if path in known else
                                  self.derive.views_following(path) if self.derive is not None else [])
                for view in followed[path]:
                    with self._table:                 # made again when next asked for
                        node = self._derived.pop(view, None)
                    folder = self._node_at(view.rpartition("/")[0])
                    if node is not None:
                        inodes.add(node.ino)
                        if folder is not None:
                            entries.add((folder.ino, view.rpartition("/")[2]))
                for changed in _ancestors(path):              # a store's views follow its files
                    views = self._derived_by_source.get(changed, ())
                    # the name of a view whose source is gone stays known to the kernel until
                    # it lets go of it (so that `rm -r` of a folder can delete it: a no-op)
                    source_shows = bool(views) and self.shown(changed) is not None
                    for view in views:
                        node = self._derived.get(view)
                        folder = self._node_at(view.rpartition("/")[0])
                        if node is not None:
                            inodes.add(node.ino)
                        if folder is not None:
                            inodes.add(folder.ino)
                            if source_shows:
                                entries.add((folder.ino, view.rpartition("/")[2]))
        self.changes_reported += len(inodes) + len(entries)
        self.report(*inodes, entries=tuple(entries), waited=waited)
        if self._view_copies:
            for path, following in followed.items():
                self.drop_view_copies(path, following)

    def _node_at(self, rel: str) -> "MergedNode | None":
        """The node the kernel may hold for what rel shows, if one was made."""
        if not rel:
            return self.root
        for root in (self.upper, self.static):
            info = root.stat(rel)
            node = self.known(root, rel, info) if info is not None else None
            if node is not None:
                return node
        return None

    # -- the kernel's references -------------------------------------------------------------
    def forget(self, ino: int) -> None:
        """The kernel let go of ino. A deleted node goes at once; another waits among the
        `idle_nodes` most recently forgotten (a walk done again reuses them), then goes:
        a walk over millions of files keeps no table of them. This runs in the trio
        thread: each step is one dict operation, no lock (at worst a file gets a second
        node), but for the derived views' two tables, kept in step under `_table` (held
        only for dict operations)."""
        node = self.get(ino)
        if node is None or node is self.root or not isinstance(node, (MergedNode, DerivedFile)):
            return                                   # the root, the virtual config
        if isinstance(node, MergedNode) and node.place is None:
            self.discard(ino)
            return
        self._idle[ino] = node
        while len(self._idle) > self.idle_nodes:
            old_ino, old = self._idle.popitem(last=False)
            if isinstance(old, MergedNode):
                if self._by_key.get(old.key) is old:
                    self._by_key.pop(old.key, None)
            else:
                with self._table:                    # (`_derived_nodes` updates both in a thread)
                    if self._derived.get(old.derived_path) is old:
                        self._derived.pop(old.derived_path, None)
                        source = old.source_key[0]
                        made_of = self._derived_by_source.get(source, frozenset()) - {old.derived_path}
                        if made_of:
                            self._derived_by_source[source] = made_of
                        else:
                            self._derived_by_source.pop(source, None)
            self.discard(old_ino)

    def adopt(self, node: Node) -> None:
        if self._idle.pop(node.ino, None) is not None:
            return                                   # still here: the kernel knows it again
        if self._fixed.get(node.ino) is not node and self.get(node.ino) is not node:   # let go while a lookup was finding it
            self.alias(node.ino, node)
            if isinstance(node, MergedNode) and node.place is not None:
                self._by_key.setdefault(node.key, node)

    statvfs_blocks = True

    def statvfs(self) -> os.statvfs_result | None:
        return self.upper.statvfs()

    def status(self) -> dict:
        return {"static": self.static.describe(), "overlay": self.upper.describe(), "nodes": len(self._by_key),
                "nodes_forgotten_kept": len(self._idle),
                "listings_scanned_ahead": {"used": self.scan_ahead.used, "unused": self.scan_ahead.unused},
                "directories_warmed": self.warmer.warmed if self.warmer else 0,
                "small_files_read_ahead": self.small_reads.read_ahead, "small_files_given": self.small_reads.given,
                "overlay_watched": self.watch is not None,
                **({"overlay_watch": {"unwatched": self.watch.unwatched, "overflows": self.watch.overflows,
                                      "changes_reported": self.changes_reported}} if self.watch else {}),
                **{f"{side}_{key}": value for side, root in (("static", self.static), ("overlay", self.upper))
                   for key, value in root.status().items()}}

    def close(self) -> None:
        super().close()
        if self.watch is not None:
            self.watch.close()
        for root in {id(r): r for r in (self.static, self.upper)}.values():
            root.close()


class MergedNode(Node):
    """A file, link, special file or directory of the merged view."""
    __slots__ = ("tree", "ino", "kind", "place", "source", "key")
    set_attr_blocks = True      # (a copy-up, then the overlay's file)

    def __init__(self, tree: OverlayTree, place: tuple["MergedDir | None", str]):
        self.tree = tree
        self.place = place          # (parent, name); None once deleted

    @property
    def rel(self) -> str:
        place = self.place
        if place is None:
            raise _gone("a deleted file")
        parent, name = place
        return _join(parent.rel, name) if parent is not None else name

    def found_at(self, parent: "MergedDir", name: str, nlink: int) -> None:
        self.place = (parent, name)

    def drop_place(self, parent: "MergedDir", name: str) -> None:
        if self.place == (parent, name):
            self.place = None

    def move_place(self, old: tuple, new: tuple) -> None:
        self.place = new

    def attr(self) -> Attr:
        info = self.source.stat(self.rel)
        if info is None:
            raise _gone(self.rel)
        return info

    def set_attr(self, mode: int | None = None, mtime_ns: int | None = None, *, atime_ns: int | None = None,
                 uid: int | None = None, gid: int | None = None, handle: FileHandle | None = None) -> None:
        """Through `handle` if it is open on the overlay's copy (fchmod after unlink),
        else by name, after a copy-up."""
        self.tree.edited()
        if handle is None or self.opened_on(handle) is not self.tree.upper:
            handle = self.upper_handle() if self.place is None else None     # fchmod after unlink
            if handle is None:
                self.tree.copy_up(self)
        self.tree.upper.set_attr(self.rel if handle is None else "", handle, mode, uid, gid, atime_ns, mtime_ns)

    def opened_on(self, handle: FileHandle) -> Root | None:
        """The root a handle of this node reads (None: not one of its handles)."""
        return None

    def upper_handle(self) -> FileHandle | None:
        """A handle open on the overlay's copy, if there is one."""
        return None


#: bytes compared at a time between a file and the view whose name it takes
VIEW_COMPARED = 1 << 20
#: the real files at views' names remembered to be dropped once their view serves their bytes
VIEW_COPIES_KEPT = 4096
#: derived files made at once from different listings; one file's makers wait for each other (striped)
MAKING_LOCKS = 64
_making = [threading.Lock() for _ in range(MAKING_LOCKS)]


class _NotKept:
    """What a `DerivedFile` keeps of its listing's kept sizes once its own was not among
    them: asked again, still none (it is not made for a size asked ahead: `size_if_kept`)."""

    def size(self, name: str) -> None:
        return None

    size_nowait = size


_NOT_KEPT = _NotKept()


class _WhenAsked:
    """A listing's kept sizes (`KeptTogether`) as a `DerivedFile` left unsized in listings
    uses them (`sized_when_asked`): its own size asked finds it there, a listing does not."""
    __slots__ = ("kept",)

    def __init__(self, kept):
        self.kept = kept

    def size(self, name: str) -> int | None:
        return self.kept.size(name)

    def size_nowait(self, name: str) -> None:
        return None


class DerivedFile(File):
    """A derived file (`OverlayTree.derive`) as its folder's listing or a lookup placed it:
    its own inode number and what makes it, the node that serves it (a copick view, with
    its kept size and renderer) made by `make(info)` at the first request for more than its
    name and type (a cold `find` lists tens of thousands of views and asks none). A view
    whose size was kept (`kept`: a `KeptTogether` of its listing) answers its attributes
    from there, still unmade (`ls -lR`, `du` of views sized before), as a read-only file
    with its source's time (`info`), as the node would. Slots: a mount keeps one per view
    listed."""
    __slots__ = ("ino", "tree", "source_key", "derived_path", "_make", "_info", "_file", "_kept", "_size", "_attr")
    takes_own_bytes_back = True         # (`_ViewWriteHandle`)

    def __init__(self, tree: "OverlayTree", make, info: Attr | None, source_key: tuple, derived_path: str,
                 kept=None):
        self.tree, self._make, self._info, self._file = tree, make, info, None
        self.source_key, self.derived_path = source_key, derived_path
        self._kept, self._size, self._attr = kept, None, None

    def made(self, wait: bool = True) -> File | None:
        """The node that serves this file, made once (numbered as this one: it reports
        itself by its number when a kept size proves wrong). A kept size the kernel was
        told goes to the node (`told`: its content of another size is reported), also
        one told while it was made: placed, then the size looked at again, as `_told`
        sets the size, then looks for the node (one of the two sees the other). Without
        `wait`, None if another thread is making one (the locks are striped)."""
        file = self._file
        if file is None:
            lock = _making[self.ino % MAKING_LOCKS]
            if not lock.acquire(blocking=wait):
                return None
            try:
                file = self._file
                if file is None:
                    file = self._make(self._info)
                    file.ino = self.ino
                    size = self._size
                    if size is not None:
                        file.told(size)
                    self._file, self._make, self._info, self._kept, self._attr = file, None, None, None, None
                    if size is None and (size := self._size) is not None:
                        file.told(size)
            finally:
                lock.release()
        return file

    def _told(self, size: int | None) -> None:
        """The kept size (None: not kept) the kernel is told, and the node's if one was
        made meanwhile (`made`). The attributes the node will give are made here, once
        (with the source's time; none where the listing never knew the source): a walk's
        listing then gives them with no call (`cached_attr`), often in the loop; stored
        before the node is looked for, as `made` places the node before dropping them
        (one of the two sees the other: a node made meanwhile gives its own)."""
        info = self._info
        self._size, self._kept = size, None if size is not None else _NOT_KEPT
        self._attr = None if info is None else view_attr(size, info.mtime_ns)
        file = self._file
        if file is not None:
            self._attr = None
            if size is not None:
                file.told(size)

    def attr(self) -> Attr:
        self.tree.size_asked_at = time.monotonic()
        if self._file is None:
            self._size_from_kept()          # (asked once: a size kept, else the node is made)
            attr = self._attr
            if attr is not None:
                return attr
        return self.made().attr()

    def cached_attr(self) -> Attr | None:
        attr = self._attr
        if attr is not None:
            return attr
        file = self._file
        if file is not None:
            return file.cached_attr()
        self._size_from_kept(wait=False)
        return self._attr

    def _size_from_kept(self, wait: bool = True) -> None:
        """Its size from its listing's kept sizes (`KeptTogether`), if it has them and no
        node yet; `wait=False`: only if they were looked up already (no I/O). Looked up
        once: not kept, it is unsized (`_NOT_KEPT`) until its node is made."""
        kept = self._kept
        if kept is None or self._file is not None:
            return
        name = self.derived_path.rpartition("/")[2]
        if wait:
            self._told(kept.size(name))
        elif (size := kept.size_nowait(name)) is not None:
            self._told(size)

    def size_if_kept(self) -> None:
        """Its size looked up where sizes are kept, by a thread listing ahead of a walker
        (`MergeAhead`): the walker's listing then finds its attributes in memory. Never
        rendered here: a view sized by its own node (a preview, an MRC view) gets that node
        made, which looks its kept size up; a view whose size is not kept is left unsized."""
        if self._kept is not None:
            self._size_from_kept()
        elif self._size is None:                # (a view sized by its own node: a preview, an MRC view)
            sized = getattr(self.made(), "size_if_kept", None)
            if sized is not None:
                sized()

    def sized_when_asked(self) -> bool:
        """Listed without its size until it is asked (`attr`), if its listing's kept sizes
        would size it (no node made, no size told yet): a listing made ahead leaves it so
        for a walk that stats to ask (`OverlayTree.probe_due`)."""
        kept = self._kept
        if kept is None or kept is _NOT_KEPT or self._file is not None or self._size is not None:
            return False
        if kept.__class__ is not _WhenAsked:
            self._kept = _WhenAsked(kept)
        return True

    def open(self, flags: int) -> FileHandle:
        if not writes(flags):
            return self.made().open(flags)
        if flags & os.O_ACCMODE != os.O_WRONLY or flags & os.O_APPEND:
            raise read_only(self.derived_path)
        folder, _, name = self.derived_path.rpartition("/")
        found = self.tree.derive.lookup(folder, name)
        if found is None:
            # its source is gone (the kernel still knows the name): what is written is a
            # new file's, an import if the name takes one (saved picks copied back in)
            imported = self.tree.imports(folder, name) if self.tree.imports is not None else None
            if imported is None:
                raise read_only(self.derived_path)
            return imported.open(flags)
        if self.tree.source_key(found[0], found[2]) != self.source_key:
            raise read_only(self.derived_path)      # (another version of the view: asked again)
        return _ViewWriteHandle(self, truncated=bool(flags & os.O_TRUNC))

    def open_nowait(self, flags: int) -> FileHandle | None:
        if writes(flags):
            return None
        file = self._file
        if file is None and self._info is not None:     # (made with what the listing showed: no I/O)
            file = self.made(wait=False)
        return None if file is None else file.open_nowait(flags)

    def truncate(self, size: int) -> None:
        self.made().truncate(size)


class _ViewCopies:
    """The plain files at views' names to drop once their view serves their bytes
    (`OverlayTree.kept_at_view`), by path and by the sources their views are made of; at
    most VIEW_COPIES_KEPT, the oldest forgotten."""

    def __init__(self):
        self._sources: OrderedDict[str, tuple[str, ...]] = OrderedDict()
        self._by_source: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self._sources)

    def add(self, rel: str, sources: tuple[str, ...]) -> None:
        with self._lock:
            self._forget(rel)
            self._sources[rel] = sources
            for source in sources:
                self._by_source.setdefault(source, set()).add(rel)
            while len(self._sources) > VIEW_COPIES_KEPT:
                self._forget(next(iter(self._sources)))

    def forget(self, rel: str) -> None:
        with self._lock:
            self._forget(rel)

    def following(self, changed: str, views) -> list[str]:
        """Those whose view is made of `changed`, or is among `views`."""
        with self._lock:
            return [rel for rel in views if rel in self._sources] + list(self._by_source.get(changed, ()))

    def _forget(self, rel: str) -> None:
        for source in self._sources.pop(rel, ()):
            rels = self._by_source[source]
            rels.discard(rel)
            if not rels:
                del self._by_source[source]


def _unchanged(before: Attr, now: Attr | None) -> bool:
    """Whether a file stat'ed again is the one compared (reading it moved only its atime)."""
    return now is not None and before._replace(atime_ns=None) == now._replace(atime_ns=None)


def _same_bytes(view: File, size: int, read) -> bool:
    """Whether `size` bytes (`read(offset, n)`) are what `view` serves, block by block."""
    if view.attr().size != size:
        return False
    handle = view.open(os.O_RDONLY)
    try:
        return all(handle.read(offset, VIEW_COMPARED) == read(offset, min(VIEW_COMPARED, size - offset))
                   for offset in range(0, size, VIEW_COMPARED))
    finally:
        handle.release()


class _ViewWriteHandle(FileHandle):
    """A view opened to write (`cp` onto it, `rsync --inplace`): a write is taken only if
    its bytes are the view's own at that offset, a truncate only to the view's size (or to
    0 by O_TRUNC: then the whole view must be written back by close); anything else is
    EROFS. Nothing is stored. At release the kernel is told to drop what it cached of the
    file (the size an O_TRUNC set, the pages written)."""
    flush_blocks = release_blocks = True

    def __init__(self, node: DerivedFile, truncated: bool):
        self._node, view = node, node.made()
        self._size, self._view = view.attr().size, view.open(os.O_RDONLY)
        # the bytes written back from offset 0 without a gap (a gap would read as zeros)
        self._truncated, self._covered = truncated, 0

    def write(self, offset: int, data: bytes) -> int:
        if self._size is None or offset + len(data) > self._size or self._view.read(offset, len(data)) != data:
            raise read_only(self._node.derived_path)
        if offset <= self._covered:
            self._covered = max(self._covered, offset + len(data))
        return len(data)

    def truncate(self, size: int) -> None:
        if size == 0 and self._covered == 0:
            self._truncated = True          # (O_TRUNC as the kernel sends it: a truncate first)
        elif size != self._size:
            raise read_only(self._node.derived_path)

    def flush(self) -> None:
        if self._truncated and self._covered != self._size:
            raise read_only(self._node.derived_path)

    def release(self) -> None:
        self._view.release()
        self._node.tree.report(self._node.ino)


class MergedSpecial(MergedNode):
    """A FIFO, socket or device node (the kernel serves its opens itself)."""
    __slots__ = ()


class MergedLink(MergedNode, Symlink):
    __slots__ = ()
    target_blocks = True

    @property
    def target(self) -> str:
        return self.source.readlink(self.rel)


class MergedFile(MergedNode, File):
    """A regular file: its other names (hard links) and its open handles are known."""
    __slots__ = ("links", "_open")

    def __init__(self, tree: OverlayTree, place: tuple):
        super().__init__(tree, place)
        self.links: set[tuple] | None = None              # names besides `place`
        self._open: weakref.WeakKeyDictionary | None = None   # handle: the root it reads

    def found_at(self, parent: "MergedDir", name: str, nlink: int) -> None:
        place = (parent, name)
        if place == self.place:
            return
        if nlink > 1 and self.place is not None:
            self.links = (self.links or set()) | {self.place}
        self.place = place

    def drop_place(self, parent: "MergedDir", name: str) -> None:
        place = (parent, name)
        if self.links:
            self.links.discard(place)
        if self.place == place:
            self.place = self.links.pop() if self.links else None

    def move_place(self, old: tuple, new: tuple) -> None:
        self.drop_place(*old)
        if self.place is not None:
            self.links = (self.links or set()) | {self.place}
        self.place = new

    def attr(self) -> Attr:
        """From the backing file by name, or (deleted, or replaced) from a handle open on it."""
        if self.place is not None:
            info = self.source.stat(self.rel)
            if info is not None and self.tree.key_of(self.source, self.rel, info) == self.key:
                return info
        for handle, root in list((self._open or {}).items()):
            info = root.handle_attr(handle)
            if info is not None and root is self.source:
                return info
        raise _gone("a deleted file")

    def opened_on(self, handle: FileHandle) -> Root | None:
        return None if self._open is None else self._open.get(handle)

    def upper_handle(self) -> FileHandle | None:
        for handle, root in list((self._open or {}).items()):
            if root is self.tree.upper and root.handle_attr(handle) is not None:
                return handle
        return None

    def _track(self, handle: FileHandle, root: Root) -> FileHandle:
        if self._open is None:
            self._open = weakref.WeakKeyDictionary()
        self._open[handle] = root
        return handle

    def open(self, flags: int) -> FileHandle:
        if (flags & os.O_ACCMODE) == os.O_RDONLY:
            source = self.source
            return self._reading(source, source.open_read(self.rel))
        self.tree.copy_up(self, data=not flags & os.O_TRUNC)
        handle = self.tree.upper.open_write(self.rel, flags)
        if self.tree.derive is not None:
            handle = _ViewSourceHandle(handle, self.tree, self.rel, written=bool(flags & os.O_TRUNC))
        self.tree.writing(handle)
        return self._track(handle, self.tree.upper)

    def open_nowait(self, flags: int) -> FileHandle | None:
        if (flags & os.O_ACCMODE) != os.O_RDONLY or self.place is None:
            return None
        source = self.source
        try:
            handle = source.open_read_cached(self.rel)
        except OSError:
            return None                              # the thread decides
        return None if handle is None else self._reading(source, handle)

    def _reading(self, source: Root, handle: FileHandle) -> FileHandle:
        """The node's read handle of its backing file, with the bytes read ahead with a
        sibling's (`SmallSiblings`) if they were held for it."""
        held = None
        if self.place is not None:
            held = self.tree.small_reads.take(source, self.rel, lambda: source.handle_attr(handle))
        return self._track(_CountsSmallReads(handle, self) if held is None else _HeldBytes(handle, source, *held), source)

    def truncate(self, size: int) -> None:
        self.tree.edited()
        self.tree.copy_up(self, data=size > 0)
        self.tree.upper.truncate(self.rel, size)


class _CountsSmallReads:
    """A read handle of a merged file whose cold whole reads tell `SmallSiblings` (a READ
    in a worker thread is one the page cache could not answer). Everything else is the
    handle's own."""

    def __init__(self, handle: FileHandle, node: MergedFile):
        self._handle, self._node = handle, node

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def read(self, offset: int, size: int) -> bytes:
        data = self._handle.read(offset, size)
        node = self._node
        if offset == 0 and len(data) < size and node.place is not None:
            node.tree.small_reads.read_whole(node.source, node.rel, len(data))
        return data


class _HeldBytes:
    """A read handle of a merged file opened with its bytes read ahead (`SmallSiblings`):
    a READ is answered with them while the open file shows what it showed when they were
    read (its fstat's `kept_sizes.identity`) and until one served their end, then, as any
    open of the file, by the file (changed behind the mount or through it). The backing
    file's atime does not move for what the bytes answer (README). Everything else is the
    handle's own."""

    def __init__(self, handle: FileHandle, root: Root, data: bytes, known: tuple):
        self._handle, self._root, self._data, self._known = handle, root, data, known

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def _held(self, offset: int, size: int) -> bytes | None:
        """The bytes asked for if held (the last of them: dropped after)."""
        data = self._data
        if data is None or identity(self._root.handle_attr(self._handle)) != self._known:
            self._data = None
            return None
        if offset + size >= len(data):
            self._data = None
        return data[offset:offset + size]

    def read(self, offset: int, size: int) -> bytes:
        data = self._held(offset, size)
        return self._handle.read(offset, size) if data is None else data

    def cached_read(self, offset: int, size: int) -> bytes | None:
        data = self._held(offset, size)
        return self._handle.cached_read(offset, size) if data is None else data


class _ViewSourceHandle:
    """A file written where derived views may be made of it (`OverlayTree.derive`): once
    written, its flush (close, fsync) tells the kernel of the file's views and of the
    folders that list them before it returns, so that a walk right after the writer's
    close sees the views' new sizes (the overlay watch tells it too, a moment later).
    Everything else is the handle's own."""
    flush_blocks = True

    def __init__(self, handle: FileHandle, tree: OverlayTree, rel: str, written: bool):
        self._handle, self._tree, self._rel, self._written = handle, tree, rel, written

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def write(self, offset: int, data: bytes) -> int:
        self._written = True
        return self._handle.write(offset, data)

    def write_nowait(self, offset: int, data: bytes) -> int | None:
        return None

    def truncate(self, size: int) -> None:
        self._written = True
        self._handle.truncate(size)

    def flush(self) -> None:
        self._handle.flush()
        if self._written:
            self._written = False
            tree, rel = self._tree, self._rel
            folder, _, name = rel.rpartition("/")
            tree.kept_at_view(rel)          # (written before its view's source: `cp -r` of a run)
            following = tree.derive.views_following(rel)
            if rel in tree._derived_by_source or tree.derive.folders_following(folder) or following:
                tree.overlay_changed({folder: {name}}, waited=True, followed={rel: following})


def _changes_entries(method):
    """A change of a directory's entries changes its mtime (and nlink): they are learnt
    again at once, for it and for any other directory the change involved (a rename's
    target), so the kernel's next getattr of it, which default_permissions makes it send
    after every create, is answered without a worker thread."""
    @functools.wraps(method)
    def changing(self, *args, **kwargs):
        self.tree.edited()                  # (attributes learnt meanwhile are not kept)
        try:
            return method(self, *args, **kwargs)
        finally:
            self.tree.edited()
            for directory in {self, *(a for a in args if isinstance(a, MergedDir))}:
                directory.learn_attr()
    return changing


class _Snapshot:
    """One open directory handle's listing: made at offset 0 (opendir, rewinddir) and
    read on from there, so that a reader's offsets stay stable while others change the
    directory (as overlayfs does per open directory)."""

    def __init__(self, directory: "MergedDir"):
        self.directory = directory
        self._entries: list | None = None

    def entries(self, offset: int):
        if offset == 0 or self._entries is None:
            self._entries = self.directory.listing(wait=True) if self.directory.place is not None else []
        return _after(self._entries, offset)

    def entries_ready(self, offset: int):
        """`entries(offset)` if memory holds them (read on in this snapshot, or from 0 a
        listing made ahead: `MergeAhead`), else None: for the trio thread."""
        if offset:
            return None if self._entries is None else _after(self._entries, offset)
        listing = self.directory.listing(wait=False) if self.directory.place is not None else None
        if listing is None:
            return None
        self._entries = listing
        return _after(listing, 0)

    def ready_later(self, offset: int) -> tuple | None:
        """(a `Future`, seconds): once it is done, `entries_ready(offset)` may have the
        entries (a listing made ahead, under way: `MergeAhead`), worth waiting that long;
        None if none is under way."""
        if offset or self.directory.place is None:
            return None
        return self.directory.tree.scan_ahead.under_way(self.directory)


class MergedDir(MergedNode, Directory):
    """A folder of the merged view. Its attributes, once learnt (a GETATTR, its parent's
    listing, a change through the mount), are given from memory while no change came
    (`OverlayTree.edits`) and for as long as the kernel keeps attributes: a walk's GETATTRs
    of folders (the kernel asks again after each listing it read: it counts the folder's
    atime as changed) take no worker thread."""
    __slots__ = ("_known",)
    rename_flags = RENAME_NOREPLACE | RENAME_EXCHANGE

    def __init__(self, tree: OverlayTree, place: tuple):
        super().__init__(tree, place)
        self._known: tuple[int | None, float, Attr] | None = None   # (tree.edits, until, attributes)

    def attr(self) -> Attr:
        if self.place is None and self._known is not None:
            return self._known[2]                        # removed
        rel, edits = self.rel, self.tree.edits
        info = self.tree.shown_dir_exact(rel, *self.tree.top(rel))
        self.keep_attr(edits, info)
        return info

    def keep_attr(self, edits: int, info: Attr) -> None:
        """`info`, learnt since the tree's count of changes was `edits`, answers for now."""
        if self.place is not None:
            self._known = (edits, time.monotonic() + self.tree.attrs_kept_for, info)

    def learn_attr(self) -> None:
        try:
            self.attr()
        except OSError:
            self._known = None

    def cached_attr(self) -> Attr | None:
        known = self._known
        if known is not None and (known[0] is None or known[0] == self.tree.edits and time.monotonic() < known[1]):
            return known[2]
        return None

    def removed(self, info: Attr) -> None:
        """rmdir: a handle still open on it shows it with no links, and lists nothing."""
        self._known = (None, math.inf, info._replace(nlink=0))

    def set_attr(self, *args, **kwargs) -> None:
        self._known = None
        super().set_attr(*args, **kwargs)               # (which counts the change)

    # -- listing ------------------------------------------------------------------------
    def opendir(self) -> _Snapshot:
        return _Snapshot(self)

    def entries(self, offset: int):
        return _after(self.listing(wait=True), offset)

    def listing(self, wait: bool) -> list | None:
        """The listing as it is now: made ahead (`OverlayTree.listed_ahead`), or (if `wait`)
        scanned; its subfolders are listed ahead from here, in a worker."""
        listing = self.tree.listed_ahead(self, wait)
        if listing is None:
            if not wait:
                return None
            listing = self.scan()
        if self.tree.lists_ahead:
            self.tree.scan_ahead.plan(self.tree.scan_ahead.subfolders(listing))
        return listing

    def scan(self, touch: bool = True, rel: str | None = None) -> list[tuple[int, str, Node, Attr | None]]:
        """The listing as the roots show it now (`rel`: its path, where the caller has it)."""
        extra = self.tree.extra if self is self.tree.root else {}
        rel = self.rel if rel is None else rel
        prefix = rel + "/" if rel else ""
        node_for, moves, edits = self.tree.node_for, self.tree.moves, self.tree.edits
        shown = [entry for entry in self.tree.scan(rel, touch) if entry[0] not in extra]
        infos = {name: info for name, _, info in shown}
        # views' nodes first: numbered below their sources' (fts sorts big folders by inode)
        views = self.tree.derived(rel, infos)
        found = [(name, node, None) for name, node in sorted(extra.items())]
        for name, root, info in shown:
            node = node_for(self, name, prefix + name, root, info, moves=moves)
            if node.kind == stat.S_IFDIR:
                node.keep_attr(edits, info)             # (what the kernel gets from the listing)
            found.append((name, node, info))
        found += [(name, node, None) for name, node, _ in views]
        return _in_cookie_order(found, self.tree.listed_before(rel, infos, views))

    # -- names ---------------------------------------------------------------------------
    def _merged(self, name: str) -> str | None:
        """The path of name if the two roots decide what it shows (not a virtual file at
        the root, an internal name, or . and ..)."""
        if self is self.tree.root and name in self.tree.extra or internal(name) or name in (".", ".."):
            return None
        return _join(self.rel, name)

    def _unmerged(self, name: str, rel: str | None) -> Node | None:
        """What name shows when the two roots show nothing there: a virtual file at the
        root, or a derived view (rel is `_merged(name)`)."""
        if rel is None:
            return self.tree.extra.get(name) if self is self.tree.root else None
        return self.tree.derived_lookup(self.rel, name)

    def lookup_attr(self, name: str):
        rel, moves = self._merged(name), self.tree.moves
        shown = None if rel is None else self.tree.shown(rel)
        if shown is not None and shown[0] is self.tree.static and self.tree.warmer is not None:
            self.tree.warmer.missed(self.rel)             # the kernel's caches could not answer
        if shown is not None:
            return (self.tree.node_for(self, name, rel, *shown, moves=moves),
                    self.tree.shown_dir_exact(rel, *shown))
        node = self._unmerged(name, rel)                 # the roots were asked once, above
        return None if node is None else (node, node.attr())

    def lookup_attr_nowait(self, name: str):
        rel, moves = self._merged(name), self.tree.moves
        shown = None if rel is None else self.tree.shown_nowait(rel)
        if shown is None:
            return None
        root, info = shown
        if root is self.tree.upper and self.tree.real_owners and stat.S_ISDIR(info.mode) and \
                self.tree.static.exists_cached(rel) is not False:
            info = self.tree.dir_info_nowait(rel, info)  # maybe merged: counted before?
            if info is None:
                return None
        node = self.tree.node_for(self, name, rel, root, info, wait=False, moves=moves)
        return None if node is None else (node, info)

    def lookup(self, name: str):
        found = self.lookup_attr(name)
        return None if found is None else found[0]

    def _child(self, name: str) -> tuple[str, "MergedNode"]:
        """(rel, node) of an existing name (ENOENT if none, or internal)."""
        rel = self._merged(name)
        shown = None if rel is None else self.tree.shown(rel)
        if shown is None:
            raise _gone(name)
        return rel, self.tree.node_for(self, name, rel, *shown)

    def _new_name(self, name: str, owner: Owner | None) -> tuple[str, bool, Owner | None, tuple | None]:
        """Before making `name` (lock held): refuse it if reserved or taken; the overlay
        gets this directory and loses the name's whiteout. (rel, whether there was a
        whiteout, the owner the entry gets: a set-group-ID directory gives its group, and
        the link count to carry over: `count_before`)."""
        refuse_reserved(name)
        rel = _join(self.rel, name)
        tree = self.tree
        # the overlay's own copy of the name is refused by the call that makes it (O_EXCL)
        if self is tree.root and name in tree.extra or tree.static_visible(rel) and tree.static.stat(rel) \
                or tree.derived_lookup(self.rel, name) is not None:
            raise FileExistsError(errno.EEXIST, "exists", name)
        here = tree.ensure_upper_dir(self)
        if owner is not None and here.mode & stat.S_ISGID:
            owner = Owner(owner.uid, None)
        count = tree.count_before(self)
        return rel, tree.clear_whiteout(rel), owner, count

    def _make(self, name: str, owner: Owner | None, make, directory: bool = False, imports=None) -> "Node":
        """`make(rel, owner)` makes name in the overlay; a directory made where a deleted
        static one was is opaque. `imports(dir rel, name)` may answer instead with a node
        that converts what is written to it (`OverlayTree.imports`)."""
        with self.tree.lock:
            rel, was_deleted, owner, count = self._new_name(name, owner)
            imported = imports and imports(self.rel, name)
            if imported:
                return imported
            make(rel, owner)
            if directory and was_deleted:
                self.tree.make_opaque_if_static(rel)
            self.tree.count_after(self, count, 1 if directory else 0)
            return self.tree.node_for(self, name, rel, self.tree.upper, self.tree.upper.stat(rel))

    @_changes_entries
    def create(self, name: str, mode: int, owner: Owner | None = None) -> File:
        return self._make(name, owner, lambda rel, owner: self.tree.upper.create(rel, mode, owner),
                          imports=self.tree.imports)

    @_changes_entries
    def mkdir(self, name: str, mode: int, owner: Owner | None = None) -> Directory:
        return self._make(name, owner, lambda rel, owner: self.tree.upper.mkdir(rel, mode, owner), directory=True)

    @_changes_entries
    def symlink(self, name: str, target: str, owner: Owner | None = None) -> Symlink:
        return self._make(name, owner, lambda rel, owner: self.tree.upper.symlink(target, rel, owner))

    @_changes_entries
    def mknod(self, name: str, mode: int, rdev: int, owner: Owner | None = None) -> Node:
        return self._make(name, owner, lambda rel, owner: self.tree.upper.mknod(rel, mode, rdev, owner))

    @_changes_entries
    def link(self, name: str, target: Node) -> Node:
        if not isinstance(target, MergedNode) or isinstance(target, MergedDir):
            raise OSError(errno.EPERM, "directories cannot be linked", name)
        self.tree.copy_up(target)                         # as overlayfs: the link is of the copy
        with self.tree.lock:
            rel, _, _, count = self._new_name(name, None)
            self.tree.upper.link(target.rel, rel)
            self.tree.count_after(self, count, 0)
            target.found_at(self, name, 2)
            return target

    @_changes_entries
    def unlink(self, name: str) -> None:
        rel = self._merged(name)
        with self.tree.lock:
            up, st = self.tree.layers(rel) if rel is not None else (None, None)
            if up is None and st is None and rel is not None and self.tree.view_at(rel) is not None:
                return              # a derived view: nothing to delete, it goes with its source
            if up is None and st is None:
                raise _gone(name)
            if stat.S_ISDIR((up or st).mode):
                raise IsADirectoryError(errno.EISDIR, "is a directory", name)
            node = self.tree.known(self.tree.upper if up else self.tree.static, rel, up or st)
            count = self.tree.count_before(self)
            if up is not None:
                self.tree.upper.unlink(rel)
            if st is not None:
                self.tree.whiteout(self, name)
            self.tree.count_after(self, count, 0)
            if node is not None:
                self.tree.unplace(node, self, name, gone=up is None or up.nlink <= 1)

    @_changes_entries
    def rmdir(self, name: str) -> None:
        rel = self._merged(name)
        with self.tree.lock:
            up, st = self.tree.layers(rel) if rel is not None else (None, None)
            if up is None and st is None:
                raise _gone(name)
            if not stat.S_ISDIR((up or st).mode):
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", name)
            if self.tree.listing(rel):
                raise OSError(errno.ENOTEMPTY, "directory not empty", name)
            node = self.tree.known(self.tree.upper if up else self.tree.static, rel, up or st)
            count = self.tree.count_before(self)
            if up is not None:
                self.tree.upper.rmtree(rel)                   # holds only whiteouts by now
                self.tree.changed()
            if st is not None:
                self.tree.whiteout(self, name)
            self.tree.count_after(self, count, -1)
            if node is not None:
                self.tree.unplace(node, self, name, gone=True)
                node.removed(up or st)

    def _movable(self, node: "MergedNode", rel: str) -> None:
        """A directory with static entries merged in moves by copying (EXDEV, as overlayfs
        without redirects); a file or link is copied up first (outside the lock)."""
        if isinstance(node, MergedDir):
            up, st = self.tree.layers(rel)
            if st is not None and stat.S_ISDIR(st.mode) and (up is None or not self.tree.opaque(rel)):
                raise OSError(errno.EXDEV, "a directory of the static root moves by copying", rel)
        else:
            self.tree.copy_up(node)

    @_changes_entries
    def rename(self, name: str, new_parent: Directory, new_name: str, flags: int = 0) -> None:
        if not isinstance(new_parent, MergedDir):
            raise OSError(errno.EXDEV, "cross-device", new_name)
        refuse_reserved(new_name)
        old = self._merged(name)
        view = self.tree.view_at(old) if old is not None and self.tree.shown(old) is None else None
        if view is not None:
            return self._rename_derived(view, new_parent, new_name)
        old, node = self._child(name)
        if flags & RENAME_EXCHANGE:
            return self._exchange(name, node, new_parent, new_name)
        self._movable(node, old)
        new = _join(new_parent.rel, new_name)
        if not flags and isinstance(node, MergedFile) and self.tree.derive is not None \
                and self.tree.shown(new) is None and self._copy_of_view(name, old, new):
            self.tree.report(entries=((new_parent.ino, new_name),), waited=False)
            return None
        if new.startswith(old + "/"):
            raise OSError(errno.EINVAL, "a directory cannot move into itself", new_name)
        with self.tree.lock:
            up, st = self.tree.layers(old)
            if up is None or node.place is None:
                raise _gone(name)                         # deleted while being copied up
            target_up, target_st = self.tree.layers(new)
            target = target_up or target_st
            if target is not None:
                target_node = self.tree.known(self.tree.upper if target_up else self.tree.static, new, target)
                if flags & RENAME_NOREPLACE:
                    raise FileExistsError(errno.EEXIST, "exists", new_name)
                if target_node is node:
                    return                                # two names of one file: nothing to do
                self._check_replace(node, target, new)
                if stat.S_ISDIR(target.mode) and target_up is not None:
                    self.tree.upper.rmtree(new)           # empty in the view: whiteouts only
            self.tree.ensure_upper_dir(new_parent)
            self.tree.clear_whiteout(new)
            self.tree.upper.rename(old, new)
            self.tree.changed()
            if isinstance(node, MergedDir):
                self.tree.make_opaque_if_static(new)
            if st is not None:
                self.tree.whiteout(self, name)
            if target is not None and target_node is not None:
                self.tree.unplace(target_node, new_parent, new_name,
                                  gone=target_up is None or target_up.nlink <= 1 or stat.S_ISDIR(target.mode))
            self.tree.moves += 1
            node.move_place((self, name), (new_parent, new_name))
            if node.key[1] == old:                        # a root without inodes: the path is its identity
                self.tree.rekey(node, self.tree.upper, self.tree.upper.stat(new))
        if self.tree.derive is not None:
            try:                            # (the rename is done: it is not reported as failed)
                if not flags and isinstance(node, MergedFile):
                    self.tree.kept_at_view(new)
                following = self.tree.derive.views_following(new)
                if following:                                   # (rsync renames a store's metadata in)
                    self.tree.overlay_changed({new_parent.rel: {new_name}}, followed={new: following})
            except OSError as exc:
                log.warning("views following %s not told of its rename: %s", new, exc)

    def _copy_of_view(self, name: str, old: str, new: str) -> bool:
        """A file renamed onto a view's name (`rsync -a` of a run) that holds exactly that
        view's bytes is dropped, the view shows on (True); one that differs is renamed as
        any file (False)."""
        info = self.tree.upper.stat(old)
        if info is None or not self.tree.holds_view(new, old, info):
            return False
        with self.tree.lock:                # (only the file compared: not one renamed there meanwhile)
            if not _unchanged(info, self.tree.upper.stat(old)):
                return False
            self.unlink(name)
        return True

    def _check_replace(self, node: "MergedNode", target: Attr, new: str) -> None:
        source_is_dir = isinstance(node, MergedDir)
        if stat.S_ISDIR(target.mode) and not source_is_dir:
            raise IsADirectoryError(errno.EISDIR, "target is a directory", new)
        if source_is_dir and not stat.S_ISDIR(target.mode):
            raise NotADirectoryError(errno.ENOTDIR, "target is not a directory", new)
        if stat.S_ISDIR(target.mode) and self.tree.listing(new):
            raise OSError(errno.ENOTEMPTY, "target directory not empty", new)

    def _exchange(self, name: str, node: "MergedNode", new_parent: "MergedDir", new_name: str) -> None:
        """RENAME_EXCHANGE: both names are made the overlay's, then swapped in one call."""
        new, other = new_parent._child(new_name)
        old = node.rel
        self._movable(node, old)
        new_parent._movable(other, new)
        with self.tree.lock:
            if node.place is None or other.place is None:
                raise _gone(name)
            self.tree.ensure_upper_dir(self)
            self.tree.ensure_upper_dir(new_parent)
            for rel in (old, new):
                if self.tree.upper.stat(rel) is None:     # a directory shown from the static root
                    raise OSError(errno.EXDEV, "a directory of the static root moves by copying", rel)
            self.tree.upper.rename(old, new, RENAME_EXCHANGE)
            self.tree.changed()
            self.tree.moves += 1
            node.move_place((self, name), (new_parent, new_name))
            other.move_place((new_parent, new_name), (self, name))

    def _rename_derived(self, view: Node, new_parent: "MergedDir", new_name: str) -> None:
        """A derived view moved (mv copying a tree): a real file with its content, unless
        the target is the same view of the moved source already."""
        existing = new_parent.lookup(new_name)
        if existing is not None and existing is self.tree._derived.get(_join(new_parent.rel, new_name)):
            return
        handle = view.open(os.O_RDONLY)
        try:
            data = handle.read(0, 1 << 62)
        finally:
            handle.release()
        made = new_parent.create(new_name, 0o644)
        handle = made.open(os.O_WRONLY)
        try:
            handle.write(0, data)
            handle.flush()
        finally:
            handle.release()


_NODE_KINDS = {stat.S_IFDIR: MergedDir, stat.S_IFREG: MergedFile, stat.S_IFLNK: MergedLink}


_info_of = operator.itemgetter(3)         # (of a merged listing's row: None for a view)


def _size_views(rel: str, listing: list, probe: bool) -> None:
    """The views of folder rel's listing sized from kept sizes (`DerivedFile.size_if_kept`),
    in a worker; `probe`: one left unsized for the walk to ask (`OverlayTree.probe_due`)."""
    for _, name, child, info in listing:
        if info is None and isinstance(child, DerivedFile):
            if probe and child.sized_when_asked():          # (a walk that stats asks its size)
                child.tree.probed_at, probe = time.monotonic(), False
                continue
            try:
                child.size_if_kept()
            except Exception as exc:        # (that view unsized: the walker's own ask says why)
                log.debug("sizing %s/%s ahead: %s: %s", rel, name, type(exc).__name__, exc)


class MergeAhead(ScanAhead):
    """Listings of the merged folders a walker opens next (both roots, merged, their nodes
    made), each with the tree's count of changes when it began (`OverlayTree.listed_ahead`
    gives it only if no change came since, and a plan lists it again: `_stale`): the
    walker's READDIRPLUS of such a folder is answered in the trio thread. Each listing
    made plans its own subfolders, after the walker's (a depth-first walker reaches the
    chunk folders of a zarr store without waiting at each level), and, while the walk
    stats what it lists (a view's size asked within `SIZES_WANTED_FOR`), looks up its
    views' kept sizes (`DerivedFile.size_if_kept`: no view rendered), so that the walker finds
    their attributes in memory too (in the last half of that window, a view left unsized
    keeps a `du` asking: `OverlayTree.probe_due`); a `find` does not wait for that.

    Only folders shown from the static root alone are listed ahead, without moving an
    atime (the static root's are never moved): the walker's own listing of a folder the
    overlay has reads the overlay's copy, moving its atime as a plain read does, and a
    folder not listed keeps its atime. An overlay copy made after the check is a change
    (counted), so that listing is not given."""

    def subfolders(self, listing: list) -> list[MergedDir]:
        """The folders of a merged listing that may be listed ahead (shown from the static root)."""
        upper = self.root.upper
        return [node for _, _, node, info in listing if info and node.kind == stat.S_IFDIR and node.source is not upper]

    def _scan(self, node: MergedDir) -> tuple[int, list, bool, float] | None:
        """(the tree's count of changes, the listing, whether its views need no sizing,
        when it began)."""
        tree = node.tree
        edits, began = tree.edits, time.monotonic()
        if node.place is None:
            return None
        rel = node.rel                          # (once: a node's path is its parents' names)
        if tree.in_overlay(rel):
            return None
        listing = node.scan(touch=False, rel=rel)
        # the walker opens these after node: listed ahead too, so that a deep tree (a zarr
        # store's chunk folders) is ready before the walker's READDIRPLUS of each
        self.plan(self.subfolders(listing), deeper=True)
        sized = tree.sizes_wanted()
        if sized:
            _size_views(rel, listing, probe=tree.probe_due())
        return edits, listing, sized or None not in map(_info_of, listing), began     # (no view: nothing to size)

    def _mark(self) -> int:
        return self.root.edits

    def _stale(self, started: float, mark) -> bool:
        """Also one begun before a change (not given: `OverlayTree.listed_ahead`)."""
        return mark != self.root.edits or super()._stale(started, mark)
