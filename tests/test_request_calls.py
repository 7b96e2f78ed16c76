"""What the cheapest requests cost the daemon's loop in Python calls: a stream of GETATTRs,
LOOKUPs or OPEN + RELEASE pairs answered from memory (a warm `stat`, `open`/`close` of a
small file) pays them on every request, besides trio's wake-up and the kernel's
round trip. Counted in-process, each handler run to its end in its first step as
pyfuse3's session loop runs it (daemon/pyfuse3-patches/session-loop-reader.patch)."""
from __future__ import annotations

import os

import pytest

import walk_samples
from iid_samples import overview_sized
from python_calls import PythonCalls
from scopefs.backends import iid as iid_backend
from scopefs.backends.options import Options
from scopefs.daemon.fs import Operations

#: Python calls of one request answered from memory on a writable `.iid` (`_guard`'s
#: wrapper and the handler are two of them), exact: all are scopefs's own, and a change
#: either way is to be seen (a cut lowers the number here); before: 13, 19 and 27
GETATTR_CALLS = 8
LOOKUP_CALLS = 15
OPEN_RELEASE_CALLS = 24


def answered_at_once(coro):
    """Run a handler's coroutine as the session loop does; it must not suspend."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise AssertionError("the handler suspended: not answered from memory")


def calls_of(request) -> int:
    request()                                   # (warm: views made, sizes known)
    with PythonCalls(ignored={request.__code__, answered_at_once.__code__}) as counted:
        request()
    return counted.calls


@pytest.fixture
async def entry_json(tmp_path):
    """The Operations of a writable `.iid` and the folder and inode of an entry.json (the
    tree's own thread waited for at the end)."""
    tree = iid_backend.open_tree(str(walk_samples.iid(tmp_path / "cells.iid", 3).path), Options())
    ops = Operations(tree)
    try:
        names = [row[1] for row in tree.get(1).entries(0) if row[1][0].isdigit()]
        folder = (await ops.lookup(1, names[0].encode())).st_ino
        yield ops, folder, (await ops.lookup(folder, b"entry.json")).st_ino
    finally:
        overview_sized()
        tree.close()


async def test_a_getattr_answered_from_memory_costs_few_python_calls(entry_json):
    ops, _, ino = entry_json
    assert calls_of(lambda: answered_at_once(ops.getattr(ino))) == GETATTR_CALLS


async def test_a_lookup_answered_from_memory_costs_few_python_calls(entry_json):
    ops, folder, _ = entry_json
    assert calls_of(lambda: answered_at_once(ops.lookup(folder, b"entry.json"))) == LOOKUP_CALLS


async def test_an_open_and_release_answered_from_memory_cost_few_python_calls(entry_json):
    ops, _, ino = entry_json

    def open_and_release():
        answered_at_once(ops.release(answered_at_once(ops.open(ino, os.O_RDONLY, None)).fh))
    assert calls_of(open_and_release) == OPEN_RELEASE_CALLS
