"""The kernel keeps directory listings where the tree's CachePolicy lets it
(`cache_listings`, with a pyfuse3 built with daemon/pyfuse3-patches): a second listing of
an unchanged folder costs the daemon no readdir. Changes through the mount, and changes a
backend reports (`Tree.report`), show in the next listing at once.

The kernel also opens those directories itself (no OPENDIR, no RELEASEDIR), keeps the
targets of symbolic links, and sends no FLUSH for files opened read-only. Counted through
the daemon's status (`readdir_requests`, `opendir_requests`, ...); at the end, readers
deleting what they list, and `Operations` driven without the kernel, with and without the
pyfuse3 patch.
"""
from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

import pyfuse3
import pytest

import walk_samples
from conftest import daemon_status, iid_entry, wait_for
from iid_samples import disks_in_a_row
from test_operations import SampleTree
from scopefs.backends.nodes import ROOT_INO
from scopefs.daemon.fs import Operations
from scopefs.formats.samples import make_copick, make_fsdb, make_iid, make_imgstore

LIBC = ctypes.CDLL(None, use_errno=True)


def readdirs(mnt: Path) -> int:
    return daemon_status(mnt)["readdir_requests"]


def relisted(mnt: Path, folder: Path) -> tuple[list[str], int]:
    """The listing of `folder` (with `ls`), and the readdir requests it cost the daemon."""
    before = readdirs(mnt)
    names = os.listdir(folder)
    return sorted(names), readdirs(mnt) - before


@pytest.fixture
def iid_mount_of(tmp_path, mount):
    """A mount of the walk benchmark's .iid sample (entries in groups: links) with options."""
    return lambda *options: mount(walk_samples.iid(tmp_path / "walk.iid", 40).path, *options)


@pytest.mark.parametrize("kind", ["iid", "fsdb", "imgstore"])
def test_second_listing_is_answered_by_the_kernel(kind, tmp_path, mount):
    if kind == "iid":
        mnt = mount(make_iid(str(tmp_path / "cells.iid")))
        folders = [mnt, mnt / "groups", mnt / "groups" / "nuclei"]
    elif kind == "fsdb":
        mnt = mount(make_fsdb(str(tmp_path / "db")))
        folders = [mnt, mnt / "plant_001", mnt / "plant_001" / "images"]
    else:
        make_imgstore(str(tmp_path / "store"), frames=30)
        mnt = mount(tmp_path / "store")
        folders = [mnt, mnt / "frames"]
    assert daemon_status(mnt)["listings_cached_in_kernel"] is True, "pyfuse3 lacks our patch: ./dev setup"
    for folder in folders:
        first, cost = relisted(mnt, folder)
        assert first and cost >= 1
        again, cost = relisted(mnt, folder)
        assert again == first
        assert cost == 0, f"{folder.name}: a second listing reached the daemon"


def test_a_cold_walk_ends_each_listing_without_readdir(iid_mount_of):
    """The kernel ends every listing it caches with a READDIRPLUS answered empty; the
    daemon says where that comes when it gives a folder's last entry, and the session
    loop answers it (`pyfuse3.readdir_end_at`): readdir runs once per folder listed, not
    twice. (Another program's drop_caches makes the kernel list a folder again: counted
    so that such a listing, ended the same way, changes nothing asserted.)"""
    mnt = iid_mount_of()
    before = daemon_status(mnt)
    folders = empty = 0
    for _, dirs, files in os.walk(mnt):
        folders += 1
        empty += not (dirs or files)
    after = daemon_status(mnt)
    ends = after["readdir_ends_in_session"] - before["readdir_ends_in_session"]
    handled = after["readdir_requests"] - before["readdir_requests"] - ends
    assert folders > 40
    assert ends >= folders - empty
    assert handled - ends == empty, f"readdir ran {handled} times for {folders} folders"


def listed_with_sizes(folder: Path) -> dict[str, int]:
    """What `ls -l` learns of a folder: each name's size."""
    return {name: os.lstat(folder / name).st_size for name in os.listdir(folder)}


def test_copick_second_walk_of_a_voxel_spacing_folder_costs_the_daemon_nothing(tmp_path, mount):
    """The views of a VoxelSpacing folder (MRC, previews, picks in five formats) are made
    once for their sizes; a local overlay is watched, so the kernel keeps the listing and
    the attributes: an `ls -l` again sends no readdir and needs no worker thread. (The
    first `ls -l` lists the folder lean and sizes its views at the first LOOKUP, a second
    or two in which another program's drop_caches empties the kernel's copy of the
    listing, as seen while the walk benchmark and kernel tests ran: one `ls -l` of three
    again must cost nothing.)"""
    mnt = mount(make_copick(str(tmp_path / "copick")))
    assert daemon_status(mnt)["listings_cached_in_kernel"] is True
    folder = mnt / "ExperimentRuns" / "TS_001" / "VoxelSpacing10.000"
    first = listed_with_sizes(folder)
    assert "curator_1_ribosome.star" in first and "wbp.mrc" in first

    def again() -> tuple[int, int, int]:
        """What an `ls -l` again costs: READDIRs, worker calls and attribute requests."""
        before = daemon_status(mnt)
        assert listed_with_sizes(folder) == first
        after = daemon_status(mnt)
        return tuple(after[key] - before[key] for key in ("readdir_requests", "worker_calls", "attr_requests"))
    # at most the folder's own getattr: the kernel drops its atime after every listing
    costs = [again() for _ in range(3)]
    assert any(readdirs == 0 and calls <= 1 and attrs <= 1 for readdirs, calls, attrs in costs), costs


def test_copick_overlay_changed_by_another_program_shows_in_the_mount(tmp_path, mount):
    """A copick client writing picks straight into the overlay root (not through the mount):
    the kernel is told at once (inotify), so the Picks folder and the views of every
    VoxelSpacing folder of the run show it, though their listings were cached; a rewrite
    of the file shows its new size, a deletion takes its views away."""
    config = make_copick(str(tmp_path / "copick"))
    mnt = mount(config)
    run = mnt / "ExperimentRuns" / "TS_001"
    overlay_picks = tmp_path / "copick" / "overlay" / "ExperimentRuns" / "TS_001" / "Picks"
    for folder in (run / "Picks", run / "VoxelSpacing10.000"):
        relisted(mnt, folder)
        assert relisted(mnt, folder)[1] == 0, "listings are kept by the kernel"

    def shows(check) -> bool:
        return wait_for(check, 5, every=0.05)
    (overlay_picks / "other_2_ribosome.json").write_text(json.dumps(
        {"pickable_object_name": "ribosome", "user_id": "other", "session_id": "2",
         "points": [{"location": {"x": 1.0, "y": 2.0, "z": 3.0}}]}))
    assert shows(lambda: "other_2_ribosome.json" in os.listdir(run / "Picks"))
    assert shows(lambda: "other_2_ribosome.em" in os.listdir(run / "VoxelSpacing10.000"))
    size = (run / "Picks" / "other_2_ribosome.json").stat().st_size
    em = (run / "VoxelSpacing10.000" / "other_2_ribosome.em").stat().st_size
    (overlay_picks / "other_2_ribosome.json").write_text(json.dumps(
        {"pickable_object_name": "ribosome", "user_id": "other", "session_id": "2",
         "points": [{"location": {"x": float(i), "y": 2.0, "z": 3.0}} for i in range(5)]}))
    assert shows(lambda: (run / "Picks" / "other_2_ribosome.json").stat().st_size != size)
    assert shows(lambda: (run / "VoxelSpacing10.000" / "other_2_ribosome.em").stat().st_size > em)
    with open(run / "VoxelSpacing10.000" / "other_2_ribosome.em", "rb") as fh:
        assert len(fh.read()) == (run / "VoxelSpacing10.000" / "other_2_ribosome.em").stat().st_size
    (overlay_picks / "other_2_ribosome.json").unlink()
    assert shows(lambda: "other_2_ribosome.star" not in os.listdir(run / "VoxelSpacing10.000"))
    assert "other_2_ribosome.json" not in os.listdir(run / "Picks")


GETCWD_PROBE = """
import os, sys
for line in sys.stdin:
    try:
        print(os.getcwd(), flush=True)
    except OSError as exc:
        print("errno", exc.errno, flush=True)
"""


def test_a_working_directory_stays_reachable_when_its_folder_is_reported_changed(tmp_path, mount):
    """A folder the overlay watch reports (here made in the overlay root by another program,
    as a copy-up does) keeps its name in the kernel until a lookup answers differently: a
    process working in it still has a working directory (dropped, getcwd failed with
    ENOENT, and rsync and git in it with it)."""
    import sys
    config = make_copick(str(tmp_path / "copick"))
    mnt = mount(config)
    folder = mnt / "ExperimentRuns" / "TS_001" / "VoxelSpacing10.000"
    probe = subprocess.Popen([sys.executable, "-c", GETCWD_PROBE], cwd=folder, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)

    def cwd() -> str:
        probe.stdin.write("\n")
        probe.stdin.flush()
        return probe.stdout.readline().strip()
    try:
        assert cwd() == str(folder)
        made = tmp_path / "copick" / "overlay" / "ExperimentRuns" / "TS_001" / "VoxelSpacing10.000"
        made.mkdir()
        (made / "marker.txt").write_text("x")
        assert wait_for(lambda: "marker.txt" in os.listdir(folder), 5, every=0.02), \
            "the overlay watch did not report the new folder"
        seen = {cwd() for _ in range(50) if not time.sleep(0.02)}
        assert seen == {str(folder)}, "the working directory became unreachable"
    finally:
        probe.stdin.close()
        probe.wait(timeout=10)


def test_changes_through_the_mount_show_in_the_next_listing(fsdb_mount):
    images = fsdb_mount / "plant_001" / "images"
    names, _ = relisted(fsdb_mount, images)
    relisted(fsdb_mount, images)                          # now from the kernel's cache
    shutil.copyfile(images / "0.png", images / "new.png")
    assert "new.png" in relisted(fsdb_mount, images)[0]
    (images / "new.png").rename(images / "renamed.png")
    now = relisted(fsdb_mount, images)[0]
    assert "renamed.png" in now and "new.png" not in now
    (images / "renamed.png").unlink()
    assert relisted(fsdb_mount, images)[0] == names


def test_reported_change_shows_in_the_next_listing(iid_mount):
    """Moving an entry to another group (a write to its entry.json) changes the listings of
    both groups' folders behind the kernel's back: the backend reports them."""
    folder = iid_entry(iid_mount, "nucleus-a")
    nuclei, cells = iid_mount / "groups" / "nuclei", iid_mount / "groups" / "cells"
    for group in (nuclei, cells):
        relisted(iid_mount, group)
        assert relisted(iid_mount, group)[1] == 0         # cached
    assert folder.name in relisted(iid_mount, nuclei)[0]
    assert folder.name not in relisted(iid_mount, cells)[0]
    doc = json.loads((folder / "entry.json").read_text())
    doc["groups"] = ["cells"]
    (folder / "entry.json").write_text(json.dumps(doc))
    assert folder.name not in relisted(iid_mount, nuclei)[0]
    assert folder.name in relisted(iid_mount, cells)[0]


def test_deleted_entry_leaves_the_cached_root_listing(iid_mount):
    folder = iid_entry(iid_mount, "cell-b")
    relisted(iid_mount, iid_mount)
    shutil.rmtree(folder)
    assert folder.name not in relisted(iid_mount, iid_mount)[0]


def test_unpatched_pyfuse3_lists_as_before(tmp_path, mount, monkeypatch):
    """SCOPEFS_LISTING_CACHE=0: what the daemon does with a pyfuse3 without our patch."""
    monkeypatch.setenv("SCOPEFS_LISTING_CACHE", "0")
    mnt = mount(make_iid(str(tmp_path / "cells.iid")))
    assert daemon_status(mnt)["listings_cached_in_kernel"] is False
    first, _ = relisted(mnt, mnt)
    again, cost = relisted(mnt, mnt)
    assert again == first and cost >= 1


GETDENTS64 = {"x86_64": 217, "aarch64": 61}.get(os.uname().machine)


def getdents(fd: int, size: int = 1024) -> list[str]:
    """Names of the next entries of an open directory, in one getdents64 of `size` bytes:
    a small buffer, so that a folder of a few dozen entries takes several calls."""
    buf = ctypes.create_string_buffer(size)
    got = LIBC.syscall(GETDENTS64, fd, buf, size)
    assert got >= 0, os.strerror(ctypes.get_errno())
    names, pos = [], 0
    while pos < got:
        reclen = int.from_bytes(buf.raw[pos + 16:pos + 18], "little")
        names.append(buf.raw[pos + 19:pos + reclen].split(b"\0", 1)[0].decode())
        pos += reclen
    return names


@pytest.mark.skipif(GETDENTS64 is None, reason="getdents64's number on this machine is not known here")
@pytest.mark.parametrize("kind", ["iid", "fsdb"])
def test_reader_deleting_what_it_read_from_the_kernels_listing_skips_nothing(kind, tmp_path, mount):
    """The kernel lists the start from its cache; deleting those entries drops the cache,
    and the daemon goes on from the kernel's offset in the listing the kernel had cached
    (a listing made anew would have shifted, skipping entries)."""
    if kind == "iid":
        folder = mount(disks_in_a_row(tmp_path / "sixty.iid", 60))
    else:
        folder = mount(make_fsdb(str(tmp_path / "db"), images=60)) / "plant_001" / "images"
    everything = set(os.listdir(folder))                # now in the kernel's cache
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        first = getdents(fd)
        assert 0 < len(first) < len(everything)
        for name in first:
            if name[0].isdigit() and (folder / name).exists():    # an entry folder, an image
                shutil.rmtree(folder / name) if kind == "iid" else (folder / name).unlink()
        rest = []
        while batch := getdents(fd):
            rest += batch
    finally:
        os.close(fd)
    gone = {name for name in everything if not (folder / name).exists()}
    assert everything - gone - set(first) <= set(rest), "entries that stayed were skipped"


class UnpatchedReaddirToken:
    """pyfuse3 3.5.0's ReaddirToken, as a pip install of it has it: no inode."""


@pytest.mark.parametrize("patched", [True, False])
async def test_opendir_answers_what_the_pyfuse3_in_use_takes(patched, monkeypatch, caplog):
    """Driven without the kernel: with the patch ENOSYS (the kernel opens directories
    itself from then on), without it a plain handle (said once in the log)."""
    if not patched:
        monkeypatch.setattr(pyfuse3, "ReaddirToken", UnpatchedReaddirToken)
    with caplog.at_level(logging.INFO, logger="scopefs.daemon.fs"):
        ops = Operations(SampleTree())
    assert ops.kernel_opens_dirs is ops.cache_symlinks is patched
    assert ("not cached in the kernel" in caplog.text) is not patched
    if patched:
        with pytest.raises(pyfuse3.FUSEError) as refused:
            await ops.opendir(ROOT_INO, None)
        assert refused.value.errno == errno.ENOSYS
    else:
        fh = await ops.opendir(ROOT_INO, None)
        assert isinstance(fh, int) and fh > 0
        await ops.releasedir(fh)


def requests(mnt: Path) -> dict[str, int]:
    status = daemon_status(mnt)
    return {k: status[k] for k in ("opendir_requests", "releasedir_requests", "readdir_requests",
                                   "readlink_requests", "flush_requests")}


def cost(mnt: Path, *cmd: str) -> dict[str, int]:
    """The requests of each kind a command run in the mount sent the daemon."""
    before = requests(mnt)
    subprocess.run(cmd, cwd=mnt, check=True, stdout=subprocess.DEVNULL)
    return {k: v - before[k] for k, v in requests(mnt).items()}


@pytest.mark.parametrize("options", [(), ("-o", "ro")])
def test_a_second_walk_opens_no_directory_and_reads_no_link(options, iid_mount_of):
    """The kernel opens directories itself (no OPENDIR, no RELEASEDIR, listings from its
    cache) and keeps the targets of the groups' links. (A walk again may ask for what
    another program's drop_caches took from the kernel meanwhile: one of three must not.)"""
    mnt = iid_mount_of(*options)
    first = cost(mnt, "find", ".")
    assert first["opendir_requests"] <= 1 and first["releasedir_requests"] == 0
    assert first["readdir_requests"] > 0
    assert dict.fromkeys(first, 0) in [cost(mnt, "find", ".") for _ in range(3)]
    assert cost(mnt, "ls", "-lR")["readlink_requests"] > 0     # groups/*/ hold a link per member
    assert 0 in [cost(mnt, "ls", "-lR")["readlink_requests"] for _ in range(3)]


def test_reading_a_file_of_a_writable_mount_sends_no_flush(iid_mount):
    """A read-only open has nothing to commit at close (FOPEN_NOFLUSH); a write still
    commits at close."""
    doc = iid_entry(iid_mount, "nucleus-a") / "entry.json"
    before = requests(iid_mount)["flush_requests"]
    for _ in range(3):
        doc.read_bytes()
    assert requests(iid_mount)["flush_requests"] == before
    doc.write_text(doc.read_text())
    assert requests(iid_mount)["flush_requests"] > before


@pytest.mark.skipif(GETDENTS64 is None, reason="getdents64's number on this machine is not known here")
def test_two_readers_of_one_folder_deleting_skip_nothing(tmp_path, mount):
    """Reader A lists its start from the kernel's cache; deleting it drops that cache;
    reader B then lists from the start (a new listing), and deletes its start too. Each
    goes on in the listing its offsets came from: neither skips an entry that stayed."""
    folder = mount(make_fsdb(str(tmp_path / "db"), images=90)) / "plant_001" / "images"
    everything = set(os.listdir(folder))                # now in the kernel's cache
    a = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    b = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        read = {a: getdents(a)}
        images = lambda names: [n for n in names if n.endswith(".png") and (folder / n).exists()]
        for name in images(read[a]):
            (folder / name).unlink()
        read[b] = getdents(b)
        assert set(read[a]).isdisjoint(images(read[b])), "B listed anew, without A's deletions"
        for name in images(read[b]):
            (folder / name).unlink()
        rest = {a: [], b: []}
        while True:                                     # the two go on in turn
            batches = {fd: getdents(fd) for fd in (a, b)}
            for fd, batch in batches.items():
                rest[fd] += batch
            if not any(batches.values()):
                break
    finally:
        os.close(a)
        os.close(b)
    stayed = {name for name in everything if (folder / name).exists()}
    for fd in (a, b):
        assert stayed - set(read[fd]) <= set(rest[fd]), "entries that stayed were skipped"


def getdents_offsets(fd: int, size: int = 1024) -> list[tuple[str, int]]:
    """(name, d_off) of the next entries of an open directory, in one getdents64."""
    buf = ctypes.create_string_buffer(size)
    got = LIBC.syscall(GETDENTS64, fd, buf, size)
    assert got >= 0, os.strerror(ctypes.get_errno())
    out, pos = [], 0
    while pos < got:
        offset = int.from_bytes(buf.raw[pos + 8:pos + 16], "little", signed=True)
        reclen = int.from_bytes(buf.raw[pos + 16:pos + 18], "little")
        out.append((buf.raw[pos + 19:pos + reclen].split(b"\0", 1)[0].decode(), offset))
        pos += reclen
    return out


@pytest.mark.skipif(GETDENTS64 is None, reason="getdents64's number on this machine is not known here")
def test_seekdir_to_any_offset_given_goes_on_after_its_entry(tmp_path, mount):
    """telldir/seekdir: an offset the listing gave (the kernel's cached copy, or the
    daemon's once a deletion dropped the copy) resumes right after its entry."""
    folder = mount(make_fsdb(str(tmp_path / "db"), images=40)) / "plant_001" / "images"
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        listed = []
        while batch := getdents_offsets(fd):
            listed += batch
        first = next(i for i, (name, _) in enumerate(listed) if name.endswith(".png"))
        for changed in (False, True):
            if changed:                                 # drops the kernel's copy, shifts the rest
                (folder / listed[first][0]).unlink()
            for k in (first, (first + len(listed)) // 2, len(listed) - 2):
                os.lseek(fd, listed[k][1], os.SEEK_SET)
                rest = []
                while batch := getdents_offsets(fd):
                    rest += [name for name, _ in batch]
                assert rest[:len(listed) - k - 1] == [name for name, _ in listed[k + 1:]], (changed, k)
    finally:
        os.close(fd)


def test_a_listing_from_memory_longer_than_one_reply_lists_each_name_once(tmp_path, mount):
    """A folder listed on the loop (`entries_nowait`) whose names fill more than one
    READDIRPLUS buffer: the rest waits for the next readdir, nothing lost or doubled."""
    folder = mount(walk_samples.iid(tmp_path / "many.iid", 1000).path) / "by-address"
    assert sorted(os.listdir(folder)) == sorted(f"cell-{i}" for i in range(1000))
