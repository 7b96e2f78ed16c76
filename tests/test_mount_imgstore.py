"""imgstores mounted through the real CLI and read with real tools."""
from __future__ import annotations

import concurrent.futures
import csv
import hashlib
import io
import json
import mmap
import os
import random
import shutil
import subprocess
import tarfile

import cv2
import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import daemon_status, wait_for
from stores import T0, barcode, make_store

DIRECTORY_FORMATS = ["npy", "png", "bmp", "tif", "pgm", "ppm"]
VIDEO_FORMATS = ["mjpeg/avi", "avc1/mp4", "h264/mkv"]


def read_png(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def frames_decoded(mnt) -> int:
    return daemon_status(mnt)["frames_decoded"]


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    base = tmp_path_factory.mktemp("stores")
    made = {}
    for fmt in DIRECTORY_FORMATS:
        shape = (48, 64) if fmt == "pgm" else (48, 64, 3)
        made[fmt] = make_store(base / f"dir_{fmt}", fmt, shape=shape)
    made["png_gray"] = make_store(base / "png_gray", "png", shape=(48, 64))
    made["png16"] = make_store(base / "png16", "png", shape=(48, 64), dtype=np.uint16)
    made["npy16_color"] = make_store(base / "npy16", "npy", shape=(48, 64, 3), dtype=np.uint16)
    made["jpg"] = make_store(base / "jpg", "jpg", shape=(48, 64, 3))
    made["bayer"] = make_store(base / "bayer", "npy", shape=(48, 64), encoding="cv_bayerbg")
    for fmt in VIDEO_FORMATS:
        made[fmt] = make_store(base / fmt.replace("/", "_"), fmt, shape=(120, 160, 3), video=True,
                               numbers=range(1000, 1030), chunksize=12)
    made["video_gray"] = make_store(base / "video_gray", "mjpeg/avi", shape=(120, 160), video=True)
    made["odd_numbers"] = make_store(base / "odd_numbers", "npy", shape=(48, 64),
                                     numbers=[6050, 6055, 6056, 0, 1, 2, -3, 2, 2], chunksize=2)
    made["extra"] = make_store(base / "extra", "npy", shape=(48, 64), extra=True,
                               metadata={"genotype": "wt", "experiment": {"arena": 3}})
    made["empty"] = make_store(base / "empty", "npy", shape=(48, 64), numbers=[])
    return made


@pytest.fixture(scope="module")
def mounted(samples, module_mount):
    cache = {}

    def get(name, *options):
        key = (name, options)
        if key not in cache:
            cache[key] = module_mount(samples[name].path, *options)
        return cache[key]
    return get


# -- pixels ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", DIRECTORY_FORMATS + ["png_gray", "png16", "bayer"])
def test_every_frame_of_lossless_store_matches_source(samples, mounted, name):
    sample = samples[name]
    mnt = mounted(name)
    names = sorted(os.listdir(mnt / "frames"))
    assert names == [f"{i:06d}.png" for i in range(len(sample.numbers))]
    for i, fname in enumerate(names):
        got = read_png(mnt / "frames" / fname)
        expected = sample.expected_rgb(i)
        assert got.shape == expected.shape and got.dtype == expected.dtype, (name, i)
        assert np.array_equal(got, expected), (name, i)


def test_sixteen_bit_stays_sixteen_bit_and_gray_stays_gray(samples, mounted):
    img = Image.open(mounted("png16") / "frames" / "000003.png")
    assert img.mode in ("I;16", "I;16B", "I")
    arr = cv2.imread(str(mounted("png16") / "frames" / "000003.png"), cv2.IMREAD_UNCHANGED)
    assert arr.dtype == np.uint16 and arr.ndim == 2 and arr.max() == 65535
    assert Image.open(mounted("png_gray") / "frames" / "000000.png").mode == "L"


@pytest.mark.parametrize("fmt", ["tiff", "npy", "bmp", "pnm"])
def test_selectable_lossless_formats(samples, mounted, fmt):
    sample = samples["png"]
    mnt = mounted("png", "-o", f"image_format={fmt}")
    ext = {"tiff": ".tif", "npy": ".npy", "bmp": ".bmp", "pnm": ".ppm"}[fmt]
    for i in range(len(sample.numbers)):
        path = mnt / "frames" / f"{i:06d}{ext}"
        if fmt == "npy":
            got = np.load(path)
        else:
            bgr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            assert bgr is not None, path
            got = bgr[:, :, ::-1]
        assert np.array_equal(got, sample.expected_rgb(i)), (fmt, i)


def test_npy_colour_is_rgb_and_keeps_dtype(samples, mounted):
    sample = samples["npy16_color"]
    mnt = mounted("npy16_color", "-o", "image_format=npy")
    got = np.load(mnt / "frames" / "000004.npy")
    assert got.dtype == np.uint16
    assert np.array_equal(got, sample.written[4][:, :, ::-1])


@pytest.mark.parametrize("name,options,ext", [("png", (), "png"), ("jpg", ("-o", "image_format=jpg"), "jpg"),
                                              ("bmp", ("-o", "image_format=bmp"), "bmp"),
                                              ("pgm", ("-o", "image_format=pnm"), "pgm")])
def test_original_files_are_served_untouched(samples, mounted, name, options, ext):
    sample = samples[name]
    mnt = mounted(name, *options)
    for i in range(len(sample.numbers)):
        chunk, pos = divmod(i, 5)
        original = (sample.path / f"{chunk:06d}" / f"{pos:06d}.{ext}").read_bytes()
        assert (mnt / "frames" / f"{i:06d}.{ext}").read_bytes() == original, (name, i)
    assert json.loads((mnt / "store.json").read_text())["served"]["original_files"] is True


@pytest.mark.parametrize("fmt", VIDEO_FORMATS)
def test_video_frames_random_and_sequential_are_the_right_frames(samples, mounted, fmt):
    sample = samples[fmt]
    mnt = mounted(fmt)
    n = len(sample.numbers)
    order = list(range(n)) + random.Random(7).sample(range(n), n) + [n - 1, 0, n - 1, 5, 5, 17]
    for i in order:
        got = read_png(mnt / "frames" / f"{i:06d}.png")
        assert got.shape == (120, 160, 3)
        assert barcode(got) == sample.numbers[i], (fmt, i)
        # lossy codec, but the right picture: close to the source (RGB order)
        diff = np.abs(got.astype(int) - sample.written[i][:, :, ::-1].astype(int)).mean()
        assert diff < 12, (fmt, i, diff)
    # colours are not swapped: the top-left mark was written blue (BGR 255,0,0)
    corner = read_png(mnt / "frames" / "000000.png")[4, 4]
    assert corner[2] > 200 and corner[0] < 60


def test_gray_video_store_serves_gray(mounted):
    img = Image.open(mounted("video_gray") / "frames" / "000003.png")
    assert img.mode == "L" and img.size == (160, 120)


def test_parallel_readers_get_right_frames(samples, mounted):
    sample = samples["avc1/mp4"]
    mnt = mounted("avc1/mp4")
    indexes = random.Random(3).choices(range(len(sample.numbers)), k=64)

    def read(i):
        return i, barcode(read_png(mnt / "frames" / f"{i:06d}.png"))

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for i, code in pool.map(read, indexes):
            assert code == sample.numbers[i]


# -- sizes and tools ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ["png", "mjpeg/avi", "jpg", "bayer"])
def test_stat_never_decodes_and_sizes_are_exact(samples, module_mount, name):
    # a fresh mount, so that nothing was decoded before
    mnt = module_mount(samples[name].path)
    listing = subprocess.run(["ls", "-l", str(mnt / "frames"), str(mnt / "by-number")],
                             capture_output=True, text=True, check=True)
    assert listing.stdout.count(".png") == 2 * len(samples[name].numbers)
    sizes = {f: os.stat(mnt / "frames" / f).st_size for f in os.listdir(mnt / "frames")}
    assert frames_decoded(mnt) == 0
    for fname, size in sizes.items():
        data = (mnt / "frames" / fname).read_bytes()
        assert len(data) == size, fname
        assert os.stat(mnt / "frames" / fname).st_blocks == (size + 511) // 512


def test_cp_rsync_tar_copy_everything(samples, mounted, tmp_path):
    mnt = mounted("mjpeg/avi")
    subprocess.run(["cp", "-r", str(mnt), str(tmp_path / "cp")], check=True)
    subprocess.run(["rsync", "-a", f"{mnt}/", str(tmp_path / "rsync")], check=True)
    subprocess.run(["tar", "-cf", str(tmp_path / "all.tar"), "-C", str(mnt), "."], check=True)
    with tarfile.open(tmp_path / "all.tar") as tar:
        members = {m.name.lstrip("./"): m for m in tar.getmembers() if m.isfile()}
    for rel in ["frames/000000.png", "frames/000029.png", "frames.csv", "metadata.yaml", "store.json"]:
        source = (mnt / rel).read_bytes()
        digest = hashlib.sha256(source).hexdigest()
        assert hashlib.sha256((tmp_path / "cp" / rel).read_bytes()).hexdigest() == digest
        assert hashlib.sha256((tmp_path / "rsync" / rel).read_bytes()).hexdigest() == digest
        assert members[rel].size == len(source)
    assert len(os.listdir(tmp_path / "cp" / "frames")) == 30
    assert os.stat(tmp_path / "rsync" / "frames" / "000007.png").st_mtime == os.stat(mnt / "frames" / "000007.png").st_mtime


def test_frames_read_ahead_are_in_the_kernel_before_the_reader_asks(samples, module_mount):
    """A reader going through the frames in order (tar, rsync, cp) finds those read ahead
    already in the kernel's page cache: they cost the daemon no read, but that of the
    last page of every fourth frame (prefetch 8), which moves the read-ahead on."""
    mnt = module_mount(samples["mjpeg/avi"].path, "-o", "prefetch=8")     # fresh: nothing read yet
    frames = sorted(os.listdir(mnt / "frames"))
    # the kernel stores pages only for inodes it holds: O_PATH holds them without an open
    held = [os.open(mnt / "frames" / name, os.O_PATH) for name in frames[:10]]
    try:
        first = [(mnt / "frames" / name).read_bytes() for name in frames[:2]]  # starts the read-ahead
        # prefetch=8: frames 2 to 9
        assert wait_for(lambda: daemon_status(mnt)["stored_ahead"] >= 8), daemon_status(mnt)
        status = (mnt / ".scopefs").read_bytes()       # (its read is counted after it was made)
        ahead = [(mnt / "frames" / name).read_bytes() for name in frames[2:10]]
        after = daemon_status(mnt)
    finally:
        for fd in held:
            os.close(fd)
    # no read reached the daemon but those of its status and of the signposts' last pages
    signposts = sum(len(data) - (len(data) - 1) // mmap.PAGESIZE * mmap.PAGESIZE
                    for i, data in enumerate(ahead, start=2) if i % 4 == 0)
    assert after["bytes_read"] == json.loads(status)["bytes_read"] + len(status) + signposts
    assert after["errors"] == 0
    for i, data in enumerate(first + ahead):
        assert barcode(np.asarray(Image.open(io.BytesIO(data)))) == samples["mjpeg/avi"].numbers[i]
        assert len(data) == os.stat(mnt / "frames" / frames[i]).st_size


def test_frames_read_ahead_reach_a_reader_that_opens_them_by_name(samples, module_mount):
    """A reader that opens frames by name, never listing frames/ (ffmpeg's %06d.png, tar
    -T, a loop over names), finds those read ahead in the kernel's page cache too: the
    kernel knows no inode before its LOOKUP, so the daemon looks each up itself before
    storing it. The frames cost no READ but the signposts' (prefetch 8: every 4th)."""
    mnt = module_mount(samples["mjpeg/avi"].path, "-o", "prefetch=8")     # fresh: nothing read yet
    names = [f"frames/{i:06d}.png" for i in range(10)]
    first = [(mnt / name).read_bytes() for name in names[:2]]             # starts the read-ahead
    assert wait_for(lambda: daemon_status(mnt)["stored_ahead"] >= 8), daemon_status(mnt)   # frames 2 to 9
    before = daemon_status(mnt)                # (a status read's own read is counted after it)
    ahead = [(mnt / name).read_bytes() for name in names[2:]]
    after = daemon_status(mnt)
    signposts = 2                              # frames 4 and 8: their last page
    assert after["read_requests"] - before["read_requests"] == 1 + signposts, (before, after)
    assert after["errors"] == 0 and after["lookups_to_store"] >= 8
    for i, data in enumerate(first + ahead):
        assert barcode(np.asarray(Image.open(io.BytesIO(data)))) == samples["mjpeg/avi"].numbers[i]
        assert len(data) == os.stat(mnt / names[i]).st_size


def test_the_daemons_own_lookup_of_a_frame_read_ahead_takes_no_worker_thread(samples, module_mount):
    """Frames whose size needs an encoding (JPEG) are looked up by the daemon itself to be
    stored (a reader that opens them by name): that LOOKUP is answered on the loop, from
    the size the read-ahead just encoded. In a worker thread it could wait forever: readers'
    LOOKUPs of frames being read ahead take every slot, waiting for the very thread that
    waits for a slot to store its frame."""
    mnt = module_mount(samples["mjpeg/avi"].path, "-o", "prefetch=16", "-o", "image_format=jpg")
    names = [f"frames/{i:06d}.jpg" for i in range(18)]
    for name in names[:2]:                     # starts the read-ahead: frames 2 to 17
        (mnt / name).read_bytes()
    before = daemon_status(mnt)
    wait_for(lambda: daemon_status(mnt)["lookups_to_store"] >= 16)
    after = daemon_status(mnt)
    assert after["lookups_to_store"] == 16, after
    assert after["worker_calls"] - before["worker_calls"] == 0, (before, after)
    assert after["errors"] == 0


def test_a_frame_read_in_small_pieces_costs_one_request(samples, module_mount):
    """A frame the kernel does not have, read in small pieces (tar reads 10 KiB at a time),
    is asked of the daemon in growing pieces by the kernel's read-ahead (16, 32, 64 KiB
    ...), a request each: the daemon stores the rest of the frame in the kernel before it
    answers the first, so the frame costs that one request."""
    mnt = module_mount(samples["mjpeg/avi"].path)
    names = sorted(os.listdir(mnt / "frames"))
    for k in (17, 5, 23):                                  # out of order: no read-ahead
        path = mnt / "frames" / names[k]
        before = daemon_status(mnt)                        # (its own read is counted after it)
        with open(path, "rb", buffering=0) as fh:
            data = b"".join(iter(lambda: fh.read(4096), b""))
        after = daemon_status(mnt)
        assert len(data) == path.stat().st_size > 16384
        assert after["read_requests"] - before["read_requests"] == 2, (k, before, after)
        assert barcode(np.asarray(Image.open(io.BytesIO(data)))) == samples["mjpeg/avi"].numbers[k]
    assert after["frame_rests_offered"] == 3 and after["errors"] == 0


def test_small_files_are_answered_without_a_thread(samples, module_mount):
    """The root's names and its small files (made at mount) are answered from memory: a
    walker that reads every small file costs no worker thread, cold or warm, and so does
    listing the root once frames.csv's size is known."""
    mnt = module_mount(samples["mjpeg/avi"].path)      # fresh: nothing looked up yet
    before = daemon_status(mnt)["worker_calls"]
    for _ in range(2):
        assert json.loads((mnt / "store.json").read_bytes())["frame_count"] == 30
        assert json.loads((mnt / "metadata.json").read_bytes()) is not None
        assert yaml.safe_load((mnt / "metadata.yaml").read_bytes())["__store"]
    assert daemon_status(mnt)["worker_calls"] == before
    os.stat(mnt / "frames.csv")
    before = daemon_status(mnt)["worker_calls"]
    assert len(subprocess.run(["ls", "-l", str(mnt)], capture_output=True, check=True).stdout.splitlines()) > 7
    assert daemon_status(mnt)["worker_calls"] == before


def test_ffmpeg_reads_the_frame_sequence(samples, mounted, tmp_path):
    mnt = mounted("h264/mkv")
    out = subprocess.run(["ffmpeg", "-v", "error", "-i", str(mnt / "frames" / "%06d.png"),
                          "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], capture_output=True, check=True)
    frames = np.frombuffer(out.stdout, np.uint8).reshape(-1, 120, 160, 3)
    assert len(frames) == 30
    assert [barcode(f) for f in frames] == samples["h264/mkv"].numbers


def test_opencv_and_pil_open_frames(mounted):
    mnt = mounted("mjpeg/avi")
    bgr = cv2.imread(str(mnt / "frames" / "000010.png"))
    rgb = np.asarray(Image.open(mnt / "frames" / "000010.png"))
    assert np.array_equal(bgr[:, :, ::-1], rgb)


# -- names ---------------------------------------------------------------------------------

def test_by_number_handles_gaps_wraparound_negatives_and_duplicates(samples, mounted):
    sample = samples["odd_numbers"]
    mnt = mounted("odd_numbers")
    names = os.listdir(mnt / "by-number")
    assert sorted(names) == sorted([
        "-000003.png", "000000.png", "000001.png", "000002.png", "000002.dup1.png", "000002.dup2.png",
        "006050.png", "006055.png", "006056.png"])
    for name in names:
        got = read_png(mnt / "by-number" / name)
        stem = name[:-4]
        number, _, dup = stem.partition(".dup")
        rank = int(dup) if dup else 0
        matches = [i for i, n in enumerate(sample.numbers) if n == int(number)]
        assert np.array_equal(got, sample.expected_rgb(matches[rank])), name
    # same inode as the frames/ entry, and unpadded names work as well
    assert os.stat(mnt / "by-number" / "6055.png").st_ino == os.stat(mnt / "frames" / "000001.png").st_ino
    assert not os.path.exists(mnt / "by-number" / "000002.dup3.png")
    assert not os.path.exists(mnt / "by-number" / "4.png")


def test_at_time_links_to_nearest_frame(samples, mounted):
    mnt = mounted("mjpeg/avi")
    at = mnt / "at-time"
    assert os.readlink(at / f"{T0 + 0.04 * 7 + 0.01:.3f}.png") == "../frames/000007.png"
    assert os.readlink(at / "2023-11-14T22:13:20.4Z.png") == "../frames/000010.png"
    assert os.readlink(at / "2023-11-14T23:13:20.2+01:00.png") == "../frames/000005.png"
    assert os.readlink(at / "0") == "../frames/000000.png"
    assert barcode(read_png(at / "2023-11-14T22:13:20.4Z.png")) == samples["mjpeg/avi"].numbers[10]
    assert not os.path.exists(at / "not-a-time.png")
    assert os.listdir(at) == ["README.txt"]


def test_metadata_files(samples, mounted):
    sample = samples["extra"]
    mnt = mounted("extra")
    assert (mnt / "metadata.yaml").read_bytes() == (sample.path / "metadata.yaml").read_bytes()
    assert json.loads((mnt / "metadata.json").read_text()) == {"genotype": "wt", "experiment": {"arena": 3}}
    summary = json.loads((mnt / "store.json").read_text())
    assert summary["frame_count"] == 12 and summary["served"]["image_format"] == "png"
    rows = list(csv.DictReader(io.StringIO((mnt / "frames.csv").read_text())))
    assert len(rows) == 12
    assert rows[7]["frame_index"] == "7" and rows[7]["frame_number"] == "7"
    assert float(rows[7]["frame_time"]) == sample.times[7]
    assert rows[7]["frame_time_iso"].startswith("2023-11-14T22:13:20.28")
    assert rows[7]["chunk"] == "1" and rows[7]["chunk_position"] == "2"
    records = [json.loads(line) for line in (mnt / "extra.jsonl").read_text().splitlines()]
    assert [r["frame_index"] for r in records] == [0, 2, 4, 6, 8, 10]
    assert records[2]["vec"] == [4, 8] and records[2]["label"] == "f4"
    table = list(csv.DictReader(io.StringIO((mnt / "extra.csv").read_text())))
    assert table[1]["temperature"] == "22.0" and table[1]["vec"] == "[2, 4]"


def test_empty_store_mounts_with_empty_frames(mounted):
    mnt = mounted("empty")
    assert os.listdir(mnt / "frames") == [] and os.listdir(mnt / "by-number") == []
    assert json.loads((mnt / "store.json").read_text())["frame_count"] == 0
    assert not os.path.exists(mnt / "at-time" / "1700000000.png")


def test_mount_is_read_only(mounted):
    mnt = mounted("png")
    with pytest.raises(OSError) as err:
        open(mnt / "frames" / "000000.png", "r+b")
    assert err.value.errno == 30  # EROFS
    with pytest.raises(OSError):
        (mnt / "new.txt").write_text("x")


def test_indexed_mjpeg_reader_gives_the_right_frames(samples, mounted):
    sample = samples["mjpeg/avi"]
    mnt = mounted("mjpeg/avi", "-o", "mjpeg_reader=opencv")
    n = len(sample.numbers)
    for i in random.Random(11).sample(range(n), n) + [3, 3, 29, 0]:
        assert barcode(read_png(mnt / "frames" / f"{i:06d}.png")) == sample.numbers[i]


def test_legacy_motif_store_without_extension(samples, module_mount, tmp_path):
    # Motif wrote class VideoImgStoreFFMPEG, format 'libx264', encoding '' and no extension
    legacy = tmp_path / "motif"
    shutil.copytree(samples["avc1/mp4"].path, legacy)
    meta = yaml.safe_load((legacy / "metadata.yaml").read_text())
    store = meta["__store"]
    store.update({"class": "VideoImgStoreFFMPEG", "format": "libx264", "encoding": ""})
    for key in ("extension", "created_utc", "timezone_local"):
        store.pop(key)
    (legacy / "metadata.yaml").write_text(yaml.safe_dump(meta))
    mnt = module_mount(legacy)
    for i in (0, 13, 29, 2):
        assert barcode(read_png(mnt / "frames" / f"{i:06d}.png")) == samples["avc1/mp4"].numbers[i]
    assert json.loads((mnt / "store.json").read_text())["timezone"] == "UTC"


def test_a_walk_imports_nothing_after_the_mount(samples, mount, monkeypatch):
    """A cold walk (ls -lR, find, du) is answered by code loaded at mount: a module
    imported on its first request is read from disk when the page cache is cold (numpy.ma,
    which np.unique loads on first use, took 30 ms of a 40 ms walk). Python reports each
    import on the daemon's stderr (the log file) with PYTHONPROFILEIMPORTTIME."""
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")
    mnt = mount(samples["extra"].path)                  # extra.jsonl and extra.csv in the root too
    at_mount = mount.log().count("import time:")
    assert at_mount > 0                                 # (the daemon does report imports)
    for walk in (["ls", "-lR", "{}"], ["find", "{}"], ["find", "{}", "-printf", "%s\n"], ["du", "-s", "{}"]):
        subprocess.run([str(mnt) if arg == "{}" else arg for arg in walk], check=True, capture_output=True)
    assert daemon_status(mnt)["errors"] == 0
    late = [line for line in mount.log().splitlines() if "import time:" in line][at_mount:]
    assert late == []


def test_attributes_are_learned_at_mount_and_walks_need_no_thread_for_them(samples, mount):
    """The root's generated sizes (frames.csv, extra.*) and the frames' times are learned
    by a thread of the mount's own (they were most of a cold walk's daemon time): once it
    is done, `ls -l` of the root and `stat` of frames take no worker call."""
    for name in ("extra", "mjpeg/avi"):
        mnt = mount(samples[name].path)
        assert wait_for(lambda: daemon_status(mnt)["attributes_learned"], timeout=30), daemon_status(mnt)
        before = daemon_status(mnt)["worker_calls"]
        listing = subprocess.run(["ls", "-l", str(mnt)], capture_output=True, check=True, text=True).stdout
        assert ("extra.csv" in listing) == (name == "extra")
        sizes = [os.stat(mnt / "frames" / f"{i:06d}.png").st_size for i in (0, 7, len(samples[name].numbers) - 1)]
        assert daemon_status(mnt)["worker_calls"] == before, name
        assert len(set(sizes)) == 1 and sizes[0] == len((mnt / "frames" / "000007.png").read_bytes())


def test_concurrent_readers_of_the_same_frames_read_the_same_bytes(tmp_path, mount):
    """Two `tar`s (sequential readers: the read-ahead runs, and a reader at its heels is
    held for it to lead) and a `cat` loop read the same frames through one mount at once,
    on a fresh mount each round: every reader gets the same bytes, the right frames, and
    neither EIO nor a hang. Two worker threads: held readers and the stores they send
    from workers must never leave a read waiting for a worker that never comes (a short
    `timeout` turns such a wait into EIO)."""
    count = 120
    sample = make_store(tmp_path / "store", "mjpeg/avi", shape=(240, 320, 3), video=True,
                        numbers=range(count), chunksize=40)      # 230 KB frames: PNG from a layout
    for round_ in range(3):
        mnt = mount(sample.path, "-o", "threads=2,timeout=10")
        names = sorted(os.listdir(mnt / "frames"))
        tars = [subprocess.Popen(["tar", "-cf", str(tmp_path / f"{round_}-{k}.tar"), "-C", str(mnt), "frames"],
                                 stderr=subprocess.PIPE) for k in range(2)]

        def cat_loop():
            return {name: subprocess.run(["cat", str(mnt / "frames" / name)], capture_output=True,
                                         check=True, timeout=60).stdout for name in names}
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            catted = pool.submit(cat_loop)
            for tar in tars:
                _, err = tar.communicate(timeout=120)
                assert tar.returncode == 0, err
            catted = catted.result(timeout=120)
        for k in range(2):
            with tarfile.open(tmp_path / f"{round_}-{k}.tar") as archive:
                tarred = {m.name.removeprefix("frames/"): archive.extractfile(m).read()
                          for m in archive.getmembers() if m.isfile()}
            assert tarred.keys() == catted.keys() and all(tarred[name] == catted[name] for name in names)
        sizes = {name: os.stat(mnt / "frames" / name).st_size for name in names}
        assert all(len(catted[name]) == sizes[name] for name in names)
        assert [barcode(read_png(io.BytesIO(catted[name]))) for name in names] == sample.numbers
        if round_:
            assert catted == first
        first = catted
        status = daemon_status(mnt)
        assert status["errors"] == 0 and status["stored_ahead"] > 0, status    # (the read-ahead ran)
