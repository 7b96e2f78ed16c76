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

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

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


class FolderListings:
    """Listings of directories the kernel opened itself, found by the offsets they gave."""

    def __init__(self, kept: int = KEPT, gone_kept: int = GONE_KEPT):
        self._kept, self._gone_kept = kept, gone_kept
        self._gone = 0                      # names in all listings' `gone`
        self._listings: OrderedDict[int, Listing] = OrderedDict()     # number -> listing
        self._numbers: dict[int, set[int]] = {}                       # folder -> its numbers
        self._next = 1

    def find(self, ino: int, offset: int, opendir: Callable[[], object]) -> tuple[Listing, int]:
        """The listing a readdir of folder `ino` at `offset` goes on in, and the offset in
        its reader. From 0, or in a listing no longer kept, a new one (the latter resumes
        at the old position in the folder as it is now: the best left to do)."""
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

    def __len__(self) -> int:
        return len(self._listings)

    def _add(self, ino: int, reader: object) -> Listing:
        number = self._next
        self._next = number + 1 if number + 1 < NUMBERS else 1
        self._drop(number)                  # (a number wrapped round to)
        listing = self._listings[number] = Listing(reader, ino, number << POSITION_BITS)
        self._numbers.setdefault(ino, set()).add(number)
        if len(self._listings) > self._kept:
            self._drop(next(iter(self._listings)))
        return listing

    def _drop(self, number: int) -> None:
        listing = self._listings.pop(number, None)
        if listing is not None:
            self._gone -= len(listing.gone)
            numbers = self._numbers[listing.ino]
            numbers.discard(number)
            if not numbers:
                del self._numbers[listing.ino]
