"""Changes made in a local overlay root, by any program, seen through inotify.

The kernel may then keep the merged tree's listings and attributes for long: whatever
changes in the overlay (another copick client writing picks, or this daemon itself) is
told to the merge within moments (`on_change({directory rel: names})`), which reports it
to the kernel. Every directory of the overlay is watched (inotify watches one directory at
a time); a directory made or moved in is watched as soon as it is seen, and its entries
are reported, since they may have been made before its watch. If the kernel's event queue
overflows, the key None says that anything may have changed.
"""
from __future__ import annotations

import functools
import logging
import os
import threading

from inotify_simple import INotify, flags

from ..kernel import open_without_atime
from .rules import KEPT_DIR, WORK_DIR

log = logging.getLogger(__name__)

#: what changes a directory's names, or the attributes or content of what it holds. A file
#: being written counts as changed when its writer closes it: not at each write (the
#: kernel's invalidation of a file would wait for the pages of a write through the mount
#: that the daemon is answering)
EVENTS = (flags.CREATE | flags.DELETE | flags.MOVED_FROM | flags.MOVED_TO | flags.ATTRIB | flags.CLOSE_WRITE
          | flags.DELETE_SELF | flags.MOVE_SELF | flags.ONLYDIR | flags.DONT_FOLLOW)
_NEW_DIR = flags.CREATE | flags.MOVED_TO


class OverlayWatch:
    """inotify watches on every directory under `path`, read by a thread of its own;
    `on_change(changes)` is called from that thread with a batch of what changed:
    {directory rel: names} (a name "" for the directory itself)."""

    def __init__(self, path: str, on_change):
        self.path = path
        self.on_change = on_change
        self.unwatched = 0                  # directories a watch could not be added for (limits)
        self.overflows = 0
        self._inotify = INotify()
        self._dirs: dict[int, str] = {}     # watch descriptor: directory rel
        self._stop = False
        self._add_tree("")                  # before the thread: nothing is missed after mount
        self._thread = threading.Thread(target=self._run, name="scopefs-overlay-watch", daemon=True)
        self._thread.start()

    def _add_tree(self, rel: str) -> list[str]:
        """Watch rel and every directory under it; the relative paths of the entries found
        (what may have been made before their watch). Directories are read without moving
        their access times (the merged view shows them)."""
        found, pending = [], [rel]
        while pending:
            here = pending.pop()
            if here in (WORK_DIR, KEPT_DIR):    # copy-ups being staged, kept imports: never shown
                continue
            folder = os.path.join(self.path, here) if here else self.path
            try:
                self._dirs[self._inotify.add_watch(folder, EVENTS)] = here
                names = _names_noatime(folder)
            except (FileNotFoundError, NotADirectoryError):
                continue                    # gone again: its parent's event says so
            except OSError as exc:          # ENOSPC: fs.inotify.max_user_watches reached
                self.unwatched += 1
                if self.unwatched == 1:
                    log.warning("overlay %s: %s is not watched (%s): changes other programs make there "
                                "show once the kernel asks again", self.path, folder, exc)
                continue
            for name, is_dir in names:
                path = f"{here}/{name}" if here else name
                found.append(path)
                if is_dir:
                    pending.append(path)
        return found

    def _run(self) -> None:
        while not self._stop:
            try:
                events = self._inotify.read(timeout=500, read_delay=5)
            except OSError as exc:
                log.error("overlay watch of %s stopped: %s", self.path, exc)
                return
            if not events:
                continue
            changes: dict[str | None, set[str]] = {}
            for event in events:
                if event.mask & flags.Q_OVERFLOW:
                    self.overflows += 1
                    changes.setdefault(None, set())
                    continue
                rel = self._dirs.get(event.wd)
                if event.mask & flags.IGNORED:
                    self._dirs.pop(event.wd, None)
                    continue
                if rel is None:
                    continue
                changes.setdefault(rel, set()).add(event.name)
                if event.mask & flags.ISDIR and event.mask & _NEW_DIR and not (rel == "" and event.name in (WORK_DIR, KEPT_DIR)):
                    new = f"{rel}/{event.name}" if rel else event.name
                    if event.mask & flags.MOVED_TO:
                        self._forget_under(new)
                    for path in self._add_tree(new):
                        parent, _, name = path.rpartition("/")
                        changes.setdefault(parent, set()).add(name)
                elif event.mask & flags.ISDIR and event.mask & flags.MOVED_FROM:
                    self._forget_under(f"{rel}/{event.name}" if rel else event.name)
            if not changes:                  # (only IGNORED: watches removed by `_forget_under`)
                continue
            try:
                self.on_change(changes)
            except Exception:
                log.exception("reporting overlay changes failed")

    def _forget_under(self, rel: str) -> None:
        """A directory moved away (or onto): the paths its watches had are no longer theirs."""
        for wd, path in list(self._dirs.items()):
            if path == rel or path.startswith(rel + "/"):
                del self._dirs[wd]
                try:
                    self._inotify.rm_watch(wd)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=2)
        self._inotify.close()


def _names_noatime(folder: str) -> list[tuple[str, bool]]:
    """(name, is a directory) of a folder's entries, read without moving its atime where
    the daemon may (its owner, or root)."""
    fd = open_without_atime(functools.partial(os.open, folder), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with os.scandir(fd) as entries:
            return [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in entries]
    finally:
        os.close(fd)
