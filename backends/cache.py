"""A thread-safe LRU cache bounded by bytes, that makes each missing value only once.

Several kernel requests for one frame arrive together (one per 128 KiB); the first one
makes the value and the others wait for it instead of decoding the frame again.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Hashable


def _size_of(value) -> int:
    nbytes = getattr(value, "nbytes", None)
    return int(nbytes) if nbytes is not None else len(value)


class _Pending:
    """A value being made. Waiters block on a lock held until it is made: lighter than an
    Event (which is a condition, a lock and five Python calls more per value)."""
    __slots__ = ("_made", "value", "error")

    def __init__(self):
        self._made = threading.Lock()
        self._made.acquire()
        self.value = None
        self.error: BaseException | None = None

    def set(self) -> None:
        self._made.release()

    def wait(self) -> None:
        with self._made:
            pass


_ABSENT = (None, 0)         # the (value, size) of a key not cached


class ByteCache:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        # key -> (value, its size): dropping a value takes its size back without sizing it again
        self._items: OrderedDict[Hashable, tuple[object, int]] = OrderedDict()
        self._bytes = 0
        self._pending: dict[Hashable, _Pending] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def used_bytes(self) -> int:
        return self._bytes

    def _hit(self, key: Hashable):
        """The cached value, marked recently used; call with the lock held."""
        value, _ = self._items.get(key, _ABSENT)
        if value is not None:
            self._items.move_to_end(key)
            self.hits += 1
        return value

    def get(self, key: Hashable):
        with self._lock:
            return self._hit(key)

    def put(self, key: Hashable, value) -> None:
        size = _size_of(value)
        with self._lock:
            self._bytes -= self._items.pop(key, _ABSENT)[1]
            if size > self.max_bytes:
                return                      # never cache what would flush everything else
            self._items[key] = value, size
            self._bytes += size
            while self._bytes > self.max_bytes:
                self._bytes -= self._items.popitem(last=False)[1][1]

    def discard(self, key: Hashable) -> None:
        """Forget `key`'s value (kept elsewhere now): its memory is free for the next."""
        with self._lock:
            self._bytes -= self._items.pop(key, _ABSENT)[1]

    def claim(self, key: Hashable) -> bool:
        """Promise to make `key` (True), unless it is cached or being made already.
        Whoever claims must call `complete`; `get_or_make` callers wait meanwhile."""
        with self._lock:
            if key in self._items or key in self._pending:
                return False
            self._pending[key] = _Pending()
            self.misses += 1
            return True

    def complete(self, key: Hashable, value=None, error: BaseException | None = None) -> None:
        if error is None:
            self.put(key, value)
        with self._lock:
            pending = self._pending.pop(key)
        pending.value, pending.error = value, error
        pending.set()

    def get_or_make(self, key: Hashable, make: Callable[[], object]):
        with self._lock:
            value = self._hit(key)
            if value is not None:
                return value
            pending = self._pending.get(key)
            owner = pending is None
            if owner:
                pending = self._pending[key] = _Pending()
                self.misses += 1
        if not owner:
            pending.wait()
            if pending.error is not None:
                raise pending.error
            return pending.value
        try:
            value = make()
        except BaseException as exc:
            self.complete(key, error=exc)
            raise
        self.complete(key, value)
        return value
