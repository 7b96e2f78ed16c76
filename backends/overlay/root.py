"""The contract of a root: what the merge asks of the static and of the overlay side.

Paths are relative to the root ("" is the root itself), with "/" between names. Every
method may block (disk, network) unless its name ends in `_cached`: those answer only
what is known without I/O, and None means "cannot tell" (then the caller asks the
blocking twin in a worker thread). `LocalRoot` (a directory) and `FsspecRoot` (an
object store) implement it; the merge never asks which one it has.
"""
from __future__ import annotations

import os
from typing import Protocol

from ..nodes import Attr, FileHandle, Owner


class Root(Protocol):
    #: owners, modes, times, hard links and special files are real (a POSIX directory);
    #: False: owners are the daemon's and links/special files are refused
    real_owners: bool = False
    #: the nowait hooks can answer at all (a local disk's kernel caches, an object
    #: store's recent listings): the merge then tries them first
    answers_from_caches: bool = False
    #: a directory on a local disk (stats and reads are cheap)
    local_storage: bool = False

    def describe(self) -> str: ...

    # -- reading ----------------------------------------------------------------------
    def stat(self, rel: str) -> Attr | None:
        """lstat; None if missing."""

    def listdir(self, rel: str, touch: bool = True) -> list[str] | None:
        """Names (None if rel is no directory); `touch` False: without moving the
        directory's atime, where the root can."""

    def stat_many(self, rel: str, names: list[str]) -> list[Attr | None]:
        """lstat of names in directory rel."""

    def readlink(self, rel: str) -> str: ...

    def open_read(self, rel: str) -> FileHandle: ...

    def read_whole(self, rel: str, size: int) -> bytes:
        """A small file's first `size` bytes, for views made of it; a local root leaves
        its pages in the page cache (its other views read it again), where `open_read`
        drops what it brought in."""
        handle = self.open_read(rel)
        try:
            return handle.read(0, size)
        finally:
            handle.release()

    def read_small(self, folder: str, names: list[str], limit: int) -> dict[str, tuple[Attr, bytes]]:
        """The regular files among `names` in `folder` of at most `limit` bytes, read whole,
        each with what its open file showed (`SmallSiblings`); pages a read brought in are
        dropped, as `open_read`'s are. None read: only local roots read ahead."""
        return {}

    def local_path(self, rel: str) -> str | None:
        """A path the OS opens, if the root is a local directory."""
        return None

    def statvfs(self) -> os.statvfs_result | None:
        return None

    def handle_attr(self, handle: FileHandle) -> Attr | None:
        """fstat of one of this root's open handles, if it has a descriptor."""
        return None

    def status(self) -> dict:
        """The root's own counters for `scopefs status` (an object store's requests)."""
        return {}

    def close(self) -> None:
        """At unmount."""

    # -- answered from the kernel's caches, never blocking -----------------------------
    def stat_cached(self, rel: str) -> Attr | None:
        """What `stat` gives if known without I/O; FileNotFoundError if known missing."""
        return None

    def exists_cached(self, rel: str) -> bool | None:
        return None

    def open_read_cached(self, rel: str) -> FileHandle | None:
        return None

    # -- as the overlay (writable) side ------------------------------------------------
    def clear_work(self) -> None:
        """At mount: remove what copy-ups cut short left behind."""

    def work_path(self) -> str | None:
        """A local path of the work directory (hidden, emptied at every mount), where what
        is built before it shows is written (copick's tomogram imports); None where the
        root has no `local_path` (nothing is built in it: those imports are refused)."""
        return None

    def mkdir(self, rel: str, mode: int, owner: Owner | None = None) -> None: ...

    def copy_dir(self, source: "Root", rel: str, info: Attr) -> None:
        """The overlay's (empty) copy of a directory of `source`, with its owner, mode and times."""

    def create(self, rel: str, mode: int, owner: Owner | None = None) -> None: ...

    def symlink(self, target: str, rel: str, owner: Owner | None = None) -> None: ...

    def mknod(self, rel: str, mode: int, rdev: int, owner: Owner | None = None) -> None: ...

    def link(self, existing: str, rel: str) -> None: ...

    def touch(self, rel: str) -> None:
        """An empty marker file (whiteouts, opaque directories)."""

    def unlink(self, rel: str) -> None: ...

    def rmtree(self, rel: str) -> None: ...

    def rename(self, old: str, new: str, flags: int = 0) -> None:
        """flags: RENAME_NOREPLACE, RENAME_EXCHANGE (where `real_owners`)."""

    def open_write(self, rel: str, flags: int) -> FileHandle: ...

    def truncate(self, rel: str, size: int) -> None: ...

    def set_attr(self, rel: str, handle: FileHandle | None, mode: int | None = None, uid: int | None = None,
                 gid: int | None = None, atime_ns: int | None = None, mtime_ns: int | None = None) -> None:
        """chmod/chown/utimens of rel, or of the open `handle` (one of this root's)."""

    def stage_copy(self, source: "Root", rel: str, info: Attr, data: bool = True):
        """The first half of a copy-up: rel of `source` copied (content only if `data`),
        with its mode, owner and times, durably, where nobody sees it. Blocks for as long
        as the copy takes; holds no lock of the merge."""

    def place_copy(self, staged, rel: str) -> None:
        """The second half: the staged copy renamed to rel (atomic)."""

    def drop_copy(self, staged) -> None:
        """A staged copy that is not needed after all."""
