"""Damaged stores: one clear line at mount time, or EIO for the damaged frames only."""
from __future__ import annotations

import errno
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import MountFailed, alive, daemon_pid
from stores import barcode, make_store


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    base = tmp_path_factory.mktemp("good")
    return {
        "npy": make_store(base / "npy", "npy", shape=(48, 64), numbers=range(15)),
        "png": make_store(base / "png", "png", shape=(48, 64, 3), numbers=range(15)),
        "avi": make_store(base / "avi", "mjpeg/avi", shape=(120, 160, 3), video=True, numbers=range(15)),
    }


@pytest.fixture
def copy_of(good, tmp_path):
    def copy(name):
        dest = tmp_path / f"copy_{name}"
        shutil.copytree(good[name].path, dest)
        return dest
    return copy


def assert_refused(mount, source, *needles):
    with pytest.raises(MountFailed) as err:
        mount(source)
    lines = err.value.stderr.strip().splitlines()
    assert len(lines) == 1, err.value.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert err.value.returncode != 0
    assert not any(os.path.ismount(p) for p in mount.base.glob("mnt*"))
    return lines[0]


def read_error(path) -> int:
    with pytest.raises(OSError) as err:
        with open(path, "rb") as fh:
            fh.read()
    return err.value.errno


def test_corrupt_metadata_yaml(copy_of, mount):
    store = copy_of("npy")
    (store / "metadata.yaml").write_text("__store: {class: DirectoryImgStore\n  format: [npy\n")
    assert_refused(mount, store, "metadata.yaml", "not valid YAML")


def test_metadata_without_store_section(copy_of, mount):
    store = copy_of("npy")
    (store / "metadata.yaml").write_text("genotype: wt\n")
    assert_refused(mount, store, "cannot tell what kind of source")
    with pytest.raises(MountFailed) as err:
        mount(store, "-t", "imgstore")
    assert "__store" in err.value.stderr and len(err.value.stderr.strip().splitlines()) == 1


def test_unsupported_class_and_version(copy_of, mount):
    store = copy_of("npy")
    text = (store / "metadata.yaml").read_text()
    (store / "metadata.yaml").write_text(text.replace("version: 2", "version: 3"))
    assert_refused(mount, store, "version 3")


@pytest.mark.parametrize("cut", [0, 10, 200, -30])
@pytest.mark.daemon_log(r"skipping chunk 1: .*chunk index is unreadable",
                        reason="skip_bad_chunks warns of what it skips")
def test_truncated_index_is_refused_or_skipped_on_request(copy_of, mount, cut):
    store = copy_of("npy")
    index = store / "000001" / "index.npz"
    data = index.read_bytes()
    index.write_bytes(data[:cut])
    assert_refused(mount, store, "000001", "index")
    mnt = mount(store, "-o", "skip_bad_chunks")
    assert len(os.listdir(mnt / "frames")) == 10       # chunks 0 and 2 still there
    assert Image.open(mnt / "frames" / "000009.png").size == (64, 48)


def test_non_numeric_chunk_name(copy_of, mount):
    store = copy_of("npy")
    (store / "notes").mkdir()
    assert_refused(mount, store, "notes", "not a number")
    avi = copy_of("avi")
    shutil.copy(avi / "000000.avi", avi / "preview.avi")
    assert_refused(mount, avi, "preview.avi", "not a number")


def test_missing_metadata_and_unknown_source(mount, tmp_path):
    (tmp_path / "plain").mkdir()
    assert_refused(mount, tmp_path / "plain", "cannot tell what kind of source")
    with pytest.raises(MountFailed) as err:
        mount(tmp_path / "plain", "-t", "imgstore")
    assert "metadata.yaml" in err.value.stderr


def test_bad_options_are_refused(good, mount):
    with pytest.raises(MountFailed) as err:
        mount(good["npy"].path, "-o", "image_fromat=tiff")
    assert "unknown option" in err.value.stderr and "image_fromat" in err.value.stderr
    with pytest.raises(MountFailed) as err:
        mount(good["npy"].path, "-o", "image_format=gif")
    assert "gif" in err.value.stderr
    with pytest.raises(MountFailed) as err:
        mount(make_store(mount.base / "f16", "npy", shape=(8, 8), dtype=np.uint16).path, "-o", "image_format=bmp")
    assert "bmp cannot hold uint16" in err.value.stderr


@pytest.mark.daemon_log(r"frame \d+: .*OpenCV cannot open this video chunk", reason="each failed read is logged")
def test_truncated_video_chunk_fails_only_its_frames(copy_of, mount, good):
    store = copy_of("avi")
    chunk = store / "000001.avi"
    chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 3])
    mnt = mount(store)
    failed = []
    for i in range(15):
        path = mnt / "frames" / f"{i:06d}.png"
        assert path.stat().st_size > 0              # stat still works without decoding
        try:
            got = np.asarray(Image.open(path))
        except OSError as exc:
            assert exc.errno == errno.EIO
            failed.append(i)
            continue
        assert barcode(got) == good["avi"].numbers[i]
    assert failed and set(failed) <= set(range(5, 10))
    assert alive(daemon_pid(mnt))
    assert "frame" in mount.log() and "Traceback" not in mount.log()


@pytest.mark.daemon_log(r"frame 11: .*video chunk is missing", reason="each failed read is logged")
def test_missing_video_chunk_fails_only_its_frames(copy_of, mount):
    store = copy_of("avi")
    (store / "000002.avi").unlink()
    mnt = mount(store)
    assert len(os.listdir(mnt / "frames")) == 15
    assert read_error(mnt / "frames" / "000011.png") == errno.EIO
    assert read_error(mnt / "frames" / "000011.png") == errno.EIO     # and again, no crash
    assert Image.open(mnt / "frames" / "000004.png").size == (160, 120)
    assert "missing" in mount.log()


@pytest.mark.daemon_log(r"frame 2: .*not a decodable png image", r"000003.png'$",
                        reason="each failed read, and the frame a listing leaves out, is logged")
def test_corrupt_or_missing_frame_files(copy_of, mount):
    store = copy_of("png")
    (store / "000000" / "000002.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (store / "000001" / "000003.png").unlink()
    # re-encoded (tiff): the broken frame gives EIO, the missing one EIO, others are fine
    mnt = mount(store, "-o", "image_format=tiff")
    assert read_error(mnt / "frames" / "000002.tif") == errno.EIO
    assert read_error(mnt / "frames" / "000008.tif") == errno.EIO
    assert len((mnt / "frames" / "000003.tif").read_bytes()) == (mnt / "frames" / "000003.tif").stat().st_size
    # passed through: the garbage file is served as it is (it is the original), the
    # missing one is not listed and cannot be opened
    mnt2 = mount(store)
    names = os.listdir(mnt2 / "frames")
    assert "000008.png" not in names and "000007.png" in names
    assert (mnt2 / "frames" / "000002.png").read_bytes() == (store / "000000" / "000002.png").read_bytes()
    assert alive(daemon_pid(mnt)) and alive(daemon_pid(mnt2))
