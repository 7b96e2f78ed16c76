"""A source of every kind, made with scopefs's own writers, and how to mount it: the walk
test (small) and the walk benchmark (`benchmarks/walk.py`, real sizes) share these."""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scopefs.backends.fsdb import FSDB, io
from scopefs.formats.iid import IIDFile
from scopefs.formats.imgstore.sample import make_sample, sample_frame

KINDS = ("imgstore", "iid", "fsdb", "copick")


@dataclass
class Source:
    kind: str
    path: Path                       # what `scopefs mount` is given
    options: list[str] = field(default_factory=list)
    small_files: tuple[str, ...] = ()     # names of the small files a walker reads
    write_dir: str | None = None     # where new files may be copied in (relative), if anywhere


def imgstore(path: Path, frames: int) -> Source:
    """A 240x320 MJPEG store (frames are decoded and encoded on read)."""
    if not (path / "metadata.yaml").exists():
        make_sample(str(path), "mjpeg/avi", frames, chunksize=max(100, frames // 10))
    return Source("imgstore", path, [], ("store.json", "metadata.json"))


def iid(path: Path, entries: int) -> Source:
    """Disks, 15%-scatter and full rectangles of 4 to 63 px a side, in 10 groups."""
    if not path.exists():
        rng = np.random.default_rng(0)
        f = IIDFile()
        for i in range(entries):
            h, w = (int(v) for v in rng.integers(4, 64, 2))
            kind = i % 3
            if kind == 0:
                yy, xx = np.mgrid[:h, :w]
                mask = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 2) ** 2
            elif kind == 1:
                mask = rng.random((h, w)) < 0.15
            else:
                mask = np.ones((h, w), bool)
            r, c = (int(v) for v in rng.integers(0, 4000, 2))
            f.add(mask, (r, c, r + h, c + w), address=f"cell-{i}".encode(), domain=b"bench", groups=(f"g{i % 10}",))
        f.meta = {"image": "bench.tif"}
        f.save(str(path))
    return Source("iid", path, [], ("entry.json", "meta.json"), write_dir=".")


def fsdb(path: Path, scans: int, filesets: int, files: int) -> Source:
    """`scans` scans of `filesets` filesets of `files` small PNG files, each with metadata."""
    if not (path / "romidb").exists():
        path.mkdir(parents=True, exist_ok=True)
        (path / "romidb").touch()
        rng = np.random.default_rng(0)
        db = FSDB(str(path))
        db.connect()
        try:
            for s in range(scans):
                scan = db.create_scan(f"scan_{s:03d}", {"plant": s})
                for k in range(filesets):
                    fileset = scan.create_fileset(f"fileset_{k}", {"task": k})
                    for i in range(files):
                        file = fileset.create_file(f"img_{i:03d}")
                        io.write_image(file, rng.integers(0, 255, (16, 16, 3), np.uint8))
                        file.set_metadata({"angle": i, "scan": s})
        finally:
            db.disconnect()
    return Source("fsdb", path, [], (".metadata.json",), write_dir="scan_000/fileset_0")


def copick(path: Path, runs: int, picks: int) -> Source:
    """A static copick root (`runs` runs, each a 64^3 tomogram written as copick writes
    them, an OME-Zarr group of two levels in 32^3 chunks, and `picks` picks files) mounted
    with an empty overlay of its own."""
    from scopefs.formats.tomogram import write_copick_tomogram
    static, overlay = path / "static", path / "overlay"
    marker = path / f".made-ome-{runs}-{picks}"
    if not marker.exists():
        shutil.rmtree(static, ignore_errors=True)
        overlay.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        for r in range(runs):
            run = static / "ExperimentRuns" / f"TS_{r:03d}"
            write_copick_tomogram(rng.random((64, 64, 64), dtype=np.float32), str(run / "VoxelSpacing10.000" / "wbp.zarr"),
                                  10.0, levels=2, chunk=32)
            (run / "Picks").mkdir(parents=True)
            for p in range(picks):
                points = [{"location": {"x": float(i), "y": 2.0, "z": 3.0}} for i in range(p % 7 + 1)]
                (run / "Picks" / f"user{p}_{p}_ribosome.json").write_text(
                    json.dumps({"pickable_object_name": "ribosome", "user_id": f"user{p}", "session_id": str(p),
                                "points": points}))
        marker.touch()
    return Source("copick", static, ["-t", "copick", "-o", f"overlay={overlay}"], (".json",))


def fsdb_images(path: Path, files: int, shape=(256, 256, 3)) -> Path:
    """An FSDB of one scan whose fileset `images` holds `files` pictures as PNG (frames of
    the imgstore sample): what a file manager shows as thumbnails."""
    path.mkdir(parents=True)
    (path / "romidb").touch()
    db = FSDB(str(path))
    db.connect()
    try:
        fileset = db.create_scan("plant_001").create_fileset("images")
        for i in range(files):
            io.write_image(fileset.create_file(f"{i:05d}"), sample_frame(i, shape)[:, :, ::-1])
    finally:
        db.disconnect()
    return path


def copick_tomograms(path: Path, runs: int) -> Path:
    """A static copick root of `runs` runs, each with two tomograms (multiscale groups of a
    64^3 and a 32^3 level, as copick writes them: `VoxelSpacing10.000/<name>.png` are their
    previews) and a picks file. The volumes hold a bright block on a ramp, so that the
    previews' slices differ."""
    import zarr
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 4, 64, dtype=np.float32)
    for r in range(runs):
        run = path / "ExperimentRuns" / f"TS_{r:03d}"
        for k, name in enumerate(("wbp", "denoised")):
            volume = rng.random((64, 64, 64), dtype=np.float32) + ramp
            volume[8 + 4 * k:40, 16:56 - 8 * k, 4:30 + 8 * k] += 6
            group = zarr.open_group(str(run / "VoxelSpacing10.000" / f"{name}.zarr"), mode="w", zarr_format=2)
            for level, data in (("0", volume), ("1", volume[::2, ::2, ::2])):
                group.create_array(level, shape=data.shape, chunks=(32, 32, 32), dtype="float32")[:] = data
        picks = run / "Picks"
        picks.mkdir(parents=True)
        (picks / "curator_1_ribosome.json").write_text('{"pickable_object_name": "ribosome", "points": []}')
    return path


def small_files(root: Path, source: Source) -> list[Path]:
    """The small files a walker reads (entry.json, .metadata.json...), found by walking."""
    out = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        out += [Path(folder) / f for f in sorted(files) if f.endswith(source.small_files)]
    return out
