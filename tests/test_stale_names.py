"""Names the kernel holds for an inode the daemon no longer shows under them: a listing
read on after a removal must not bring the name back, and whatever the kernel still
holds, open(O_CREAT) of a name that is gone creates it and a name whose file was
replaced opens the new one."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from scopefs.backends.fsdb import FSDB
from scopefs.formats.iid import IIDFile

#: enough long names that one READDIRPLUS (at most 128 KiB) cannot hold them all
LONG = "x" * 160
NAMES = [f"n{i:04d}-{LONG}.bin" for i in range(700)]


def read_on_after_a_removal(folder: Path, last: str, change, remove) -> None:
    """`change` the folder (the kernel's listing of it goes), start a new listing, remove
    `last`, a name it lists last, through the mount, and read the listing on. The daemon
    goes on in the listing it made before the removal, and the kernel links every name
    a READDIRPLUS carries: the name must not come back (it came back with its old inode,
    which `stat` then showed and an open(O_CREAT) opened: ENOENT)."""
    change()
    with os.scandir(folder) as listing:
        next(listing)                           # one READDIRPLUS: the name is not in it
        remove(folder / last)
        rest = [entry.name for entry in listing]
    assert len(rest) > 300                      # (the removal came while the listing was read)
    assert not os.path.lexists(folder / last)
    assert last not in os.listdir(folder)


def create_gone_name(path: Path, data: bytes) -> None:
    """open(O_CREAT) of a name whose file is gone creates a new, empty file (it opened the
    old inode, or failed with ENOENT), then `data` is written to it."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        assert os.fstat(fd).st_size == 0
        os.write(fd, data)
    finally:
        os.close(fd)


def file_removed_while_listed_is_created_again(folder: Path) -> None:
    """FSDB's `.metadata.json` names stay when their file goes: the last `.bin` one."""
    last = [name for name in os.listdir(folder) if name.endswith(".bin")][-1]

    def change():
        (folder / "changed.bin").write_bytes(b"x")
        os.unlink(folder / "changed.bin")
    read_on_after_a_removal(folder, last, change, os.unlink)
    create_gone_name(folder / last, b"new")
    assert (folder / last).read_bytes() == b"new"


def big_static_folder(mount, tmp_path: Path) -> Path:
    """big/, a static folder of the NAMES, through a copick overlay mount."""
    static, overlay = tmp_path / "static", tmp_path / "overlay"
    (static / "big").mkdir(parents=True)
    overlay.mkdir()
    for name in NAMES:
        (static / "big" / name).write_bytes(b"static")
    return mount(static, "-t", "copick", "-o", f"overlay={overlay}") / "big"


@pytest.mark.parametrize("listings", ["kernel", "handles"])
def test_overlay_listing_read_on_after_a_removal(mount, tmp_path, monkeypatch, listings):
    """Also with a listing per OPENDIR handle (as a copick overlay on S3 lists)."""
    if listings == "handles":
        monkeypatch.setenv("SCOPEFS_LISTING_CACHE", "0")
    file_removed_while_listed_is_created_again(big_static_folder(mount, tmp_path))


def test_overlay_listing_read_on_after_a_rename_over_a_name(mount, tmp_path):
    """A new file renamed over a name (what editors and rsync do) while a listing made
    before is read on: the listing shows the name, as the new file."""
    folder = big_static_folder(mount, tmp_path)
    last = os.listdir(folder)[-1]
    new = {}

    def rename_over(path: Path) -> None:
        (folder / ".new").write_bytes(b"new")
        new["ino"] = os.stat(folder / ".new").st_ino
        os.rename(folder / ".new", path)
    (folder / "changed.bin").write_bytes(b"x")      # the folder changes: the kernel's listing goes
    os.unlink(folder / "changed.bin")
    with os.scandir(folder) as listing:
        next(listing)
        rename_over(folder / last)
        rest = {entry.name: entry.inode() for entry in listing}
    assert rest.get(last) == new["ino"] == os.stat(folder / last).st_ino
    assert (folder / last).read_bytes() == b"new"


def test_fsdb_listing_read_on_after_a_removal(mount, tmp_path):
    root = tmp_path / "db"
    root.mkdir()
    (root / "romidb").touch()
    db = FSDB(str(root))
    db.connect()
    fileset = db.create_scan("scan").create_fileset("files")
    for name in NAMES:
        fileset.create_file(name.removesuffix(".bin")).write_raw(b"data", "bin")
    db.disconnect()
    mnt = mount(root)
    file_removed_while_listed_is_created_again(mnt / "scan" / "files")


def test_iid_listing_read_on_after_an_entry_is_removed(mount, tmp_path):
    """An .iid's entries are folders: `rm -r` of one while the root is listed."""
    seg = IIDFile()
    seg.meta = {"shape": [8, 8]}
    for i in range(700):
        seg.add(np.ones((2, 2), bool), (0, 0, 2, 2), address=f"e{i:04d}-{LONG}".encode())
    seg.save(str(tmp_path / "cells.iid"))
    mnt = mount(tmp_path / "cells.iid")
    last = [name for name in os.listdir(mnt) if name.endswith(LONG)][-1]

    def change():
        (mnt / "changed").mkdir()
        (mnt / "changed").rmdir()
    read_on_after_a_removal(mnt, last, change, shutil.rmtree)


def test_static_files_removed_or_replaced_behind_the_mount(mount, tmp_path):
    """The static root is not watched: the kernel keeps its names (an hour where the
    overlay root is watched). A name whose static file is gone is created by
    open(O_CREAT); one whose file was replaced opens the new file. Both failed with
    ENOENT: the daemon answered OPEN of the old inode so, and the kernel gave up."""
    static, overlay, mnt = merged_static_files(mount, tmp_path, removed=b"old")
    assert (mnt / "removed.bin").read_bytes() == (mnt / "replaced.bin").read_bytes() == b"old"
    (static / "replacing.bin").write_bytes(b"new")
    os.rename(static / "replacing.bin", static / "replaced.bin")
    os.unlink(static / "removed.bin")           # (after the new file is made: it cannot reuse its inode)
    assert (mnt / "replaced.bin").read_bytes() == b"new"
    assert os.stat(mnt / "replaced.bin").st_size == 3
    create_gone_name(mnt / "removed.bin", b"created")
    assert (overlay / "removed.bin").read_bytes() == b"created"


def test_static_file_whose_inode_number_is_reused_behind_the_mount(mount, tmp_path):
    """A static file deleted behind the mount whose inode number a new file then gets
    (ext4 hands a freed number out again at once), renamed over another name: the
    kernel's name for the deleted file must not open the new one (it did: the new file
    was taken for the deleted file's node, moved to its new name)."""
    static, overlay, mnt = merged_static_files(mount, tmp_path, removed=b"removed")
    assert (mnt / "removed.bin").read_bytes() == b"removed" and (mnt / "replaced.bin").read_bytes() == b"old"
    freed = os.stat(static / "removed.bin").st_ino
    os.unlink(static / "removed.bin")
    for attempt in range(100):
        (static / f".new{attempt}").write_bytes(b"new")
        if os.stat(static / f".new{attempt}").st_ino == freed:
            break
    else:
        pytest.skip("this filesystem gave no freed inode number out again")
    os.rename(static / f".new{attempt}", static / "replaced.bin")
    assert (mnt / "replaced.bin").read_bytes() == b"new"
    assert os.stat(mnt / "replaced.bin").st_size == 3           # (the new file: looked up again)
    with pytest.raises(FileNotFoundError):
        (mnt / "removed.bin").read_bytes()
    create_gone_name(mnt / "removed.bin", b"created")
    assert (overlay / "removed.bin").read_bytes() == b"created"
    assert (mnt / "replaced.bin").read_bytes() == b"new"


def merged_static_files(mount, tmp_path, removed: bytes):
    """A merged view of a static root holding `removed.bin` and `replaced.bin` (b"old")
    over an empty overlay root: (static, overlay, mountpoint)."""
    static, overlay = tmp_path / "static", tmp_path / "overlay"
    static.mkdir()
    overlay.mkdir()
    (static / "removed.bin").write_bytes(removed)
    (static / "replaced.bin").write_bytes(b"old")
    return static, overlay, mount(static, "-t", "copick", "-o", f"overlay={overlay}")


def test_static_folder_whose_inode_number_is_reused_behind_the_mount(mount, tmp_path):
    """A static folder removed behind the mount whose inode number a new folder then gets
    (ext4 hands a freed number out again at once), renamed over another (empty) folder:
    once the merged root is listed again, the new folder is a new inode, and a process
    in the removed folder is not moved into it (it was: the new folder was taken for the
    removed one's node, and the kernel moved its name for that node to the new name)."""
    static, overlay = tmp_path / "static", tmp_path / "overlay"
    (static / "removed").mkdir(parents=True)
    (static / "removed" / "old.txt").write_text("old")
    (static / "replaced").mkdir()
    overlay.mkdir()
    mnt = mount(static, "-t", "copick", "-o", f"overlay={overlay}")
    assert os.listdir(mnt / "removed") == ["old.txt"] and os.listdir(mnt / "replaced") == []
    inside = os.open(mnt / "removed", os.O_RDONLY | os.O_DIRECTORY)       # a shell cd'd into it
    try:
        shown_ino = os.fstat(inside).st_ino
        freed = os.stat(static / "removed").st_ino
        shutil.rmtree(static / "removed")
        for attempt in range(100):
            (static / f".new{attempt}").mkdir()
            if os.stat(static / f".new{attempt}").st_ino == freed:
                break
        else:
            pytest.skip("this filesystem gave no freed inode number out again")
        (static / f".new{attempt}" / "new.txt").write_text("new")
        os.rename(static / f".new{attempt}", static / "replaced")
        (mnt / "changed").write_bytes(b"")      # the kernel's listing of the root goes
        os.unlink(mnt / "changed")
        assert "replaced" in os.listdir(mnt) and "removed" not in os.listdir(mnt)
        assert os.listdir(mnt / "replaced") == ["new.txt"]
        assert (mnt / "replaced" / "new.txt").read_text() == "new"
        assert os.stat(mnt / "replaced").st_ino != shown_ino
        assert not os.readlink(f"/proc/self/fd/{inside}").endswith("/replaced")
    finally:
        os.close(inside)
