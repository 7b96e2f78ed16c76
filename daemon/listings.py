"""What a directory listing goes on from between two readdirs.

Where the kernel caches listings it also opens directories itself (no OPENDIR, no
RELEASEDIR: `Operations.kernel_opens_dirs`), so a READDIR names only the folder and an
offset. Each listing read from offset 0 gets a snapshot of its own (`Directory.opendir`)
and a number, carried in the high bits of every offset given to the kernel: a READDIR
at such an offset goes on in the snapshot it came from, whoever sends it (the reader
itself, another reader of the kernel's cached copy once a change dropped that copy, two
readers of one folder at once), so a reader deleting what it has read skips nothing.
The latest `KEPT` listings are kept, and a folder's go when the kernel forgets it. Names
removed through the mount are marked in the listings made before (`Listing.gone`: the
daemon looks them up again), at most `GONE_KEPT` in all, beyond which the least recently
read listings go.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

#: how the file system's names are encoded (`os.fsencode`, without its call per listed name)
FS_ENCODING, FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
#: low bits of an offset given to the kernel: the backend's own offset (a position)
POSITION_BITS = 32
POSITION_MASK = (1 << POSITION_BITS) - 1
#: listing numbers wrap below this (offsets stay positive 63-bit values)
NUMBERS = 1 << (63 - POSITION_BITS)
#: listings kept for readers to go on in (each holds its folder's names as they were)
KEPT = 1024
#: names removed since their listings were made, in all kept listings
GONE_KEPT = 100_000


@dataclass
class Listing:
    """One listing being read: what it comes from (`Directory.opendir`) and the entries
    the kernel's last readdir buffer had no room for, which wait for the next readdir
    (from `pending[position]`, which sits at `offset`)."""
    reader: object
    ino: int = 0
    base: int = 0               # added to the reader's offsets in what the kernel is given
    pending: list = field(default_factory=list)
    position: int = 0
    offset: int = 0
    more: bool = False          # whether entries follow the pending ones
    end: int | None = None      # the offset where the listing was found to end
    gone: set[bytes] = field(default_factory=set)   # names removed through the mount since it was made
    lean: bool = False          # files' attributes left out where they need I/O (`LeanRule`)
    rows: list | None = None    # a lean listing's rows as fetched from offset 0 on (`record`)
    changes: int = 0            # `LeanRule.changes` when it was made
    made: float = field(default_factory=time.monotonic)

    def record(self, offset: int, rows: list, more: bool) -> bool:
        """Keep the rows fetched at `offset` if they follow those kept (a listing read in
        order from 0), to be given again (`LeanRule.replay`); True once all are kept."""
        kept = self.rows
        if kept is None:
            return False
        if offset != (kept[-1][0] if kept else 0):
            self.rows = None
            return False
        kept += rows
        return not more


class FolderListings:
    """Listings of directories the kernel opened itself, found by the offsets they gave."""

    def __init__(self, kept: int = KEPT, gone_kept: int = GONE_KEPT, dropped: Callable[[int], None] | None = None):
        self._kept, self._gone_kept = kept, gone_kept
        self._dropped = dropped             # told the folder of each listing no longer kept
        self._gone = 0                      # names in all listings' `gone`
        self._listings: OrderedDict[int, Listing] = OrderedDict()     # number -> listing
        self._numbers: dict[int, set[int]] = {}                       # folder -> its numbers
        self._next = 1

    def find(self, ino: int, offset: int, opendir: Callable[[], Listing]) -> tuple[Listing, int]:
        """The listing a readdir of folder `ino` at `offset` goes on in, and the offset in
        its reader. From 0, or in a listing no longer kept, a new one from `opendir` (the
        latter resumes at the old position in the folder as it is now: the best left to
        do)."""
        listing = self._listings.get(offset >> POSITION_BITS) if offset else None
        if listing is None or listing.ino != ino:
            listing = self._add(ino, opendir())
        else:
            self._listings.move_to_end(offset >> POSITION_BITS)
        return listing, offset & POSITION_MASK

    def names_gone(self, ino: int, names: tuple[bytes, ...]) -> None:
        """Names of folder `ino` removed or given another inode through the mount: the
        listings made before show them as they are now (`Operations._names_gone`)."""
        for number in self._numbers.get(ino, ()):
            gone = self._listings[number].gone
            before = len(gone)
            gone.update(names)
            self._gone += len(gone) - before
        while self._gone > self._gone_kept:
            self._drop(next(iter(self._listings)))

    def forget(self, ino: int) -> None:
        """The kernel forgot the folder: nobody can read on in its listings."""
        for number in self._numbers.pop(ino, ()):
            self._gone -= len(self._listings.pop(number).gone)
        if self._dropped is not None:
            self._dropped(ino)

    def __len__(self) -> int:
        return len(self._listings)

    def _add(self, ino: int, listing: Listing) -> Listing:
        number = self._next
        self._next = number + 1 if number + 1 < NUMBERS else 1
        if number in self._listings:
            self._drop(number)              # (a number wrapped round to)
        listing.ino, listing.base = ino, number << POSITION_BITS
        self._listings[number] = listing
        self._numbers.setdefault(ino, set()).add(number)
        if len(self._listings) > self._kept:
            self._drop(next(iter(self._listings)))
        return listing

    def _drop(self, number: int) -> None:
        listing = self._listings.pop(number, None)
        if listing is not None:
            self._gone -= len(listing.gone)
            if self._dropped is not None:
                self._dropped(listing.ino)
            numbers = self._numbers[listing.ino]
            numbers.discard(number)
            if not numbers:
                del self._numbers[listing.ino]


#: lookups of files listed without attributes that tell a reader which stats what it
#: lists (`ls -l`, `du`, `find -printf %s`, rsync)
LEAN_MISSES = 2
#: listings then answered with attributes, before one is answered without them again;
#: doubled at each trip that follows (a stat walk probed again), up to MAX_FULL_LISTINGS,
#: and back when two folders listed lean in a row bring no trip (a walk of names)
FULL_LISTINGS = 64
MAX_FULL_LISTINGS = 4096
#: folders last listed without attributes that lookups are counted in (the kernel may
#: keep their listings: FOPEN_CACHE_DIR)
LEAN_WATCHED = 1024
#: files listed without attributes kept (in all watched folders) to be sized together at
#: their folder's first LOOKUP
LEAN_UNSIZED = 65_536
#: rows of lean listings kept (in all folders) to give them again with attributes once a
#: trip dropped the kernel's copies (`LeanRule.replay`)
LEAN_ROWS = 100_000
#: seconds the sizes learned at a folder's first LOOKUP answer the LOOKUPs of its other
#: names (at most; a listing with attributes would have given them for the entry timeout)
ANSWERED_FOR = 5.0


class LeanRule:
    """Whether a new listing gives files whose attributes are not in memory (a view's
    size to compute, a file to stat) without them (READDIRPLUS entries with node id 0):
    a reader of names and types (`find`) then costs no such work, but a reader that
    stats each name sends a LOOKUP per name. Listings are lean until lookups come for
    what lean listings left out (`LEAN_MISSES` in the `LEAN_WATCHED` folders last listed
    so), then carry attributes for the next `FULL_LISTINGS` listings (twice as many after
    each trip that follows, up to `MAX_FULL_LISTINGS`), then probe again: a stat walk
    pays one folder's LOOKUPs per probe, a few per walk. The
    folders listed lean before are then given back (`looked_up`), for the daemon to drop
    the listings the kernel keeps of them (else `ls -l` after `find` looks up each name),
    and each such folder's next listing is its last lean one given again with the
    attributes it left out (`replay`: no new scan of the folder; `LEAN_ROWS` rows kept in
    all), unless a change was told since (`changes`) or the kernel would no longer trust
    what it gave (the tree's entry and attribute timeouts).

    The files a folder's lean listings left out are kept (`LEAN_UNSIZED` in all): its
    first LOOKUP that needs a worker sizes them all in that call (`unsized`), as a listing
    with attributes would (a backend sizes a folder's views together), and the LOOKUPs of
    the others are answered from what it found (`answer`), the listing's node and its
    attributes, as the kernel would have kept them from a listing with attributes: for
    `ANSWERED_FOR` seconds at most (and the tree's entry timeout), until the name is
    removed through the mount (`names_gone`) or the tree reports a change (`changed`)."""

    def __init__(self, enabled: bool = True, entry_timeout: float = ANSWERED_FOR,
                 attr_timeout: float = ANSWERED_FOR) -> None:
        self.enabled = enabled
        self.full_left = 0
        self.trips = 0                      # times lookups turned listings full
        self._full_next = FULL_LISTINGS     # full listings at the next trip
        self._lean_in_a_row = 0             # folders listed lean since the last trip
        self.answered = 0                   # LOOKUPs answered from a folder's first (`answer`)
        self._answered_for = min(ANSWERED_FOR, entry_timeout)
        self._watched: OrderedDict[int, dict] = OrderedDict()   # folders listed lean: name -> node unsized
        self._unsized = 0                   # nodes in those
        self._misses = 0                    # lookups of their files since the last trip
        self._answers: dict[int, tuple[float, dict]] = {}      # folder -> (until, name -> (node, attr))
        self.changes = 0                    # changes told (`changed`, `names_gone`): what was sized before is not kept
        # `changed` comes from any thread: it, `names_gone` and `sized` count or keep under
        # this lock; `answer` (the loop's path) reads `_answers` once, without it
        self._changes_lock = threading.Lock()
        self._given_for = min(entry_timeout, attr_timeout)
        self._listed: OrderedDict[int, Listing] = OrderedDict()     # folder -> its last lean listing, all rows kept
        self._replays: OrderedDict[int, Listing] = OrderedDict()    # folders a trip dropped -> that listing
        self._rows = 0                      # rows in those
        self.replayed = 0                   # listings given again (`replay`)

    def lean(self) -> bool:
        """Whether the listing being made goes lean (counts the full ones down)."""
        if not self.enabled:
            return False
        if self.full_left:
            self.full_left -= 1
            return False
        return True

    def listed_lean(self, ino: int, given: list) -> None:
        """Folder `ino` was given the names of `given`, (name, node) each, without their
        attributes (one call a reply where the reply is made on the loop; a worker's batch
        tells each name as it goes)."""
        unsized = self._watched.get(ino)
        if unsized is None:
            unsized = self._watched[ino] = {}
            self._lean_in_a_row += 1
            if self._lean_in_a_row > 2:     # (two before brought no trip: a walk of names)
                self._full_next = FULL_LISTINGS
            if len(self._watched) > LEAN_WATCHED:
                self._unsized -= len(self._watched.popitem(last=False)[1])
        room = LEAN_UNSIZED - self._unsized
        for name, node in given:
            if room <= 0:
                break
            if name not in unsized:         # (a name kept before keeps its node)
                unsized[name] = node
                room -= 1
        self._unsized = LEAN_UNSIZED - room

    def unsized(self, parent: int) -> dict:
        """The files (name -> node) of folder `parent` its lean listings left out, for the
        LOOKUP of one of them to size together; given once."""
        unsized = self._watched.get(parent)
        if not unsized:
            return {}
        self._watched[parent] = {}
        self._unsized -= len(unsized)
        return unsized

    def sized(self, parent: int, found: dict, changes: int) -> None:
        """What sizing folder `parent`'s `unsized` found: name -> (node, attributes), from
        when `changes` were told (none kept if more were told since)."""
        if found:
            with self._changes_lock:
                if changes == self.changes:
                    if len(self._answers) >= LEAN_WATCHED:
                        self._answers = {}
                    self._answers[parent] = (time.monotonic() + self._answered_for, found)

    def answer(self, parent: int, name: str):
        """(node, attributes) of a name of folder `parent` its first LOOKUP sized, if
        still valid (`sized`); else None."""
        by_folder = self._answers           # (once: `changed` may replace it meanwhile)
        answers = by_folder.get(parent)
        if answers is None:
            return None
        if time.monotonic() > answers[0]:
            by_folder.pop(parent, None)
            return None
        found = answers[1].pop(name, None)
        if found is not None:
            self.answered += 1
        return found

    def recorded(self, listing: Listing) -> None:
        """`listing` (lean) was read to the end, its rows kept (`Listing.record`): kept
        for `replay` if it gave a file without attributes."""
        rows = listing.rows
        listing.rows = None
        if int not in {row[3].__class__ for row in rows} or len(rows) > LEAN_ROWS:
            return
        self._drop_listed(listing.ino)
        while self._rows + len(rows) > LEAN_ROWS:
            self._rows -= len((self._listed or self._replays).popitem(last=False)[1].rows)
        self._listed[listing.ino] = Listing(listing.reader, listing.ino, rows=rows, changes=listing.changes,
                                            made=listing.made)
        self._rows += len(rows)

    def _drop_listed(self, ino: int) -> None:
        for kept in (self._listed, self._replays):
            old = kept.pop(ino, None)
            if old is not None:
                self._rows -= len(old.rows)

    def replay(self, ino: int) -> Listing | None:
        """The lean listing of folder `ino` to give again with attributes, if a trip
        dropped the kernel's copy and nothing changed since it was made (its reader and
        rows; given once)."""
        listing = self._replays.pop(ino, None) if self._replays else None
        if listing is None:
            return None
        self._rows -= len(listing.rows)
        if listing.changes != self.changes or time.monotonic() - listing.made > self._given_for:
            return None
        self.replayed += 1
        return listing

    def names_gone(self, folder: int, names) -> None:
        """Names of `folder` removed or renamed through the mount: not answered."""
        with self._changes_lock:
            self.changes += 1
        answers = self._answers.get(folder)
        if answers is not None:
            for name in names:
                answers[1].pop(os.fsdecode(name), None)

    def changed(self, inodes=(), entries=(), waited: bool = True) -> None:
        """The tree reports changes (`Tree.report`, maybe from a thread), or a change is
        made through the mount: nothing is answered from what was sized or listed before.
        The answers go before the count moves: whoever sees it moved finds them gone."""
        with self._changes_lock:
            self._answers = {}
            self.changes += 1

    def looked_up(self, parent: int) -> tuple[int, ...]:
        """A file of folder `parent` was looked up: the other folders listed lean, when
        that turns listings full (their kept listings are worth dropping; `parent`'s
        names are being looked up), else ()."""
        if parent not in self._watched:
            return ()
        self._misses += 1
        if self._misses < LEAN_MISSES:
            return ()
        self._misses = 0
        listed_lean = tuple(ino for ino in self._watched if ino != parent)
        self._watched.clear()
        for ino in listed_lean:
            listing = self._listed.pop(ino, None)
            if listing is not None:
                old = self._replays.pop(ino, None)
                self._rows -= len(old.rows) if old is not None else 0
                self._replays[ino] = listing
        for listing in self._listed.values():
            self._rows -= len(listing.rows)
        self._listed.clear()
        self._unsized = 0
        self.full_left, self._full_next = self._full_next, min(2 * self._full_next, MAX_FULL_LISTINGS)
        self._lean_in_a_row = 0
        self.trips += 1
        return listed_lean
