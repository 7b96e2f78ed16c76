"""The two kinds of root an overlay is built from.

`LocalRoot` is a directory, used through the OS directly (no fsspec on the hot path).
`FsspecRoot` is any fsspec URL (s3://, ...): metadata is cached for `ttl` seconds,
reads come in blocks of concurrent range requests (`RemoteReadHandle`), and when it is
the writable side, a written file is kept in a local temporary file and uploaded when
closed or fsynced; a failed upload is the writer's EIO, never silently dropped. Object
stores have no directories: an empty one is kept alive by a hidden marker object.
"""
from __future__ import annotations

import errno
import logging
import os
import queue
import shutil
import stat
import tempfile
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Future

from .kernel import LOCAL_FILESYSTEMS, filesystem_type, open_cached
from .nodes import Attr, FileHandle, OSFileHandle

log = logging.getLogger(__name__)

COPY_BLOCK = 8 << 20
FETCH_BLOCK = 8 << 20          # a remote read fetches this much at once...
FETCH_PARTS = 2                # ...as this many concurrent range requests
CACHE_ENTRIES = 200_000        # metadata entries an fsspec root remembers (about 40 MB at most)
PLAN_LIMIT = 100_000           # directories a scan-ahead plan remembers
DIR_MARKER = ".wh.scopefs-dir"          # internal by the overlay's naming rule


class LocalRoot:

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        # answers from the kernel's caches (the *_cached methods) only on local storage
        self.local_storage = filesystem_type(self.path) in LOCAL_FILESYSTEMS

    def full(self, rel: str) -> str:
        return os.path.join(self.path, rel) if rel else self.path

    def describe(self) -> str:
        return self.path

    def stat(self, rel: str) -> Attr | None:
        try:
            st = os.lstat(self.full(rel))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return Attr(st.st_mode, st.st_size, st.st_mtime_ns, st.st_nlink)

    def listdir(self, rel: str) -> list[str] | None:
        try:
            return os.listdir(self.full(rel))
        except (FileNotFoundError, NotADirectoryError):
            return None

    def stat_many(self, rel: str, names: list[str]) -> list[Attr | None]:
        """Attrs of names in directory rel, each resolved from the open directory (no
        walk down the whole path per name)."""
        try:
            fd = os.open(self.full(rel), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return [None] * len(names)
        out: list[Attr | None] = []
        try:
            for name in names:
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except (FileNotFoundError, NotADirectoryError):
                    out.append(None)
                else:
                    out.append(Attr(st.st_mode, st.st_size, st.st_mtime_ns, st.st_nlink))
        finally:
            os.close(fd)
        return out

    def readlink(self, rel: str) -> str:
        return os.readlink(self.full(rel))

    def open_read(self, rel: str) -> FileHandle:
        local = self.local_storage
        return OSFileHandle(self.full(rel), drop_behind=True, release_blocks=not local, mapped=local)

    def open_read_cached(self, rel: str) -> FileHandle | None:
        """A read handle if finding rel needs no I/O, else None (FileNotFoundError if the
        kernel knows rel is missing)."""
        fd = open_cached(self.full(rel), os.O_RDONLY) if self.local_storage else None
        return None if fd is None else OSFileHandle(fd, drop_behind=True, mapped=True)

    def stat_cached(self, rel: str) -> Attr | None:
        """What `stat` gives, if the kernel knows without I/O: FileNotFoundError if it knows
        rel is missing, None if it cannot tell."""
        fd = open_cached(self.full(rel), os.O_PATH | os.O_NOFOLLOW) if self.local_storage else None
        if fd is None:
            return None
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        return Attr(st.st_mode, st.st_size, st.st_mtime_ns, st.st_nlink)

    def exists_cached(self, rel: str) -> bool | None:
        """Whether rel exists, if the kernel knows without I/O; else None."""
        try:
            return None if self.stat_cached(rel) is None else True
        except (FileNotFoundError, NotADirectoryError):
            return False

    # -- as the writable side -------------------------------------------------------------
    def mkdir(self, rel: str, mode: int = 0o755, mtime_ns: int | None = None) -> None:
        os.mkdir(self.full(rel), mode & 0o7777)
        if mtime_ns is not None:
            os.utime(self.full(rel), ns=(mtime_ns, mtime_ns))

    def touch(self, rel: str) -> None:
        open(self.full(rel), "wb").close()

    def create(self, rel: str, mode: int) -> None:
        os.close(os.open(self.full(rel), os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, mode & 0o7777))

    def unlink(self, rel: str) -> None:
        os.unlink(self.full(rel))

    def rmtree(self, rel: str) -> None:
        shutil.rmtree(self.full(rel))

    def rename(self, old: str, new: str) -> None:
        os.rename(self.full(old), self.full(new))

    def symlink(self, target: str, rel: str) -> None:
        os.symlink(target, self.full(rel))

    def link(self, existing: str, rel: str) -> None:
        os.link(self.full(existing), self.full(rel))

    def open_write(self, rel: str, flags: int) -> FileHandle:
        return LocalWriteHandle(self.full(rel), flags, release_blocks=not self.local_storage)

    def truncate(self, rel: str, size: int) -> None:
        os.truncate(self.full(rel), size)

    def chmod(self, rel: str, mode: int) -> None:
        os.chmod(self.full(rel), mode)

    def utime(self, rel: str, mtime_ns: int) -> None:
        os.utime(self.full(rel), ns=(time.time_ns(), mtime_ns), follow_symlinks=False)

    def copy_in(self, source, rel: str, info: Attr) -> None:
        """rel from another root, written beside its place and renamed in (atomic)."""
        parent, _, name = rel.rpartition("/")
        tmp = os.path.join(self.full(parent), f"{DIR_MARKER}.copy.{name}.{os.getpid()}.{threading.get_ident()}")
        try:
            if stat.S_ISLNK(info.mode):
                os.symlink(source.readlink(rel), tmp)
            else:
                with open(tmp, "wb") as out:
                    _copy(source.open_read(rel), out)
                os.chmod(tmp, stat.S_IMODE(info.mode))
                os.utime(tmp, ns=(info.mtime_ns, info.mtime_ns))
            os.rename(tmp, self.full(rel))
        except BaseException:
            if os.path.lexists(tmp):
                os.unlink(tmp)
            raise


def _copy(handle: FileHandle, out) -> None:
    try:
        offset = 0
        while True:
            block = handle.read(offset, COPY_BLOCK)
            if not block:
                return
            out.write(block)
            offset += len(block)
    finally:
        handle.release()


class Workers:
    """A few daemon threads for work done ahead of need: they never hold up the exit,
    and what they fail at is done again by whoever needs it."""

    def __init__(self, threads: int, name: str):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        for i in range(threads):
            threading.Thread(target=self._work, name=f"scopefs-{name}-{i}", daemon=True).start()

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        self._jobs.put((future, fn, args))
        return future

    def _work(self) -> None:
        while True:
            future, fn, args = self._jobs.get()
            try:
                future.set_result(fn(*args))
            except BaseException as exc:
                future.set_exception(exc)


class ScanAhead:
    """Listings (names with their stat) of the directories a walker will open next, made
    by background threads while the daemon answers for the current one. `find`, `du`,
    `rsync`, `tar` and copick descend in listing order, so the disk reads (or S3 LISTs)
    of the next directories overlap the work on this one.

    A listing is used once, and only within `horizon` seconds of being asked for (the
    kernel trusts what it is told for as long). At most `window` listings wait at a
    time, and new ones are started only as the walker takes them, so an `ls` of a
    directory of a thousand folders costs `window` listings, not a thousand."""

    def __init__(self, root, *, threads: int, window: int = 16, horizon: float = 1.0):
        self.root = root
        self.window = window
        self.horizon = horizon
        self._ready: dict[str, tuple[float, Future]] = {}
        self._plan: deque[str] = deque()
        self._planned: set[str] = set()           # what the plan still holds
        self._lock = threading.Lock()
        self._workers = Workers(threads, "scan-ahead")
        self.used = self.unused = 0               # listings taken / made for nothing

    def plan(self, rels: list[str]) -> None:
        """These directories were just listed: a depth-first walker opens them next, before
        what an earlier plan named."""
        if not rels:
            return
        with self._lock:
            self._plan.extendleft(reversed(rels))
            self._planned.update(rels)
            while len(self._plan) > PLAN_LIMIT:
                self._planned.discard(self._plan.pop())
            self._start(purge=True)

    def take(self, rel: str) -> dict[str, Attr | None] | None:
        """The listing of rel made ahead, or None if there is none fresh."""
        with self._lock:
            started, future = self._ready.pop(rel, (0.0, None))
            if future is None:
                self._planned.discard(rel)       # the walker got here first: not later either
            self._start()
        if future is None:
            return None
        try:
            # waited for no longer than it would stay usable: a hung source costs the
            # walker one horizon, then it lists for itself
            listing = future.result(timeout=max(self.horizon - (time.monotonic() - started), 0.0))
        except Exception as exc:                         # the caller lists it itself
            log.debug("scan ahead of %s: %r", rel, exc)
            self.unused += isinstance(exc, TimeoutError)
            return None
        if time.monotonic() - started >= self.horizon:
            self.unused += 1
            return None
        self.used += 1
        return listing

    def _start(self, purge: bool = False) -> None:
        now = time.monotonic()
        if purge:
            for rel, (started, future) in list(self._ready.items()):
                if now - started >= self.horizon and future.done():
                    del self._ready[rel]
                    self.unused += 1
        while self._plan and len(self._ready) < self.window:
            rel = self._plan.popleft()
            if rel in self._planned:             # else taken by the walker, or planned twice
                self._planned.discard(rel)
                self._ready[rel] = (now, self._workers.submit(self._scan, rel))

    def _scan(self, rel: str) -> dict[str, Attr | None]:
        names = self.root.listdir(rel) or []
        return dict(zip(names, self.root.stat_many(rel, names)))


class SiblingWarmer:
    """zarr reads a tomogram's chunks, and copick a run's files, by looking up one name
    after another in the same directory. On a local root each lookup that the kernel's
    caches cannot answer costs the daemon a worker thread. After two such lookups in a
    directory within `window` seconds, its entries are stat'ed in the background, and the
    kernel's lookup cache answers for their siblings from then on (`LocalRoot.stat_cached`);
    if it has dropped them again, two more misses warm the directory again. A directory
    looked into once is never warmed, and one of more than `limit` entries (warmed in part)
    not again within `window`."""

    def __init__(self, root: LocalRoot, *, limit: int = 4096, window: float = 10.0, remember: int = 1024):
        self.root = root
        self.limit = limit
        self.window = window
        self.remember = remember
        # directory: (first miss since the last warming, misses since, not again before)
        self._misses: OrderedDict[str, tuple[float, int, float]] = OrderedDict()
        self._lock = threading.Lock()
        self._workers = Workers(1, "warm")
        self.warmed = 0

    def missed(self, rel: str) -> None:
        """A lookup in directory rel needed I/O."""
        now = time.monotonic()
        with self._lock:
            first, count, hold = self._misses.pop(rel, (now, 0, 0.0))
            if now - first >= self.window:
                first, count = now, 0
            warm = count + 1 >= 2 and now >= hold
            self._misses[rel] = (now, 0, hold) if warm else (first, count + 1, hold)
            while len(self._misses) > self.remember:
                self._misses.popitem(last=False)
            if not warm:
                return
            self.warmed += 1
        self._workers.submit(self._warm, rel)

    def _warm(self, rel: str) -> None:
        names = self.root.listdir(rel) or []
        self.root.stat_many(rel, names[:self.limit])
        if len(names) > self.limit:
            with self._lock:
                first, count, _ = self._misses.get(rel, (0.0, 0, 0.0))
                self._misses[rel] = (first, count, time.monotonic() + self.window)


class LocalWriteHandle(FileHandle):
    """A local file written in place, as a local disk would be."""

    def __init__(self, path: str, flags: int, release_blocks: bool = False):
        """A file on NFS or FUSE may wait for its server at close: `release_blocks` then."""
        keep = os.O_ACCMODE | os.O_TRUNC | os.O_APPEND
        self.fd = os.open(path, (flags & keep) | os.O_CLOEXEC)
        self.release_blocks = release_blocks

    def read(self, offset: int, size: int) -> bytes:
        return os.pread(self.fd, size, offset)

    def write(self, offset: int, data: bytes) -> int:
        return os.pwrite(self.fd, data, offset)

    def truncate(self, size: int) -> None:
        os.ftruncate(self.fd, size)

    def fsync(self) -> None:
        os.fsync(self.fd)

    def release(self) -> None:
        os.close(self.fd)


class FsspecRoot:
    """A root behind fsspec (S3 through s3fs...)."""

    def __init__(self, url: str, fs_args: dict | None = None, ttl: float = 60.0):
        import fsspec                                   # only remote mounts need it
        self.fs, base = fsspec.core.url_to_fs(url, **(fs_args or {}))
        self.base = base.rstrip("/")
        self.url = url
        self.ttl = ttl
        # bounded as well as timed: the oldest entries go first past CACHE_ENTRIES
        self._info: OrderedDict[str, tuple[float, Attr | None]] = OrderedDict()
        self._dirs: OrderedDict[str, tuple[float, list[str] | None]] = OrderedDict()
        self._lock = threading.Lock()
        self.fetch_ahead = Workers(4, "fetch-ahead")

    def describe(self) -> str:
        return self.url.split("@")[-1]                  # never a credential in a URL

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
        self.fs.invalidate_cache(self.full(parent))

    @staticmethod
    def _to_info(entry: dict) -> Attr:
        if entry.get("type") == "directory":
            return Attr(stat.S_IFDIR | 0o755, 0, 0, 2)
        mtime = entry.get("LastModified") or entry.get("mtime") or entry.get("created") or 0
        if hasattr(mtime, "timestamp"):
            mtime = mtime.timestamp()
        return Attr(stat.S_IFREG | 0o644, int(entry.get("size") or 0), int(float(mtime) * 1e9))

    def stat(self, rel: str) -> Attr | None:
        cached = self._fresh(self._info, rel)
        if cached is not ...:
            return cached
        parent, _, name = rel.rpartition("/")
        if rel and self._fresh(self._dirs, parent) is not ...:
            names = self._fresh(self._dirs, parent)     # a listing just made answers for its children
            if names is not None and name not in names:
                return None
        try:
            info = self._to_info(self.fs.info(self.full(rel)))
        except FileNotFoundError:
            info = None
        self._remember(self._info, rel, info)
        return info

    def listdir(self, rel: str) -> list[str] | None:
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
        self._remember(self._dirs, rel, names)
        return names

    def stat_many(self, rel: str, names: list[str]) -> list[Attr | None]:
        return [self.stat(f"{rel}/{name}" if rel else name) for name in names]  # listed: cached

    def readlink(self, rel: str) -> str:
        raise OSError(errno.EINVAL, "object stores have no links", rel)

    def open_read(self, rel: str) -> FileHandle:
        info = self.stat(rel)                            # known from a listing: no HEAD again
        return RemoteReadHandle(self, self.full(rel), info.size if info else None)

    # -- as the writable side -------------------------------------------------------------
    def mkdir(self, rel: str, mode: int = 0o755, mtime_ns: int | None = None) -> None:
        self.fs.pipe(f"{self.full(rel)}/{DIR_MARKER}", b"")
        self.invalidate(rel)

    def touch(self, rel: str) -> None:
        self.fs.pipe(self.full(rel), b"")
        self.invalidate(rel)

    def create(self, rel: str, mode: int) -> None:
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

    def rename(self, old: str, new: str) -> None:
        """Copy, then delete: object stores cannot rename (not atomic, documented)."""
        self.fs.mv(self.full(old), self.full(new), recursive=True)
        self.invalidate(old)
        self.invalidate(new)

    def symlink(self, target: str, rel: str) -> None:
        raise OSError(errno.EPERM, "object stores have no links", rel)

    def link(self, existing: str, rel: str) -> None:
        raise OSError(errno.EPERM, "object stores have no links", rel)

    def open_write(self, rel: str, flags: int) -> FileHandle:
        return UploadHandle(self, rel, keep=not flags & os.O_TRUNC)

    def truncate(self, rel: str, size: int) -> None:
        handle = UploadHandle(self, rel, keep=True)
        try:
            handle.truncate(size)
            handle.flush()
        finally:
            handle.release()

    def chmod(self, rel: str, mode: int) -> None:
        pass                                            # objects have no modes

    def utime(self, rel: str, mtime_ns: int) -> None:
        pass

    def copy_in(self, source, rel: str, info: Attr) -> None:
        if stat.S_ISLNK(info.mode):
            raise OSError(errno.EPERM, "object stores have no links", rel)
        with tempfile.NamedTemporaryFile() as tmp:
            _copy(source.open_read(rel), tmp)
            tmp.flush()
            self.fs.put_file(tmp.name, self.full(rel))
        self.invalidate(rel)


class RemoteReadHandle(FileHandle):
    """Reads of an object in blocks of FETCH_BLOCK, each fetched as FETCH_PARTS concurrent
    range requests. A sequential reader's next block is fetched in the background while
    it reads this one (a reader jumping about gets no such guesses), and reads of blocks
    already here need no worker thread."""
    release_blocks = True

    def __init__(self, root: "FsspecRoot", path: str, size: int | None = None):
        self.root, self.path = root, path
        self.size = size if size is not None else root.fs.size(path)
        self._blocks: dict[int, Future] = {}          # the block read last and the next one
        self._last_end = 0                            # where the last read ended
        self._lock = threading.Lock()

    def _fetch(self, index: int) -> bytes:
        start = index * FETCH_BLOCK
        end = min(start + FETCH_BLOCK, self.size)
        step = max(-(-(end - start) // FETCH_PARTS), 1 << 20)
        starts = list(range(start, end, step))
        parts = self.root.fs.cat_ranges([self.path] * len(starts), starts, [min(s + step, end) for s in starts])
        for part in parts:
            if isinstance(part, Exception):
                raise part
        return b"".join(parts)

    def _block(self, index: int, wait: bool = True) -> bytes | None:
        with self._lock:
            future = self._blocks.get(index)
            if future is None or (future.done() and future.exception() is not None):
                if not wait:
                    return None
                future = self._blocks[index] = Future()
                future.set_running_or_notify_cancel()
                fetch_here = True
            else:
                fetch_here = False
        if fetch_here:
            try:
                future.set_result(self._fetch(index))
            except BaseException as exc:
                future.set_exception(exc)
        elif not wait and not future.done():
            return None
        return future.result()

    def _read(self, offset: int, size: int, wait: bool) -> bytes | None:
        end = min(offset + size, self.size)
        if offset >= end:
            return b""
        first, last = offset // FETCH_BLOCK, (end - 1) // FETCH_BLOCK
        pieces = []
        for index in range(first, last + 1):
            block = self._block(index, wait)
            if block is None:
                return None
            base = index * FETCH_BLOCK
            pieces.append(block[max(offset - base, 0):end - base])
        # the kernel may send two reads out of order: "sequential" is within a MiB
        sequential = abs(offset - self._last_end) <= 1 << 20
        self._last_end = end
        self._ahead(last, finished=end in ((last + 1) * FETCH_BLOCK, self.size), fetch_next=sequential)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _ahead(self, index: int, finished: bool, fetch_next: bool) -> None:
        """Keep the block being read (unless read to its end) and the next one, which a
        sequential reader gets fetched now: an open handle holds two blocks at most."""
        with self._lock:
            for old in [k for k in self._blocks if k != index + 1 and (k != index or finished)]:
                del self._blocks[old]
            if fetch_next and (index + 1) * FETCH_BLOCK < self.size and index + 1 not in self._blocks:
                self._blocks[index + 1] = self.root.fetch_ahead.submit(self._fetch, index + 1)

    def read(self, offset: int, size: int) -> bytes:
        return self._read(offset, size, wait=True)

    def cached_read(self, offset: int, size: int) -> bytes | None:
        return self._read(offset, size, wait=False)

    def release(self) -> None:
        with self._lock:
            self._blocks.clear()


class UploadHandle(FileHandle):
    """A remote file edited in a local temporary copy and uploaded at close or fsync."""
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
