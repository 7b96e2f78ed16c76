"""Listings of small folders prepared ahead of a walk and answered in pyfuse3's session loop
(daemon/prepared.py, the pyfuse3 patch session-readdir-prepared): fewer Python readdirs,
lookup counts exact, never a stale listing."""
from __future__ import annotations

import errno
import itertools
import json
import math
import os
import shutil
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pyfuse3
import pytest
import trio
import trio.testing

import walk_samples
from conftest import KernelLetNamesGo, daemon_status, unless_caches_dropped, wait_for
from iid_samples import overview_sized
from python_calls import PythonCalls, folders_of
from scopefs.backends import iid as iid_backend
from scopefs.backends.options import Options
from scopefs.daemon import fs
from scopefs.daemon.fs import Operations
from scopefs.daemon.prepared import AHEAD, PREPARED_ENV, RETRY_AFTER, TRIES

ENTRIES = 300


@pytest.fixture
def walk_iid(tmp_path) -> Path:
    return walk_samples.iid(tmp_path / "walk.iid", ENTRIES).path


def python_readdirs(status: dict) -> int:
    """READDIRPLUS requests that reached `Operations.readdir`."""
    return (status["readdir_requests"] - status["readdir_ends_in_session"]
            - status["readdirs_answered_prepared"])


def test_a_cold_walk_lists_most_folders_without_python(walk_iid, mount):
    """A cold walk of a 300-entry .iid lists about 600 folders, each once. The 300
    by-address/ folders, in memory from the start, take a Python readdir only where a run
    of the `AHEAD` prepared after it starts (here the walker waits for each run: how far
    it gets ahead of a run is scheduling). The entry folders are prepared only once the
    tree made their entry.json (32 ahead of the walk, in a worker call: how many are ready
    when a run passes them is scheduling too, none in a fresh-clone CI run): each is listed
    once, prepared or by Python, never both."""
    mnt = mount(walk_iid, "-o", "ro")
    assert daemon_status(mnt)["listings_prepared_in_session"] is True, "pyfuse3 lacks our patch: ./dev setup"
    walked = {}

    def cost(walk) -> tuple[int, int]:
        """Readdirs `walk()` had answered prepared and by `Operations.readdir`."""
        before = daemon_status(mnt)
        walk()
        after = daemon_status(mnt)
        return (after["readdirs_answered_prepared"] - before["readdirs_answered_prepared"],
                python_readdirs(after) - python_readdirs(before))

    def prepared_once(first: int, count: int) -> None:
        """Waits until `count` listings were prepared since `first`."""
        assert wait_for(lambda: daemon_status(mnt)["listings_prepared"] >= first + count, every=0.005), \
            f"{count} listings not prepared"

    def walk_addresses():
        names = walked[str(mnt / "by-address")]
        for i, name in enumerate(names):
            first = daemon_status(mnt)["listings_prepared"]
            walked[str(mnt / "by-address" / name)] = sorted(os.listdir(mnt / "by-address" / name))
            if i % (AHEAD + 1) == 0:                # (the folder that starts a run)
                prepared_once(first, min(AHEAD, len(names) - i - 1))

    def walk_entries():                         # (the rest: the root's listing kept by the kernel)
        for path, dirs, files in os.walk(mnt):
            if path == str(mnt):
                dirs.remove("by-address")
            else:
                walked[path] = sorted(dirs + files)

    def check():
        walked.clear()
        walked[str(mnt)] = os.listdir(mnt)
        walked[str(mnt / "by-address")] = os.listdir(mnt / "by-address")
        answered, python = cost(walk_addresses)
        assert (answered, python) == (ENTRIES - math.ceil(ENTRIES / (AHEAD + 1)), math.ceil(ENTRIES / (AHEAD + 1)))
        listed = len(walked)
        answered, python = cost(walk_entries)
        assert len(walked) - listed > ENTRIES
        assert answered + python == len(walked) - listed, (answered, python)     # (how many prepared: scheduling)
    unless_caches_dropped(check)
    entry = next(name for name in walked[str(mnt)] if name.startswith("0"))
    assert walked[str(mnt / entry)] == ["entry.json", "mask.png"]
    address = sorted(walked[str(mnt / "by-address")])[1]
    assert len(walked[str(mnt / "by-address" / address)]) == 1


async def test_lookups_counted_for_a_reply_never_sent_are_given_back(walk_iid):
    """The daemon counts the entries of each listing it prepares as the kernel's (it takes
    one lookup on each once the reply is sent). Here no kernel ever takes one (no
    session): once the kernel forgets all it was given by readdir, the daemon's lookup
    table holds nothing, the counts of every reply prepared given back."""
    tree = iid_backend.open_tree(str(walk_iid), Options(), read_only=True)
    try:
        ops = Operations(tree)
        assert ops.kernel_opens_dirs and ops.prepared.enabled
        given = []

        def reply(token, name, entry, next_id):
            given.append(entry.st_ino)
            return True

        async def readdir(ino):
            await ops.readdir(0, 0, SimpleNamespace(inode=ino))

        pyfuse3_reply, pyfuse3.readdir_reply = pyfuse3.readdir_reply, reply
        try:
            await readdir(tree.by_address.ino)
            addresses = list(given)
            await trio.testing.wait_all_tasks_blocked()
            await readdir(addresses[0])             # the walk's first: those after it prepared
            await trio.testing.wait_all_tasks_blocked(0.3)
        finally:
            pyfuse3.readdir_reply = pyfuse3_reply
        assert ops.prepared.made == AHEAD
        assert ops.known_inodes > len(given)        # (the links of folders prepared ahead)
        ops.forget([(ino, given.count(ino)) for ino in set(given)])
        assert ops.prepared.taken_back == AHEAD
        assert ops.known_inodes == 0 and not len(ops.prepared)
    finally:
        tree.close()


async def page_of(ops: Operations, ino: int) -> None:
    """A READDIRPLUS of folder `ino` from 0 with room for a page (`page_reply`)."""
    await ops.readdir(0, 0, SimpleNamespace(inode=ino, room=20))


def page_reply(given: list):
    """pyfuse3.readdir_reply with room for a token's `room` entries (a page): the inodes
    given in `given`."""
    def reply(token, name, entry, next_id):
        token.room -= 1
        if token.room < 0:
            return False
        given.append(entry.st_ino)
        return True
    return reply


def paged_operations(tree, monkeypatch) -> tuple[Operations, list]:
    """A new `Operations` of `tree` whose READDIRPLUS replies have room for a page
    (`page_reply`); the list of the inodes they give. overview.png's size is learned
    first: its thread takes the tree's lock, so a listing from memory meanwhile would be
    left to a worker."""
    overview_sized()
    ops, given = Operations(tree), []
    monkeypatch.setattr(pyfuse3, "readdir_reply", page_reply(given))
    return ops, given


async def walk_begun(tree, monkeypatch, *, last_first: bool = False) -> tuple[Operations, list]:
    """A new `Operations` of `tree` that listed by-address/ and the first folder in it,
    each a page, with no task switch in between (as the session loop reads on while
    requests wait), then let the tasks they started run (`last_first`: the last started
    first, as trio may run a batch of them); what it gave."""
    (ops, given), started = paged_operations(tree, monkeypatch), []
    with monkeypatch.context() as held:
        held.setattr(trio.lowlevel, "spawn_system_task", lambda fn, *args: started.append((fn, args)))
        await page_of(ops, tree.by_address.ino)
        await page_of(ops, given[0])
    for fn, args in reversed(started) if last_first else started:
        trio.lowlevel.spawn_system_task(fn, *args)
        await trio.testing.wait_all_tasks_blocked(0.3)
    return ops, given


async def test_the_run_after_a_subfolder_is_made_whatever_order_trio_runs_tasks_in(walk_iid, monkeypatch):
    """A walker lists by-address/, then its first folder, each answered from memory with
    no task switch in between. The run of listings prepared after that folder needs where
    it sits in by-address/, noted once by-address/'s reply is made: in the order the
    replies were made, whatever order trio runs its runnable tasks in (before, one task a
    reply: run the last first, as trio does in half of its batches, the folder's found
    nothing)."""
    tree = iid_backend.open_tree(str(walk_iid), Options(), read_only=True)
    try:
        ops, _ = await walk_begun(tree, monkeypatch, last_first=True)
        assert ops.prepared.made == AHEAD
    finally:
        tree.close()


async def test_a_reply_whose_lookups_could_not_all_be_counted_is_never_sent(walk_iid, monkeypatch):
    """Preparing a reply counts a lookup of each entry (`Tree.adopt` the first): if that
    fails partway, the counts taken are given back and pyfuse3 never holds the reply
    (before, it was handed over first: sent, the kernel would hold lookups the daemon
    never counted, and its FORGETs would let nodes go that it still holds). Here the
    count of the second entry (entry.json) of an entry folder prepared fails."""
    tree = iid_backend.open_tree(str(walk_iid), Options(), read_only=True)
    try:
        ops, given = paged_operations(tree, monkeypatch)
        await page_of(ops, pyfuse3.ROOT_INODE)
        await trio.testing.wait_all_tasks_blocked()
        entries = [ino for ino in given if isinstance(tree.get(ino), iid_backend.EntryFolder)]
        for ino in entries:                     # (replies an earlier test left in pyfuse3's tables)
            pyfuse3.readdir_prepared_drop(ino)
        adopt, failed, started = tree.adopt, tree.get(entries[2]).json_file, []

        def failing(node):
            if node is failed:
                raise RuntimeError("adopt failed")
            adopt(node)

        monkeypatch.setattr(tree, "adopt", failing)
        with monkeypatch.context() as held:     # (its task started once both are listed)
            held.setattr(trio.lowlevel, "spawn_system_task", lambda fn: started.append(fn))
            await page_of(ops, entries[0])
            await page_of(ops, entries[1])      # (the next ones' entry.json made: their folders prepared)
        trio.lowlevel.spawn_system_task(*started)
        await trio.testing.wait_all_tasks_blocked(0.3)
        assert ops.prepared.made == 1                           # (entries[1]'s; entries[2]'s failed)
        assert not pyfuse3.readdir_prepared_drop(entries[2])
        ops.forget([(ino, given.count(ino)) for ino in set(given)])
        assert ops.prepared.taken_back == 1 and ops.known_inodes == 0
    finally:
        tree.close()


async def test_listings_the_tree_holds_up_wait_once_while_others_are_queued(walk_iid, monkeypatch):
    """The listings answered are worked through by one task, each read again from memory
    (tried again while a change holds the tree). A walker lists by-address/ and 3 of its
    folders while another thread holds the tree: each waits once (RETRY_AFTER) while
    others are queued, only the last the doubling waits in full (before, every one did:
    a long hold, as a writable tree's commit, held the queue up for each in turn)."""
    tree = iid_backend.open_tree(str(walk_iid), Options(), read_only=True)
    try:
        (ops, given), started, waits = paged_operations(tree, monkeypatch), [], []
        with monkeypatch.context() as held:
            held.setattr(trio.lowlevel, "spawn_system_task", lambda fn: started.append(fn))
            await page_of(ops, tree.by_address.ino)
            for ino in given[:3]:
                await page_of(ops, ino)

        async def sleep(seconds):
            waits.append(seconds)
            await trio.lowlevel.checkpoint()

        monkeypatch.setattr(trio, "sleep", sleep)
        holding, done = threading.Event(), threading.Event()

        def change():
            with tree.lock:
                holding.set()
                done.wait(10)

        thread = threading.Thread(target=change)
        thread.start()
        assert holding.wait(10)
        try:
            trio.lowlevel.spawn_system_task(*started)
            await trio.testing.wait_all_tasks_blocked()
        finally:
            done.set()
            thread.join()
        assert waits == [RETRY_AFTER] * 3 + [RETRY_AFTER * 2 ** i for i in range(TRIES - 1)]
    finally:
        tree.close()


async def test_listings_queued_past_the_bound_are_dropped_and_counted(walk_iid, monkeypatch):
    """At most REPLIES_QUEUED answered listings wait for the preparing task, the oldest
    dropped (their subfolders never noted): the status counts them."""
    tree = iid_backend.open_tree(str(walk_iid), Options(), read_only=True)
    try:
        ops, given = paged_operations(tree, monkeypatch)
        monkeypatch.setattr("scopefs.daemon.prepared.REPLIES_QUEUED", 2)
        with monkeypatch.context() as held:
            held.setattr(trio.lowlevel, "spawn_system_task", lambda fn: None)
            await page_of(ops, tree.by_address.ino)
            for ino in given[:3]:
                await page_of(ops, ino)
        assert ops.status()["prepare_queue_dropped"] == 2
    finally:
        tree.close()


async def test_a_preparation_that_fails_at_every_listing_is_logged_once_then_counted(walk_iid, monkeypatch, caplog):
    """A failure of the preparing task that comes back at every listing (here noting a
    folder's subfolders) logs its traceback once; the later ones are counted in the status
    (`prepare_failed`), every reply still sent (before, a traceback at every readdir)."""
    tree = iid_backend.open_tree(str(walk_iid), Options(), read_only=True)
    try:
        ops, given = paged_operations(tree, monkeypatch)

        def broken(ino, rows):
            raise RuntimeError("no subfolder noted")

        monkeypatch.setattr(ops.prepared, "_note_subfolders", broken)
        await page_of(ops, tree.by_address.ino)
        sent = [len(given)]
        for ino in given[:3]:
            await trio.testing.wait_all_tasks_blocked(0.3)
            await page_of(ops, ino)
            sent.append(len(given))
        await trio.testing.wait_all_tasks_blocked(0.3)
        assert sent[0] == 20 and all(a < b for a, b in zip(sent, sent[1:])), sent
        tracebacks = [record for record in caplog.records if record.exc_info]
        assert len(tracebacks) == 1 and "no subfolder noted" in caplog.text, caplog.text
        assert ops.status()["prepare_failed"] == 4
    finally:
        tree.close()


async def test_a_different_failure_of_the_preparation_is_logged_again(walk_iid, monkeypatch, caplog):
    """Only the same failure, repeated, is quiet: a new kind (another type or message) after
    it logs its own traceback (before, every failure after the mount's first was only
    counted)."""
    tree = iid_backend.open_tree(str(walk_iid), Options(), read_only=True)
    try:
        ops, given = paged_operations(tree, monkeypatch)
        failures = iter([RuntimeError("no subfolder noted"), RuntimeError("no subfolder noted"),
                         OSError(errno.EIO, "source unreadable")])

        def broken(ino, rows):
            raise next(failures)

        monkeypatch.setattr(ops.prepared, "_note_subfolders", broken)
        await page_of(ops, tree.by_address.ino)
        for ino in given[:2]:
            await trio.testing.wait_all_tasks_blocked(0.3)
            await page_of(ops, ino)
        await trio.testing.wait_all_tasks_blocked(0.3)
        logged = [str(record.exc_info[1]) for record in caplog.records if record.exc_info]
        assert logged == ["no subfolder noted", "[Errno 5] source unreadable"], caplog.text
        assert ops.status()["prepare_failed"] == 3
    finally:
        tree.close()


async def test_a_listing_answered_while_preparing_cannot_start_is_not_failed(walk_iid, monkeypatch):
    """Once a readdir's reply holds its entries (each counted as the kernel's lookup), the
    preparation it queues cannot fail it: if its task cannot be started, the reply is
    still sent (before, it was answered EIO, the entries counted for a reply never sent),
    and the task is started by the next listing, which finds the folder noted."""
    tree = iid_backend.open_tree(str(walk_iid), Options(), read_only=True)
    try:
        ops, given = paged_operations(tree, monkeypatch)

        def cannot_start(fn, *args):
            raise RuntimeError("the system nursery is closed")

        with monkeypatch.context() as failing:
            failing.setattr(trio.lowlevel, "spawn_system_task", cannot_start)
            await page_of(ops, tree.by_address.ino)
        assert len(given) == 20 and ops.known_inodes == 20
        await page_of(ops, given[0])
        await trio.testing.wait_all_tasks_blocked(0.3)
        assert ops.prepared.made == AHEAD
    finally:
        tree.close()


async def test_lookups_counted_for_a_listing_that_then_fails_are_given_back(walk_iid, monkeypatch):
    """A readdir answers what memory holds, then needs a worker for the rest, which fails
    (the tree held by a change past the request's timeout): the request is answered EIO,
    the entries given before it never sent, so their lookups are given back (before,
    counted for good: nodes the kernel never saw, held until unmount)."""
    tree = iid_backend.open_tree(str(walk_iid), Options(), read_only=True)
    try:
        ops, given = paged_operations(tree, monkeypatch)
        monkeypatch.setattr(fs, "NOWAIT_BATCH", 10)
        snapshot = type(tree.by_address.opendir())
        from_memory = snapshot.entries_nowait
        monkeypatch.setattr(snapshot, "entries_nowait",
                            lambda self, offset, count, anew=True: from_memory(self, offset, count, anew) if offset < 10 else None)

        async def times_out(*args, **kwargs):
            raise OSError(errno.EIO, "the source did not answer")

        monkeypatch.setattr(ops, "_run", times_out)
        with pytest.raises(pyfuse3.FUSEError):
            await page_of(ops, tree.by_address.ino)
        assert len(given) == 10 and ops.known_inodes == 0
    finally:
        tree.close()


async def test_replies_prepared_for_an_earlier_mount_in_the_process_are_stale(walk_iid, monkeypatch):
    """pyfuse3 keeps prepared replies in module tables: a new `Operations` starts a new
    generation, so none prepared for another is ever answered (the one preparing them
    takes them all back at its next run)."""
    tree = iid_backend.open_tree(str(walk_iid), Options(), read_only=True)
    try:
        first, given = await walk_begun(tree, monkeypatch)
        assert first.prepared.made == AHEAD and first.prepared.taken_back == 0
        Operations(tree)
        await page_of(first, given[1])
        await trio.testing.wait_all_tasks_blocked(0.3)
        assert first.prepared.taken_back == AHEAD
    finally:
        tree.close()


def walk_of(mnt: Path) -> dict:
    """Each folder's names and sizes, as `ls -lR` sees them."""
    return {str(Path(path).relative_to(mnt)): sorted((name, os.lstat(os.path.join(path, name)).st_size)
                                                     for name in dirs + files)
            for path, dirs, files in os.walk(mnt)}


def test_listings_prepared_before_a_change_are_never_given(tmp_path, walk_iid, mount, monkeypatch):
    """Side by side, the same changes through two writable mounts of one .iid, with and
    without prepared listings, made after a walk began (the next folders' listings
    prepared: the entry folders after the second, made by its worker call, and the
    by-address/ folders after the first): a new scratch file, a mask removed, an entry's
    groups and one entry removed (`rm -r`), a new entry. Every folder then lists the same
    on both. (A drop_caches meanwhile makes the kernel forget the folders, whose replies
    are then taken back: tried again.)"""
    tries = itertools.count()

    def check():
        walks, attempt = [], next(tries)
        for prepared in ("1", "0"):
            monkeypatch.setenv(PREPARED_ENV, prepared)
            source = tmp_path / f"copy{prepared}-{attempt}.iid"
            shutil.copy(walk_iid, source)
            mnt = mount(source)
            entries = sorted(name for name in os.listdir(mnt) if name.startswith("0"))
            for name in entries[:2]:
                os.listdir(mnt / name)
            for name in sorted(os.listdir(mnt / "by-address"))[:2]:
                os.listdir(mnt / "by-address" / name)
            status, deadline = daemon_status(mnt), time.monotonic() + 10
            if prepared == "1":                     # (by one task, after the replies: how many is scheduling)
                while status["prepare_queue"]:
                    assert time.monotonic() < deadline, status
                    time.sleep(0.01)
                    status = daemon_status(mnt)
                if status["inodes_forgotten"]:
                    raise KernelLetNamesGo(status)
                assert status["prepared_listings_held"] == status["listings_prepared"], status
            else:
                assert status["prepared_listings_held"] == status["readdirs_answered_prepared"] == 0, status
            (mnt / entries[2] / "notes.txt").write_text("scratch")
            os.unlink(mnt / entries[3] / "mask.png")
            doc = json.loads((mnt / entries[4] / "entry.json").read_text())
            (mnt / entries[4] / "entry.json").write_text(json.dumps({**doc, "groups": ["g0"], "address": "moved"}))
            shutil.rmtree(mnt / entries[5])
            new = mnt / "new-entry"
            new.mkdir()
            shutil.copy(mnt / entries[6] / "mask.png", new / "mask.png")
            (new / "entry.json").write_text(json.dumps({"bbox": [0, 0], "address": "new"}))
            before = daemon_status(mnt)["readdirs_answered_prepared"]
            walks.append(walk_of(mnt))
            answered = daemon_status(mnt)["readdirs_answered_prepared"] - before
            assert answered > 0 if prepared == "1" else answered == 0, (answered, daemon_status(mnt))
        assert walks[0] == walks[1]
        assert ("notes.txt", 7) in walks[0][entries[2]] and "mask.png" not in dict(walks[0][entries[3]])
        assert entries[5] not in walks[0] and "new" in dict(walks[0]["by-address"])
    unless_caches_dropped(check)


async def python_calls_per_prepared_folder(path: Path, monkeypatch) -> float:
    """Python function calls of scopefs (the tree's and the daemon's, not trio's) per
    folder prepared by the run that a walker's listing of by-address/ and its first
    folder starts (`walk_begun`, its tasks traced)."""
    tree = iid_backend.open_tree(str(path), Options(), read_only=True)
    try:
        counted = PythonCalls(within=folders_of(fs, iid_backend))
        spawn = trio.lowlevel.spawn_system_task

        def traced(fn, *args):
            async def run():
                with counted:
                    await fn(*args)
            spawn(run)

        monkeypatch.setattr(trio.lowlevel, "spawn_system_task", traced)
        ops, _ = await walk_begun(tree, monkeypatch)
        assert ops.prepared.made == AHEAD
        return counted.calls / ops.prepared.made
    finally:
        tree.close()


async def test_a_prepared_folder_costs_a_few_python_calls_whatever_the_source_size(tmp_path, walk_iid, monkeypatch):
    """Preparing the listing of a by-address/ folder (one link) costs the same few Python
    calls in a 300- and a 3,000-entry .iid (before, 29.8 and 51: the folder the walker
    listed was listed again whole to note its subfolders, and each prepared folder took
    three passes over its entries)."""
    small = await python_calls_per_prepared_folder(walk_iid, monkeypatch)
    big = await python_calls_per_prepared_folder(walk_samples.iid(tmp_path / "big.iid", 3000).path, monkeypatch)
    assert abs(small - big) < 0.1       # (the few EntryAttributes made: as many as the sources' times)
    assert small < 20


def test_every_listing_from_memory_can_be_read_again_as_its_reply_had_it():
    """The preparing task reads a reply's rows again (`entries_nowait(..., anew=False)`):
    every backend's `entries_nowait` (of a folder, or of what its opendir gives) takes
    `anew` (one that does not would fail at every reply: prepared listings quietly off)."""
    import importlib
    import inspect
    import pkgutil

    import scopefs.backends as backends
    modules = [importlib.import_module(found.name)
               for found in pkgutil.walk_packages(backends.__path__, backends.__name__ + ".")]
    readers = {cls for module in modules for cls in vars(module).values()
               if isinstance(cls, type) and "entries_nowait" in vars(cls)}
    assert {"Directory", "ListingSnapshot"} <= {cls.__name__ for cls in readers}

    def refuses_anew(cls) -> bool:
        try:
            inspect.signature(cls.entries_nowait).bind(None, 0, 1, anew=False)
        except TypeError:
            return True
        return False
    assert [cls.__qualname__ for cls in readers if refuses_anew(cls)] == []


def test_subfolders_are_read_from_the_snapshot_a_reply_came_from_even_an_empty_one():
    """The snapshot a listing was answered from is the one its subfolders are read from
    (its offsets), whatever its truth value (an empty sequence is one), never a new one."""
    from scopefs.backends.nodes import Directory
    from scopefs.daemon.prepared import PreparedListings

    class EmptySnapshot(list):
        def entries_nowait(self, offset, count, anew=True):
            return []

    class Folder(Directory):
        def opendir(self):
            raise AssertionError("listed anew")
    prepared = PreparedListings(False, lambda ino: Folder(), None, None, None, False)
    answered = EmptySnapshot()
    assert prepared._reader(5, answered) is answered
