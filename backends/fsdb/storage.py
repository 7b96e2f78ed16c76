"""Where a database's files are read from: the OS, or an object store (read-only).

The database and its tree read through these few calls; writing is for local databases
only (an object store has no lock plantdb would honour, so a remote one is read-only).
"""
from __future__ import annotations

import os
import stat

from ..nodes import Attr, FileHandle, OSFileHandle


class LocalFiles:
    remote = False

    def read(self, path: str) -> bytes:
        with open(path, "rb") as fh:
            return fh.read()

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def stat(self, path: str) -> Attr:
        st = os.stat(path)
        return Attr(st.st_mode, st.st_size, st.st_mtime_ns)

    def open_read(self, path: str) -> FileHandle:
        return OSFileHandle(path)


class RemoteFiles:
    """Paths under `base` (the URL of the database) through an fsspec root: a listing
    answers the stats of what it lists (one LIST per folder), reads are ranged."""
    remote = True

    def __init__(self, root, base: str):
        self.root, self.base = root, base.rstrip("/")

    def _rel(self, path: str) -> str:
        if path != self.base and not path.startswith(self.base + "/"):
            raise FileNotFoundError(path)
        return path[len(self.base) + 1:]

    def read(self, path: str) -> bytes:
        handle = self.open_read(path)
        try:
            return handle.read(0, self.stat(path).size)
        finally:
            handle.release()

    def listdir(self, path: str) -> list[str]:
        names = self.root.listdir(self._rel(path))
        if names is None:
            raise FileNotFoundError(path)
        return names

    def stat(self, path: str) -> Attr:
        attr = self.root.stat(self._rel(path))
        if attr is None:
            raise FileNotFoundError(path)
        return attr

    def open_read(self, path: str) -> FileHandle:
        if stat.S_ISDIR(self.stat(path).mode):
            raise IsADirectoryError(path)
        return self.root.open_read(self._rel(path))
