"""The nowait twin of `lookup_attr` for directories that find their names in memory."""
from __future__ import annotations

import threading
from typing import Callable

from .nodes import ABSENT, Absent, Attr, Node


def under_lock_nowait(lock: threading.Lock | threading.RLock, fn: Callable, *args):
    """`fn(*args)` under `lock` if it is free at once, else None ("cannot tell": a writer
    holds it, and the daemon asks the blocking twin in a thread)."""
    if not lock.acquire(blocking=False):
        return None
    try:
        return fn(*args)
    finally:
        lock.release()


def lookup_attr_nowait(find: Callable[[str], object], name: str,
                       lock: threading.Lock | threading.RLock | None = None,
                       none_is_absent: bool = False) -> tuple[Node, Attr] | Absent | None:
    """`find(name)`'s node and its attributes when both are known without I/O or a wait;
    `ABSENT` when `find` gave None and `none_is_absent` (its None means "no such name",
    not "cannot tell"); None when `lock` (which `find` needs) is held by another thread,
    when there is no such node, or when its attributes need I/O: then the daemon calls
    `lookup_attr` in a thread, which decides."""
    if lock is not None and not lock.acquire(blocking=False):    # a writer holds it: never wait
        return None
    try:
        node = find(name)
    finally:
        if lock is not None:
            lock.release()
    if node is None and none_is_absent:
        return ABSENT
    attr = node.cached_attr() if isinstance(node, Node) else None
    return None if attr is None else (node, attr)
