"""copick roots on a real S3 server (SeaweedFS on loopback): static on S3 with a local
overlay, and both on S3; the static bucket is never written."""
from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import time

import mrcfile
import numpy as np
import pytest

from conftest import daemon_status
from scopefs.backends.overlay import FETCH_BLOCK
from s3server import SeaweedS3, s3  # noqa: F401 (a fixture)
from test_copick_formats import chunks_decoded, volume_of, write_volume
from upstream import run_upstream

pytestmark = pytest.mark.upstream


def bucket_state(fs, bucket: str) -> dict:
    return {path: fs.cat(path) for path in sorted(fs.find(bucket))}


@pytest.fixture(scope="module")
def static_bucket(s3):
    fs = s3.filesystem()
    fs.mkdir("static")
    fs.pipe("static/run1/Picks/a_1_ribosome.json", b'{"static": 1}')
    fs.pipe("static/run1/Picks/both.json", b'{"static": 2}')
    fs.pipe("static/run1/tomo/chunk", os.urandom(3 << 20))
    fs.pipe("static/only_static.txt", b"static text\n")
    before = bucket_state(fs, "static")
    yield "static"
    assert bucket_state(s3.filesystem(), "static") == before      # never written


def project(tmp_path, s3, static_url, overlay_url, overlay_args=None):
    path = tmp_path / "project.json"
    path.write_text(json.dumps({
        "config_type": "filesystem", "name": "s3 test", "pickable_objects": [
            {"name": "ribosome", "is_particle": True, "label": 1}],
        "static_root": static_url, "static_fs_args": s3.fs_args,
        "overlay_root": overlay_url, "overlay_fs_args": overlay_args or {"auto_mkdir": True}}))
    return path


def test_s3_static_with_local_overlay(s3, static_bucket, tmp_path, mount):
    overlay = tmp_path / "overlay"
    (overlay / "run1" / "Picks").mkdir(parents=True)
    (overlay / "run1" / "Picks" / "both.json").write_text('{"overlay": 2}')
    mnt = mount(project(tmp_path, s3, "s3://static", f"local://{overlay}"))
    assert sorted(os.listdir(mnt)) == ["copick_config.json", "only_static.txt", "run1"]
    assert (mnt / "run1" / "Picks" / "both.json").read_text() == '{"overlay": 2}'
    chunk = s3.filesystem().cat("static/run1/tomo/chunk")
    assert (mnt / "run1" / "tomo" / "chunk").read_bytes() == chunk
    with open(mnt / "run1" / "tomo" / "chunk", "rb") as fh:          # ranged reads
        fh.seek(1 << 20)
        assert fh.read(100) == chunk[1 << 20:(1 << 20) + 100]
    with open(mnt / "only_static.txt", "a") as fh:
        fh.write("more\n")
    assert (overlay / "only_static.txt").read_text() == "static text\nmore\n"
    os.unlink(mnt / "run1" / "Picks" / "a_1_ribosome.json")
    assert (overlay / "run1" / "Picks" / ".wh.a_1_ribosome.json").exists()
    assert "a_1_ribosome.json" not in os.listdir(mnt / "run1" / "Picks")
    with pytest.raises(OSError) as err:
        os.rename(mnt / "run1", mnt / "run2")
    assert err.value.errno == errno.EXDEV


def test_both_roots_on_s3_and_upload_errors_reach_the_writer(s3, static_bucket, tmp_path, mount):
    fs = s3.filesystem()
    fs.mkdir("overlay-a")
    mnt = mount(project(tmp_path, s3, "s3://static", "s3://overlay-a", s3.fs_args))
    (mnt / "run1" / "Picks" / "new_1_ribosome.json").write_text('{"new": 1}')
    assert fs.cat("overlay-a/run1/Picks/new_1_ribosome.json") == b'{"new": 1}'
    with open(mnt / "only_static.txt", "r+") as fh:                  # copy-up into the bucket
        fh.write("STATIC")
    assert fs.cat("overlay-a/only_static.txt") == b"STATIC text\n"
    os.unlink(mnt / "run1" / "Picks" / "a_1_ribosome.json")
    assert fs.exists("overlay-a/run1/Picks/.wh.a_1_ribosome.json")
    os.mkdir(mnt / "empty")
    assert os.listdir(mnt / "empty") == [] and "empty" in os.listdir(mnt)
    os.rmdir(mnt / "empty")
    assert "empty" not in os.listdir(mnt)
    subprocess.run(["cp", "-r", str(mnt / "run1"), str(tmp_path / "copied")], check=True)
    assert (tmp_path / "copied" / "tomo" / "chunk").read_bytes() == fs.cat("static/run1/tomo/chunk")


@pytest.mark.daemon_log(r"upload of late\.txt failed", reason="the writer's EIO is logged with its cause")
def test_a_failed_upload_is_the_writers_eio(tmp_path, mount):
    server = SeaweedS3(tmp_path / "weed")
    try:
        fs = server.filesystem()
        fs.mkdir("static")
        fs.pipe("static/a.txt", b"a")
        fs.mkdir("overlay")
        mnt = mount(project(tmp_path, server, "s3://static", "s3://overlay", server.fs_args), "-o", "timeout=20")
        fh = open(mnt / "late.txt", "w")
        fh.write("written while the server was up")
        server.stop()                                                    # the S3 server goes away
        started = time.monotonic()
        with pytest.raises(OSError) as err:
            fh.close()
        assert err.value.errno == errno.EIO and time.monotonic() - started < 30
        assert "late.txt" in mount.log()
        assert (mnt / "copick_config.json").exists()                     # the mount still answers
    finally:
        server.stop()


def test_copick_reads_an_s3_static_root(s3, tmp_path, mount):
    fs = s3.filesystem()
    local_static, overlay = tmp_path / "static", tmp_path / "overlay"
    local_static.mkdir()
    overlay.mkdir()
    run_upstream("copick", "upstream_copick.py", "make", str(local_static), str(overlay))
    fs.put(str(local_static) + "/", "copick-static/", recursive=True)
    objects = json.loads((tmp_path / "static_only.json").read_text())["pickable_objects"]
    config = project(tmp_path, s3, "s3://copick-static", f"local://{overlay}")
    doc = json.loads(config.read_text())
    doc["pickable_objects"] = objects
    config.write_text(json.dumps(doc))
    mnt = mount(config)
    out = json.loads(run_upstream("copick", "upstream_copick.py", "use", str(mnt / "copick_config.json"))
                     .strip().splitlines()[-1])
    assert out["tomogram_sum"] == float(sum(range(32 ** 3)))
    assert out["picks"] == [["curator", "1", "ribosome", 3]]
    assert (overlay / "ExperimentRuns" / "TS_001" / "Picks" / "annotator_7_proteasome.json").exists()
    preview = (mnt / "ExperimentRuns" / "TS_001" / "VoxelSpacing10.000" / "wbp.png").read_bytes()
    assert preview[:8] == b"\x89PNG\r\n\x1a\n"                    # made from the S3 static root


def test_mrc_views_of_an_s3_static_root(s3, tmp_path, mount):
    """A tomogram in an S3 bucket reads through its MRC view (zarr through the root's own
    reads) like from zarr."""
    data = volume_of("float32")
    local = tmp_path / "zarr" / "wbp.zarr"
    write_volume(local, data, levels=2)
    fs = s3.filesystem()
    fs.mkdir("mrcstatic")
    fs.put(str(local), "mrcstatic/ExperimentRuns/TS_001/VoxelSpacing10.000/", recursive=True)
    (tmp_path / "overlay").mkdir()
    config = tmp_path / "project.json"
    config.write_text(json.dumps({"config_type": "filesystem", "name": "s3", "pickable_objects": [],
                                  "static_root": "s3://mrcstatic", "static_fs_args": s3.fs_args,
                                  "overlay_root": f"local://{tmp_path / 'overlay'}"}))
    mnt = mount(config)
    spacing = mnt / "ExperimentRuns" / "TS_001" / "VoxelSpacing10.000"
    assert sorted(p.name for p in spacing.glob("*.mrc")) == ["wbp.bin2.mrc", "wbp.mrc"]
    assert chunks_decoded(mnt) == 0
    for name, expected in (("wbp.mrc", data), ("wbp.bin2.mrc", data[::2, ::2, ::2])):
        assert mrcfile.validate(str(spacing / name), print_file=io.StringIO())
        with mrcfile.mmap(str(spacing / name), mode="r") as mrc:
            assert np.array_equal(mrc.data, expected)


@pytest.mark.daemon_log(r"not an importable picks file", reason="a refused import is logged with its reason")
def test_picks_imported_into_an_s3_overlay(s3, tmp_path, mount):
    """A picks CSV copied into VoxelSpacing<vs>/ of a mount whose overlay is a bucket
    becomes the copick picks JSON there (one object put); a bad one writes nothing."""
    fs = s3.filesystem()
    fs.mkdir("importstatic")
    fs.mkdir("importoverlay")
    fs.pipe("importstatic/ExperimentRuns/TS_001/VoxelSpacing10.000/.meta", b"meta")
    mnt = mount(project(tmp_path, s3, "s3://importstatic", "s3://importoverlay", s3.fs_args))
    spacing = mnt / "ExperimentRuns" / "TS_001" / "VoxelSpacing10.000"
    (spacing / "tester_1_ribosome.csv").write_text("run_name,x,y,z,score\nTS_001,10.0,20.0,30.0,0.5\n")
    doc = json.loads(fs.cat("importoverlay/ExperimentRuns/TS_001/Picks/tester_1_ribosome.json"))
    assert doc["points"][0]["location"] == {"x": 10.0, "y": 20.0, "z": 30.0} and doc["points"][0]["score"] == 0.5
    with pytest.raises(OSError):
        (spacing / "tester_2_ribosome.csv").write_text("run_name,x\nTS_009,1\n")
    assert not fs.exists("importoverlay/ExperimentRuns/TS_001/Picks/tester_2_ribosome.json")


def test_a_listed_small_object_costs_one_get(s3, tmp_path, mount):
    """Reading a small object whose size a listing gave costs the server one GET: no
    HEAD, no second LIST, not a request per kernel read."""
    fs = s3.filesystem()
    fs.mkdir("small")
    docs = {f"small/picks/p{i}.json": json.dumps({"i": i}).ljust(200).encode() for i in range(5)}
    fs.pipe(docs)
    (tmp_path / "overlay").mkdir()
    mnt = mount(project(tmp_path, s3, "s3://small", f"local://{tmp_path / 'overlay'}"))
    assert sorted(os.listdir(mnt / "picks")) == [f"p{i}.json" for i in range(5)]
    before = daemon_status(mnt)["static_s3_requests"]
    for i in range(5):
        with open(mnt / "picks" / f"p{i}.json", "rb", buffering=0) as fh:
            assert fh.read(1 << 20) == docs[f"small/picks/p{i}.json"] and fh.read(1 << 20) == b""
    after = daemon_status(mnt)["static_s3_requests"]
    assert {kind: after[kind] - before[kind] for kind in after} == {"list": 0, "head": 0, "get": 5, "other": 0}


def test_a_reader_that_does_not_read_on_costs_one_get(s3, tmp_path, mount):
    """A header read of a big object costs one GET of the block it falls in: no parts
    fetched side by side and nothing fetched ahead until the reader reads on."""
    fs = s3.filesystem()
    fs.mkdir("big")
    data = os.urandom(FETCH_BLOCK + (1 << 20))
    fs.pipe("big/run/tomo.bin", data)
    (tmp_path / "overlay").mkdir()
    mnt = mount(project(tmp_path, s3, "s3://big", f"local://{tmp_path / 'overlay'}"))
    assert os.listdir(mnt / "run") == ["tomo.bin"]
    before = daemon_status(mnt)["static_s3_requests"]["get"]
    with open(mnt / "run" / "tomo.bin", "rb", buffering=0) as fh:
        assert fh.read(4096) == data[:4096]
    time.sleep(0.5)                                                  # (a fetch ahead would be done)
    assert daemon_status(mnt)["static_s3_requests"]["get"] - before == 1
    assert (mnt / "run" / "tomo.bin").read_bytes() == data           # reading on still reads it all
