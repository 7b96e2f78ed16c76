"""Where a source's files are read from: the OS, or an object store (read-only).

Backends whose formats read through `formats.files.Files` (FSDB, imgstore) hand them
`LocalFiles` or `RemoteFiles`; these add `open_read` (a file handle for the daemon).
"""
from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
import threading
from collections import OrderedDict

from ..formats import files
from .localfiles import OSFileHandle
from .nodes import Attr, FileHandle

log = logging.getLogger(__name__)


class LocalFiles(files.LocalFiles):

    def open_read(self, path: str) -> FileHandle:
        return OSFileHandle(path)


class RemoteFiles(files.Files):
    """Paths under `base` (the source's URL) through an fsspec root: a listing answers
    the stats of what it lists (one LIST per folder), reads are ranged; a decoder that
    needs a local file gets one from the `ChunkCache`, if one is given."""
    remote = True

    def __init__(self, root, base: str, chunk_cache: "ChunkCache | None" = None):
        self.root, self.base = root, base.rstrip("/")
        self.chunk_cache = chunk_cache

    def close(self) -> None:
        self.root.close()

    def status(self) -> dict:
        """Requests made to the server, and the chunk cache."""
        return {**self.root.status(),
                **(self.chunk_cache.status() if self.chunk_cache else {})}

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
        rel = self._rel(path)
        # one LIST answers for every sibling (and for a missing folder's contents)
        if rel and self.root.listdir(rel.rpartition("/")[0]) is None:
            raise FileNotFoundError(path)
        attr = self.root.stat(rel)
        if attr is None:
            raise FileNotFoundError(path)
        return attr

    def open_read(self, path: str) -> FileHandle:
        if stat.S_ISDIR(self.stat(path).mode):
            raise IsADirectoryError(path)
        return self.root.open_read(self._rel(path))

    def local_path(self, path: str) -> str:
        if self.chunk_cache is None:
            raise OSError(f"{path}: no local cache to read it from")
        return self.chunk_cache.get(path, self.stat(path).size, lambda dest: self._download(path, dest))

    def _download(self, path: str, dest: str) -> None:
        self.root.fs.get_file(self.root.full(self._rel(path)), dest)


class ChunkCache:
    """Whole objects (video chunks) kept as local files for decoders that need a path:
    at most `limit` bytes in `directory` (least recently used go first; a decoder that
    has one open keeps reading it), fetched once however many readers wait, removed at
    close."""

    def __init__(self, limit: int, parent: str | None = None):
        self.limit = limit
        self.directory = tempfile.mkdtemp(prefix="scopefs-chunks-", dir=parent)
        self.used = 0
        self.fetches = 0
        self._files: OrderedDict[str, tuple[str, int]] = OrderedDict()    # path -> (local, size)
        self._fetching: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, path: str, size: int, fetch) -> str:
        with self._lock:
            lock = self._fetching.setdefault(path, threading.Lock())
        with lock:                                  # one fetch per path at a time
            with self._lock:
                if path in self._files:
                    self._files.move_to_end(path)
                    return self._files[path][0]
            local = os.path.join(self.directory, f"{len(self._files)}-{self.fetches}-" + os.path.basename(path))
            fetch(local + ".part")
            os.rename(local + ".part", local)
            with self._lock:
                self.fetches += 1
                self._files[path] = (local, size)
                self.used += size
                while self.used > self.limit and len(self._files) > 1:
                    _, (old, old_size) = self._files.popitem(last=False)
                    os.unlink(old)
                    self.used -= old_size
                self._fetching.pop(path, None)
            return local

    def status(self) -> dict:
        return {"chunk_cache": self.directory, "chunk_cache_bytes": self.used, "chunk_cache_limit": self.limit,
                "chunk_fetches": self.fetches}

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
