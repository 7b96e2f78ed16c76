"""A name the kernel learnt from a listing made before the name was removed: the next
open(O_CREAT) of that name must create it, whatever the kernel kept."""
from __future__ import annotations

import os
from pathlib import Path

from scopefs.backends.fsdb import FSDB

#: enough long names that one READDIRPLUS (at most 128 KiB) cannot hold them all
NAMES = [f"n{i:04d}-" + "x" * 160 + ".bin" for i in range(700)]


def stale_name_then_create(folder: Path) -> None:
    """List `folder` (its listing then ends in a name the kernel has not been told of;
    FSDB's `.metadata.json` names stay when their file goes, so a `.bin` one),
    start a new listing, remove that last name through the mount, read the listing on:
    the daemon goes on in the listing it made before the removal, so the name comes
    again, with attributes, and the kernel links it back. An open(O_CREAT) of it then
    must create a new, empty file."""
    last = [name for name in os.listdir(folder) if name.endswith(".bin")][-1]
    (folder / "changed.bin").write_bytes(b"x")      # the folder changes: the kernel's listing goes
    os.unlink(folder / "changed.bin")
    with os.scandir(folder) as listing:
        next(listing)                           # one READDIRPLUS: the name is not in it
        os.unlink(folder / last)
        rest = [entry.name for entry in listing]
    assert last in rest, "the listing did not show the removed name: nothing to check"
    fd = os.open(folder / last, os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        assert os.fstat(fd).st_size == 0
        os.write(fd, b"new")
    finally:
        os.close(fd)
    assert (folder / last).read_bytes() == b"new"


def test_overlay_create_after_a_listing_showed_a_removed_name(mount, tmp_path):
    static, overlay = tmp_path / "static", tmp_path / "overlay"
    (static / "big").mkdir(parents=True)
    overlay.mkdir()
    for name in NAMES:
        (static / "big" / name).write_bytes(b"static")
    mnt = mount(static, "-t", "copick", "-o", f"overlay={overlay}")
    stale_name_then_create(mnt / "big")


def test_fsdb_create_after_a_listing_showed_a_removed_name(mount, tmp_path):
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
    stale_name_then_create(mnt / "scan" / "files")
