"""The FSDB tree without the kernel: the work a lookup, a stat, a listing or a new file
costs must not grow with the database (counted, not timed)."""
from __future__ import annotations

import errno
import json
import os
import shutil
import threading
import time
from itertools import islice
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import wait_for

from scopefs.backends.fsdb import FSDB
from scopefs.backends.fsdb import db as fsdb_db
from scopefs.backends.fsdb import tree as fsdb_tree
from scopefs.backends.options import Options
from scopefs.formats import fsdb as layout

SMALL, BIG = 5, 400


def make_db(path: Path, files: int, filesets: dict[str, int] | None = None) -> Path:
    """One scan with a fileset of `files` files (each with metadata) and a small one (or
    the `filesets` given: name -> files)."""
    path.mkdir()
    (path / "romidb").touch()
    db = FSDB(str(path))
    db.connect()
    db.register_lazily = True              # builds in one files.json write per scan
    scan = db.create_scan("scan")
    for fileset_id, count in (filesets or {"images": files, "other": 2}).items():
        fileset = scan.create_fileset(fileset_id)
        for i in range(count):
            file = fileset.create_file(f"img_{i:04d}")
            file.write_raw(b"x" * 100, "png")
            file.set_metadata({"i": i})
    db.disconnect()
    return path


@pytest.fixture(scope="module")
def databases(tmp_path_factory):
    """Databases with a SMALL and a BIG fileset, made once (tests work on copies)."""
    base = tmp_path_factory.mktemp("fsdb")
    return {n: make_db(base / f"db{n}", n) for n in (SMALL, BIG)}


@pytest.fixture
def trees(databases, tmp_path):
    """Copies of both databases, each opened as a tree."""
    opened = {n: fsdb_tree.open_tree(str(shutil.copytree(path, tmp_path / path.name)), Options())
              for n, path in databases.items()}
    yield opened
    for tree in opened.values():
        tree.close()


class Work:
    """Counts what a piece of work costs: nodes the tree found or made, files.json bytes
    written, metadata views rendered, JSON files read."""

    def __init__(self, monkeypatch, tree=None):
        self.counts = dict.fromkeys(("nodes", "files_json_bytes", "renders", "json_reads"), 0)
        write_json, dump_json, read_json = layout.write_json, layout.dump_json, layout.read_json
        if tree is not None:
            node, keep = tree.node, tree.keep

            def counting_node(key, make):
                self.counts["nodes"] += key in tree.nodes      # (a node made is counted by `keep`)
                return node(key, make)

            def counting_keep(*args):
                self.counts["nodes"] += 1
                return keep(*args)
            monkeypatch.setattr(tree, "node", counting_node)
            monkeypatch.setattr(tree, "keep", counting_keep)

        def counting_write_json(path, doc):
            if os.path.basename(path) == layout.FILES_JSON:
                self.counts["files_json_bytes"] += len(dump_json(doc))
            write_json(path, doc)

        def counting_dump_json(doc):
            self.counts["renders"] += 1
            return dump_json(doc)

        def counting_read_json(*args):
            self.counts["json_reads"] += 1
            return read_json(*args)
        monkeypatch.setattr(layout, "write_json", counting_write_json)
        monkeypatch.setattr(layout, "dump_json", counting_dump_json)
        monkeypatch.setattr(layout, "read_json", counting_read_json)

    def of(self, fn) -> dict:
        before = dict(self.counts)
        fn()
        return {k: self.counts[k] - before[k] for k in self.counts}


def fileset_folder(tree):
    return tree.root.lookup("scan").lookup("images")


def test_mounting_reads_no_metadata_of_files(databases, monkeypatch):
    reads = {}
    for n, path in databases.items():
        work = Work(monkeypatch)
        reads[n] = work.of(lambda: fsdb_tree.open_tree(str(path), Options()).close())["json_reads"]
    assert reads[SMALL] == reads[BIG]


def test_listing_a_fileset_with_attributes_reads_no_metadata(databases):
    """What ls -l, find and du ask of a fileset seen for the first time (its names and
    every entry's attributes: readdirplus) costs a stat per file, no metadata file read."""
    tree = fsdb_tree.open_tree(str(databases[SMALL]), Options(), read_only=True)
    try:
        folder = fileset_folder(tree)
        attrs = {name: attr or node.attr() for _, name, node, attr in folder.entries(0)}
        metas = [name for name in attrs if name.endswith(".metadata.json")]
        assert metas and all(attrs[name].size > 2 for name in metas)
        assert tree.counts["metadata_files_read"] == 0 and tree.db.counts["metadata_reads"] == 0
    finally:
        tree.close()


def test_a_first_stat_in_a_fileset_never_listed_costs_the_same_in_a_small_and_a_big_one(trees, monkeypatch):
    """(Only a folder listed before learns its files' attributes at the first stat of one:
    a walk that stats may be at it.) A metadata view's first stat there is a reader's,
    who opens it next: it is read, with at most META_READ_AHEAD views after it (one open
    each, their stats from it), never the rest of a big fileset."""
    costs, metadata_opens = {}, {}
    for n, tree in trees.items():
        folder = fileset_folder(tree)
        syscalls = count_syscalls(monkeypatch)
        folder.lookup_attr("img_0003.png")
        costs[n] = sum(syscalls.values()), tree.counts["attributes_learned"]
        before = dict(syscalls)
        node, attr = folder.lookup_attr("img_0003.png.metadata.json")
        metadata_opens[n] = {k: syscalls[k] - before[k] for k in syscalls}
        assert attr.size == os.stat(node.obj._md_path).st_size and tree.counts["attributes_learned"] == 0
        monkeypatch.undo()
    assert costs[SMALL] == costs[BIG] and costs[BIG][1] == 0
    assert metadata_opens[SMALL] == {"stat": 0, "listdir": 0, "scandir": 0, "open": 1 + (SMALL - 4)}
    assert metadata_opens[BIG] == {"stat": 0, "listdir": 0, "scandir": 0, "open": 1 + fsdb_tree.META_READ_AHEAD}


def test_lookup_and_stat_cost_the_same_in_a_small_and_a_big_fileset(trees, monkeypatch):
    costs = {}
    for n, tree in trees.items():
        folder = fileset_folder(tree)
        name = "img_0003.png"
        folder.lookup_attr(name)                 # nodes made once; then the steady cost
        folder.lookup_attr(name + ".metadata.json")
        work = Work(monkeypatch, tree)

        def stat_both():
            for _ in range(3):
                folder.lookup_attr(name)
                folder.lookup_attr(name + ".metadata.json")
                assert folder.lookup("absent.png") is None
        costs[n] = work.of(stat_both)
    assert costs[SMALL] == costs[BIG]
    assert costs[BIG]["nodes"] <= 6 and costs[BIG]["renders"] == 0


def test_a_metadata_view_is_the_stored_file_read_once_for_stat_and_reads(trees, monkeypatch):
    tree = trees[BIG]
    folder = fileset_folder(tree)
    work = Work(monkeypatch, tree)
    file = folder.fileset.file_named("img_0007.png")

    def stat_and_read_twice():
        node, attr = folder.lookup_attr("img_0007.png.metadata.json")
        for _ in range(2):
            handle = node.open(os.O_RDONLY)
            assert handle.read(0, 1 << 16) == Path(file._md_path).read_bytes()
            handle.release()
            assert node.attr().size == attr.size == os.stat(file._md_path).st_size
    reads = tree.counts["metadata_files_read"]
    work_done = work.of(stat_and_read_twice)
    assert work_done["renders"] == work_done["json_reads"] == 0
    # once, with the next ones of its folder's listing read ahead (META_READ_AHEAD)
    assert tree.counts["metadata_files_read"] == reads + 1 + fsdb_tree.META_READ_AHEAD
    stat_and_read_twice()
    assert tree.counts["metadata_files_read"] == reads + 1 + fsdb_tree.META_READ_AHEAD
    # a change is seen at once (the cache follows the metadata's version)
    node = folder.lookup("img_0007.png.metadata.json")
    handle = node.open(os.O_WRONLY | os.O_TRUNC)
    handle.write(0, b'{"i": "seven"}')
    handle.flush()
    handle.release()
    handle = node.open(os.O_RDONLY)
    assert b'"seven"' in handle.read(0, 4096) and node.attr().size == len(handle.read(0, 4096))


def test_a_readdir_pass_lists_a_fileset_once(trees, monkeypatch):
    costs = {}
    for n, tree in trees.items():
        folder = fileset_folder(tree)
        work = Work(monkeypatch, tree)

        def readdir_in_batches():
            offset, names, reader = 0, [], folder.opendir()
            while True:                      # as the daemon does: a new call per batch
                batch = list(islice(reader.entries(offset), 16))
                if not batch:
                    return names
                names += [name for _, name, _, _ in batch]
                offset = batch[-1][0]
        costs[n] = work.of(readdir_in_batches)["nodes"]
    # each file has its data and its metadata view: two nodes a file, once
    assert costs[BIG] <= 2 * BIG + 2 and costs[SMALL] <= 2 * SMALL + 2


def test_the_nodes_a_listing_makes_take_no_lock_each(trees, monkeypatch):
    """A walk that stats makes a fileset's nodes (two a file: its data and its metadata
    view) in the learner's thread, as it lists: a lock each would cost that thread (and
    memory: a mount may list 100,000 views) for views no one opens."""
    folder = fileset_folder(trees[BIG])
    locks, make_lock = [], threading.Lock
    monkeypatch.setattr(threading, "Lock", lambda: locks.append(1) or make_lock())
    rows = folder.rows_in_memory()
    assert len(rows) == 2 * BIG and len(locks) == 0


def count_syscalls(monkeypatch) -> dict:
    """Calls of the OS functions a listing may use (counted from now on)."""
    counts = dict.fromkeys(("stat", "listdir", "scandir", "open"), 0)
    for name in counts:
        def counted(*args, _name=name, _fn=getattr(os, name), **kwargs):
            counts[_name] += 1
            return _fn(*args, **kwargs)
        monkeypatch.setattr(os, name, counted)
    return counts


def test_a_folder_listed_once_is_listed_again_from_memory(trees, monkeypatch):
    """A fileset's hidden (temporary) files are learned from the disk once, and forgotten
    at each change the mount makes there: a listing made again needs no I/O, so the
    daemon answers it on its loop (`entries_nowait`), without a worker thread."""
    folder = fileset_folder(trees[SMALL])
    names = [name for _, name, _, _ in folder.opendir().entries(0)]
    syscalls = count_syscalls(monkeypatch)
    rows = folder.opendir().entries_nowait(0, 1000)
    assert rows is not None and [name for _, name, _, _ in rows] == names
    assert sum(syscalls.values()) == 0
    # the temporary file of a write in progress is the mount's own: never listed
    handle = folder.lookup("img_0001.png").open(os.O_WRONLY)
    assert any(name.endswith(".scopefs-tmp") for name in os.listdir(folder.path()))
    assert [name for _, name, _, _ in folder.opendir().entries(0)] == names
    handle.release()
    assert [name for _, name, _, _ in folder.opendir().entries(0)] == names


def wait_learned(tree) -> None:
    assert wait_for(tree.learner.idle), "still learning ahead after 10 s"


def listed_from_memory_after_the_root(tree, monkeypatch) -> list[list]:
    """The root listed, then, once the learner is done, the scan and its two filesets
    listed from memory (`entries_nowait`), with no system call."""
    list(tree.root.opendir().entries(0))
    wait_learned(tree)
    syscalls = count_syscalls(monkeypatch)
    scan = tree.root.lookup("scan")
    folders = [scan, scan.lookup("images"), scan.lookup("other")]
    listed = [folder.opendir().entries_nowait(0, 10_000) for folder in folders]
    assert all(rows is not None for rows in listed) and sum(syscalls.values()) == 0
    return listed


def test_a_walk_of_names_learns_ahead_what_it_lists_and_stats_no_file(databases, tmp_path, monkeypatch):
    """After the root is listed, with no file stat'ed, a thread learns what the folders a
    walk lists next need to be listed from memory without their files' attributes (their
    folders' attributes, a fileset's hidden files): no file is stat'ed, and a lean
    listing (`files_unsized`) gives each folder from memory, its files without them."""
    tree = fsdb_tree.open_tree(str(shutil.copytree(databases[BIG], tmp_path / "db")), Options())
    try:
        listed = listed_from_memory_after_the_root(tree, monkeypatch)
        assert sum(len(rows) for rows in listed) == 4 + 2 * BIG + 4
        files = [attr for rows in listed for _, _, node, attr in rows if not isinstance(node, fsdb_tree.Folder)]
        assert files and all(attr is None for attr in files)
        assert tree.counts["attributes_learned"] == 3              # the scan's and its filesets'
    finally:
        tree.close()


def test_what_a_walk_lists_next_is_learned_ahead_once(databases, tmp_path, monkeypatch):
    """After the root is listed and a file in it stat'ed, a thread learns what the folders a
    walk lists next need (their entries' attributes: a stat each, once; a fileset's
    hidden files): a walk then lists each of them from memory."""
    tree = fsdb_tree.open_tree(str(shutil.copytree(databases[BIG], tmp_path / "db")), Options())
    try:
        list(tree.root.opendir().entries(0))
        tree.root.lookup("scan.metadata.json").attr()         # (a walk that stats: the root's learned)
        listed = listed_from_memory_after_the_root(tree, monkeypatch)
        entries = 2 + sum(len(rows) for rows in listed)         # (the root's: a scan and its metadata)
        assert tree.counts["attributes_learned"] == entries == 2 + 4 + 2 * BIG + 4
        assert tree.status()["learning_ahead_cpu_s"] > 0          # (what the learner's threads spent)
    finally:
        tree.close()


def learned_ahead_of_a_stat_walk(tree):
    """The big fileset's folder, once the learner is done after a walk that stats has
    listed the root."""
    list(tree.root.opendir().entries(0))
    tree.root.lookup("scan.metadata.json").attr()         # (a walk that stats)
    list(tree.root.opendir().entries(0))
    wait_learned(tree)
    return tree.root.lookup("scan").lookup("images")


def test_a_folder_bigger_than_what_is_learned_ahead_is_left_to_the_walk(databases, tmp_path, monkeypatch):
    """What is learned ahead stays bounded: a fileset of more entries than LEARN_AHEAD is
    not learned (nor what comes after it) until a walk lists it."""
    monkeypatch.setattr(fsdb_tree, "LEARN_AHEAD", BIG)
    tree = fsdb_tree.open_tree(str(shutil.copytree(databases[BIG], tmp_path / "db")), Options())
    try:
        images = learned_ahead_of_a_stat_walk(tree)
        assert images.opendir().entries_nowait(0, 10_000) is None
        assert tree.counts["attributes_learned"] == 2 + 4          # the root's and the scan's
    finally:
        tree.close()


def test_a_fileset_of_plain_files_is_budgeted_two_entries_a_file_by_the_learner(databases, tmp_path, monkeypatch):
    """The learner's budget counts what learning goes through, two entries a file (it and
    its metadata view), not `entry_count_nowait`'s bound, which counts each file of a big
    fileset as an .iid (three): a fileset of plain files that fits the budget is learned
    ahead. (Budgeted at three a file, filesets of 1,366 to 2,048 files were no longer
    learned, nor anything after them, and the learner reached two thirds as far.)"""
    monkeypatch.setattr(fsdb_tree, "LEARN_AHEAD", 2 * BIG + 20)
    tree = fsdb_tree.open_tree(str(shutil.copytree(databases[BIG], tmp_path / "db")), Options())
    try:
        images = learned_ahead_of_a_stat_walk(tree)
        assert images.entry_count_nowait() > 2 * BIG + 20      # (the bound: each file an .iid)
        assert images.opendir().entries_nowait(0, 10_000) is not None
    finally:
        tree.close()


def add_file(folder, name: str) -> None:
    """What the kernel asks for `cp new folder/name`."""
    assert folder.lookup(name) is None
    node = folder.create(name, 0o644)
    node.attr()
    handle = node.open(os.O_WRONLY | os.O_CREAT)
    handle.write(0, b"new data")
    handle.flush()
    handle.release()
    assert folder.lookup_attr(name)[1].size == len(b"new data")


def test_adding_the_kth_file_costs_the_same_for_every_k(trees, monkeypatch):
    tree = trees[SMALL]
    folder = fileset_folder(tree)
    work = Work(monkeypatch, tree)
    costs = [work.of(lambda: add_file(folder, f"new_{k:04d}.png")) for k in range(300)]
    assert costs[10] == costs[150] == costs[299]
    assert costs[299]["files_json_bytes"] == 0          # registered in a batch, not per file
    # the batch: one files.json write names them all, and upstream readers see them
    flushed = work.of(tree.sync)
    assert 0 < flushed["files_json_bytes"] < 2 * os.path.getsize(os.path.join(tree.db.basedir, "scan", "files.json"))
    doc = json.loads(Path(tree.db.basedir, "scan", "files.json").read_text())
    assert sum(len(fs["files"]) for fs in doc["filesets"] if fs["id"] == "images") == SMALL + 300


def test_a_copied_file_reads_again_only_the_folders_its_commit_changed(trees, monkeypatch):
    """A new file registered lazily changes its fileset's folder only: the root and the
    scan folder are not read again at each commit, unless the commit made something in
    them (the journal, at the first file after a write-back), whose mtime then shows."""
    tree = trees[SMALL]
    folder = fileset_folder(tree)
    scan_path, root_path = os.path.dirname(folder.path()), tree.db.basedir
    read = []
    mtime = fsdb_tree._mtime

    def counting_mtime(files, path):
        read.append(path)
        return mtime(files, path)
    monkeypatch.setattr(fsdb_tree, "_mtime", counting_mtime)
    tree.sync()
    add_file(folder, "first.png")                       # the journal is made in the root
    assert tree.root.cached_attr().mtime_ns == os.stat(root_path).st_mtime_ns
    read.clear()
    for k in range(10):
        add_file(folder, f"new_{k}.png")
    assert read.count(root_path) == read.count(scan_path) == 0
    assert folder.cached_attr().mtime_ns == os.stat(folder.path()).st_mtime_ns


def test_a_copied_file_asks_the_disk_for_no_size_of_its_empty_temporary_file(trees, monkeypatch):
    """A new file's temporary file starts empty: its commit knows that size without an
    fstat (one system call less per file copied in)."""
    folder = fileset_folder(trees[SMALL])
    fstats = []
    fstat = os.fstat

    def counting_fstat(fd):
        fstats.append(fd)
        return fstat(fd)
    monkeypatch.setattr(os, "fstat", counting_fstat)
    for k in range(10):
        add_file(folder, f"new_{k}.png")
    assert fstats == []
    assert [folder.lookup(f"new_{k}.png").attr().size for k in range(10)] == [len(b"new data")] * 10


def test_a_batch_makes_new_files_durable_while_copies_go_on(tmp_path, monkeypatch):
    """The write-back of a batch makes the new files' data durable before files.json names
    them, in one sync of their filesystem (not one fsync each: each would commit its
    journal anew), without holding the tree's lock (a copy into the mount needs it: with it
    held, copies waited for a second's fsyncs); files.json is written after it."""
    from scopefs.backends.fsdb import db as fsdb_db
    import threading
    tree = fsdb_tree.open_tree(str(make_db(tmp_path / "db", 2)), Options(), read_only=False)
    try:
        folder = fileset_folder(tree)
        for k in range(5):
            add_file(folder, f"new_{k}.png")
        events = []

        def watched(name, call):
            def watching(path):
                def try_lock():
                    if tree.lock.acquire(blocking=False):
                        tree.lock.release()
                        events.append((f"{name}, tree free", os.path.basename(path)))
                    else:
                        events.append((f"{name}, tree locked", os.path.basename(path)))
                other = threading.Thread(target=try_lock)
                other.start()
                other.join()
                call(path)
            return watching
        write_json = layout.write_json

        def watched_write_json(path, doc):
            events.append(("write", os.path.basename(path)))
            write_json(path, doc)
        monkeypatch.setattr(fsdb_db, "_fsync", watched("fsync", fsdb_db._fsync))
        monkeypatch.setattr(fsdb_db, "_syncfs", watched("syncfs", fsdb_db._syncfs))
        monkeypatch.setattr(layout, "write_json", watched_write_json)
        tree.sync()
        assert events == [("syncfs, tree free", folder.fileset.id), ("write", "files.json")]
    finally:
        tree.close()


def test_metadata_kept_in_memory_is_bounded_in_bytes_and_read_again_when_needed(trees, monkeypatch):
    from scopefs.backends.fsdb import db as fsdb_db
    tree = trees[BIG]
    tree.meta_cache = fsdb_tree.ByteCache(1 << 10)        # views evicted too: reads render again
    folder = fileset_folder(tree)
    files = tree.db.get_scan("scan").get_fileset("images").get_files()
    big = files[40:43]
    for file in big:                                      # a few large documents ...
        file.set_metadata({"blob": "x" * 5000})
    monkeypatch.setattr(fsdb_db, "METADATA_KEPT_BYTES", 8000)

    def read_views(count: int) -> list[bytes]:
        out = []
        for i in range(count):
            handle = folder.lookup(f"img_{i:04d}.png.metadata.json").open(os.O_RDONLY)
            out.append(handle.read(0, 1 << 16))
        return out
    for file in big:
        file.get_metadata()
    assert sum(f._md_loaded is not None for f in big) == 1  # ... are not all kept however few
    for file in files[:40]:                              # small ones: many are kept
        file.get_metadata()
    assert 40 <= sum(f._md_loaded is not None for f in files) < 400
    kept = [f for f in files if f._md_loaded is not None]
    assert sum(len(layout.dump_json(f._md_loaded)) for f in kept) <= 8000 + 5100
    first = read_views(40)                               # views read the files, not these
    assert read_views(40) == first and json.loads(first[39]) == {"i": 39}


def test_refused_requests_raise_typed_errors_that_are_still_ioerrors(trees):
    """romidata callers catch IOError; the tree maps the type (not the message) to an errno."""
    tree = trees[SMALL]
    scan = tree.db.get_scan("scan")
    for call, kind in ((lambda: tree.db.create_scan("scan"), FileExistsError),
                       (lambda: tree.db.delete_scan("nope"), FileNotFoundError),
                       (lambda: scan.create_fileset("images"), FileExistsError),
                       (lambda: scan.delete_fileset("nope"), FileNotFoundError),
                       (lambda: scan.get_fileset("images").create_file("img_0000"), FileExistsError),
                       (lambda: scan.get_fileset("images").delete_file("nope"), FileNotFoundError),
                       (lambda: scan.get_fileset("images").rename_file("nope", "x.png"), FileNotFoundError)):
        with pytest.raises(kind) as err:
            call()
        assert isinstance(err.value, IOError) and err.value.errno is None
    with pytest.raises(FileExistsError) as err:        # mkdir of a fileset that exists
        tree.root.lookup("scan").mkdir("images", 0o755)
    assert err.value.errno == errno.EEXIST


def write_iid(path: Path, entries: int, mtime: int) -> None:
    from scopefs.formats.iid import IIDFile
    seg = IIDFile()
    for i in range(entries):
        seg.add(np.ones((2, 2), bool), (i, 0, i + 2, 2), address=f"e{i}".encode())
    seg.save(str(path))
    os.utime(path, ns=(mtime, mtime))


def make_db_with_an_iid(tmp_path: Path) -> Path:
    """A database (`make_db`) whose fileset "other" also holds cells.iid, of one entry."""
    path = make_db(tmp_path / "db", 1)
    db = FSDB(str(path))
    db.connect()
    write_iid(tmp_path / "cells.iid", 1, 10**18)
    db.get_scan("scan").get_fileset("other").create_file("cells").import_file(str(tmp_path / "cells.iid"))
    db.disconnect()
    return path


@pytest.mark.parametrize("names_counted", [fsdb_tree.NAMES_COUNTED, 0])
def test_a_folder_never_says_it_lists_fewer_entries_than_it_does(tmp_path, monkeypatch, names_counted):
    """`entry_count_nowait` may over-count, never under-count (a folder it says is small
    enough is listed whole on the loop): an .iid file is listed with its `.view` too, and a
    fileset's hidden files with its files (its names looked through, or not)."""
    monkeypatch.setattr(fsdb_tree, "NAMES_COUNTED", names_counted)
    path = make_db_with_an_iid(tmp_path)
    Path(path, "scan", "other", ".cells.iid.swp").touch()       # (an editor's, say)
    tree = fsdb_tree.open_tree(str(path), Options())
    try:
        scan = tree.root.lookup("scan")
        for folder in (tree.root, scan, scan.lookup("images"), scan.lookup("other")):
            listed = [name for _, name, _, _ in folder.opendir().entries(0)]
            assert folder.entry_count_nowait() >= len(listed), listed
        assert {"cells.iid.view", ".cells.iid.swp"} <= set(listed)
    finally:
        tree.close()


def test_a_view_of_a_rewritten_file_is_closed_once_the_kernel_lets_it_go(tmp_path, monkeypatch):
    from scopefs.backends import iid
    opened = set()
    make, close = iid.open_tree, iid.IIDTree.close

    def counting_open_tree(*args, **kwargs):
        view = make(*args, **kwargs)
        opened.add(view)
        return view

    def counting_close(view):
        opened.discard(view)
        close(view)
    monkeypatch.setattr(iid, "open_tree", counting_open_tree)
    monkeypatch.setattr(iid.IIDTree, "close", counting_close)

    def entries(view) -> int:
        return sum(name.startswith("0000") for _, name, _, _ in view.entries(0))
    path = make_db_with_an_iid(tmp_path)
    tree = fsdb_tree.open_tree(str(path), Options())
    try:
        folder = tree.root.lookup("scan").lookup("other")
        data = Path(folder.path(), "cells.iid")
        first = folder.lookup("cells.iid.view")
        assert len(opened) == 1 and entries(first) == 1
        write_iid(data, 2, 2 * 10**18)                  # rewritten; the kernel held nothing of it
        second = folder.lookup("cells.iid.view")
        assert second is not first and entries(second) == 2
        assert len(opened) == 1
        tree.adopt(second)                              # the kernel holds this one
        write_iid(data, 3, 3 * 10**18)
        third = folder.lookup("cells.iid.view")
        assert entries(third) == 3
        assert len(opened) == 2 and tree.get(second.ino) is second
        tree.forget(second.ino)                         # ... until it forgets it
        assert tree.sync_due()
        tree.sync()
        assert len(opened) == 1 and tree.get(second.ino) is None
        assert tree.get(third.ino) is third
    finally:
        tree.close()


def test_a_metadata_view_opened_again_unchanged_lets_the_kernel_keep_its_pages(trees):
    view = fileset_folder(trees[SMALL]).lookup("img_0000.png.metadata.json")
    first = view.open(os.O_RDONLY)
    first.release()
    again = view.open(os.O_RDONLY)
    assert again.keep_cache and again.read(0, 100) == first.read(0, 100)
    again.release()
    view.obj.set_metadata({"i": 8})                     # changed: the pages are stale
    after = view.open(os.O_RDONLY)
    assert not after.keep_cache and json.loads(after.read(0, 100)) == {"i": 8}


def test_the_kernel_keeps_a_metadata_views_pages_while_it_is_unchanged(trees):
    """A second open of an unchanged .metadata.json lets the kernel keep the pages the
    first one filled (no READ request); after a change it must read again."""
    node = fileset_folder(trees[SMALL]).lookup("img_0001.png.metadata.json")

    def open_close() -> bool:
        handle = node.open_nowait(os.O_RDONLY) or node.open(os.O_RDONLY)
        handle.release()
        return handle.keep_cache
    assert [open_close(), open_close()] == [False, True]
    writer = node.open(os.O_WRONLY | os.O_TRUNC)
    writer.write(0, b'{"i": "one"}')
    writer.flush()
    writer.release()
    assert [open_close(), open_close()] == [False, True]


def test_files_json_is_rewritten_less_often_as_its_rewrites_take_longer(trees, monkeypatch):
    """Each registration in files.json rewrites all of it, so a copy into a big fileset
    registers what it copied at most once per FLUSH_SPACING times what the last rewrite
    took (and at least `register_delay` apart): the rewrites stay a bounded share of the
    copy's time, and the cost per copied file does not grow with the fileset."""
    clock = [1000.0]
    monkeypatch.setattr(fsdb_db, "time", SimpleNamespace(monotonic=lambda: clock[0], sleep=time.sleep,
                                                         time_ns=time.time_ns))
    write_pending = fsdb_db.Scan._write_pending

    def slow_write(scan):                       # a files.json that takes half a second
        write_pending(scan)
        clock[0] += 0.5
    monkeypatch.setattr(fsdb_db.Scan, "_write_pending", slow_write)
    tree = trees[BIG]
    folder = tree.root.lookup("scan").lookup("images")

    def copy_in(name: str) -> None:
        _, _, handle = folder.create_nowait(name, 0o644, os.O_WRONLY | os.O_CREAT)
        handle.write_nowait(0, b"x" * 10)
        handle.flush()
        handle.release()
    copy_in("new_1.png")
    assert not tree.sync_due()
    clock[0] += tree.db.register_delay
    assert tree.sync_due()
    tree.sync()
    copy_in("new_2.png")
    clock[0] += tree.db.register_delay
    assert not tree.sync_due()                  # 0.5 s of rewriting: 10 s apart
    clock[0] += fsdb_db.FLUSH_SPACING * 0.5 - tree.db.register_delay
    assert tree.sync_due()


def test_files_are_learned_for_longer_while_a_walk_keeps_stating_them(databases, tmp_path):
    """A stat of a file whose attributes are not in memory has the next 64 listings learn
    their files' (`stat_walk`); one that ends such a period (a walk that still stats)
    twice as many; after listings with none (a walk of names), 64 again."""
    tree = fsdb_tree.open_tree(str(shutil.copytree(databases[BIG], tmp_path / "db")), Options())

    def period() -> int:
        tree.files_stated()
        listings = 0
        while tree.stat_walk:
            tree.listed()
            listings += 1
        return listings
    try:
        walk_that_stats = [period() for _ in range(3)]
        for _ in range(3):
            tree.listed()                                   # (a walk of names)
        assert walk_that_stats == [64, 128, 256] and period() == 64
    finally:
        tree.close()


def test_a_databases_root_changes_are_its_own(databases, tmp_path):
    """Two databases in one daemon: the locks' folder one makes in its root moves that
    database's `root_changes` only (a write to the other then need not re-read folders
    above the one it changed)."""
    opened = []
    for name in ("a", "b"):
        path = shutil.copytree(databases[SMALL], tmp_path / name)
        shutil.rmtree(path / layout.LOCKS_DIR, ignore_errors=True)
        db = FSDB(str(path))
        db.connect()
        opened.append(db)
    a, b = opened
    try:
        a_before, b_before = a.root_changes(), b.root_changes()
        a.get_scan("scan").get_fileset("other").create_file("new").write_raw(b"new", "png")
        assert Path(a.basedir, layout.LOCKS_DIR).is_dir()
        assert a.root_changes() != a_before
        assert b.root_changes() == b_before
    finally:
        for db in opened:
            db.disconnect()


def test_a_walk_wakes_the_learner_once_per_half_of_what_it_learns_ahead(tmp_path, monkeypatch):
    """A walk that stats finds every fileset it lists learned ahead (from memory, with its
    files' attributes), and wakes the learner's thread once per half of LEARN_AHEAD
    entries, not at each folder: each pass over the folders ahead takes the interpreter's
    lock from the thread that answers the walk."""
    filesets, files = 40, 4                                 # 1 + 2 * 4 entries a fileset
    monkeypatch.setattr(fsdb_tree, "LEARN_AHEAD", 4 * 9)    # (4 filesets: a pass every 2)
    passes = []
    folders_after = fsdb_tree.FSDBTree.folders_after
    monkeypatch.setattr(fsdb_tree.FSDBTree, "folders_after",
                        lambda tree, folder: passes.append(folder) or folders_after(tree, folder))
    wide = make_db(tmp_path / "db", 0, {f"fs_{k:03d}": files for k in range(filesets)})
    tree = fsdb_tree.open_tree(str(wide), Options())
    try:
        list(tree.root.opendir().entries(0))
        tree.root.lookup("scan.metadata.json").attr()       # (a walk that stats)
        wait_learned(tree)
        scan = tree.root.lookup("scan")
        listed = []
        for folder in [scan] + [scan.lookup(f"fs_{k:03d}") for k in range(filesets)]:
            rows = folder.opendir().entries_nowait(0, 10_000)     # (the walk lists it: from memory,
            if rows is None:                                    # or by a worker)
                rows = list(folder.opendir().entries(0))
                listed.append(False)
            else:
                listed.append(all(attr is not None for *_, attr in rows))
            wait_learned(tree)
        assert [k for k, ok in enumerate(listed) if not ok] == [0]      # (the scan: more entries than that)
        assert len(passes) <= 3 + len(listed) // 2, len(passes)
    finally:
        tree.close()


def test_a_file_renamed_over_is_served_as_unlinked_to_descriptors_still_open_on_it(trees):
    """Replaced by a visible or a hidden (rsync's) file: the inode the kernel knew for the
    replaced file shows its old size with no link, as a plain folder's does; the name
    shows the new data."""
    tree = trees[SMALL]
    images = tree.root.lookup("scan").lookup("images")
    for source, target in (("img_0001.png", "img_0002.png"), (".img_0003.png.part", "img_0003.png")):
        if source.startswith("."):
            images.create(source, 0o644)
            Path(images.path(), source).write_bytes(b"rsync's")
        replaced = images.lookup(target).ino
        images.rename(source, images, target)
        gone = tree.get(replaced).attr()
        assert (gone.size, gone.nlink) == (100, 0)
        assert images.lookup(target).ino != replaced and images.lookup(source) is None
    assert images.lookup("img_0003.png").attr().size == len(b"rsync's")


def test_a_metadata_view_that_cannot_be_read_is_still_stated(trees, monkeypatch):
    """Its first stat in a folder never listed reads it (a reader opens it next); where
    the read fails, the stat answers (and the open says why)."""
    folder = fileset_folder(trees[SMALL])

    def unreadable(path, wait=True):
        raise PermissionError(errno.EACCES, "not readable", path)
    monkeypatch.setattr(fsdb_tree, "open_regular", unreadable)
    node, attr = folder.lookup_attr("img_0001.png.metadata.json")
    assert attr.size == os.stat(node.obj._md_path).st_size
    with pytest.raises(PermissionError):
        node.open(os.O_RDONLY)


def test_a_metadata_views_first_stat_makes_nodes_only_for_the_views_it_reads_ahead(trees):
    """(Review of fsdbreads28: it made a node for every file and view of the fileset, at
    a stat: 2 a file.)"""
    made = {}
    for n, tree in trees.items():
        folder = fileset_folder(tree)
        before = len(tree.nodes)
        folder.lookup_attr("img_0003.png.metadata.json")
        made[n] = len(tree.nodes) - before
    assert made == {SMALL: 1 + (SMALL - 4), BIG: 1 + fsdb_tree.META_READ_AHEAD}


def test_a_lone_stat_after_a_metadata_views_stat_learns_nothing_else(trees):
    """A folder never listed stays so at a view's stat (and its read ahead): a lone stat of
    a file then costs a stat, not a pass over the fileset (review of fsdbreads28: 1,939
    attributes learned in a fileset of 1,000)."""
    tree = trees[BIG]
    folder = fileset_folder(tree)
    folder.lookup_attr("img_0003.png.metadata.json")
    node, attr = folder.lookup_attr("img_0300.png")
    assert attr.size == 100
    assert tree.counts["attributes_learned"] == 0 and not tree.stat_walk


def test_metadata_files_read_ahead_in_short_reads_are_read_whole(trees, monkeypatch):
    """A source whose reads come back short before the end (FUSE direct_io, a network
    filesystem) gives each view all its bytes, read ahead or not."""
    tree = trees[SMALL]
    tree.local_storage = False
    folder = fileset_folder(tree)
    read = os.read
    monkeypatch.setattr(os, "read", lambda fd, size: read(fd, min(size, 5)))
    for name in ("img_0001.png.metadata.json", "img_0002.png.metadata.json"):
        node, attr = folder.lookup_attr(name)
        stored = Path(node.obj._md_path).read_bytes()
        handle = node.open(os.O_RDONLY)
        assert handle.read(0, 1 << 16) == stored and attr.size == len(stored)
        handle.release()


def in_a_thread(fn, timeout: float = 5.0):
    """fn's result (or error), asserting it comes within `timeout` (a daemon thread: a
    test that fails leaves it blocked, not the suite)."""
    out = []

    def run():
        try:
            out.append((fn(), None))
        except Exception as exc:
            out.append((None, exc))
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"{fn} blocked"
    result, error = out[0]
    if error is not None:
        raise error
    return result


def test_a_fifo_named_as_a_metadata_file_never_blocks_a_lookup(trees):
    """Not read ahead (its open would wait for a writer), nor at its own stat: its stat is
    its own, its open is refused."""
    tree = trees[SMALL]
    folder = fileset_folder(tree)
    fifo = folder.fileset.file_named("img_0002.png")._md_path
    os.unlink(fifo)
    os.mkfifo(fifo)
    try:
        in_a_thread(lambda: folder.lookup_attr("img_0001.png.metadata.json"))
        node, attr = in_a_thread(lambda: folder.lookup_attr("img_0002.png.metadata.json"))
        assert attr.size == 0
        with pytest.raises(OSError):
            in_a_thread(lambda: node.open(os.O_RDONLY))
    finally:
        try:                                # (a reader blocked on it sees its end)
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass


def test_a_big_metadata_file_is_not_read_ahead(trees):
    """A view over META_AHEAD_BYTES is not read with the one a reader opens (its size
    and mtime are learned: its stat needs no worker call); its own open reads it."""
    tree = trees[SMALL]
    folder = fileset_folder(tree)
    big = folder.fileset.file_named("img_0002.png")._md_path
    Path(big).write_text(json.dumps({"x": "y" * fsdb_tree.META_AHEAD_BYTES}))
    folder.lookup_attr("img_0001.png.metadata.json")
    assert tree.counts["metadata_files_read"] == 1 + (SMALL - 3)
    node = folder.lookup("img_0002.png.metadata.json")
    assert node.cached_attr().size == os.stat(big).st_size
    handle = node.open(os.O_RDONLY)
    assert handle.read(0, 1 << 20) == Path(big).read_bytes()[:1 << 20]


def test_a_read_ahead_that_fails_fails_not_the_readers_open(trees, monkeypatch):
    """Reading ahead is best effort: a folder that cannot be opened (EMFILE, EACCES)
    while the attributes of the scans read ahead are learned leaves the reader's own
    view read."""
    tree = trees[SMALL]
    real_open = os.open

    def no_folders(path, flags, *args, **kwargs):
        if flags & os.O_PATH:
            raise OSError(errno.EMFILE, "too many open files", path)
        return real_open(path, flags, *args, **kwargs)
    monkeypatch.setattr(os, "open", no_folders)
    node, attr = tree.root.lookup_attr("scan.metadata.json")
    handle = node.open(os.O_RDONLY)
    assert handle.read(0, 1 << 16) == Path(node.obj._md_path).read_bytes()


def test_a_metadata_views_mtime_set_while_it_is_read_is_kept(trees, monkeypatch):
    """A utimens through the mount between a read's fstat and its end (a read ahead, at
    another view's lookup) is not undone by the read's older mtime."""
    folder = fileset_folder(trees[SMALL])
    node = folder.lookup("img_0001.png.metadata.json")
    read_to_end = fsdb_tree.read_to_end

    def touched_meanwhile(*args, **kwargs):
        monkeypatch.setattr(fsdb_tree, "read_to_end", read_to_end)     # (once: this view's read)
        os.utime(node.obj._md_path, ns=(10 ** 18, 10 ** 18))
        node.mtime_ns = 10 ** 18                # (what the mount's setattr does)
        return read_to_end(*args, **kwargs)
    monkeypatch.setattr(fsdb_tree, "read_to_end", touched_meanwhile)
    handle = node.open(os.O_RDONLY)
    handle.release()
    assert node.attr().mtime_ns == 10 ** 18


def test_the_databases_own_reads_of_metadata_never_wait_on_a_fifo(trees):
    """The model reads metadata (a merge by set_metadata) through the same reader as the
    views: a FIFO is refused at once, not waited on for a writer."""
    tree = trees[SMALL]
    file = fileset_folder(tree).fileset.file_named("img_0002.png")
    os.unlink(file._md_path)
    os.mkfifo(file._md_path)
    try:
        with pytest.raises(OSError):
            in_a_thread(lambda: tree.db.files.read(file._md_path))
    finally:
        try:
            os.close(os.open(file._md_path, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass


def test_a_metadata_views_mtime_set_while_the_learner_stats_it_is_kept(trees, monkeypatch):
    """(As for a read: the learner's stat, made before a utimens through the mount, does
    not undo it.)"""
    folder = fileset_folder(trees[SMALL])
    node = folder.lookup("img_0001.png.metadata.json")
    metadata_folder, _, name = node.obj._md_path.rpartition("/")
    real_stat = os.stat

    def stat_then_touched(*args, **kwargs):
        st = real_stat(*args, **kwargs)
        os.utime(node.obj._md_path, ns=(10 ** 18, 10 ** 18))
        node.mtime_ns = 10 ** 18                # (what the mount's setattr does)
        return st
    fd = os.open(metadata_folder, os.O_PATH | os.O_DIRECTORY)
    try:
        monkeypatch.setattr(os, "stat", stat_then_touched)
        node.learn_stat(fd, name)
        monkeypatch.undo()
    finally:
        os.close(fd)
    assert node.attr().mtime_ns == 10 ** 18


def test_a_big_metadata_files_own_stat_reads_it_not(trees):
    """Its lookup learns its size from its fstat (and reads the views after it ahead); its
    open reads it."""
    tree = trees[SMALL]
    folder = fileset_folder(tree)
    big = folder.fileset.file_named("img_0002.png")._md_path
    Path(big).write_text(json.dumps({"x": "y" * fsdb_tree.META_AHEAD_BYTES}))
    node, attr = folder.lookup_attr("img_0002.png.metadata.json")
    assert attr.size == os.stat(big).st_size
    assert tree.counts["metadata_files_read"] == SMALL - 3
    handle = node.open(os.O_RDONLY)
    assert handle.read(0, 1 << 20) == Path(big).read_bytes()[:1 << 20]
    assert tree.counts["metadata_files_read"] == SMALL - 2


def test_a_reader_by_name_in_order_keeps_its_read_ahead_past_a_big_view_and_a_new_file(trees):
    """A reader of ~300 metadata views by name, in order, in a fileset never listed:
    about one view in META_READ_AHEAD + 1 needs its own read (a worker call), also past
    a view over META_AHEAD_BYTES (its open reads it, nothing again ahead), a FIFO (its
    lookup stats it), a file added part-way and stray lookups (the read-ahead keeps its
    place)."""
    tree = trees[BIG]
    folder = fileset_folder(tree)
    big = folder.fileset.file_named("img_0100.png")._md_path
    Path(big).write_text(json.dumps({"x": "y" * fsdb_tree.META_AHEAD_BYTES}))
    fifo = folder.fileset.file_named("img_0120.png")._md_path
    os.unlink(fifo)
    os.mkfifo(fifo)
    own_reads = 0
    for i in range(300):
        if i == 150:
            with tree.lock:
                added = folder.fileset.create_file("added")
                added.write_raw(b"x", "png")
                added.set_metadata({"i": -1})
        if i == 200:                        # (a stray lookup far ahead)
            folder.lookup_attr("img_0350.png.metadata.json")
        if i == 250:                        # (another reader at the start, of a view changed since)
            with tree.lock:
                folder.fileset.file_named("img_0001.png").set_metadata({"i": "one"})
            folder.lookup_attr("img_0001.png.metadata.json")
        node = folder.lookup(f"img_{i:04d}.png.metadata.json")
        own_reads += node.cached_attr() is None             # its stat: a worker call
        node.attr()
        if i == 120:
            continue
        own_reads += node.cache.get(node.content_tag()) is None     # its open: one too
        handle = node.open(os.O_RDONLY)
        assert handle.read(0, 1 << 20) == Path(node.obj._md_path).read_bytes()[:1 << 20]
        handle.release()
    assert own_reads <= 300 // (fsdb_tree.META_READ_AHEAD + 1) + 3


def test_a_metadata_file_read_in_short_reads_is_read_whole(trees, monkeypatch):
    """A read may give fewer bytes than asked before a file's end also on a 'local'
    mount (a scan folder on FUSE, an overlay over one): a file is read until a read
    gives none, never kept cut short in the views' cache."""
    tree = trees[SMALL]
    folder = fileset_folder(tree)
    path = folder.fileset.file_named("img_0002.png")._md_path
    Path(path).write_text(json.dumps({"x": "y" * 5000}))
    read = os.read
    monkeypatch.setattr(os, "read", lambda fd, n: read(fd, min(n, 1000)))
    node, attr = folder.lookup_attr("img_0002.png.metadata.json")
    handle = node.open(os.O_RDONLY)
    assert handle.read(0, 1 << 16) == Path(path).read_bytes() and attr.size == os.stat(path).st_size


def test_a_stat_of_an_unreadable_view_made_before_a_utimens_is_not_kept(trees, monkeypatch):
    """A view whose stat is its file's stat (unreadable here: a FIFO) keeps none that
    a utimens came during (its mtime is asked again after it)."""
    tree = trees[SMALL]
    folder = fileset_folder(tree)
    path = folder.fileset.file_named("img_0002.png")._md_path
    os.unlink(path)
    os.mkfifo(path)
    node = folder.lookup("img_0002.png.metadata.json")
    stat = tree.db.files.stat

    def utimens_meanwhile(stated):
        st = stat(stated)
        node.mtime_ns = time.time_ns()
        return st
    monkeypatch.setattr(tree.db.files, "stat", utimens_meanwhile)
    node.attr()
    assert node.known_mtime_ns() is None
