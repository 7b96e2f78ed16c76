"""Small files of a copick mount read cold, one after another (a loop of
`open().read()`, tar, rsync): each READ the page cache cannot answer costs the daemon a
worker thread, so once two in a folder missed it the rest of the folder's small files are
read with the next one (`overlay.walk.SmallSiblings`). Counted in worker calls, not seconds."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from conftest import daemon_status, unless_caches_dropped
from scopefs.backends.copick import LEARN_SIZES_ENV
from scopefs.backends.kept_sizes import RACY_S

FILES = 20


def picks_folder(tmp_path: Path, monkeypatch) -> tuple[Path, Path, list[Path]]:
    """A static root with one run's Picks/ of FILES small picks files (old enough to be
    trusted: `kept_sizes.identity`) and an empty overlay, to be mounted with no views'
    sizes learned at mount (the learner would read the picks files into the page cache)."""
    monkeypatch.setenv(LEARN_SIZES_ENV, "0")
    static, overlay = tmp_path / "static", tmp_path / "overlay"
    picks = static / "ExperimentRuns" / "TS_000" / "Picks"
    picks.mkdir(parents=True)
    overlay.mkdir()
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
    static, overlay, paths = picks_folder(tmp_path, monkeypatch)
    originals = [path.read_bytes() for path in paths]

    def check() -> None:
        for path, data in zip(paths, originals):
            if path.read_bytes() != data:
                path.write_bytes(data)
                time.sleep(RACY_S)      # (a file changed in the last RACY_S seconds is not held)
        mnt = mount(static, "-t", "copick", "-o", f"overlay={overlay}")
        drop_pages(paths)
        shown = [mnt / path.relative_to(static) for path in paths]
        for path in shown[:2]:
            path.read_bytes()           # the second reads the rest ahead
        assert daemon_status(mnt)["small_files_read_ahead"] == FILES - 2
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
        data = siblings.take(root, name)
        if data is None:                # a cold READ, in a worker
            cold.append(name)
            data = (tmp_path / name).read_bytes()
            siblings.read_whole(root, name, len(data))
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
    assert siblings.read_ahead == 0 and siblings.take(root, "2.json") is None


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
