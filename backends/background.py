"""Threads a tree starts at mount to learn ahead what a first walk would wait for
(overview.png's size, an imgstore's attributes): daemon threads, so that they hold up
no request, but told to stop and joined, for a bounded time, when the tree closes. A
daemon thread still inside C++ code (OpenCV's encoder) when the interpreter exits is
ended by a forced unwind that C++ cannot pass: the daemon then aborts ("terminate called
without an active exception", status 134) after a clean unmount."""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

log = logging.getLogger(__name__)

#: how long `close` waits for all of a tree's threads together: the longest piece of
#: work they do between looks at `stopping` is one encoding of a blank 2048² plane
#: (~0.1 s of CPU)
CLOSE_WAIT_S = 5.0


class Background:
    """A tree's threads of work done ahead; `stopping` is set at `close`."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self, target: Callable[[], object], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def close(self, timeout: float = CLOSE_WAIT_S) -> None:
        self.stopping.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        left = [thread.name for thread in self._threads if thread.is_alive()]
        if left:
            log.warning("still running %g s after the tree began to close (the exit may abort): %s",
                        timeout, ", ".join(left))
