"""Listings of small folders prepared ahead of a walk and answered in pyfuse3's session loop.

A cold walk (find, du, ls -lR) lists every folder once: one READDIRPLUS with its entries,
each a trip through the loop's Python (the request's coroutine and `Operations.readdir`),
most of which is the fixed cost of a request. Walkers list a folder's subfolders in the
folder's order, so when the kernel asks for a subfolder's listing (offset 0), the listings
of the `AHEAD` subfolders after it that are in memory (`entries_nowait`) and fit one page
are encoded now, after the reply (`pyfuse3.readdir_prepared_reply`), and handed to pyfuse3,
which answers the kernel's READDIRPLUS of each from them (and the empty one after, as
`readdir_end_at`) without calling Python (the patch session-readdir-prepared): one
Python readdir per `AHEAD` folders of a walk instead of one per folder.

Exactness: the kernel takes a lookup reference on each entry of a READDIRPLUS reply, so
the daemon counts the entries of a reply when it prepares it (`remember`), and gives the
counts back (`give_back`, as the kernel's forget) for a reply taken back unsent: at most
`KEPT` replies of `KEPT_BYTES` in all are held, the oldest taken back first, and a
folder's is taken back when the kernel forgets the folder. A reply never shows a stale
listing: any change (a change request before and after it runs, a `Tree.report`) moves
pyfuse3's generation (`changed`, from any thread), and a reply made before is never
answered; held ones are taken back at the next preparation.
"""
from __future__ import annotations

import logging
from collections import OrderedDict, deque
from typing import Callable

import pyfuse3
import trio

from ..backends.nodes import Directory
from .listings import FS_ENCODING, FS_ERRORS

log = logging.getLogger(__name__)

#: set to 0 to list every folder through `Operations.readdir` (else small folders' listings
#: are prepared ahead of a walk and answered in the session loop)
PREPARED_ENV = "SCOPEFS_READDIR_PREPARED"
#: subfolders after the one the kernel asked for whose listings are prepared
AHEAD = 128
#: prepared replies held (answered or not: those unanswered hold lookup counts) ...
KEPT = 1024
#: ... and their bytes
KEPT_BYTES = 2 << 20
#: a prepared reply fits in the smallest READDIRPLUS the kernel sends (a page)
MAX_REPLY = 4096
#: entries a folder may have to be prepared (its listing is read whole, from memory)
MAX_ENTRIES = 24
#: subfolders whose folder and position are kept, to prepare the ones after them
PARENTS_KEPT = 1 << 17
#: times a listing from memory is tried (the tree held by a change), and the first wait in
#: between (seconds, doubled each time); twice while other listings wait
TRIES = 8
RETRY_AFTER = 0.001
#: folders whose snapshots are kept to prepare their subfolders from
READERS = 16
#: listings answered whose subfolders wait to be noted, at most (the oldest dropped); each
#: holds its reader (the folder's listing) until noted: more listings than `READERS` may be
#: held while the queue drains
REPLIES_QUEUED = 256
#: prepared folders between two points where the preparing task lets requests be answered
BETWEEN_CHECKPOINTS = 16


class PreparedListings:
    """The daemon's side of prepared READDIRPLUS replies (see the module): which are
    held and the lookups they count, where each subfolder sits in its folder's listing."""

    def __init__(self, enabled: bool, get: Callable[[int], object], dirent: Callable,
                 remember: Callable[[int, object], None], give_back: Callable[[list], None],
                 ends_in_session: bool):
        self.enabled = enabled
        self._get, self._dirent = get, dirent
        self._remember, self._give_back = remember, give_back
        self._ends = ends_in_session                # the empty READDIRPLUS after it too
        self._held: OrderedDict[int, tuple[list[int], int, int]] = OrderedDict()   # folder -> (inodes counted, bytes, `made` then)
        self._replied: deque[tuple[int, int, int, object]] = deque()    # (folder, offset, entries, its reader) answered: `listed`
        self._draining = False                      # a task works through `_replied`
        self._bytes = 0
        if enabled:                                 # (pyfuse3's replies are the module's: none made before is answered)
            pyfuse3.readdir_prepared_changed()
        self._generation = pyfuse3.readdir_prepared_mark() if enabled else 0   # what those held were made in
        self._parents: dict[int, tuple[int, int]] = {}     # subfolder -> (folder, offset after it)
        self._readers: OrderedDict[int, object] = OrderedDict()    # folder -> the snapshot its subfolders come from
        self.made = 0                               # replies prepared
        self.taken_back = 0                         # of those, taken back unsent
        self.dropped = 0                            # answered listings left unnoted (`REPLIES_QUEUED`)
        self.failed = 0                             # preparations that failed (`_failed`)
        self._last_failure: tuple[type, str] | None = None     # (type, message) of the last logged

    def changed(self, *_report) -> None:
        """What a prepared reply shows may have changed: none made before is answered
        (from any thread; also a `Tree.listen` listener)."""
        if self.enabled:
            pyfuse3.readdir_prepared_changed()

    @property
    def answered(self) -> int:
        return pyfuse3.readdir_prepared_answered() if self.enabled else 0

    def __len__(self) -> int:
        return len(self._held)

    @property
    def queued(self) -> int:
        """Answered listings whose subfolders are still to be noted or prepared after."""
        return len(self._replied) + self._draining

    def listed(self, ino: int, offset: int, listing) -> None:
        """`Operations.readdir` answered folder `ino` from `offset` (of its reader; the
        kernel opened it): its subfolders are noted and, from 0, the listings of the
        subfolders after it are prepared, by one task, in the order answered (a folder's
        subfolders noted before a walker's listing of the first one asks where it sits).
        Called only where `enabled`; never raises (the reply is made: it must be sent)."""
        nowait = getattr(type(listing.reader), "entries_nowait", None)
        if nowait is None or nowait is Directory.entries_nowait:
            return
        try:
            stop = listing.end if listing.end is not None else listing.offset if listing.pending else None
            self._replied.append((ino, offset, (stop or offset + 1024) - offset, listing.reader))
            if len(self._replied) > REPLIES_QUEUED:
                self._replied.popleft()
                self.dropped += 1
            if not self._draining:
                trio.lowlevel.spawn_system_task(self._after_replies)
                self._draining = True
        except Exception as exc:
            self._failed(ino, exc)

    def forget(self, ino: int) -> None:
        """The kernel forgot folder `ino`: its reply is taken back (on the loop)."""
        if ino in self._held:
            self._take_back(ino)

    async def _after_replies(self) -> None:
        """`listed`'s work, one reply after another, while any is left."""
        try:
            while self._replied:
                ino, offset, count, reader = self._replied.popleft()
                try:
                    self._note_subfolders(ino, await self._listed(ino, offset, count, reader))
                    if offset == 0 and ino in self._parents:
                        await self._prepare_after(ino)
                except Exception as exc:        # (a system task must not raise)
                    self._failed(ino, exc)
        finally:
            self._draining = False

    def _failed(self, ino: int, exc: Exception) -> None:
        """A preparation after folder `ino` failed with `exc` (in its `except`; the folder's
        reply is sent all the same): counted, and logged with its traceback unless it is the
        same failure (type and message) as the last one logged (one that fails every time
        would log one at every readdir; a new kind still shows its own)."""
        self.failed += 1
        failure = type(exc), str(exc)
        if failure != self._last_failure:
            self._last_failure = failure
            log.exception("preparing listings after folder %d failed (the same failure again is only "
                          "counted: prepare_failed in the status)", ino)

    def _reader(self, ino: int, answered=None):
        """The snapshot of folder `ino` that its subfolders are read from: the one the
        kernel's listing was `answered` from (its offsets; read again, never listed anew:
        a folder is listed once per listing the kernel reads, however big), else the
        last one kept, else a new one; at most `READERS` folders'."""
        reader = answered if answered is not None else self._readers.get(ino)
        if reader is None:
            directory = self._get(ino)
            if not isinstance(directory, Directory):
                return None
            reader = directory.opendir()
        self._readers[ino] = reader
        self._readers.move_to_end(ino)
        if len(self._readers) > READERS:
            self._readers.popitem(last=False)
        return reader

    async def _listed(self, ino: int, offset: int, count: int, answered=None) -> list:
        """Up to `count` entries of folder `ino` from `offset` (of `_reader`), from memory:
        tried again while a change (or a worker making views) holds the tree, `TRIES`
        times in all, or twice while other listings are queued (one held up must not hold
        them all up)."""
        reader = self._reader(ino, answered)
        if reader is None:
            return []
        tried = 1
        while (rows := reader.entries_nowait(offset, count, anew=False)) is None:
            if tried == TRIES or (tried > 1 and self._replied):
                return []
            await trio.sleep(RETRY_AFTER * 2 ** (tried - 1))
            tried += 1
        return rows

    def _note_subfolders(self, ino: int, rows: list) -> None:
        """Where the subfolders of `ino` among its entries `rows` sit."""
        self._note(ino, [(child.ino, next_offset) for next_offset, _, child, _ in rows
                         if isinstance(child, Directory)])

    def _note(self, ino: int, subfolders: list[tuple[int, int]]) -> None:
        """Subfolders of `ino`, each (inode, offset after it), sit there."""
        parents = self._parents
        for child, next_offset in subfolders:
            if len(parents) >= PARENTS_KEPT:
                parents.clear()
            parents[child] = ino, next_offset

    async def _prepare_after(self, ino: int) -> None:
        """Prepare the listings of the `AHEAD` subfolders after `ino` in its folder, up to
        the first whose listing is not in memory (a tree that makes what a folder shows
        ahead of a walk, such as the .iid's entry.json, has not come that far)."""
        parent, offset = self._parents[ino]
        rows = await self._listed(parent, offset, AHEAD)
        generation = self._swept()                  # (a stale reply is prepared again)
        done = 0
        for _, _, child, _ in rows:
            if not isinstance(child, Directory):
                continue
            held = self._held.get(child.ino)
            if held is not None:
                if self.made - held[2] < 2 * AHEAD:
                    continue                        # (prepared by this run or the one before)
                self._take_back(child.ino)          # (answered long ago, the kernel's copy since dropped)
            if not self._prepare(child, generation):
                await trio.sleep(RETRY_AFTER)       # (a change, or a worker making views, may hold the tree)
                if not self._prepare(child, generation := self._swept()):
                    return
            done += 1
            if done % BETWEEN_CHECKPOINTS == 0:
                await trio.lowlevel.checkpoint()    # (requests answered meanwhile: C or Python)
                generation = self._swept()

    def _prepare(self, folder: Directory, generation: int) -> bool:
        """Prepare `folder`'s listing if it is small, made from what the tree held in
        `generation` (`_swept` before, on this thread: a change since makes the reply
        stale); False if it is not in memory. Its entries are read twice: encoded, then
        counted as lookups once the reply fits. A folder that says it may be bigger
        (`entry_count_nowait`, which never under-counts) is not listed for it."""
        count = folder.entry_count_nowait()
        if count is not None and count > MAX_ENTRIES:
            return True
        nowait = getattr(folder.opendir(), "entries_nowait", None)
        rows = nowait(0, MAX_ENTRIES + 1) if nowait is not None else None
        if rows is None:
            return False
        if not rows or len(rows) > MAX_ENTRIES:
            return all(row[3] is not None for row in rows)
        dirent, entries, subfolders = self._dirent, [], []
        for next_offset, name, child, attr in rows:
            if attr is None:
                return False
            entries.append((name.encode(FS_ENCODING, FS_ERRORS), dirent(attr), child.ino, next_offset))
            if isinstance(child, Directory):
                subfolders.append((child.ino, next_offset))
        reply = pyfuse3.readdir_prepared_reply(entries)
        if len(reply) > MAX_REPLY:
            return True
        ino, remember, counted, held = folder.ino, self._remember, [], False
        try:                                    # (counted before C may send it)
            for _, _, child, _ in rows:
                remember(child.ino, child)
                counted.append(child.ino)
            held = pyfuse3.readdir_prepared_at(ino, 0, reply, rows[-1][0] if self._ends else -1, generation)
        finally:
            if not held:                        # (stale already, or a count failed)
                self._give_back([(child, 1) for child in counted])
        if not held:
            return True
        self._held[ino] = counted, len(reply), self.made
        self._bytes += len(reply)
        self.made += 1
        if subfolders:
            self._note(ino, subfolders)
        while len(self._held) > KEPT or self._bytes > KEPT_BYTES:
            self._take_back(next(iter(self._held)))
        return True

    def _swept(self) -> int:
        """The generation replies are made in now; those held from an older one (stale,
        never answered) taken back."""
        generation = pyfuse3.readdir_prepared_mark()
        if generation != self._generation:
            for held in list(self._held):
                if held in self._held:
                    self._take_back(held)
            self._generation = generation
        return generation

    def _take_back(self, ino: int) -> None:
        """No longer hold folder `ino`'s reply: if it was not answered, the lookups it
        counted are given back."""
        counted, size, _ = self._held.pop(ino)
        self._bytes -= size
        if pyfuse3.readdir_prepared_drop(ino):
            self.taken_back += 1
            self._give_back([(child, 1) for child in counted])
