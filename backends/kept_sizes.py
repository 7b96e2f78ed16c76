"""Sizes of generated views, learned once and kept on disk across mounts.

A view a library writes (a STAR table through pandas, a mesh through trimesh, a preview
through zarr) has no size until it is made, and `ls -l`, `find -printf %s` and `du` need
every size: a cold walk of a copick project made every view of every folder once, for its
size (about 2 ms each, after a second of imports). What a view's bytes depend on is known
without making them: its sources' identities (device, inode, size, mtime, ctime), the
view's parameters, and the versions of its renderer (ours and the libraries'). A size is
kept under a digest of all of these, so a kept size only ever stands for the same bytes.

One file per user, `$XDG_CACHE_HOME/scopefs/view-sizes` (else `~/.cache/...`), never in a
source: at most `limit` sizes, the least recently used dropped first; written whole to a
temporary file and renamed (merged with what other mounts wrote meanwhile, under an
advisory lock); a file that is not ours or does not check out is ignored (and replaced at
the next save). A source changed less than `RACY_S` seconds ago is not kept: a change
within the same clock tick would not change its identity.
"""
from __future__ import annotations

import errno
import fcntl
import functools
import hashlib
import logging
import os
import struct
import threading
import time
from importlib import metadata
from typing import Callable

from ..formats.atomic import atomic_write
from .nodes import Attr

log = logging.getLogger(__name__)

MAGIC = b"scopefs view sizes 1\n"
RECORD = struct.Struct("<16sQI")            # key digest, size, last used (hours since the epoch)
DIGEST = 16
RACY_S = 2.0
SAVE_AFTER_S = 10.0


def cache_path() -> str | None:
    """Where the sizes are kept: the user's cache folder (XDG base directories)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        home = os.path.expanduser("~")
        if not os.path.isabs(home):
            return None
        base = os.path.join(home, ".cache")
    return os.path.join(base, "scopefs", "view-sizes")


def identity(info: Attr | None, now_ns: int | None = None) -> tuple | None:
    """What names one version of a local file (None if not a local file, or if it changed
    too recently for its identity to be trusted: within RACY_S before `now_ns`, the time
    taken before `info` was, by default now)."""
    if info is None or info.backing is None or info.ctime_ns is None:
        return None
    if (time.time_ns() if now_ns is None else now_ns) - info.ctime_ns < RACY_S * 1e9:
        return None
    return (*info.backing, info.size, info.mtime_ns, info.ctime_ns)


@functools.lru_cache(maxsize=64)
def versions(*distributions: str) -> tuple:
    """The installed versions of the libraries a renderer writes with (their metadata only:
    nothing is imported), read once per process."""
    out = []
    for name in distributions:
        try:
            out.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            out.append((name, None))
    return tuple(out)


def digest(parts: tuple) -> bytes:
    return hashlib.blake2b(repr(parts).encode(), digest_size=DIGEST).digest()


def digest_of_reprs(reprs: list[str]) -> bytes:
    """`digest(parts)` from the reprs of its parts (at least two): views listed together
    share most parts, whose reprs are then made once for all of them."""
    return hashlib.blake2b(f"({', '.join(reprs)})".encode(), digest_size=DIGEST).digest()


class KeptSizes:
    """The sizes kept in `path` (None: this mount's memory only), at most `limit`."""

    def __init__(self, path: str | None, limit: int = 100_000):
        self.path, self.limit = path, limit
        self._sizes: dict[bytes, list[int]] | None = None     # key -> [size, last used]
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._dirty = False
        self.hits = self.learned = 0

    def load(self) -> None:
        """Read the file now (else the first `get` does)."""
        self._loaded()

    def get(self, key: bytes) -> int | None:
        """The kept size of key (the first call reads the file)."""
        return self.get_many({key: key}).get(key)

    def get_many(self, keys: dict) -> dict:
        """{name: kept size} of those of `keys` (name -> key, or None: not kept) that are
        kept, looked up under the lock at once (the first call reads the file first)."""
        sizes = self._loaded()
        now, found = _hours(), {}
        with self._lock:
            for name, key in keys.items():
                kept = sizes.get(key) if key is not None else None
                if kept is not None:
                    found[name] = kept[0]
                    if kept[1] < now - 24:          # refreshed at most daily: a walk writes nothing
                        kept[1] = now
                        self._schedule()
            self.hits += len(found)
        return found

    def put(self, key: bytes, size: int) -> None:
        sizes = self._loaded()
        with self._lock:
            if sizes.get(key, [None])[0] != size:
                sizes[key] = [size, _hours()]
                self.learned += 1
                self._schedule()

    def _loaded(self) -> dict[bytes, list[int]]:
        with self._lock:
            if self._sizes is None:
                self._sizes = self._read()
            return self._sizes

    def _read(self) -> dict[bytes, list[int]]:
        if self.path is None:
            return {}
        try:
            with open(self.path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            log.info("view sizes: %s cannot be read (%s): sizes are learned anew", self.path, exc)
            return {}
        head, body = data[:len(MAGIC) + DIGEST], data[len(MAGIC) + DIGEST:]
        if head[:len(MAGIC)] != MAGIC or head[len(MAGIC):] != _checksum(body) or len(body) % RECORD.size:
            log.info("view sizes: %s is not a file of ours or is damaged: ignored, replaced at the next save",
                     self.path)
            return {}
        return {key: [size, used] for key, size, used in RECORD.iter_unpack(body)}

    def _schedule(self) -> None:
        """A save a little later (lock held): a walk learning thousands writes once."""
        self._dirty = True
        if self._timer is None and self.path is not None:
            self._timer = threading.Timer(SAVE_AFTER_S, self.save)
            self._timer.daemon = True
            self._timer.start()

    def save(self) -> None:
        """Merge with the file (other mounts may have written it) and replace it."""
        with self._lock:
            self._timer = None
            if not self._dirty or self.path is None or self._sizes is None:
                return
            self._dirty = False
            mine = dict(self._sizes)
        try:
            os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
            with open(os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)) as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                merged = self._read()
                for key, (size, used) in mine.items():
                    if key not in merged or merged[key][1] <= used:
                        merged[key] = [size, used]
                kept = sorted(merged.items(), key=lambda item: item[1][1])[-self.limit:]
                body = b"".join(RECORD.pack(key, size, used) for key, (size, used) in kept)
                atomic_write(self.path, MAGIC + _checksum(body) + body, keep_mode=False)
        except OSError as exc:
            level = logging.INFO if exc.errno in (errno.EACCES, errno.EROFS, errno.ENOSPC) else logging.WARNING
            log.log(level, "view sizes: %s cannot be written (%s): they are kept for this mount only",
                    self.path, exc)

    def close(self) -> None:
        with self._lock:
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        self.save()

    def status(self) -> dict:
        return {"kept": len(self._sizes or ()), "used": self.hits, "learned": self.learned}


class KeptSize:
    """The kept size of one view. `key()` gives what its bytes depend on (a tuple; I/O
    allowed; `prefix` goes before it), or its digest already (worked out as its listing's
    `KeptTogether` does: `digest_of_reprs`), or None (not kept); it is asked once, before
    the view is made, so a size learned is kept under the version of its sources that was
    read; `key` is dropped then (its closure may hold a folder's worth: a mount keeps one
    of these per view)."""

    __slots__ = ("sizes", "_key", "_on_miss", "_digest", "_prefix")

    def __init__(self, sizes: KeptSizes, key: Callable[[], tuple | None],
                 on_miss: Callable[[], None] | None = None, prefix: tuple = ()):
        self.sizes, self._key, self._on_miss, self._prefix = sizes, key, on_miss, prefix
        self._digest: bytes | None = None

    def digest(self) -> bytes | None:
        key = self._key
        if key is not None:
            parts = key()
            self._digest = parts if parts is None or isinstance(parts, bytes) else digest(self._prefix + parts)
            self._key = None
        return self._digest

    def get(self) -> int | None:
        """The kept size, else None (and `on_miss()`: the view will be made)."""
        size = self.peek()
        if size is None and self._on_miss is not None:
            self._on_miss()
        return size

    def peek(self) -> int | None:
        """The kept size, else None (asked ahead of need: the view may never be made)."""
        key = self.digest()
        return None if key is None else self.sizes.get(key)

    def learn(self, size: int) -> None:
        key = self.digest()
        if key is not None:
            self.sizes.put(key, size)


class KeptTogether:
    """The kept sizes of views listed together (a folder's), found at the first ask for
    any of them, in one go: `keys()` gives each view's key by name (None: not kept; I/O
    allowed), worked out from what the listing knew, with no node made. Shared by the
    views' nodes (`OverlayTree.derived`): a view not kept is made, and sized, alone."""

    __slots__ = ("sizes", "_keys", "_found", "_lock")

    def __init__(self, sizes: KeptSizes, keys: Callable[[], dict]):
        self.sizes, self._keys = sizes, keys
        self._found: dict | None = None
        self._lock = threading.Lock()

    def size(self, name: str) -> int | None:
        found = self._found
        if found is None:
            with self._lock:
                found = self._found
                if found is None:
                    try:
                        keys = self._keys()
                    except Exception as exc:    # (asked once: each view is then made, and says why)
                        log.debug("the kept sizes of a listing: %s: %s", type(exc).__name__, exc)
                        keys = {}
                    found = self._found = self.sizes.get_many(keys)
                    self._keys = None           # (it holds the listing's sources)
        return found.get(name)

    def size_nowait(self, name: str) -> int | None:
        """The kept size of name if the views were looked up already (no I/O)."""
        found = self._found
        return None if found is None else found.get(name)


def _hours() -> int:
    return int(time.time() // 3600)


def _checksum(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=DIGEST).digest()
