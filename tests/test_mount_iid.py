""".iid files mounted as entry folders: read, written through the mount, checked in upstream."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from conftest import MountFailed, alive, daemon_pid, daemon_status, wait_for
from iid_samples import ODD_ADDRESSES, read_upstream, write_upstream

pytestmark = pytest.mark.upstream


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    path = tmp_path_factory.mktemp("iid") / "sample.iid"
    spec = write_upstream(path)
    return path, spec


@pytest.fixture(scope="module")
def sample_in_upstream(sample):
    """What upstream reads from the sample (which no test writes): read once."""
    return read_upstream(sample[0])


@pytest.fixture
def copy(sample, tmp_path):
    path, spec = sample
    dest = tmp_path / "work.iid"
    shutil.copy(path, dest)
    return dest, spec


def entry_folders(mnt) -> list[str]:
    fixed = {"README.txt", "by-address", "groups", "meta.json", "overview.png"}
    return [n for n in os.listdir(mnt) if n not in fixed]


def read_mask(path) -> np.ndarray:
    return np.asarray(Image.open(path)) > 0


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_entry_matches_upstream(sample, sample_in_upstream, mount):
    path, spec = sample
    info, masks = sample_in_upstream
    mnt = mount(path)
    names = sorted(entry_folders(mnt))
    assert len(names) == len(ODD_ADDRESSES) == len(set(names))
    for key, name in enumerate(names):
        assert name.startswith(f"{key:06d}") and "/" not in name and len(name.encode()) <= 255
        doc = json.loads((mnt / name / "entry.json").read_text())
        up = info["entries"][key]
        assert doc["key"] == key
        assert doc["address_hex"] == up["address"] and doc["domain_hex"] == up["domain"]
        assert [doc["bbox"][k] for k in ("minr", "minc", "maxr", "maxc")] == up["bbox"]
        assert doc["area"] == up["area"]
        mask = read_mask(mnt / name / "mask.png")
        assert np.array_equal(mask, masks[f"mask_{key}"]), name
        img = Image.open(mnt / name / "mask.png")
        assert img.mode == "L" and set(np.unique(np.asarray(img))) <= {0, 255}
    # names stay the same at the next mount, and readable where they can be
    assert sorted(entry_folders(mount(path))) == names
    assert names[0] == "000000-leaf" and names[3] == "000003-%2E%2E" and names[1] == "000001-a%2Fb"
    assert names[14] == "000014-café"
    assert json.loads((mnt / "000008-nul%00byte" / "entry.json").read_text())["address"] == "nul\x00byte"


def test_groups_meta_by_address_and_overview(sample, sample_in_upstream, mount):
    path, _ = sample
    info, masks = sample_in_upstream
    mnt = mount(path)
    assert json.loads((mnt / "meta.json").read_text()) == info["meta"]
    assert sorted(os.listdir(mnt / "groups")) == ["odd%2Fgroup name", "plain"]
    for group, name in (("plain", "plain"), ("odd/group name", "odd%2Fgroup name")):
        links = sorted(os.listdir(mnt / "groups" / name))
        assert [int(link[:6]) for link in links] == info["groups"][group]
        for link in links:
            assert os.readlink(mnt / "groups" / name / link) == f"../../{link}"
            assert (mnt / "groups" / name / link / "entry.json").exists()
    dups = sorted(os.listdir(mnt / "by-address" / "dup"))
    assert [d[:6] for d in dups] == ["000011", "000012"]
    assert os.listdir(mnt / "by-address" / "%empty") == ["000010"]
    overview = np.asarray(Image.open(mnt / "overview.png"))
    extent = np.max([e["bbox"][2:] for e in info["entries"]], axis=0)
    assert overview.shape == (extent[0], extent[1], 3)
    for key in (0, 3, 5):
        minr, minc, maxr, maxc = info["entries"][key]["bbox"]
        mask = masks[f"mask_{key}"]
        assert (overview[minr:maxr, minc:maxc][mask].sum(axis=-1) > 0).all()


def test_changes_through_the_mount_load_in_upstream(copy, mount):
    path, spec = copy
    mnt = mount(path, "-o", "writeback_delay=30")
    before = read_upstream(path)[0]
    # a new mask of a new size for entry 0
    new0 = np.zeros((6, 9), np.uint8)
    new0[1:5, 2:8] = 255
    new0[2, 4] = 0
    Image.fromarray(new0).save(mnt / "000000-leaf" / "mask.png")
    # move entry 1 and rename its address through entry.json
    doc = json.loads((mnt / "000001-a%2Fb" / "entry.json").read_text())
    doc.update(address="renamed", bbox=[40, 50])
    (mnt / "000001-a%2Fb" / "entry.json").write_text(json.dumps(doc))
    # a new entry from a folder, with rsync-style temporary file and rename
    (mnt / "added").mkdir()
    mask = np.zeros((7, 7), np.uint8)
    mask[2:5, 1:6] = 1
    np.save(mnt / "added" / ".tmp-upload.npy", mask)
    os.rename(mnt / "added" / ".tmp-upload.npy", mnt / "added" / "mask.png")
    (mnt / "added" / "entry.json").write_text(json.dumps(
        {"address": "added", "domain_hex": "00ff", "bbox": [60, 70], "groups": ["plain", "new group"]}))
    # delete entry 2 (rm -r) and edit meta, group links and groups
    subprocess.run(["rm", "-r", str(mnt / "000002-%2Fleading")], check=True)
    (mnt / "meta.json").write_text(json.dumps({"edited": True}))
    os.symlink("../../000006-with space ", mnt / "groups" / "plain" / "000006-with space ")
    os.unlink(mnt / "groups" / "odd%2Fgroup name" / "000011-dup")
    os.mkdir(mnt / "groups" / "empty one")
    # all of it is visible at once through the mount
    assert json.loads((mnt / "added" / "entry.json").read_text())["area"] == 15
    assert daemon_status(mnt)["pending_changes"]
    fd = os.open(mnt / "meta.json", os.O_RDONLY)
    os.fsync(fd)                                         # writes the file back now
    os.close(fd)
    assert not daemon_status(mnt)["pending_changes"]

    info, masks = read_upstream(path)
    entries = info["entries"]
    assert len(entries) == len(before["entries"])        # one deleted, one added
    assert np.array_equal(masks["mask_0"], new0 > 0) and entries[0]["bbox"] == [0, 0, 6, 9]
    assert bytes.fromhex(entries[1]["address"]) == b"renamed"
    assert entries[1]["bbox"][:2] == [40, 50] and entries[1]["area"] == before["entries"][1]["area"]
    assert np.array_equal(masks["mask_1"], spec["masks"][1])          # moved, same mask
    assert [bytes.fromhex(e["address"]) for e in entries[2:4]] == [b"..", b"."]   # 2 is gone
    last = entries[-1]
    assert bytes.fromhex(last["address"]) == b"added" and last["domain"] == "00ff"
    assert last["bbox"] == [60, 70, 67, 77] and np.array_equal(masks[f"mask_{len(entries) - 1}"], mask > 0)
    assert info["meta"] == {"edited": True}
    key_of = {bytes.fromhex(e["address"]): e["key"] for e in entries if e["address"] != "647570"}
    # plain was leaf, /leading (deleted) and "."; it gained "with space " and "added"
    assert info["groups"]["plain"] == sorted([key_of[b"leaf"], key_of[b"."], key_of[b"with space "],
                                              key_of[b"added"]])
    assert info["groups"]["new group"] == [key_of[b"added"]]
    # odd/group name was a/b and both dups (keys 11, 12, now 10, 11); the first dup left
    assert info["groups"]["odd/group name"] == [1, 11]
    assert info["groups"]["empty one"] == []


@pytest.mark.daemon_log(r"flush\(\d+,\): \[Errno 22\]", r"symlink\(.*\[Errno 22\] group link nowhere",
                        reason="a refused change is logged with its reason")
def test_invalid_writes_fail_and_change_nothing(copy, mount):
    path, _ = copy
    digest = sha(path)
    mnt = mount(path, "-o", "writeback_delay=0.2")
    entry = mnt / sorted(entry_folders(mnt))[4]
    before_mask = (entry / "mask.png").read_bytes()
    before_json = (entry / "entry.json").read_text()

    def refused(path, data: bytes) -> int:
        fh = open(path, "wb")
        fh.write(data)
        with pytest.raises(OSError) as err:
            fh.close()
        return err.value.errno

    three_values = np.array([[0, 1, 2]], np.uint8)
    Image.fromarray(three_values).save(mnt.parent / "bad.png")
    assert refused(entry / "mask.png", (mnt.parent / "bad.png").read_bytes()) == errno.EINVAL
    assert refused(entry / "mask.png", b"not an image") == errno.EINVAL
    assert refused(entry / "entry.json", b'{"bbox": [0, 0, 2, 2]}') == errno.EINVAL        # does not fit
    assert refused(entry / "entry.json", b'{"bbox": [70000, 0]}') == errno.EINVAL          # beyond uint16
    assert refused(entry / "entry.json", b'{"bbox": [65530, 0]}') == errno.EINVAL          # mask reaches past
    assert refused(entry / "entry.json", b"[1, 2") == errno.EINVAL
    assert refused(mnt / "meta.json", b"{nope") == errno.EINVAL
    assert (entry / "mask.png").read_bytes() == before_mask
    assert (entry / "entry.json").read_text() == before_json
    with pytest.raises(OSError) as err:
        os.rmdir(entry)
    assert err.value.errno == errno.ENOTEMPTY
    with pytest.raises(OSError) as err:
        os.symlink("../../nowhere", mnt / "groups" / "plain" / "nowhere")
    assert err.value.errno == errno.EINVAL
    time.sleep(0.6)
    assert not daemon_status(mnt)["pending_changes"] and daemon_status(mnt)["writebacks"] == 0
    mount.cleanup()
    assert sha(path) == digest


def test_idle_write_back_and_kill_leaves_a_valid_file(copy, mount):
    path, _ = copy
    mnt = mount(path, "-o", "writeback_delay=0.3")
    (mnt / "meta.json").write_text('{"step": 1}')
    assert wait_for(lambda: daemon_status(mnt)["writebacks"] >= 1, every=0.05)
    (mnt / "meta.json").write_text('{"step": 2}')        # not yet written back when killed
    os.kill(daemon_pid(mnt), signal.SIGKILL)
    info, _ = read_upstream(path)
    assert info["meta"] == {"step": 1} and len(info["entries"]) == len(ODD_ADDRESSES)


def test_what_a_killed_rewrite_left_is_gone_at_the_next_mount(copy, mount):
    """A daemon killed while it rewrote the file leaves its temporary file beside it (the
    file itself is whole); the next writable mount removes it, never one whose writer
    still runs."""
    path, _ = copy
    before = path.read_bytes()
    cut = subprocess.run([sys.executable, "-c", "import os, sys; from scopefs.formats import atomic; "
                          "os.fsync = lambda fd: os._exit(9); atomic.atomic_write(sys.argv[1], b'partial')",
                          str(path)])
    assert cut.returncode == 9 and path.read_bytes() == before
    [killed] = [p for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.")]
    writing = path.parent / f".{path.name}.{socket.gethostname()}-{os.getpid()}.w0rk1n.tmp"
    writing.write_bytes(b"partial")
    mount(path, "-o", "ro")
    assert killed.exists()                           # a read-only mount changes nothing beside it
    mount.expect_log("removed what a rewrite of .* cut short")
    mount(path)
    assert not killed.exists() and writing.exists()


def test_unmount_writes_back_and_ro_refuses(copy, mount):
    path, _ = copy
    mnt = mount(path, "-o", "writeback_delay=3600")
    (mnt / "meta.json").write_text('{"at": "unmount"}')
    mount.cleanup()
    assert read_upstream(path)[0]["meta"] == {"at": "unmount"}
    digest = sha(path)
    ro = mount(path, "-o", "ro")
    with pytest.raises(OSError) as err:
        (ro / "meta.json").write_text("{}")
    assert err.value.errno == errno.EROFS
    with pytest.raises(OSError):
        os.mkdir(ro / "new")
    mount.cleanup()
    assert sha(path) == digest


@pytest.mark.parametrize("fmt,ext", [("npy", ".npy"), ("tiff", ".tif")])
def test_other_mask_formats(sample, sample_in_upstream, mount, fmt, ext):
    path, _ = sample
    _, masks = sample_in_upstream
    mnt = mount(path, "-o", f"mask_format={fmt}")
    name = sorted(entry_folders(mnt))[5]
    file = mnt / name / f"mask{ext}"
    got = np.load(file) if fmt == "npy" else np.asarray(Image.open(file)) > 0
    assert np.array_equal(np.asarray(got, bool), masks["mask_5"])


def test_empty_and_damaged_files_are_refused_with_one_line(tmp_path, mount):
    (tmp_path / "empty.iid").write_bytes(b"")
    with pytest.raises(MountFailed) as err:
        mount(tmp_path / "empty.iid")
    assert "empty file" in err.value.stderr and len(err.value.stderr.strip().splitlines()) == 1
    (tmp_path / "junk.iid").write_bytes(os.urandom(200))
    with pytest.raises(MountFailed) as err:
        mount(tmp_path / "junk.iid")
    assert "junk.iid" in err.value.stderr and len(err.value.stderr.strip().splitlines()) == 1


@pytest.mark.daemon_log(r"\[Errno 5\] entry .*: damaged segment", reason="a damaged entry fails alone, logged")
def test_truncated_and_flipped_files_through_the_mount(sample, mount, tmp_path):
    path, _ = sample
    data = path.read_bytes()
    rng = np.random.default_rng(5)
    variants = [data[:cut] for cut in (47, 48, 100, len(data) // 2, len(data) - 1)]
    for _ in range(6):
        flipped = bytearray(data)
        for pos in rng.integers(0, len(data), 3):
            flipped[pos] ^= 0xFF
        variants.append(bytes(flipped))
    for i, variant in enumerate(variants):
        damaged = tmp_path / f"damaged{i}.iid"
        damaged.write_bytes(variant)
        try:
            mnt = mount(damaged, "-o", "ro")
        except MountFailed as exc:
            assert len(exc.stderr.strip().splitlines()) == 1
            continue
        for name in entry_folders(mnt):           # every mask reads, or fails alone with EIO
            try:
                (mnt / name / "mask.png").read_bytes()
            except OSError as exc:
                assert exc.errno == errno.EIO
        (mnt / "overview.png").read_bytes()
        assert alive(daemon_pid(mnt))
        mount.cleanup()


@pytest.mark.parametrize("tool", [["rsync", "-r"], ["cp", "-r"]])
def test_new_entries_copied_in_with_real_tools(copy, mount, tmp_path, tool):
    path, _ = copy
    cell = tmp_path / "cell"
    cell.mkdir()
    mask = np.zeros((6, 5), np.uint8)
    mask[1:5, 1:4] = 255
    Image.fromarray(mask).save(cell / "mask.png")
    (cell / "entry.json").write_text(json.dumps({"address": "copied in", "bbox": [7, 9], "groups": ["plain"]}))
    mnt = mount(path)
    subprocess.run([*tool, str(cell), str(mnt) + "/"], check=True)
    doc = json.loads((mnt / "cell" / "entry.json").read_text())
    assert doc["address"] == "copied in" and doc["bbox"]["maxr"] == 13 and doc["area"] == 12
    assert np.array_equal(read_mask(mnt / "cell" / "mask.png"), mask > 0)
    mount.cleanup()
    info, masks = read_upstream(path)
    last = info["entries"][-1]
    assert bytes.fromhex(last["address"]) == b"copied in" and last["bbox"] == [7, 9, 13, 14]
    assert last["key"] in info["groups"]["plain"]
