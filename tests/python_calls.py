"""Python calls counted with `sys.setprofile`: the tests that bound a cost count calls,
not seconds (a loaded machine changes seconds, not calls)."""
from __future__ import annotations

import os
import sys
import threading
from collections import Counter


def folders_of(*modules) -> tuple[str, ...]:
    """The folders holding `modules` (a package: its own folder), as `within` takes them."""
    return tuple(os.path.dirname(module.__file__) + os.sep for module in modules)


class PythonCalls:
    """The Python function calls made while a `with` block runs, in this thread (and, with
    `threads`, in threads started meanwhile): `calls`, leaving out calls of the code
    objects `ignored` and, given `within` (folders, see `folders_of`), calls of code
    outside them; with `c_calls`, the calls into C by function name too (with
    `c_modules`, e.g. {"posix"}, those of these modules only). A block may be entered
    again, one entry at a time: the counts add up (entries that overlap, e.g. from two
    trio tasks, stop counting at the first exit)."""

    def __init__(self, threads: bool = False, ignored=(), within: tuple[str, ...] = (),
                 c_calls: bool = False, c_modules=None):
        # (the block's own end, `__exit__`, is no call of the block's)
        self.threads, self.count_c, self.within = threads, c_calls or c_modules is not None, tuple(within)
        self.c_modules = None if c_modules is None else frozenset(c_modules)
        self.ignored = frozenset(ignored) | {PythonCalls.__exit__.__code__}
        self.calls = 0
        self.c_calls: Counter[str] = Counter()

    def _count(self, frame, event, arg) -> None:
        if event == "call":
            code = frame.f_code
            self.calls += code not in self.ignored and (not self.within or code.co_filename.startswith(self.within))
        elif event == "c_call" and self.count_c:
            if self.c_modules is None or getattr(arg, "__module__", None) in self.c_modules:
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
