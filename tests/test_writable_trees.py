"""The writable models without the kernel: an .iid's entry folders and an FSDB tree,
changed through the node calls the daemon makes (create, open/write/flush/release,
mkdir, rename, unlink, rmdir), then read back from the file or database they wrote.
The mount tests (test_mount_iid.py, test_fsdb.py) check the same through real tools
and upstream readers; these are the fast, direct version."""
from __future__ import annotations

import errno
import io
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from contract import content

from scopefs.backends import open_tree
from scopefs.backends.fsdb import FSDB
from scopefs.backends.options import Options
from scopefs.formats import samples
from scopefs.formats.iid import IIDFile

CREATED = os.O_WRONLY | os.O_CREAT | os.O_TRUNC        # what open(2) of a new file passes


def write(node, data: bytes, flags: int = os.O_WRONLY | os.O_TRUNC) -> None:
    """What `cat > file` does to a node: open, write, close (flush, then release)."""
    handle = node.open(flags)
    try:
        handle.write(0, data)
        handle.flush()
    finally:
        handle.release()


def create(directory, name: str, data: bytes):
    node = directory.create(name, 0o644)
    write(node, data, CREATED)
    return node


def png(mask: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(out, "PNG")
    return out.getvalue()


def names(directory) -> list[str]:
    return [name for _, name, _, _ in directory.opendir().entries(0)]


def refused(call, *args) -> int:
    with pytest.raises(OSError) as err:
        call(*args)
    return err.value.errno


# -- .iid -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def iid_sample(tmp_path_factory):
    return samples.make_iid(str(tmp_path_factory.mktemp("iid") / "cells.iid"))


@pytest.fixture
def iid(iid_sample, tmp_path):
    """A writable tree of a copy of the sample (4 cells in groups nuclei and cells)."""
    path = str(tmp_path / "cells.iid")
    shutil.copy(iid_sample, path)
    tree = open_tree("iid", path, Options({"writeback_delay": "3600"}))
    yield tree, path
    tree.close()


def test_iid_new_entry_from_a_folder_a_mask_and_an_entry_json(iid):
    tree, path = iid
    folder = tree.root.mkdir("added", 0o755)
    mask = np.zeros((7, 7), bool)
    mask[2:5, 1:6] = True
    create(folder, ".upload.png", png(mask))               # rsync: a temporary name, then a rename
    folder.rename(".upload.png", folder, "mask.png")
    assert names(folder) == ["mask.png"] and not tree.status()["pending_changes"]    # not an entry yet
    create(folder, "entry.json", json.dumps({"address": "added", "bbox": [60, 70],
                                             "groups": ["nuclei", "new group"]}).encode())
    doc = json.loads(content(folder.lookup("entry.json")))
    assert doc["key"] == 4 and doc["area"] == 15 and doc["groups"] == ["nuclei", "new group"]
    assert names(folder) == ["mask.png", "entry.json"]
    assert "added" in names(tree.root.lookup("groups").lookup("new group"))
    assert "added" in names(tree.root.lookup("by-address").lookup("added"))
    assert tree.status()["pending_changes"]
    tree.sync()
    written = IIDFile.open(path)
    try:
        entry = written.entries[4]
        assert entry.address == b"added" and entry.bbox == (60, 70, 67, 77)
        assert np.array_equal(entry.mask(), mask)
        assert written.groups["new group"] == [4] and 4 in written.groups["nuclei"]
    finally:
        written.close()


def test_iid_rm_r_of_an_entry_renumbers_the_keys_after_it(iid):
    tree, path = iid
    root = tree.root
    first = names(root)[names(root).index("overview.png") + 1:]
    gone = root.lookup(first[1])
    for name in names(gone):
        gone.unlink(name)
    root.rmdir(first[1])
    assert first[1] not in names(root) and root.lookup(first[1]) is None
    assert json.loads(content(root.lookup(first[2]).lookup("entry.json")))["key"] == 1
    tree.sync()
    written = IIDFile.open(path)
    try:
        assert [e.address for e in written.entries] == [b"nucleus-a", b"cell-a", b"cell-b"]
        assert written.groups == {"nuclei": [0], "cells": [1, 2]}
    finally:
        written.close()


def test_iid_mask_meta_and_group_links(iid):
    tree, path = iid
    folder = tree.root.lookup("000002-cell-a")
    square = np.ones((4, 6), bool)
    write(folder.lookup("mask.png"), png(square))
    assert json.loads(content(folder.lookup("entry.json")))["area"] == 24
    write(tree.root.lookup("meta.json"), b'{"edited": true}')
    groups = tree.root.lookup("groups")
    groups.lookup("nuclei").symlink("000002-cell-a", "../../000002-cell-a")
    groups.lookup("cells").unlink("000003-cell-b")
    groups.mkdir("empty", 0o755)
    tree.sync()
    written = IIDFile.open(path)
    try:
        assert np.array_equal(written.entries[2].mask(), square)
        assert written.meta == {"edited": True}
        assert written.groups == {"nuclei": [0, 1, 2], "cells": [2], "empty": []}
    finally:
        written.close()


def test_iid_meta_json_alone_is_a_change_written_back(iid):
    tree, path = iid
    write(tree.root.lookup("meta.json"), b'{"only": "meta"}')
    assert tree.status()["pending_changes"] and tree.sync_due() is False     # not before the delay
    tree.sync()
    written = IIDFile.open(path)
    try:
        assert written.meta == {"only": "meta"} and len(written.entries) == 4
    finally:
        written.close()


def test_iid_an_open_listing_skips_nothing_while_entries_go(iid):
    """A reader deleting what it has read (a scandir-and-unlink loop, over more entries
    than the daemon lists at once) gets every other entry at the offsets it was given."""
    tree, _ = iid
    reader = tree.root.opendir()
    rows = list(reader.entries(0))
    listed = [row[1] for row in rows]
    first = listed.index("000000-nucleus-a")
    folder = tree.root.lookup(listed[first])
    for name in names(folder):
        folder.unlink(name)
    tree.root.rmdir(listed[first])
    assert [row[1] for row in reader.entries(rows[first][0])] == listed[first + 1:]
    assert listed[first] not in names(tree.root)                   # a new handle sees it gone


def test_iid_refused_writes_change_nothing(iid):
    tree, path = iid
    before = open(path, "rb").read()
    folder = tree.root.lookup("000000-nucleus-a")
    mask, doc = content(folder.lookup("mask.png")), content(folder.lookup("entry.json"))
    assert refused(write, folder.lookup("mask.png"), b"not an image") == errno.EINVAL
    assert refused(write, folder.lookup("entry.json"), b'{"bbox": [0, 0, 2, 2]}') == errno.EINVAL
    assert refused(write, tree.root.lookup("meta.json"), b"{nope") == errno.EINVAL
    assert refused(tree.root.rmdir, "000000-nucleus-a") == errno.ENOTEMPTY
    assert refused(tree.root.rename, "000000-nucleus-a", tree.root, "renamed") == errno.EPERM
    assert refused(folder.rename, "mask.png", tree.root.lookup("000001-nucleus-b"), "mask.png") == errno.EXDEV
    assert refused(tree.root.lookup("groups").lookup("cells").symlink, "x", "../../nowhere") == errno.EINVAL
    assert content(folder.lookup("mask.png")) == mask and content(folder.lookup("entry.json")) == doc
    assert not tree.status()["pending_changes"]
    tree.sync()
    assert open(path, "rb").read() == before


# -- FSDB -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fsdb_sample(tmp_path_factory):
    return samples.make_fsdb(str(tmp_path_factory.mktemp("fsdb") / "plantdb"), images=3)


@pytest.fixture
def fsdb(fsdb_sample, tmp_path):
    """A writable tree of a copy of the sample (scan plant_001: images, segmentation, video)."""
    path = str(shutil.copytree(fsdb_sample, tmp_path / "plantdb"))
    tree = open_tree("fsdb", path, Options())
    yield tree, path
    tree.close()


def reopened(path: str) -> FSDB:
    """The database as the library sees it once the tree is closed."""
    db = FSDB(path)
    db.connect()
    return db


def test_fsdb_new_scan_fileset_file_and_metadata(fsdb):
    tree, path = fsdb
    scan = tree.root.mkdir("scan_b", 0o755)
    raw = scan.mkdir("raw", 0o755)
    create(raw, "photo.png", b"\x89PNG pretend")
    create(raw, ".rsync-tmp", b"synced bytes")
    raw.rename(".rsync-tmp", raw, "synced.png")
    write(raw.lookup("photo.png.metadata.json"), b'{"exposure": 12}')
    write(tree.root.lookup("scan_b.metadata.json"), b'{"plant": "b"}')
    assert names(raw) == ["photo.png.metadata.json", "photo.png", "synced.png.metadata.json", "synced.png"]
    assert content(raw.lookup("synced.png")) == b"synced bytes"
    assert refused(tree.root.mkdir, "bad name", 0o755) == errno.EINVAL
    tree.close()
    db = reopened(path)
    try:
        fileset = db.get_scan("scan_b").get_fileset("raw")
        assert sorted(f.id for f in fileset.get_files()) == ["photo", "synced"]
        assert fileset.get_file("photo").get_metadata() == {"exposure": 12}
        assert db.get_scan("scan_b").get_metadata() == {"plant": "b"}
        with open(os.path.join(path, "scan_b", "raw", "synced.png"), "rb") as fh:
            assert fh.read() == b"synced bytes"
    finally:
        db.disconnect()


def test_fsdb_rename_unlink_and_rm_r(fsdb):
    tree, path = fsdb
    scan = tree.root.lookup("plant_001")
    images = scan.lookup("images")
    images.rename("2.png", images, "two.png")
    assert json.loads(content(images.lookup("two.png.metadata.json"))) == {"angle_deg": 30}
    images.unlink("1.png")
    assert images.lookup("1.png") is None and images.lookup("1.png.metadata.json") is None
    video = scan.lookup("video")
    for name in names(video):
        video.unlink(name)
    scan.rmdir("video")
    assert "video" not in names(scan) and "video.view" not in names(scan)
    tree.close()
    db = reopened(path)
    try:
        scan = db.get_scan("plant_001")
        assert sorted(f.id for f in scan.get_fileset("images").get_files()) == ["0", "two"]
        assert scan.get_fileset("images").get_file("two").get_metadata() == {"angle_deg": 30}
        assert scan.get_fileset("video") is None
        assert not os.path.exists(os.path.join(path, "plant_001", "images", "1.png"))
    finally:
        db.disconnect()


def test_fsdb_an_open_listing_skips_nothing_while_files_go(fsdb):
    tree, _ = fsdb
    images = tree.root.lookup("plant_001").lookup("images")
    reader = images.opendir()
    rows = list(reader.entries(0))
    listed = [row[1] for row in rows]                           # (each view before its file)
    images.unlink(listed[1])                                    # 0.png, and its metadata with it
    assert [row[1] for row in reader.entries(rows[1][0])] == listed[2:]
    assert names(images) == listed[2:]


def test_fsdb_refused_metadata_changes_nothing(fsdb):
    tree, path = fsdb
    images = tree.root.lookup("plant_001").lookup("images")
    view = images.lookup("0.png.metadata.json")
    assert refused(write, view, b"{broken") == errno.EINVAL
    assert refused(write, view, b"[1, 2]") == errno.EINVAL
    assert json.loads(content(view)) == {"angle_deg": 0}
    assert refused(images.rename, "0.png", tree.root.lookup("plant_001").lookup("segmentation"), "0.png") == errno.EXDEV
    assert refused(tree.root.lookup("plant_001").rmdir, "images") == errno.ENOTEMPTY


def test_fsdb_what_the_format_has_no_place_for_is_eperm_not_erofs(fsdb):
    """A writable database refuses folders in a fileset, symbolic links and moves of
    scans or filesets as its format's rule (EPERM, as README says), not as read-only."""
    tree, _ = fsdb
    scan = tree.root.lookup("plant_001")
    images = scan.lookup("images")
    assert refused(images.mkdir, "sub", 0o755) == errno.EPERM
    assert refused(images.symlink, "link", "0.png") == errno.EPERM
    assert refused(scan.symlink, "link", "images") == errno.EPERM
    assert refused(scan.rename, "images", scan, "moved") == errno.EPERM
    assert refused(tree.root.rename, "plant_001", tree.root, "moved") == errno.EPERM
