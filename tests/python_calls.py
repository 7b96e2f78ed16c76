"""Python calls counted with `sys.setprofile`: the tests that bound a cost count calls,
not seconds (a loaded machine changes seconds, not calls)."""
from __future__ import annotations

import sys
import threading
from collections import Counter


class PythonCalls:
    """The Python function calls made while a `with` block runs, in this thread (and, with
    `threads`, in threads started meanwhile): `calls`, leaving out calls of the code
    objects `ignored`; with `c_calls`, the calls into C by function name too."""

    def __init__(self, threads: bool = False, ignored=(), c_calls: bool = False):
        # (the block's own end, `__exit__`, is no call of the block's)
        self.threads, self.count_c = threads, c_calls
        self.ignored = frozenset(ignored) | {PythonCalls.__exit__.__code__}
        self.calls = 0
        self.c_calls: Counter[str] = Counter()

    def _count(self, frame, event, arg) -> None:
        if event == "call":
            self.calls += frame.f_code not in self.ignored
        elif event == "c_call" and self.count_c:
            self.c_calls[arg.__name__] += 1

    def __enter__(self) -> "PythonCalls":
        if self.threads:
            threading.setprofile(self._count)
        sys.setprofile(self._count)
        return self

    def __exit__(self, *exc) -> None:
        sys.setprofile(None)
        if self.threads:
            threading.setprofile(None)


def python_calls(fn) -> int:
    """The Python functions called while `fn()` runs (in this thread)."""
    with PythonCalls() as counted:
        fn()
    return counted.calls
