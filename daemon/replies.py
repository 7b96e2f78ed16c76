"""Requests answered by the worker thread that did their work, not by the event loop."""
from __future__ import annotations

import threading


class ThreadReplies:
    """Bookkeeping of FLUSHes answered from their worker thread (the pyfuse3 patch
    flush-reply-from-thread): the loop then never wakes for their result, about 150 us of
    its CPU per copied file. At most `limit` run at once (beyond that a flush goes through
    trio's limiter as any worker call), and every one is answered before the session
    closes (`close`): one answered after that sends nothing (the patch: its request
    went with the session), and its close(2) got no answer from this daemon."""

    def __init__(self, limit: int):
        self._cond = threading.Condition()
        self._limit = limit
        self._running = 0
        self._open = True

    def take(self) -> bool:
        """A place for one more (then call `done` when it has answered), or False."""
        with self._cond:
            if not self._open or self._running >= self._limit:
                return False
            self._running += 1
            return True

    def done(self) -> None:
        with self._cond:
            self._running -= 1
            self._cond.notify_all()

    def close(self, timeout: float) -> bool:
        """Take no more, and wait until those running have answered; False if some had
        not within `timeout` seconds."""
        with self._cond:
            self._open = False
            return self._cond.wait_for(lambda: not self._running, timeout)
