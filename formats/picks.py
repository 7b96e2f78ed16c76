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
#: the header of an EM file (emfile writes it, then the data as stored)
EM_HEADER_BYTES = 512


def load_libraries() -> None:
    """Import the libraries the formats here write with (pandas, starfile, dynamotable,
    emfile): about a second cold, which a mount spends in the background once it must
    make a view, rather than in the listing that needs it. scipy's rotations are left to
    the first picks with a rotation."""
    import dynamotable  # noqa: F401
    import emfile  # noqa: F401
    import starfile  # noqa: F401


class Picks:
    """The points of a copick picks file as arrays, as `CopickPicks.numpy()` gives them."""

    def __init__(self, points: np.ndarray, transforms: np.ndarray, scores: np.ndarray, instance_ids: np.ndarray):
        self.points, self.transforms = points, transforms
        self.scores, self.instance_ids = scores, instance_ids
        self._eulers: dict[tuple[str, bool], np.ndarray] = {}

    @classmethod
    def concatenated(cls, picks: list["Picks"]) -> "Picks":
        """The points of all of `picks`, one after the other."""
        return cls(*(np.concatenate([getattr(p, name) for p in picks])
                     for name in ("points", "transforms", "scores", "instance_ids")))

    @property
    def nbytes(self) -> int:
        """Memory held (what a bounded cache counts)."""
        return 256 + self.points.nbytes + self.transforms.nbytes + self.scores.nbytes + self.instance_ids.nbytes

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
            if point.get("score") is not None:
                scores[i] = float(point["score"])
            if point.get("instance_id") is not None:
                ids[i] = int(point["instance_id"])
        bad = ~np.isclose(transforms[:, 3], [0, 0, 0, 1]).all(axis=1) | (transforms[:, 3, 3] != 1.0)    # np.allclose of each
        if bad.any():
            raise ValueError(f"point {np.flatnonzero(bad)[0]}: the transform's last row is not [0, 0, 0, 1]")
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
        zero also for a matrix that is not a rotation (as copick writes RELION angles).
        Worked out once per picks (STAR views ask twice); scipy is imported only if a
        rotation is not the identity."""
        known = self._eulers.get((axes, inverse))
        if known is not None:
            return known
        out = np.zeros((len(self.points), 3))
        matrices = self.transforms[:, :3, :3] / self.transforms[:, 3, 3][:, None, None]
        rotated = ~np.isclose(matrices, np.eye(3)).all(axis=(1, 2))         # np.allclose of each
        for i in np.flatnonzero(rotated):
            matrix = matrices[i]
            from scipy.spatial.transform import Rotation
            try:
                rotation = Rotation.from_matrix(matrix)
            except ValueError:
                continue
            out[i] = (rotation.inv() if inverse else rotation).as_euler(axes, degrees=True)
        self._eulers[(axes, inverse)] = out
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


def _star_columns(picks: Picks, run_name: str, voxel_size: float,
                  center: tuple[float, float, float] | None) -> dict:
    """A RELION particles table: centred Å coordinates (RELION 5) if the tomogram centre is
    known, else pixel coordinates of `voxel_size`."""
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
    return columns


def _dynamo_columns(picks: Picks, voxel_size: float) -> dict:
    n = len(picks.points)
    positions, shifts = picks.points / voxel_size, picks.shifts / voxel_size
    angles = picks.eulers("zxz", inverse=True)
    return {"tag": np.arange(1, n + 1), "aligned": np.ones(n, dtype=int), "averaged": np.ones(n, dtype=int),
            "dx": shifts[:, 0], "dy": shifts[:, 1], "dz": shifts[:, 2],
            "tdrot": angles[:, 0], "tilt": angles[:, 1], "narot": angles[:, 2], "cc": picks.scores,
            "x": positions[:, 0], "y": positions[:, 1], "z": positions[:, 2], "tomo": np.ones(n, dtype=int)}


def _csv_columns(picks: Picks, run_name: str) -> dict:
    n = len(picks.points)
    columns = {"run_name": [run_name] * n, "x": picks.points[:, 0], "y": picks.points[:, 1], "z": picks.points[:, 2]}
    for i in range(4):
        for j in range(4):
            columns[f"transform_{i}{j}"] = picks.transforms[:, i, j]
    columns.update(score=picks.scores, instance_id=picks.instance_ids)
    return columns


def _columns_of(picks: Picks, kind: str, run_name: str, voxel_size: float,
                center: tuple[float, float, float] | None) -> dict:
    """The table a text view of `kind` writes (a value of FORMATS but "em")."""
    if kind == "star":
        return _star_columns(picks, run_name, voxel_size, center)
    if kind == "relion4":
        return _star_columns(picks, run_name, voxel_size, None)
    if kind == "dynamo":
        return _dynamo_columns(picks, voxel_size)
    return _csv_columns(picks, run_name)


def _write_table(kind: str, columns: dict) -> bytes:
    """A text view's bytes, written by its format's library. The comment line starfile
    writes first (with the time) is left out, so a STAR file is the same every time."""
    import pandas as pd
    if kind in ("star", "relion4"):
        import starfile
        data = starfile.to_string({"particles": pd.DataFrame(columns)}).encode()
        return data.split(b"\n", 1)[1] if data.startswith(b"# Created by") else data
    if kind == "dynamo":
        import dynamotable
        return _written(lambda path: dynamotable.write(pd.DataFrame(columns), path), ".tbl")
    return pd.DataFrame(columns).to_csv(index=False).encode()


def _write_tables(kind: str, columns: dict, counts: list[int]) -> list[bytes]:
    """What `_write_table(kind, table)` gives for each table of `counts` rows that
    `columns` hold one after the other, from one write of them all: the libraries write
    one line per row, each row alone, so the whole is cut into each table's rows and put
    between the lines an empty table is written as. Where the rows do not come out one
    per line (a value holding a line break), each table is written alone."""
    if len(counts) == 1:
        return [_write_table(kind, columns)]
    frame = _frame(kind, columns)
    if not sum(counts):
        return [b"\n".join(frame)] * len(counts)
    whole = _write_table(kind, columns).split(b"\n")
    start = next((i for i, (a, b) in enumerate(zip(whole, frame)) if a != b), len(frame))
    ends = np.cumsum(counts).tolist()
    if len(whole) != len(frame) + ends[-1] or whole[start + ends[-1]:] != frame[start:]:
        return [_write_table(kind, {name: values[end - count:end] for name, values in columns.items()})
                for count, end in zip(counts, ends)]
    return [b"\n".join(frame[:start] + whole[start + end - count:start + end] + frame[start:])
            for count, end in zip(counts, ends)]


_FRAMES: dict[tuple, list[bytes]] = {}


def _frame(kind: str, columns: dict) -> list[bytes]:
    """The lines an empty table of these columns is written as (the same for every table
    of these column names: kept, a few per process)."""
    key = (kind, *columns)
    frame = _FRAMES.get(key)
    if frame is None:
        frame = _FRAMES[key] = _write_table(kind, {name: values[:0] for name, values in columns.items()}).split(b"\n")
    return frame


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


def em_size(points: int) -> int:
    """The size of an EM motive list (`to_em`): the EM format's 512-byte header, then 20
    float32 values per point."""
    return EM_HEADER_BYTES + points * 20 * 4


#: the suffix of each view -> its kind (longest suffixes first, for matching names)
FORMATS = {".relion4.star": "relion4", ".star": "star", ".tbl": "dynamo", ".em": "em", ".csv": "csv"}


def export(picks: Picks, kind: str, run_name: str, voxel_size: float,
           center: tuple[float, float, float] | None) -> bytes:
    """One view of the picks: kind is a value of FORMATS."""
    if kind == "em":
        return to_em(picks, voxel_size)
    return _write_table(kind, _columns_of(picks, kind, run_name, voxel_size, center))


def texts(picks: list[Picks], run_name: str, voxel_size: float,
          center: tuple[float, float, float] | None) -> list[dict[str, bytes]]:
    """Every text view `export` makes of each of `picks` (kind -> bytes: all but EM),
    without making them one by one: the points of all of them as one, each format written
    once for them all (`_write_tables`)."""
    if not picks:
        return []
    counts = [len(p.points) for p in picks]
    whole = Picks.concatenated(picks)
    written = {}
    for kind in FORMATS.values():
        if kind != "em":
            columns = _columns_of(whole, kind, run_name, voxel_size, center)
            if "tag" in columns:                # (Dynamo) each file numbers its rows from 1
                columns["tag"] = np.concatenate([np.arange(1, n + 1) for n in counts])
            written[kind] = _write_tables(kind, columns, counts)
    return [{kind: written[kind][i] for kind in written} for i in range(len(picks))]


def sizes(picks: list[Picks], run_name: str, voxel_size: float,
          center: tuple[float, float, float] | None) -> list[dict[str, int]]:
    """The size of every view `export` makes of each of `picks` (kind -> bytes): the text
    views' from `texts`, the EM size from the number of points."""
    return [{"em": em_size(len(p.points)), **{kind: len(data) for kind, data in made.items()}}
            for p, made in zip(picks, texts(picks, run_name, voxel_size, center))]
