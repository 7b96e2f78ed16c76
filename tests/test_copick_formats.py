"""copick data in the formats of cryo-ET tools: MRC views of tomograms and segmentations
(read by byte ranges, checked with mrcfile), compared with zarr and with copick 1.31's own
exporter."""
from __future__ import annotations

import errno
import io
import json
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import mrcfile
import numpy as np
import pytest
import zarr

from conftest import cleanup_mount, daemon_pid, daemon_status, made_ahead, patient
from python_calls import python_calls
from upstream import run_upstream
from scopefs.backends.cache import ByteCache
from scopefs.backends.kept_sizes import RACY_S
from scopefs.formats import picks as picks_format
from scopefs.formats.mrc import HEADER_BYTES, Counters, MrcVolume, mrc_dtype, mrc_header

SHAPE = (20, 30, 44)
CHUNKS = (7, 16, 13)                # divides no axis of SHAPE
DTYPES = ["float32", "int8", "int16", "uint16", "float16"]


def write_volume(path: Path, data: np.ndarray, chunks=CHUNKS, levels: int = 1, voxel_size: float = 10.0) -> None:
    """An OME-Zarr multiscale image as copick 1.x writes it (zarr v2, levels 0, 1, ... binned 2x)."""
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    datasets = []
    for index in range(levels):
        level = data[::2 ** index, ::2 ** index, ::2 ** index]
        array = group.create_array(str(index), shape=level.shape, dtype=level.dtype, chunks=chunks,
                                   chunk_key_encoding={"name": "v2", "separator": "/"})
        array[:] = level
        datasets.append({"path": str(index), "coordinateTransformations": [
            {"type": "scale", "scale": [voxel_size * 2 ** index] * 3}]})
    group.attrs["multiscales"] = [{"version": "0.4", "datasets": datasets,
                                   "axes": [{"name": a, "type": "space", "unit": "angstrom"} for a in "zyx"]}]


def volume_of(dtype: str) -> np.ndarray:
    values = np.random.default_rng(7).normal(0, 40, SHAPE)
    info = np.finfo(dtype) if np.dtype(dtype).kind == "f" else np.iinfo(dtype)
    return np.clip(values, max(info.min, -1000), min(info.max, 1000)).astype(dtype)


@pytest.fixture(scope="module")
def project(tmp_path_factory, module_mount):
    """A static root with a tomogram per dtype (3 levels for float32), a uint8 segmentation
    and a multilabel int16 one, mounted once."""
    base = tmp_path_factory.mktemp("formats")
    run = base / "static" / "ExperimentRuns" / "TS_001"
    volumes = {}
    for dtype in DTYPES:
        volumes[f"VoxelSpacing10.000/{dtype}.zarr"] = volume_of(dtype)
        write_volume(run / "VoxelSpacing10.000" / f"{dtype}.zarr", volumes[f"VoxelSpacing10.000/{dtype}.zarr"],
                     levels=3 if dtype == "float32" else 1)
    mask = (volume_of("float32") > 0).astype(np.uint8)
    labels = (np.arange(np.prod(SHAPE)) % 300).reshape(SHAPE).astype(np.int16)
    for name, data in (("10.000_curator_1_membrane.zarr", mask), ("10.000_curator_1_organelles-multilabel.zarr", labels)):
        volumes[f"Segmentations/{name}"] = data
        write_volume(run / "Segmentations" / name, data)
    (base / "overlay").mkdir()
    mnt = module_mount(base / "static", "-t", "copick", "-o", f"overlay={base / 'overlay'}")
    return mnt, mnt / "ExperimentRuns" / "TS_001", volumes


def chunks_decoded(mnt: Path) -> int:
    return daemon_status(mnt)["mrc_views"]["chunks_decoded"]


def test_listing_stat_find_du_read_no_voxels(project):
    mnt, run, _ = project
    assert chunks_decoded(mnt) == 0
    views = sorted(p.name for p in (run / "VoxelSpacing10.000").iterdir() if p.suffix == ".mrc")
    assert views == sorted([f"{d}.mrc" for d in DTYPES] + ["float32.bin2.mrc", "float32.bin4.mrc"])
    assert sorted(p.name for p in (run / "Segmentations").glob("*.mrc")) == [
        "10.000_curator_1_membrane.mrc", "10.000_curator_1_organelles-multilabel.mrc"]
    sizes = {p.name: p.stat().st_size for p in (run / "VoxelSpacing10.000").glob("*.mrc")}
    assert sizes["float32.mrc"] == HEADER_BYTES + np.prod(SHAPE) * 4          # exact, from metadata only
    assert sizes["float32.bin2.mrc"] == HEADER_BYTES + 10 * 15 * 22 * 4
    assert sizes["int8.mrc"] == HEADER_BYTES + np.prod(SHAPE)
    for walk in (["find", str(mnt), "-ls"], ["du", "-s", str(mnt)], ["ls", "-lR", str(mnt)]):
        subprocess.run(walk, check=True, capture_output=True)
    assert chunks_decoded(mnt) == 0
    with open(run / "VoxelSpacing10.000" / "float32.mrc", "rb") as fh:
        fh.seek(HEADER_BYTES + 5000)
        fh.read(100)
    assert chunks_decoded(mnt) > 0


@pytest.mark.parametrize("view", [f"VoxelSpacing10.000/{d}" for d in DTYPES] + [
    "VoxelSpacing10.000/float32.bin2", "VoxelSpacing10.000/float32.bin4",
    "Segmentations/10.000_curator_1_membrane", "Segmentations/10.000_curator_1_organelles-multilabel"])
def test_mrc_view_validates_and_reads_like_zarr(project, view):
    _, run, volumes = project
    stem, _, binned = view.partition(".bin")
    binning = int(binned or 1)
    expected = volumes[stem + ".zarr"][::binning, ::binning, ::binning]
    path = run / f"{view}.mrc"
    report = io.StringIO()
    assert mrcfile.validate(str(path), print_file=report), report.getvalue()
    with mrcfile.mmap(str(path), mode="r") as mrc:
        # mrcfile's own reading of the dtype (uint8 is widened to uint16, as mrcfile writes it)
        assert mrc.data.dtype == mrc_dtype(expected.dtype)
        assert np.array_equal(mrc.data, expected.astype(mrc.data.dtype))
        assert mrc.voxel_size.tolist() == (10.0 * binning,) * 3
        header = mrc.header
        assert header.dmax < header.dmin and header.dmean < min(header.dmin, header.dmax) and header.rms < 0
        label = header.label[0].decode("ascii")
    # (which zarr array and level, cut at the header's 80 characters; nothing of when)
    assert label == f"scopefs: copick ExperimentRuns/{run.name}/{stem}.zarr level {binning.bit_length() - 1}"[:80]
    # deterministic: the header is made again from the volume's shape, type, voxel size and label
    assert path.read_bytes()[:HEADER_BYTES] == mrc_header(expected.shape, expected.dtype, 10.0 * binning, label)


def test_mrc_views_are_read_only(project):
    _, run, _ = project
    with pytest.raises(OSError):
        with open(run / "VoxelSpacing10.000" / "float32.mrc", "r+b") as fh:
            fh.write(b"x")


def test_byte_ranges_through_a_small_cache():
    """Any byte range equals the same range of the whole file, with a cache so small that
    one piece holds a single plane (each chunk is cut into pieces)."""
    data = volume_of("int16")
    array = zarr.create_array(store={}, shape=SHAPE, chunks=CHUNKS, dtype="int16", zarr_format=2)
    array[:] = data
    counters = Counters()
    with ThreadPoolExecutor(4) as pool:
        volume = MrcVolume(array, 7.5, "test", ByteCache(3 * SHAPE[1] * SHAPE[2] * 2), "k", pool, counters)
        assert volume.planes_per_piece == 1
        whole = volume.header + data.tobytes()
        assert volume.size == len(whole)
        rng = np.random.default_rng(1)
        for _ in range(200):
            offset = int(rng.integers(0, volume.size + 10))
            size = int(rng.integers(1, 3 * SHAPE[1] * SHAPE[2] * 2))
            assert volume.read(offset, size) == whole[offset:offset + size]
        # a cached piece owns its bytes (a view would keep its whole chunk alive, uncounted)
        assert volume._piece((1, 1, 1, 0)).base is None
    assert counters.chunks > 0


def test_labels_mrc_cannot_hold_exactly_are_an_error_not_wrong_values():
    data = np.zeros(SHAPE, np.int32)
    data[3, 4, 5] = (1 << 24) + 1
    array = zarr.create_array(store={}, shape=SHAPE, chunks=CHUNKS, dtype="int32", zarr_format=2)
    array[:] = data
    with ThreadPoolExecutor(2) as pool:
        volume = MrcVolume(array, 10.0, "test", ByteCache(1 << 20), "k", pool, Counters())
        assert volume.dtype == np.dtype("<f4")
        assert volume.read(HEADER_BYTES + 10 * SHAPE[1] * SHAPE[2] * 4, 4) == bytes(4)    # another chunk: fine
        with pytest.raises(ValueError):
            volume.read(HEADER_BYTES, volume.size)



def rich_picks(n: int = 7) -> dict:
    """Picks with rotations (one identity), shifts, scores and instance IDs."""
    from scipy.spatial.transform import Rotation
    rng = np.random.default_rng(5)
    points = []
    for i in range(n):
        transform = np.eye(4)
        if i:
            transform[:3, :3] = Rotation.random(random_state=i).as_matrix()
        if i % 2:
            transform[:3, 3] = rng.normal(0, 5, 3)
        points.append({"location": dict(zip("xyz", rng.uniform(0, 320, 3).tolist())), "transformation_": transform.tolist(),
                       "instance_id": i, "score": float(rng.uniform())})
    return {"pickable_object_name": "proteasome", "user_id": "tester", "session_id": "2", "run_name": "TS_001",
            "voxel_spacing": None, "unit": "angstrom", "points": points}


#: sha256 (first 16 hex digits) of each view of `rich_picks(n)` (run TS_001) as the views were
#: written before they were sized together: (n, voxel size, kind) -> (bytes, digest); at 10 Å
#: the STAR view is centred on (160, 150, 220) Å, at 7.84 Å there is no tomogram
VIEW_BYTES = {
    (0, 10.0, "star"): (187, "fb496f8ed616d5de"), (0, 10.0, "relion4"): (148, "5e70fd096ffcb3b1"),
    (0, 10.0, "dynamo"): (0, "e3b0c44298fc1c14"), (0, 10.0, "em"): (512, "f9d301585dfbe314"),
    (0, 10.0, "csv"): (241, "aa9b3328b87dfd56"),
    (1, 10.0, "star"): (253, "ca4a24c582a7d514"), (1, 7.84, "star"): (212, "0a8d2e954a554c55"),
    (1, 10.0, "dynamo"): (161, "bdf690dca71c433e"), (1, 7.84, "em"): (592, "09f0e79b0554fee2"),
    (3, 10.0, "star"): (398, "555b2470c9247813"), (3, 7.84, "relion4"): (348, "937c985ba6761e9f"),
    (3, 7.84, "dynamo"): (620, "abd04a2981c913c7"), (3, 10.0, "em"): (752, "9748ba7ced50999e"),
    (3, 10.0, "csv"): (1016, "ab858e5ac71441e5"),
    (7, 10.0, "star"): (688, "7105703d489bf922"), (7, 10.0, "relion4"): (621, "2f73c86b25306248"),
    (7, 7.84, "star"): (621, "2f7c6e77b9fdcd6d"), (7, 10.0, "dynamo"): (1546, "21a74f5f15956cc0"),
    (7, 7.84, "dynamo"): (1548, "168b92491bb9c442"), (7, 10.0, "em"): (1072, "bbbf491524c7a96b"),
    (7, 7.84, "em"): (1072, "28003908bacfc72b"), (7, 10.0, "csv"): (2264, "6716640aaddb62a3"),
}
CENTRE = {10.0: (160.0, 150.0, 220.0), 7.84: None}


def test_picks_views_keep_their_bytes_and_are_sized_together():
    """The views' bytes are what they were (digests above), and `picks.sizes` sizes the
    views of many picks files at once (one write per text format, cut by rows; EM from
    the number of points) exactly as long as each is made alone, empty picks files and
    run names with a space (quoted in STAR), a comma and a quote (quoted in CSV) or a
    character starfile takes for a line break (each file then written alone) included."""
    import hashlib
    for (n, voxel_size, kind), (size, digest) in VIEW_BYTES.items():
        picks = picks_format.Picks.from_json(json.dumps(rich_picks(n)).encode())
        data = picks_format.export(picks, kind, "TS_001", voxel_size, CENTRE[voxel_size])
        assert (len(data), hashlib.sha256(data).hexdigest()[:16]) == (size, digest), (n, voxel_size, kind)
    many = [picks_format.Picks.from_json(json.dumps(rich_picks(n)).encode()) for n in (3, 0, 7, 1, 0, 2)]
    for run, voxel_size in (("TS_001", 10.0), ("TS 001", 7.84), ('TS,"001', 10.0), ("TS\x1c001", 7.84)):
        alone = [{kind: len(picks_format.export(p, kind, run, voxel_size, CENTRE[voxel_size]))
                  for kind in picks_format.FORMATS.values()} for p in many]
        assert picks_format.sizes(many, run, voxel_size, CENTRE[voxel_size]) == alone


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_an_mrc_views_size_follows_from_its_arrays_metadata(tmp_path, zarr_format):
    """`mrc.view_size` (the metadata alone, no zarr) gives the size of the view zarr opens."""
    from scopefs.formats.mrc import view_size
    for dtype in DTYPES + ["uint8", "int32", "float64"]:
        path = tmp_path / f"{dtype}-{zarr_format}.zarr"
        array = zarr.create_array(str(path), shape=(3, 5, 7), dtype=dtype, chunks=(2, 2, 2), zarr_format=zarr_format)
        read = lambda key: (path / key).read_bytes() if (path / key).exists() else None    # noqa: E731
        volume = MrcVolume(array, 10.0, "x", ByteCache(1 << 20), 0, None, Counters())
        assert view_size(read) == volume.size, dtype


def parsed(path: Path, kind: str):
    """A picks file as its format's library reads it."""
    if kind in ("star", "relion4"):
        import starfile
        return starfile.read(path, always_dict=True)["particles"]
    if kind == "dynamo":
        import dynamotable
        return dynamotable.read(str(path))
    if kind == "em":
        import emfile
        return emfile.read(str(path))[1]
    import pandas as pd
    return pd.read_csv(path)


def same(theirs, ours) -> bool:
    if isinstance(theirs, np.ndarray):
        return theirs.shape == ours.shape and np.array_equal(theirs, ours)
    return list(theirs.columns) == list(ours.columns) and theirs.equals(ours)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A project made by copick 1.31 (a 32**3 float32 tomogram, a uint8 segmentation),
    with rich picks added, and what copick 1.31's exporter (`copick export`, run in one
    process) writes of it, and of the same project without tomograms ("bare")."""
    import shutil
    base = tmp_path_factory.mktemp("exported")
    static, overlay = base / "static", base / "overlay"
    static.mkdir()
    overlay.mkdir()
    run_upstream("copick", "upstream_copick.py", "make", str(static), str(overlay))
    picks_dir = static / "ExperimentRuns" / "TS_001" / "Picks"
    (picks_dir / "tester_2_proteasome.json").write_text(json.dumps(rich_picks()))
    bare = base / "bare"
    shutil.copytree(static, bare, ignore=shutil.ignore_patterns("*.zarr"))
    config = base / "static_only.json"
    (base / "bare.json").write_text(config.read_text().replace(str(static), str(bare)))
    run_upstream("copick", "upstream_copick.py", "export", "proteasome:tester/2",
                 str(base / "out"), str(config), str(base / "out" / "bare"), str(base / "bare.json"))
    return config, base / "out"


@pytest.mark.upstream
def test_mrc_views_equal_copick_export(exported, mount):
    """copick 1.31's `copick export tomogram|segmentation --output-format mrc` and the views
    hold the same voxel values and voxel size (copick writes float32 tomograms and int16
    labels; the views keep the zarr's own type, so values are compared)."""
    config, out = exported
    run = mount(config) / "ExperimentRuns" / "TS_001"
    pairs = [(out / "mrc" / "TS_001" / "VoxelSpacing10.000" / "wbp.mrc", run / "VoxelSpacing10.000" / "wbp.mrc"),
             (next((out / "mrc" / "TS_001").rglob("membrane_curator_1.mrc")),
              run / "Segmentations" / "10.000_curator_1_membrane.mrc")]
    for theirs_path, view in pairs:
        with mrcfile.open(theirs_path) as theirs, mrcfile.mmap(view, mode="r") as ours:
            assert theirs.data.shape == ours.data.shape
            assert np.array_equal(theirs.data.astype(np.float64), ours.data.astype(np.float64)), view.name
            assert theirs.voxel_size == ours.voxel_size
            assert (theirs.header.nx, theirs.header.ny, theirs.header.nz) == (ours.header.nx, ours.header.ny, ours.header.nz)


@pytest.mark.upstream
def test_picks_views_equal_copick_export(exported, mount):
    """Each picks view parses (starfile, dynamotable, emfile, pandas) to exactly what
    `copick export picks` writes for the same picks; RELION 5 coordinates are centred on
    the tomogram, and with no tomogram (the .relion4.star view, or copick on a project
    without one) they are pixels of the voxel spacing."""
    config, out = exported
    spacing = mount(config) / "ExperimentRuns" / "TS_001" / "VoxelSpacing10.000"
    cases = [("star", "star", "star"), ("relion4.star", "relion4", "bare/star"), ("tbl", "dynamo", "dynamo"),
             ("em", "em", "em"), ("csv", "csv", "csv")]
    for suffix, kind, where in cases:
        exported_file = next((out / where).glob("*"))
        view = spacing / f"tester_2_proteasome.{suffix}"
        assert same(parsed(exported_file, kind), parsed(view, kind)), suffix
    star = parsed(spacing / "tester_2_proteasome.star", "star")
    assert "rlnCenteredCoordinateXAngst" in star and "rlnCoordinateX" not in star
    assert "rlnCoordinateX" in parsed(spacing / "tester_2_proteasome.relion4.star", "relion4")
    # the picks of every run's spacing, and nothing for copick to see
    assert sorted(p.name for p in spacing.glob("curator_1_ribosome.*")) == [
        f"curator_1_ribosome.{s}" for s in ("csv", "em", "relion4.star", "star", "tbl")]


def importing(exported, tmp_path: Path, mount):
    """The exported fixture's project mounted with an empty overlay of its own: (config,
    overlay, mountpoint, its TS_001/VoxelSpacing10.000, a config of the overlay alone)."""
    config, _ = exported
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    settings = json.loads(config.read_text())
    project, overlay_only = tmp_path / "project.json", tmp_path / "overlay_only.json"
    project.write_text(json.dumps({**settings, "static_root": f"local://{config.parent / 'static'}",
                                   "overlay_root": f"local://{overlay}"}))
    overlay_only.write_text(json.dumps({**settings, "overlay_root": f"local://{overlay}"}))
    mnt = mount(project)
    return config, overlay, mnt, mnt / "ExperimentRuns" / "TS_001" / "VoxelSpacing10.000", overlay_only


@pytest.mark.upstream
@pytest.mark.daemon_log(r"not an importable picks file", reason="a refused import is logged with its reason")
@pytest.mark.daemon_log(r"a file kept in memory holds at most", reason="the 1 TiB truncate is refused with EFBIG")
def test_picks_imported_by_copying_a_file_in(exported, tmp_path, mount):
    """Each picks view copied back in under a new user's name becomes that user's copick
    picks in the overlay (same points, to the format's precision), which copick 1.31 lists
    and reads through the mount and from the overlay root alone; bad files and unknown
    objects are refused at close and nothing is written, as is a size past what a file in
    memory may hold."""
    import shutil
    config, overlay, mnt, spacing, overlay_only = importing(exported, tmp_path, mount)
    suffixes = {"star": "star", "relion4": "relion4.star", "dynamo": "tbl", "em": "em", "csv": "csv"}
    for user, suffix in suffixes.items():
        shutil.copyfile(spacing / f"tester_2_proteasome.{suffix}", tmp_path / f"x.{suffix}")
        shutil.copyfile(tmp_path / f"x.{suffix}", spacing / f"{user}_5_proteasome.{suffix}")
    (tmp_path / "bad.tbl").write_text("1 2 3\nnot a table\n")
    (tmp_path / "bad.em").write_bytes(b"\0" * 600)
    for bad, source in (("bad_5_proteasome.tbl", "bad.tbl"), ("nobody_5_unknownobject.csv", "x.csv"),
                        ("bad_5_proteasome.em", "bad.em")):
        with pytest.raises(OSError) as refused:
            with open(spacing / bad, "wb") as fh:
                fh.write((tmp_path / source).read_bytes())
        assert refused.value.errno == errno.EINVAL, bad
    subprocess.run(f"cat {tmp_path / 'x.tbl'} > {spacing / 'shell_5_proteasome.tbl'}", shell=True, check=True)
    with open(spacing / "huge_5_proteasome.csv", "wb") as fh:    # kept in memory until closed:
        with pytest.raises(OSError) as refused:                    # a huge size is refused, not allocated
            os.ftruncate(fh.fileno(), 1 << 40)
    assert refused.value.errno == errno.EFBIG
    assert sorted(p.name for p in (overlay / "ExperimentRuns" / "TS_001" / "Picks").iterdir()) == sorted(
        f"{user}_5_proteasome.json" for user in [*suffixes, "shell"])
    assert daemon_status(mnt)["picks_imports"] == {"imported": 6, "refused": 3}
    # copick 1.31 through the mount, and from the overlay root alone
    original = rich_picks()
    for cfg in (mnt / "copick_config.json", overlay_only):
        found = {p["user"]: p for p in json.loads(run_upstream("copick", "upstream_copick.py", "picks", str(cfg))
                                                  .strip().splitlines()[-1])}
        for user in suffixes:
            got = found[user]
            assert (got["session"], got["object"]) == ("5", "proteasome")
            points = np.array([[p["location"][a] for a in "xyz"] for p in original["points"]])
            transforms = np.array([p["transformation_"] for p in original["points"]])
            got_points, got_transforms = np.array(got["points"]), np.array(got["transforms"])
            if user in ("star", "relion4"):      # RELION keeps the shift in the position
                points, got_points = points + transforms[:, :3, 3], got_points + got_transforms[:, :3, 3]
                transforms[:, :3, 3] = got_transforms[:, :3, 3]
            assert np.allclose(got_points, points, atol=1e-4), user
            assert np.allclose(got_transforms, transforms, atol=1e-5), user
            if user in ("dynamo", "em", "csv"):
                assert np.allclose(got["scores"], [p["score"] for p in original["points"]], atol=1e-6), user


def wait_for_imports(mnt: Path, timeout: float = 60) -> dict:
    import time
    deadline = time.monotonic() + timeout
    while (status := daemon_status(mnt)["tomogram_imports"])["running"]:
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    return status


@pytest.mark.upstream
@pytest.mark.daemon_log(r"not an importable tomogram", reason="a refused import is logged with its reason")
def test_tomogram_imported_by_copying_an_mrc_in(exported, tmp_path, mount):
    """An .mrc copied into VoxelSpacing10.000/ becomes a copick tomogram in the overlay
    (levels 0-2 as copick's own pyramid makes them), which copick 1.31 reads through the
    mount and from the overlay root alone; a wrong voxel size is refused at close and
    nothing is written."""
    config, overlay, mnt, spacing, overlay_only = importing(exported, tmp_path, mount)
    data = (np.random.default_rng(2).normal(0, 100, (21, 34, 27))).astype(np.int16)
    for name, voxel_size in (("imported.mrc", 10.0), ("wrong.mrc", 12.5)):
        with mrcfile.new(str(tmp_path / name)) as mrc:
            mrc.set_data(data)
            mrc.voxel_size = voxel_size
    subprocess.run(["cp", str(tmp_path / "imported.mrc"), str(spacing)], check=True)
    with pytest.raises(OSError) as refused:
        with open(spacing / "wrong.mrc", "wb") as fh:
            fh.write((tmp_path / "wrong.mrc").read_bytes())
    assert refused.value.errno == errno.EINVAL
    status = wait_for_imports(mnt)
    assert (status["imported"], status["refused"], status["failed"]) == (1, 1, 0)
    stored = overlay / "ExperimentRuns" / "TS_001" / "VoxelSpacing10.000"
    assert sorted(p.name for p in stored.iterdir()) == ["imported.zarr"]          # nothing else, nothing hidden
    import time
    deadline = time.monotonic() + 10      # the kernel may trust the import's empty entry for its 1 s
    while (spacing / "imported.mrc").stat().st_size < 1024:
        assert time.monotonic() < deadline, "the MRC view of the imported tomogram did not appear"
        time.sleep(0.1)
    with mrcfile.mmap(str(spacing / "imported.mrc"), mode="r") as view:           # now a view of the new store
        assert np.array_equal(view.data, data.astype(np.float32))
    for cfg in (mnt / "copick_config.json", overlay_only):
        seen = json.loads(run_upstream("copick", "upstream_copick.py", "tomogram", str(cfg), "imported")
                          .strip().splitlines()[-1])
        assert seen["shapes"] == [[21, 34, 27], [11, 17, 14], [6, 9, 7]] and seen["dtype"] == "float32"
        assert np.array_equal(np.array(seen["level0"]), data.astype(np.float32).ravel())
        assert max(seen["pyramid_error"]) < 1e-4


@pytest.mark.daemon_log(r"broken\.zarr", r"garbage\.zarr", r"bad_1_ribosome",
                        reason="each view of the three broken sources fails alone, logged")
def test_a_broken_store_or_picks_file_fails_alone(tmp_path, mount):
    """A level whose metadata is not JSON, a store whose attributes are not, and picks
    that are not copick's: EIO for their own views only; the folder lists, the rest reads."""
    run = tmp_path / "static" / "ExperimentRuns" / "TS_001"
    spacing = run / "VoxelSpacing10.000"
    write_volume(spacing / "good.zarr", volume_of("float32"))
    write_volume(spacing / "broken.zarr", volume_of("float32"), levels=2)
    (spacing / "broken.zarr" / "1" / ".zarray").write_text("{not json")
    (spacing / "garbage.zarr").mkdir()
    (spacing / "garbage.zarr" / ".zattrs").write_text("xx")
    (run / "Picks").mkdir()
    (run / "Picks" / "bad_1_ribosome.json").write_text('{"points": [{"location": 5}]}')
    (tmp_path / "overlay").mkdir()
    mnt = mount(tmp_path / "static", "-t", "copick", "-o", f"overlay={tmp_path / 'overlay'}")
    shown = mnt / "ExperimentRuns" / "TS_001" / "VoxelSpacing10.000"
    names = set(os.listdir(shown))          # (the daemon leaves out entries whose stat fails)
    assert {"good.mrc", "good.zarr", "broken.mrc", "broken.zarr", "garbage.zarr"} <= names
    assert not any(n.startswith("garbage") and n.endswith(".mrc") for n in names)
    with mrcfile.mmap(str(shown / "good.mrc"), mode="r") as mrc:
        assert np.array_equal(mrc.data, volume_of("float32"))
    for bad in ("broken.bin2.mrc", "bad_1_ribosome.star", "bad_1_ribosome.tbl"):
        with pytest.raises(OSError) as failed:
            (shown / bad).read_bytes()
        assert failed.value.errno == errno.EIO, bad
    assert (shown / "broken.mrc").stat().st_size == HEADER_BYTES + np.prod(SHAPE) * 4


@pytest.mark.upstream
def test_a_killed_tomogram_import_leaves_nothing_copick_sees(exported, tmp_path, mount):
    """The daemon killed while it converts: the overlay holds nothing beside the
    tomograms (the MRC waits out of sight for the next mount), and copick 1.31 lists no
    new tomogram (a store appears whole or not at all)."""
    import signal
    import time
    config, overlay, mnt, spacing, overlay_only = importing(exported, tmp_path, mount)
    with mrcfile.new(str(tmp_path / "big.mrc")) as mrc:
        mrc.set_data(np.random.default_rng(3).normal(size=(96, 512, 512)).astype(np.float32))
        mrc.voxel_size = 10.0
    pid = daemon_status(mnt)["pid"]
    subprocess.run(["cp", str(tmp_path / "big.mrc"), str(spacing)], check=True)
    deadline = time.monotonic() + 60
    while not any("chunks" in state for state in daemon_status(mnt)["tomogram_imports"]["running"].values()):
        assert time.monotonic() < deadline and not daemon_status(mnt)["tomogram_imports"]["imported"]
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)                   # the daemon this test started
    stored = overlay / "ExperimentRuns" / "TS_001" / "VoxelSpacing10.000"
    assert sorted(p.name for p in stored.iterdir()) == []
    assert os.listdir(overlay / ".wh..wh.scopefs.kept" / "copick-imports") == [
        "ExperimentRuns%2FTS_001%2FVoxelSpacing10.000%2Fbig.mrc"]
    seen = json.loads(run_upstream("copick", "upstream_copick.py", "use_tomograms", str(overlay_only))
                      .strip().splitlines()[-1])
    assert seen == []


def test_a_missed_lookup_in_a_spacing_folder_lists_nothing(tmp_path, monkeypatch):
    from scopefs.backends import copick
    from scopefs.backends.options import Options
    from scopefs.formats.samples import make_copick
    tree = copick.open_tree(make_copick(str(tmp_path)), Options())
    try:
        spacing = tree.root
        for name in ("ExperimentRuns", "TS_001", "VoxelSpacing10.000"):
            spacing = spacing.lookup(name)
        listed = []
        listing = tree.listing

        def counting_listing(rel, *args, **kwargs):
            listed.append(rel)
            return listing(rel, *args, **kwargs)
        monkeypatch.setattr(tree, "listing", counting_listing)
        for name in ("notes.txt", "wbp.txt", "x.zarr.png"):
            assert spacing.lookup(name) is None
        assert listed == []
        assert spacing.lookup("wbp.png") is not None and spacing.lookup("curator_1_ribosome.star") is not None
    finally:
        tree.close()


#: C extensions of the libraries the views write with: in /proc/PID/maps once imported
VIEW_LIBRARIES = ("/pandas/", "/scipy/", "/numcodecs/", "/cv2/")


def view_libraries_loaded(mnt: Path) -> list[str]:
    maps = Path(f"/proc/{daemon_status(mnt)['pid']}/maps").read_text()
    return [lib for lib in VIEW_LIBRARIES if lib in maps]


def sizes_and_bytes(mnt: Path) -> dict[str, tuple[int, int]]:
    """Every file's size as `find -printf %s` tells it, and the bytes `cat` reads."""
    listed = subprocess.run(["find", str(mnt), "-type", "f", "-printf", "%P\\t%s\\n"], capture_output=True,
                            text=True, check=True).stdout.splitlines()
    out = {}
    for line in listed:
        rel, size = line.rsplit("\t", 1)
        read = subprocess.run(["cat", str(mnt / rel)], capture_output=True, check=True).stdout
        out[rel] = int(size), len(read)
    return out


def one_run_project(tmp_path: Path, picks: tuple[int, ...], levels: int = 2) -> tuple:
    """A static root of one run, TS_001 (a float32 tomogram of `levels` levels at 10 Å and
    a picks file of each of these many points), and an empty overlay: the mount's arguments."""
    run = tmp_path / "static" / "ExperimentRuns" / "TS_001"
    write_volume(run / "VoxelSpacing10.000" / "wbp.zarr", volume_of("float32"), levels=levels)
    (run / "Picks").mkdir()
    for n in picks:
        (run / "Picks" / f"tester_{n}_proteasome.json").write_text(json.dumps(rich_picks(n)))
    (tmp_path / "overlay").mkdir()
    return tmp_path / "static", "-t", "copick", "-o", f"overlay={tmp_path / 'overlay'}"


def test_a_walk_of_a_project_seen_before_makes_no_view_and_imports_no_view_library(tmp_path, mount):
    """A view's size is learned once and kept on disk (`backends/kept_sizes.py`): a fresh
    mount's `ls -lR` then makes no view (it made every picks, CSV, preview and MRC view
    of every folder, through pandas, zarr and OpenCV imported for it) and loads none of the
    view libraries. The sizes told always equal the bytes read: on the first mount, on
    the next, and after a picks file changes."""
    source = one_run_project(tmp_path, (3, 4))
    time.sleep(RACY_S)                  # sources changed in the last RACY_S seconds are not kept

    first = mount(*source, mountpoint=tmp_path / "first")
    subprocess.run(["ls", "-lR", str(first)], capture_output=True, check=True)
    learned = daemon_status(first)["view_sizes"]["learned"]
    assert learned >= 2 * 6 + 3         # 2 picks x (5 formats + CSV), a preview, 2 MRC levels
    assert all(size == read for size, read in sizes_and_bytes(first).values())
    cleanup_mount(first, daemon_pid(first))           # the sizes are written at unmount

    again = mount(*source, mountpoint=tmp_path / "again")
    subprocess.run(["ls", "-lR", str(again)], capture_output=True, check=True)
    status = daemon_status(again)
    assert status["views_made"] == 0 and status["view_sizes"]["used"] >= learned, status
    assert view_libraries_loaded(again) == []
    walked = sizes_and_bytes(again)
    assert all(size == read for size, read in walked.values())

    picks = again / "ExperimentRuns" / "TS_001" / "Picks" / "tester_3_proteasome.json"
    picks.write_text(json.dumps(rich_picks(9)))        # copied up into the overlay
    changed = sizes_and_bytes(again)
    star = "ExperimentRuns/TS_001/VoxelSpacing10.000/tester_3_proteasome.star"
    assert changed[star][0] > walked[star][0]
    assert {rel: sr for rel, sr in changed.items() if sr[0] != sr[1]} == {}


def test_a_first_walk_makes_no_picks_or_mrc_view_for_its_sizes(tmp_path, mount):
    """A project never mounted before (no sizes kept): a cold `ls -lR` sizes each MRC view
    from its array's metadata, and the picks views of each spacing folder from one write
    of each format for all the run's picks files (`picks.sizes`), each file read and
    parsed once for every spacing. It made every picks view (pandas, a temporary file
    each) and opened every MRC level (zarr) for its size. What needs its bytes for a size
    is still made: the preview PNG and the Picks/ CSVs. The sizes told equal the bytes read."""
    source = one_run_project(tmp_path, (0, 3, 4))
    (tmp_path / "static" / "ExperimentRuns" / "TS_001" / "VoxelSpacing20.000").mkdir()   # no tomogram of its own
    mnt = mount(*source)
    subprocess.run(["ls", "-lR", str(mnt)], capture_output=True, check=True)
    status = daemon_status(mnt)
    assert status["views_made"] == 1 + 3, status    # the preview, the 3 CSVs in Picks/
    assert status["picks_size_batches"] == 2, status
    assert status["mrc_views"]["chunks_decoded"] == 0
    walked = sizes_and_bytes(mnt)
    assert len(walked) > 2 * 3 * 5 + 2 and all(size == read for size, read in walked.values())


def test_sizes_are_learned_from_mount_on_and_a_later_walk_makes_nothing(tmp_path, mount):
    """A thread of the mount's own sizes every view from mount on (`copick.SizeLearner`):
    a walk after it makes no view, writes no picks format and asks nothing of the kept
    sizes (the nodes it lists are sized), and what it tells equals what `cat` reads."""
    source = one_run_project(tmp_path, (1, 3))
    time.sleep(RACY_S)                  # sources changed in the last RACY_S seconds are not kept
    mnt = mount(*source)
    deadline = time.monotonic() + 60
    while not daemon_status(mnt)["view_sizes"]["learning_done"]:
        assert time.monotonic() < deadline, daemon_status(mnt)
        time.sleep(0.05)
    learned = daemon_status(mnt)
    assert learned["view_sizes"]["learned_at_mount"] == 2 * 6 + 3      # 2 picks x (5 formats + CSV), preview, 2 MRC
    for walk in (["ls", "-lR"], ["find", "-printf", "%s\n"], ["du", "-s"]):
        subprocess.run([walk[0], str(mnt), *walk[1:]], capture_output=True, check=True)
    walked = daemon_status(mnt)
    for counter in ("views_made", "picks_size_batches"):
        assert walked[counter] == learned[counter], counter
    assert walked["view_sizes"]["used"] == learned["view_sizes"]["used"]
    assert all(size == read for size, read in sizes_and_bytes(mnt).values())


def test_the_size_learner_goes_past_what_is_not_a_project_folder(tmp_path):
    """A file where a run or spacing folder belongs, and a picks file that does not
    parse, cost the learner nothing but their own views: it sizes the rest and ends."""
    from scopefs.backends import open_tree
    from scopefs.backends.options import Options
    runs = tmp_path / "static" / "ExperimentRuns"
    (runs / "TS_001" / "Picks").mkdir(parents=True)
    (tmp_path / "overlay").mkdir()
    (runs / "notes.txt").write_text("not a run")
    (runs / "TS_001" / "VoxelSpacing10.000").write_text("not a spacing folder")
    (runs / "TS_001" / "Picks" / "tester_1_proteasome.json").write_text(json.dumps(rich_picks(2)))
    (runs / "TS_001" / "Picks" / "tester_2_proteasome.json").write_text("{not json")
    tree = open_tree("copick", str(tmp_path / "static"), Options({"overlay": str(tmp_path / "overlay")}))
    try:
        learner = tree.derive.learner
        learner._learn()
        assert learner.done and learner.learned == 2         # the two Picks/ CSVs (one says "error")
        assert not [path for path in tree._derived if "VoxelSpacing" in path]
    finally:
        tree.close()


def test_the_size_learner_waits_while_requests_come_and_ends_after(tmp_path, monkeypatch):
    """The learner gives way to a walk (on two cores and one GIL it ran at the speed of
    both): while requests keep coming it sizes nothing, once they stop it sizes
    everything; a steady trickle of requests (one every `QUIET_S` or less) does not keep
    it from ending (a folder after each `PAUSE_S`)."""
    import itertools

    from scopefs.backends import open_tree
    from scopefs.backends.copick import SizeLearner
    from scopefs.backends.options import Options
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    static = one_run_project(tmp_path, (1, 3), levels=1)[0]
    tree = open_tree("copick", str(static), Options({"overlay": str(tmp_path / "overlay")}))
    learner = tree.derive.learner
    requests, busy = itertools.count(), [True]
    tree.count_requests(lambda: next(requests) if busy[0] else -1)
    try:
        learner.start()
        time.sleep(1.5 * SizeLearner.PAUSE_S)
        # at most the first folder (Picks/: 2 CSVs) after a pause of PAUSE_S
        assert learner.learned <= 2 and not learner.done, learner.learned
        busy[0] = False
        deadline = time.monotonic() + 60
        while not learner.done:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert learner.learned == 2 * 6 + 2, learner.learned      # 2 picks x (5 formats + CSV), preview, MRC
        assert learner.paused >= 1
    finally:
        tree.close()


def test_a_trickle_of_requests_does_not_keep_the_size_learner_from_ending(tmp_path, monkeypatch):
    """Requests one at a time, each a little sooner than `QUIET_S` after the last: the
    learner sizes a folder after each `PAUSE_S` of waiting, and ends."""
    from scopefs.backends import open_tree
    from scopefs.backends.copick import SizeLearner
    from scopefs.backends.options import Options
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    static = one_run_project(tmp_path, (1,), levels=1)[0]
    tree = open_tree("copick", str(static), Options({"overlay": str(tmp_path / "overlay")}))
    start = time.monotonic()
    tree.count_requests(lambda: int((time.monotonic() - start) / (0.8 * SizeLearner.QUIET_S)))
    try:
        tree.derive.learner.start()
        deadline = time.monotonic() + 30
        while not tree.derive.learner.done:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert tree.derive.learner.learned == 6 + 2
    finally:
        tree.close()


def test_the_views_a_mount_learns_hold_little_memory_each(tmp_path):
    """The learner sizes, and keeps, a node for every view (up to 100,000): each holds
    what makes its bytes, not the closures that found its size (2.5 KB a view before;
    the bounded caches it fills are counted too)."""
    import gc
    import tracemalloc

    from scopefs.backends import open_tree
    from scopefs.backends.options import Options
    static = one_run_project(tmp_path, (1,), levels=1)[0]
    picks = static / "ExperimentRuns" / "TS_001" / "Picks"
    for n in range(2, 61):                          # a point each: the views' caches stay small
        (picks / f"tester_{n}_proteasome.json").write_bytes((picks / "tester_1_proteasome.json").read_bytes())
    time.sleep(RACY_S)                  # sources changed in the last RACY_S seconds are not kept
    first = open_tree("copick", str(static), Options({"overlay": str(tmp_path / "overlay")}))
    first.derive.learner._learn()       # (the libraries loaded, the sizes kept: no view is made below)
    first.close()
    tree = open_tree("copick", str(static), Options({"overlay": str(tmp_path / "overlay")}))
    try:
        tree.derive.sizes.get(b"")                  # (the kept sizes loaded: not the views')
        tracemalloc.start()
        try:
            tree.derive.learner._learn()
            gc.collect()
            held = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        views = tree.derive.learner.learned
        assert views == 60 * 6 + 2, views           # 60 picks x (5 formats + CSV), preview, MRC
        assert tree.derive.status()["views_made"] == 0
        # 1,385-1,432 bytes a view alone and 2,038 late in the whole suite (process-wide
        # caches already full); the old code held 2,400-2,474 alone
        assert held / views < 2200, held / views
    finally:
        tree.close()


def tree_of_picks_copies(tmp_path: Path, count: int):
    """The tree (no mount) of a one-run project of `count` equal picks files."""
    from scopefs.backends import open_tree
    from scopefs.backends.options import Options
    static = one_run_project(tmp_path, (1,), levels=1)[0]
    picks = static / "ExperimentRuns" / "TS_001" / "Picks"
    for n in range(2, count + 1):
        (picks / f"tester_{n}_proteasome.json").write_bytes((picks / "tester_1_proteasome.json").read_bytes())
    return open_tree("copick", str(static), Options({"overlay": str(tmp_path / "overlay")}))


def tree_of_kept_picks_copies(tmp_path: Path, count: int, monkeypatch):
    """`tree_of_picks_copies` opened again after a tree before it learned and kept every
    view's size."""
    from scopefs.backends import kept_sizes, open_tree
    from scopefs.backends.options import Options
    monkeypatch.setattr(kept_sizes, "RACY_S", 0)        # (sources just written have an identity)
    first = tree_of_picks_copies(tmp_path, count)
    first.derive.learner._learn()                       # (every size learned, kept)
    first.close()
    return open_tree("copick", str(tmp_path / "static"), Options({"overlay": str(tmp_path / "overlay")}))


def reopened(project: Path):
    """The tree of `project` opened again (after `tree_of_kept_picks_copies`), `patient`."""
    from scopefs.backends import open_tree
    from scopefs.backends.options import Options
    return patient(open_tree("copick", str(project / "static"), Options({"overlay": str(project / "overlay")})))


def run_listed(tree, stats: bool):
    """The run of `tree`, listed by a walker that stats what it lists (a view's size asked
    first: `du`) or not (`find`)."""
    run = tree.root.lookup("ExperimentRuns").lookup("TS_001")
    if stats:
        run.lookup("Picks").lookup("tester_1_proteasome.csv").attr()
    run.listing(wait=True)
    return run


def stats_counted(tree) -> list[str]:
    """The paths both roots of `tree` are asked to stat from now on (stat or stat_many)."""
    stated = []
    for root in (tree.static, tree.upper):
        def counted(rel, _stat=root.stat):
            stated.append(rel)
            return _stat(rel)

        def counted_many(rel, names, _stat_many=root.stat_many):
            stated.extend(f"{rel}/{name}" for name in names)
            return _stat_many(rel, names)
        root.stat, root.stat_many = counted, counted_many
    return stated


def test_a_listing_works_out_each_sources_version_once_not_once_a_view(tmp_path):
    """A picks file shows 5 views in each spacing folder: listing the folder works out
    the file's version (`source_key`, what every view's node is checked against) once
    for all 5, not once a view (the per-entry Python of a walk)."""
    tree = tree_of_picks_copies(tmp_path, 20)
    asked = []
    source_key = tree.source_key
    tree.source_key = lambda rel, info=None: asked.append(rel) or source_key(rel, info)
    try:
        spacing = tree.root.lookup("ExperimentRuns").lookup("TS_001").lookup("VoxelSpacing10.000")
        listed = [name for _, name, _, _ in spacing.scan()]
        assert len(listed) == 20 * 5 + 3, listed        # + the store, its preview and its MRC view
        of_picks = [rel for rel in asked if rel.endswith("_proteasome.json")]
        assert len(of_picks) == 20, len(of_picks)
    finally:
        tree.close()


def test_a_listing_stats_each_source_once_for_its_views_nodes(tmp_path):
    """Listing Picks/ stats each picks file once, for the file and its CSV view's node (the
    view's node stat'ed its source again), and listing a spacing folder stats its store
    once for the store, its levels', its preview's and its MRC view's nodes (each stat'ed
    it again; a stat asks both roots), and once more to read its metadata: the per-entry
    work of a walk."""
    tree = tree_of_picks_copies(tmp_path, 10)
    stated = stats_counted(tree)
    try:
        run = tree.root.lookup("ExperimentRuns").lookup("TS_001")
        stated.clear()
        listed = {name: node for _, name, node, _ in run.lookup("Picks").scan()}
        assert len(listed) == 2 * 10
        of_picks = [rel for rel in stated if rel.endswith("_proteasome.json")]
        assert len(of_picks) == 10, sorted(of_picks)
        stated.clear()
        listed = {name: node for _, name, node, _ in run.lookup("VoxelSpacing10.000").scan()}
        assert {"wbp.zarr", "wbp.png", "wbp.mrc"} <= set(listed)
        # the listing's stat, and whether the static store shows where its metadata is read
        assert len([rel for rel in stated if rel.endswith("wbp.zarr")]) == 2, stated
    finally:
        tree.close()


@pytest.mark.parametrize("folder, view, source", [
    ("Picks", "tester_1_proteasome.csv", "Picks/tester_1_proteasome.json"),
    ("VoxelSpacing10.000", "tester_1_proteasome.star", "Picks/tester_1_proteasome.json"),
    ("VoxelSpacing10.000", "wbp.mrc", "VoxelSpacing10.000/wbp.zarr"),
    ("VoxelSpacing10.000", "wbp.png", "VoxelSpacing10.000/wbp.zarr")])
def test_a_view_looked_up_by_name_stats_its_source_once(tmp_path, folder, view, source):
    """A view found by name (the LOOKUP of `ls -l` in a folder listed lean, `stat` of
    one view) asks what its source shows once, for the view's node and its version (it
    asked two to four times: to check the source shows, for the node's key, in the node's
    maker, for an MRC view's levels), in a small project as in one ten times bigger."""
    counts = []
    for picks in (2, 20):
        tree = tree_of_picks_copies(tmp_path / str(picks), picks)
        try:
            source_rel = f"ExperimentRuns/TS_001/{source}"
            tree.root.lookup("ExperimentRuns").lookup("TS_001").lookup(folder)
            tree.derived_lookup(f"ExperimentRuns/TS_001/{folder}", view)     # (the store's metadata read)
            stated = stats_counted(tree)
            tree.shown(source_rel)
            once = stated.count(source_rel)
            assert once >= 1
            stated.clear()
            made = tree._derived.pop(f"ExperimentRuns/TS_001/{folder}/{view}")     # (made again, by its maker)
            node = tree.derived_lookup(f"ExperimentRuns/TS_001/{folder}", view)
            assert node is not made and node is tree._derived[f"ExperimentRuns/TS_001/{folder}/{view}"]
            counts.append(stated.count(source_rel))
            assert counts[-1] == once, stated
        finally:
            tree.close()
    assert counts[0] == counts[1]


class CountingLock:
    """A lock that counts how often it is taken."""

    def __init__(self, lock):
        self.lock, self.taken = lock, 0

    def __enter__(self):
        self.taken += 1
        return self.lock.__enter__()

    def __exit__(self, *exc):
        return self.lock.__exit__(*exc)

    def acquire(self, *args, **kwargs):
        self.taken += 1
        return self.lock.acquire(*args, **kwargs)

    def release(self):
        return self.lock.release()


def test_a_listing_places_its_views_nodes_together(tmp_path):
    """Listing a spacing folder places its views' nodes in the tree's table under one hold
    of its lock (it was taken once a view: 5 a picks file), as much for 2 picks files as
    for 20."""
    counts = []
    for picks in (2, 20):
        tree = tree_of_picks_copies(tmp_path / str(picks), picks)
        try:
            spacing = tree.root.lookup("ExperimentRuns").lookup("TS_001").lookup("VoxelSpacing10.000")
            tree._table = table = CountingLock(tree._table)
            assert len(spacing.scan()) == picks * 5 + 3
            counts.append(table.taken)
        finally:
            tree.close()
    assert counts == [2, 2], counts             # (the views, and the store's node)


def view_nodes_made(monkeypatch) -> list[str]:
    """The class names of the view nodes made from now on (renderers and MRC views)."""
    from scopefs.backends import blocks, copick_views
    made = []
    for cls in (blocks.GeneratedFile, copick_views.MrcView):
        def counted(self, *args, _init=cls.__init__, **kwargs):
            made.append(type(self).__name__)
            _init(self, *args, **kwargs)
        monkeypatch.setattr(cls, "__init__", counted)
    return made


def test_a_listing_makes_no_view_node_until_one_is_asked_for(tmp_path, monkeypatch):
    """Listing a spacing folder of 20 picks files (103 views: what a cold `find` or a lean
    listing gives by name and type) makes none of its views' nodes (a renderer, a kept size
    and their partials each: it made all 103); asking one view's attributes makes that one,
    under the number the listing gave it, which `Tree.get` and a lookup by name give too."""
    made = view_nodes_made(monkeypatch)
    tree = tree_of_picks_copies(tmp_path, 20)
    try:
        tree.derive.learner.stop()
        spacing = tree.root.lookup("ExperimentRuns").lookup("TS_001").lookup("VoxelSpacing10.000")
        made.clear()
        listed = {name: node for _, name, node, _ in spacing.scan()}
        assert len(listed) == 20 * 5 + 3
        assert made == [], made
        view = listed["tester_3_proteasome.star"]
        ino = view.ino
        assert view.attr().size > 0 and made == ["GeneratedFile"], made
        assert view.ino == ino and tree.get(ino) is view
        assert spacing.lookup("tester_3_proteasome.star") is view
        assert listed["wbp.mrc"].attr().size > 0 and made[-1] == "MrcView"
    finally:
        tree.close()


def test_views_whose_sizes_were_kept_are_sized_together_without_their_nodes(tmp_path, monkeypatch):
    """`ls -lR` or `du` of a spacing folder whose views' sizes a mount before kept: every
    view's size comes from the kept sizes in one go for the folder (`KeptTogether`), with
    no picks view's node made (each was: a renderer, a `KeptSize` and their partials, its
    key repr'd and digested alone, the store's lock taken once a view), in the same
    Python calls a view for 2 picks files as for 20: 8 a view (its `attr`, its kept size
    looked up by its key's digest, its attributes made) and its picks file's identity,
    shared by the file's 5 views; 22 a view before, and the lock taken 204 times for 20
    picks files, 24 for 2. Only the preview's and the MRC view's nodes are made (their
    keys stat their stores)."""
    import gc
    made = view_nodes_made(monkeypatch)
    costs = {}
    for picks in (2, 20):
        tree = tree_of_kept_picks_copies(tmp_path / str(picks), picks, monkeypatch)
        try:
            spacing = tree.root.lookup("ExperimentRuns").lookup("TS_001").lookup("VoxelSpacing10.000")
            views = [node for _, name, node, _ in spacing.scan() if "." in name and not name.endswith(".zarr")]
            assert len(views) == picks * 5 + 2
            tree.derive.sizes._lock = lock = CountingLock(tree.derive.sizes._lock)
            made.clear()
            gc.collect()
            gc.disable()
            try:
                calls = python_calls(lambda: [node.attr() for node in views])
            finally:
                gc.enable()
            assert tree.derive.status()["views_made"] == 0
            assert sorted(made) == ["GeneratedFile", "MrcView"], made       # the preview, the MRC view
            costs[picks] = calls, lock.taken
        finally:
            tree.close()
    (small, small_locks), (big, big_locks) = costs[2], costs[20]
    assert big_locks == small_locks, costs              # (once for the picks views, once each for the two others)
    assert big - small <= 18 * (5 * 8 + 1), costs       # (the same on a loaded machine: 738)


def test_a_folder_listed_ahead_of_a_stat_walk_has_its_views_kept_sizes_in_memory(tmp_path, monkeypatch):
    """A spacing folder listed ahead of a walker (`MergeAhead`, once the walker listed its
    run) while the walk stats what it lists (a view's size asked: `SIZES_WANTED_FOR`) has
    its views' kept sizes looked up there and then, no view made: the walker's READDIRPLUS
    then gives every view with its attributes from memory (no worker call to size them, no
    LOOKUP of each after a listing without them), for 2 picks files as for 20. A `find`,
    which asks no size, is not kept waiting for them: none is looked up. (Each view's size
    was looked up only when the walker asked.)"""
    unsized = {}
    for picks in (2, 20):
        project = tmp_path / str(picks)
        tree_of_kept_picks_copies(project, picks, monkeypatch).close()
        for walk in ("find", "du"):
            tree = reopened(project)
            try:
                run = run_listed(tree, stats=walk == "du")
                ahead = tree.scan_ahead.used
                listing = run.lookup("VoxelSpacing10.000").listing(wait=True)
                assert tree.scan_ahead.used == ahead + 1    # (the listing made ahead)
                views = [node for _, _, node, info in listing if info is None]
                assert len(views) == picks * 5 + 2
                unsized[walk, picks] = sum(node.cached_attr() is None for node in views)
                assert tree.derive.status()["views_made"] == 0
            finally:
                tree.close()
    assert unsized == {("find", 2): 12, ("find", 20): 102, ("du", 2): 0, ("du", 20): 0}, unsized


def test_a_folder_listed_ahead_before_the_walk_asked_a_size_is_sized_when_taken(tmp_path, monkeypatch):
    """A folder listed ahead before the walk asked any size (a `du`'s first spacing folder,
    listed ahead with Picks/ before the walk's LOOKUP there asked one) is not given from
    memory unsized once sizes are asked (every view a LOOKUP then: 503 for 100 picks
    files), but has its views' kept sizes looked up in the one worker call that takes it,
    the folder not listed again and no view made."""
    from scopefs.backends.overlay import tree as overlay_tree
    tree_of_kept_picks_copies(tmp_path, 2, monkeypatch).close()
    tree = reopened(tmp_path)
    scans = []
    scan = overlay_tree.MergedDir.scan
    monkeypatch.setattr(overlay_tree.MergedDir, "scan", lambda self, *a, **k: (scans.append(self.rel), scan(self, *a, **k))[1])
    try:
        run = tree.root.lookup("ExperimentRuns").lookup("TS_001")
        spacing = run.lookup("VoxelSpacing10.000")
        run.listing(wait=True)                          # (by a walker that asked no size yet)
        made_ahead(tree, spacing)
        run.lookup("Picks").lookup("tester_1_proteasome.csv").attr()    # (the walk's first ask)
        scans.clear()
        assert spacing.listing(wait=False) is None      # (not from memory: its views unsized)
        listing = spacing.listing(wait=True)            # (the worker call)
        views = [node for _, _, node, info in listing if info is None]
        assert len(views) == 2 * 5 + 2 and all(node.cached_attr() is not None for node in views)
        assert spacing.rel not in scans and tree.derive.status()["views_made"] == 0     # (its subfolders may be, ahead)
    finally:
        tree.close()


def test_a_listing_kept_to_be_sized_is_given_only_within_the_horizon_since_it_began(tmp_path, monkeypatch):
    """A listing made ahead unsized and kept to be sized in a worker (`listed_ahead`) is
    given only within the horizon since its listing began, as one made ahead is, and one
    older is dropped when another is kept. (Its age counted from when it was kept: one
    was given up to two horizons after its folder was read, and up to 64 stayed.)"""
    from scopefs.backends.overlay import tree as overlay_tree
    tree_of_kept_picks_copies(tmp_path, 2, monkeypatch).close()
    tree = reopened(tmp_path)
    horizon, clock = tree.scan_ahead.horizon, [1000.0]
    monkeypatch.setattr(overlay_tree, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    scans = []
    scan = overlay_tree.MergedDir.scan
    monkeypatch.setattr(overlay_tree.MergedDir, "scan", lambda self, *a, **k: (scans.append(self.rel), scan(self, *a, **k))[1])
    try:
        run = tree.root.lookup("ExperimentRuns").lookup("TS_001")
        picks, spacing = run.lookup("Picks"), run.lookup("VoxelSpacing10.000")
        run.listing(wait=True)                          # (by a walker that asked no size yet)
        made_ahead(tree, picks)
        made_ahead(tree, spacing)
        asked = run.lookup("Picks").lookup("tester_1_proteasome.csv")
        clock[0] += horizon * 0.6
        asked.attr()                                    # (the walk's first ask)
        assert spacing.listing(wait=False) is None      # (kept, to be sized in a worker)
        clock[0] += horizon * 0.6                       # (a horizon since its listing began)
        asked.attr()
        assert picks.listing(wait=False) is None
        assert spacing not in tree._to_size
        scans.clear()
        spacing.listing(wait=True)
        assert spacing.rel in scans                     # (listed again: not the old listing)
    finally:
        tree.close()


def views_unsized_ahead(tree, run) -> list:
    """The views of `run`'s Picks and spacing folders given unsized from listings made
    ahead, as the walker lists the run (both listed ahead) then each."""
    folders = [run.lookup("Picks"), run.lookup("VoxelSpacing10.000")]
    run.listing(wait=True)
    views = []
    for folder in folders:
        made_ahead(tree, folder)
        listing = folder.listing(wait=False)
        assert listing is not None
        views += [node for _, _, node, info in listing if info is None and node.cached_attr() is None]
    return views


def test_a_stat_walk_given_listings_sized_ahead_stays_one_that_stats_and_a_find_after_it_does_not(tmp_path, monkeypatch):
    """A `du` given its views' sizes in listings made ahead asks the daemon no view's size:
    half a `SIZES_WANTED_FOR` after the last ask, a listing made ahead leaves one view
    unsized (`OverlayTree.probe_due`), which a walk that stats looks up (its size asked),
    so the listings made after it are sized ahead too, however long the walk. A `find`,
    begun just after a `du`'s ask, looks nothing up: sizing ahead stops a `SIZES_WANTED_FOR`
    after that ask. (Each sized listing given counted as an ask: a `find` begun within 10 s
    of a `du` kept sizing ahead on for all its walk.)"""
    from scopefs.backends.overlay import tree as overlay_tree
    window = overlay_tree.SIZES_WANTED_FOR
    tree_of_kept_picks_copies(tmp_path, 2, monkeypatch).close()
    unsized, wanted = {}, {}
    for walk in ("find", "du"):
        tree = reopened(tmp_path)
        try:
            run = tree.root.lookup("ExperimentRuns").lookup("TS_001")
            run.lookup("Picks").lookup("tester_1_proteasome.csv").attr()    # (a `du`'s ask)
            tree.size_asked_at -= window * 0.6          # (more than half the window ago)
            views = views_unsized_ahead(tree, run)
            unsized[walk] = len(views)
            if walk == "du":
                for view in views:                      # (what its LOOKUP of each asks)
                    view.attr()
            tree.size_asked_at -= window * 0.5          # (half a window later)
            wanted[walk] = tree.sizes_wanted()
        finally:
            tree.close()
    assert wanted == {"find": False, "du": True}, wanted
    assert unsized == {"find": 1, "du": 1}, unsized


def test_a_lost_probe_is_followed_by_another_before_sizing_ahead_lapses(tmp_path, monkeypatch):
    """A view left unsized for a `du` to ask (`OverlayTree.probe_due`) whose ask never
    comes (its listing made stale by an edit, or sized by a later listing made ahead) is
    followed by another one while sizing ahead is still on, so that a walk that stats
    keeps it on. (No probe came again until a size was asked: sizing lapsed a
    `SIZES_WANTED_FOR` after the last ask, and a whole folder's views went back to a
    LOOKUP and a worker call each.)"""
    from scopefs.backends.overlay import tree as overlay_tree
    window = overlay_tree.SIZES_WANTED_FOR
    tree_of_kept_picks_copies(tmp_path, 2, monkeypatch).close()
    tree = reopened(tmp_path)
    try:
        run = tree.root.lookup("ExperimentRuns").lookup("TS_001")
        run.lookup("Picks").lookup("tester_1_proteasome.csv").attr()        # (a `du`'s ask)
        tree.size_asked_at -= window * 0.6              # (more than half the window ago)
        unsized = []
        for _ in range(2):
            unsized.append(len(views_unsized_ahead(tree, run)))
            tree.size_asked_at -= window * 0.3          # (the probe never asked: later, still in the window)
            tree.probed_at -= window * 0.3
        assert unsized == [1, 1], unsized
    finally:
        tree.close()


def test_a_view_that_fails_to_be_sized_ahead_is_left_unsized_alone(tmp_path, monkeypatch):
    """A view whose kept size a listing made ahead fails to look up, with any error (its
    source gone: an AttributeError), is left alone: the listing is still given, its other
    views sized. (The whole listing failed, again at every plan.)"""
    from scopefs.backends.overlay import tree as overlay_tree
    tree_of_kept_picks_copies(tmp_path, 2, monkeypatch).close()
    failed = []

    def size_if_kept(self, _sized=overlay_tree.DerivedFile.size_if_kept):
        if not failed:
            failed.append(self)
            raise AttributeError("'NoneType' object has no attribute 'mtime_ns'")
        _sized(self)
    monkeypatch.setattr(overlay_tree.DerivedFile, "size_if_kept", size_if_kept)
    tree = reopened(tmp_path)
    try:
        spacing = run_listed(tree, stats=True).lookup("VoxelSpacing10.000")
        made_ahead(tree, spacing)
        listing = spacing.listing(wait=False)
        assert listing is not None
        others = [node for _, _, node, info in listing if info is None and node not in failed]
        assert len(failed) == 1 and others and all(node.cached_attr() is not None for node in others)
    finally:
        tree.close()


def test_a_view_whose_size_was_not_kept_is_not_made_by_a_listing_made_ahead(tmp_path, monkeypatch):
    """A picks view whose size a listing made ahead found not kept stays unsized, its node
    not made, also when a later listing made ahead asks again (`DerivedFile.size_if_kept`):
    a walk's stat makes it, in its own time. Only the preview's and the MRC view's nodes
    are made (their kept sizes are their nodes'). (The second listing made every picks
    view's node.)"""
    made = view_nodes_made(monkeypatch)
    tree = patient(tree_of_picks_copies(tmp_path, 2))
    try:
        tree.derive.learner.stop()                      # (no size kept)
        run = tree.root.lookup("ExperimentRuns").lookup("TS_001")
        tree.size_asked_at = time.monotonic()           # (a walk that stats)
        spacing = run.lookup("VoxelSpacing10.000")
        counts = []
        for _ in range(2):
            run.listing(wait=True)                      # (the walker lists the run: spacing listed ahead)
            made_ahead(tree, spacing)
            counts.append(len(made))
            assert spacing.listing(wait=False) is not None
        assert counts == [2, 2], (counts, made)
    finally:
        tree.close()


def test_a_folders_picks_views_are_written_together_and_read_from_there(tmp_path, mount):
    """Reading the picks views of a spacing folder (`tar`, `rsync`, `cat *`) writes each
    text format once for all its picks files and takes each view from there (each view was
    written alone: pandas and a temporary file each); only EM views (binary, by emfile)
    are still written one by one. The bytes are those of each view written alone."""
    mnt = mount(*one_run_project(tmp_path, (1, 3, 4), levels=1))
    run = tmp_path / "static" / "ExperimentRuns" / "TS_001"
    spacing = mnt / "ExperimentRuns" / "TS_001" / "VoxelSpacing10.000"
    centre = (SHAPE[2] / 2 * 10.0, SHAPE[1] / 2 * 10.0, SHAPE[0] / 2 * 10.0)
    # listed first, as those readers do (the size learner, which gives way to the reads, may
    # not have listed it yet: a view looked up alone is written with its own file's only)
    assert len(os.listdir(spacing)) == 3 * 5 + 3
    for n in (1, 3, 4):
        picks = picks_format.Picks.from_json((run / "Picks" / f"tester_{n}_proteasome.json").read_bytes())
        for suffix, kind in picks_format.FORMATS.items():
            view = spacing / f"tester_{n}_proteasome{suffix}"
            assert view.read_bytes() == picks_format.export(picks, kind, "TS_001", 10.0, centre), view.name
    status = daemon_status(mnt)
    assert status["picks_views_written_alone"] == 3 and status["picks_size_batches"] == 1, status


def rss_bytes(pid: int) -> int:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) << 10


def test_generated_views_live_only_in_their_bounded_cache(tmp_path, mount, monkeypatch):
    """The bytes of a Picks/ CSV view (as of meshes and previews) stay in the views' cache
    (`-o view_cache_mb`), not in its node: once the heap has grown to what making a view
    takes, reading 9 MiB more of CSV views through a 2 MiB cache grows the daemon by far
    less than that (the old code kept each view's bytes in its node: +9 MiB)."""
    monkeypatch.setenv("SCOPEFS_LEARN_VIEW_SIZES", "0")        # only the reads below make views
    monkeypatch.setenv("MALLOC_ARENA_MAX", "1")                # one heap, reused by each view made
    static, overlay = tmp_path / "static", tmp_path / "overlay"
    picks = static / "ExperimentRuns" / "TS_001" / "Picks"
    picks.mkdir(parents=True)
    overlay.mkdir()
    points = [{"location": {"x": i + 0.5, "y": 2.5, "z": 3.5}} for i in range(8_000)]       # 0.6 MiB of CSV
    names = [f"tester_{n}_ribosome" for n in range(25)]
    for name in names:
        (picks / f"{name}.json").write_text(json.dumps({"points": points}))
    mnt = mount(static, "-t", "copick", "-o", f"overlay={overlay}", "-o", "view_cache_mb=2")
    shown = mnt / "ExperimentRuns" / "TS_001" / "Picks"
    (shown / f"{names[0]}.csv").read_bytes()
    deadline = time.monotonic() + 60        # the view libraries, imported in the background
    while not {"/pandas/", "/numcodecs/"} <= set(view_libraries_loaded(mnt)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for name in names[1:10]:                # the heap a view takes, and a full cache
        (shown / f"{name}.csv").read_bytes()
    pid = daemon_status(mnt)["pid"]
    before = rss_bytes(pid)
    read = sum(len((shown / f"{name}.csv").read_bytes()) for name in names[10:])
    grown = rss_bytes(pid) - before
    cache = daemon_status(mnt)["view_cache"]
    assert read > 9 << 20 and cache["limit"] == 2 << 20 and cache["bytes"] <= cache["limit"], cache
    assert grown < read // 3, f"the daemon grew by {grown >> 20} MiB reading {read >> 20} MiB of views"


@pytest.mark.parametrize("tool", ["rm", "mv"])
def test_removing_copick_folders_meets_no_view_its_source_took_away(tmp_path, mount, monkeypatch, tool):
    """A view goes with its source (its picks file, its run's Picks/, its zarr store), and
    `rm -r` (and `mv`, copying a static folder across the overlay, then removing it)
    removes in listing order: each view is listed before what takes it away. Right after
    mount the views are listed lean: an unlink of a view the kernel keeps no entry for
    looks it up first, which found it gone when its source went before it. In folders of
    over 10,000 entries `rm -r` removes by inode number: a listing numbers views first."""
    monkeypatch.setenv("SCOPEFS_LEARN_VIEW_SIZES", "0")        # (its nodes would be made first)
    mnt = mount(*one_run_project(tmp_path, (1, 2, 3, 4, 5, 6), levels=1))
    run = mnt / "ExperimentRuns" / "TS_001"
    if tool == "rm":
        inodes = {entry.name: entry.inode() for entry in os.scandir(run / "Picks")}
        views = [name for name in inodes if name.endswith(".csv")]
        assert len(views) == 6 and all(inodes[name] < inodes[name[:-4] + ".json"] for name in views), inodes
        removed = subprocess.run(["rm", "-r", str(run)], capture_output=True, text=True)
    else:
        removed = subprocess.run(["mv", str(run / "Picks"), str(run / "Moved")], capture_output=True, text=True)
    assert removed.returncode == 0, removed.stderr
    if tool == "rm":
        assert os.listdir(run.parent) == []
    else:
        assert "Picks" not in os.listdir(run)
        assert len([name for name in os.listdir(run / "Moved") if name.endswith(".json")]) == 6


def test_a_star_view_a_tomogram_change_dropped_still_unlinks_while_the_kernel_names_it(tmp_path):
    """A tomogram store's metadata arriving or changing drops its run's STAR view nodes
    (made again, centred on it, when next asked for) and tells the kernel to forget their
    names: a watched change does not wait for the kernel, which may meanwhile send the
    unlink of a name `rm -r` listed. That unlink is a no-op (the view goes with its picks
    file, still there), not ENOENT (before, the unlink found no view node and failed:
    `rm -r` of a run flaked when its store's whiteouts were seen mid-removal)."""
    from scopefs.backends import open_tree
    from scopefs.backends.options import Options
    static = one_run_project(tmp_path, (1,), levels=1)[0]
    tree = open_tree("copick", str(static), Options({"overlay": str(tmp_path / "overlay")}))
    try:
        spacing = tree.root.lookup("ExperimentRuns").lookup("TS_001").lookup("VoxelSpacing10.000")
        assert spacing.lookup("tester_1_proteasome.star") is not None
        spacing.lookup("wbp.zarr").unlink(".zattrs")        # seen by the watch, from its thread
        tree.overlay_changed({"ExperimentRuns/TS_001/VoxelSpacing10.000/wbp.zarr": {".zattrs"}})
        spacing.unlink("tester_1_proteasome.star")
        spacing.unlink("tester_1_proteasome.star")          # (a no-op each time: the picks file stays)
        assert spacing.lookup("tester_1_proteasome.star") is not None
        with pytest.raises(FileNotFoundError):
            spacing.unlink("tester_9_proteasome.star")      # no picks file: no view to unlink
    finally:
        tree.close()


def tree_of(folder: Path) -> dict[str, bytes | None]:
    """Every path under folder: a file's bytes, None for a folder."""
    return {str(path.relative_to(folder)): None if path.is_dir() else path.read_bytes()
            for path in sorted(folder.rglob("*"))}


def test_moving_a_whole_run_gives_the_same_run_and_imports_no_copy_of_its_tomogram_view(tmp_path, mount):
    """`mv` of a run (across the overlay: a copy, then a removal) writes the MRC view
    `wbp.mrc` before the `wbp.zarr` it shows (views are listed first): that starts a
    tomogram import, which the store arriving meanwhile wins: the import is dropped, the
    name shows the new store's view. Before, the import collided with the arriving store
    ("Directory not empty" in the daemon log). The moved run shows what the run showed
    (views name their run; the copies of views written as files keep the bytes copied).
    (The import converter, one thread, is kept busy by another run's import meanwhile,
    seconds of converting: `wbp.zarr` arrives before `wbp.mrc`'s import starts.)"""
    source = one_run_project(tmp_path, (1, 2), levels=1)
    mnt = mount(*source)
    runs = mnt / "ExperimentRuns"
    before = tree_of(runs / "TS_001")
    assert "VoxelSpacing10.000/wbp.mrc" in before
    with mrcfile.new(str(tmp_path / "busy.mrc")) as mrc:
        mrc.set_data(np.random.default_rng(3).normal(size=(24, 320, 320)).astype(np.float32))
        mrc.voxel_size = 10.0
    (runs / "TS_000" / "VoxelSpacing10.000").mkdir(parents=True)
    subprocess.run(["cp", str(tmp_path / "busy.mrc"), str(runs / "TS_000" / "VoxelSpacing10.000")], check=True)
    moved = subprocess.run(["mv", str(runs / "TS_001"), str(runs / "TS_002")], capture_output=True, text=True)
    assert moved.returncode == 0, moved.stderr
    (runs / "TS_000" / "VoxelSpacing10.000" / "busy.zarr").mkdir(exist_ok=True)     # (it is dropped)
    deadline = time.monotonic() + 10
    while (status := daemon_status(mnt)["tomogram_imports"])["running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert status["imported"] + status["dropped"] == 2 and status["failed"] == 0, status
    assert "tomogram import ExperimentRuns/TS_002/VoxelSpacing10.000/wbp.mrc dropped" in mount.log()
    assert sorted(os.listdir(runs)) == ["TS_000", "TS_002"]
    assert not [path for path in (tmp_path / "overlay").rglob("*") if "scopefs-import" in path.name]
    cleanup_mount(mnt, daemon_pid(mnt))
    after = tree_of(mount(*source, mountpoint=tmp_path / "again") / "ExperimentRuns" / "TS_002")
    assert after.keys() == before.keys()
    assert {path for path, data in after.items()
            if data not in (before[path], before[path] and before[path].replace(b"TS_001", b"TS_002"))} == set()


def test_an_unmount_during_a_tomogram_import_waits_for_it(tmp_path, mount):
    """Unmounting waits for a running conversion, before the tree closes: the store is
    whole, imported after the daemon logged the unmount's start, and no hidden file is
    left (before, the tree closed under the conversion, which failed: "cannot schedule
    new futures after shutdown" in the daemon log). The daemon is told to stop (SIGTERM)
    while at least three of the conversion's chunks are left."""
    mnt = mount(*one_run_project(tmp_path, (1,), levels=1))
    with mrcfile.new(str(tmp_path / "big.mrc")) as mrc:
        mrc.set_data(np.random.default_rng(3).normal(size=(48, 320, 320)).astype(np.float32))
        mrc.voxel_size = 10.0
    spacing = mnt / "ExperimentRuns" / "TS_001" / "VoxelSpacing10.000"
    subprocess.run(["cp", str(tmp_path / "big.mrc"), str(spacing)], check=True)
    deadline = time.monotonic() + 10
    while True:
        status = daemon_status(mnt)["tomogram_imports"]
        assert time.monotonic() < deadline and not status["imported"], status
        done, _, total = status["running"].get("ExperimentRuns/TS_001/VoxelSpacing10.000/big.mrc", "").partition("/")
        if total and total.split()[0].isdigit() and int(total.split()[0]) - int(done) >= 3:
            break
        time.sleep(0.005)
    pid = daemon_pid(mnt)
    os.kill(pid, signal.SIGTERM)
    cleanup_mount(mnt, pid)
    log = mount.log()
    stopping, imported = log.find("SIGTERM received, unmounting"), log.find("imported ExperimentRuns/TS_001/VoxelSpacing10.000/big.mrc")
    assert 0 <= stopping < imported, log
    stored = tmp_path / "overlay" / "ExperimentRuns" / "TS_001" / "VoxelSpacing10.000"
    assert [path.name for path in stored.iterdir() if "big" in path.name] == ["big.zarr"]
    assert zarr.open_group(str(stored / "big.zarr"), mode="r")["0"].shape == (48, 320, 320)


def test_a_removal_seen_half_done_in_the_overlay_keeps_the_views_names(tmp_path, monkeypatch):
    """Deleting a picks file both roots hold removes the overlay's copy, then writes a
    whiteout. The overlay watch, seeing the first, waits for the removal to end before it
    asks what the file shows: it found the static copy showing, told the kernel to drop its
    views' names, and `mv`'s removal, unlinking such a view next, got ENOENT (a flaky
    `test_renames[s3]`). No kernel here: what the tree reports is looked at."""
    import threading
    from scopefs.backends import open_tree
    from scopefs.backends.options import Options
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("SCOPEFS_LEARN_VIEW_SIZES", "0")
    static = one_run_project(tmp_path, (1,), levels=1)[0]
    picks, name = "ExperimentRuns/TS_001/Picks", "tester_1_proteasome.json"
    (tmp_path / "overlay" / picks).mkdir(parents=True)
    (tmp_path / "overlay" / picks / name).write_text(json.dumps(rich_picks(2)))
    tree = open_tree("copick", str(static), Options({"overlay": str(tmp_path / "overlay")}))
    told: list[tuple[int, str]] = []
    tree.listen(lambda inodes, entries, waited: told.extend(entries))
    whiteout, seen = tree.whiteout, []

    def seen_half_done(parent, gone):           # the watch's report, between the two steps
        watch = threading.Thread(target=tree.overlay_changed, args=({picks: {name}},))
        watch.start()
        watch.join(0.5)
        whiteout(parent, gone)
        seen.append(watch)
    try:
        folder = tree.root
        for part in picks.split("/"):
            folder = folder.lookup(part)
        assert "tester_1_proteasome.csv" in [entry[1] for entry in folder.scan()]
        monkeypatch.setattr(tree, "whiteout", seen_half_done)
        folder.unlink(name)
        seen[0].join()
        assert (folder.ino, "tester_1_proteasome.csv") not in told, told
    finally:
        tree.close()



def test_a_watched_change_reads_the_views_following_it_once_with_view_copies_kept(tmp_path, monkeypatch):
    """A change the overlay watch reports, while real files kept at views' names wait for
    their views (`kept_at_view`), works out the views following each changed path once: the
    views it drops and the kept files it compares come from the same reading (each lists
    the run and its Picks/; read twice before)."""
    from scopefs.backends import open_tree
    from scopefs.backends.options import Options
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("SCOPEFS_LEARN_VIEW_SIZES", "0")
    static = one_run_project(tmp_path, (1,), levels=1)[0]
    spacing, star = "ExperimentRuns/TS_001/VoxelSpacing10.000", "tester_1_proteasome.star"
    (tmp_path / "overlay" / spacing).mkdir(parents=True)
    (tmp_path / "overlay" / spacing / star).write_text("not the view's bytes\n")
    tree = open_tree("copick", str(static), Options({"overlay": str(tmp_path / "overlay")}))
    try:
        tree.kept_at_view(f"{spacing}/{star}")
        read: list[str] = []
        views_following = tree.derive.views_following
        monkeypatch.setattr(tree.derive, "views_following", lambda rel: read.append(rel) or views_following(rel))
        tree.overlay_changed({f"{spacing}/wbp.zarr": {".zattrs"}})
        assert read == [f"{spacing}/wbp.zarr/.zattrs"], read
        assert views_following(f"{spacing}/wbp.zarr/.zattrs") == [f"{spacing}/{star}"]
    finally:
        tree.close()


@pytest.mark.parametrize("how", ["written", "renamed in"])
def test_a_store_file_written_or_renamed_in_reads_the_views_following_it_once(tmp_path, monkeypatch, how):
    """A zarr store's metadata written through the mount (its handle's flush) or renamed
    in (rsync) tells the kernel of the views following it from one reading of them (the
    check that any follow, then overlay_changed, each listed the run and Picks/ before)."""
    from scopefs.backends import open_tree
    from scopefs.backends.options import Options
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("SCOPEFS_LEARN_VIEW_SIZES", "0")
    static = one_run_project(tmp_path, (1,), levels=1)[0]
    tree = open_tree("copick", str(static), Options({"overlay": str(tmp_path / "overlay")}))
    try:
        store = tree.root.lookup("ExperimentRuns").lookup("TS_001").lookup("VoxelSpacing10.000").lookup("wbp.zarr")
        zattrs_path = "ExperimentRuns/TS_001/VoxelSpacing10.000/wbp.zarr/.zattrs"
        zattrs = (static / zattrs_path).read_bytes()
        name = ".zattrs" if how == "written" else ".zattrs.tmp"     # (copied up or made before counting)
        handle = (store.lookup(name) if how == "written" else store.create(name, 0o644)).open(os.O_WRONLY)
        read: list[str] = []
        views_following = tree.derive.views_following
        monkeypatch.setattr(tree.derive, "views_following", lambda rel: read.append(rel) or views_following(rel))
        handle.write(0, zattrs)
        handle.flush()
        handle.release()
        if how == "renamed in":
            store.rename(name, store, ".zattrs")
        assert read.count(zattrs_path) == 1, read           # (renamed in: the name written first, read once too)
        assert views_following(zattrs_path), "no view follows the store's .zattrs: nothing tested"
    finally:
        tree.close()


class _ImportTree:
    """What tomogram imports use of an overlay tree: a local overlay in `path` and its lock."""

    def __init__(self, path: Path):
        import threading

        from scopefs.backends.overlay.local import LocalRoot
        (path / "run" / "VoxelSpacing10.000").mkdir(parents=True)
        self.lock = threading.RLock()
        self.upper = LocalRoot(str(path))

    def overlay_changed(self, changes):
        pass


def _written_mrc(path: Path, data: np.ndarray) -> str:
    with mrcfile.new(str(path)) as mrc:
        mrc.set_data(data)
        mrc.voxel_size = 10.0
    return str(path)


def test_a_tomogram_import_is_renamed_into_place_where_the_overlay_has_no_rename_noreplace(tmp_path, monkeypatch):
    """NFS, ZFS before 2.2 and some FUSE overlays refuse renameat2's RENAME_NOREPLACE
    (EINVAL): a converted tomogram is still renamed into place, as a plain rename (a store
    that arrived meanwhile is looked for under the tree's lock instead)."""
    from scopefs.backends import copick_views
    from scopefs.backends.kernel import RENAME_NOREPLACE
    from scopefs.backends.overlay import local
    plain = local.rename_at

    def refusing_noreplace(old_dir, old, new_dir, new, flags=0):
        if flags & RENAME_NOREPLACE:
            raise OSError(errno.EINVAL, "RENAME_NOREPLACE not supported")
        plain(old_dir, old, new_dir, new, flags)
    monkeypatch.setattr(local, "rename_at", refusing_noreplace)
    monkeypatch.setattr(copick_views, "rename_at", refusing_noreplace, raising=False)
    tree = _ImportTree(tmp_path / "upper")
    imports = copick_views.Imports(tree, None, None)
    data = np.arange(4 * 6 * 8, dtype=np.float32).reshape(4, 6, 8)
    temp = _written_mrc(tmp_path / ".wbp.mrc.part", data)
    try:
        imports._convert(copick_views.TomogramImport(imports, "run/VoxelSpacing10.000", "wbp.mrc", 10.0), temp)
    finally:
        imports.close()
        tree.upper.close()
    folder = tmp_path / "upper" / "run" / "VoxelSpacing10.000"
    assert {k: imports.tomograms[k] for k in ("imported", "failed")} == {"imported": 1, "failed": 0}
    assert sorted(os.listdir(folder)) == ["wbp.zarr"]
    assert np.array_equal(zarr.open(str(folder / "wbp.zarr"), mode="r")["0"][:], data)
    assert not os.path.exists(temp)


def test_an_unmount_finishes_the_tomogram_imports_queued(tmp_path):
    """Imports whose writers were told they succeeded (closed) but not yet converted are
    converted before the mount ends, not dropped."""
    from scopefs.backends import copick_views
    tree = _ImportTree(tmp_path / "upper")
    imports = copick_views.Imports(tree, None, None)
    data = np.ones((4, 6, 8), dtype=np.float32)
    try:
        for name in ("wbp.mrc", "denoised.mrc"):
            node = copick_views.TomogramImport(imports, "run/VoxelSpacing10.000", name, 10.0)
            imports.check_tomogram(node, _written_mrc(tmp_path / f".{name}.part", data))
    finally:
        imports.close()
        tree.upper.close()
    assert imports.tomograms["imported"] == 2
    assert sorted(os.listdir(tmp_path / "upper" / "run" / "VoxelSpacing10.000")) == ["denoised.zarr", "wbp.zarr"]


def test_a_tomogram_import_that_fails_shows_the_file_written_under_its_name(tmp_path, monkeypatch):
    """A conversion that fails after its writer was told the file is stored (`mv` has
    deleted its own copy) loses nothing: the MRC shows as a plain file under its name.
    Before, it was deleted."""
    from scopefs.backends import copick_views
    from scopefs.formats import tomogram

    def failing(volume, path, voxel_size, progress=None):
        raise MemoryError("no room")
    monkeypatch.setattr(tomogram, "write_copick_tomogram", failing)
    tree = _ImportTree(tmp_path / "upper")
    imports = copick_views.Imports(tree, None, None)
    written = _written_mrc(tmp_path / ".wbp.mrc.part", np.ones((4, 6, 8), dtype=np.float32))
    data = Path(written).read_bytes()
    try:
        imports.check_tomogram(copick_views.TomogramImport(imports, "run/VoxelSpacing10.000", "wbp.mrc", 10.0), written)
    finally:
        imports.close()
        tree.upper.close()
    assert imports.tomograms["failed"] == 1
    assert (tmp_path / "upper" / "run" / "VoxelSpacing10.000" / "wbp.mrc").read_bytes() == data


def test_an_unmount_stops_tomogram_imports_it_waited_for_too_long_and_says_which(tmp_path, monkeypatch, caplog):
    """The wait is bounded: the import running then stops at its next chunk, those queued
    do not start; each is logged as not done, and the file its writer wrote is kept out of
    sight and converted at the next mount (`Imports.resume`)."""
    from scopefs.backends import copick_views
    from scopefs.formats import tomogram

    def endless(volume, path, voxel_size, progress=None):
        os.mkdir(path)
        while True:
            progress(0, 1)
            time.sleep(0.01)
    monkeypatch.setattr(tomogram, "write_copick_tomogram", endless)
    monkeypatch.setattr(copick_views, "IMPORTS_UNMOUNT_WAIT_S", 0.2)
    tree = _ImportTree(tmp_path / "upper")
    imports = copick_views.Imports(tree, None, None)
    temps = []
    try:
        for name in ("wbp.mrc", "denoised.mrc"):
            node = copick_views.TomogramImport(imports, "run/VoxelSpacing10.000", name, 10.0)
            temps.append(_written_mrc(tmp_path / f".{name}.part", np.ones((4, 6, 8), dtype=np.float32)))
            imports.check_tomogram(node, temps[-1])
    finally:
        imports.close()
    assert {k: imports.tomograms[k] for k in ("imported", "failed")} == {"imported": 0, "failed": 2}
    assert imports.tomograms["running"] == {}
    kept = tmp_path / "upper" / ".wh..wh.scopefs.kept" / "copick-imports"
    assert sorted(os.listdir(kept)) == ["run%2FVoxelSpacing10.000%2Fdenoised.mrc", "run%2FVoxelSpacing10.000%2Fwbp.mrc"]
    assert os.listdir(tmp_path / "upper" / "run" / "VoxelSpacing10.000") == []
    not_done = [r.getMessage() for r in caplog.records if "not done at unmount" in r.getMessage()]
    assert len(not_done) == 2 and all(str(kept) in line for line in not_done), not_done

    monkeypatch.undo()                      # the next mount converts them
    imports = copick_views.Imports(tree, None, None)
    try:
        imports.resume()
    finally:
        imports.close()
        tree.upper.close()
    assert imports.tomograms["imported"] == 2
    assert sorted(os.listdir(tmp_path / "upper" / "run" / "VoxelSpacing10.000")) == ["denoised.zarr", "wbp.zarr"]
    assert os.listdir(kept) == []


def test_what_kept_sizes_need_is_read_ahead_once_and_waited_for_at_close(tmp_path, monkeypatch):
    """The daemon listens to a tree three times (`listen`): what the views' kept sizes
    need is read ahead by one thread (each read the kept sizes' file and libraries'
    metadata, side by side), which unmount waits for."""
    import threading
    from scopefs.backends import copick
    readers, release = [], threading.Event()

    def read_ahead(self):
        readers.append(threading.current_thread())
        release.wait(5)
    monkeypatch.setattr(copick.DerivedViews, "_read_ahead", read_ahead)
    tree = tree_of_picks_copies(tmp_path, 1)
    try:
        for _ in range(3):
            tree.listen(lambda *args: None)
    finally:
        threading.Timer(0.5, release.set).start()
        tree.close()
    assert len(readers) == 1, readers
    assert not readers[0].is_alive()


def tree_with_views_of_every_kind(tmp_path: Path, monkeypatch):
    """The tree (no mount) of a one-run project of 2 picks files and a mesh (a box as
    GLB): its Picks/, Meshes/ and spacing folders show every kind of view sized together."""
    import trimesh
    from scopefs.backends import kept_sizes, open_tree
    from scopefs.backends.options import Options
    monkeypatch.setattr(kept_sizes, "RACY_S", 0)        # (sources just written have an identity)
    static = one_run_project(tmp_path, (1, 2), levels=1)[0]
    meshes = static / "ExperimentRuns" / "TS_001" / "Meshes"
    meshes.mkdir()
    (meshes / "tester_1_membrane.glb").write_bytes(trimesh.creation.box().export(file_type="glb"))
    return open_tree("copick", str(static), Options({"overlay": str(tmp_path / "overlay")}))


FOLDERS_SIZED_TOGETHER = ("Picks", "Meshes", "VoxelSpacing10.000")


def test_a_listings_kept_size_keys_are_the_made_views_keys(tmp_path, monkeypatch):
    """Each view a listing sizes together (`KeptTogether`: Picks/ CSV, Meshes/ PLY, OBJ,
    STL, the spacing's picks views) has the very key its made node learns its size under
    (else a kept size is never found, or is another view's)."""
    tree = tree_with_views_of_every_kind(tmp_path, monkeypatch)
    try:
        tree.derive.learner.stop()
        compared = []
        for folder in FOLDERS_SIZED_TOGETHER:
            rel = f"ExperimentRuns/TS_001/{folder}"
            infos = {name: info for name, _, info in tree.scan(rel)}
            for name, _, make, info, kept in tree.derive.listing(rel, infos):
                if kept is not None:
                    made_key = make(info)._kept.digest()
                    assert made_key is not None and kept._keys()[name] == made_key, (rel, name)
                    compared.append(name.partition(".")[2])
        assert sorted(set(compared)) == ["csv", "em", "obj", "ply", "relion4.star", "star", "stl", "tbl"], compared
        assert len(compared) == 2 + 3 + 2 * 5
    finally:
        tree.close()


def test_a_listing_names_each_sources_views_once_for_its_entries_and_their_kept_keys(tmp_path, monkeypatch):
    """Listing Picks/ or Meshes/ names each source's views (`_views_of`) once: for the
    listing's entries and for the keys their kept sizes are looked up under (twice before)."""
    from scopefs.backends import copick
    tree = tree_with_views_of_every_kind(tmp_path, monkeypatch)
    named: list[str] = []
    views_of = copick.DerivedViews._views_of
    monkeypatch.setattr(copick.DerivedViews, "_views_of",
                        staticmethod(lambda name, convert: named.append(name) or views_of(name, convert)))
    try:
        tree.derive.learner.stop()
        for folder in ("Picks", "Meshes"):
            rel = f"ExperimentRuns/TS_001/{folder}"
            listing = tree.derive.listing(rel, {name: info for name, _, info in tree.scan(rel)})
            kept = {entry[4] for entry in listing}
            assert len(kept) == 1 and None not in kept and len(kept.pop()._keys()) == len(listing)
        assert sorted(named) == ["tester_1_membrane.glb", "tester_1_proteasome.json", "tester_2_proteasome.json"], named
    finally:
        tree.close()


def test_every_view_sized_together_is_the_size_of_its_bytes(tmp_path, monkeypatch):
    """A mount after one that learned every size (`SizeLearner`): each view of a Picks/,
    Meshes/ and spacing folder is sized from its listing's kept sizes, none made, and each
    size is that of the bytes the view then reads (not another view's)."""
    from scopefs.backends import open_tree
    from scopefs.backends.options import Options
    first = tree_with_views_of_every_kind(tmp_path, monkeypatch)
    first.derive.learner._learn()
    first.close()
    tree = open_tree("copick", str(tmp_path / "static"), Options({"overlay": str(tmp_path / "overlay")}))
    try:
        tree.derive.learner.stop()
        run = tree.root.lookup("ExperimentRuns").lookup("TS_001")
        views = {}
        for folder in FOLDERS_SIZED_TOGETHER:
            for _, name, node, _ in run.lookup(folder).scan():
                if name.rpartition(".")[2] in ("csv", "ply", "obj", "stl", "star", "tbl", "em"):
                    views[f"{folder}/{name}"] = node.attr().size
        assert len(views) == 2 + 3 + 2 * 5, sorted(views)
        assert tree.derive.status()["views_made"] == 0
        for path, size in views.items():
            node = run.lookup(path.split("/")[0]).lookup(path.split("/")[1])
            assert len(node.open(os.O_RDONLY).read(0, 1 << 24)) == size, path
    finally:
        tree.close()


def test_a_view_replaced_by_its_changed_source_lets_go_of_its_listings_sizes(tmp_path, monkeypatch):
    """A listing's kept sizes (`KeptTogether`) hold what its sources show, not every
    name of the folder; a mesh rewritten and its folder listed again gives its views new
    nodes, and the old ones (kept by the mount: the kernel never forgets what it never
    looked up) let go of the old listing's."""
    import gc
    tree = tree_with_views_of_every_kind(tmp_path, monkeypatch)
    try:
        tree.derive.learner.stop()
        rel = "ExperimentRuns/TS_001/Meshes"
        mesh = tmp_path / "static" / rel / "tester_1_membrane.glb"
        infos = {name: info for name, _, info in tree.scan(rel)}
        notes = infos["tester_1_membrane.glb"]._replace(size=1)
        kept = tree.derive.listing(rel, {**infos, "notes.txt": notes})[0][4]
        held = [ref for ref in gc.get_referents(kept._keys) if isinstance(ref, (tuple, dict))]
        held += [cell.cell_contents for refs in held if isinstance(refs, tuple) for cell in refs
                 if type(cell).__name__ == "cell"]
        assert not any(isinstance(ref, dict) and "notes.txt" in ref for ref in held), held
        old = [node for _, node, _ in tree.derived(rel, infos)]
        mesh.write_bytes(mesh.read_bytes() + b"\0" * 4)
        infos = {name: info for name, _, info in tree.scan(rel)}
        new = [node for _, node, _ in tree.derived(rel, infos)]
        assert len(old) == 3 and not set(old) & set(new)
        assert [node._kept for node in old] == [None] * 3
    finally:
        tree.close()


def test_a_view_name_two_picks_files_share_has_no_kept_size(tmp_path, monkeypatch):
    """`x.json` shows `x.relion4.star`, and so does `x.relion4.json` (as `.star`): that
    name is not sized from the kept sizes (it was given one file's view's, whichever was
    listed last); the other views are."""
    from scopefs.backends import kept_sizes
    monkeypatch.setattr(kept_sizes, "RACY_S", 0)
    tree = tree_of_picks_copies(tmp_path, 1)
    try:
        tree.derive.learner.stop()
        picks = tmp_path / "static" / "ExperimentRuns" / "TS_001" / "Picks"
        (picks / "tester_1_proteasome.relion4.json").write_bytes((picks / "tester_1_proteasome.json").read_bytes())
        rel = "ExperimentRuns/TS_001/VoxelSpacing10.000"
        infos = {name: info for name, _, info in tree.scan(rel)}
        keys = next(kept for *_, kept in tree.derive.listing(rel, infos) if kept is not None)._keys()
        assert keys["tester_1_proteasome.relion4.star"] is None
        assert None not in (keys["tester_1_proteasome.star"], keys["tester_1_proteasome.relion4.relion4.star"])
    finally:
        tree.close()


def test_a_listing_that_stated_nothing_sizes_nothing_together(tmp_path, monkeypatch):
    """The mount's learner lists Picks/ and Meshes/ by name only (`SizeLearner`): their
    views have no source identity, so no kept sizes are looked up for them together
    (each view's node finds its own)."""
    tree = tree_with_views_of_every_kind(tmp_path, monkeypatch)
    try:
        tree.derive.learner.stop()
        for folder in ("Picks", "Meshes"):
            rel = f"ExperimentRuns/TS_001/{folder}"
            assert [kept for *_, kept in tree.derive.listing(rel, dict.fromkeys(tree.listing(rel)))] \
                == [None] * (2 if folder == "Picks" else 3)
    finally:
        tree.close()


def test_a_star_view_made_before_its_tomogram_arrived_centres_on_it_once_it_is_there(tmp_path, mount):
    """RELION 5's STAR view centres on the run's tomogram: one read while the run had none
    holds pixel coordinates (as `.relion4.star`); once a tomogram is copied in, the view
    centres on it (the overlay watch tells the kernel). Before, it kept the uncentred
    layout until a remount."""
    mnt = mount(*one_run_project(tmp_path, (3,), levels=1))
    runs = mnt / "ExperimentRuns"
    (runs / "TS_002").mkdir()
    subprocess.run(["cp", "-r", str(runs / "TS_001" / "Picks"), str(runs / "TS_002")], check=True)
    spacing = runs / "TS_002" / "VoxelSpacing10.000"
    spacing.mkdir()
    assert b"rlnCenteredCoordinateXAngst" not in (spacing / "tester_3_proteasome.star").read_bytes()
    subprocess.run(["cp", "-r", str(runs / "TS_001" / "VoxelSpacing10.000" / "wbp.zarr"), str(spacing)], check=True)
    centred = (runs / "TS_001" / "VoxelSpacing10.000" / "tester_3_proteasome.star").read_bytes()
    deadline = time.monotonic() + 5
    while (spacing / "tester_3_proteasome.star").read_bytes() != centred.replace(b"TS_001", b"TS_002"):
        assert time.monotonic() < deadline, (spacing / "tester_3_proteasome.star").read_bytes()
        time.sleep(0.05)


def test_a_store_being_copied_in_has_no_views_until_its_coarsest_level_arrives(tmp_path, mount):
    """`cp -r` writes a store level by level, the coarsest last: until that level's
    metadata is there, the store has no MRC or preview view and gives its run's STAR views
    no centre (nothing remembered: they all appear once it is whole). Before, the views
    were listed from level 0's metadata and the coarsest level's failed with EIO."""
    mnt = mount(*one_run_project(tmp_path, (3,), levels=2))
    runs = mnt / "ExperimentRuns"
    store = runs / "TS_001" / "VoxelSpacing10.000" / "wbp.zarr"
    spacing = runs / "TS_002" / "VoxelSpacing10.000"
    (spacing / "wbp.zarr").mkdir(parents=True)
    subprocess.run(["cp", "-r", str(runs / "TS_001" / "Picks"), str(runs / "TS_002")], check=True)
    for name in os.listdir(store):
        if name != "1":                                     # all but the coarsest level
            subprocess.run(["cp", "-r", str(store / name), str(spacing / "wbp.zarr")], check=True)
    listed = sorted(os.listdir(spacing))
    assert [n for n in listed if n.endswith((".mrc", ".png"))] == [], listed
    assert b"rlnCenteredCoordinateXAngst" not in (spacing / "tester_3_proteasome.star").read_bytes()
    subprocess.run(["cp", "-r", str(store / "1"), str(spacing / "wbp.zarr")], check=True)
    deadline = time.monotonic() + 5
    while not {"wbp.mrc", "wbp.bin2.mrc", "wbp.png"} <= set(os.listdir(spacing)):
        assert time.monotonic() < deadline, os.listdir(spacing)
        time.sleep(0.05)
    assert (spacing / "wbp.bin2.mrc").read_bytes() == \
        (runs / "TS_001" / "VoxelSpacing10.000" / "wbp.bin2.mrc").read_bytes().replace(b"TS_001", b"TS_002")
    centred = (runs / "TS_001" / "VoxelSpacing10.000" / "tester_3_proteasome.star").read_bytes()
    while (spacing / "tester_3_proteasome.star").read_bytes() != centred.replace(b"TS_001", b"TS_002"):
        assert time.monotonic() < deadline, (spacing / "tester_3_proteasome.star").read_bytes()
        time.sleep(0.05)


def test_a_tomogram_import_cut_by_a_killed_daemon_is_resumed_at_the_next_mount(tmp_path, mount):
    """The daemon killed while it converts (after `cp` was told the file is stored: `mv`
    has deleted its own copy): nothing partial shows beside the tomograms, and the next
    mount converts the MRC kept out of sight, the same voxels. Before, the MRC stayed as
    a hidden `.big.mrc.*` beside the tomograms and was never imported."""
    source = one_run_project(tmp_path, (), levels=1)
    mnt = mount(*source)
    data = np.random.default_rng(3).normal(size=(24, 320, 320)).astype(np.float32)
    with mrcfile.new(str(tmp_path / "big.mrc")) as mrc:
        mrc.set_data(data)
        mrc.voxel_size = 10.0
    spacing = mnt / "ExperimentRuns" / "TS_001" / "VoxelSpacing10.000"
    subprocess.run(["mv", str(tmp_path / "big.mrc"), str(spacing)], check=True)
    deadline = time.monotonic() + 10
    while "chunks" not in daemon_status(mnt)["tomogram_imports"]["running"].get(
            "ExperimentRuns/TS_001/VoxelSpacing10.000/big.mrc", ""):
        assert time.monotonic() < deadline and not daemon_status(mnt)["tomogram_imports"]["imported"]
        time.sleep(0.005)
    pid = daemon_pid(mnt)
    os.kill(pid, signal.SIGKILL)                   # the daemon this test started
    cleanup_mount(mnt, pid)
    stored = tmp_path / "overlay" / "ExperimentRuns" / "TS_001" / "VoxelSpacing10.000"
    assert [p.name for p in stored.iterdir()] == []          # nothing partial shown
    again = mount(*source, mountpoint=tmp_path / "again")
    while not (status := daemon_status(again)["tomogram_imports"])["imported"]:
        assert time.monotonic() < deadline + 20 and not status["failed"], status
        time.sleep(0.02)
    assert {"big.mrc", "big.png", "big.zarr"} <= set(os.listdir(again / "ExperimentRuns" / "TS_001" / "VoxelSpacing10.000"))
    assert np.array_equal(zarr.open_group(str(stored / "big.zarr"), mode="r")["0"][:], data)
    assert [p.name for p in stored.iterdir()] == ["big.zarr"]
    assert os.listdir(tmp_path / "overlay" / ".wh..wh.scopefs.kept" / "copick-imports") == []


def sizes_and_digests(folder: Path) -> dict[str, tuple[int, str] | None]:
    """Every path under folder: a file's size and checksum, None for a folder."""
    import hashlib
    return {str(path.relative_to(folder)): None if path.is_dir() else
            (path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest()) for path in sorted(folder.rglob("*"))}


def test_a_run_copied_whole_by_rsync_is_the_same_run_with_its_own_views(tmp_path, mount):
    """A run copied inside the mount by `rsync -a` into a new run: exit status 0, the same
    names, sizes and checksums. A view's copy renamed onto a view's name is dropped if it
    holds that view's bytes (at once, or once its source arrives and the view serves
    them: Picks/'s CSV views); one that differs (it names the old run) stays a real file,
    as does the preview copied before its store. Before, every view's copy was stored
    and hid its view."""
    mnt = mount(*one_run_project(tmp_path, (1, 2), levels=1))
    runs = mnt / "ExperimentRuns"
    before = sizes_and_digests(runs / "TS_001")
    copied = subprocess.run(["rsync", "-a", f"{runs / 'TS_001'}/", f"{runs / 'TS_002'}/"], capture_output=True, text=True)
    assert copied.returncode == 0, copied.stderr
    assert sizes_and_digests(runs / "TS_002") == before
    kept = tmp_path / "overlay" / "ExperimentRuns" / "TS_002"
    deadline = time.monotonic() + 5                 # (Picks/'s CSV copies go once their picks are there)
    while {"tester_1_proteasome.csv", "tester_2_proteasome.csv"} & set(os.listdir(kept / "Picks")):
        assert time.monotonic() < deadline, os.listdir(kept / "Picks")
        time.sleep(0.05)
    copies = {p.name for p in (kept / "VoxelSpacing10.000").iterdir()} - {"wbp.zarr", "wbp.png"}
    assert copies and all(b"TS_001" in (kept / "VoxelSpacing10.000" / name).read_bytes() for name in copies), copies
    assert not {"tester_1_proteasome.tbl", "tester_1_proteasome.em"} & copies, copies
    assert sizes_and_digests(runs / "TS_002") == before


def test_a_view_written_over_with_its_own_bytes_takes_them_and_refuses_others(tmp_path, mount):
    """`cp` of a view's copy onto that view (O_TRUNC, then the bytes) exits 0 and stores
    nothing; other bytes, a shorter or longer file, an append or a read-write open are
    refused (EROFS), and the view reads as it was right after each (the kernel is told to
    drop what the writer left in its cache). Before, any open to write was refused."""
    mnt = mount(*one_run_project(tmp_path, (3,), levels=1))
    spacing = mnt / "ExperimentRuns" / "TS_001" / "VoxelSpacing10.000"
    view = spacing / "tester_3_proteasome.csv"
    data = view.read_bytes()
    (tmp_path / "copy.csv").write_bytes(data)
    (tmp_path / "other.csv").write_bytes(data.replace(b"TS_001", b"TS_009"))
    (tmp_path / "short.csv").write_bytes(data[:-1])
    same = subprocess.run(["cp", str(tmp_path / "copy.csv"), str(view)], capture_output=True, text=True)
    assert same.returncode == 0, same.stderr
    for name in ("other.csv", "short.csv"):
        refused = subprocess.run(["cp", str(tmp_path / name), str(view)], capture_output=True, text=True)
        assert refused.returncode != 0 and "Read-only file system" in refused.stderr, refused
        assert view.read_bytes() == data
    subprocess.run(["sh", "-c", f": > {view}"])
    assert view.stat().st_size == len(data) and view.read_bytes() == data
    for mode in ("r+b", "ab"):
        with pytest.raises(OSError) as raised:
            open(view, mode).close()
        assert raised.value.errno == errno.EROFS
    mrc = spacing / "wbp.mrc"
    head = mrc.read_bytes()[:1088]
    with pytest.raises(OSError) as raised:
        with open(mrc, "wb", buffering=0) as out:       # O_TRUNC: the same first bytes are taken
            assert out.write(head[:1024]) == 1024
            with pytest.raises(OSError) as refused:
                out.write(bytes(255 - b for b in head[1024:]))
            assert refused.value.errno == errno.EROFS
    assert raised.value.errno == errno.EROFS            # (at close: not all of it written back)
    assert mrc.read_bytes()[:1088] == head
    assert [p for p in (tmp_path / "overlay").rglob("*") if not p.name.startswith(".wh.")] == []


def test_a_modified_copy_renamed_onto_a_view_is_kept_and_a_restored_picks_file_is_imported(tmp_path, mount):
    """The negative cases: a file with other bytes than a view's, renamed onto its name
    (`rsync`: a CSV, an MRC with the view's own label), is stored as it is and shows; a saved STAR file copied back into a run
    whose picks were deleted is imported (the picks are back), not taken for a copy, as is
    a Dynamo view copied into another run."""
    mnt = mount(*one_run_project(tmp_path, (3,), levels=1))
    run = mnt / "ExperimentRuns" / "TS_001"
    spacing = run / "VoxelSpacing10.000"
    saved = (spacing / "tester_3_proteasome.star").read_bytes()
    (tmp_path / "saved.star").write_bytes(saved)
    modified = (spacing / "tester_3_proteasome.csv").read_bytes() + b"# my note\n"
    (tmp_path / "tester_3_proteasome.csv").write_bytes(modified)
    synced = subprocess.run(["rsync", str(tmp_path / "tester_3_proteasome.csv"), f"{spacing}/"], capture_output=True, text=True)
    assert synced.returncode == 0, synced.stderr
    assert (spacing / "tester_3_proteasome.csv").read_bytes() == modified
    assert (tmp_path / "overlay" / "ExperimentRuns" / "TS_001" / "VoxelSpacing10.000" / "tester_3_proteasome.csv").read_bytes() == modified
    labelled = bytearray((spacing / "wbp.mrc").read_bytes())          # the view's label, other voxels
    labelled[-1] ^= 0xFF
    (tmp_path / "wbp.mrc").write_bytes(labelled)
    synced = subprocess.run(["rsync", str(tmp_path / "wbp.mrc"), f"{spacing}/"], capture_output=True, text=True)
    assert synced.returncode == 0, synced.stderr
    assert (spacing / "wbp.mrc").read_bytes() == labelled
    (run / "Picks" / "tester_3_proteasome.json").unlink()
    assert "tester_3_proteasome.star" not in os.listdir(spacing)
    subprocess.run(["cp", str(tmp_path / "saved.star"), str(spacing / "tester_3_proteasome.star")], check=True)
    assert "tester_3_proteasome.json" in os.listdir(run / "Picks")
    assert (spacing / "tester_3_proteasome.star").read_bytes() == saved
    other = mnt / "ExperimentRuns" / "TS_002" / "VoxelSpacing10.000"          # a view copied to a run without its picks
    other.mkdir(parents=True)
    subprocess.run(["cp", str(spacing / "tester_3_proteasome.tbl"), str(other)], check=True)
    assert "tester_3_proteasome.json" in os.listdir(other.parent / "Picks")


def test_a_spacing_folders_views_are_placed_in_the_same_python_calls_a_view_for_any_number(tmp_path, monkeypatch):
    """A cold walk lists tens of thousands of views (`find`, `du`, `ls -lR`): listing a
    spacing folder places each as a `DerivedFile` (no view's node made) in the same Python
    calls a view for 2 picks files as for 20, and in at most two (its `__init__`, and its
    picks file's stat and version shared by its 5 views; 3.4 before: a generator step to
    order each entry, and a sort key's call each source)."""
    import gc
    view_nodes_made(monkeypatch)
    costs = {}
    for picks in (2, 20):
        tree = tree_of_picks_copies(tmp_path / str(picks), picks)
        try:
            tree.derive.learner.stop()
            spacing = tree.root.lookup("ExperimentRuns").lookup("TS_001").lookup("VoxelSpacing10.000")
            spacing.scan()                  # (what is read once a mount: the tomogram's levels)
            tree._derived.clear()           # (listed again: each view placed anew)
            gc.collect()
            gc.disable()
            try:
                costs[picks] = python_calls(spacing.scan)
            finally:
                gc.enable()
        finally:
            tree.close()
    per_view = (costs[20] - costs[2]) / (18 * 5)
    assert per_view <= 2, costs


def test_a_runs_spacing_folders_share_one_scan_of_its_picks(tmp_path, monkeypatch):
    """Each spacing folder of a run shows views of the run's picks files: listing a run's
    spacing folders back to back (a walk) stats the picks files once for all of them
    (each listing stat'ed every picks file), for 2 picks files as for 20; a change through
    the mount, or a while (`PICKS_SCAN_S`), and the next listing stats them again, and
    shows what they are now."""
    from scopefs.backends import copick_views
    for picks in (2, 20):
        tree = tree_of_picks_copies(tmp_path / str(picks), picks)
        run_dir = tmp_path / str(picks) / "static" / "ExperimentRuns" / "TS_001"
        for spacing in ("VoxelSpacing20.000", "VoxelSpacing40.000"):
            (run_dir / spacing).mkdir()
        stated = stats_counted(tree)
        try:
            tree.derive.learner.stop()
            run = tree.root.lookup("ExperimentRuns").lookup("TS_001")
            folders = [run.lookup(name) for name in ("VoxelSpacing10.000", "VoxelSpacing20.000", "VoxelSpacing40.000")]
            of_picks = []
            for folder in folders:
                stated.clear()
                assert sum(name.endswith(".tbl") for _, name, _, _ in folder.scan()) == picks
                of_picks.append(sum(path.endswith("_proteasome.json") for path in stated))
            assert of_picks == [picks, 0, 0], of_picks
            tree.edited()                           # (a change through the mount)
            stated.clear()
            folders[1].scan()
            assert sum(path.endswith("_proteasome.json") for path in stated) == picks
            monkeypatch.setattr(copick_views, "PICKS_SCAN_S", 0.0)
            (run_dir / "Picks" / "tester_1_proteasome.json").write_text(json.dumps(rich_picks(7)))
            stated.clear()
            views = {name: node for _, name, node, _ in folders[2].scan()}
            assert sum(path.endswith("_proteasome.json") for path in stated) == picks
            view, now = views["tester_1_proteasome.tbl"], picks_format.Picks.from_json(
                (run_dir / "Picks" / "tester_1_proteasome.json").read_bytes())
            read = view.open(os.O_RDONLY).read(0, 1 << 24)
            assert read == picks_format.export(now, "dynamo", "TS_001", 40.0, None) and view.attr().size == len(read)
            monkeypatch.undo()
        finally:
            tree.close()
