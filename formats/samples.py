"""Built-in samples of every kind of source scopefs mounts, small, and written with
scopefs's own writers (no upstream library): `python -m scopefs.formats.samples DIR` makes

    DIR/imgstore/             an mjpeg/avi imgstore (see imgstore/sample.py)
    DIR/cells.iid             an .iid segmentation: four cells in two groups
    DIR/plantdb/              a ROMI FSDB: scan plant_001 with images, a segmentation
                              (an .iid) and a video (an imgstore fileset)
    DIR/copick/config.json    a copick project: a static root (tomogram, picks, a mesh) and
                              an overlay root (picks that replace the static ones)

The demo (`./dev demo`) mounts them; the tests mount them so that the demo cannot rot.
"""
from __future__ import annotations

import argparse
import json
import os

import cv2
import numpy as np

from . import fsdb as layout
from .iid import IIDFile
from .imgstore.sample import make_sample as make_imgstore

CELLS = [("nucleus-a", (20, 30), 9, ("nuclei",)), ("nucleus-b", (60, 90), 7, ("nuclei",)),
         ("cell-a", (10, 18), 22, ("cells",)), ("cell-b", (48, 76), 20, ("cells",))]


def disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return yy ** 2 + xx ** 2 <= radius ** 2


def make_iid(path: str) -> str:
    """Four round cells (their masks bbox-sized, as .iid stores them) in groups
    `nuclei` and `cells`, on a 128 x 160 image."""
    seg = IIDFile()
    seg.meta = {"image": "plate.png", "shape": [128, 160], "made_by": "scopefs sample"}
    for address, (row, col), radius, groups in CELLS:
        mask = disk(radius)
        seg.add(mask, (row, col, row + mask.shape[0], col + mask.shape[1]), address=address.encode(),
                domain=b"plate-1", groups=groups)
    seg.save(path)
    return path


def plant_image(i: int) -> np.ndarray:
    """A green plant on grey, turned by `i` steps (what a scanner's camera sees)."""
    img = np.full((96, 128, 3), 90, np.uint8)
    centre = (64, 60)
    cv2.line(img, (64, 95), centre, (30, 110, 50), 3)
    for leaf in range(5):
        angle = np.deg2rad(leaf * 72 + i * 15)
        tip = (int(64 + 34 * np.cos(angle)), int(60 + 24 * np.sin(angle)))
        cv2.ellipse(img, ((centre[0] + tip[0]) // 2, (centre[1] + tip[1]) // 2), (18, 7),
                    np.rad2deg(angle), 0, 360, (40, 170, 60), -1)
    return img


def make_fsdb(root: str, images: int = 3) -> str:
    """An FSDB with one scan: `images` (PNGs with file metadata), `segmentation` (an .iid,
    shown as `cells.iid.view/` when mounted) and `video` (an imgstore, shown as `video.view/`)."""
    os.makedirs(root)
    open(os.path.join(root, layout.MARKER), "wb").close()
    scan = os.path.join(root, "plant_001")
    filesets = []

    def fileset(name: str, files: list[tuple[str, str]], metadata: dict) -> str:
        filesets.append({"id": name, "files": [{"id": fid, "file": fname} for fid, fname in files]})
        layout.write_json(layout.fileset_metadata_path(scan, name), metadata)
        return os.path.join(scan, name)

    os.makedirs(os.path.join(scan, layout.METADATA_DIR, "images"))
    folder = fileset("images", [(str(i), f"{i}.png") for i in range(images)], {"camera": "sample"})
    os.makedirs(folder)
    for i in range(images):
        cv2.imwrite(os.path.join(folder, f"{i}.png"), plant_image(i))
        layout.write_json(layout.file_metadata_path(scan, "images", str(i)), {"angle_deg": 15 * i})
    folder = fileset("segmentation", [("cells", "cells.iid")], {"tool": "scopefs sample"})
    os.makedirs(folder)
    make_iid(os.path.join(folder, "cells.iid"))
    folder = fileset("video", [("metadata", "metadata.yaml")], {"kind": "imgstore"})
    make_imgstore(folder, frames=20, chunksize=10)
    layout.write_json(os.path.join(scan, layout.FILES_JSON), {"filesets": filesets})
    layout.write_json(layout.scan_metadata_path(scan), {"plant": "Arabidopsis thaliana", "scanner": "sample"})
    return root


OBJECTS = [{"name": "ribosome", "is_particle": True, "label": 1, "radius": 60, "color": [0, 117, 220, 255]},
           {"name": "membrane", "is_particle": False, "label": 2, "color": [255, 204, 153, 255]}]


def picks(obj: str, user: str, session: str, points: list[tuple[float, float, float]]) -> dict:
    """A copick picks file as copick writes it."""
    identity = [[float(r == c) for c in range(4)] for r in range(4)]
    return {"pickable_object_name": obj, "user_id": user, "session_id": session, "run_name": "TS_001",
            "voxel_spacing": None, "unit": "angstrom", "trust_orientation": True,
            "points": [{"location": {"x": x, "y": y, "z": z}, "transformation_": identity, "instance_id": 0,
                        "score": 1.0} for x, y, z in points]}


def make_copick(root: str) -> str:
    """A copick project: the static root holds run TS_001 (a 32^3 tomogram as OME-Zarr,
    two ribosome picks, a membrane mesh), the overlay root three ribosome picks of the same
    name (the overlay's win). Returns the config's path."""
    import trimesh
    import zarr
    static, overlay = os.path.join(root, "static"), os.path.join(root, "overlay")
    run = os.path.join(static, "ExperimentRuns", "TS_001")
    for sub in ("VoxelSpacing10.000", "Picks", "Meshes"):
        os.makedirs(os.path.join(run, sub))
    os.makedirs(os.path.join(overlay, "ExperimentRuns", "TS_001", "Picks"))
    zz, yy, xx = np.mgrid[:32, :32, :32]
    volume = np.exp(-((zz - 16) ** 2 + (yy - 12) ** 2 + (xx - 20) ** 2) / 40).astype(np.float32)
    group = zarr.open_group(os.path.join(run, "VoxelSpacing10.000", "wbp.zarr"), mode="w", zarr_format=2)
    group.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": a, "type": "space", "unit": "angstrom"}
                                                               for a in "zyx"],
                                   "datasets": [{"path": "0", "coordinateTransformations":
                                                 [{"type": "scale", "scale": [10.0, 10.0, 10.0]}]}]}]
    group.create_array("0", shape=volume.shape, dtype=volume.dtype, chunks=(16, 16, 16))[...] = volume
    static_picks, overlay_picks = [(200.0, 120.0, 160.0), (80.0, 40.0, 60.0)], [(200.0, 120.0, 160.0),
                                                                              (80.0, 40.0, 60.0), (10.0, 250.0, 30.0)]
    for base, points in ((static, static_picks), (overlay, overlay_picks)):
        with open(os.path.join(base, "ExperimentRuns", "TS_001", "Picks", "curator_1_ribosome.json"), "w") as fh:
            json.dump(picks("ribosome", "curator", "1", points), fh, indent=2)
    trimesh.creation.icosphere(subdivisions=1, radius=50.0).export(
        os.path.join(run, "Meshes", "curator_1_membrane.glb"))
    config = os.path.join(root, "config.json")
    with open(config, "w") as fh:
        json.dump({"config_type": "filesystem", "name": "scopefs sample", "pickable_objects": OBJECTS,
                   "static_root": f"local://{static}", "overlay_root": f"local://{overlay}"}, fh, indent=2)
    return config


def make_all(base: str, frames: int = 300) -> dict[str, str]:
    """Every sample under `base` (which must not exist yet): kind -> source to mount."""
    os.makedirs(base)
    sources = {"imgstore": os.path.join(base, "imgstore"), "iid": os.path.join(base, "cells.iid"),
               "fsdb": os.path.join(base, "plantdb")}
    make_imgstore(sources["imgstore"], frames=frames)
    make_iid(sources["iid"])
    make_fsdb(sources["fsdb"])
    sources["copick"] = make_copick(os.path.join(base, "copick"))
    return sources


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", help="where to write them (must not exist)")
    parser.add_argument("--frames", type=int, default=300, help="frames of the imgstore")
    args = parser.parse_args()
    for kind, source in make_all(args.dir, args.frames).items():
        print(f"{kind:<9} {source}")


if __name__ == "__main__":
    main()
