"""A real file manager on real mounts: PCManFM under Xvfb, in icon view, shows the
thumbnails of frames, masks and an overview, the images of an FSDB fileset and copick's
tomogram previews, with no error window, and stays responsive.

A thumbnail counts as shown when the picture the mount serves, scaled to the icon size,
is found in a screenshot (normalised cross-correlation); PCManFM's generic image icon
scores about 0.4 against these pictures, a thumbnail about 1. Skipped only where Xvfb,
PCManFM or xdotool are not installed or Xvfb cannot start (./dev setup installs them).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import desktop
import walk_samples
from conftest import daemon_status
from scopefs.formats.iid import IIDFile
from stores import make_store

pytestmark = pytest.mark.skipif(desktop.missing() is not None, reason=str(desktop.missing()))

#: a thumbnail found in a screenshot scores above this (the generic icon: about 0.4)
SHOWN = 0.85
FRAMES = 300


@pytest.fixture(scope="module")
def screen(tmp_path_factory):
    try:
        session = desktop.Desktop(tmp_path_factory.mktemp("desktop")).__enter__()
    except (TimeoutError, RuntimeError) as exc:
        pytest.skip(f"Xvfb cannot run here: {exc}")
    try:
        yield session
    finally:
        session.__exit__()


@pytest.fixture
def file_manager(screen):
    """Opens folders in PCManFM; every window it opened is closed at teardown."""
    opened: list[desktop.FileManager] = []

    def open_folder(folder: Path) -> desktop.FileManager:
        fm = screen.open(folder)
        opened.append(fm)
        fm.wait_window(timeout=20)
        return fm

    try:
        yield open_folder
    finally:
        for fm in opened:
            fm.close()


def picture(path: Path) -> Image.Image:
    """An image read whole (no file left open on the mount)."""
    with Image.open(path) as image:
        return image.convert("RGB")


def wait_shown(screen: desktop.Desktop, picture: Image.Image, timeout: float = 30) -> float:
    """Wait (bounded) until `picture` shows as a thumbnail; its best score."""
    deadline = time.monotonic() + timeout
    while True:
        score = desktop.picture_score(screen.screenshot(), picture)
        if score >= SHOWN or time.monotonic() > deadline:
            return score
        time.sleep(0.3)


def assert_healthy(fm: desktop.FileManager, mountpoint: Path, log: str) -> None:
    """One window, the folder's (no error dialog), the file manager alive, the daemon
    without errors or tracebacks."""
    assert fm.alive()
    assert [title for _, title in fm.windows()] == [fm.folder.name]
    assert daemon_status(mountpoint)["errors"] == 0
    assert "Traceback" not in log


def test_frames_show_as_thumbnails(tmp_path, mount, screen, file_manager):
    make_store(tmp_path / "store", "mjpeg/avi", shape=(120, 160, 3), numbers=range(FRAMES), chunksize=100,
               video=True)
    mnt = mount(tmp_path / "store")
    first, last = (picture(mnt / "frames" / f"{i:06d}.png") for i in (0, FRAMES - 1))

    fm = file_manager(mnt / "frames")
    assert wait_shown(screen, first) >= SHOWN
    # the window answers keys: End scrolls to the last frame, whose thumbnail is drawn
    screen.xdotool("windowfocus", "--sync", fm.wait_window(timeout=5))
    screen.xdotool("key", "End")
    assert wait_shown(screen, last) >= SHOWN
    assert_healthy(fm, mnt, mount.log())


def iid_sample(path: Path, entries: int = 12) -> Path:
    """Disks and rings 24 to 60 px a side, spread over a 400 x 400 plane."""
    f = IIDFile()
    for i in range(entries):
        h, w = 24 + (i * 7) % 37, 24 + (i * 11) % 37
        yy, xx = np.mgrid[:h, :w]
        radius = ((yy - h / 2) / h) ** 2 + ((xx - w / 2) / w) ** 2
        mask = radius < 0.2 if i % 2 else (radius < 0.22) & (radius > 0.1)
        r, c = (i * 97) % 340, (i * 53) % 340
        f.add(mask, (r, c, r + h, c + w), address=f"cell-{i}".encode(), groups=("all",))
    f.meta = {"image": "plane.tif"}
    f.save(str(path))
    return path


def test_iid_overview_and_masks_show_as_thumbnails(tmp_path, mount, screen, file_manager):
    mnt = mount(iid_sample(tmp_path / "cells.iid"))
    overview = picture(mnt / "overview.png")
    fm = file_manager(mnt)
    assert wait_shown(screen, overview) >= SHOWN
    assert_healthy(fm, mnt, mount.log())
    fm.close()

    entry = mnt / "000003-cell-3"
    fm = file_manager(entry)
    assert wait_shown(screen, picture(entry / "mask.png")) >= SHOWN
    assert_healthy(fm, mnt, mount.log())


def test_fsdb_fileset_images_show_as_thumbnails(tmp_path, mount, screen, file_manager):
    mnt = mount(walk_samples.fsdb_images(tmp_path / "db", 6, (96, 128, 3)))
    fileset = mnt / "plant_001" / "images"
    fm = file_manager(fileset)
    for name in ("00000.png", "00005.png"):
        assert wait_shown(screen, picture(fileset / name)) >= SHOWN, name
    assert_healthy(fm, mnt, mount.log())


def test_copick_tomogram_previews_show_as_thumbnails(tmp_path, mount, screen, file_manager):
    static = walk_samples.copick_tomograms(tmp_path / "static", 1)
    (tmp_path / "overlay").mkdir()
    mnt = mount(static, "-t", "copick", "-o", f"overlay={tmp_path / 'overlay'}")
    folder = mnt / "ExperimentRuns" / "TS_000" / "VoxelSpacing10.000"
    fm = file_manager(folder)
    for name in ("wbp.png", "denoised.png"):
        assert wait_shown(screen, picture(folder / name)) >= SHOWN, name
    assert_healthy(fm, mnt, mount.log())
