"""The backend handles of files that the kernel opens without asking the daemon.

On a read-only mount the daemon answers OPEN with ENOSYS: Linux then opens every file
itself and sends neither OPEN nor RELEASE again, only READs by inode (file handle 0,
see daemon/pyfuse3-patches/read-unopened-by-inode.patch). The backends still read
through `FileHandle`s: one is opened at an inode's first read, kept for the reads that
follow, and released once a read reaches the end of the file, when the kernel forgets
the inode, or when more than `limit` files are held (least recently read first).
A handle is never released under a read in flight: its last reader releases it.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable

from ..backends.nodes import FileHandle


class Held:
    """A handle and the reads using it now."""
    __slots__ = ("handle", "readers", "dropped")

    def __init__(self, handle: FileHandle):
        self.handle = handle
        self.readers = 0
        self.dropped = False      # no longer in the table: released by its last reader


class UnopenedFiles:
    """Handles by inode, bounded. `release(handle)` must not block (the daemon's runs
    it off the request path). Used on the event loop only: no lock."""

    def __init__(self, limit: int, release: Callable[[FileHandle], None]):
        self._held: OrderedDict[int, Held] = OrderedDict()
        self._limit = limit
        self._release = release

    def __len__(self) -> int:
        return len(self._held)

    def begin(self, ino: int) -> Held | None:
        """The handle a read of `ino` uses (counted until `end`), or None: open one and `add` it."""
        held = self._held.get(ino)
        if held is None:
            return None
        self._held.move_to_end(ino)
        held.readers += 1
        return held

    def add(self, ino: int, handle: FileHandle) -> Held:
        """Keep `handle`, just opened for a read of `ino` (counted until `end`). If a read
        running meanwhile kept one first, that one is used and `handle` released."""
        held = self._held.get(ino)
        if held is not None:
            self._release(handle)
        else:
            held = self._held[ino] = Held(handle)
            while len(self._held) > self._limit:
                self._drop(next(iter(self._held)))
        held.readers += 1
        return held

    def end(self, ino: int, held: Held, at_end: bool) -> None:
        """A read of `ino` that `begin` or `add` gave `held` is over; `at_end`: it reached
        the end of the file."""
        held.readers -= 1
        if at_end and not held.dropped:
            self._drop(ino)
        elif held.dropped and not held.readers:
            self._release(held.handle)

    def forget(self, ino: int) -> None:
        """The kernel forgot `ino`: no read of it can come any more."""
        if ino in self._held:
            self._drop(ino)

    def _drop(self, ino: int) -> None:
        held = self._held.pop(ino)
        held.dropped = True
        if not held.readers:
            self._release(held.handle)
