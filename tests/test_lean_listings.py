"""Listings without attributes where they would cost work (`LeanRule`, READDIRPLUS entries
with node id 0): a cold `find` of a copick mount computes no view's size and sends no
LOOKUP; a walk that stats what it lists sizes a folder's views together at the first
LOOKUP (one worker call, as a listing with attributes would) and answers the other
LOOKUPs from it; a folder whose lean listing the kernel kept and a trip dropped is
listed again from what the daemon kept, not scanned again; names, sizes and bytes are
those of listings with attributes. Lean listings are on by default: these mounts set
SCOPEFS_LEAN_LISTINGS=1 or 0 all the same, to compare the two.

The mounts here have no size learner (`SCOPEFS_LEARN_VIEW_SIZES=0`) and each its own
kept sizes (XDG_CACHE_HOME): which views a listing gives without attributes would
otherwise depend on how far the learner got."""
from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import walk_samples
from conftest import KernelLetNamesGo, daemon_status, unless_caches_dropped
from scopefs.daemon.listings import LEAN_MISSES


def counts(mnt) -> dict:
    status = daemon_status(mnt)
    return {"lookups": status["lookup_requests"], "lean": status["lean_entries"],
            "answered": status["lean_lookups_answered"], "calls": status["worker_calls"],
            "attrs": status["attr_requests"] - status["lookup_requests"],
            "readdirs": status["readdir_requests"], "scans": status["listings_made"],
            "given_again": status["lean_listings_given_again"],
            "batches": status.get("picks_size_batches", 0), "made": status.get("views_made", 0),
            "sizes_learned": status.get("view_sizes", {}).get("learned", 0), "trips": status["lean_rule_trips"],
            "ahead": status.get("listings_scanned_ahead", {}).get("used", 0),
            "forgotten": status["inodes_forgotten"], "held_lookups": status["lookups_of_held_inodes"]}


def counted(mnt, *walks) -> dict:
    """What `walks` (commands, run in the mount one after the other) cost the daemon."""
    before = counts(mnt)
    for walk in walks:
        subprocess.run(walk, cwd=mnt, capture_output=True, check=True)
    after = counts(mnt)
    return {key: after[key] - before[key] for key in after}


def run(*args) -> str:
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout


@pytest.fixture
def copick_source(tmp_path):
    return walk_samples.copick(tmp_path / "copick", 3, 4)


@pytest.fixture
def fresh_mount(copick_source, mount, monkeypatch, tmp_path):
    """A mount of the copick sample as never mounted before; `lean=False`: every listing
    entry with its attributes (SCOPEFS_LEAN_LISTINGS=0); `list_ahead=False`: no listing
    made ahead of the walker (SCOPEFS_LIST_AHEAD=0: which are ready in time is scheduling)."""
    made = []

    def fresh(lean: bool = True, list_ahead: bool = True):
        with monkeypatch.context() as env:
            env.setenv("SCOPEFS_LEARN_VIEW_SIZES", "0")
            env.setenv("SCOPEFS_LEAN_LISTINGS", "1" if lean else "0")
            env.setenv("SCOPEFS_LIST_AHEAD", "1" if list_ahead else "0")
            env.setenv("XDG_CACHE_HOME", str(tmp_path / f"cache-{len(made)}"))
            made.append(mount(copick_source.path, *copick_source.options))
        return made[-1]
    return fresh


@contextmanager
def kernel_let_go(*costs: dict):
    """A failure within, in walks that cost the kernel's FORGETs or LOOKUPs of names it
    held (`counted`), as `KernelLetNamesGo`: `unless_caches_dropped` tries again."""
    try:
        yield
    except AssertionError as failure:
        if any(cost["forgotten"] or cost["held_lookups"] for cost in costs):
            raise KernelLetNamesGo(costs) from failure
        raise


def test_cold_find_of_copick_sizes_no_view_and_looks_nothing_up(fresh_mount):
    cost = counted(fresh_mount(), ["find", "."])
    assert cost["batches"] == cost["made"] == cost["sizes_learned"] == 0
    assert cost["lookups"] == 0 and cost["lean"] > 0


def test_ls_l_of_a_folder_listed_lean_sizes_its_views_in_one_worker_call(fresh_mount):
    """`ls -l` of a VoxelSpacing folder (previews, MRC and picks views): the first LOOKUP
    sizes the folder's views in its worker call (the picks views in one batch), the
    other LOOKUPs are answered without a worker: as many worker calls as with attributes,
    and one for that LOOKUP."""
    folder = "ExperimentRuns/TS_001/VoxelSpacing10.000"

    def check():
        lean_mnt, full_mnt = fresh_mount(), fresh_mount(lean=False)
        lean, full = counted(lean_mnt, ["ls", "-l", folder]), counted(full_mnt, ["ls", "-l", folder])
        with kernel_let_go(lean, full):
            assert lean["lean"] > 20 and lean["lookups"] - full["lookups"] == lean["lean"]     # (and the path's)
            assert lean["answered"] == lean["lean"] - 1
            assert lean["calls"] <= full["calls"] + 1
            assert lean["batches"] == full["batches"] == 1
    unless_caches_dropped(check)


def test_ls_lR_after_lean_listings_costs_what_it_costs_with_attributes(fresh_mount):
    """A cold `ls -lR`, and `find` then `ls -lR`: a worker call more for each folder
    whose lean names were looked up before listings carry attributes (`LEAN_MISSES`
    LOOKUPs tell), none a LOOKUP, and after `find` one for each listing the kernel kept
    from it and then dropped (listed again, with attributes, from the rows the daemon
    kept: every folder scanned once, as with attributes); the same views are made and
    the picks views in the same batches (no listing made ahead: which are ready when the
    walk reaches them, and so which take a worker call, is up to the scheduler). The
    LOOKUP that trips waits until the kernel was told to drop the listings it kept: a walk
    that reached one first looked its names up one by one (about 1 run in 7)."""
    def check(walks):
        lean_mnt, full_mnt = fresh_mount(list_ahead=False), fresh_mount(lean=False, list_ahead=False)
        lean, full = counted(lean_mnt, *walks), counted(full_mnt, *walks)
        with kernel_let_go(lean, full):
            assert full["lookups"] == 0 and lean["lookups"] > LEAN_MISSES and lean["trips"] == 1, (walks, full)
            assert lean["calls"] - full["calls"] <= LEAN_MISSES + lean["readdirs"] - full["readdirs"], (walks, lean, full)
            assert (lean["batches"], lean["made"]) == (full["batches"], full["made"]), walks
            assert lean["scans"] == full["scans"] and full["given_again"] == 0, walks
            assert (lean["given_again"] > 0) == (len(walks) > 1), walks
    for walks in ([["ls", "-lR", "."]], [["find", "."], ["ls", "-lR", "."]]):
        unless_caches_dropped(lambda: check(walks))


def listed(mnt) -> tuple[str, dict[str, str]]:
    """Every name with its type and size (`find -printf`), and each file's sha256 (not
    the config's, which names its mount)."""
    names = run("find", str(mnt), "-printf", "%P %y %s\n")
    digests = {}
    for folder, _, files in os.walk(mnt):
        for name in set(files) - {"copick_config.json"}:
            with open(os.path.join(folder, name), "rb") as fh:
                digests[os.path.relpath(os.path.join(folder, name), mnt)] = hashlib.sha256(fh.read()).hexdigest()
    return "\n".join(sorted(names.splitlines())), digests


def test_names_sizes_and_bytes_are_those_of_listings_with_attributes(fresh_mount):
    lean_mnt, full_mnt = fresh_mount(), fresh_mount(lean=False)
    run("find", str(lean_mnt))                          # (lean listings kept by the kernel)
    lean, full = listed(lean_mnt), listed(full_mnt)
    assert counts(lean_mnt)["lean"] > 0
    assert lean == full


@pytest.mark.parametrize("kind", ["imgstore", "iid"])
def test_attributes_known_in_memory_are_kept(kind, tmp_path, mount, monkeypatch):
    """imgstore frames' and `.iid` entries' attributes are in memory: their trees list
    nothing lean (`Tree.lean_listings`), and `ls -lR` after `find` sends no LOOKUP."""
    source = {"imgstore": lambda: walk_samples.imgstore(tmp_path / "store", 30),
              "iid": lambda: walk_samples.iid(tmp_path / "cells.iid", 30)}[kind]()
    monkeypatch.setenv("SCOPEFS_LEAN_LISTINGS", "1")
    mnt = mount(source.path, *source.options)
    run("find", str(mnt))
    before = counts(mnt)
    assert len(run("ls", "-lR", str(mnt)).splitlines()) > 30
    after = counts(mnt)
    assert after["lookups"] == before["lookups"] and after["lean"] == before["lean"] == 0


@pytest.fixture
def fresh_fsdb_mount(tmp_path, mount, monkeypatch):
    """Mounts of an FSDB of 3 scans x 2 filesets x 10 files, each of a copy of its own
    (`cp -a`: the same times; a mount locks its database); `lean=False`: every listing
    entry with its attributes; `learn_ahead=False`: no folder learned ahead of the walker
    (SCOPEFS_LIST_AHEAD=0: how far the learner got when the walk arrives is scheduling).
    `fresh.copies`: the databases mounted."""
    source = walk_samples.fsdb(tmp_path / "fsdb", 3, 2, 10)

    def fresh(lean: bool = True, learn_ahead: bool = True):
        copy = tmp_path / f"db{len(fresh.copies)}"
        subprocess.run(["cp", "-a", str(source.path), str(copy)], check=True)
        fresh.copies.append(copy)
        with monkeypatch.context() as env:
            env.setenv("SCOPEFS_LEAN_LISTINGS", "1" if lean else "0")
            env.setenv("SCOPEFS_LIST_AHEAD", "1" if learn_ahead else "0")
            return mount(copy, *source.options)
    fresh.copies = []
    return fresh


def learned_when_idle(mnt) -> int:
    """The attributes the FSDB backend learned from disk, once it learns nothing ahead."""
    for _ in range(500):
        status = daemon_status(mnt)
        if not status.get("learning_ahead"):
            return status["work"].get("attributes_learned", 0)
        time.sleep(0.02)
    raise AssertionError("still learning ahead after 10 s")


def test_cold_find_of_an_fsdb_stats_no_file(fresh_fsdb_mount):
    """Names come from memory (files.json), files without attributes: only the 3 scans'
    and 6 filesets' attributes are learned (folders are listed with theirs)."""
    mnt = fresh_fsdb_mount()
    cost = counted(mnt, ["find", "."])
    assert cost["lookups"] == 0 and cost["lean"] == 3 + 3 * 2 + 3 * 2 * 20
    assert learned_when_idle(mnt) == 3 + 3 * 2


def test_stat_walks_of_an_fsdb_listed_lean_cost_the_worker_calls_of_full_listings(fresh_fsdb_mount):
    """`ls -lR`, `du -s`, `find -printf %s`, and `find` then `ls -lR`: the first file
    stat'ed learns its folder in one pass, so a walk that stats costs at most a worker
    call more a folder listed lean than with every entry's attributes (not one a LOOKUP),
    learns every attribute once, in passes a folder (not by a stat each), and prints the
    same. Nothing is learned ahead of the walk: which folders the learner's thread is
    done with when the walk gets there, and so which cost the walk a worker call (and a
    LOOKUP met while it holds the tree one more), is up to the scheduler (20 calls
    against 11 in a fresh-clone CI run)."""
    folders_listed_lean = 1 + 3 + 3 * 2

    def check(walk):
        lean_mnt, full_mnt = fresh_fsdb_mount(learn_ahead=False), fresh_fsdb_mount(lean=False, learn_ahead=False)
        lean, full = counted(lean_mnt, *walk), counted(full_mnt, *walk)
        with kernel_let_go(lean, full):
            assert lean["calls"] <= full["calls"] + folders_listed_lean, (walk, lean, full)
        assert learned_when_idle(lean_mnt) == learned_when_idle(full_mnt) == 2 * (3 + 3 * 2) + 3 * 2 * 20, walk
        printed = [subprocess.run(walk[-1], cwd=mnt, check=True, capture_output=True, text=True).stdout
                   for mnt in (lean_mnt, full_mnt)]
        assert printed[0] == printed[1], walk
    for walk in ([["ls", "-lR", "."]], [["du", "-s", "."]], [["find", ".", "-printf", "%s\\n"]],
                 [["find", "."], ["ls", "-lR", "."]]):
        unless_caches_dropped(lambda: check(walk))


def test_rm_r_mv_and_cp_a_in_an_fsdb_listed_lean_and_plantdb_reads_it(fresh_fsdb_mount, mount, tmp_path):
    """With the kernel holding lean listings (`find` before): `cp -a` out copies names and
    sizes, `mv` renames a file with its metadata, `rm -r` removes a fileset and a scan
    (each metadata view is listed before what it describes: unlinked first, it is there),
    a copy in registers; plantdb then reads what the mount wrote."""
    from test_fsdb import plantdb_read
    mnt = fresh_fsdb_mount()
    run("find", str(mnt))
    subprocess.run(["rm", "-r", str(mnt / "scan_000" / "fileset_0")], check=True)
    subprocess.run(["rm", "-r", str(mnt / "scan_002")], check=True)
    subprocess.run(["cp", "-a", str(mnt / "scan_001"), str(tmp_path / "copy")], check=True)
    copied, through = (sorted(run("find", str(top), "-type", "f", "-printf", "%P %s\n").splitlines())
                       for top in (tmp_path / "copy", mnt / "scan_001"))
    assert copied == through and len(copied) == 2 * 20 + 2
    fileset = mnt / "scan_001" / "fileset_1"
    subprocess.run(["mv", str(fileset / "img_000.png"), str(fileset / "moved.png")], check=True)
    subprocess.run(["cp", str(tmp_path / "copy" / "fileset_0" / "img_001.png"), str(fileset / "new.png")], check=True)
    (fileset / "new.png.metadata.json").write_text('{"new": true}')
    assert "scan_002" not in os.listdir(mnt) and "fileset_0" not in os.listdir(mnt / "scan_000")
    mount.cleanup()
    seen = plantdb_read(fresh_fsdb_mount.copies[0])
    assert sorted(seen) == ["scan_000", "scan_001"]
    assert sorted(seen["scan_000"]["filesets"]) == ["fileset_1"]
    files = seen["scan_001"]["filesets"]["fileset_1"]["files"]
    assert "moved" in files and "img_000" not in files and files["new"]["metadata"] == {"new": True}
    assert files["moved"]["metadata"] == {"angle": 0, "scan": 1}


def test_an_fsdb_listed_lean_stats_as_its_files_through_changes(fresh_fsdb_mount):
    """readdir then lstat of every entry of a fileset listed lean (the first LOOKUP sizes
    the folder, the others are answered from what it learned) gives each data file's type, size,
    mtime and nlink as the database's own file has them, also after an append, a
    truncate, a rename, a copy in, an unlink and an unlink of a file held open (which
    then stats as unlinked); metadata views are the format's (not compared here)."""
    mnt = fresh_fsdb_mount()
    fileset = "scan_001/fileset_0"
    through, backing = mnt / fileset, fresh_fsdb_mount.copies[-1] / fileset

    def shape(st: os.stat_result) -> tuple:
        return stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns, st.st_nlink

    def compare() -> None:
        listed = sorted(n for n in os.listdir(through) if not n.endswith(".metadata.json"))
        seen = {name: shape(os.lstat(through / name)) for name in listed}
        on_disk = {name: shape(os.lstat(backing / name)) for name in sorted(os.listdir(backing))
                   if not name.startswith(".")}
        assert seen == on_disk

    compare()
    assert counts(mnt)["lean"] >= 20                     # (listed without attributes, then looked up)
    with open(through / "img_003.png", "ab") as fh:
        fh.write(b"more")
    os.truncate(through / "img_004.png", 3)
    os.rename(through / "img_005.png", through / "moved.png")
    (through / "new.png").write_bytes(b"new")
    os.unlink(through / "img_006.png")
    held = os.open(through / "img_007.png", os.O_RDONLY)
    try:
        os.unlink(through / "img_007.png")
        compare()
    finally:
        os.close(held)
    compare()


def test_an_fsdb_file_unlinked_while_open_stays_usable(fresh_fsdb_mount):
    """A descriptor open on a file unlinked through the mount still stats (nlink 0) and
    reads, as in a plain directory (the node outlives its name until the kernel forgets
    it)."""
    mnt = fresh_fsdb_mount()
    path = mnt / "scan_001" / "fileset_0" / "img_007.png"
    data = path.read_bytes()
    held = os.open(path, os.O_RDONLY)
    try:
        os.unlink(path)
        assert os.fstat(held).st_nlink == 0
        assert os.pread(held, len(data) + 1, 0) == data
    finally:
        os.close(held)


def test_what_is_written_to_an_fsdb_file_unlinked_while_open_stays_unlinked(fresh_fsdb_mount):
    """Writes through descriptors open on files unlinked through the mount (a rewrite of
    its data, a truncating open of another) do not bring either file back at close, in
    the mount or in the database."""
    mnt = fresh_fsdb_mount()
    folder, on_disk = mnt / "scan_001" / "fileset_0", fresh_fsdb_mount.copies[-1] / "scan_001" / "fileset_0"
    held = [os.open(folder / "img_007.png", os.O_RDWR), os.open(folder / "img_008.png", os.O_WRONLY | os.O_TRUNC)]
    for name in ("img_007.png", "img_008.png"):
        os.unlink(folder / name)
    os.pwrite(held[0], b"XYZ", 0)
    os.write(held[1], b"new")
    for fd in held:
        os.close(fd)
    for name in ("img_007.png", "img_008.png"):
        assert not os.path.exists(folder / name) and not os.path.exists(on_disk / name)
    assert not [name for name in os.listdir(on_disk) if name.startswith(".")]      # (no temporary left)


def test_an_fsdb_fileset_lists_each_file_once_while_others_come_move_and_go(fresh_fsdb_mount):
    """Listings of a fileset (and lstat of what they list) while another thread makes,
    renames and removes other files in it: every file there throughout shows exactly
    once in each listing, with its size."""
    mnt = fresh_fsdb_mount()
    folder = mnt / "scan_001" / "fileset_0"
    stable = {name: os.lstat(folder / name).st_size for name in os.listdir(folder) if name.startswith("img_")}
    stop, churned, errors = threading.Event(), [0], []

    def churn():
        try:
            while not stop.is_set():
                i = churned[0]
                made, moved = folder / f"churn_{i % 40:02d}.png", folder / f"moved_{i % 40:02d}.png"
                made.write_bytes(b"c" * (i % 7))
                os.rename(made, moved)
                if i >= 20:
                    os.unlink(folder / f"moved_{(i - 20) % 40:02d}.png")
                churned[0] = i + 1
        except OSError as exc:
            errors.append(exc)
    thread = threading.Thread(target=churn)
    thread.start()
    bad, listings = {"skipped": 0, "repeated": 0, "wrong size": 0}, 0
    try:
        deadline = time.monotonic() + 30
        while (churned[0] < 60 or listings < 15) and not errors and time.monotonic() < deadline:
            seen = [name for name in os.listdir(folder) if name.startswith("img_")]
            bad["skipped"] += len(stable.keys() - set(seen))
            bad["repeated"] += len(seen) - len(set(seen))
            bad["wrong size"] += sum(os.lstat(folder / name).st_size != stable[name] for name in seen)
            listings += 1
    finally:
        stop.set()
        thread.join()
    assert not errors and churned[0] >= 60
    assert bad == {"skipped": 0, "repeated": 0, "wrong size": 0}


def test_a_cold_find_of_copick_lists_most_folders_without_a_worker_thread(fresh_mount, copick_source):
    """The folders a walk reaches next (the subfolders of the one it listed) are listed
    and merged ahead in a worker (`MergeAhead`): the walk's READDIRPLUS of each is
    answered from that listing, in the trio thread if it is ready by then (how many are
    is up to the scheduler: not counted here), else in a worker that waits for it. Every
    folder but the root is given a listing made ahead, and each is listed once."""
    folders = sum(1 for _ in os.walk(copick_source.path))         # (the overlay is empty)

    def check():
        cold = counted(fresh_mount(), ["find", "."])
        assert cold["scans"] == folders and cold["ahead"] == folders - 1, (cold, folders)
    unless_caches_dropped(check)


def test_a_cold_find_of_copick_takes_a_worker_thread_for_its_root_alone(mount, monkeypatch, tmp_path):
    """A listing made ahead plans its own subfolders (`MergeAhead`), so every folder below
    the root is being listed ahead by the time the walk asks for it, and a READDIRPLUS of
    one still under way waits for it in the trio thread (no worker thread waits on it):
    a cold `find` of a copick project takes the same worker calls for 2 runs as for 4
    (the root's listing; `find`'s statfs), none a folder. (The walk waited in a worker at
    each level of a tomogram's store: 15-19 calls for 3 runs.)"""
    calls = {}
    for runs in (2, 4):
        source = walk_samples.copick(tmp_path / f"copick{runs}", runs, 2)
        folders = sum(1 for _ in os.walk(source.path))

        def check(runs=runs, source=source, folders=folders):
            with monkeypatch.context() as env:
                env.setenv("SCOPEFS_LEARN_VIEW_SIZES", "0")
                env.setenv("SCOPEFS_LIST_AHEAD", "600")     # (seconds: each listing made ahead waited for, however loaded)
                env.setenv("XDG_CACHE_HOME", str(tmp_path / f"cache{runs}"))
                mnt = mount(source.path, *source.options)
            cold = counted(mnt, ["find", "."])
            assert cold["scans"] == folders and cold["ahead"] == folders - 1, (cold, folders)
            calls[runs] = cold["calls"]
        unless_caches_dropped(check)
    assert calls[2] == calls[4] <= 2, calls


def test_a_second_find_of_copick_takes_no_worker_thread(fresh_mount, copick_source):
    """The kernel asks each folder's attributes again after it read the folder's listing
    (it counts the folder's atime as changed): a second `find` sends a GETATTR for most
    folders, answered from the attributes the folder's listing or its parent's gave, in
    memory (the one worker call: the status file read between)."""
    folders = sum(1 for _ in os.walk(copick_source.path))         # (the overlay is empty)

    def check():
        mnt = fresh_mount()
        counted(mnt, ["find", "."])
        warm = counted(mnt, ["find", "."])
        assert warm["attrs"] >= folders // 2 and warm["calls"] <= 1, (warm, folders)
    unless_caches_dropped(check)


def test_a_folder_listed_ahead_shows_changes_made_through_the_mount_since(fresh_mount):
    """Right after its parent was listed (its listing being made ahead), a file of a run
    folder is made longer and another made through the mount: the run's listing shows
    both as they are now (a listing made ahead is not given after a change)."""
    mnt = fresh_mount()
    for attempt in range(5):
        run_folder = mnt / "ExperimentRuns" / f"TS_00{attempt % 3}" / "Picks"
        os.listdir(run_folder.parent)                       # (Picks listed ahead)
        time.sleep(0.2)
        picks = run_folder / "user0_0_ribosome.json"                    # (not listing Picks)
        size = picks.stat().st_size + 100 + attempt
        with open(picks, "ab") as out:
            out.write(b" " * (100 + attempt))
        (run_folder / f"new_{attempt}.txt").write_bytes(b"x" * 7)
        shown = dict(line.split(" ", 1)[::-1] for line in
                     run("find", str(run_folder), "-maxdepth", "1", "-type", "f", "-printf", "%s %f\n").splitlines())
        assert shown[f"new_{attempt}.txt"] == "7" and shown[picks.name] == str(size)


def test_a_folder_changed_behind_the_mount_shows_its_new_attributes(fresh_mount, copick_source):
    """A folder's attributes kept from a walk are not given once the overlay watch saw
    the folder change: a file made in the overlay's copy of a run's Picks folder by
    another program shows in the folder's mtime through the mount within two seconds."""
    overlay = next(Path(o.partition("=")[2]) for o in copick_source.options if o.startswith("overlay="))
    picks = overlay / "ExperimentRuns" / "TS_001" / "Picks"
    picks.mkdir(parents=True)
    (picks / "other_1_ribosome.json").write_text('{"points": []}')
    os.utime(picks, ns=(10**18, 10**18))
    mnt = fresh_mount()
    counted(mnt, ["find", "."], ["find", "."])               # (attributes learnt and asked)
    assert (mnt / "ExperimentRuns" / "TS_001" / "Picks").stat().st_mtime_ns == 10**18
    (picks / "other_2_ribosome.json").write_text('{"points": []}')
    end = time.monotonic() + 2.0
    while (mnt / "ExperimentRuns" / "TS_001" / "Picks").stat().st_mtime_ns != picks.stat().st_mtime_ns:
        assert time.monotonic() < end, "the folder's old attributes are still given"
        time.sleep(0.05)
