"""An imgstore at scale: listing a big directory costs the daemon work per batch, not
Python per entry, and a reader going through the frames in order (tar, rsync, cp) is
served by the read-ahead all the way.

The daemon's Operations are driven without the kernel: `readdir_reply` is replaced by a
buffer that takes a few hundred entries per call (as the kernel's does), worker-thread
calls run inline, and every Python function call is counted with `sys.setprofile`. The
counts, not seconds, must not grow with the number of frames.
"""
from __future__ import annotations

import gc
import logging
import math
import mmap
import os
import resource
import threading
import time
from types import SimpleNamespace

import cv2
import numpy as np
import pyfuse3
import pytest
from conftest import wait_for
from python_calls import PythonCalls
from stores import index_only_store

from scopefs.backends import imgstore
from scopefs.formats.imgstore.sample import make_sample
from scopefs.backends.options import MountError, Options
from scopefs.daemon import fs
from scopefs.daemon.fs import Operations

#: entries one kernel readdir buffer takes (about what 128 KiB hold for short names)
PER_REPLY = 700


class Listing:
    """Drives opendir/readdir/releasedir of one directory; counts Python calls, thread hops."""

    def __init__(self, ops: Operations, monkeypatch):
        self.ops = ops
        self.names: list[bytes] = []
        self.inodes: list[int] = []
        self.sizes: list[int] = []
        self.room = 0
        self.hops = 0

        def reply(token, name, entry, next_id):
            if not self.room:
                return False
            self.room -= 1
            self.names.append(name)
            self.inodes.append(entry.st_ino)
            self.sizes.append(entry.st_size)
            self.next_id = next_id
            return True

        async def inline(fn, *args, data=False):
            self.hops += 1
            return fn(*args)

        self.reply_code = reply.__code__          # the kernel's side: not counted
        monkeypatch.setattr(pyfuse3, "readdir_reply", reply)
        monkeypatch.setattr(ops, "_run", inline)
        # no kernel to answer from listings prepared ahead (daemon/prepared.py): the
        # listing as readdir answers it
        monkeypatch.setattr(ops.prepared, "enabled", False)

    async def __call__(self, ino: int) -> int:
        """List `ino` to its end; the number of Python function calls it took."""
        if self.ops.kernel_opens_dirs:             # no OPENDIR: readdir gets fh 0 and the inode
            fh, token = 0, SimpleNamespace(inode=ino)
        else:
            fh, token = await self.ops.opendir(ino, None), None
        self.next_id = 0
        with PythonCalls(ignored={self.reply_code}) as counted:
            while True:
                before = len(self.names)
                self.room = PER_REPLY
                await self.ops.readdir(fh, self.next_id, token)
                if len(self.names) == before:
                    break
        if fh:
            await self.ops.releasedir(fh)
        return counted.calls


def mounted_tree(path, frames: int):
    return imgstore.open_tree(str(index_only_store(path, range(frames), chunksize=1000)), Options())


async def listing_calls(tmp_path, monkeypatch, frames: int, folder: str) -> tuple[int, Listing]:
    tree = mounted_tree(tmp_path / f"store{frames}", frames)
    try:
        ops = Operations(tree)
        listing = Listing(ops, monkeypatch)
        directory = tree.root.lookup(folder)
        calls = await listing(directory.ino)
        assert len(listing.names) == frames
        assert len(set(listing.inodes)) == frames and tree.get(listing.inodes[-1]).i in range(frames)
        assert set(listing.sizes) == {tree.service.size(0)}
        return calls, listing
    finally:
        tree.close()


@pytest.mark.parametrize("folder", ["frames", "by-number"])
async def test_listing_frames_calls_no_python_per_entry(tmp_path, monkeypatch, folder):
    small, _ = await listing_calls(tmp_path, monkeypatch, 100, folder)
    big, listing = await listing_calls(tmp_path, monkeypatch, 10_000, folder)
    assert listing.names[:2] == [b"000000.png", b"000001.png"] and listing.names[-1] == b"009999.png"
    # work grows with batches of READDIR_BATCH and kernel buffers, not with entries
    batches = -(-10_000 // fs.READDIR_BATCH)
    assert listing.hops == batches                # the readdir after the end takes none
    assert big / 10_000 < 0.1, f"{big / 10_000:.2f} Python calls per listed entry"
    assert big < small * (batches + 10_000 // PER_REPLY)


def test_entry_batch_names_negative_and_duplicate_numbers_as_entries_does(tmp_path):
    numbers = [5, 3, 3, -2, 7, 3, 10, 10, 0]
    tree = imgstore.open_tree(str(index_only_store(tmp_path / "s", numbers, chunksize=4)), Options())
    try:
        for folder in ("frames", "by-number"):
            directory = tree.root.lookup(folder)
            expected = [(nxt, os.fsencode(name), node.ino, node.attr()) for nxt, name, node, _ in directory.entries(0)]
            for count in (1, 2, 3, 100):
                got = []
                while len(got) < len(expected):
                    batch = directory.entry_batch(len(got), count)
                    assert 0 < len(batch) <= count
                    got += batch
                assert got == expected
                assert directory.entry_batch(len(expected), count) == []
        assert [e[1] for e in expected] == [b"-000002.png", b"000000.png", b"000003.png", b"000003.dup1.png",
                                            b"000003.dup2.png", b"000005.png", b"000007.png", b"000010.png",
                                            b"000010.dup1.png"]
    finally:
        tree.close()


async def test_stat_of_one_frame_costs_the_same_in_small_and_big_stores(tmp_path, monkeypatch):
    counts = []
    for frames in (100, 10_000):
        tree = mounted_tree(tmp_path / f"store{frames}", frames)
        try:
            ops = Operations(tree)
            Listing(ops, monkeypatch)
            frames_dir = tree.root.lookup("frames")
            await ops.lookup(frames_dir.ino, b"000042.png")      # the chunk's time is learned once
            gc.collect()                # (no finalizer of an earlier test's garbage counted here)
            gc.disable()
            try:
                with PythonCalls() as counted:
                    entry = await ops.lookup(frames_dir.ino, b"000057.png")
                    await ops.getattr(entry.st_ino)
            finally:
                gc.enable()
            counts.append(counted.calls)
        finally:
            tree.close()
    assert counts[0] == counts[1]


def test_a_reader_served_from_read_ahead_keeps_it_going(tmp_path):
    """Frames read ahead are answered without a worker thread (`cached_read`); such a read
    must move the read-ahead on, or it stops after `prefetch` frames and every later frame
    is decoded while the reader waits."""
    make_sample(str(tmp_path / "video"), "mjpeg/avi", frames=40, chunksize=100)
    tree = imgstore.open_tree(str(tmp_path / "video"), Options({"prefetch": "4"}))
    try:
        service = tree.service
        for i in (0, 1):                          # two reads in order start the read-ahead
            assert imgstore.FrameHandle(service, i).read(0, 1 << 20)
        for i in range(2, 40):
            handle = imgstore.FrameHandle(service, i)
            assert wait_for(lambda: handle.cached_read(0, 1 << 20) is not None, 5, every=0.005), \
                f"frame {i} was not read ahead"
        assert service.frames_decoded == 40
    finally:
        tree.close()


def test_frames_read_ahead_are_offered_whole_and_reads_of_signposts_keep_it_going(tmp_path):
    """Frames read ahead are offered to the kernel's page cache (`Tree.offer`), so that a
    reader going in order (tar, rsync) finds them there. Where the kernel opens files
    itself, such a reader sends nothing for them: of every other frame (prefetch 4) the
    last page is kept back, a signpost whose read moves the read-ahead on; what is
    offered must be exactly what a read returns."""
    make_sample(str(tmp_path / "video"), "mjpeg/avi", frames=40, chunksize=100)
    tree = imgstore.open_tree(str(tmp_path / "video"), Options({"prefetch": "4"}))
    offered: dict[int, bytes] = {}
    tree.listen_content(lambda ino, data, offset=0, wait=False: offered.__setitem__(ino, data))
    try:
        service = tree.service
        assert service.signpost_every == 2
        for i in (0, 1):                          # two frames read in order start the read-ahead
            assert tree.frame_node(i).open_nowait(os.O_RDONLY).read(0, 1 << 20)
        for i in range(2, 40):
            # the reader finds it in the kernel's cache
            assert wait_for(lambda: tree.frames_base + i in offered, 5, every=0.005), f"frame {i} was not offered"
            if i % 2 == 0:                        # a signpost: the reader's one request
                data = bytes(tree.frame_node(i).open_nowait(os.O_RDONLY).read(0, 1 << 20))
                kept = bytes(offered[tree.frames_base + i])
                assert data.startswith(kept) and 0 < len(data) - len(kept) <= mmap.PAGESIZE
                assert len(kept) % mmap.PAGESIZE == 0
        assert service.frames_decoded == 40
        assert sorted(offered) == [tree.frames_base + i for i in range(2, 40)]
        assert tree.status()["frames_offered"] == 38
        fresh = imgstore.open_tree(str(tmp_path / "video"), Options({"prefetch": "0"}))
        try:
            for i in (3, 17, 39):
                assert offered[tree.frames_base + i] == imgstore.FrameHandle(fresh.service, i).read(0, 1 << 20)
        finally:
            fresh.close()
    finally:
        tree.close()


@pytest.fixture
def no_encoder_threads(monkeypatch):
    """The read-ahead's decoder thread encodes and stores every frame itself, as on two
    CPUs, whatever this machine has: page faults and Python calls a frame, counted, then
    do not depend on its CPUs (`imgstore.encoder_threads`: one per CPU beyond two, each
    faulting in a heap of its own and adding a hand-off a frame; with 14, 24-40 faults a
    frame in the tests below, and 38 calls)."""
    monkeypatch.setattr(imgstore, "encoder_threads", lambda: 0)


def test_a_sequential_reader_faults_in_no_new_memory_per_frame(tmp_path, no_encoder_threads):
    """Frames read in order must reuse memory, not fault in fresh pages for every frame:
    caches of decoded and encoded frames filling with 192 + 48 MiB did that (65 page
    faults a 320x240 frame on a fresh mount; 113 here, with a copy per read). The cache
    is sized by frames (the kernel's page cache keeps what was read), decoded frames are
    not kept, and reads are views of the one encoding, not copies."""
    make_sample(str(tmp_path / "video"), "mjpeg/avi", frames=300, chunksize=300)
    tree = imgstore.open_tree(str(tmp_path / "video"), Options({}))
    try:
        service = tree.service

        def read(i: int) -> int:
            handle = tree.frame_node(i).open_nowait(os.O_RDONLY)
            data = handle.read(0, 1 << 20)
            assert data.obj is service.encoded.get(i).obj       # the cached encoding, not a copy
            return len(data)

        for i in range(100):                                    # the cache fills
            read(i)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for i in range(100, 300):                               # (the decoder thread's heap settles)
            read(i)
        per_frame = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / 200
        # (1 to 14 measured, as the heap of the thread that allocates frames grows and trims)
        assert per_frame < 20, f"{per_frame:.1f} page faults a frame ({read(0)} bytes: {read(0) // 4096} pages)"
        assert service.frames_decoded == 300
    finally:
        tree.close()


def test_frames_the_kernel_took_whole_are_not_kept_a_second_time(tmp_path, no_encoder_threads):
    """A frame the read-ahead stored whole in the kernel's page cache (which keeps it:
    keep_cache) is dropped from the encoded cache, and its memory takes the next frame's
    encoding. Kept, every frame was new memory until that cache was full (144 frames of
    320x240, 57 page faults each): the daemon faulted 62 times a frame in a `tar` of a
    fresh 100-frame mount (10 now). Signposts, whose last page the reader reads from the
    daemon, and the frames the reader read itself stay."""
    make_sample(str(tmp_path / "video"), "mjpeg/avi", frames=100, chunksize=100)
    tree = imgstore.open_tree(str(tmp_path / "video"), Options({}))
    offered: dict[int, range] = {}

    def store(ino, data, offset=0, wait=False) -> bool:
        offered[ino] = range(len(data))         # (its length: holding the bytes would keep them)
        return True                             # (the kernel took it)
    tree.listen_content(store)
    try:
        service = tree.service
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        reads = _read_in_order_as_tar(tree, offered, 100)
        per_frame = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / 100
        assert service.frames_decoded == 100
        kept = service.encoded.used_bytes // service.size(0)
        assert kept <= reads, f"{kept} frames kept, {reads} read through the daemon"
        assert per_frame < 20, f"{per_frame:.1f} page faults a frame"
        assert service.encoded.get(50) is None  # (taken whole: not a signpost)
        fresh = imgstore.open_tree(str(tmp_path / "video"), Options({"prefetch": "0"}))
        try:                                    # one the kernel lost later is made again
            assert tree.frame_node(50).open_nowait(os.O_RDONLY).read(0, 1 << 20) == \
                imgstore.FrameHandle(fresh.service, 50).read(0, 1 << 20)
        finally:
            fresh.close()
        assert service.frames_decoded == 101
    finally:
        tree.close()


def test_frames_the_kernel_refused_are_kept_and_read_from_memory(tmp_path):
    """A frame the read-ahead could not store in the kernel (refused: a file the kernel
    does not know and the daemon could not look up, a mount going away) stays in the
    encoded cache: the reader, who then reads it through the daemon, gets it without a
    second decode."""
    make_sample(str(tmp_path / "video"), "mjpeg/avi", frames=40, chunksize=100)
    tree = imgstore.open_tree(str(tmp_path / "video"), Options({"prefetch": "8"}))
    offered: set[int] = set()

    def refuse(ino, data, offset=0, wait=False) -> bool:
        offered.add(ino - tree.frames_base)
        return False
    tree.listen_content(refuse)
    try:
        service = tree.service
        for i in range(40):
            assert i < 2 or wait_for(lambda: i in offered, 5, every=0.002), f"frame {i} was not offered"
            assert i < 2 or service.encoded.get(i) is not None, f"frame {i} refused, not kept"
            tree.frame_node(i).open_nowait(os.O_RDONLY).read(0, 1 << 20)
        assert service.frames_decoded == 40
    finally:
        tree.close()


def _read_in_order_as_tar(tree: imgstore.ImgstoreTree, offered: dict[int, bytes], frames: int) -> int:
    """Read frames 0 to `frames - 1` as `tar` does where the kernel opens files itself:
    the first two (they start the read-ahead), then each frame once it is `offered`, read
    through the daemon only where the kernel would not have it whole (a signpost). Returns
    the frames read through the daemon."""
    whole = tree.service.size(0)
    reads = 0
    for i in range(frames):
        deadline = time.monotonic() + 5
        while i > 1 and tree.frames_base + i not in offered:
            assert time.monotonic() < deadline, f"frame {i} was not offered"
            time.sleep(0.002)
        if i < 2 or len(offered[tree.frames_base + i]) < whole:
            reads += 1
            tree.frame_node(i).open_nowait(os.O_RDONLY).read(0, 1 << 20)
    return reads


def test_a_reader_of_small_frames_sends_a_request_every_few_dozen_frames(tmp_path):
    """By default the read-ahead leads by `READ_AHEAD_BYTES` of frames: a reader going in
    order as `tar` does, where the kernel opens files itself, reads the frames from the
    kernel's page cache and sends a request only for every `signpost_every`-th frame.
    320x240 frames (230 KB of RGB each: a lead of 64, a signpost every 32nd) cost a READ
    every fourth frame with the lead of 8 frames they had (and a wake-up of the loop and
    of the decoder each); the daemon's CPU a frame of `tar` went from 0.45-0.60 ms to
    0.37-0.44 with a lead of 64."""
    make_sample(str(tmp_path / "video"), "mjpeg/avi", frames=100, chunksize=100)
    tree = imgstore.open_tree(str(tmp_path / "video"), Options({}))
    offered: dict[int, bytes] = {}
    tree.listen_content(lambda ino, data, offset=0, wait=False: offered.__setitem__(ino, data))
    try:
        assert tree.service.signpost_every == 32
        reads = _read_in_order_as_tar(tree, offered, 100)
        assert tree.service.frames_decoded == 100
        assert tree.service.encoded.max_bytes <= 48 * imgstore.MiB     # (memory for the lead: bounded)
    finally:
        tree.close()
    assert reads <= 2 + math.ceil(100 / 32), f"{reads} reads of 100 frames"


def test_the_read_ahead_costs_few_python_calls_a_frame(tmp_path, monkeypatch, no_encoder_threads):
    """Counted in every thread while a reader goes through the frames as `tar` does
    (signposts only), each frame stored through the daemon's `Notifier.store` (the
    kernel's side a call), by the decoder's thread (`no_encoder_threads`): the read-ahead
    marks frames being made with a bare lock; an executor's future and an Event per frame
    (conditions, locks, callbacks) made 74 Python calls a frame, most of them. Then 43
    (without the store): the decoder pool's `notify_all` at every frame with nobody
    waiting, `wait_for` and its predicate, the format's checks and layout lookup at every
    encoding. Then 42 with the store: locks taken through their Conditions (two calls
    each) by the store and the decoder pool, 4 times a frame. Then 34 (33.8-34.2), and 33
    (33.2) with the encoded cache keeping each frame's size: dropping a frame the kernel
    took no longer sizes it again."""
    make_sample(str(tmp_path / "video"), "mjpeg/avi", frames=60, chunksize=100)
    tree = imgstore.open_tree(str(tmp_path / "video"), Options({"prefetch": "8"}))
    monkeypatch.setattr(pyfuse3, "notify_store", lambda ino, offset, data: None)
    counters = fs.Counters()
    notifier = fs.Notifier(counters, {}, tree.path_of)
    offered: dict[int, bytes] = {}

    def store(ino, data, offset=0, wait=False) -> bool:
        offered[ino] = data
        return notifier.store(ino, data, offset, wait)
    tree.listen_content(store)
    notifier.start()
    try:
        with PythonCalls(threads=True) as counted:      # (the read-ahead's threads start at the first reads)
            _read_in_order_as_tar(tree, offered, 60)
    finally:
        tree.close()
        notifier.stop()
    assert tree.service.frames_decoded == 60
    assert counters.stored_ahead == 58
    assert counted.calls / 60 < 36, f"{counted.calls / 60:.0f} Python calls a frame"


def test_a_signpost_read_in_pieces_keeps_the_read_ahead_going(tmp_path):
    """The kernel reads a frame in several requests; the second read of the same frame is
    not a jump, and must not make the read-ahead forget how far it got (then the next
    signpost, four frames on, looked like a jump and nothing more was read ahead)."""
    make_sample(str(tmp_path / "video"), "mjpeg/avi", frames=40, chunksize=100)
    tree = imgstore.open_tree(str(tmp_path / "video"), Options({"prefetch": "8"}))
    offered: dict[int, bytes] = {}
    tree.listen_content(lambda ino, data, offset=0, wait=False: offered.__setitem__(ino, data))
    def wait_offered(i: int) -> None:
        assert wait_for(lambda: tree.frames_base + i in offered, 5, every=0.002), f"frame {i} was not offered"

    try:
        for i in range(40):
            if i > 1:
                wait_offered(i)
            if i < 2 or i % tree.service.signpost_every == 0:
                handle = tree.frame_node(i).open_nowait(os.O_RDONLY)
                first = handle.read(0, 4096)
                if i > 1:                          # the read-ahead it moved on is done ...
                    wait_offered(min(i + 8, 39))
                rest = handle.read(4096, 1 << 20)  # ... when its next request comes
                assert len(first) + len(rest) == tree.service.size(i)
    finally:
        tree.close()


class PageCache:
    """The kernel's side of a reader going through frames in order with small reads (tar:
    10 KiB), for a tree whose offers it keeps: a read the pages offered cover costs
    nothing; otherwise the kernel asks the daemon for a window from the first page
    missing, growing as its read-ahead does (16, 32, 64, 128 KiB), each a request."""

    def __init__(self, tree):
        self.tree = tree
        self.pages: dict[int, dict[int, bytes]] = {}           # frame -> page number -> bytes
        self.requests = 0
        tree.listen_content(self.store)

    def store(self, ino: int, data, offset: int = 0, wait: bool = False) -> bool:
        pages = self.pages.setdefault(ino - self.tree.frames_base, {})
        for at in range(0, len(data), mmap.PAGESIZE):
            pages[(offset + at) // mmap.PAGESIZE] = bytes(data[at:at + mmap.PAGESIZE])
        return True                             # (kept: the daemon need not keep a copy)

    def read_frame(self, i: int, piece: int = 10240) -> bytes:
        size, pages, window = self.tree.service.size(i), self.pages.setdefault(i, {}), 4
        for at in range(0, size, piece):
            for page in range(at // mmap.PAGESIZE, (min(at + piece, size) - 1) // mmap.PAGESIZE + 1):
                if page not in pages:
                    handle = imgstore.FrameHandle(self.tree.service, i)
                    offset, length = page * mmap.PAGESIZE, window * mmap.PAGESIZE
                    data = handle.cached_read(offset, length)
                    if data is None:
                        data = handle.read(offset, length)
                    self.requests += 1
                    self.store(self.tree.frames_base + i, data, offset)
                    window = min(window * 2, 32)
        return b"".join(pages[p] for p in range(-(-size // mmap.PAGESIZE)))[:size]


def test_a_reader_faster_than_decoding_costs_few_requests_a_frame(tmp_path, monkeypatch):
    """A reader that reads frames faster than they decode catches up with the read-ahead.
    At its heels every frame cost a request or four (the kernel asks for a frame it does
    not have in growing pieces, and the frame came just too late to be stored ahead): the
    first read of such a frame is now held until the read-ahead leads by
    `signpost_every` frames, and the rest of the frame is stored before its answer."""
    make_sample(str(tmp_path / "video"), "mjpeg/avi", frames=48, chunksize=100)
    tree = imgstore.open_tree(str(tmp_path / "video"), Options({"prefetch": "8"}))
    decode = tree.service.reader.read
    monkeypatch.setattr(tree.service.reader, "read", lambda i: time.sleep(0.003) or decode(i))
    kernel = PageCache(tree)
    fresh = imgstore.open_tree(str(tmp_path / "video"), Options({"prefetch": "0"}))
    try:
        for i in range(48):
            assert kernel.read_frame(i) == imgstore.FrameHandle(fresh.service, i).read(0, 1 << 20)
        assert tree.service.frames_decoded == 48
        # signposts (1 in signpost_every) and a held first read every signpost_every frames
        assert kernel.requests / 48 < 0.6, f"{kernel.requests / 48:.2f} requests a frame"
    finally:
        tree.close()
        fresh.close()


def test_a_mount_line_with_the_retired_decoded_cache_option_still_mounts(tmp_path, caplog):
    """`-o decoded_cache_mb` went when decoded frames stopped being cached; an fstab line or
    unit written before must still mount (the option is ignored, with a warning)."""
    make_sample(str(tmp_path / "video"), "mjpeg/avi", frames=3, chunksize=3)
    with caplog.at_level(logging.WARNING):
        tree = imgstore.open_tree(str(tmp_path / "video"), Options({"decoded_cache_mb": "4"}))
    tree.close()
    assert "decoded_cache_mb is no longer used" in caplog.text
    with pytest.raises(MountError, match="decoded_cache_mb"):
        imgstore.open_tree(str(tmp_path / "video"), Options({"decoded_cache_mb": "lots"}))


@pytest.mark.parametrize("cpus,encoders", [(2, 0), (4, 2)])
def test_on_two_cpus_the_decoders_thread_encodes_and_stores_what_it_read_ahead(tmp_path, monkeypatch, cpus,
                                                                                encoders):
    """Where encoder threads would only compete with the decoder's thread and the reader
    for two CPUs, there are none: the decoder's thread encodes and stores each frame
    itself, without a hand-off (a queue, a wake-up and GIL switches a frame). With more
    CPUs, all but two encode."""
    monkeypatch.setattr(imgstore.os, "cpu_count", lambda: cpus)
    make_sample(str(tmp_path / "video"), "mjpeg/avi", frames=20, chunksize=100)
    tree = imgstore.open_tree(str(tmp_path / "video"), Options({"prefetch": "4"}))
    stored_by: dict[int, str] = {}
    tree.listen_content(lambda ino, data, offset=0, wait=False:
                        stored_by.__setitem__(ino - tree.frames_base, threading.current_thread().name))
    try:
        for i in range(20):
            assert i < 2 or wait_for(lambda: i in stored_by, 5, every=0.002), f"frame {i} was not offered"
            if i < 2 or i % tree.service.signpost_every == 0:
                tree.frame_node(i).open_nowait(os.O_RDONLY).read(0, 1 << 20)
        threads = [t.name for t in threading.enumerate() if t.name in ("decode-ahead", "encode")]
    finally:
        tree.close()
    assert sorted(stored_by) == list(range(2, 20))
    assert set(stored_by.values()) == {"decode-ahead" if not encoders else "encode"}
    assert threads.count("decode-ahead") == 1 and threads.count("encode") == encoders


def held_until_frame_9(service, read, monkeypatch) -> None:
    """`read` (a reader at frame 5, prefetch 8) runs in a thread held for the read-ahead's
    lead: it goes on once frame 9 is done, not before (however long this thread stalls:
    `LEAD_WAIT` made long)."""
    monkeypatch.setattr(imgstore, "LEAD_WAIT", 60)
    reader = threading.Thread(target=read)
    reader.start()
    assert wait_for(lambda: service._held, 5, every=0.001)
    for j in range(5, 10):
        time.sleep(0.02)                 # (time for a woken reader to wait again)
        assert reader.is_alive()         # (until frame 9 is done)
        service._done(j)
    reader.join(5)
    assert not reader.is_alive()


def test_a_reader_held_for_the_read_ahead_to_lead_is_woken_once(tmp_path, monkeypatch):
    """A reader at the decoder's heels is held until the read-ahead leads by
    `signpost_every` stored frames (`FrameService.offer_rest`): it is woken when that
    lead is there, not at every frame the read-ahead finishes (a wake-up, a switch of the
    GIL and of threads each, 10% of the decoder thread's time in `notify_all`)."""
    make_sample(str(tmp_path / "video"), "mjpeg/avi", frames=20, chunksize=100)
    tree = imgstore.open_tree(str(tmp_path / "video"), Options({"prefetch": "8"}))
    service = tree.service
    try:
        with service._lock:              # a reader came to frame 5: 4 stored, up to 12 being read ahead
            service._goal, service._offered_to, service._done_to = 12, 4, 4
        assert service.holds(5) and service._lead_after(5) == 9
        waits = 0
        wait = service._led.wait

        def counted(*args):
            nonlocal waits
            waits += 1
            return wait(*args)
        service._led.wait = counted
        held_until_frame_9(service, lambda: service.offer_rest(5, memoryview(bytes(8192)), 4096, True), monkeypatch)
        assert waits == 1, waits
    finally:
        tree.close()


def test_a_whole_frame_read_at_the_decoders_heels_is_held_for_the_lead_too(tmp_path, monkeypatch):
    """A reader of whole frames (Python's read_bytes, ffmpeg) that came to a frame before
    the read-ahead is held for its lead as one that reads in pieces is: else, opening
    frames by name (no listing), it read each at the decoder's heels, a READ a frame."""
    make_sample(str(tmp_path / "video"), "mjpeg/avi", frames=20, chunksize=100)
    tree = imgstore.open_tree(str(tmp_path / "video"), Options({"prefetch": "8"}))
    service = tree.service
    try:
        service.encoded.get_or_make(5, lambda: bytes(8192))
        with service._lock:              # a reader came to frame 5: 4 stored, up to 13 being read ahead
            service._last_read, service._ahead_to, service._goal = 4, 12, 13
            service._offered_to = service._done_to = 4
        handle = tree.frame_node(5).open_nowait(os.O_RDONLY)
        assert handle.cached_read(0, 1 << 20) is None          # (to a worker thread, held there)
        held_until_frame_9(service, lambda: handle.read(0, 1 << 20), monkeypatch)
        handle.release()
    finally:
        tree.close()


def test_a_reader_at_the_decoders_heels_leaves_the_next_frame_to_it(tmp_path):
    """A reader faster than decoding (`tar`, which finds the frames read ahead in the
    kernel's page cache and reads signposts only) keeps reaching the frame the
    read-ahead's decoder takes next: it waits for that decoder instead of decoding the
    frame itself (with a decoder of its own, which seeks, after which the read-ahead's
    decoded it again to get past it). Only the reads that start the read-ahead decode in
    the reader."""
    make_sample(str(tmp_path / "video"), "mjpeg/avi", frames=60, chunksize=100)
    tree = imgstore.open_tree(str(tmp_path / "video"), Options({"prefetch": "4"}))
    service = tree.service
    stored: set[int] = set()
    tree.listen_content(lambda ino, data, offset=0, wait=False: stored.add(ino - tree.frames_base))
    decoded_by: list[str] = []
    read = service.reader.read
    service.reader.read = lambda i: decoded_by.append(threading.current_thread().name) or read(i)
    encode = service._encode_claimed            # (the read-ahead pauses between frames: the reader
    service._encode_claimed = lambda j, img: (encode(j, img), time.sleep(0.003))   # comes first)
    try:
        for i in range(60):
            if i not in stored or i % service.signpost_every == 0:     # (else: in the kernel's cache)
                assert len(tree.frame_node(i).open_nowait(os.O_RDONLY).read(0, 1 << 20)) == service.size(i)
    finally:
        tree.close()
    assert len(decoded_by) == 60 and decoded_by.count("decode-ahead") == 58, decoded_by


def test_decoding_mjpeg_frames_wakes_no_thread_of_ffmpegs(tmp_path):
    """FFmpeg works on each frame it decodes with a thread of its own besides the caller's
    (a hand-off and 2 wake-ups a frame, for no gain: the read-ahead's thread decodes frame
    after frame): an MJPEG capture is opened with one thread, and decoding starts none."""
    make_sample(str(tmp_path / "video"), "mjpeg/avi", frames=12, chunksize=100)
    tree = imgstore.open_tree(str(tmp_path / "video"), Options({"prefetch": "0"}))
    try:
        before = set(os.listdir("/proc/self/task"))
        frames = [tree.service.reader.read(i) for i in range(12)]
        started = set(os.listdir("/proc/self/task")) - before
    finally:
        tree.close()
    reference = cv2.VideoCapture(str(tmp_path / "video" / "000000.avi"), cv2.CAP_FFMPEG)   # (FFmpeg's threads)
    try:
        assert all(np.array_equal(frame, reference.read()[1]) for frame in frames)    # the same pixels
    finally:
        reference.release()
    assert not started, f"{len(started)} threads started by decoding"
