"""An object store (any fsspec URL: s3://...) as a root.

Metadata is cached for `ttl` seconds (bounded: CACHE_ENTRIES). Reads come in blocks of
concurrent range requests (`RemoteReadHandle`); fsspec's own block caches are not used,
because they fetch one range at a time on the thread that asks, and keep no bound per
open file. As the overlay side, a written file is kept in a local temporary file and
uploaded when closed or fsynced; a failed upload is the writer's EIO, never silently
dropped. Object stores have no directories (an empty one is kept alive by a hidden
marker object), no owners or modes (the daemon's are shown, chmod and utimens are
accepted and not kept, chown to anyone else is EPERM), no hard or symbolic links and no
special files (EPERM), and no rename (copy, then delete: not atomic).
"""
from __future__ import annotations

import asyncio
import bisect
import errno
import os
import stat
import tempfile
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future

from ..nodes import Attr, FileHandle, Owner
from ..remote import CountedFilesystem, mtime_ns, public_url
from .root import Root
from .rules import DIR_MARKER

FETCH_BLOCK = 8 << 20          # a remote read fetches this much at once...
FETCH_PARTS = 2                # ...as this many concurrent range requests (none under 1 MiB)
READ_AHEAD_FILES = 8           # a reader going through a folder in order finds this many next...
READ_AHEAD_BYTES = 16 << 20    # ...objects (whole, up to FETCH_BLOCK each, this much in all) fetched...
READ_AHEAD_AGE = 5.0           # ...ahead, and takes them if it opens them within this many seconds
CACHE_ENTRIES = 200_000        # metadata entries an fsspec root remembers (about 40 MB at most)


def _position(names: list[str], name: str) -> int | None:
    """Where name is in a listing (sorted when made), or None."""
    i = bisect.bisect_left(names, name)
    return i if i < len(names) and names[i] == name else None


def _no_links(rel: str) -> OSError:
    return OSError(errno.EPERM, "object stores have no links or special files", rel)


class FsspecRoot(Root):
    """A root behind fsspec (S3 through s3fs...)."""
    answers_from_caches = True          # what listings told (within ttl) answers without I/O

    def __init__(self, url: str, fs_args: dict | None = None, ttl: float = 60.0):
        import fsspec                                   # only remote mounts need it
        fs, base = fsspec.core.url_to_fs(url, **(fs_args or {}))
        if not fs.async_impl:                           # (memory:// in unit tests)
            from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper
            fs = AsyncFileSystemWrapper(fs)
        self.fs = CountedFilesystem(fs)
        self.base = base.rstrip("/")
        self.url = url
        self.ttl = ttl
        # bounded as well as timed: the oldest entries go first past CACHE_ENTRIES
        self._info: OrderedDict[str, tuple[float, Attr | None]] = OrderedDict()
        self._dirs: OrderedDict[str, tuple[float, list[str] | None]] = OrderedDict()
        self._lock = threading.Lock()
        # objects fetched ahead for a reader going through a folder in listing order:
        # rel -> (when, size, Future of its bytes); two windows at most
        self._fetched_ahead: OrderedDict[str, tuple[float, int, Future]] = OrderedDict()
        self._last_open: tuple[str, int] = ("", -2)       # (folder, position in its listing)

    def describe(self) -> str:
        return public_url(self.url)                     # never a credential in a URL

    def status(self) -> dict:
        return {"s3_requests": dict(self.fs.requests)}

    def close(self) -> None:
        self.fs.close()

    def full(self, rel: str) -> str:
        return f"{self.base}/{rel}" if rel else self.base

    def _fresh(self, table: dict, key: str):
        with self._lock:
            hit = table.get(key)
            return hit[1] if hit and time.monotonic() - hit[0] < self.ttl else ...

    def _remember(self, table: OrderedDict, key: str, value) -> None:
        with self._lock:
            table[key] = (time.monotonic(), value)
            table.move_to_end(key)
            while len(table) > CACHE_ENTRIES:
                table.popitem(last=False)

    def invalidate(self, rel: str) -> None:
        """Forget what is known of rel and of its parent's listing (after our own writes)."""
        parent = rel.rpartition("/")[0]
        with self._lock:
            self._info.pop(rel, None)
            self._dirs.pop(parent, None)
            self._dirs.pop(rel, None)
            self._fetched_ahead.pop(rel, None)
        self.fs.invalidate_cache(self.full(parent))

    @staticmethod
    def _to_info(entry: dict) -> Attr:
        if entry.get("type") == "directory":
            return Attr(stat.S_IFDIR | 0o755, 0, 0, 2)
        return Attr(stat.S_IFREG | 0o644, int(entry.get("size") or 0), mtime_ns(entry))

    def stat(self, rel: str) -> Attr | None:
        cached = self._fresh(self._info, rel)
        if cached is not ...:
            return cached
        parent, _, name = rel.rpartition("/")
        names = self._fresh(self._dirs, parent) if rel else ...     # a listing just made answers
        if names is not ... and names is not None and _position(names, name) is None:    # for its children
            return None
        try:
            info = self._to_info(self.fs.info(self.full(rel)))
        except FileNotFoundError:
            info = None
        self._remember(self._info, rel, info)
        return info

    def listdir(self, rel: str, touch: bool = True) -> list[str] | None:
        cached = self._fresh(self._dirs, rel)
        if cached is not ...:
            return cached
        try:
            entries = self.fs.ls(self.full(rel), detail=True, refresh=True)
        except (FileNotFoundError, NotADirectoryError):
            self._remember(self._dirs, rel, None)
            return None
        names = []
        for entry in entries:
            name = entry["name"].rstrip("/").rpartition("/")[2]
            if not name or entry["name"].rstrip("/") == self.full(rel):
                continue
            names.append(name)
            self._remember(self._info, f"{rel}/{name}" if rel else name, self._to_info(entry))
        names.sort()                    # as the merged view lists them (and for _read_on's bisect)
        self._remember(self._dirs, rel, names)
        return names

    def stat_many(self, rel: str, names: list[str]) -> list[Attr | None]:
        return [self.stat(f"{rel}/{name}" if rel else name) for name in names]  # listed: cached

    def readlink(self, rel: str) -> str:
        raise OSError(errno.EINVAL, "object stores have no links", rel)

    def open_read(self, rel: str) -> FileHandle:
        info = self.stat(rel)                            # known from a listing: no HEAD again
        return self._open(rel, info.size if info else None)

    def _open(self, rel: str, size: int | None) -> "RemoteReadHandle":
        with self._lock:
            ahead = self._fetched_ahead.pop(rel, None)
        first = ahead[2] if ahead and time.monotonic() - ahead[0] < READ_AHEAD_AGE else None
        handle = RemoteReadHandle(self, self.full(rel), size, first)
        self._read_on(rel)
        return handle

    def fetch(self, path: str, start: int, end: int, parts: int) -> Future:
        """Bytes start..end of an object as up to `parts` concurrent range requests of at
        least 1 MiB each, run on fsspec's event-loop thread (a concurrent Future: nobody
        waits for it unless they need it)."""
        fs = self.fs
        step = max(-(-(end - start) // parts), 1 << 20)
        ranges = [(s, min(s + step, end)) for s in range(start, end, step)]

        async def fetch() -> bytes:
            data = b"".join(await asyncio.gather(*(fs.get_range(path, s, e) for s, e in ranges)))
            if len(data) != end - start:
                raise OSError(errno.EIO, f"{len(data)} bytes at {start}, expected {end - start}", path)
            return data
        return asyncio.run_coroutine_threadsafe(fetch(), fs.loop)

    def _read_on(self, rel: str) -> None:
        """After rel is opened: if the one opened before it is its neighbour in its
        folder's listing, the objects after it there are fetched now (up to
        READ_AHEAD_FILES, READ_AHEAD_BYTES in all; none bigger than FETCH_BLOCK)."""
        parent, _, name = rel.rpartition("/")
        names = self._fresh(self._dirs, parent)
        if names is ... or not names:
            return
        position = _position(names, name)
        with self._lock:
            last_parent, last = self._last_open
            self._last_open = (parent, -2 if position is None else position)
            if position is None or last_parent != parent or not 0 < position - last <= 2:
                return
            now, window = time.monotonic(), 0
            for following in names[position + 1:position + 1 + READ_AHEAD_FILES]:
                child = f"{parent}/{following}" if parent else following
                info = self._info.get(child)
                if info is None or info[1] is None or not stat.S_ISREG(info[1].mode) or \
                        not 0 < info[1].size <= FETCH_BLOCK or window + info[1].size > READ_AHEAD_BYTES:
                    break
                window += info[1].size
                if child not in self._fetched_ahead:
                    self._fetched_ahead[child] = (now, info[1].size,
                                                  self.fetch(self.full(child), 0, info[1].size, FETCH_PARTS))
            held = sum(size for _, size, _ in self._fetched_ahead.values())
            while held > 2 * READ_AHEAD_BYTES:
                _, (_, size, future) = self._fetched_ahead.popitem(last=False)
                future.cancel()
                held -= size

    # -- answered from what listings told, never blocking --------------------------------
    def stat_cached(self, rel: str) -> Attr | None:
        info = self._fresh(self._info, rel)
        if info is ...:
            parent, _, name = rel.rpartition("/")
            names = self._fresh(self._dirs, parent) if rel else ...
            if names is ... or names is not None and _position(names, name) is not None:
                return None                              # cannot tell
            info = None
        if info is None:
            raise FileNotFoundError(errno.ENOENT, "no such object", rel)
        return info

    def exists_cached(self, rel: str) -> bool | None:
        try:
            return None if self.stat_cached(rel) is None else True
        except FileNotFoundError:
            return False

    def open_read_cached(self, rel: str) -> FileHandle | None:
        info = self.stat_cached(rel)
        return None if info is None else self._open(rel, info.size)

    # -- as the overlay side ---------------------------------------------------------------
    def mkdir(self, rel: str, mode: int = 0o755, owner: Owner | None = None) -> None:
        self.fs.pipe(f"{self.full(rel)}/{DIR_MARKER}", b"")
        self.invalidate(rel)

    def copy_dir(self, source: Root, rel: str, info: Attr) -> None:
        self.mkdir(rel)

    def touch(self, rel: str) -> None:
        self.fs.pipe(self.full(rel), b"")
        self.invalidate(rel)

    def create(self, rel: str, mode: int, owner: Owner | None = None) -> None:
        if self.stat(rel) is not None:
            raise FileExistsError(errno.EEXIST, "exists", rel)
        self.touch(rel)

    def unlink(self, rel: str) -> None:
        self.fs.rm(self.full(rel))
        self.invalidate(rel)

    def rmtree(self, rel: str) -> None:
        self.fs.rm(self.full(rel), recursive=True)
        if hasattr(self.fs, "split_path") and hasattr(self.fs, "call_s3"):
            # S3 servers with real folders (SeaweedFS, MinIO) keep "rel/" after its objects go
            bucket, key, _ = self.fs.split_path(self.full(rel))
            try:
                self.fs.call_s3("delete_object", Bucket=bucket, Key=key.rstrip("/") + "/")
            except Exception:
                pass
        self.invalidate(rel)

    def rename(self, old: str, new: str, flags: int = 0) -> None:
        """Copy, then delete: object stores cannot rename (not atomic, documented)."""
        if flags:
            raise OSError(errno.EINVAL, "object stores cannot exchange or refuse in one step", new)
        self.fs.mv(self.full(old), self.full(new), recursive=True)
        self.invalidate(old)
        self.invalidate(new)

    def symlink(self, target: str, rel: str, owner: Owner | None = None) -> None:
        raise _no_links(rel)

    def mknod(self, rel: str, mode: int, rdev: int, owner: Owner | None = None) -> None:
        raise _no_links(rel)

    def link(self, existing: str, rel: str) -> None:
        raise _no_links(rel)

    def open_write(self, rel: str, flags: int) -> FileHandle:
        return UploadHandle(self, rel, keep=not flags & os.O_TRUNC)

    def truncate(self, rel: str, size: int) -> None:
        handle = UploadHandle(self, rel, keep=True)
        try:
            handle.truncate(size)
            handle.flush()
        finally:
            handle.release()

    def set_attr(self, rel: str, handle: FileHandle | None, mode: int | None = None, uid: int | None = None,
                 gid: int | None = None, atime_ns: int | None = None, mtime_ns: int | None = None) -> None:
        """Objects have no modes or times (accepted, not kept) and no owners."""
        if uid not in (None, os.getuid()) or gid not in (None, os.getgid()):
            raise OSError(errno.EPERM, "objects belong to the daemon's user", rel)

    def stage_copy(self, source: Root, rel: str, info: Attr, data: bool = True):
        if stat.S_ISLNK(info.mode) or not stat.S_ISREG(info.mode):
            raise _no_links(rel)
        staged = tempfile.NamedTemporaryFile(prefix="scopefs-copy-")
        try:
            if data:
                handle = source.open_read(rel)
                try:
                    offset = 0
                    while block := handle.read(offset, FETCH_BLOCK):
                        staged.write(block)
                        offset += len(block)
                finally:
                    handle.release()
            staged.flush()
        except BaseException:
            staged.close()
            raise
        return staged

    def place_copy(self, staged, rel: str) -> None:
        try:
            self.fs.put_file(staged.name, self.full(rel))
        finally:
            staged.close()
            self.invalidate(rel)

    def drop_copy(self, staged) -> None:
        staged.close()


class RemoteReadHandle(FileHandle):
    """Reads of an object in blocks of FETCH_BLOCK, each one GET, or FETCH_PARTS
    concurrent range requests once the reader has shown it reads on (a reader that
    jumps about, or reads only a header, costs one request per block it touches). An
    object of up to FETCH_BLOCK is fetched whole at open (one GET up to 1 MiB), or was
    fetched ahead (`FsspecRoot._read_on`), so the kernel's first read often finds it
    here. Fetches run on fsspec's event-loop thread: no worker thread waits for a fetch
    made ahead. Only the next block of a sequential reader is fetched ahead, and a
    handle holds two blocks at most."""

    def __init__(self, root: "FsspecRoot", path: str, size: int | None = None, first: Future | None = None):
        self.root, self.path = root, path
        self.size = size if size is not None else root.fs.size(path)
        self._blocks: dict[int, Future] = {}          # the block read last and the next one
        self._last_end: int | None = None             # where the last read ended
        self._lock = threading.Lock()
        if 0 < self.size <= FETCH_BLOCK:
            self._blocks[0] = first or root.fetch(path, 0, self.size, FETCH_PARTS)

    def _start(self, index: int, parts: int) -> Future:
        start = index * FETCH_BLOCK
        return self.root.fetch(self.path, start, min(start + FETCH_BLOCK, self.size), parts)

    def _block(self, index: int, wait: bool, parts: int) -> bytes | None:
        with self._lock:
            future = self._blocks.get(index)
            ahead = future is not None                   # fetched ahead (or by a read before)
            if future is None or (future.done() and future.exception() is not None):
                if not wait:
                    return None
                future, ahead = self._start(index, parts), False
                self._blocks[index] = future
        if not wait and not future.done():
            return None
        try:
            return future.result()
        except Exception:
            if not ahead:
                raise
        with self._lock:                                 # what failed ahead is fetched again
            future = self._blocks[index] = self._start(index, parts)
        return future.result()

    def _read(self, offset: int, size: int, wait: bool) -> bytes | None:
        end = min(offset + size, self.size)
        if offset >= end:
            return b""
        # the kernel may send two reads out of order: "sequential" is within a MiB
        sequential = self._last_end is not None and abs(offset - self._last_end) <= 1 << 20
        first, last = offset // FETCH_BLOCK, (end - 1) // FETCH_BLOCK
        pieces = []
        for index in range(first, last + 1):
            block = self._block(index, wait, FETCH_PARTS if sequential else 1)
            if block is None:
                return None
            base = index * FETCH_BLOCK
            pieces.append(block[max(offset - base, 0):end - base])
        self._last_end = end
        self._ahead(last, finished=end in ((last + 1) * FETCH_BLOCK, self.size), fetch_next=sequential)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _ahead(self, index: int, finished: bool, fetch_next: bool) -> None:
        """Keep the block being read (unless read to its end) and the next one, which a
        sequential reader gets fetched now."""
        with self._lock:
            for old in [k for k in self._blocks if k != index + 1 and (k != index or finished)]:
                del self._blocks[old]
            if fetch_next and (index + 1) * FETCH_BLOCK < self.size and index + 1 not in self._blocks:
                self._blocks[index + 1] = self._start(index + 1, FETCH_PARTS)

    def read(self, offset: int, size: int) -> bytes:
        return self._read(offset, size, wait=True)

    def cached_read(self, offset: int, size: int) -> bytes | None:
        return self._read(offset, size, wait=False)

    def release(self) -> None:
        with self._lock:
            for future in self._blocks.values():
                future.cancel()
            self._blocks.clear()


class UploadHandle(FileHandle):
    """A remote file edited in a local temporary copy and uploaded at close or fsync."""
    flush_blocks = True
    release_blocks = True

    def __init__(self, root: FsspecRoot, rel: str, keep: bool):
        self.root, self.rel = root, rel
        self._tmp = tempfile.NamedTemporaryFile(prefix="scopefs-upload-")
        if keep and root.stat(rel) is not None:
            root.fs.get_file(root.full(rel), self._tmp.name)
        self._dirty = not keep
        self._lock = threading.Lock()

    def read(self, offset: int, size: int) -> bytes:
        return os.pread(self._tmp.fileno(), size, offset)

    def write(self, offset: int, data: bytes) -> int:
        with self._lock:
            self._dirty = True
            return os.pwrite(self._tmp.fileno(), data, offset)

    def truncate(self, size: int) -> None:
        with self._lock:
            self._dirty = True
            os.ftruncate(self._tmp.fileno(), size)

    def flush(self) -> None:
        with self._lock:
            if not self._dirty:
                return
            try:
                self.root.fs.put_file(self._tmp.name, self.root.full(self.rel))
            except Exception as exc:                   # the writer must hear of it
                raise OSError(errno.EIO, f"upload of {self.rel} failed: {exc}") from None
            finally:
                self.root.invalidate(self.rel)
            self._dirty = False

    def release(self) -> None:
        self._tmp.close()
