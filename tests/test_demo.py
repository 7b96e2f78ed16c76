"""`./dev demo`, the first command a new user runs, and its built-in samples: run for real
(in a scratch folder) so that neither can rot unnoticed."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, cleanup_mount, daemon_pid

from scopefs.backends import source_kind
from scopefs.backends.kernel import mounts
from scopefs.formats.samples import make_all


def mounts_under(path: Path) -> list[str]:
    return [m.point for m in mounts() if m.point.startswith(f"{path}/")]


@pytest.fixture
def run_demo(tmp_path):
    """./dev demo with this test's venv, in tmp_path/demo; whatever it leaves mounted is
    unmounted afterwards."""
    def run(*args: str, path: str | None = None) -> subprocess.CompletedProcess:
        env = dict(os.environ, SCOPEFS_VENV=str(Path(sys.executable).parent.parent))
        if path is not None:
            env["PATH"] = path
        return subprocess.run([str(ROOT / "dev"), "demo", "--dir", str(tmp_path / "demo"), *args],
                              capture_output=True, text=True, timeout=300, env=env)
    try:
        yield run
    finally:
        for point in reversed(mounts_under(tmp_path)):
            cleanup_mount(Path(point), daemon_pid(Path(point)))


def test_samples_are_each_detected_as_their_kind(tmp_path):
    sources = make_all(str(tmp_path / "samples"), frames=10)
    assert {kind: source_kind(source) for kind, source in sources.items()} == {kind: kind for kind in sources}


def test_demo_shows_every_kind_and_unmounts_everything(run_demo, tmp_path):
    result = run_demo()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    out = result.stdout
    assert "stream|width=320|height=240|pix_fmt=rgb24" in out                     # imgstore, ffprobe
    assert "3 entries {'image': 'plate.png', 'reviewed': True}" in out             # .iid written back
    assert "000000-nucleus-a" in out.split("cells.iid.view", 1)[1]               # grafted .iid in FSDB
    assert '"file": "3.png"' in out                                              # FSDB write landed
    assert "tomogram (32, 32, 32) float32" in out and "10.0,250.0,30.0" in out   # copick, overlay wins
    overlay = tmp_path / "demo" / "samples" / "copick" / "overlay" / "ExperimentRuns" / "TS_001"
    assert (overlay / "Picks" / "demo_1_ribosome.json").exists()
    assert (overlay / "Meshes" / ".wh.curator_1_membrane.glb").exists()
    assert mounts_under(tmp_path) == []


def test_demo_keep_leaves_all_four_mounted_and_says_how_to_unmount(run_demo, tmp_path):
    result = run_demo("--keep")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    mnt = tmp_path / "demo" / "mnt"
    assert sorted(mounts_under(tmp_path)) == sorted(str(mnt / name) for name in ("imgstore", "cells", "plantdb",
                                                                                 "copick"))
    assert "scopefs umount" in result.stdout.rsplit("left mounted", 1)[1]
    again = run_demo()                                     # a second run first clears what the first left
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr
    assert mounts_under(tmp_path) == []


def test_demo_that_fails_half_way_still_unmounts(run_demo, tmp_path):
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    (stubs / "ffprobe").write_text("#!/bin/sh\necho 'ffprobe: broken on purpose' >&2\nexit 1\n")
    (stubs / "ffprobe").chmod(0o755)
    result = run_demo(path=f"{stubs}:{os.environ['PATH']}")
    assert result.returncode != 0 and "broken on purpose" in result.stderr
    assert "unmounted the demo's mounts" in result.stdout
    assert mounts_under(tmp_path) == []


#: modules a mount of each kind must not load at start-up (they belong to other backends,
#: or to views made on first use: copick's previews and meshes, remote roots)
NOT_NEEDED = {"imgstore": ["fsspec", "trimesh", "zarr"], "iid": ["fsspec", "trimesh", "yaml", "zarr"],
              "fsdb": ["cv2", "fsspec", "numpy", "trimesh", "yaml", "zarr"],
              # copick's MRC and picks views (formats/mrc.py, picks.py) are numpy arrays; the
              # libraries its views write with are imported once a view is made, not at open
              "copick": ["cv2", "dynamotable", "emfile", "fsspec", "mrcfile", "pandas", "scipy", "starfile",
                         "trimesh", "yaml", "zarr"]}


def test_opening_a_source_loads_only_what_its_backend_needs(tmp_path):
    sources = make_all(str(tmp_path / "samples"), frames=10)
    for kind, source in sources.items():
        program = f"""
import sys
from scopefs.backends import open_tree
from scopefs.backends.options import Options
tree = open_tree({kind!r}, {source!r}, Options({{}}), mountpoint={str(tmp_path)!r})
tree.close()
print(" ".join(sorted(m for m in {NOT_NEEDED[kind]!r} if m in sys.modules)), flush=True)
import os; os._exit(0)      # what is asked is above; a native pool torn down at exit aborted once in ~50 runs
"""
        result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == [], kind
