"""ROMI FSDB: the library, its layout and locks against plantdb, and the mount."""
from __future__ import annotations

import errno
import glob
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import MountFailed, daemon_pid, daemon_status, wait_for, wait_gone
from upstream import run_upstream, upstream_python

from scopefs.backends.fsdb import FSDB, DBBusyError, io
from scopefs.backends.kernel import RENAME_EXCHANGE, RENAME_NOREPLACE, rename_at

pytestmark = pytest.mark.upstream


def new_db(path: Path) -> Path:
    path.mkdir()
    (path / "romidb").touch()
    return path


def plantdb_read(db: Path) -> dict:
    lines = run_upstream("plantdb", "upstream_plantdb.py", "read", str(db)).strip().splitlines()
    return json.loads(lines[-1])


def documented_example(db_path: Path, n: int = 100, scan_id: str = "myscan_001") -> list[np.ndarray]:
    """The romidata docs' example, run against scopefs's FSDB."""
    rng = np.random.default_rng(0)
    imgs = [np.array(256 * rng.random((32, 32, 3)), dtype=np.uint8) for _ in range(n)]
    db = FSDB(str(db_path))
    db.connect()
    scan = db.create_scan(scan_id)
    scan.set_metadata({"scanner": {"harware": "test"}})
    fileset = scan.create_fileset("images")
    for i, img in enumerate(imgs):
        file = fileset.create_file("%i" % i)
        io.write_image(file, img)
        file.set_metadata("key", "%i" % i)
    db.disconnect()
    return imgs


def test_documented_example_gives_the_documented_tree_and_opens_in_plantdb(tmp_path):
    db_path = new_db(tmp_path / "mydb")
    imgs = documented_example(db_path)
    assert sorted(os.listdir(db_path)) == [".locks", "myscan_001", "romidb"]     # no lock left
    scan_dir = db_path / "myscan_001"
    assert sorted(os.listdir(scan_dir)) == ["files.json", "images", "metadata"]
    assert sorted(os.listdir(scan_dir / "images")) == sorted(f"{i}.png" for i in range(100))
    assert sorted(os.listdir(scan_dir / "metadata" / "images")) == sorted(f"{i}.json" for i in range(100))
    files_json = (scan_dir / "files.json").read_text()
    expected = {"filesets": [{"files": [{"file": f"{i}.png", "id": f"{i}"} for i in range(100)], "id": "images"}]}
    assert files_json == json.dumps(expected, sort_keys=True, indent=4, separators=(",", ": "))
    assert json.loads((scan_dir / "metadata" / "metadata.json").read_text()) == {"scanner": {"harware": "test"}}
    assert (scan_dir / "metadata" / "images" / "7.json").read_text() == '{\n    "key": "7"\n}'
    # the docs' reading loop, with scopefs
    db = FSDB(str(db_path))
    db.connect()
    files = db.get_scan("myscan_001").get_fileset("images").get_files()
    assert [f.get_metadata("key") for f in files] == [str(i) for i in range(100)]
    assert np.array_equal(io.read_image(files[42]), imgs[42])
    db.disconnect()
    # and with plantdb 0.17
    seen = plantdb_read(db_path)
    images = seen["myscan_001"]["filesets"]["images"]["files"]
    assert sorted(images, key=int) == [str(i) for i in range(100)]
    assert images["42"]["file"] == "42.png" and images["42"]["metadata"]["key"] == "42"
    assert seen["myscan_001"]["metadata"]["scanner"] == {"harware": "test"}


def test_database_written_by_plantdb_mounts_and_reads(tmp_path, mount):
    db_path = new_db(tmp_path / "pdb")
    run_upstream("plantdb", "upstream_plantdb.py", "write", str(db_path))
    mnt = mount(db_path)
    assert sorted(p for p in os.listdir(mnt)) == ["plant_001", "plant_001.metadata.json"]
    scan_md = json.loads((mnt / "plant_001.metadata.json").read_text())
    assert scan_md["species"] == "arabidopsis" and scan_md["pot"] == 7
    images = sorted(n for n in os.listdir(mnt / "plant_001" / "images") if not n.endswith(".metadata.json"))
    assert images == ["img_000.png", "img_001.png", "img_002.png"]
    for name in images:
        assert (mnt / "plant_001" / "images" / name).read_bytes() == (db_path / "plant_001" / "images" / name).read_bytes()
    md = json.loads((mnt / "plant_001" / "images" / "img_002.png.metadata.json").read_text())
    assert md["shot_id"] == 2 and md["pose"] == [0.0, 2.0, 0.0]
    assert json.loads((mnt / "plant_001" / "measures" / "summary.json").read_text()) == {"height_mm": 120.5}


# -- locks ---------------------------------------------------------------------------------

def test_lock_interop_with_plantdb_014(tmp_path):
    db_path = new_db(tmp_path / "db")
    documented_example(db_path, n=3)
    ours = FSDB(str(db_path))
    ours.connect()
    out = run_upstream("plantdb014", "upstream_plantdb.py", "try", str(db_path))
    assert "busy:" in out
    holder = json.loads((db_path / "lock").read_text())
    assert holder["pid"] == os.getpid() and holder["holder"] == "scopefs"
    ours.disconnect()
    assert not (db_path / "lock").exists()
    # the other way round: plantdb 0.14.5 holds it (an empty lock file)
    proc = subprocess.Popen([upstream_python("plantdb014"), str(Path(__file__).parent / "upstream_plantdb.py"),
                             "hold", str(db_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        for _ in range(50):                          # plantdb logs on stdout too
            line = proc.stdout.readline()
            if line.startswith("connected") or not line:
                break
        assert line.startswith("connected")
        with pytest.raises(DBBusyError) as err:
            FSDB(str(db_path)).connect()
        assert "records no owner" in str(err.value) and str(db_path / "lock") in str(err.value)
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    FSDB(str(db_path)).connect()         # released by plantdb: free again


@pytest.mark.daemon_log(r"breaking the lock of scopefs mount .*: its holder is gone",
                        reason="the next mount takes the lock of the killed one, and says so")
def test_mount_holds_the_lock_and_a_killed_mount_does_not_block(tmp_path, mount):
    db_path = new_db(tmp_path / "db")
    documented_example(db_path, n=2)
    mnt = mount(db_path)
    pid = daemon_pid(mnt)
    with pytest.raises(MountFailed) as err:
        mount(db_path)
    assert f"pid {pid}" in err.value.stderr and len(err.value.stderr.strip().splitlines()) == 1
    with pytest.raises(DBBusyError) as busy:
        FSDB(str(db_path)).connect()
    assert f"pid {pid}" in str(busy.value)
    assert "busy:" in run_upstream("plantdb014", "upstream_plantdb.py", "try", str(db_path))
    os.kill(pid, signal.SIGKILL)
    assert wait_gone(pid, 10)
    again = mount(db_path, mountpoint=mnt)          # stale mount point and stale lock: both recovered
    assert "myscan_001" in os.listdir(again)
    assert "its holder is gone" in mount.log()
    mount.cleanup()
    assert not (db_path / "lock").exists()


# -- the mount -------------------------------------------------------------------------------

@pytest.mark.daemon_log(r"breaking the lock of scopefs mount .*: its holder is gone",
                        r"registered \d+ file\(s\) that a writer which stopped had not yet written",
                        reason="the next mount takes over from the killed one, and says what it did")
def test_files_copied_in_survive_a_killed_mount_and_upstream_sees_no_partial_file(tmp_path, mount):
    db_path = new_db(tmp_path / "db")
    documented_example(db_path, n=2)
    mnt = mount(db_path, "-o", "register_delay=600")          # nothing is registered unasked
    images = mnt / "myscan_001" / "images"
    for i in range(20):
        subprocess.run(["cp", "/dev/stdin", str(images / f"new_{i}.png")], input=bytes([i]) * 1000, check=True)
    with open(images / "synced.png", "wb") as fh:               # fsync registers at once
        fh.write(b"durable")
        fh.flush()
        os.fsync(fh.fileno())
    for name, data in (("late.png", b"late"), ("later.png", b"later"), ("late.png", b"late, again"),
                       ("cut.png", b"will lose its data")):
        with open(images / name, "wb") as fh:
            fh.write(data)
    registered = json.loads((db_path / "myscan_001" / "files.json").read_text())["filesets"][0]["files"]
    assert sorted(f["id"] for f in registered) == ["0", "1"] + sorted(f"new_{i}" for i in range(20)) + ["synced"]
    assert len((db_path / ".scopefs-journal").read_text().splitlines()) == 4
    pid = daemon_pid(mnt)
    os.kill(pid, signal.SIGKILL)
    assert wait_gone(pid, 10)
    seen = plantdb_read(db_path)["myscan_001"]["filesets"]["images"]["files"]
    assert "late" not in seen and len(seen) == 23
    for entry in seen.values():
        assert (db_path / "myscan_001" / "images" / entry["file"]).is_file()
    os.truncate(db_path / "myscan_001" / "images" / "cut.png", 0)   # as a power cut may leave it
    again = mount(db_path, mountpoint=mnt)                     # the journal is replayed
    images = again / "myscan_001" / "images"
    assert (images / "late.png").read_bytes() == b"late, again" and (images / "later.png").read_bytes() == b"later"
    assert (images / "new_7.png").read_bytes() == bytes([7]) * 1000
    assert not (images / "cut.png").exists()
    assert "registered 2 file(s)" in mount.log()
    mount.cleanup()
    assert len(plantdb_read(db_path)["myscan_001"]["filesets"]["images"]["files"]) == 25
    assert not (db_path / ".scopefs-journal").exists()


@pytest.mark.daemon_log(r"breaking the lock of scopefs mount .*: its holder is gone",
                        r"removed .*scopefs-tmp: a write that a stopped mount never finished",
                        r"registered \d+ file\(s\) that a writer which stopped had not yet written",
                        reason="the next mount takes over from the killed one, and says what it did")
def test_a_write_cut_by_a_killed_mount_leaves_nothing_after_the_next_mount(tmp_path, mount):
    """Files still open for writing when the mount is killed: upstream never sees them (a
    small one is kept in memory, a big one is a hidden temporary file), and the next mount
    removes that temporary file."""
    db_path = new_db(tmp_path / "db")
    documented_example(db_path, n=2)
    mnt = mount(db_path, "-o", "register_delay=60")             # (files.json names done.png after the kill)
    images = mnt / "myscan_001" / "images"
    subprocess.run(["cp", "/dev/stdin", str(images / "done.png")], input=b"done", check=True)
    writers = [open(images / "cut.png", "wb"), open(images / "big_cut.png", "wb")]
    writers[0].write(b"never closed")
    writers[1].write(bytes(2 << 20))                           # past what is kept in memory
    for writer in writers:
        writer.flush()
    on_disk = db_path / "myscan_001" / "images"
    assert [n for n in os.listdir(on_disk) if n.endswith(".scopefs-tmp")]
    pid = daemon_pid(mnt)
    os.kill(pid, signal.SIGKILL)
    assert wait_gone(pid, 10)
    for writer in writers:
        try:
            writer.close()
        except OSError:
            pass                                               # the mount is gone
    seen = plantdb_read(db_path)["myscan_001"]["filesets"]["images"]["files"]
    assert sorted(seen) == ["0", "1"]                          # done.png is in the journal
    again = mount(db_path, mountpoint=mnt)
    names = os.listdir(again / "myscan_001" / "images")
    assert "done.png" in names and "cut.png" not in names and "big_cut.png" not in names
    assert not [n for n in names if n.startswith(".")]
    assert not [n for n in os.listdir(on_disk) if n.startswith(".")]
    mount.cleanup()
    assert sorted(plantdb_read(db_path)["myscan_001"]["filesets"]["images"]["files"]) == ["0", "1", "done"]


@pytest.mark.daemon_log(r"breaking the lock of scopefs mount .*: its holder is gone",
                        r"removed .*scopefs-tmp: a write that a stopped mount never finished",
                        r"registered \d+ file\(s\) that a writer which stopped had not yet written",
                        reason="the next mount takes over from the killed one, and says what it did")
def test_a_copy_cut_by_a_killed_mount_leaves_only_whole_files_after_a_batch_was_made_durable(tmp_path, mount):
    """kill -9 of the daemon in the middle of a `cp` of many files, while its write-back
    makes batches durable (one syncfs each) and names them in files.json: upstream reads
    a database whose every file is whole, the next mount keeps every file whose copy had
    finished and leaves no hidden leftovers."""
    db_path = new_db(tmp_path / "db")
    documented_example(db_path, n=2)
    mnt = mount(db_path, "-o", "register_delay=0.05")
    new = tmp_path / "new"
    new.mkdir()
    for i in range(3000):
        (new / f"new_{i:04d}.png").write_bytes(bytes([i % 256]) * (1000 + i))
    images = mnt / "myscan_001" / "images"
    pid = daemon_pid(mnt)
    written = daemon_status(mnt)["work"].get("files_json_writes", 0)
    copy = subprocess.Popen(["sh", "-c", 'for f in "$@"; do cp "$f" "$0" || exit 1; done', str(images),
                             *sorted(map(str, new.iterdir()))], stderr=subprocess.DEVNULL)  # (a cp a file: slow)

    def batch_committed() -> bool:                              # (a batch made durable and named)
        work = daemon_status(mnt)["work"]
        return work.get("data_syncfs", 0) and work.get("files_json_writes", 0) > written
    assert wait_for(batch_committed, 30), daemon_status(mnt)["work"]
    assert copy.poll() is None, "the copy ended before the mount was killed: copy more files"
    os.kill(pid, signal.SIGKILL)
    assert wait_gone(pid, 10)
    copy.wait()
    on_disk = db_path / "myscan_001" / "images"
    seen = plantdb_read(db_path)["myscan_001"]["filesets"]["images"]["files"]
    named = sorted(set(seen) - {"0", "1"})
    assert named                                                # files.json named some already
    for file_id in named:
        assert (on_disk / seen[file_id]["file"]).read_bytes() == (new / seen[file_id]["file"]).read_bytes()
    again = mount(db_path, mountpoint=mnt)
    images = again / "myscan_001" / "images"
    kept = [name for name in os.listdir(images) if name.startswith("new_") and not name.endswith(".metadata.json")]
    assert len(kept) >= len(named)
    for name in kept:
        assert (images / name).read_bytes() == (new / name).read_bytes()
    assert not [n for n in os.listdir(on_disk) if n.startswith(".")]
    mount.cleanup()
    registered = plantdb_read(db_path)["myscan_001"]["filesets"]["images"]["files"]
    assert sorted(entry["file"] for file_id, entry in registered.items() if file_id not in ("0", "1")) == sorted(kept)


@pytest.mark.daemon_log(r"metadata is not JSON", r"invalid identifier 'bad name'",
                        reason="a refused change is logged with its reason")
def test_changes_through_the_mount_persist(tmp_path, mount):
    db_path = new_db(tmp_path / "db")
    imgs = documented_example(db_path, n=4)
    mnt = mount(db_path)
    images = mnt / "myscan_001" / "images"
    (mnt / "scan_b").mkdir()
    (mnt / "scan_b" / "raw").mkdir()
    src = tmp_path / "photo.png"
    src.write_bytes((images / "2.png").read_bytes())
    subprocess.run(["cp", str(src), str(mnt / "scan_b" / "raw" / "photo.png")], check=True)
    subprocess.run(["rsync", str(src), str(mnt / "scan_b" / "raw" / "synced.png")], check=True)
    (mnt / "scan_b" / "raw" / "photo.png.metadata.json").write_text('{"exposure": 12}')
    (mnt / "scan_b.metadata.json").write_text('{"plant": "b"}')
    (images / "1.png").unlink()
    os.rename(images / "3.png", images / "three.png")
    with pytest.raises(OSError) as err:
        with open(images / "0.png.metadata.json", "w") as fh:
            fh.write("{broken")
    assert err.value.errno == 22
    with pytest.raises(OSError):
        (mnt / "bad name").mkdir()
    subprocess.run(["rm", "-r", str(mnt / "myscan_001" / "images")], check=False)
    assert json.loads((images.parent.parent / "myscan_001.metadata.json").read_text())
    mount.cleanup()

    again = mount(db_path)
    raw = sorted(os.listdir(again / "scan_b" / "raw"))
    assert raw == ["photo.png", "photo.png.metadata.json", "synced.png", "synced.png.metadata.json"]
    assert json.loads((again / "scan_b" / "raw" / "photo.png.metadata.json").read_text()) == {"exposure": 12}
    assert json.loads((again / "scan_b.metadata.json").read_text()) == {"plant": "b"}
    assert "images" not in os.listdir(again / "myscan_001")       # rm -r removed the fileset
    mount.cleanup()
    seen = plantdb_read(db_path)
    assert sorted(seen["scan_b"]["filesets"]["raw"]["files"]) == ["photo", "synced"]
    assert seen["scan_b"]["filesets"]["raw"]["files"]["photo"]["metadata"] == {"exposure": 12}
    del imgs


def test_a_copy_into_a_fileset_costs_one_worker_call_per_file(tmp_path, mount):
    """`cp` of a new file: its missing name is told from memory (each lookup), the folder's
    and the file's attributes after the copy too (read by the worker that changed them),
    the create and the write are kept in memory; only the commit at close runs in a
    thread. files.json is not written per file (registered in batches)."""
    db_path = new_db(tmp_path / "db")
    documented_example(db_path, n=2)
    mnt = mount(db_path, "-o", "register_delay=600")
    images = mnt / "myscan_001" / "images"
    src = tmp_path / "src"
    src.mkdir()
    for i in range(10):
        (src / f"new_{i}.png").write_bytes(bytes([i]) * 300)
    subprocess.run(["cp", str(src / "new_0.png"), str(images)], check=True)
    before = daemon_status(mnt)
    for i in range(1, 10):
        subprocess.run(["cp", str(src / f"new_{i}.png"), str(images)], check=True)
        os.stat(images)                                 # the folder, changed: from memory
    after = daemon_status(mnt)
    assert (after["worker_calls"] - before["worker_calls"]) / 9 <= 1
    assert after["work"].get("files_json_writes", 0) == before["work"].get("files_json_writes", 0)
    assert (images / "new_9.png").read_bytes() == bytes([9]) * 300


def test_a_walk_of_the_mount_matches_an_rsync_copy_of_it(tmp_path, mount):
    db_path = new_db(tmp_path / "db")
    documented_example(db_path, n=30)
    mnt = mount(db_path)
    (mnt / "myscan_001" / "images" / "3.png.metadata.json").write_text('{"edited": true}')
    copy = tmp_path / "copy"
    subprocess.run(["rsync", "-a", f"{mnt}/", f"{copy}/"], check=True)

    def walk(top: Path) -> list[str]:
        listed = subprocess.run(["find", ".", "-printf", "%P %y %s\\n"], cwd=top, check=True, capture_output=True,
                                text=True).stdout.splitlines()
        return sorted(line for line in listed if not line.startswith(".scopefs") and " d " not in line)
    through_mount = walk(mnt)
    assert through_mount == walk(copy) and len(through_mount) == 2 * 30 + 2
    for line in through_mount:
        name, _, size = line.split(" ")
        data = (mnt / name).read_bytes()
        assert len(data) == int(size) and data == (copy / name).read_bytes()
    assert json.loads((copy / "myscan_001" / "images" / "3.png.metadata.json").read_text()) == {"edited": True}


def test_a_cold_walk_is_answered_from_memory_once_learned_ahead(tmp_path, mount, monkeypatch):
    """On a fresh mount with every listing entry's attributes, listing the root sets the
    daemon learning ahead what a walk lists next (its entries' attributes, a fileset's
    hidden files); once it has, `ls -lR` of the whole database is answered on the
    daemon's loop: no worker call. (Listed lean, the first stat learns: test_lean_listings.)"""
    monkeypatch.setenv("SCOPEFS_LEAN_LISTINGS", "0")
    db_path = new_db(tmp_path / "db")
    for scan_id in ("scan_a", "scan_b"):
        documented_example(db_path, n=5, scan_id=scan_id)
    mnt = mount(db_path)
    os.listdir(mnt)
    assert wait_for(lambda: not daemon_status(mnt).get("learning_ahead"), every=0.02), daemon_status(mnt)
    before = daemon_status(mnt)
    listed = subprocess.run(["ls", "-lR", str(mnt)], check=True, capture_output=True, text=True).stdout
    assert "scan_b/images:" in listed and "4.png.metadata.json" in listed
    assert daemon_status(mnt)["worker_calls"] == before["worker_calls"]


def test_rename_and_metadata_of_a_file(tmp_path, mount):
    db_path = new_db(tmp_path / "db")
    documented_example(db_path, n=4)
    mnt = mount(db_path)
    images = mnt / "myscan_001" / "images"
    os.rename(images / "3.png", images / "three.png")
    assert json.loads((images / "three.png.metadata.json").read_text()) == {"key": "3"}
    (images / "1.png").unlink()
    mount.cleanup()
    db = FSDB(str(db_path))
    db.connect()
    fs = db.get_scan("myscan_001").get_fileset("images")
    assert sorted(f.id for f in fs.get_files()) == ["0", "2", "three"]
    assert fs.get_file("three").get_metadata("key") == "3" and fs.get_file("three").filename == "three.png"
    assert not (db_path / "myscan_001" / "images" / "1.png").exists()
    db.disconnect()


def test_iid_and_imgstore_inside_the_database_have_views(tmp_path, mount):
    from scopefs.formats.iid import IIDFile
    from scopefs.formats.imgstore.writer import ImgStoreWriter
    db_path = new_db(tmp_path / "db")
    db = FSDB(str(db_path))
    db.connect()
    scan = db.create_scan("plate")
    seg = IIDFile()
    seg.add(np.ones((3, 4), bool), (1, 2, 4, 6), address=b"leaf")
    seg.save(str(tmp_path / "cells.iid"))
    scan.create_fileset("segmentation").create_file("cells").import_file(str(tmp_path / "cells.iid"))
    video = scan.create_fileset("video")
    with ImgStoreWriter(str(tmp_path / "store"), "npy", (8, 8)) as w:   # a store another tool wrote
        for i in range(5):
            w.add_image(np.full((8, 8), i, np.uint8), i, 1.7e9 + i)
    for name in os.listdir(tmp_path / "store"):
        os.rename(tmp_path / "store" / name, Path(video.path()) / name)
    video.create_file("metadata").import_file(str(Path(video.path()) / "metadata.yaml"))
    db.disconnect()
    mnt = mount(db_path)
    entry = json.loads((mnt / "plate" / "segmentation" / "cells.iid.view" / "000000-leaf" / "entry.json").read_text())
    assert entry["area"] == 12
    assert len(os.listdir(mnt / "plate" / "video.view" / "frames")) == 5
    assert (mnt / "plate" / "segmentation" / "cells.iid").read_bytes() == (tmp_path / "cells.iid").read_bytes()
    view = mnt / "plate" / "segmentation" / "cells.iid.view"      # read-only: a change would be lost
    for change in (lambda: (view / "new-entry").mkdir(), lambda: (view / "000000-leaf" / "entry.json").write_text("{}"),
                   lambda: os.truncate(view / "meta.json", 0)):
        with pytest.raises(OSError) as err:
            change()
        assert err.value.errno == errno.EROFS


WRITE_LOOP = """
import sys, numpy as np
from scopefs.backends.fsdb import FSDB, io
db = FSDB(sys.argv[1]); db.connect()
scan = db.get_scan("loop") or db.create_scan("loop")
print("writing", flush=True)
i = 0
while True:
    fs = scan.get_fileset(f"fs{i % 3}") or scan.create_fileset(f"fs{i % 3}")
    f = fs.get_file(str(i)) or fs.create_file(str(i))
    io.write_image(f, np.full((16, 16, 3), i % 255, np.uint8))
    f.set_metadata({"i": i, "tags": list(range(i % 7))})
    scan.set_metadata("count", i)
    old = scan.get_fileset(f"fs{(i - 2) % 3}")
    if i % 5 == 4 and old is not None and old.get_file(str(i - 2)) is not None:
        old.delete_file(str(i - 2))
    i += 1
"""


def test_json_stays_valid_when_writers_are_killed_at_random_points(tmp_path):
    db_path = new_db(tmp_path / "db")
    rng = random.Random(4)
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", WRITE_LOOP, str(db_path)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        assert proc.stdout.readline() == b"writing\n", proc.stderr.read().decode()[-2000:]    # (slow imports)
        time.sleep(rng.uniform(0.1, 1.1))
        proc.kill()
        assert proc.wait() == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
        for path in glob.glob(str(db_path / "**" / "*.json"), recursive=True):
            json.loads(Path(path).read_text())              # every JSON file is whole
        db = FSDB(str(db_path))
        db.connect()                                        # the dead writer's lock is broken
        scan = db.get_scan("loop")
        for fs in scan.get_filesets():
            for f in fs.get_files():
                assert os.path.exists(f.path()), f         # files.json names only real files
        db.disconnect()
    seen = plantdb_read(db_path)
    assert seen["loop"]["metadata"]["count"] >= 1


def test_files_without_an_extension_list_reopen_rename_and_unlink(tmp_path, mount):
    """A name with no extension (`changed`, and `end.` with an empty one) is the file's
    name in files.json and on disk: it lists, reopens, renames and unlinks by that name,
    in this mount and the next."""
    db_path = new_db(tmp_path / "db")
    documented_example(db_path, n=1)
    mnt = mount(db_path)
    images = mnt / "myscan_001" / "images"
    (images / "changed").write_bytes(b"")
    (images / "notes").write_bytes(b"some notes")
    (images / "end.").write_bytes(b"dot")
    (images / "e.bin").write_bytes(b"bin")
    assert (images / "notes").read_bytes() == b"some notes" and (images / "end.").read_bytes() == b"dot"
    (images / "changed").unlink()
    os.rename(images / "notes", images / "renamed")
    os.rename(images / "e.bin", images / "plain")
    data = sorted(n for n in os.listdir(images) if not n.endswith(".metadata.json"))
    assert data == ["0.png", "end.", "plain", "renamed"]
    assert (images / "renamed").read_bytes() == b"some notes" and (images / "plain").read_bytes() == b"bin"
    mount.cleanup()
    assert sorted(os.listdir(db_path / "myscan_001" / "images")) == ["0.png", "end.", "plain", "renamed"]
    seen = plantdb_read(db_path)["myscan_001"]["filesets"]["images"]["files"]
    assert sorted(seen) == ["0", "end", "plain", "renamed"]               # plantdb reads them

    again = mount(db_path) / "myscan_001" / "images"
    assert sorted(n for n in os.listdir(again) if not n.endswith(".metadata.json")) == data
    assert (again / "renamed").read_bytes() == b"some notes"
    os.rename(again / "plain", again / "e.bin")
    os.rename(again / "renamed", again / "renamed.txt")         # (one id: only the extension)
    os.rename(again / "renamed.txt", again / "renamed")
    assert (again / "renamed").read_bytes() == b"some notes"
    for name in ("renamed", "end.", "e.bin"):
        (again / name).unlink()
    assert sorted(os.listdir(again)) == ["0.png", "0.png.metadata.json"]


def test_a_new_files_metadata_shows_as_soon_as_it_is_closed(tmp_path, mount):
    """`stat name.metadata.json` while name is being written finds nothing; once close(2)
    has returned it finds the file's metadata at once (the kernel was not left to remember
    the name missing: the view appears at a close the kernel does not know makes it); an
    `.iid` file's `.view` likewise; a new scan's metadata, once its mkdir has returned.
    (The old code failed within 40 files, 20 scans.)"""
    db_path = new_db(tmp_path / "db")
    documented_example(db_path, n=1)
    mnt = mount(db_path)
    images = mnt / "myscan_001" / "images"
    for i in range(200):
        new = images / f"new_{i}.png"
        with open(new, "wb") as out:
            out.write(b"x" * 100)
            with pytest.raises(FileNotFoundError):
                os.stat(images / f"new_{i}.png.metadata.json")
        assert json.loads((images / f"new_{i}.png.metadata.json").read_text()) == {}
    from scopefs.formats.iid import IIDFile
    seg = IIDFile()
    seg.add(np.ones((3, 4), bool), (1, 2, 4, 6), address=b"leaf")
    seg.save(str(tmp_path / "cells.iid"))
    iid = (tmp_path / "cells.iid").read_bytes()
    for i in range(100):                        # an .iid's view, as soon as its close has returned
        with open(images / f"cells_{i}.iid", "wb") as out:
            out.write(iid)
            with pytest.raises(FileNotFoundError):
                os.stat(images / f"cells_{i}.iid.view")
        assert os.path.isdir(images / f"cells_{i}.iid.view")
    for i in range(50):                         # a scan's, as soon as its mkdir has returned
        with pytest.raises(FileNotFoundError):
            os.stat(mnt / f"scan_{i}.metadata.json")
        os.mkdir(mnt / f"scan_{i}")
        assert json.loads((mnt / f"scan_{i}.metadata.json").read_text()) == {}


def _renameat2(src: Path, dst: Path, flags: int) -> int:
    """renameat2(2) of two names in one folder: 0, or the errno it failed with."""
    folder = os.open(src.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        rename_at(folder, src.name, folder, os.path.relpath(dst, src.parent), flags)
    except OSError as exc:
        return exc.errno
    finally:
        os.close(folder)
    return 0


def test_a_rename_onto_an_existing_file_replaces_it(tmp_path, mount):
    """`mv -f`, `os.replace` and tools that write `x.tmp` then rename it over `x` work as in
    a plain folder: the target name shows the moved bytes and metadata, the moved name is
    gone, a descriptor open on the replaced file still reads its old bytes, and plantdb
    reads one file per id. A name whose id another file holds stays EEXIST; NOREPLACE is
    EEXIST on every path; EXCHANGE is EINVAL."""
    db_path = new_db(tmp_path / "db")
    documented_example(db_path, n=4)
    mnt = mount(db_path)
    images = mnt / "myscan_001" / "images"
    before = {i: (images / f"{i}.png").read_bytes() for i in range(4)}
    assert json.loads((images / "1.png.metadata.json").read_text()) == {"key": "1"}   # (the kernel has it)
    with open(images / "1.png", "rb") as held:
        os.replace(images / "0.png", images / "1.png")
        assert os.pread(held.fileno(), 1 << 20, 0) == before[1]
        assert os.fstat(held.fileno()).st_size == len(before[1]) and os.fstat(held.fileno()).st_nlink == 0
    assert (images / "1.png").read_bytes() == before[0] and (images / "1.png").stat().st_size == len(before[0])
    assert json.loads((images / "1.png.metadata.json").read_text()) == {"key": "0"}
    assert not (images / "0.png").exists() and not (images / "0.png.metadata.json").exists()
    (images / "3.png.metadata.json").unlink()                   # (hides the view until 3.png goes)
    subprocess.run(["mv", "-f", str(images / "2.png"), str(images / "3.png")], check=True)
    assert (images / "3.png").read_bytes() == before[2]
    assert json.loads((images / "3.png.metadata.json").read_text()) == {"key": "2"}
    (images / "x.tmp").write_bytes(b"new")                       # id "x": a visible temporary name
    with pytest.raises(FileExistsError):
        os.close(os.open(images / "x", os.O_CREAT | os.O_EXCL | os.O_WRONLY))     # id "x" is taken
    assert sorted(os.listdir(images)) == ["1.png", "1.png.metadata.json", "3.png", "3.png.metadata.json",
                                          "x.tmp", "x.tmp.metadata.json"]
    (images / "y").write_bytes(b"old")
    os.replace(images / "x.tmp", images / "y")
    assert (images / "y").read_bytes() == b"new" and not (images / "x.tmp").exists()
    (images / "z.png").write_bytes(b"z")
    with pytest.raises(FileExistsError):
        os.rename(images / "z.png", images / "3.jpg")            # id 3 is 3.png's
    (images / ".hidden").write_bytes(b"hidden")
    (images / ".y.part").write_bytes(b"rsync's")                  # a hidden name onto a file
    with open(images / "y", "rb") as held:
        os.rename(images / ".y.part", images / "y")
        assert os.pread(held.fileno(), 100, 0) == b"new" and os.fstat(held.fileno()).st_size == 3
    assert (images / "y").read_bytes() == b"rsync's"
    assert _renameat2(images / "z.png", images / "y", RENAME_NOREPLACE) == errno.EEXIST
    assert _renameat2(images / ".hidden", images / "y", RENAME_NOREPLACE) == errno.EEXIST
    assert _renameat2(images / "z.png", images / "y", RENAME_EXCHANGE) == errno.EINVAL
    assert (images / "y").read_bytes() == b"rsync's" and (images / "z.png").read_bytes() == b"z"
    os.unlink(images / ".hidden")
    mount.cleanup()
    files = json.loads((db_path / "myscan_001" / "files.json").read_text())["filesets"][0]["files"]
    assert sorted((f["id"], f["file"]) for f in files) == [("1", "1.png"), ("3", "3.png"), ("y", "y"),
                                                          ("z", "z.png")]
    seen = plantdb_read(db_path)["myscan_001"]["filesets"]["images"]["files"]
    assert seen["1"]["metadata"] == {"key": "0"} and seen["3"]["metadata"] == {"key": "2"}
    assert seen["y"]["metadata"] == {}
    assert sorted(os.listdir(db_path / "myscan_001" / "images")) == ["1.png", "3.png", "y", "z.png"]
    assert sorted(os.listdir(db_path / "myscan_001" / "metadata" / "images")) == ["1.json", "3.json"]


def test_a_rename_cut_by_a_killed_writer_is_finished_by_the_next_connect(tmp_path, monkeypatch):
    """A writer that stops right after the data moved (files.json still names the moved
    name, the metadata not moved yet), or just before removing the moved file's metadata:
    the next connect finishes the rename; plantdb reads one file per id, with the moved
    file's metadata, and nothing is left over."""
    from scopefs.backends.fsdb import db as fsdb_module
    db_path = new_db(tmp_path / "db")
    documented_example(db_path, n=4)

    def killed(*args):
        raise SystemExit("killed")
    unlink = fsdb_module._unlink
    for src, onto, stop in (("0", "1.png", "_took_metadata"), ("2", "new.png", "_took_metadata"),
                            ("3", "new.png", "_unlink")):
        db = FSDB(str(db_path))
        db.connect()
        db.register_lazily = True
        fileset = db.get_scan("myscan_001").get_fileset("images")
        if stop == "_unlink":
            monkeypatch.setattr(fsdb_module, "_unlink", lambda path: killed() if path.endswith(".json") else unlink(path))
        else:
            fileset._took_metadata = killed
        with pytest.raises(SystemExit):
            fileset.rename_file(src, onto)
        monkeypatch.setattr(fsdb_module, "_unlink", unlink)
        db._lock.release()                                   # (what the kernel does for a killed one)
        if db._journal_fd is not None:
            os.close(db._journal_fd)
        again = FSDB(str(db_path))
        again.connect()
        again.disconnect()
    seen = plantdb_read(db_path)["myscan_001"]["filesets"]["images"]["files"]
    assert {i: (f["file"], f["metadata"]) for i, f in seen.items()} == {
        "1": ("1.png", {"key": "0"}), "new": ("new.png", {"key": "3"})}
    assert sorted(os.listdir(db_path / "myscan_001" / "images")) == ["1.png", "new.png"]
    assert sorted(os.listdir(db_path / "myscan_001" / "metadata" / "images")) == ["1.json", "new.json"]
    assert not (db_path / ".scopefs-journal").exists()


def _lazily_registering_example(tmp_path: Path, n: int):
    """The documented example's database (`n` images), connected to register lazily: its
    path, the FSDB and its fileset `images`."""
    db_path = new_db(tmp_path / "db")
    documented_example(db_path, n=n)
    db = FSDB(str(db_path))
    db.connect()
    db.register_lazily = True
    return db_path, db, db.get_scan("myscan_001").get_fileset("images")


def _named_after_a_kill_and_the_next_connect(db: FSDB, db_path: Path) -> dict[str, str]:
    """What files.json names (id: file) once `db`'s writer was killed and the next connect
    replayed its journal."""
    db._lock.release()                                   # (what the kernel does for a killed one)
    os.close(db._journal_fd)
    again = FSDB(str(db_path))
    again.connect()
    again.disconnect()
    files = json.loads((db_path / "myscan_001" / "files.json").read_text())["filesets"][0]["files"]
    return {f["id"]: f["file"] for f in files}


@pytest.mark.parametrize("src,onto", [("0", "new.png"), ("1", "1.jpg")], ids=["other id", "other extension"])
@pytest.mark.parametrize("stop", ["before the data moves", "after the data moved"])
def test_a_rename_killed_at_each_step_is_undone_or_finished_by_the_next_connect(tmp_path, monkeypatch, src, onto,
                                                                               stop):
    """Before its data moves, a rename's journal line is on disk (fsynced, and the root
    folder that names a new journal): the next connect finds files.json naming files that
    are there, the rename undone if the data had not moved, else finished, also onto
    another extension of the same id."""
    from scopefs.backends.fsdb import db as fsdb_module
    db_path, db, fileset = _lazily_registering_example(tmp_path, n=2)
    replace, fsync, done = os.replace, os.fsync, []

    def synced(fd):
        done.append(os.readlink(f"/proc/self/fd/{fd}"))
        fsync(fd)

    def moved(old, new):
        done.append("data moved")
        if stop == "before the data moves":
            raise SystemExit("killed")
        replace(old, new)
        raise SystemExit("killed")
    monkeypatch.setattr(fsdb_module.os, "fsync", synced)
    monkeypatch.setattr(fsdb_module.os, "replace", moved)
    with pytest.raises(SystemExit):
        fileset.rename_file(src, onto)
    monkeypatch.undo()
    assert done[:2] == [str(db_path / ".scopefs-journal"), str(db_path)] and "data moved" in done[2:], done
    named = _named_after_a_kill_and_the_next_connect(db, db_path)
    assert sorted(named.values()) == sorted(os.listdir(db_path / "myscan_001" / "images"))
    expected, holder = {"0": "0.png", "1": "1.png"}, src
    if stop == "after the data moved":
        holder = onto.split(".")[0]
        del expected[src]
        expected[holder] = onto
    assert named == expected
    metadata = db_path / "myscan_001" / "metadata" / "images" / f"{holder}.json"
    assert json.loads(metadata.read_text()) == {"key": src}
    assert not (db_path / ".scopefs-journal").exists()


@pytest.mark.parametrize("onto", ["x.png", "new.png"], ids=["other extension", "other id"])
@pytest.mark.parametrize("stop", ["before the data moves", "after the data moved"])
def test_a_rename_of_a_file_not_yet_in_files_json_killed_is_undone_or_finished_by_the_next_connect(
        tmp_path, monkeypatch, onto, stop):
    """`write x.tmp; mv x.tmp x.png` within the flush delay, the writer killed before
    files.json is written: the next connect registers the file under the name it has on
    disk and keeps its metadata (the rename's journal line does not hide the registration
    journaled before it)."""
    from scopefs.backends.fsdb import db as fsdb_module
    db_path, db, fileset = _lazily_registering_example(tmp_path, n=2)
    file = fileset.create_file("x")
    file.write_raw(b"new data", "tmp")
    file.set_metadata("key", "x")
    replace = os.replace

    def moved(old, new):
        if stop == "after the data moved":
            replace(old, new)
        raise SystemExit("killed")
    monkeypatch.setattr(fsdb_module.os, "replace", moved)
    with pytest.raises(SystemExit):
        fileset.rename_file("x", onto)
    monkeypatch.undo()
    named = _named_after_a_kill_and_the_next_connect(db, db_path)
    holder, name = ("x", "x.tmp") if stop == "before the data moves" else (onto.split(".")[0], onto)
    assert named == {"0": "0.png", "1": "1.png", holder: name}
    assert sorted(named.values()) == sorted(os.listdir(db_path / "myscan_001" / "images"))
    assert (db_path / "myscan_001" / "images" / name).read_bytes() == b"new data"
    metadata = db_path / "myscan_001" / "metadata" / "images"
    assert json.loads((metadata / f"{holder}.json").read_text()) == {"key": "x"}
    assert sorted(os.listdir(metadata)) == sorted(["0.json", "1.json", f"{holder}.json"])
    assert not (db_path / ".scopefs-journal").exists()


def test_a_file_registered_lazily_after_a_replay_that_journaled_is_found_by_the_next_connect(tmp_path, monkeypatch):
    """A replay whose finished rename journaled a registration removes the journal it
    wrote to: a file registered lazily afterwards goes into a new journal, which the next
    connect after a kill finds (not into the unlinked one)."""
    from scopefs.backends.fsdb import db as fsdb_module
    db_path, db, fileset = _lazily_registering_example(tmp_path, n=1)
    fileset.create_file("x").write_raw(b"x data", "tmp")
    replace = os.replace

    def moved(old, new):
        replace(old, new)
        raise SystemExit("killed")
    monkeypatch.setattr(fsdb_module.os, "replace", moved)
    with pytest.raises(SystemExit):
        fileset.rename_file("x", "new.png")
    monkeypatch.undo()
    db._lock.release()                                   # (what the kernel does for a killed one)
    os.close(db._journal_fd)
    again = FSDB(str(db_path))
    again.register_lazily = True                         # (the replay journals new.png)
    again.connect()
    again.get_scan("myscan_001").get_fileset("images").create_file("y").write_raw(b"y data", "png")
    again._lock.release()                                # killed before its flush
    os.close(again._journal_fd)
    third = FSDB(str(db_path))
    third.connect()
    third.disconnect()
    files = json.loads((db_path / "myscan_001" / "files.json").read_text())["filesets"][0]["files"]
    assert {f["id"]: f["file"] for f in files} == {"0": "0.png", "new": "new.png", "y": "y.png"}


@pytest.mark.parametrize("onto", ["0.jpg", "new.png"], ids=["other extension", "other id"])
def test_a_renamed_files_new_name_is_durable_before_files_json_names_it(tmp_path, monkeypatch, onto):
    """After a power cut, files.json never names a new name the fileset's folder lost:
    the folder is fsynced after the data's rename, before files.json is rewritten."""
    from scopefs.backends.fsdb import db as fsdb_module
    db_path = new_db(tmp_path / "db")
    documented_example(db_path, n=1)
    db = FSDB(str(db_path))
    db.connect()
    fileset = db.get_scan("myscan_001").get_fileset("images")
    replace, fsync, events = os.replace, os.fsync, []

    def replaced(old, new):
        events.append(("replace", str(new)))
        replace(old, new)

    def synced(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)
    monkeypatch.setattr(fsdb_module.os, "replace", replaced)
    monkeypatch.setattr(fsdb_module.os, "fsync", synced)
    fileset.rename_file("0", onto)
    monkeypatch.undo()
    db.disconnect()
    images = str(db_path / "myscan_001" / "images")
    moved = events.index(("replace", f"{images}/{onto}"))
    named = events.index(("replace", str(db_path / "myscan_001" / "files.json")))
    assert ("fsync", images) in events[moved:named], events


def test_fstat_of_a_file_unlinked_while_open_shows_what_was_written_since(tmp_path, mount):
    """As in a plain folder: writes through a descriptor held on a removed file grow it."""
    db_path = new_db(tmp_path / "db")
    documented_example(db_path, n=2)
    mnt = mount(db_path)
    images = mnt / "myscan_001" / "images"
    size = (images / "0.png").stat().st_size
    for name in ("0.png", "new.png"):
        fd = os.open(images / name, os.O_RDWR | os.O_CREAT)
        try:
            os.unlink(images / name)
            os.pwrite(fd, b"more", size)
            assert os.fstat(fd).st_size == size + 4
            assert os.pread(fd, 4, size) == b"more"
        finally:
            os.close(fd)
        assert not (images / name).exists()


@pytest.mark.daemon_log(r"a file being created moves or is replaced once closed",
                        reason="the refused renames are logged")
def test_a_file_being_created_is_not_renamed_until_closed(tmp_path, mount):
    """A new file not yet closed has no data in the database: renaming it, or onto it, is
    EBUSY (it came back under its first name at close, and the renamed one was empty)."""
    db_path = new_db(tmp_path / "db")
    documented_example(db_path, n=1)
    mnt = mount(db_path)
    images = mnt / "myscan_001" / "images"
    with open(images / "open.png", "wb") as writer:
        writer.write(b"being written")
        writer.flush()
        for src, dst in (("open.png", "moved.png"), ("0.png", "open.png")):
            with pytest.raises(OSError) as refused:
                os.rename(images / src, images / dst)
            assert refused.value.errno == errno.EBUSY
    os.rename(images / "open.png", images / "moved.png")
    assert (images / "moved.png").read_bytes() == b"being written"
    assert sorted(n for n in os.listdir(images) if not n.endswith(".json")) == ["0.png", "moved.png"]
