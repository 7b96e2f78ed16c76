"""Small files of a copick mount read cold, one after another (a loop of
`open().read()`, tar, rsync): each READ the page cache cannot answer costs the daemon a
worker thread, so once two in a folder missed it the rest of the folder's small files are
read with the next one (`overlay.walk.SmallSiblings`). Counted in worker calls, not seconds."""
from __future__ import annotations

import itertools
import json
import os
import stat
import threading
import time
from pathlib import Path

import pytest
from conftest import daemon_status, unless_caches_dropped
from scopefs.backends.copick import LEARN_SIZES_ENV
from scopefs.backends.kept_sizes import RACY_S

FILES = 20


def picks_folder(tmp_path: Path, monkeypatch, side: str = "static") -> tuple[Path, Path, list[Path]]:
    """A static root with one run and its Picks/ of FILES small picks files (old enough to
    be trusted: `kept_sizes.identity`) and an overlay (the files there instead, with
    `side` "overlay"), to be mounted with no views' sizes learned at mount (the learner
    would read the picks files into the page cache)."""
    monkeypatch.setenv(LEARN_SIZES_ENV, "0")
    static, overlay = tmp_path / "static", tmp_path / "overlay"
    (static / "ExperimentRuns" / "TS_000").mkdir(parents=True)
    picks = (static if side == "static" else overlay) / "ExperimentRuns" / "TS_000" / "Picks"
    picks.mkdir(parents=True)
    overlay.mkdir(exist_ok=True)
    paths = []
    for i in range(FILES):
        path = picks / f"user{i}_{i}_ribosome.json"
        path.write_text(json.dumps({"pickable_object_name": "ribosome", "user_id": f"user{i}", "session_id": str(i),
                                    "points": [{"location": {"x": float(k), "y": 2.0, "z": 3.0}} for k in range(i)]}))
        paths.append(path)
    time.sleep(RACY_S)
    return static, overlay, paths


def drop_pages(paths: list[Path]) -> None:
    os.sync()
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_two_cold(mount, base: Path, monkeypatch, side: str = "static"):
    """(mount, the picks files, their paths in it, their bytes): `picks_folder` made in
    base (a try's own) and mounted, the files' pages dropped, the first two read cold (the
    second reads the rest ahead)."""
    static, overlay, paths = picks_folder(base, monkeypatch, side)
    originals = [path.read_bytes() for path in paths]
    mnt = mount(static, "-t", "copick", "-o", f"overlay={overlay}")
    drop_pages(paths)
    shown = [mnt / path.relative_to(path.parents[3]) for path in paths]
    for path in shown[:2]:
        path.read_bytes()
    assert daemon_status(mnt)["small_files_read_ahead"] == FILES - 2
    return mnt, paths, shown, originals


def test_small_files_read_one_after_another_cost_two_worker_calls_a_folder(tmp_path, mount, monkeypatch):
    static, overlay, paths = picks_folder(tmp_path, monkeypatch)

    def check() -> None:
        mnt = mount(static, "-t", "copick", "-o", f"overlay={overlay}")
        shown = [mnt / path.relative_to(static) for path in paths]
        for path in shown:
            path.stat()                 # (names looked up first: only the reads are counted)
        drop_pages(paths)
        before = daemon_status(mnt)
        read = [path.read_bytes() for path in shown]
        after = daemon_status(mnt)
        assert read == [path.read_bytes() for path in paths]
        # the first two each in a worker (a single file read is not taken for a walk), the
        # second's worker reads the other 18 too: their opens are answered with those bytes
        assert after["worker_calls"] - before["worker_calls"] == 2
        assert after["small_files_given"] - before["small_files_given"] == FILES - 2
    unless_caches_dropped(check)


def test_a_small_file_changed_after_it_was_read_ahead_shows_its_new_bytes(tmp_path, mount, monkeypatch):
    tries = itertools.count()

    def check() -> None:
        mnt, paths, shown, originals = read_two_cold(mount, tmp_path / f"try{next(tries)}", monkeypatch)
        changed = originals[5].replace(b"user5", b"USER5")
        paths[5].write_bytes(changed)   # behind the mount, the same size
        assert shown[5].read_bytes() == changed
        assert shown[6].read_bytes() == originals[6]
        assert daemon_status(mnt)["small_files_given"] == 1
    unless_caches_dropped(check)


def test_a_folder_read_file_by_file_is_listed_once_and_each_file_read_once(tmp_path, monkeypatch):
    from scopefs.backends import kept_sizes
    from scopefs.backends.overlay import LocalRoot
    from scopefs.backends.overlay.walk import SmallSiblings
    monkeypatch.setattr(kept_sizes, "RACY_S", 0)        # (files just written have an identity)
    files = 300
    for i in range(files):
        (tmp_path / f"{i:04d}.json").write_text(f'{{"n": {i}}}')
    root = LocalRoot(str(tmp_path))
    listed, read = [], []
    listdir, read_small = root.listdir, root.read_small
    monkeypatch.setattr(root, "listdir", lambda rel, touch=True: listed.append(rel) or listdir(rel, touch))
    monkeypatch.setattr(root, "read_small", lambda folder, names, limit: read.extend(names) or
                        read_small(folder, names, limit))
    siblings = SmallSiblings(lambda: 0)
    cold = []
    for name in sorted(os.listdir(tmp_path)):
        held = siblings.take(root, name, lambda: root.stat(name))
        if held is None:                # a cold READ, in a worker
            cold.append(name)
            data = (tmp_path / name).read_bytes()
            siblings.read_whole(root, name, len(data))
        else:
            data = held[0]
        assert data == (tmp_path / name).read_bytes()
    root.close()
    assert listed == [""]               # (not once a batch: nothing per file scans the folder)
    # each file read once, cold or ahead (the folder's order is not the walker's: a file
    # not read ahead yet is read cold, and the next 64 are read with it)
    assert len(read) + len(cold) == len(set(read) | set(cold)) == files
    assert len(cold) <= 2 + -(-(files - 2) // 64) and siblings.given == files - len(cold)


def test_a_read_ahead_that_fails_fails_no_read(tmp_path, monkeypatch):
    from scopefs.backends.overlay import LocalRoot
    from scopefs.backends.overlay.walk import SmallSiblings
    for i in range(3):
        (tmp_path / f"{i}.json").write_text("{}")
    root = LocalRoot(str(tmp_path))

    def failing(folder, names, limit):
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(root, "read_small", failing)
    siblings = SmallSiblings(lambda: 0)
    for name in ("0.json", "1.json"):
        siblings.read_whole(root, name, 2)          # (the second reads ahead, and fails)
    root.close()
    assert siblings.read_ahead == 0 and siblings.take(root, "2.json", lambda: root.stat("2.json")) is None


def test_picks_views_written_together_are_opened_without_a_worker_call_each(tmp_path, mount, monkeypatch):
    """A spacing folder's text views of the run's picks are written together (`picks.texts`)
    when the first is made or sized: their OPENs are then answered on the loop (a `tar`
    of a project opened every view in a worker). EM views are written one by one."""
    static, overlay, paths = picks_folder(tmp_path, monkeypatch)
    (static / "ExperimentRuns" / "TS_000" / "VoxelSpacing10.000").mkdir()

    def check() -> None:
        mnt = mount(static, "-t", "copick", "-o", f"overlay={overlay}")
        spacing = mnt / "ExperimentRuns" / "TS_000" / "VoxelSpacing10.000"
        views = sorted(spacing.iterdir())
        sizes = {view.name: view.stat().st_size for view in views}     # (sized: written together)
        before = daemon_status(mnt)
        read = {view.name: view.read_bytes() for view in views}
        after = daemon_status(mnt)
        assert {name: len(data) for name, data in read.items()} == sizes
        assert all(read[f"user{i}_{i}_ribosome.csv"].count(b"\n") == i + 1 for i in range(FILES))
        em = [name for name in read if name.endswith(".em")]
        assert len(read) == 5 * FILES and len(em) == FILES
        assert after["worker_calls"] - before["worker_calls"] == len(em)
    unless_caches_dropped(check)


@pytest.mark.parametrize("side", ["static", "overlay"])
def test_a_file_opened_with_bytes_read_ahead_is_the_file_while_open(tmp_path, mount, monkeypatch, side):
    """An fd opened with held bytes behaves as any other open of the file: a change behind
    the mount is seen by its fstat and by its later reads, and a file removed through the
    mount still answers fstat (the handle is the node's, as a backing file's is)."""
    tries = itertools.count()

    def check() -> None:
        mnt, paths, shown, originals = read_two_cold(mount, tmp_path / f"try{next(tries)}", monkeypatch, side)
        appended, removed = os.open(shown[5], os.O_RDONLY), os.open(shown[6], os.O_RDONLY)
        try:
            assert os.pread(appended, 1 << 16, 0) == originals[5]
            assert os.pread(removed, 1 << 16, 0) == originals[6]
            assert daemon_status(mnt)["small_files_given"] == 2
            with open(shown[7], "r+b") as through:          # an edit through the mount (a copy-up)
                through.write(b"{ ")
            assert shown[7].read_bytes() == b"{ " + originals[7][2:]
            assert shown[8].read_bytes() == originals[8]        # (held, but the tree changed since)
            assert daemon_status(mnt)["small_files_given"] == 2
            with open(paths[5], "ab") as behind:
                behind.write(b"\n")
            os.unlink(shown[6])
            time.sleep(RACY_S + 0.5)    # (the kernel's attributes of the file time out)
            assert os.fstat(appended).st_size == len(originals[5]) + 1
            assert os.pread(appended, 1 << 16, 0) == originals[5] + b"\n"
            assert os.fstat(removed).st_size == len(originals[6])
            assert os.pread(removed, 1 << 16, 0) == originals[6]
        finally:
            os.close(appended)
            os.close(removed)
    unless_caches_dropped(check)


def test_a_file_changed_while_its_batch_was_read_is_not_held(monkeypatch):
    """On coarse timestamps (1 s, 2 s ticks) a write after the batch's stats may keep the
    ctime they saw: a ctime is trusted only RACY_S before the time taken before the stats,
    however long the batch took to read."""
    from scopefs.backends.nodes import Attr
    from scopefs.backends.overlay.walk import SmallSiblings
    clock = [10 ** 18]
    monkeypatch.setattr(time, "time_ns", lambda: clock[0])

    class SlowRoot:
        local_storage = True

        def listdir(self, rel, touch=True):
            return ["0.json", "1.json", "2.json", "3.json"]

        def read_small(self, folder, names, limit):
            stamp = clock[0]
            clock[0] += int(3 * RACY_S * 1e9)           # (the disk took its time)
            return {name: (Attr(stat.S_IFREG | 0o644, 2, stamp, ctime_ns=stamp, backing=(1, i)), b"{}")
                    for i, name in enumerate(names)}
    siblings, root = SmallSiblings(lambda: 0), SlowRoot()
    for name in ("0.json", "1.json"):
        siblings.read_whole(root, name, 2)
    assert siblings.read_ahead == 0 and siblings.held_bytes == 0


def test_files_read_ahead_keep_their_access_times(tmp_path):
    from scopefs.backends.overlay import LocalRoot
    path = tmp_path / "a.json"
    path.write_text("{}")
    info = path.stat()
    os.utime(path, ns=(info.st_mtime_ns - 10 ** 11, info.st_mtime_ns))     # (relatime moves it at a read)
    root = LocalRoot(str(tmp_path))
    try:
        assert root.read_small("", ["a.json"], 1 << 10)["a.json"][1] == b"{}"
    finally:
        root.close()
    assert path.stat().st_atime_ns == info.st_mtime_ns - 10 ** 11


def folders_on_a_clock(tmp_path: Path, monkeypatch, folders: tuple[str, ...]):
    """(SmallSiblings, a LocalRoot of tmp_path, its clock): each folder with four small
    files (trusted at once), `time.monotonic` the clock's [0]."""
    from scopefs.backends import kept_sizes
    from scopefs.backends.overlay import LocalRoot
    from scopefs.backends.overlay import walk
    monkeypatch.setattr(kept_sizes, "RACY_S", 0)
    for folder in folders:
        (tmp_path / folder).mkdir()
        for i in range(4):
            (tmp_path / folder / f"{i}.json").write_text("{}")
    clock = [1000.0]
    monkeypatch.setattr(walk.time, "monotonic", lambda: clock[0])
    return walk.SmallSiblings(lambda: 0), LocalRoot(str(tmp_path)), clock


def test_what_is_held_goes_after_its_window_at_the_next_batch(tmp_path, monkeypatch):
    siblings, root, clock = folders_on_a_clock(tmp_path, monkeypatch, ("first", "second"))
    try:
        for name in ("first/0.json", "first/1.json"):
            siblings.read_whole(root, name, 2)
        assert siblings.held_bytes == 2 * 2
        clock[0] += siblings.window
        for name in ("second/0.json", "second/1.json"):
            siblings.read_whole(root, name, 2)
    finally:
        root.close()
    assert siblings.read_ahead == 4 and siblings.held_bytes == 2 * 2     # (only the second folder's)


def test_two_readers_in_a_folder_read_different_files_ahead(tmp_path, monkeypatch):
    """A second worker's cold read while the first lists the folder: the listing is
    shared, each batch starts where the last stopped (files given already, here pushed
    out, are not read again)."""
    from scopefs.backends import kept_sizes
    from scopefs.backends.overlay import LocalRoot
    from scopefs.backends.overlay.walk import SmallSiblings
    monkeypatch.setattr(kept_sizes, "RACY_S", 0)
    for i in range(200):
        (tmp_path / f"{i:03d}.json").write_text("{}")
    root = LocalRoot(str(tmp_path))
    siblings, read, listdir, read_small = SmallSiblings(lambda: 0, held=1), [], root.listdir, root.read_small
    other = ["101.json"]

    def listing(rel, touch=True):           # the other worker's read comes meanwhile
        if other:
            siblings.read_whole(root, other.pop(), 2)
        return listdir(rel, touch)
    monkeypatch.setattr(root, "listdir", listing)
    monkeypatch.setattr(root, "read_small", lambda folder, names, limit: read.extend(names) or
                        read_small(folder, names, limit))
    try:
        siblings.read_whole(root, "000.json", 2)
        siblings.read_whole(root, "100.json", 2)
    finally:
        root.close()
    assert len(read) == len(set(read)) == 2 * siblings.files


def test_a_file_changed_long_before_it_is_opened_is_not_given(tmp_path, monkeypatch):
    """Changed after it was read ahead, long enough ago that its ctime is trusted: only
    its identity (here its mtime) tells the bytes held are not the file's."""
    from scopefs.backends import kept_sizes
    from scopefs.backends.overlay import LocalRoot
    from scopefs.backends.overlay.walk import SmallSiblings
    monkeypatch.setattr(kept_sizes, "RACY_S", 0)
    for i in range(4):
        (tmp_path / f"{i}.json").write_text("{}")
    root = LocalRoot(str(tmp_path))
    siblings = SmallSiblings(lambda: 0)
    try:
        for name in ("0.json", "1.json"):
            siblings.read_whole(root, name, 2)
        assert siblings.read_ahead == 2
        (tmp_path / "2.json").write_text("[]")          # the same size
        os.utime(tmp_path / "2.json", ns=(0, 10 ** 9))
        assert siblings.take(root, "2.json", lambda: root.stat("2.json")) is None
        assert siblings.take(root, "3.json", lambda: root.stat("3.json"))[0] == b"{}"
    finally:
        root.close()
    assert siblings.given == 1


def test_bytes_read_ahead_are_not_given_past_their_window_when_batches_end_out_of_order(tmp_path, monkeypatch):
    """A batch that ends after a later one: its files are queued behind younger ones, so
    the expiry at an open stops before them; the open checks their time again."""
    siblings, root, clock = folders_on_a_clock(tmp_path, monkeypatch, ("slow", "fast"))
    read_small = root.read_small

    def slow_first(folder, names, limit):
        if folder == "slow":        # another folder's batch starts and ends meanwhile
            clock[0] += 1
            for name in ("fast/0.json", "fast/1.json"):
                siblings.read_whole(root, name, 2)
        return read_small(folder, names, limit)
    monkeypatch.setattr(root, "read_small", slow_first)
    try:
        for name in ("slow/0.json", "slow/1.json"):
            siblings.read_whole(root, name, 2)
        assert siblings.read_ahead == 4
        clock[0] = 1000.0 + siblings.window + 0.5       # slow's past its window, fast's not
        assert siblings.take(root, "slow/2.json", lambda: root.stat("slow/2.json")) is None
        assert siblings.take(root, "fast/2.json", lambda: root.stat("fast/2.json"))[0] == b"{}"
        clock[0] += 1                                   # all past it: dropped at the next open
        assert siblings.take(root, "none.json", lambda: None) is None
        assert siblings.held_bytes == 0
    finally:
        root.close()
    assert siblings.given == 1


def test_held_bytes_answer_until_their_end_is_served_then_the_file_does(tmp_path):
    """A handle given held bytes lets them go once a READ served their end (the kernel
    keeps the pages): a later READ is the open file's."""
    from scopefs.backends.kept_sizes import identity
    from scopefs.backends.overlay import LocalRoot
    from scopefs.backends.overlay.tree import _HeldBytes
    path = tmp_path / "a.json"
    path.write_bytes(b"[1, 2]")
    root = LocalRoot(str(tmp_path))
    handle = root.open_read("a.json")
    try:
        held = _HeldBytes(handle, root, b"[held]", identity(root.handle_attr(handle)))
        assert held.read(0, 3) == b"[he"
        assert held.read(3, 1 << 16) == b"ld]"
        assert held.read(0, 1 << 16) == b"[1, 2]"
    finally:
        handle.release()
        root.close()


def test_a_fifo_put_behind_the_mount_in_a_files_place_does_not_stop_the_daemon(tmp_path, mount, monkeypatch):
    """The kernel's OPEN of a file it knows as regular, now a FIFO in the static root: the
    open on the daemon's loop (`open_read_cached`) must not wait for a writer (nor for a
    lease held elsewhere to break): it is left to a worker, and the daemon answers on."""
    static, overlay, paths = picks_folder(tmp_path, monkeypatch)
    mnt = mount(static, "-t", "copick", "-o", f"overlay={overlay}")
    shown = [mnt / path.relative_to(static) for path in paths]
    shown[0].stat()
    paths[0].unlink()
    os.mkfifo(paths[0])
    opened: list[int] = []
    opener = threading.Thread(target=lambda: opened.append(os.open(shown[0], os.O_RDONLY)), daemon=True)
    opener.start()
    try:
        answered = threading.Thread(target=lambda: shown[1].read_bytes(), daemon=True)
        time.sleep(0.2)
        answered.start()
        answered.join(5)
        assert not answered.is_alive()
    finally:
        deadline = time.monotonic() + 5
        while opener.is_alive() and time.monotonic() < deadline:
            try:            # a writer lets the reader's open (the worker's, or the loop's) go
                os.close(os.open(paths[0], os.O_WRONLY | os.O_NONBLOCK))
            except OSError:         # (ENXIO: no reader yet)
                pass
            opener.join(0.1)
        for fd in opened:
            os.close(fd)
