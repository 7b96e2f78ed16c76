"""The .iid tree's work per entry does not grow with the file, and its caches stay right.

The scaling tests count the Python lines scopefs executes (sys.settrace) while answering
what a walk asks of one entry, in a file of 100 and one of 10,000 entries that hold the
same entry at the same key, and require the counts to be equal: any scan of all entries
or of a group's members per entry would add thousands of lines to the larger one.
"""
from __future__ import annotations

import errno
import gc
import io
import json
import os
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path
from statistics import median_low

import numpy as np
import pytest
from PIL import Image

from conftest import daemon_status
from scopefs.backends import iid as iid_backend
from scopefs.backends.options import Options
from scopefs.formats.iid import IIDFile

PACKAGE = str(Path(iid_backend.__file__).resolve().parent.parent)
KEY = 42                     # the entry looked at, the same in every file
DISK = np.add.outer((np.arange(9) - 4) ** 2, (np.arange(7) - 3) ** 2) < 12


def uniform_file(path: Path, count: int) -> Path:
    """`count` entries of one mask, fixed-width addresses, in three groups."""
    f = IIDFile()
    for i in range(count):
        r, c = 10 * (i % 300), 10 * (i // 300)
        f.add(DISK, (r, c, r + 9, c + 7), address=f"cell-{i:05d}".encode(), domain=b"d", groups=(f"g{i % 3}",))
    f.meta = {"n": count}
    f.save(str(path))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    work = tmp_path_factory.mktemp("iid-scaling")
    return {n: uniform_file(work / f"u{n}.iid", n) for n in (100, 10_000)}


def open_tree(path: Path, read_only: bool = False, **where):
    return iid_backend.open_tree(str(path), Options(), read_only, **where)


def lines_run(fn) -> int:
    """How many lines of scopefs's own code `fn()` executes."""
    count = 0

    def local(frame, event, arg):
        nonlocal count
        if event == "line":
            count += 1
        return local

    def tracer(frame, event, arg):
        return local if frame.f_code.co_filename.startswith(PACKAGE) else None

    sys.settrace(tracer)
    try:
        fn()
    finally:
        sys.settrace(None)
    return count


def walk_one_entry(tree) -> None:
    """What ls -l, stat, find and reading entry.json twice ask of one entry folder."""
    name = f"{KEY:06d}-cell-{KEY:05d}"
    folder, _ = tree.root.lookup_attr(name)
    for _, child_name, child, attr in folder.entries(0):
        attr or child.attr()
        folder.lookup_attr(child_name)
    folder.mask_file.attr()
    for _ in range(2):
        json_file, _ = folder.lookup_attr("entry.json")
        json_file.attr()
        handle = json_file.open(os.O_RDONLY)
        handle.read(0, 1 << 16)
        handle.release()
    tree.fixed["groups"].lookup("g0").lookup(name).attr()


@pytest.mark.parametrize("read_only", [False, True])
def test_work_per_entry_does_not_grow_with_the_file(files, read_only):
    counts = {}
    for n, path in files.items():
        tree = open_tree(path, read_only)
        try:
            counts[n] = lines_run(lambda: walk_one_entry(tree))
        finally:
            tree.close()
    assert counts[100] == counts[10_000], counts


def test_stat_and_warm_reads_make_nothing(files):
    tree = open_tree(files[100], read_only=True)
    try:
        folder = tree.root.lookup(f"{KEY:06d}-cell-{KEY:05d}")
        assert folder.mask_file.attr().size == len(tree.encode_mask(DISK))
        tree.counts.update(masks_encoded=0)
        for f in tree.live():                         # sizes of every mask, none encoded or decoded
            f.mask_file.attr()
        assert tree.counts["masks_encoded"] == tree.counts["segments_decoded"] == 0
        first = folder.json_file.open(os.O_RDONLY)
        second = folder.json_file.open_nowait(os.O_RDONLY)   # answered from memory, no thread
        assert second is not None and second.read(0, 1 << 16) == first.read(0, 1 << 16)
        assert not first.keep_cache and second.keep_cache and tree.counts["entry_json_made"] == 1
        assert folder.json_file.cached_attr().size == len(first.read(0, 1 << 16))
    finally:
        tree.close()


def test_the_collector_never_scans_a_mounted_tree(files):
    """A tree's objects (about ten per entry) live as long as the mount: they are made with
    the collector paused and then frozen, so that no collection scans them while mounted
    (at 100,000 entries, collections took 2.9 of the 10 s of CPU that listing every
    folder took); closing the tree gives them back to the collector."""
    gc.collect()
    before = len(gc.get_objects())
    tree = open_tree(files[10_000])
    try:
        assert len(gc.get_objects()) - before < 1_000
        assert gc.get_freeze_count() > 10_000
    finally:
        tree.close()
    assert gc.get_freeze_count() == 0


def test_a_grafted_tree_freezes_nothing(files):
    """Freezing is process-wide: a graft (an .iid inside an FSDB, opened and closed while
    its host lives on) must not freeze its host's objects, nor thaw them at its close."""
    gc.collect()
    tree = open_tree(files[100], base=7 << 40)
    try:
        assert gc.get_freeze_count() == 0
    finally:
        tree.close()


def write(view, data: bytes) -> None:
    handle = view.open(os.O_WRONLY | os.O_TRUNC)
    handle.write(0, data)
    handle.flush()
    handle.release()


def read(view) -> tuple[bytes, bool]:
    """What an open, read and close gives, and whether the kernel could keep its pages."""
    handle = view.open(os.O_RDONLY)
    try:
        return handle.read(0, 1 << 20), handle.keep_cache
    finally:
        handle.release()


def doc_of(folder) -> dict:
    return json.loads(read(folder.json_file)[0])


def copy_of(path: Path, tmp_path: Path) -> Path:
    copy = tmp_path / path.name
    copy.write_bytes(path.read_bytes())
    return copy


def test_views_follow_every_change(files, tmp_path):
    tree = open_tree(copy_of(files[100], tmp_path))
    try:
        root = tree.root
        later = root.lookup("000050-cell-00050")
        before = doc_of(later)
        assert before["key"] == 50 and before["groups"] == ["g2"]
        # a deleted entry moves the keys after it down at once
        gone = root.lookup("000003-cell-00003")
        for view in ("mask.png", "entry.json"):
            gone.unlink(view)
        root.rmdir(gone.name)
        assert doc_of(later)["key"] == 49 and doc_of(root.lookup("000002-cell-00002"))["key"] == 2
        # a group link shows in entry.json; a removed one goes
        tree.fixed["groups"].lookup("g0").symlink(later.name, f"../../{later.name}")
        assert doc_of(later)["groups"] == ["g0", "g2"]
        tree.fixed["groups"].lookup("g2").unlink(later.name)
        assert doc_of(later)["groups"] == ["g0"]
        # a new mask changes the mask file, its size, the area and the bbox
        old_size = later.mask_file.attr().size
        reader = later.mask_file.open(os.O_RDONLY)
        assert later.mask_file.open(os.O_RDONLY).keep_cache           # unchanged: the kernel keeps it
        new = np.zeros((20, 30), np.uint8)
        new[2:5, 3:9] = 255
        png = tmp_path / "new.png"
        Image.fromarray(new).save(png)
        write(later.mask_file, png.read_bytes())
        reopened = later.mask_file.open(os.O_RDONLY)
        assert not reopened.keep_cache and reopened.read(0, 1 << 20) != reader.read(0, 1 << 20)
        assert later.mask_file.attr().size == len(reopened.read(0, 1 << 20)) != old_size
        doc = doc_of(later)
        assert doc["area"] == 18 and (doc["height"], doc["width"]) == (20, 30)
        # a new entry made after the last one takes the next key; one made earlier and
        # completed later moves it up
        first, second = root.mkdir("first", 0o755), root.mkdir("second", 0o755)
        for folder in (second, first):
            write(folder.mask_file, png.read_bytes())
            write(folder.json_file, b'{"address": "new", "bbox": [0, 0]}')
        assert doc_of(first)["key"] == 99 and doc_of(second)["key"] == 100
        assert tree.status()["entries"] == 101
    finally:
        tree.close()


def test_a_mask_is_committed_on_the_loop_only_when_nothing_else_waits_on_it(files, tmp_path):
    """A new folder's mask is committed at its close on the daemon's loop (`flush_nowait`)
    only when it is small, the tree's lock is free and the folder stays pending; else the
    flush says so with nothing changed and nothing copied (not even a 100 MB .npy), and
    the flush in a thread commits it (then making the entry whose entry.json came first)."""
    tree = open_tree(copy_of(files[100], tmp_path))
    try:
        mask = io.BytesIO()
        Image.fromarray(DISK.astype(np.uint8) * 255).save(mask, format="PNG")
        folders = [tree.root.mkdir(f"new-{i}", 0o755) for i in range(3)]
        writers = [folder.mask_file.open(os.O_WRONLY | os.O_TRUNC) for folder in folders]
        for writer in writers:
            writer.write(0, mask.getvalue())
        write(folders[1].json_file, b'{"address": "new-1", "bbox": [0, 0]}')
        big = np.lib.format.header_data_from_array_1_0(np.zeros((10_000, 10_000), np.uint8))
        writers[2].truncate(100 << 20)                   # (a 100 MB mask.npy)
        writers[2].write(0, b"\x93NUMPY\x01\x00" + repr(big).encode())
        holder = threading.Thread(target=lambda: (tree.lock.acquire(), taken.set(), release.wait(10),
                                                  tree.lock.release()))
        taken, release = threading.Event(), threading.Event()
        holder.start()
        try:
            assert taken.wait(10)
            busy = writers[0].flush_nowait()             # (a change holds the tree)
        finally:
            release.set()
            holder.join()
        tracemalloc.start()
        try:
            later = [writer.flush_nowait() for writer in writers[1:]]
            copied = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert (busy, later) == (False, [False, False]) and copied < 1 << 20, copied
        assert [folder.pending_mask for folder in folders[:2]] == [None, None]
        assert tree.status()["entries"] == 100
        writers[0].flush()
        writers[1].flush()
        assert folders[0].pending_mask is not None and doc_of(folders[1])["area"] == DISK.sum()
        assert tree.status()["entries"] == 101
        for writer in writers:
            writer.release()
    finally:
        tree.close()


def test_second_read_comes_from_the_kernel_and_stat_encodes_nothing(files, mount, tmp_path):
    mnt = mount(copy_of(files[100], tmp_path))
    folders = sorted(n for n in os.listdir(mnt) if n.startswith("0"))
    path = mnt / folders[KEY] / "entry.json"
    first = path.read_bytes()
    control = (mnt / ".scopefs").read_bytes()
    assert path.read_bytes() == first
    # the daemon was asked for the control file's bytes only: entry.json came from the kernel
    assert daemon_status(mnt)["bytes_read"] - json.loads(control)["bytes_read"] == len(control)
    for name in folders:
        os.stat(mnt / name / "mask.png")
        os.stat(mnt / name / "entry.json")
    status = daemon_status(mnt)
    assert status["masks_encoded"] == status["segments_decoded"] == 0
    # a change is seen at once: the new mask's area in entry.json, its size by stat
    new = np.zeros((4, 4), np.uint8)
    new[1:3, 1:3] = 255
    Image.fromarray(new).save(mnt / folders[KEY] / "mask.png")
    assert json.loads(path.read_text())["area"] == 4
    assert os.stat(mnt / folders[KEY] / "mask.png").st_size == len((mnt / folders[KEY] / "mask.png").read_bytes())


def test_a_mask_that_cannot_be_an_image_fails_alone(tmp_path):
    f = IIDFile()
    f.add(np.zeros((0, 4), bool), (5, 5, 5, 9), address=b"flat")      # an empty bbox: no image
    f.add(DISK, (0, 0, 9, 7), address=b"disk")
    f.save(str(tmp_path / "flat.iid"))
    tree = open_tree(tmp_path / "flat.iid", read_only=True)
    try:
        flat = tree.root.lookup("000000-flat")
        for call in (flat.mask_file.attr, lambda: flat.mask_file.open(os.O_RDONLY)):
            with pytest.raises(OSError) as err:
                call()
            assert err.value.errno == errno.EIO and "\n" not in str(err.value)
        assert doc_of(flat)["height"] == 0
        disk = tree.root.lookup("000001-disk").mask_file
        assert disk.attr().size == len(disk.open(os.O_RDONLY).read(0, 1 << 16))
    finally:
        tree.close()


def test_pages_are_kept_only_when_no_open_file_can_have_filled_them_otherwise(files, tmp_path):
    tree = open_tree(copy_of(files[100], tmp_path))
    try:
        view = tree.root.lookup(f"{KEY:06d}-cell-{KEY:05d}").json_file
        assert [read(view)[1] for _ in range(2)] == [False, True]
        old = view.open(os.O_RDONLY)                   # may fill pages with the old content later
        write(view, b'{"address": "changed"}')
        assert [read(view)[1] for _ in range(2)] == [False, False]
        old.release()
        assert [read(view)[1] for _ in range(3)] == [False, True, True]
        assert json.loads(read(view)[0])["address"] == "changed"
    finally:
        tree.close()


async def test_folders_in_memory_are_listed_without_worker_threads(files, monkeypatch):
    """Once an entry's views are made, its folder, the root, groups and by-address are
    listed on the daemon's loop: no worker thread, not even for the readdir that finds
    the end (each hop costs more than the whole listing of a small folder)."""
    from scopefs.daemon.fs import Operations
    from test_imgstore_scale import Listing

    for read_only in (True, False):
        tree = open_tree(files[100], read_only)
        try:
            listing = Listing(Operations(tree), monkeypatch)
            folder, _ = tree.root.lookup_attr(f"{KEY:06d}-cell-{KEY:05d}")
            group, _ = tree.root.lookup("groups").lookup_attr("g0")
            directories = [tree.root, folder, tree.root.lookup("groups"), group, tree.by_address,
                           tree.by_address.lookup(f"cell-{KEY:05d}")]
            for directory in directories:
                await listing(directory.ino)                 # makes what was never made
            listing.hops = 0
            for directory in directories:
                await listing(directory.ino)
            assert listing.hops == 0, read_only
            assert len(listing.names) == 2 * (100 + 5 + 2 + 3 + 34 + 100 + 1)
        finally:
            tree.close()


async def test_a_walks_listings_make_attributes_once_per_kind_of_entry(files, monkeypatch):
    """A cold walk lists every entry folder and address folder once. Their entries share a
    few sets of attributes (one mtime, sizes that repeat), so the daemon makes the
    EntryAttributes of each set once, not one per entry; and a mask's size comes from
    memory without asking the image format (which made a numpy dtype per mask)."""
    from scopefs.daemon.fs import Operations
    from test_imgstore_scale import Listing

    tree = open_tree(files[100])
    try:
        ops = Operations(tree)
        listing = Listing(ops, monkeypatch)
        folders = tree.live()
        addresses = [tree.by_address.lookup(f"cell-{i:05d}") for i in range(len(folders))]
        for folder in folders:
            await listing(folder.ino)                    # makes the views: a walk's worker calls
        made, asked = [], []
        monkeypatch.setattr(ops, "_entry", lambda ino, attr, entry=ops._entry: made.append(attr) or entry(ino, attr))
        monkeypatch.setattr(tree.mask_format, "known_size", lambda *args: asked.append(args))
        monkeypatch.setattr(ops, "folder_listings", type(ops.folder_listings)())    # listed afresh
        listing.names.clear()
        for directory in folders + addresses:
            await listing(directory.ino)
        assert len(listing.names) == 2 * len(folders) + len(addresses)
        assert len(made) == len(set(made)) <= 5 and asked == [], (len(made), len(asked))
    finally:
        tree.close()


def work_of(mnt: Path, fn) -> dict:
    """What the daemon did for `fn()`: worker-thread calls and notification waits (reading
    the status file itself takes neither)."""
    before = daemon_status(mnt)
    fn()
    after = daemon_status(mnt)
    return {key: after[key] - before[key] for key in ("worker_calls", "notify_waits", "attr_requests")}


def test_copy_in_and_missing_names_cost_no_thread_beyond_the_changes(files, mount, tmp_path):
    """`cp -r` of a folder holding one mask.png into the mount takes no worker call, in a
    file of 100 entries as in one of 10,000: the names cp looks up first and do not exist
    yet, the new folder and file, the write and the close that checks the (small) mask,
    all in memory, are answered on the daemon's loop; so is statfs (a file manager's, once
    per file it shows)."""
    new = tmp_path / "new"
    new.mkdir()
    Image.fromarray(DISK.astype(np.uint8) * 255).save(new / "mask.png")
    work = {}
    for n, path in files.items():
        mnt = mount(copy_of(path, tmp_path))
        folder = mnt / f"{KEY:06d}-cell-{KEY:05d}"
        assert work_of(mnt, lambda: os.statvfs(folder))["worker_calls"] == 0
        # a missing name is answered on the loop, and in the root and entry folders (where
        # names appear only by the kernel's own calls) asked once: the kernel remembers it;
        # groups/ gains names when an entry.json changes, so there it is asked each time
        missing = (mnt / "nothing", folder / "nothing", mnt / "groups" / "nothing")
        assert work_of(mnt, lambda: [os.path.exists(p) for p in missing * 2]) == \
            {"worker_calls": 0, "notify_waits": 0, "attr_requests": 3 + 1 + 1}     # (+ groups itself)
        copied = work_of(mnt, lambda: subprocess.run(["cp", "-r", str(new), str(mnt / "new")], check=True))
        assert (mnt / "new" / "mask.png").stat().st_size == len(read_mask_png(DISK))
        work[n] = copied["worker_calls"]
    assert work == {100: 0, 10_000: 0}


def read_mask_png(mask: np.ndarray) -> bytes:
    """The mask file the mount serves for `mask`."""
    return iid_backend.make_format("png").encode_checked(mask.astype(np.uint8) * 255)


def test_sizes_outlive_the_view_cache(files, monkeypatch):
    """In a file whose views do not fit the cache (100,000 entries do not fit 64 MiB),
    entry.json sizes made once stay known: stat and listings never make them again."""
    monkeypatch.setattr(iid_backend.IIDTree, "CACHE_BYTES", 8 << 10)      # room for ~20 entry.json
    tree = open_tree(files[100], read_only=True)
    try:
        views = [f.json_file for f in tree.live()]
        sizes = [view.attr().size for view in views]
        made = tree.counts["entry_json_made"]
        assert tree.cache.used_bytes < sum(sizes)                         # most were evicted
        assert [view.cached_attr().size for view in views] == sizes
        assert tree.counts["entry_json_made"] == made
    finally:
        tree.close()


def test_a_walk_in_order_takes_a_worker_call_per_many_entry_folders(files, mount, tmp_path):
    """Listing the entry folders one after the other with their files' sizes (ls -lR,
    find, du, a file manager) makes the next entries' views ahead in the thread call that
    makes one folder's: most folders are then listed on the daemon's loop."""
    mnt = mount(files[100], "-o", "ro")
    folders = sorted(n for n in os.listdir(mnt) if n.startswith("0"))

    def walk():
        for name in folders:
            for entry in os.scandir(mnt / name):
                entry.stat()
    work = work_of(mnt, walk)
    assert work["worker_calls"] <= len(folders) // iid_backend.IIDTree.PREPARE_AHEAD + 2, work


def test_a_copy_in_order_reads_masks_made_ahead(files, mount):
    """tar, rsync or cp -r of the mount read the masks folder after folder: after the
    first two, each worker call that makes a mask makes the next ones too, so most opens
    are answered on the daemon's loop."""
    mnt = mount(files[100], "-o", "ro")
    folders = sorted(n for n in os.listdir(mnt) if n.startswith("0"))
    os.stat(mnt / folders[0] / "mask.png")            # (learns the size of the masks' one shape)
    work = work_of(mnt, lambda: [(mnt / name / "mask.png").read_bytes() for name in folders])
    assert work["worker_calls"] <= len(folders) // iid_backend.IIDTree.PREPARE_AHEAD + 2, work


#: Python calls a cold walk's listing of one folder costs the daemon (readdir until the
#: empty reply, as the driver asks it; the kernel's empty READDIRPLUS at the end is
#: answered in pyfuse3's session loop, `readdir_end_at`), sizes already made
ENTRY_FOLDER_CALLS = 40
ADDRESS_FOLDER_CALLS = 33


async def test_a_cold_walks_listing_of_a_folder_costs_few_python_calls(files, monkeypatch):
    """Every entry folder and every by-address/ folder is listed once per cold walk: the
    Python calls each listing costs the daemon (per folder, not per byte of the file) stay
    within a budget, the same in a file of 100 and one of 10,000 entries."""
    from scopefs.daemon.fs import Operations
    from test_imgstore_scale import Listing

    calls = {}
    for n, path in files.items():
        tree = open_tree(path)
        try:
            listing = Listing(Operations(tree), monkeypatch)
            folders = tree.live()[:40]
            addresses = [tree.by_address.lookup(f"cell-{i:05d}") for i in range(40)]
            await listing(tree.by_address.ino)
            for folder in folders[:20] + addresses[:20]:
                await listing(folder.ino)                # the walk under way: the next views made ahead
            # (the median: one entry folder in PREPARE_AHEAD makes the next ones in a worker call)
            calls[n] = (median_low([await listing(folder.ino) for folder in folders[20:]]),
                        median_low([await listing(address.ino) for address in addresses[20:]]))
        finally:
            tree.close()
    entry_folder, address_folder = calls[100]
    assert calls[100] == calls[10_000], calls
    assert entry_folder <= ENTRY_FOLDER_CALLS and address_folder <= ADDRESS_FOLDER_CALLS, calls
