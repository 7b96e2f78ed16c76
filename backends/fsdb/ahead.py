"""Attributes learned ahead of a walk: the folders a walker lists next, read from the disk
in a thread of their own while the kernel is busy with the one listed now."""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable

log = logging.getLogger(__name__)


class Learner:
    """After each listing the kernel asks for (`listed`), one thread learns the folders
    that come after it in walk order (`after(folder)`: depth first, as `ls -R`, `find`
    and `du` go) with `folder.learn()`, those not `learned` yet, until it is `ahead`
    entries (`folder.learn_size()`, learned or passed) beyond: a walk then finds them
    in memory, and what is learned ahead of it stays bounded (a folder of more entries
    than that is never learned ahead). A new listing moves it on from there, unless the
    last pass went through the folder listed and on for half of `ahead` entries or more
    beyond it: a walk wakes the thread once per half of `ahead` entries, not at each
    folder it lists (a pass costs the walk's thread the interpreter's lock while it goes
    through the folders ahead). `parallel` folders are learned at a time: their waits
    for the disk overlap. `cpu_ns`: the CPU time its threads spent (for status)."""

    def __init__(self, after: Callable[[object], Iterable], ahead: int, parallel: int = 2):
        self._after = after
        self._ahead = ahead
        self._parallel = parallel
        self._pool: ThreadPoolExecutor | None = None
        self._cond = threading.Condition()
        self._next: object | None = None        # the folder listed last, not yet followed
        self._closed = False
        self._busy = False
        self._thread: threading.Thread | None = None
        self._passed: dict[object, int] = {}    # folders the last pass went through -> entries before each
        self._reach = 0                         # entries it went through
        self.cpu_ns = 0

    def listed(self, folder, again: bool = False) -> None:
        """From any thread, the loop's included: never waits for I/O. `again`: what the
        folders after it need has changed (a walk began to stat files): a new pass."""
        with self._cond:
            if self._closed:
                return
            before = self._passed.get(folder)
            if not again and before is not None and self._reach - before >= self._ahead // 2:
                return                          # (still far enough ahead)
            self._next = folder
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True, name="fsdb-learn-ahead")
                self._thread.start()
            self._cond.notify()

    def idle(self) -> bool:
        """Nothing being learned or waiting to be (for status and tests)."""
        with self._cond:
            return not self._busy and self._next is None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        self._pool = ThreadPoolExecutor(self._parallel, thread_name_prefix="fsdb-learn")
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._next is not None or self._closed)
                if self._closed:
                    return
                start, self._next, self._busy = self._next, None, True
                self._passed, self._reach = {}, 0
            began = time.thread_time_ns()
            learning = deque()
            try:
                budget = self._ahead
                for folder in self._after(start):
                    entries = 1 + folder.learn_size()
                    if entries > budget or self._next is not None or self._closed:
                        break                   # far enough ahead (a folder bigger than all of
                                                # it is for the walk to list), or the walk moved on
                    if not folder.learned:
                        if len(learning) == self._parallel:
                            learning.popleft().result()
                        learning.append(self._pool.submit(self._learn, folder))
                    with self._cond:
                        self._passed[folder] = self._reach
                        self._reach += entries
                    budget -= entries
                for done in learning:
                    done.result()
            except Exception:                   # (a folder gone meanwhile: the walk lists it itself)
                log.debug("learning ahead of %r", start, exc_info=True)
            finally:
                with self._cond:
                    self._busy = False
                    self.cpu_ns += time.thread_time_ns() - began

    def _learn(self, folder) -> None:
        """`folder.learn()` in a thread of the pool, its CPU time counted."""
        began = time.thread_time_ns()
        try:
            folder.learn()
        finally:
            spent = time.thread_time_ns() - began
            with self._cond:
                self.cpu_ns += spent
