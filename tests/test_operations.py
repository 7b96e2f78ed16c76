"""The daemon's Operations driven directly (no kernel): counts, errors, caching policy."""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import mmap
import os
import stat
import threading

import numpy as np
import pyfuse3
import pytest
import trio
import trio.testing
from conftest import uncached_file

from scopefs.backends.blocks import BufferHandle, GeneratedFile, StaticDirectory
from scopefs.backends import localfiles
from scopefs.backends.localfiles import OSFileHandle
from scopefs.backends.nodes import ROOT_INO, Attr, File, FileHandle, Symlink, Tree
from scopefs.backends.kernel import cached_pages, resident
from scopefs.daemon.fs import CONTROL_NAME, Operations


class Exploding(File):
    def attr(self):
        raise RuntimeError("backend bug")


class Failing(File):
    """A file whose backend answers every call with `error`."""
    def __init__(self, error: Exception):
        self.error = error

    def attr(self):
        raise self.error

    def open(self, flags):
        raise self.error


class FailingLink(Symlink):
    """A symbolic link whose backend answers the read of its target with `error`."""
    def __init__(self, error: Exception):
        self.error = error

    @property
    def target(self):
        raise self.error


class Denied(File):
    def attr(self):
        return Attr(stat.S_IFREG | 0o444, 10)

    def open(self, flags):
        raise PermissionError(errno.EACCES, "not yours")


class SampleTree(Tree):
    def __init__(self):
        super().__init__()
        self.forgotten = []
        root = self.add(StaticDirectory(mtime_ns=123))
        sub = root.add("sub", self.add(StaticDirectory()))
        self.hello = root.add("hello.txt", self.add(GeneratedFile(lambda: b"hello world", mtime_ns=456)))
        root.add("boom", self.add(Exploding()))
        root.add("denied", self.add(Denied()))
        self.sub = sub

    def forget(self, ino):
        self.forgotten.append(ino)
        super().forget(ino)


@pytest.fixture
def ops():
    return Operations(SampleTree(), threads=2)


async def test_lookup_getattr_and_forget_counts(ops):
    entry = await ops.lookup(ROOT_INO, b"hello.txt")
    assert entry.st_size == 11 and entry.st_mtime_ns == 456 and stat.S_ISREG(entry.st_mode)
    assert entry.st_blocks == 1 and entry.entry_timeout == ops.policy.entry_timeout
    again = await ops.lookup(ROOT_INO, b"hello.txt")
    assert again.st_ino == entry.st_ino
    assert ops._lookups[entry.st_ino] == 2
    ops.forget([(entry.st_ino, 1)])
    assert ops._lookups[entry.st_ino] == 1 and ops.tree.forgotten == []
    ops.forget([(entry.st_ino, 1)])
    assert entry.st_ino not in ops._lookups and ops.tree.forgotten == [entry.st_ino]
    # a fixed node survives being forgotten: same number next time
    assert (await ops.lookup(ROOT_INO, b"hello.txt")).st_ino == entry.st_ino
    attr = await ops.getattr(entry.st_ino)
    assert attr.st_size == 11
    root = await ops.getattr(ROOT_INO)
    assert stat.S_ISDIR(root.st_mode) and root.st_nlink == 3


async def test_negative_entries_are_cached_by_the_kernel(ops):
    entry = await ops.lookup(ROOT_INO, b"missing")
    assert entry.st_ino == 0 and entry.entry_timeout == ops.policy.negative_timeout


async def test_unexpected_exception_becomes_eio_and_one_log_line(ops, caplog):
    caplog.set_level(logging.WARNING)
    with pytest.raises(pyfuse3.FUSEError) as err:
        await ops.lookup(ROOT_INO, b"boom")
    assert err.value.errno == errno.EIO
    failures = [r for r in caplog.records if "backend bug" in (r.exc_text or "") or "lookup" in r.getMessage()]
    assert len(failures) == 1
    assert ops.counters.errors == 1


async def test_os_errors_keep_their_errno(ops):
    entry = await ops.lookup(ROOT_INO, b"denied")
    with pytest.raises(pyfuse3.FUSEError) as err:
        await ops.open(entry.st_ino, os.O_RDONLY, None)
    assert err.value.errno == errno.EACCES


#: the requests by inode that answer ESTALE for an object that is gone (`_gone`)
REQUESTS_BY_INODE = {
    "getattr": lambda ops, ino: ops.getattr(ino),
    "setattr": lambda ops, ino: ops.setattr(ino, pyfuse3.EntryAttributes(), pyfuse3.SetattrFields(), None, None),
    "open": lambda ops, ino: ops.open(ino, os.O_RDONLY, None),
    "readlink": lambda ops, ino: ops.readlink(ino, None),
}


@pytest.mark.parametrize("request_name", REQUESTS_BY_INODE)
@pytest.mark.parametrize("error, answer", [
    (None, errno.ESTALE),                       # the tree no longer has the inode
    (FileNotFoundError(errno.ENOENT, "gone"), errno.ESTALE),
    (pyfuse3.FUSEError(errno.ENOENT), errno.ESTALE),
    (PermissionError(errno.EACCES, "not yours"), errno.EACCES),        # not gone: unchanged
    (pyfuse3.FUSEError(errno.EIO), errno.EIO),
], ids=["no-node", "FileNotFoundError", "FUSEError-ENOENT", "PermissionError", "FUSEError-EIO"])
async def test_an_inode_whose_object_is_gone_is_stale(ops, request_name, error, answer):
    """ENOENT by inode would be wrong: the kernel may have come by a name that now names
    something else; ESTALE makes the VFS look the path up again (`_gone`). Other errors
    pass through."""
    failing = FailingLink if request_name == "readlink" else Failing
    ino = 99999 if error is None else ops.tree.add(failing(error)).ino
    with pytest.raises(pyfuse3.FUSEError) as err:
        await REQUESTS_BY_INODE[request_name](ops, ino)
    assert err.value.errno == answer


async def test_readlink_of_a_file_is_einval(ops):
    with pytest.raises(pyfuse3.FUSEError) as err:
        await ops.readlink(ops.tree.hello.ino, None)
    assert err.value.errno == errno.EINVAL


async def test_open_read_release_and_read_only(ops):
    entry = await ops.lookup(ROOT_INO, b"hello.txt")
    info = await ops.open(entry.st_ino, os.O_RDONLY, None)
    assert info.keep_cache
    assert await ops.read(info.fh, 6, 100) == b"world"
    assert ops.counters.bytes_read == 5
    await ops.release(info.fh)
    with pytest.raises(pyfuse3.FUSEError) as err:
        await ops.read(info.fh, 0, 10)
    assert err.value.errno == errno.EBADF
    with pytest.raises(pyfuse3.FUSEError) as err:
        await ops.open(entry.st_ino, os.O_RDWR, None)
    assert err.value.errno == errno.EROFS
    with pytest.raises(pyfuse3.FUSEError) as err:
        await ops.open(ROOT_INO, os.O_RDONLY, None)
    assert err.value.errno == errno.EISDIR


async def test_unknown_inode_and_not_a_directory(ops):
    with pytest.raises(pyfuse3.FUSEError) as err:
        await ops.getattr(99999)
    assert err.value.errno == errno.ESTALE
    entry = await ops.lookup(ROOT_INO, b"hello.txt")
    with pytest.raises(pyfuse3.FUSEError) as err:
        await ops.lookup(entry.st_ino, b"x")
    assert err.value.errno == errno.ENOTDIR


async def test_control_file_is_hidden_fresh_and_xattrs_are_off(ops):
    ops.info = {"source": "/data/store", "type": "imgstore"}
    entry = await ops.lookup(ROOT_INO, CONTROL_NAME.encode())
    assert entry.attr_timeout == 0 and entry.entry_timeout == 0
    info = await ops.open(entry.st_ino, os.O_RDONLY, None)
    assert info.direct_io and not info.keep_cache
    status = json.loads(await ops.read(info.fh, 0, 1 << 20))
    assert status["pid"] == os.getpid() and status["source"] == "/data/store"
    assert status["requests"] >= 2
    with pytest.raises(pyfuse3.FUSEError) as err:
        await ops.open(entry.st_ino, os.O_WRONLY, None)
    assert err.value.errno == errno.EACCES
    # never listed, so tar, rsync and find do not see it
    assert CONTROL_NAME not in [name for _, name, _, _ in ops.tree.root.entries(0)]
    with pytest.raises(pyfuse3.FUSEError) as err:
        await ops.getxattr(ROOT_INO, b"security.selinux", None)
    assert err.value.errno == errno.ENOSYS



class NotedHandle(FileHandle):
    """Notes whether each call ran on the event loop's thread."""

    def __init__(self, blocks: bool, loop_thread: int):
        self.flush_blocks = self.fsync_blocks = self.release_blocks = blocks
        self.loop_thread, self.on_loop = loop_thread, {}

    def _note(self, call: str) -> None:
        self.on_loop[call] = threading.get_ident() == self.loop_thread

    def flush(self):
        self._note("flush")

    def fsync(self):
        self._note("fsync")

    def release(self):
        self._note("release")


@pytest.mark.parametrize("blocks", [True, False])
async def test_calls_a_handle_declares_blocking_run_in_a_thread_the_others_on_the_loop(ops, blocks):
    ops.tree.writable = True                        # (a read-only tree turns flush off)
    handle = NotedHandle(blocks, threading.get_ident())
    fh = ops._add_handle(handle).fh
    await ops.flush(fh)
    await ops.fsync(fh, False)
    await ops.release(fh)
    assert handle.on_loop == dict.fromkeys(("flush", "fsync", "release"), not blocks)
    flushing = NotedHandle(False, threading.get_ident())
    flushing.flush_blocks = True                   # fsync is flush unless it says otherwise
    await ops.fsync(ops._add_handle(flushing).fh, False)
    assert flushing.on_loop == {"fsync": False}


class LinkOnDisk(Symlink):
    target_blocks = True
    mtime_ns = 0

    def __init__(self, loop_thread: int):
        self.loop_thread, self.read_on_loop = loop_thread, None

    @property
    def target(self) -> str:
        self.read_on_loop = threading.get_ident() == self.loop_thread
        return "there"


async def test_a_link_whose_target_may_block_is_read_in_a_thread(ops):
    on_disk = ops.tree.root.add("on-disk", ops.tree.add(LinkOnDisk(threading.get_ident())))
    in_memory = ops.tree.root.add("in-memory", ops.tree.add(Symlink("here")))
    assert await ops.readlink(on_disk.ino, None) == b"there" and on_disk.read_on_loop is False
    assert await ops.readlink(in_memory.ino, None) == b"here"

def test_dynamic_nodes_keep_their_number_while_remembered():
    tree = Tree()
    tree.add(StaticDirectory())
    a = tree.dynamic(("t", 1), lambda: Symlink("x"))
    assert tree.dynamic(("t", 1), lambda: Symlink("y")) is a
    assert tree.get(a.ino) is a
    tree.forget(a.ino)
    assert tree.get(a.ino) is None
    assert tree.dynamic(("t", 1), lambda: Symlink("x")).ino != a.ino


def test_forgetting_a_fixed_node_keeps_it_whatever_its_attributes_are_called():
    """A fixed node with a `_key` method of its own (FSDB's fileset folders have one) is
    not a dynamic node: the kernel's forget leaves it in place and raises nothing."""
    class Keyed(StaticDirectory):
        def _key(self, *rest):
            return rest

    tree = Tree()
    tree.add(StaticDirectory())
    node = tree.add(Keyed())
    tree.forget(node.ino)
    assert tree.get(node.ino) is node


def test_reserved_ranges_build_nodes_on_demand():
    tree = Tree()
    tree.add(StaticDirectory())
    base = tree.reserve(1_000_000, lambda k: GeneratedFile(lambda: str(k).encode()))
    after = tree.add(StaticDirectory())
    assert after.ino == base + 1_000_000
    node = tree.get(base + 999_999)
    assert node.ino == base + 999_999 and node.open(0).read(0, 10) == b"999999"
    assert tree.get(base + 1_000_001) is None


def test_os_file_reads_answer_from_the_page_cache_without_a_thread(tmp_path):
    path = tmp_path / "data"
    data = os.urandom(3 << 20)
    path.write_bytes(data)
    path.read_bytes()                                   # now in the page cache
    handle = OSFileHandle(str(path))
    try:
        assert handle.cached_read(1 << 20, 1 << 20) == data[1 << 20:2 << 20]
        assert handle.cached_read((3 << 20) - 10, 100) is None     # short: the thread reads on
        assert handle.read((3 << 20) - 10, 100) == data[-10:]
    finally:
        handle.release()


def pages_in_memory(fd: int, offset: int, length: int) -> int:
    """How many pages of the range the page cache holds, read and up to date."""
    mapping = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
    try:
        address = np.frombuffer(mapping, np.uint8).ctypes.data
        return sum(bool(resident(address + at, mmap.PAGESIZE)) for at in range(offset, offset + length, mmap.PAGESIZE))
    finally:
        mapping.close()


def test_mapped_reads_lend_views_of_the_page_cache_and_drop_what_they_lent(tmp_path):
    path = tmp_path / "data"
    data = uncached_file(path, 3 << 20)
    other = os.open(path, os.O_RDONLY)
    if cached_pages(other) != 0:
        os.close(other)
        pytest.skip("this kernel cannot tell what a file has in the page cache (cachestat)")
    handle = OSFileHandle(str(path), drop_behind=True, mapped=True)
    try:
        assert handle.cached_read(1 << 20, 1 << 20) is None         # not cached: the thread reads
        os.pread(other, 2 << 20, 1 << 20)                           # now it is
        view = handle.cached_read(1 << 20, 1 << 20)
        assert isinstance(view, memoryview) and view == data[1 << 20:2 << 20]
        assert pages_in_memory(other, 1 << 20, 1 << 20) == 256       # lent: kept until replied
        assert handle.cached_read(2 << 20, 1 << 20) == data[2 << 20:]
        assert pages_in_memory(other, 1 << 20, 1 << 20) == 0         # the range lent before is dropped
        del view
        handle.release()
        assert cached_pages(other) == 0                              # and the last one at close
    finally:
        os.close(other)


def test_a_handle_closed_unread_maps_nothing_and_asks_the_page_cache_nothing(tmp_path, monkeypatch):
    """Where the kernel keeps a file's pages (a copick mount: keep_cache), its next opens
    and closes come with no read: the mapping and the page cache's count wait for the
    first read (made at every open, they were most of the daemon's time per warm read
    of a small file)."""
    path = tmp_path / "picks.json"
    path.write_bytes(b"{}" * 100)
    asked = []
    monkeypatch.setattr(localfiles, "cached_pages", lambda fd: asked.append(fd) or 0)

    def mapped() -> bool:
        return str(path) in open("/proc/self/maps").read()
    handle = OSFileHandle(str(path), drop_behind=True, mapped=True)
    assert not mapped() and asked == []
    handle.release()
    handle = OSFileHandle(str(path), drop_behind=True, mapped=True)
    try:
        assert handle.read(0, 4) == b"{}{}" and handle.cached_read(0, 4) is not None
        assert mapped() and len(asked) == 1
    finally:
        handle.release()


def test_a_mapped_read_past_the_end_gets_the_tail_while_the_file_keeps_its_length(tmp_path):
    """The kernel asks for whole pages: the last read of a file runs past its end, and is
    answered from the mapping as pread would answer it, unless the file changed length."""
    path = tmp_path / "data"
    data = os.urandom(10_000)
    path.write_bytes(data)
    assert path.read_bytes() == data                 # in the page cache
    handle = OSFileHandle(str(path), mapped=True)
    try:
        tail = handle.cached_read(8192, 4096)
        assert isinstance(tail, memoryview) and tail == data[8192:]
        del tail
        with open(path, "ab") as fh:
            fh.write(b"more")
        assert handle.cached_read(8192, 4096) is None                # grown: the thread reads on
        assert handle.read(8192, 4096) == data[8192:] + b"more"
    finally:
        handle.release()


def test_a_view_of_a_file_cut_short_fails_the_kernels_copy_with_an_error_not_a_signal(tmp_path):
    """The daemon replies with writev(2) from the view: the kernel's copy of bytes that
    are gone fails (the FUSE request then ends in EIO), and the daemon lives on."""
    path = tmp_path / "data"
    data = uncached_file(path, 2 << 20)
    assert path.read_bytes() == data
    handle = OSFileHandle(str(path), mapped=True)
    read_end, write_end = os.pipe()
    try:
        view = handle.cached_read(1 << 20, 64 << 10)
        assert isinstance(view, memoryview)
        os.truncate(path, 4096)
        with pytest.raises(OSError) as failed:
            os.writev(write_end, [view])
        assert failed.value.errno == errno.EFAULT
        del view
    finally:
        handle.release()
        os.close(read_end)
        os.close(write_end)


class FailingFlush(FileHandle):
    flush_blocks = True

    def __init__(self, error: Exception | None):
        self.error, self.thread = error, None

    def flush(self):
        self.thread = threading.get_ident()
        if self.error is not None:
            raise self.error


@pytest.mark.skipif(not hasattr(pyfuse3, "FlushReply"), reason="pyfuse3 without the flush-reply-from-thread patch")
@pytest.mark.parametrize("error, answer", [(None, 0), (OSError(errno.ENOSPC, "full"), errno.ENOSPC),
                                           (ValueError("backend bug"), errno.EIO)])
async def test_a_flush_in_a_thread_answers_what_the_flush_did_from_that_thread(error, answer, caplog):
    """A FLUSH whose commit blocks is handed to a worker thread, which answers it itself:
    success once the flush returned, or its error mapped as every handler's is (an
    OSError its errno, anything else EIO); the loop is not involved."""
    tree = SampleTree()
    tree.writable = True
    ops = Operations(tree, threads=2)
    handle = FailingFlush(error)
    fh = ops._add_handle(handle).fh
    later = await ops.flush(fh)
    assert callable(later) and ops.status()["flushes_answered_by_thread"] == 1
    answered = threading.Event()
    replies = []

    def reply(code: int) -> bool:
        replies.append((code, threading.get_ident()))
        answered.set()
        return True

    with caplog.at_level(logging.DEBUG, logger="scopefs.daemon.fs"):
        later(reply)
        assert await trio.to_thread.run_sync(answered.wait, 10)
    assert replies == [(answer, handle.thread)] and handle.thread != threading.get_ident()
    assert ops.thread_replies.close(1)             # (each answered, so the session may close)
    assert ops.counters.errors == (answer != 0)                # (each failure counted and logged once)


async def test_a_read_only_tree_turns_flush_off(ops):
    """Nothing is committed at close in a read-only tree: ENOSYS tells the kernel to stop
    sending FLUSH at every close(2), one request less per file read."""
    entry = await ops.lookup(ROOT_INO, b"hello.txt")
    info = await ops.open(entry.st_ino, os.O_RDONLY, None)
    with pytest.raises(pyfuse3.FUSEError) as err:
        await ops.flush(info.fh)
    assert err.value.errno == errno.ENOSYS and ops.counters.errors == 0
    await ops.release(info.fh)


def test_a_change_waits_only_for_inodes_the_kernel_holds():
    """A change's request waits for its inodes' invalidations (so the caller's next stat
    sees them) only if the kernel holds one of them: of the others it has nothing stale."""
    from scopefs.daemon.fs import Counters, Notifier

    known: dict[int, int] = {7: 1}
    notifier = Notifier(Counters(), known)
    notifier.report((5, 6), ((1, "name"),))
    assert notifier.mark() is None                     # nothing to wait for: no thread hop
    notifier.report((5, 7), ())
    assert notifier.mark() is not None


def test_a_replying_thread_sends_its_own_inode_reports_and_waits_for_those_reported_before(monkeypatch):
    """A thread that answers its request itself (a FLUSH's) sends the inodes it reported
    (`Notifier.held`): no hop to the inodes' thread and back. It still returns only once
    what was reported before it, and is being sent by that thread, was sent."""
    from scopefs.daemon.fs import Counters, Notifier

    sent, blocking, sent5 = [], threading.Event(), threading.Event()

    def invalidate_inode(ino):
        if ino == 6:
            assert blocking.wait(10)                 # (the inodes' thread, held up in the kernel)
        sent.append((ino, threading.current_thread().name))
        if ino == 5:
            sent5.set()
    monkeypatch.setattr(pyfuse3, "invalidate_inode", invalidate_inode)
    counters = Counters()
    notifier = Notifier(counters, {5: 1, 6: 1, 7: 1})
    notifier.start()
    try:
        with notifier.held():
            notifier.report((7,), ())
        assert sent == [(7, threading.current_thread().name)] and counters.notify_waits == 0

        notifier.report((6,), ())                    # (sent by the inodes' thread, which waits)
        done, sent_when_done = threading.Event(), []

        def replying():
            with notifier.held():
                notifier.report((5,), ())
            sent_when_done.extend(sent)
            done.set()
        replier = threading.Thread(target=replying, name="replier")
        replier.start()
        assert sent5.wait(10)
        assert (5, "replier") in sent and notifier.mark() is not None
        assert not done.is_set()                     # (5 is sent, 6 is not: it waits for 6)
        blocking.set()
        assert done.wait(10)
        replier.join()
        assert sent[-1] == (6, "notify-inodes") and notifier.mark() is None
        assert (6, "notify-inodes") in sent_when_done     # (it returned only once 6 was sent)
        assert counters.invalidations == 3
    finally:
        blocking.set()
        notifier.stop()


def test_a_change_made_on_the_loop_sends_its_inodes_attributes_only_and_never_waits(monkeypatch):
    """A commit made on the event loop (`flush_nowait`) sends the inodes it reported from
    the loop, attributes only (which never waits on a page a read holds), and returns
    without waiting for what the inodes' thread is sending (the loop awaits that)."""
    from scopefs.daemon.fs import Counters, Notifier

    sent, blocking = [], threading.Event()

    def invalidate_inode(ino, attr_only=False):
        if ino == 6:
            assert blocking.wait(10)                 # (the inodes' thread, held up in the kernel)
        sent.append((ino, attr_only, threading.current_thread().name))
    monkeypatch.setattr(pyfuse3, "invalidate_inode", invalidate_inode)
    counters = Counters()
    notifier = Notifier(counters, {6: 1, 7: 1})
    notifier.start()
    try:
        notifier.report((6,), ())                    # (sent by the inodes' thread, held up)
        with notifier.held(on_loop=True):
            notifier.report((7, 8), ())              # (8: the kernel holds nothing of it)
        assert sent == [(7, True, threading.current_thread().name)]
        assert counters.notify_waits == 0 and notifier.mark() is not None     # (6 is not sent yet)
        blocking.set()
        notifier.wait_sent()
        assert sent[-1] == (6, False, "notify-inodes") and notifier.mark() is None
    finally:
        blocking.set()
        notifier.stop()


async def test_only_a_handle_that_commits_in_memory_is_flushed_on_the_loop(ops, monkeypatch):
    """A flush is tried on the loop (`flush_nowait`, inside `Notifier.held`) only for a
    handle class that defines it: any other costs no call more, and a `BufferHandle`
    (copick's) flushes in a thread as it always did, clean or not."""
    entered = []
    monkeypatch.setattr(ops.notifier, "held", lambda on_loop=False: entered.append(on_loop) or contextlib.nullcontext())
    ops.tree.writable = True
    committed = []
    for handle in (NotedHandle(True, threading.get_ident()), BufferHandle(b"clean", committed.append)):
        before = ops.counters.worker_calls
        await ops.flush(ops._add_handle(handle).fh)
        assert ops.counters.worker_calls == before + 1, handle
    assert entered == [] and committed == []


class RefusedOnLoop(FileHandle):
    flush_blocks = True

    def __init__(self, tree: Tree):
        self.tree = tree

    def flush_nowait(self) -> bool:
        self.tree.report(ROOT_INO)                  # (what a refused commit reports)
        raise OSError(errno.EINVAL, "not a mask")


async def test_a_flush_refused_on_the_loop_waits_for_what_it_reported(ops, monkeypatch):
    """A commit refused on the loop answers its error only once the kernel was told of what
    it reported, as one accepted there (and one in a thread) does."""
    waited = []

    async def notified():
        waited.append(True)
    monkeypatch.setattr(ops, "_notified", notified)
    ops.tree.writable = True
    with pytest.raises(pyfuse3.FUSEError) as refused:
        await ops.flush(ops._add_handle(RefusedOnLoop(ops.tree)).fh)
    assert refused.value.errno == errno.EINVAL and waited == [True]


def test_a_store_refused_for_want_of_the_inode_is_sent_again_only_after_a_lookup(monkeypatch, tmp_path):
    """A read-ahead thread's store the kernel refuses with ENOENT (a reader that opens
    files by name) is sent again once the daemon stat'ed the file from the mount point's
    folder; never for another error, a file `Tree.path_of` does not name, or a file found
    on another device (then never again); after `stop` nothing is stored, and a stat
    nobody answers any more is not waited for. `store` says whether the kernel took it
    (the read-ahead then keeps no copy): only after a store sent, at once or again."""
    from scopefs.daemon.fs import Counters, Notifier

    (tmp_path / "mnt" / "frames").mkdir(parents=True)
    for name in ("a", "b", "slow"):
        (tmp_path / "mnt" / "frames" / name).write_bytes(b"")
    known, sent, errors = set(), [], {11: errno.EINVAL}

    def notify_store(ino, offset, data):
        if ino in errors:
            raise OSError(errors[ino], "refused")
        if ino not in known:
            raise OSError(errno.ENOENT, "no inode")
        sent.append(ino)
    monkeypatch.setattr(pyfuse3, "notify_store", notify_store)
    real_stat, stalled, go_on = os.stat, threading.Event(), threading.Event()

    def stat(path, *args, dir_fd=None, **kwargs):
        found = real_stat(path, *args, dir_fd=dir_fd, **kwargs)
        if dir_fd is not None:                       # (the daemon's LOOKUP: the kernel knows it now)
            if path.endswith("slow"):
                stalled.set()
                assert go_on.wait(10)
            known.add({"a": 10, "b": 13, "slow": 14}[os.path.basename(path)])
        return found
    monkeypatch.setattr(os, "stat", stat)
    paths = {10: "frames/a", 11: "frames/a", 13: "frames/b", 14: "frames/slow"}
    located = []
    counters = Counters()
    notifier = Notifier(counters, {}, lambda ino: located.append(ino) or paths.get(ino))
    notifier.start()
    notifier.live(os.open(tmp_path, os.O_PATH | os.O_DIRECTORY), "mnt", real_stat(tmp_path / "mnt").st_dev)
    try:
        assert notifier.store(10, b"x", wait=True) is True       # (after the daemon's own lookup)
        assert notifier.store(10, b"x", wait=True) is True       # (known now: no second stat)
        assert notifier.store(11, b"x", wait=True) is False      # (EINVAL: no stat)
        assert notifier.store(12, b"x", wait=True) is False      # (no path)
        assert sent == [10, 10] and located == [10, 12]
        assert counters.lookups_to_store == 1 and counters.stored_ahead == 2

        taken = []
        storing = threading.Thread(target=lambda: taken.append(notifier.store(14, b"x", wait=True)))
        storing.start()
        assert stalled.wait(10)
        stopped = threading.Thread(target=notifier.stop)
        stopped.start()
        stopped.join(10)
        assert not stopped.is_alive() and storing.is_alive()
        assert not notifier._storing                 # (stop did not wait for the stat: it is not counted)
        go_on.set()
        storing.join(10)
        assert sent == [10, 10] and notifier._parent is None      # (stopped: not stored; closed)
        assert taken == [False]
    finally:
        go_on.set()
        notifier.stop()

    notifier = Notifier(counters, {}, paths.get)
    notifier.start()
    notifier.live(os.open(tmp_path, os.O_PATH | os.O_DIRECTORY), "mnt", real_stat(tmp_path / "mnt").st_dev + 1)
    try:
        known.clear()
        assert notifier.store(13, b"x", wait=True) is False      # (found elsewhere: not this mount)
        known.clear()
        assert notifier.store(10, b"x", wait=True) is False      # (never looked up again)
        assert sent == [10, 10] and 10 not in known and notifier._parent is None
        known.add(13)
        assert notifier.store(13, b"x") is False     # (the stores' thread sends it later: not known taken here)
    finally:
        notifier.stop()


class HandleLog(FileHandle):
    def __init__(self, log: list):
        self.log = log

    def read(self, offset, size):
        self.log.append("read")
        return b"0123456789"[offset:offset + size]

    def release(self):
        self.log.append("released")


class Logged(File):
    def __init__(self, log: list):
        self.log = log

    def attr(self):
        return Attr(stat.S_IFREG | 0o444, 10)

    def open(self, flags):
        self.log.append("opened")
        return HandleLog(self.log)


class Broken(File):
    def attr(self):
        return Attr(stat.S_IFREG | 0o444, 10)

    def open(self, flags):
        raise OSError(errno.EIO, "cannot make it")


async def test_where_the_kernel_opens_files_reads_come_by_inode(caplog):
    """OPEN says ENOSYS (the kernel then opens files itself); a handle is opened at an
    inode's first read, kept for the reads that follow and released at the end of the
    file or when the kernel forgets the inode; a file that fails is logged once."""
    tree = SampleTree()
    events = []
    tree.root.add("logged", tree.add(Logged(events)))
    tree.root.add("broken", tree.add(Broken()))
    ops = Operations(tree, threads=2, kernel_opens=True)
    logged = (await ops.lookup(ROOT_INO, b"logged")).st_ino
    with pytest.raises(pyfuse3.FUSEError) as err:
        await ops.open(logged, os.O_RDONLY, None)
    assert err.value.errno == errno.ENOSYS
    assert await ops.read_unopened(logged, 0, 4) == b"0123"
    assert await ops.read_unopened(logged, 4, 4) == b"4567"
    assert events == ["opened", "read", "read"] and len(ops.unopened) == 1
    assert await ops.read_unopened(logged, 8, 4096) == b"89"          # the end: released
    await trio.testing.wait_all_tasks_blocked()
    assert events[-1] == "released" and len(ops.unopened) == 0
    events.clear()
    await ops.read_unopened(logged, 0, 4)
    ops.forget([(logged, 1)])
    await trio.testing.wait_all_tasks_blocked()
    assert events == ["opened", "read", "released"] and len(ops.unopened) == 0
    caplog.set_level(logging.WARNING)
    broken = (await ops.lookup(ROOT_INO, b"broken")).st_ino
    for _ in range(3):                          # the kernel asks again at once
        with pytest.raises(pyfuse3.FUSEError) as err:
            await ops.read_unopened(broken, 0, 4096)
        assert err.value.errno == errno.EIO
    assert sum("cannot make it" in r.getMessage() for r in caplog.records) == 1
    assert ops.counters.errors == 3 and ops.status()["read_requests"] == 7


def test_handles_by_inode_are_bounded_and_never_released_under_a_read():
    from scopefs.daemon.unopened import UnopenedFiles
    released = []
    files = UnopenedFiles(2, released.append)
    a, b, c = FileHandle(), FileHandle(), FileHandle()
    reading = files.add(1, a)                   # a read of inode 1 in flight
    files.end(2, files.add(2, b), at_end=False)
    files.end(3, files.add(3, c), at_end=False)  # a third file: inode 1 goes first...
    assert released == [] and len(files) == 2   # ...but only once its read is over
    files.end(1, reading, at_end=False)
    assert released == [a]
    held = files.begin(2)
    assert held.handle is b and files.add(2, FileHandle()) is held    # a second open loses
    assert len(released) == 2
    files.forget(2)                             # the kernel forgot it under two reads
    files.end(2, held, at_end=True)
    assert b not in released
    files.end(2, held, at_end=False)
    assert released[-1] is b and len(files) == 1


def test_what_the_daemon_holds_turns_stale_before_the_kernel_is_told(monkeypatch):
    """A change reported by a tree (a watch, a commit) first makes the daemon's prepared
    listings and lean answers stale, and only then goes to the kernel: a walker told first
    would re-read the folder from a reply prepared before the change."""
    from scopefs.daemon import fs
    order = []
    monkeypatch.setattr(fs.PreparedListings, "changed", lambda self, *report: order.append("prepared"))
    monkeypatch.setattr(fs.LeanRule, "changed", lambda self, *report: order.append("lean"))
    monkeypatch.setattr(fs.Notifier, "report", lambda self, *report: order.append("kernel"))
    tree = SampleTree()
    Operations(tree, threads=2)
    tree.report(tree.sub.ino)
    assert order == ["prepared", "lean", "kernel"]
