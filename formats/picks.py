"""copick picks (JSON) in the particle formats of cryo-ET tools, with the conventions of
copick 1.31's own exporter (`copick export picks`), so the values are the same:

- positions: a point's `location` (Å, corner origin); its transform's translation is a
  shift (Å) that tools store separately (Dynamo dx/dy/dz, EM rows 10-12) or add (RELION);
- Dynamo .tbl: x, y, z in pixels of the voxel spacing; (tdrot, tilt, narot) the intrinsic
  ZXZ angles of the inverse rotation; tomogram index 1, cc = score;
- EM motive list (TOM/Artiatomi): 1-based pixel positions, intrinsic ZXZ angles of the
  rotation stored as phi, psi, theta in rows 16-18; score, tomogram 1, class 1, index;
- RELION STAR: rlnAngleRot/Tilt/Psi the intrinsic ZYZ angles of the inverse rotation;
  RELION 5 coordinates rlnCenteredCoordinate{X,Y,Z}Angst from the tomogram's centre
  (shape / 2 × voxel size), or, with no tomogram, rlnCoordinate{X,Y,Z} in pixels of the
  voxel spacing (what copick writes then, and what RELION 4-era tools read);
- CSV: copick's own table (run_name, x, y, z, transform_00..33, score, instance_id).
An identity rotation gives zero angles. Each writer is the format's library (starfile,
dynamotable, emfile, pandas); this module only computes the columns.

Reading (`parse`) inverts the same conventions, as `copick add picks` reads these formats;
the result is a copick picks JSON document (`Picks.to_json`).
"""
from __future__ import annotations

import io
import json
import os
import tempfile

import numpy as np

IDENTITY = np.eye(4)


def load_libraries() -> None:
    """Import the libraries the formats here read and write with (pandas, starfile,
    dynamotable, emfile, scipy's rotations): about a second cold, which a mount spends in
    the background once it must make a view, rather than in the listing that needs it."""
    import dynamotable  # noqa: F401
    import emfile  # noqa: F401
    import starfile  # noqa: F401
    from scipy.spatial.transform import Rotation  # noqa: F401


class Picks:
    """The points of a copick picks file as arrays, as `CopickPicks.numpy()` gives them."""

    def __init__(self, points: np.ndarray, transforms: np.ndarray, scores: np.ndarray, instance_ids: np.ndarray):
        self.points, self.transforms = points, transforms
        self.scores, self.instance_ids = scores, instance_ids

    @classmethod
    def from_json(cls, data: bytes) -> "Picks":
        """Parsed and checked as copick checks a point (4x4 transforms with [0, 0, 0, 1] last);
        ValueError for anything else."""
        doc = json.loads(data)
        points = doc.get("points") if isinstance(doc, dict) else None
        points = [] if points is None else points
        if not isinstance(points, list):
            raise ValueError("'points' is not a list")
        n = len(points)
        locations, transforms = np.zeros((n, 3)), np.zeros((n, 4, 4))
        scores, ids = np.ones(n), np.zeros(n, np.int64)
        for i, point in enumerate(points):
            location = point["location"]
            locations[i] = [float(location["x"]), float(location["y"]), float(location["z"])]
            matrix = point.get("transformation_")
            transforms[i] = IDENTITY if matrix is None else np.asarray(matrix, dtype=float)
            if not np.allclose(transforms[i, 3], [0, 0, 0, 1]) or transforms[i, 3, 3] != 1.0:
                raise ValueError(f"point {i}: the transform's last row is not [0, 0, 0, 1]")
            if point.get("score") is not None:
                scores[i] = float(point["score"])
            if point.get("instance_id") is not None:
                ids[i] = int(point["instance_id"])
        return cls(locations, transforms, scores, ids)

    @classmethod
    def from_poses(cls, points, rotations, shifts, scores=None, instance_ids=None) -> "Picks":
        n = len(points)
        transforms = np.zeros((n, 4, 4))
        transforms[:, :3, :3] = rotations
        transforms[:, :3, 3] = shifts
        transforms[:, 3, 3] = 1.0
        scores = np.ones(n) if scores is None else np.asarray(scores, dtype=float)
        ids = np.zeros(n, np.int64) if instance_ids is None else np.asarray(instance_ids, dtype=np.int64)
        picks = cls(np.asarray(points, dtype=float).reshape(n, 3), transforms, scores, ids)
        if not (np.isfinite(picks.points).all() and np.isfinite(transforms).all() and np.isfinite(scores).all()):
            raise ValueError("coordinates, angles or scores that are not finite numbers")
        return picks

    def to_json(self, object_name: str, user_id: str, session_id: str, run_name: str) -> bytes:
        """A copick picks file, with the fields (and their order) copick writes."""
        points = [{"location": {"x": float(p[0]), "y": float(p[1]), "z": float(p[2])},
                   "transformation_": t.tolist(), "instance_id": int(i), "score": float(s)}
                  for p, t, i, s in zip(self.points, self.transforms, self.instance_ids, self.scores)]
        doc = {"pickable_object_name": object_name, "user_id": user_id, "session_id": session_id,
               "run_name": run_name, "voxel_spacing": None, "unit": "angstrom", "points": points,
               "trust_orientation": True}
        return json.dumps(doc, indent=4).encode()

    @property
    def shifts(self) -> np.ndarray:
        return self.transforms[:, :3, 3] / self.transforms[:, 3, 3][:, None]

    def eulers(self, axes: str, inverse: bool) -> np.ndarray:
        """Euler angles (degrees) of each rotation (or of its inverse); zero for identities;
        zero also for a matrix that is not a rotation (as copick writes RELION angles)."""
        from scipy.spatial.transform import Rotation
        out = np.zeros((len(self.points), 3))
        for i, matrix in enumerate(self.transforms[:, :3, :3] / self.transforms[:, 3, 3][:, None, None]):
            if np.allclose(matrix, np.eye(3)):
                continue
            try:
                rotation = Rotation.from_matrix(matrix)
            except ValueError:
                continue
            out[i] = (rotation.inv() if inverse else rotation).as_euler(axes, degrees=True)
        return out


def _rotations(angles: np.ndarray, axes: str, inverse: bool) -> np.ndarray:
    from scipy.spatial.transform import Rotation
    rotation = Rotation.from_euler(axes, np.asarray(angles, dtype=float).reshape(-1, 3), degrees=True)
    return (rotation.inv() if inverse else rotation).as_matrix()


def _read(read, data: bytes, suffix: str):
    """What a library's `read(path)` makes of `data` (they all read paths)."""
    with tempfile.TemporaryDirectory(prefix="scopefs-picks-") as tmp:
        path = os.path.join(tmp, "picks" + suffix)
        with open(path, "wb") as fh:
            fh.write(data)
        return read(path)


def _columns(table, names: list[str]) -> np.ndarray:
    missing = [n for n in names if n not in table.columns]
    if missing:
        raise ValueError(f"no column {', '.join(missing)}")
    return table[names].to_numpy(dtype=float)


def from_star(data: bytes, voxel_size: float, center: tuple[float, float, float] | None) -> Picks:
    """RELION particles: centred Å coordinates with the tomogram centre, else rlnCoordinate
    in tilt-series pixels (the optics table's rlnTomoTiltSeriesPixelSize), else in pixels of
    `voxel_size`; shifts rlnOrigin{X,Y,Z}Angst are subtracted (as RELION places particles).
    Subtomogram orientations (rlnTomoSubtomogram*) are refused rather than half applied."""
    import starfile
    blocks = _read(lambda path: starfile.read(path, always_dict=True), data, ".star")
    table = blocks.get("particles", next(iter(blocks.values()), None)) if blocks else None
    if table is None or not hasattr(table, "columns") or not len(table.columns):
        raise ValueError("no particle table")
    if any(c.startswith("rlnTomoSubtomogram") for c in table.columns):
        raise ValueError("subtomogram orientations (rlnTomoSubtomogram*) are not imported here")
    centred = [f"rlnCenteredCoordinate{a}Angst" for a in "XYZ"]
    if all(c in table.columns for c in centred) and center is not None:
        points = _columns(table, centred) + np.asarray(center, dtype=float)
    else:
        optics = blocks.get("optics")
        size = voxel_size
        if optics is not None and "rlnTomoTiltSeriesPixelSize" in getattr(optics, "columns", ()):
            size = float(optics["rlnTomoTiltSeriesPixelSize"].iloc[0])
        points = _columns(table, [f"rlnCoordinate{a}" for a in "XYZ"]) * size
    origins = [f"rlnOrigin{a}Angst" for a in "XYZ"]
    if all(c in table.columns for c in origins):
        points = points - _columns(table, origins)
    angles = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]
    rotations = (_rotations(_columns(table, angles), "ZYZ", inverse=True) if all(c in table.columns for c in angles)
                 else np.tile(np.eye(3), (len(table), 1, 1)))
    return Picks.from_poses(points, rotations, np.zeros((len(table), 3)))


def from_dynamo(data: bytes, voxel_size: float) -> Picks:
    import dynamotable
    table = _read(dynamotable.read, data, ".tbl")
    scores = table["cc"].to_numpy(dtype=float) if "cc" in table.columns else None
    return Picks.from_poses(_columns(table, ["x", "y", "z"]) * voxel_size,
                            _rotations(_columns(table, ["tdrot", "tilt", "narot"]), "zxz", inverse=True),
                            _columns(table, ["dx", "dy", "dz"]) * voxel_size, scores)


def from_em(data: bytes, voxel_size: float) -> Picks:
    import emfile
    rows = np.squeeze(_read(lambda path: emfile.read(path)[1], data, ".em"))
    if rows.ndim == 1:
        rows = rows.reshape(1, -1)
    if rows.ndim != 2 or 20 not in rows.shape:
        raise ValueError(f"a motive list is 20 x N, not {rows.shape}")
    if rows.shape[1] == 20 and rows.shape[0] != 20:
        rows = rows.T
    rows = rows.astype(float)
    angles = np.column_stack([rows[16], rows[18], rows[17]])          # phi, theta, psi
    return Picks.from_poses((rows[7:10].T - 1) * voxel_size, _rotations(angles, "zxz", inverse=False),
                            rows[10:13].T * voxel_size, rows[3])


def from_csv(data: bytes, run_name: str) -> Picks:
    """copick's table; rows of other runs (its run_name column) are refused."""
    import pandas as pd
    table = pd.read_csv(io.BytesIO(data))
    if "run_name" in table.columns and set(table["run_name"].astype(str)) - {run_name}:
        raise ValueError(f"rows of other runs than {run_name}")
    n = len(table)
    transforms = np.tile(np.eye(4), (n, 1, 1))
    for i in range(4):
        for j in range(4):
            if f"transform_{i}{j}" in table.columns:
                transforms[:, i, j] = table[f"transform_{i}{j}"].to_numpy(dtype=float)
    if not np.allclose(transforms[:, 3], [0, 0, 0, 1]):
        raise ValueError("a transform whose last row is not [0, 0, 0, 1]")
    scores = table["score"].to_numpy(dtype=float) if "score" in table.columns else None
    ids = table["instance_id"].fillna(0).to_numpy().astype(np.int64) if "instance_id" in table.columns else None
    return Picks.from_poses(_columns(table, ["x", "y", "z"]), transforms[:, :3, :3], transforms[:, :3, 3], scores, ids)


def parse(kind: str, data: bytes, run_name: str, voxel_size: float,
          center: tuple[float, float, float] | None) -> Picks:
    """A whole picks file of `kind` (a value of FORMATS; "relion4" reads as "star");
    ValueError (or a library's error) if it is not one."""
    if not data.strip():
        raise ValueError("empty file")
    if kind in ("star", "relion4"):
        return from_star(data, voxel_size, center)
    if kind == "dynamo":
        return from_dynamo(data, voxel_size)
    if kind == "em":
        return from_em(data, voxel_size)
    return from_csv(data, run_name)


def _written(write, suffix: str) -> bytes:
    """What a library's `write(path)` puts in a file (they all write to paths, and
    overwrite): a temporary file of its own, not a folder (a listing of a VoxelSpacing
    folder whose sizes are not kept makes five of these per picks file, for their sizes)."""
    fd, path = tempfile.mkstemp(prefix="scopefs-picks-", suffix=suffix)
    os.close(fd)
    try:
        write(path)
        with open(path, "rb") as fh:
            return fh.read()
    finally:
        os.unlink(path)


def to_star(picks: Picks, run_name: str, voxel_size: float, center: tuple[float, float, float] | None) -> bytes:
    """A RELION particles STAR file: centred Å coordinates (RELION 5) if the tomogram
    centre is known, else pixel coordinates of `voxel_size`. The comment line starfile
    writes first (with the time) is left out, so the file is the same every time."""
    import pandas as pd
    import starfile
    full = picks.points + picks.shifts
    angles = picks.eulers("ZYZ", inverse=True)
    columns = {"rlnTomoName": [run_name] * len(full)}
    if center is None:
        pixels = full / float(voxel_size)
        columns.update(rlnCoordinateX=pixels[:, 0], rlnCoordinateY=pixels[:, 1], rlnCoordinateZ=pixels[:, 2])
    columns.update(rlnAngleRot=angles[:, 0], rlnAngleTilt=angles[:, 1], rlnAnglePsi=angles[:, 2])
    if center is not None:
        centred = full - np.asarray(center, dtype=float)
        columns.update(rlnCenteredCoordinateXAngst=centred[:, 0], rlnCenteredCoordinateYAngst=centred[:, 1],
                       rlnCenteredCoordinateZAngst=centred[:, 2])
    data = _written(lambda path: starfile.write({"particles": pd.DataFrame(columns)}, path, overwrite=True), ".star")
    return data.split(b"\n", 1)[1] if data.startswith(b"# Created by") else data


def to_dynamo(picks: Picks, voxel_size: float) -> bytes:
    import dynamotable
    import pandas as pd
    n = len(picks.points)
    positions, shifts = picks.points / voxel_size, picks.shifts / voxel_size
    angles = picks.eulers("zxz", inverse=True)
    table = pd.DataFrame({
        "tag": np.arange(1, n + 1), "aligned": np.ones(n, dtype=int), "averaged": np.ones(n, dtype=int),
        "dx": shifts[:, 0], "dy": shifts[:, 1], "dz": shifts[:, 2],
        "tdrot": angles[:, 0], "tilt": angles[:, 1], "narot": angles[:, 2], "cc": picks.scores,
        "x": positions[:, 0], "y": positions[:, 1], "z": positions[:, 2], "tomo": np.ones(n, dtype=int)})
    return _written(lambda path: dynamotable.write(table, path), ".tbl")


def to_em(picks: Picks, voxel_size: float) -> bytes:
    import emfile
    n = len(picks.points)
    angles = picks.eulers("zxz", inverse=False)          # phi, theta, psi
    rows = np.zeros((1, n, 20), dtype=np.float32)
    rows[0, :, 3] = picks.scores
    rows[0, :, 4] = 1                                    # tomogram index
    rows[0, :, 5] = 1                                    # class
    rows[0, :, 6] = np.arange(1, n + 1)
    rows[0, :, 7:10] = picks.points / voxel_size + 1     # TOM counts from 1
    rows[0, :, 10:13] = picks.shifts / voxel_size
    rows[0, :, 16], rows[0, :, 17], rows[0, :, 18] = angles[:, 0], angles[:, 2], angles[:, 1]
    return _written(lambda path: emfile.write(path, rows, overwrite=True), ".em")


def to_csv(picks: Picks, run_name: str) -> bytes:
    import pandas as pd
    n = len(picks.points)
    columns = {"run_name": [run_name] * n, "x": picks.points[:, 0], "y": picks.points[:, 1], "z": picks.points[:, 2]}
    for i in range(4):
        for j in range(4):
            columns[f"transform_{i}{j}"] = picks.transforms[:, i, j]
    columns.update(score=picks.scores, instance_id=picks.instance_ids)
    return pd.DataFrame(columns).to_csv(index=False).encode()


#: the suffix of each view -> its kind (longest suffixes first, for matching names)
FORMATS = {".relion4.star": "relion4", ".star": "star", ".tbl": "dynamo", ".em": "em", ".csv": "csv"}


def export(picks: Picks, kind: str, run_name: str, voxel_size: float,
           center: tuple[float, float, float] | None) -> bytes:
    """One view of the picks: kind is a value of FORMATS."""
    if kind == "star":
        return to_star(picks, run_name, voxel_size, center)
    if kind == "relion4":
        return to_star(picks, run_name, voxel_size, None)
    if kind == "dynamo":
        return to_dynamo(picks, voxel_size)
    if kind == "em":
        return to_em(picks, voxel_size)
    return to_csv(picks, run_name)
