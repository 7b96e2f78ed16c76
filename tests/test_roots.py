"""The roots' work done ahead of need, mostly without the kernel: listings made ahead for
walkers (`ScanAhead`: what is used, what is never made, what is too old, and what a walk
through a mount sees), remote reads in blocks fetched ahead (`RemoteReadHandle`), and what
the overlay keeps of its nodes and directory attributes."""
from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import threading
import time
from types import SimpleNamespace

import pytest
from conftest import Mounter, made_ahead, patient, unless_caches_dropped, wait_for

from scopefs.backends import overlay
from scopefs.backends.kernel import cached_pages
from scopefs.backends.nodes import Attr
from scopefs.backends.overlay import FETCH_BLOCK, FsspecRoot, LocalRoot, ScanAhead, SiblingWarmer
from scopefs.backends.overlay import tree as overlay_tree
from scopefs.backends.overlay import walk as overlay_walk


class CountingRoot:
    """A root of folders d0..dN with two files each, counting listings; `gate` holds them."""

    def __init__(self):
        self.listed: list[str] = []
        self.gate = threading.Event()
        self.gate.set()

    def listdir(self, rel, touch=True):
        self.gate.wait(10)
        self.listed.append(rel)
        return ["a", "b"]

    def stat_many(self, rel, names):
        return [Attr(stat.S_IFREG | 0o644, len(rel) + i) for i, _ in enumerate(names)]


def test_a_planned_listing_is_used_once_with_its_attributes():
    root = CountingRoot()
    ahead = ScanAhead(root, threads=2, window=4, horizon=5.0)
    ahead.plan(["d0", "d1"])
    assert wait_for(lambda: len(root.listed) == 2)
    listing = ahead.take("d1")
    assert listing == {"a": Attr(stat.S_IFREG | 0o644, 2), "b": Attr(stat.S_IFREG | 0o644, 3)}
    assert ahead.take("d1") is None                  # used once: the next listing is fresh
    assert (ahead.used, ahead.unused) == (1, 0)


def test_only_a_window_is_listed_and_more_only_as_the_walker_takes_them():
    root = CountingRoot()
    ahead = ScanAhead(root, threads=2, window=3, horizon=5.0)
    ahead.plan([f"d{i}" for i in range(100)])
    assert wait_for(lambda: len(root.listed) == 3)
    time.sleep(0.2)
    assert sorted(root.listed) == ["d0", "d1", "d2"]     # an `ls` of the parent costs 3 listings
    assert ahead.take("d0") is not None
    assert wait_for(lambda: len(root.listed) == 4) and root.listed[-1] == "d3"


def test_a_directory_the_walker_reached_first_is_not_listed_later():
    root = CountingRoot()
    root.gate.clear()                                # d0 and d1 hang: d2..d5 wait their turn
    ahead = ScanAhead(root, threads=2, window=2, horizon=5.0)
    ahead.plan(["d0", "d1", "d2", "d3"])
    assert ahead.take("d2") is None                  # the caller lists d2 itself
    root.gate.set()
    assert ahead.take("d0") is not None and ahead.take("d1") is not None
    assert wait_for(lambda: "d3" in root.listed)
    time.sleep(0.2)
    assert "d2" not in root.listed


def test_a_listing_older_than_the_horizon_is_not_used():
    root = CountingRoot()
    ahead = ScanAhead(root, threads=1, window=2, horizon=0.2)
    ahead.plan(["d0"])
    assert wait_for(lambda: root.listed == ["d0"])
    time.sleep(0.3)
    assert ahead.take("d0") is None
    assert (ahead.used, ahead.unused) == (0, 1)


def test_a_listing_under_way_is_waited_for_by_its_future_then_taken_without_waiting():
    """The trio thread waits for a listing being made ahead without a worker thread of its
    own (`under_way`: the future and the seconds `take` would wait), then takes it with
    `take_nowait`; none is under way once it is made, or where none was planned."""
    root = CountingRoot()
    root.gate.clear()
    ahead = ScanAhead(root, threads=1, window=2, horizon=5.0, wait=2.0)
    ahead.plan(["d0"])
    future, seconds = ahead.under_way("d0")
    assert not future.done() and 0 < seconds <= 2.0
    assert ahead.under_way("d1") is None and ahead.take_nowait("d0") is None
    root.gate.set()
    future.result(timeout=5)
    assert ahead.under_way("d0") is None
    assert ahead.take_nowait("d0") == {"a": Attr(stat.S_IFREG | 0o644, 2), "b": Attr(stat.S_IFREG | 0o644, 3)}
    assert (ahead.used, ahead.unused) == (1, 0)


def test_folders_planned_by_listings_made_ahead_are_dropped_once_the_walker_is_gone(monkeypatch):
    """The subfolders a listing made ahead names (`plan(deeper=True)`) wait one horizon at
    most: once the walker has gone elsewhere (an `ls` that never descends), later activity
    lists none of them, however many were planned. (They stayed planned, up to 100k,
    listed half a window at a time on any later activity.)"""
    clock = [0.0]
    monkeypatch.setattr(overlay_walk, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    root = CountingRoot()
    ahead = ScanAhead(root, threads=1, window=2, horizon=10.0)
    ahead.plan([f"d{i}" for i in range(50)], deeper=True)     # (d0 listed: half the window)
    assert wait_for(lambda: root.listed == ["d0"])
    clock[0] = 20.0                                     # (the walker went elsewhere)
    for rel in ("w0", "w1"):                            # (its own plans, listed in turn by the one thread)
        ahead.plan([rel])
        assert ahead.take(rel) is not None
    assert root.listed == ["d0", "w0", "w1"]
    assert (ahead.used, ahead.unused) == (2, 1)


def test_the_walkers_own_plan_outlives_the_deeper_plan_of_the_same_folders(monkeypatch):
    """A folder planned deeper (by a listing made ahead) and then by the walker's own
    listing, waiting for room in the window, is still listed for the walker after the
    deeper plan expires: its expiry drops only its own entries. (One set of what the plans
    held, cleared by the expiry, made the walker's own entries skipped: listing ahead
    stopped for the rest of any folder of more subfolders than the window.)"""
    clock = [0.0]
    monkeypatch.setattr(overlay_walk, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    root = CountingRoot()
    root.gate.clear()                                   # (the one thread held: the window stays full)
    ahead = ScanAhead(root, threads=1, window=2, horizon=10.0)
    ahead.plan(["x0", "x1", "x2", "x3"], deeper=True)   # (x0 started: half the window)
    ahead.plan(["x1", "x2", "x3"])                      # (the walker listed their folder)
    clock[0] = 20.0                                     # (the deeper plan expires)
    root.gate.set()
    for rel in ("x0", "x1", "x2", "x3"):               # (each take makes room for the next)
        ahead.take(rel)
        assert wait_for(lambda: rel in root.listed), (rel, root.listed)
    assert sorted(root.listed) == ["x0", "x1", "x2", "x3"]


def test_the_walkers_own_next_folders_are_listed_before_those_planned_deeper():
    """Listings planned by the walker's own listing are made before those planned by
    listings made ahead (`plan(deeper=True)`) that wait for a thread: the walker opens its
    own next. (They waited behind up to half a window of deeper ones.)"""
    root = CountingRoot()
    root.gate.clear()                                   # (the one thread held)
    ahead = ScanAhead(root, threads=1, window=4, horizon=600.0)
    ahead.plan(["d0", "d1", "d2"], deeper=True)         # (d0, d1 started: half the window)
    ahead.plan(["w0"])
    root.gate.set()
    assert ahead.take("w0") is not None and ahead.take("d1") is not None
    assert root.listed.index("w0") < root.listed.index("d1"), root.listed


def test_a_folder_planned_deeper_then_by_the_walker_is_listed_before_the_rest_planned_deeper():
    """A folder whose listing waits for a thread as deeper work (`plan(deeper=True)`), then
    named by the walker's own listing, goes before the other deeper work: the walker opens
    it next. (It kept its place behind every deeper listing queued before it.)"""
    root = CountingRoot()
    root.gate.clear()                                   # (the one thread held)
    ahead = ScanAhead(root, threads=1, window=10, horizon=600.0)
    ahead.plan(["w0"])
    ahead.plan(["d0", "d1", "d2"], deeper=True)         # (all started: less than half the window)
    ahead.plan(["d2"])                                  # (the walker listed their folder)
    ahead.plan(["end"], deeper=True)                    # (queued last: after d2's first copy)
    root.gate.set()
    assert wait_for(lambda: "end" in root.listed), root.listed
    assert root.listed == ["w0", "d2", "d0", "d1", "end"], root.listed     # (d2 once)


def test_a_listing_the_walker_waits_for_goes_before_the_rest_planned_deeper():
    """The walker waiting for a listing queued as deeper work (`under_way`, then `take`)
    has it made before the other deeper work."""
    root = CountingRoot()
    root.gate.clear()                                   # (the one thread held)
    ahead = ScanAhead(root, threads=1, window=10, horizon=600.0)
    ahead.plan(["w0"])
    ahead.plan(["d0", "d1", "d2"], deeper=True)
    assert ahead.under_way("d2") is not None
    ahead.plan(["end"], deeper=True)                    # (queued last: after d2's first copy)
    root.gate.set()
    assert wait_for(lambda: "end" in root.listed), root.listed
    assert root.listed == ["w0", "d2", "d0", "d1", "end"], root.listed     # (d2 once)


def test_a_listing_the_walker_takes_goes_before_the_rest_planned_deeper():
    """The walker taking (and so waiting for) a listing queued as deeper work (`take`) has
    it made before the other deeper work, once."""
    root = CountingRoot()
    root.gate.clear()                                   # (the one thread held)
    ahead = ScanAhead(root, threads=1, window=10, horizon=600.0)
    ahead.plan(["w0"])
    ahead.plan(["d0", "d1", "d2"], deeper=True)
    taken = []
    walker = threading.Thread(target=lambda: taken.append(ahead.take("d2")))
    walker.start()
    assert wait_for(lambda: "d2" not in ahead._ready)   # (taken: the walker waits for it)
    ahead.plan(["end"], deeper=True)                    # (queued last: after d2's first copy)
    root.gate.set()
    walker.join(10)
    assert wait_for(lambda: "end" in root.listed), root.listed
    assert root.listed == ["w0", "d2", "d0", "d1", "end"], root.listed     # (d2 once)
    assert taken and taken[0] is not None


def test_a_listing_begun_before_a_change_is_not_waited_for(monkeypatch):
    """A listing under way that began before a change will not be given (`_stale`): the
    walker is told at once that none is under way, and `take` gives None without waiting
    for it; a purge frees its place in the window once it is made. (Both waited up to
    `wait` for a listing then thrown away, and it held its place for a horizon.)"""
    edits = [0]

    class Marked(ScanAhead):
        def _mark(self):
            return edits[0]

        def _stale(self, started, mark):
            return mark != edits[0] or super()._stale(started, mark)

    root = CountingRoot()
    root.gate.clear()                                   # (the listing stays under way)
    ahead = Marked(root, threads=1, window=2, horizon=600.0, wait=600.0)
    ahead.plan(["d0", "d1"])
    assert ahead.under_way("d0") is not None
    edits[0] += 1                                       # (a change)
    assert ahead.under_way("d0") is None
    done = threading.Event()
    threading.Thread(target=lambda: (ahead.take("d0"), done.set()), daemon=True).start()
    try:
        assert done.wait(10), "take waited for a stale listing"
    finally:
        root.gate.set()
    assert wait_for(lambda: sorted(root.listed) == ["d0", "d1"])
    ahead.plan(["d2"])                                  # (d1, made and stale, purged: d2 finds room)
    assert wait_for(lambda: "d2" in root.listed), root.listed
    assert ahead.unused == 2


def test_a_failed_listing_is_made_again_by_the_caller():
    class Failing(CountingRoot):
        def listdir(self, rel, touch=True):
            raise OSError(5, "device gone")
    ahead = ScanAhead(Failing(), threads=1, window=2, horizon=5.0)
    ahead.plan(["d0"])
    assert ahead.take("d0") is None


def test_folders_below_a_folder_listed_ahead_are_listed_ahead_too(tmp_path):
    """The folders of a listing made ahead of a walker (`MergeAhead`) are listed ahead in
    turn, within the window: once the walker has listed the root, a depth-first walk of a
    deep tree (a zarr store's chunk folders, four levels below a run) finds every folder's
    listing made, whatever the tree's size, and each folder is listed once. (Only the
    subfolders of the folders the walker itself listed were: it waited at each level.)"""
    own, listings = {}, {}
    for branches in (2, 8):
        static, upper = tmp_path / f"static{branches}", tmp_path / f"upper{branches}"
        for b in range(branches):
            for level in ("", "/0", "/0/0", "/0/0/1"):
                (static / f"run{b}{level}").mkdir(parents=True, exist_ok=True)
                (static / f"run{b}{level}" / "chunk").write_bytes(b"x" * b)
        upper.mkdir()
        root = LocalRoot(str(static))
        listed = []

        def counted(rel, touch=True, _listdir=root.listdir):
            listed.append(rel)
            return _listdir(rel, touch=touch)
        root.listdir = counted
        tree = overlay.OverlayTree(root, LocalRoot(str(upper)))
        try:
            patient(tree)
            tree.scan_ahead.window = 256                # (room for the whole tree's listings, their number aside)
            stack = [node for _, _, node, _ in tree.root.listing(wait=True) if node.kind == stat.S_IFDIR]
            own[branches] = 0
            while stack:
                folder = stack.pop()
                made_ahead(tree, folder)
                listing = folder.listing(wait=False)
                if listing is None:
                    own[branches] += 1
                    listing = folder.listing(wait=True)
                stack += [node for _, _, node, _ in listing if node.kind == stat.S_IFDIR]
            listings[branches] = sorted(listed)
            assert len(listings[branches]) == len(set(listings[branches])) == 4 * branches + 1, listings
        finally:
            tree.close()
    assert own == {2: 0, 8: 0}, own


def test_a_folder_listed_ahead_before_a_change_is_listed_again_when_planned_again(tmp_path):
    """A listing made ahead that began before a change is not given to the walker
    (`OverlayTree.listed_ahead`); a plan that names it again (the walker lists its parent
    again) lists it ahead again (`MergeAhead._stale`), and the walker takes that one. (The
    plan skipped it, fresh by time alone: the walker listed it itself in a worker.)"""
    static, upper = tmp_path / "static", tmp_path / "upper"
    (static / "run" / "sub").mkdir(parents=True)
    upper.mkdir()
    tree = patient(overlay.OverlayTree(LocalRoot(str(static)), LocalRoot(str(upper))))
    try:
        tree.root.listing(wait=True)                    # (the walker lists the root: run planned)
        run = tree.root.lookup("run")
        made_ahead(tree, run)
        tree.edited()                                   # (a change, as a write into the overlay)
        tree.root.listing(wait=True)                    # (run planned again)
        made_ahead(tree, run)
        assert run.listing(wait=False) is not None
        # (made for nothing: the listings of run and run/sub begun before the change)
        assert (tree.scan_ahead.used, tree.scan_ahead.unused) == (1, 2)
    finally:
        tree.close()


def test_a_walk_of_the_mount_sees_every_static_file_and_the_overlay_changes(mount: Mounter, tmp_path):
    static, overlay = tmp_path / "static", tmp_path / "overlay"
    for d in range(30):
        folder = static / f"d{d:02d}"
        folder.mkdir(parents=True)
        for i in range(40):
            (folder / f"f{i}").write_bytes(b"x" * (d + i))
    (static / "big").mkdir()
    for i in range(3000):                            # more than one kernel readdir buffer
        (static / "big" / f"entry-{i:04d}").write_bytes(b"y" * (i % 7))
    overlay.mkdir()
    mnt = mount(str(static), "-t", "copick", "-o", f"overlay={overlay}")
    os.listdir(mnt)                                  # lists d00..d29 ahead
    os.unlink(mnt / "d03" / "f5")                    # a whiteout in the overlay
    (mnt / "d04" / "f6").write_bytes(b"new")         # copied up, then changed
    (mnt / "d05" / "g").write_bytes(b"added")
    out = subprocess.run(["find", str(mnt), "-type", "f", "-printf", "%P %s\n"], check=True,
                         capture_output=True, text=True).stdout.split("\n")
    seen = dict(line.split(" ") for line in out if line)
    assert seen.pop("copick_config.json")           # the mount's own config
    expected = {f"d{d:02d}/f{i}": str(d + i) for d in range(30) for i in range(40)}
    del expected["d03/f5"]
    expected["d04/f6"] = "3"
    expected["d05/g"] = "5"
    expected.update({f"big/entry-{i:04d}": str(i % 7) for i in range(3000)})
    assert seen == expected
    status = (mnt / ".scopefs").read_text()
    assert '"listings_scanned_ahead"' in status


def page_cached(path) -> int | None:
    fd = os.open(path, os.O_RDONLY)
    try:
        return cached_pages(fd)
    finally:
        os.close(fd)


def test_a_read_through_the_mount_drops_only_the_source_pages_it_brought_in(mount: Mounter, tmp_path):
    """(A drop_caches by another program meanwhile empties the page cache: tried again.)"""
    def check():
        mount.cleanup()                                 # (an earlier attempt's mount of static/ ended)
        static, overlay = tmp_path / "static", tmp_path / "overlay"
        static.mkdir(exist_ok=True)
        overlay.mkdir(exist_ok=True)
        cold, warm = static / "cold.bin", static / "warm.bin"
        body = os.urandom(8 << 20)
        for path in (cold, warm):
            path.write_bytes(body)
        os.sync()
        fd = os.open(cold, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
        if page_cached(cold) != 0:
            pytest.skip("this kernel cannot tell what a file has in the page cache (cachestat)")
        assert warm.read_bytes() == body                 # another program is using this one
        pages = len(body) // os.sysconf("SC_PAGE_SIZE")
        assert page_cached(warm) == pages
        mnt = mount(str(static), "-t", "copick", "-o", f"overlay={overlay}")
        assert (mnt / "cold.bin").read_bytes() == body
        assert (mnt / "warm.bin").read_bytes() == body
        assert page_cached(cold) <= pages // 10          # cached once, by the mount, not twice
        assert page_cached(warm) == pages                # left alone
        assert (mnt / "cold.bin").read_bytes() == body   # again, from the mount's own cache
    unless_caches_dropped(check)


@contextlib.contextmanager
def remote_object(name: str, size: int):
    """(root, open handle, bytes) of an object of `size` random bytes in fsspec's memory store."""
    data = os.urandom(size)
    root = FsspecRoot(f"memory://{name}")
    root.fs.pipe(f"/{name}/obj", data)
    handle = root.open_read("obj")
    try:
        yield root, handle, data
    finally:
        handle.release()


def test_remote_reads_in_any_order_give_the_object_bytes():
    with remote_object("order", 2 * FETCH_BLOCK + 12345) as (_, handle, data):
        got = b"".join(handle.read(offset, 1 << 20) for offset in range(0, len(data), 1 << 20))
        assert got == data
        for offset, size in [(FETCH_BLOCK - 10, 20), (len(data) - 5, 100), (0, len(data) + 1), (len(data), 10)]:
            assert handle.read(offset, size) == data[offset:offset + size]


def test_a_sequential_reader_finds_the_next_block_fetched_ahead():
    with remote_object("ahead", 3 * FETCH_BLOCK) as (_, handle, data):
        assert handle.cached_read(0, 1 << 20) is None                  # nothing fetched yet
        assert handle.read(0, 1 << 20) == data[:1 << 20]
        assert handle.cached_read(1 << 20, 1 << 20) == data[1 << 20:2 << 20]    # same block
        assert wait_for(lambda: handle.cached_read(FETCH_BLOCK, 10) is not None)
        assert handle.cached_read(FETCH_BLOCK, 10) == data[FETCH_BLOCK:FETCH_BLOCK + 10]
        assert len(handle._blocks) <= 2                                 # bounded per handle


def test_a_failed_fetch_ahead_is_fetched_again_when_needed():
    with remote_object("retry", 2 * FETCH_BLOCK) as (root, handle, data):
        real, failures = root.fs._cat_file, []

        async def flaky(path, start, end):
            if start >= FETCH_BLOCK and not failures:
                failures.append(start)
                raise OSError(5, "connection reset")
            return await real(path, start=start, end=end)
        root.fs._cat_file = flaky
        assert handle.read(0, 1 << 20) == data[:1 << 20]
        assert handle.read(1 << 20, FETCH_BLOCK - (1 << 20)) == data[1 << 20:FETCH_BLOCK]    # reads on: ahead
        assert wait_for(lambda: failures)
        assert handle.read(FETCH_BLOCK, FETCH_BLOCK) == data[FETCH_BLOCK:]


def test_a_small_object_is_fetched_whole_at_open():
    with remote_object("small", 1000) as (_, handle, data):
        assert wait_for(lambda: handle._blocks[0].done())                        # no read asked yet
        assert handle.cached_read(0, 4096) == data and handle.cached_read(1000, 10) == b""


def node_at(tree, rel):
    """The node a kernel's lookups one name at a time would find (None if missing)."""
    node = tree.root
    for name in filter(None, rel.split("/")):
        node = node.lookup(name)
        if node is None:
            return None
    return node


def test_nodes_the_kernel_forgot_are_kept_a_while_then_dropped(tmp_path):
    (tmp_path / "static" / "d").mkdir(parents=True)
    for name in "abc":
        (tmp_path / "static" / "d" / name).write_text(name * 3)
    (tmp_path / "upper").mkdir()
    tree = overlay.OverlayTree(LocalRoot(str(tmp_path / "static")), LocalRoot(str(tmp_path / "upper")))
    tree.idle_nodes = 2
    a, b, c = (node_at(tree, f"d/{name}") for name in "abc")
    for node in (a, b):
        tree.forget(node.ino)
    assert node_at(tree, "d/a") is a and tree.status()["nodes_forgotten_kept"] == 2
    tree.forget(c.ino)                               # the oldest forgotten goes
    assert tree.get(a.ino) is None and tree.get(b.ino) is b
    again = node_at(tree, "d/a")
    assert again is not a and again.attr().size == 3
    tree.adopt(b)                                    # the kernel knows b again: it stays
    assert tree.status()["nodes_forgotten_kept"] == 1
    tree.forget(again.ino)
    tree.forget(b.ino)
    tree.forget(a.ino)
    tree.adopt(again)                                # a lookup that found it before the forget
    assert tree.get(again.ino) is again and node_at(tree, "d/a") is again


@pytest.mark.drops_kernel_caches
def test_nodes_the_kernel_forgot_wait_idle_and_come_back_on_the_next_walk(mount: Mounter, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("making the kernel forget inodes (drop_caches) needs root")
    static, overlay = tmp_path / "static", tmp_path / "overlay"
    for d in range(20):
        (static / f"d{d}").mkdir(parents=True)
        for i in range(100):
            (static / f"d{d}" / f"f{i}").write_text(str(i))
    overlay.mkdir()
    mnt = mount(str(static), "-t", "copick", "-o", f"overlay={overlay}")

    def walk():
        return sorted((p, len(fs)) for p, _, fs in os.walk(mnt))

    first = walk()
    assert json.loads((mnt / ".scopefs").read_text())["nodes"] > 2000
    with open("/proc/sys/vm/drop_caches", "w") as fh:
        fh.write("2\n")
    assert wait_for(lambda: json.loads((mnt / ".scopefs").read_text())["nodes_forgotten_kept"] > 2000)
    assert walk() == first
    assert json.loads((mnt / ".scopefs").read_text())["nodes_forgotten_kept"] < 100
    assert (mnt / "d7" / "f42").read_text() == "42"


def test_a_reader_jumping_about_gets_no_block_fetched_ahead():
    with remote_object("jumps", 4 * FETCH_BLOCK) as (root, handle, data):
        fetched = []
        real = root.fs._cat_file

        async def counting(path, start, end):
            fetched.append(start // FETCH_BLOCK)
            return await real(path, start=start, end=end)
        root.fs._cat_file = counting
        for offset in (3 * FETCH_BLOCK + 5, FETCH_BLOCK + 7, 2 * FETCH_BLOCK + 100):
            assert handle.read(offset, 1000) == data[offset:offset + 1000]
        time.sleep(0.2)
        assert sorted(fetched) == [1, 2, 3]


def test_a_directory_knows_its_attributes_after_its_entries_change(tmp_path):
    (tmp_path / "static" / "run").mkdir(parents=True)
    (tmp_path / "upper").mkdir()
    tree = overlay.OverlayTree(LocalRoot(str(tmp_path / "static")), LocalRoot(str(tmp_path / "upper")))
    tree.attrs_kept_for = 3600      # (unwatched: kept 1 s, which a loaded machine can take between two steps)
    if tree.watch is not None:      # (its thread, seeing these changes, would count an edit between two steps)
        tree.watch.close()
        tree.watch = None
    run = node_at(tree, "run")
    assert run.cached_attr() is None                 # nothing learnt yet: the daemon stats
    run.create("a.json", 0o644)
    assert run.cached_attr() == run.attr()           # the overlay's copy, with the new mtime
    assert run.cached_attr().mtime_ns == (tmp_path / "upper" / "run").stat().st_mtime_ns
    sub = run.mkdir("sub", 0o755)
    assert run.cached_attr().nlink == 3
    run.rename("a.json", sub, "b.json")
    assert sub.cached_attr() == sub.attr() and run.cached_attr() == run.attr()
    run.set_attr(0o700)
    assert run.cached_attr() is None                 # its own mode changed: stat again


def test_a_folder_copied_up_onto_a_removed_folders_inode_number_counts_its_links(tmp_path):
    """A folder's inode number is reused once it is removed (ext4 gives it to the next
    mkdir): what was learnt of the removed folder's links must not answer for a static
    folder copied up onto that number (seen as nlink 2 where a static subfolder shows)."""
    for sub in ("run/d", "run/e"):
        (tmp_path / "static" / sub).mkdir(parents=True)
    (tmp_path / "upper").mkdir()
    tree = overlay.OverlayTree(LocalRoot(str(tmp_path / "static")), LocalRoot(str(tmp_path / "upper")))
    scratch = tree.root.mkdir("scratch", 0o755)       # the overlay's own: its count is its own
    assert scratch.attr().nlink == 2
    removed = tree.upper.stat("scratch").backing
    tree.root.rmdir("scratch")
    plain = tree.upper.stat
    tree.upper.stat = lambda rel: (info._replace(backing=removed) if rel == "run" and (info := plain(rel))
                                   else plain(rel))  # the copy-up below gets scratch's number
    run = node_at(tree, "run")
    run.rmdir("e")                                   # copies run up for e's whiteout
    assert tree.upper.stat("run").backing == removed
    assert run.attr().nlink == 3 and node_at(tree, "").lookup_attr("run")[1].nlink == 3


class StatCountingRoot(LocalRoot):
    """A local root that records which directories were stat'ed in full."""

    def __init__(self, path):
        super().__init__(path)
        self.stat_many_calls: list[tuple[str, int]] = []

    def stat_many(self, rel, names):
        self.stat_many_calls.append((rel, len(names)))
        return super().stat_many(rel, names)


def test_a_directory_is_warmed_at_the_second_lookup_that_misses_the_caches(tmp_path):
    for d, count in (("run", 3), ("big", 5)):
        (tmp_path / d).mkdir()
        for i in range(count):
            (tmp_path / d / f"{i}.json").write_text("{}")
    root = StatCountingRoot(str(tmp_path))
    warmer = SiblingWarmer(root, limit=4, window=60.0)
    warmer.missed("run")
    time.sleep(0.1)
    assert root.stat_many_calls == []                # one lookup: nothing done ahead
    warmer.missed("run")
    assert wait_for(lambda: root.stat_many_calls == [("run", 3)])
    warmer.missed("run")                             # the kernel dropped them: two more misses
    time.sleep(0.1)
    assert root.stat_many_calls == [("run", 3)]
    warmer.missed("run")
    assert wait_for(lambda: root.stat_many_calls == [("run", 3), ("run", 3)])
    warmer.missed("big")
    warmer.missed("big")                             # more entries than the limit: part of them, once
    assert wait_for(lambda: root.stat_many_calls[-1] == ("big", 4))
    warmer.missed("big")
    warmer.missed("big")
    time.sleep(0.2)
    assert root.stat_many_calls[-1] == ("big", 4) and len(root.stat_many_calls) == 3
    assert warmer.warmed == 3


def test_lookups_that_need_the_disk_warm_their_directory_in_a_local_tree(tmp_path):
    (tmp_path / "static" / "run").mkdir(parents=True)
    for i in range(3):
        (tmp_path / "static" / "run" / f"{i}.json").write_text("{}")
    (tmp_path / "upper").mkdir()
    tree = overlay.OverlayTree(StatCountingRoot(str(tmp_path / "static")), LocalRoot(str(tmp_path / "upper")))
    run = node_at(tree, "run")
    assert run.lookup_attr("0.json") is not None and run.lookup_attr("1.json") is not None
    assert wait_for(lambda: ("run", 3) in tree.static.stat_many_calls)
    assert tree.status()["directories_warmed"] == 1


def test_a_lookup_of_a_missing_name_asks_each_root_once(tmp_path):
    """A name neither root has (every create looks one up first) costs one stat of each
    root and of the whiteout, not a second round for the derived views' sake."""
    (tmp_path / "static" / "run").mkdir(parents=True)
    (tmp_path / "upper" / "run").mkdir(parents=True)
    tree = overlay.OverlayTree(LocalRoot(str(tmp_path / "static")), LocalRoot(str(tmp_path / "upper")))
    run = node_at(tree, "run")
    run.lookup_attr("warm.json")                     # whether run is opaque is learnt once
    asked: list[tuple[str, str]] = []
    for side, root in (("static", tree.static), ("upper", tree.upper)):
        plain = root.stat
        root.stat = lambda rel, side=side, plain=plain: asked.append((side, rel)) or plain(rel)
    assert run.lookup_attr("new.json") is None
    assert sorted(asked) == [("static", "run/new.json"), ("upper", "run/.wh.new.json"), ("upper", "run/new.json")]
    asked.clear()
    assert run.lookup("new.json") is None and len(asked) == 3


def test_an_open_or_lookup_without_a_thread_shows_what_the_thread_would(tmp_path):
    """Opening for reading and looking up from the kernel's lookup cache (no thread) follow the
    merge rules: the overlay's copy wins, whiteouts and opaque directories hide the
    static one, and whatever the cache cannot tell is left to the thread (None)."""
    static, upper = tmp_path / "static", tmp_path / "upper"
    for d in ("run", "gone", "flat"):
        (static / d).mkdir(parents=True)
        (static / d / "a").write_text(f"static {d}")
        (static / d / "b").write_text(f"static {d} b")
    (upper / "run").mkdir(parents=True)
    (upper / "run" / "a").write_text("overlay")
    (upper / "gone").mkdir()
    (upper / "gone" / ".wh.a").write_text("")
    (upper / "flat").mkdir()
    (upper / "flat" / ".wh..wh..opq").write_text("")
    tree = overlay.OverlayTree(LocalRoot(str(static)), LocalRoot(str(upper)))

    def opened(rel):
        node = node_at(tree, rel)                    # what the kernel's lookup does first
        handle = node and node.open_nowait(os.O_RDONLY)
        if handle is None:
            return None
        try:
            return handle.read(0, 100)
        finally:
            handle.release()

    def looked_up(rel):
        parent, _, name = rel.rpartition("/")
        node_at(tree, rel)
        found = node_at(tree, parent).lookup_attr_nowait(name)
        if found is not None:
            assert found == node_at(tree, parent).lookup_attr(name)      # what the thread finds
            return found[1].size
        return None

    assert opened("run/a") == b"overlay" and looked_up("run/a") == len("overlay")
    assert opened("run/b") == b"static run b" and looked_up("run/b") == len("static run b")
    assert opened("gone/a") is None and looked_up("gone/a") is None and tree.shown("gone/a") is None
    assert opened("gone/b") == b"static gone b" and looked_up("gone/b") == len("static gone b")
    assert opened("flat/b") is None and looked_up("flat/b") is None and tree.shown("flat/b") is None
    assert node_at(tree, "").lookup_attr_nowait("run")[1].mode & 0o170000 == 0o040000
    tree.changed()                                   # visibility not known: the thread decides
    assert node_at(tree, "run").lookup_attr_nowait("b") is None
    (upper / "new").write_text("new")
    shown = tree.shown("new")

    def make_node():
        return tree.node_for(tree.root, "new", "new", *shown, wait=False)
    with tree._table:                                # another thread makes a node: no new one without waiting
        other = threading.Thread(target=lambda: results.append(make_node()))
        results: list = []
        other.start()
        other.join()
    assert results == [None]
    assert make_node() is not None


def test_a_hung_listing_ahead_costs_the_walker_one_horizon_at_most():
    root = CountingRoot()
    root.gate.clear()                                # the source hangs
    ahead = ScanAhead(root, threads=1, window=2, horizon=0.3)
    ahead.plan(["d0"])
    started = time.monotonic()
    assert ahead.take("d0") is None                  # the caller lists it itself
    assert time.monotonic() - started < 2.0
    root.gate.set()


def test_a_watched_overlays_walker_waits_for_a_listing_ahead_no_longer_than_the_attribute_timeout(tmp_path):
    """Where a watch counts the overlay's changes, listings made ahead wait `MERGED_AHEAD_FOR`
    for the walker; a walker still waits for one under way (a hung source) only as long as
    the kernel would keep what it is told without a watch."""
    (tmp_path / "static").mkdir()
    (tmp_path / "upper").mkdir()
    tree = overlay.OverlayTree(LocalRoot(str(tmp_path / "static")), LocalRoot(str(tmp_path / "upper")))
    try:
        if tree.watch is None:
            pytest.skip("the overlay cannot be watched here (inotify instances used up)")
        assert tree.scan_ahead.horizon == overlay_tree.MERGED_AHEAD_FOR
        assert tree.scan_ahead.wait == tree.unwatched_timeout < tree.scan_ahead.horizon
    finally:
        tree.close()


def test_a_local_root_works_on_paths_longer_than_path_max(tmp_path):
    """Backing calls are relative to the root's descriptor, and a path too long for one
    call is walked a directory at a time: a tree deeper than PATH_MAX (a program that
    changed into a deep directory of the mount) still works."""
    root = LocalRoot(str(tmp_path))
    rel = ""
    for i in range(24):                              # 24 x 250 bytes: 6000 bytes, past PATH_MAX
        rel = f"{rel}/{i:03d}{'d' * 246}".lstrip("/")
        root.mkdir(rel, 0o755)
    assert len(rel.encode()) > 4096
    root.create(f"{rel}/f", 0o640)
    assert stat.S_IMODE(root.stat(f"{rel}/f").mode) == 0o640
    root.rename(f"{rel}/f", f"{rel}/g")
    assert root.listdir(rel) == ["g"]
    root.set_attr(f"{rel}/g", None, atime_ns=5_000_000_000)
    assert root.stat(f"{rel}/g").atime_ns == 5_000_000_000
    root.unlink(f"{rel}/g")
    assert root.stat(f"{rel}/g") is None
    open_fds = len(os.listdir("/proc/self/fd"))
    for _ in range(3):                               # a walk that fails half-way closes what it opened
        assert root.stat(f"{rel}/nope/f") is None
    assert len(os.listdir("/proc/self/fd")) == open_fds


def test_names_of_255_bytes_are_deleted_and_hidden_by_a_hashed_whiteout(tmp_path):
    """`.wh.<name>` has no room for a name of more than 251 bytes: such a whiteout is a
    hashed reserved name, probed by name and never listed."""
    static, upper = tmp_path / "static", tmp_path / "upper"
    long_name = "n" * 255
    (static / "d").mkdir(parents=True)
    (static / "d" / long_name).write_text("static")
    (static / "d" / "short").write_text("static")
    upper.mkdir()
    tree = overlay.OverlayTree(LocalRoot(str(static)), LocalRoot(str(upper)))
    d = node_at(tree, "d")
    assert d.lookup(long_name) is not None and d.lookup("m" * 255) is None
    d.unlink(long_name)
    assert d.lookup(long_name) is None
    assert [name for _, name, _, _ in d.entries(0)] == ["short"]
    assert [n for n in os.listdir(upper / "d") if n.startswith(".wh..wh.long.")]
    d.create(long_name, 0o644)                       # made again: the whiteout goes
    assert node_at(tree, "d/" + long_name).attr().size == 0
    assert not [n for n in os.listdir(upper / "d") if n.startswith(".wh..wh.long.")]


class ListCountingRoot(LocalRoot):
    def __init__(self, path):
        super().__init__(path)
        self.listed: list[str] = []

    def listdir(self, rel, touch=True):
        self.listed.append(rel)
        return super().listdir(rel, touch)


def test_a_merged_directory_counts_its_subdirectories_once_and_carries_the_count(tmp_path):
    """A merged directory's nlink is 2 and the subdirectories the view shows, as in a
    plain directory; changes through the mount carry the count over instead of listing
    the overlay's copy again (writing n files is not n listings)."""
    static, upper = tmp_path / "static", tmp_path / "upper"
    for sub in ("a", "b", "c"):
        (static / "run" / sub).mkdir(parents=True)
    (static / "run" / "f").write_text("f")
    upper.mkdir()
    tree = overlay.OverlayTree(LocalRoot(str(static)), ListCountingRoot(str(upper)))
    run = node_at(tree, "run")

    def fresh_nlink():
        other = overlay.OverlayTree(LocalRoot(str(static)), LocalRoot(str(upper)))
        return node_at(other, "run").attr().nlink

    run.create("new", 0o644)                           # the overlay gets its copy of run
    assert run.attr().nlink == fresh_nlink() == 5
    listed = tree.upper.listed.count("run")
    for i in range(20):
        run.create(f"x{i}", 0o644)
        assert run.attr().nlink == 5
    run.mkdir("d", 0o755)
    assert run.attr().nlink == fresh_nlink() == 6
    run.rmdir("a")                                     # a static one: a whiteout
    assert run.attr().nlink == fresh_nlink() == 5
    run.unlink("f")
    run.mkdir("a", 0o755)                              # made again over its whiteout
    assert run.attr().nlink == fresh_nlink() == 6
    assert tree.upper.listed.count("run") == listed    # never listed again


def test_the_static_visibility_remembered_of_directories_is_bounded(tmp_path):
    for i in range(10):
        (tmp_path / "static" / f"d{i}").mkdir(parents=True)
        (tmp_path / "static" / f"d{i}" / "f").write_text("x")
    (tmp_path / "upper" / "d7").mkdir(parents=True)
    (tmp_path / "upper" / "d7" / ".wh.f").touch()       # d7/f is deleted
    tree = overlay.OverlayTree(LocalRoot(str(tmp_path / "static")), LocalRoot(str(tmp_path / "upper")),
                               read_only=True)
    tree.visible_kept = 4
    for _ in range(2):
        assert [tree.static_visible(f"d{i}/f") for i in range(10)] == [i != 7 for i in range(10)]
        assert len(tree._visible) <= 4
    tree.close()


def test_a_reader_going_through_a_folder_in_order_finds_the_next_objects_fetched():
    root = FsspecRoot("memory://folder")
    docs = {f"f{i}.json": os.urandom(100 + i) for i in range(12)}
    for name, doc in docs.items():
        root.fs.pipe(f"/folder/d/{name}", doc)
    names = root.listdir("d")
    for name in ("f5.json", "f1.json"):                    # jumping about: nothing ahead
        root.open_read(f"d/{name}").release()
    assert not root._fetched_ahead
    for name in names[2:4]:                                 # f10, f11 after f1: in order
        handle = root.open_read(f"d/{name}")
        assert handle.read(0, 1000) == docs[name]
        handle.release()
    assert list(root._fetched_ahead) == [f"d/{name}" for name in names[4:12]]
    fetched = root._fetched_ahead["d/f3.json"][2]
    handle = root.open_read("d/f3.json")
    assert handle._blocks[0] is fetched and handle.read(0, 1000) == docs["f3.json"]


def test_a_folders_derived_views_are_placed_unmade_and_made_outside_the_tables_lock(tmp_path):
    """A folder's derived views are placed under one hold of the node table's lock without
    being made, also one whose node another thread dropped meanwhile; each is made at its
    first use, outside that lock."""
    from scopefs.backends.nodes import Symlink
    (tmp_path / "static" / "run").mkdir(parents=True)
    (tmp_path / "upper").mkdir()
    tree = overlay.OverlayTree(LocalRoot(str(tmp_path / "static")), LocalRoot(str(tmp_path / "upper")))
    calls = []

    def maker(name):
        def make(info):
            calls.append((name, tree._table.locked()))
            return Symlink(name)
        return make
    wanted = [(name, "run/src", maker(name), None, ("run/src", 1, 1), None, None) for name in "ba"]
    try:
        tree._derived_nodes("run", wanted[:1])
        tree._derived.pop("run/b", None)             # meanwhile, another thread drops b's view
        nodes = tree._derived_nodes("run", wanted)
        assert calls == []
        assert [node.made().target for node in nodes] == ["b", "a"]
    finally:
        tree.close()
    assert calls == [("b", False), ("a", False)]
