"""What a cold walk of names costs an FSDB mount per folder, counted (the FSDB backend's
`listings`: each a pass over a folder's entries), at two sizes: every folder is listed
once for the kernel; a fileset too big for a prepared reply is not listed to find that
out, nor listed again to note its subfolders after its reply. Only scans may be listed
more (small: their prepared replies, tried twice while the learner has not stat'ed
their filesets yet, and the listing a worker makes then), and the root once more."""
from __future__ import annotations

import subprocess
from types import SimpleNamespace

import pyfuse3
import pytest
import walk_samples
from conftest import daemon_status
from python_calls import PythonCalls, folders_of
from scopefs import backends
from scopefs.backends.fsdb import tree as fsdb_tree
from scopefs.backends.options import Options
from scopefs.daemon import fs
from scopefs.daemon.fs import Operations

SCANS, FILES = 2, 13                # a fileset lists 26 entries: more than a prepared reply takes


@pytest.mark.parametrize("filesets", [3, 6])
def test_a_cold_find_lists_each_fsdb_fileset_once(tmp_path, mount, filesets):
    source = walk_samples.fsdb(tmp_path / "fsdb", SCANS, filesets, FILES)
    mnt = mount(source.path, *source.options)
    before = daemon_status(mnt)["work"].get("listings", 0)
    subprocess.run(["find", "."], cwd=mnt, check=True, capture_output=True)
    listings = daemon_status(mnt)["work"]["listings"] - before
    folders = 1 + SCANS + SCANS * filesets
    assert folders <= listings <= folders + 1 + 3 * SCANS, (listings, folders)


async def python_calls_of_a_lean_reply(path, files: int) -> int:
    """Python calls of scopefs (the daemon's and the tree's) for a lean READDIRPLUS of a
    fileset of `files` files whose nodes are made, with room for all of it."""
    source = walk_samples.fsdb(path, 1, 1, files)
    tree = fsdb_tree.open_tree(str(source.path), Options())
    try:
        ops = Operations(tree)
        fileset = tree.root.lookup("scan_000").lookup("fileset_0")
        given = []

        def reply_name(token, name, ino, file_type, next_id):
            given.append(name)
            return True
        fileset.rows_in_memory()                # (its nodes made, as the learner does ahead of a walk)
        fileset.learn_names()
        real, pyfuse3.readdir_reply_name = pyfuse3.readdir_reply_name, reply_name
        try:
            with PythonCalls(within=folders_of(fs, fsdb_tree)) as counted:
                await ops.readdir(0, 0, SimpleNamespace(inode=fileset.ino))
        finally:
            pyfuse3.readdir_reply_name = real
        assert len(given) == 2 * files and ops.counters.lean_entries == 2 * files
        return counted.calls
    finally:
        tree.close()


async def test_a_lean_reply_costs_one_python_call_an_entry_at_two_sizes(tmp_path):
    """An entry of a fileset given without attributes costs one Python call, its node's
    cached attributes, whatever the fileset's size (before: 4, also its type, a call to
    reply and one to note it for the folder's first LOOKUP)."""
    small = await python_calls_of_a_lean_reply(tmp_path / "small", 30)
    big = await python_calls_of_a_lean_reply(tmp_path / "big", 300)
    assert big - small == 2 * 300 - 2 * 30, (small, big)     # (one call an entry)
    assert small - 2 * 30 < 50                  # (what a reply costs whatever its entries)


def python_calls_making_a_fileset(path, files: int) -> int:
    """Python calls of scopefs's backends for the nodes of a fileset of `files` files, made
    as the learner makes them ahead of a walk (`rows_in_memory`)."""
    source = walk_samples.fsdb(path, 1, 1, files)
    tree = fsdb_tree.open_tree(str(source.path), Options())
    try:
        fileset = tree.root.lookup("scan_000").lookup("fileset_0")
        with PythonCalls(within=folders_of(backends)) as counted:
            rows = fileset.rows_in_memory()
        assert len({node.ino for _, node in rows}) == 2 * files
        return counted.calls
    finally:
        tree.close()


def test_a_filesets_nodes_cost_the_same_few_python_calls_a_file_at_two_sizes(tmp_path):
    """A file's two nodes (its metadata view's, numbered first, and its data's) cost 4
    Python calls, their constructors', numbered with the others under one hold of the
    tree's lock (before: 8.1, each numbered and kept by calls of its own)."""
    small = python_calls_making_a_fileset(tmp_path / "small", 30)
    big = python_calls_making_a_fileset(tmp_path / "big", 300)
    assert 4 <= (big - small) / (300 - 30) < 4.2, (small, big)    # (and 3 calls a ROWS_PER_LOCK files)


def test_reading_every_metadata_file_by_name_costs_one_worker_call_a_folder(tmp_path, mount):
    """A reader that opens each metadata file by its name, never listing (`cat` or
    `json.load` of known paths), in the order a walk goes: the first LOOKUP of a view in
    a folder reads it, the views after it and the attributes of the folders they describe,
    in one worker call; the opens, reads and the other LOOKUPs are answered from memory
    (before: three worker calls a folder, its first view's stat, that view's open and the
    folder's own stat)."""
    scans, filesets, files = 2, 2, 5
    source = walk_samples.fsdb(tmp_path / "fsdb", scans, filesets, files)
    mnt = mount(source.path, *source.options)
    names = [f"scan_{s:03d}.metadata.json" for s in range(scans)]
    for s in range(scans):
        names += [f"scan_{s:03d}/fileset_{k}.metadata.json" for k in range(filesets)]
        names += [f"scan_{s:03d}/fileset_{k}/img_{i:03d}.png.metadata.json"
                  for k in range(filesets) for i in range(files)]
    before = daemon_status(mnt)
    read = {name: (mnt / name).read_bytes() for name in names}
    after = daemon_status(mnt)
    assert read["scan_001/fileset_1/img_004.png.metadata.json"] == \
        (source.path / "scan_001" / "metadata" / "fileset_1" / "img_004.json").read_bytes()
    folders = 1 + scans + scans * filesets
    assert after["worker_calls"] - before["worker_calls"] == folders
    assert after["work"]["metadata_files_read"] - before["work"].get("metadata_files_read", 0) == len(names)


def python_calls_learning_a_fileset(path, files: int) -> tuple[int, dict]:
    """Python calls of scopefs's backends, and the stats, for learning the attributes of a
    fileset of `files` files whose nodes are made, as the learner does ahead of a walk
    that stats (`find -printf %s`, `ls -l`, `du`)."""
    source = walk_samples.fsdb(path, 1, 1, files)
    tree = fsdb_tree.open_tree(str(source.path), Options())
    try:
        fileset = tree.root.lookup("scan_000").lookup("fileset_0")
        fileset.rows_in_memory()                # (its nodes made: the learner's own cost, counted above)
        tree.files_stated()                     # (a walk stats files: theirs are learned too)
        with PythonCalls(within=folders_of(backends), c_modules={"posix"}) as counted:
            fileset.learn()
        assert all(node.cached_attr() is not None for _, node in fileset.rows_in_memory())
        return counted.calls, counted.c_calls["stat"]
    finally:
        tree.close()


def test_learning_a_filesets_attributes_costs_two_stats_and_five_python_calls_a_file(tmp_path):
    """A file's attributes and its metadata view's, learned for a walk that stats: a stat
    each (from its folder's open descriptor), and 5 calls of scopefs (whether each is
    known, the view's stat and what it keeps of it, the file's stat); before: 7, the
    folder's descriptor and whether the view's stat was known asked by a call each."""
    small_calls, small_stats = python_calls_learning_a_fileset(tmp_path / "small", 30)
    big_calls, big_stats = python_calls_learning_a_fileset(tmp_path / "big", 300)
    assert (big_stats - small_stats) == 2 * (300 - 30)
    assert 5 <= (big_calls - small_calls) / (300 - 30) < 5.1, (small_calls, big_calls)    # (+3 a ROWS_PER_LOCK)
