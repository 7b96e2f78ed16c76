"""A zarr volume as an MRC2014 file, served by byte ranges.

The header comes from `mrcfile` (mode from the dtype, nx/ny/nz, voxel size, statistics
"not computed" as MRC2014 allows: dmax < dmin, dmean < both, rms < 0); the voxels follow it
in the zarr array's own (z, y, x) C order, which is MRC's x-fastest order. A read of a byte
range decodes only the zarr chunks of the rows it touches: the whole volume is never in
memory.

MRC is read plane by plane while zarr chunks are cubes (copick writes 256**3), so one plane
needs a whole slab of chunks. What is cached (bounded, shared by all volumes) is therefore a
*piece*: a few consecutive planes of one decoded chunk, as many as let half the cache hold
those planes across the whole slab. A viewer reading one slice decodes each of
its chunks once; a sequential reader of the whole file decodes each chunk once per piece
(once in all if the cache holds two slabs).
"""
from __future__ import annotations

import errno
import json
import math
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

HEADER_BYTES = 1024
#: the most one read may ask for: the kernel asks 128 KiB to 1 MiB at a time, and a caller
#: wanting a whole 64 GiB view at once must get an error, not take the memory
MAX_READ = 256 << 20
#: float32 holds every integer up to 2**24 exactly (labels MRC has no integer mode for)
FLOAT32_EXACT = 1 << 24


def mrc_dtype(dtype) -> np.dtype:
    """The dtype MRC stores a volume of `dtype` in: mrcfile's own mapping (uint8 widens to
    uint16, mode 6); a type MRC has no mode for (int32, float64...) as float32, as copick's
    exporter writes it."""
    from mrcfile import utils
    try:
        return utils.dtype_from_mode(utils.mode_from_dtype(np.dtype(dtype))).newbyteorder("<")
    except ValueError:
        return np.dtype("<f4")


def mrc_header(shape: tuple[int, int, int], dtype, voxel_size: float, label: str) -> bytes:
    """The 1024-byte MRC2014 header of a (z, y, x) volume of `dtype` (as `mrc_dtype` maps
    it) with cubic voxels of `voxel_size` Å. Built through mrcfile with a one-voxel stand-in
    for the data, so no voxel is read; deterministic (no creation time in the label)."""
    from mrcfile.mrcinterpreter import MrcInterpreter
    mrc = MrcInterpreter()
    mrc._create_default_attributes()         # mrcfile's documented start for a new file
    mrc.set_data(np.zeros((1, 1, 1), mrc_dtype(dtype)))
    header = mrc.header
    header.nz, header.ny, header.nx = shape
    header.mz, header.my, header.mx = shape
    mrc.voxel_size = voxel_size
    mrc.reset_header_stats()
    header.label[0] = label[:80].encode("ascii", "replace")
    header.nlabl = 1
    return header.tobytes()


def multiscale_levels(attrs: dict) -> list[tuple[str, int]]:
    """(array path, binning) of each level of an OME-NGFF multiscale group, finest first;
    binning from the levels' scales relative to the first (2**index if they say none)."""
    try:
        datasets = attrs["multiscales"][0]["datasets"]
    except (KeyError, IndexError, TypeError):
        return [("0", 1)]
    levels = []
    first = None
    for index, dataset in enumerate(datasets):
        scale = next((t.get("scale") for t in dataset.get("coordinateTransformations") or []
                      if t.get("type") == "scale"), None)
        if scale and first is None:
            first = scale[-1]
        binning = round(scale[-1] / first) if scale and first else 2 ** index
        levels.append((str(dataset.get("path", index)), max(int(binning), 1)))
    return levels or [("0", 1)]


def group_attrs(read) -> dict:
    """The attributes of a zarr group, v2 (`.zattrs`) or v3 (`zarr.json`), through
    `read(key) -> bytes | None`."""
    for key, pick in (("zarr.json", lambda doc: doc.get("attributes", {})), (".zattrs", lambda doc: doc)):
        data = read(key)
        if data is not None:
            doc = pick(json.loads(data))
            # OME-Zarr 0.5 keeps the multiscales under "ome"
            return doc.get("ome", doc) if isinstance(doc, dict) else {}
    return {}


def _array_metadata(read) -> dict:
    """A zarr array's metadata as zarr.json (v3) or .zarray (v2) hold it, through
    `read(key) -> bytes | None`: no zarr (a listing needs it)."""
    for key in ("zarr.json", ".zarray"):
        data = read(key)
        if data is not None:
            return json.loads(data)
    raise ValueError("not a zarr array")


def array_shape(read) -> tuple[int, ...]:
    """The shape of a zarr array, from its metadata only."""
    return tuple(int(n) for n in _array_metadata(read)["shape"])


def view_size(read) -> int:
    """The size of the MRC view of a zarr array (`MrcVolume.size`), from its metadata only:
    the header, then its voxels in the type `mrc_dtype` maps its type to. ValueError (or
    numpy's TypeError) where the metadata do not tell: not a 3-d array, a type numpy does
    not name."""
    metadata = _array_metadata(read)
    shape = tuple(int(n) for n in metadata["shape"])
    if len(shape) != 3:
        raise ValueError(f"a {len(shape)}-d array is not a volume")
    dtype = np.dtype(metadata["data_type"] if "data_type" in metadata else metadata["dtype"])
    return HEADER_BYTES + math.prod(shape) * mrc_dtype(dtype).itemsize


class MrcVolume:
    """One zarr array as an MRC file. `array` is an open zarr array (z, y, x); `chunks`
    the shared cache (a ByteCache) and `key` what names this array's chunks in it."""

    def __init__(self, array, voxel_size: float, label: str, chunks, key, pool: ThreadPoolExecutor,
                 counters: "Counters"):
        if array.ndim != 3:
            raise ValueError(f"a {array.ndim}-d array is not a volume")
        self.array = array
        self.shape = tuple(int(n) for n in array.shape)
        self.dtype = mrc_dtype(array.dtype)
        self.header = mrc_header(self.shape, array.dtype, voxel_size, label)
        self.size = HEADER_BYTES + math.prod(self.shape) * self.dtype.itemsize
        self._chunks, self._key, self._pool, self._counters = chunks, key, pool, counters
        plane = self.shape[1] * self.shape[2] * self.dtype.itemsize
        self.planes_per_piece = max(1, min(int(array.chunks[0]), chunks.max_bytes // (2 * max(plane, 1))))

    def read(self, offset: int, size: int) -> bytes:
        end = min(offset + size, self.size)
        if end - offset > MAX_READ:
            raise OSError(errno.EFBIG, f"an MRC view is read by ranges of at most {MAX_READ >> 20} MiB")
        if offset >= end:
            return b""
        out = bytearray(self.header[offset:end])
        start = max(offset, HEADER_BYTES) - HEADER_BYTES
        if end > HEADER_BYTES:
            out += self._voxels(start, end - HEADER_BYTES)
        return bytes(out)

    def _voxels(self, start: int, end: int) -> bytes:
        """Voxel bytes [start, end) of the data block: the whole rows they touch, cut."""
        nz, ny, nx = self.shape
        item = self.dtype.itemsize
        row_bytes = nx * item
        first_row, last_row = start // row_bytes, (end - 1) // row_bytes      # rows = (z, y)
        rows = np.empty((last_row - first_row + 1, nx), self.dtype)
        cz, cy, cx = self.array.chunks
        per = self.planes_per_piece
        columns = range(math.ceil(nx / cx))
        bands = list(self._bands(first_row, last_row, ny, cy))
        needed = sorted({(z // cz, y0 // cy, xc, z % cz // per) for z, y0, _ in bands for xc in columns})
        decoded = self._pool.map(self._piece, needed) if len(needed) > 1 else map(self._piece, needed)
        pieces = dict(zip(needed, decoded))
        for z, y0, y1 in bands:
            zc, yc, plane = z // cz, y0 // cy, z % cz
            at = z * ny + y0 - first_row
            for xc in columns:
                piece = pieces[(zc, yc, xc, plane // per)]
                rows[at:at + y1 - y0, xc * cx:xc * cx + piece.shape[2]] = \
                    piece[plane % per, y0 - yc * cy:y1 - yc * cy]
        flat = rows.reshape(-1).view(np.uint8)
        lo = start - first_row * row_bytes
        return flat[lo:lo + end - start].tobytes()

    @staticmethod
    def _bands(first: int, last: int, ny: int, cy: int):
        """(z, y0, y1) of the rows first..last (row = z * ny + y), cut where a chunk ends."""
        row = first
        while row <= last:
            z, y0 = divmod(row, ny)
            y1 = min(y0 - y0 % cy + cy, ny, y0 + last - row + 1)
            yield z, y0, y1
            row += y1 - y0

    def _piece(self, index: tuple[int, int, int, int]) -> np.ndarray:
        """Planes [g * per, (g + 1) * per) of chunk (zc, yc, xc), for index (zc, yc, xc, g)."""
        return self._chunks.get_or_make((self._key, index), lambda: self._decode(index))

    def _decode(self, index: tuple[int, int, int, int]) -> np.ndarray:
        zc, yc, xc, group = index
        block = np.asarray(self.array.blocks[zc, yc, xc])
        self._counters.add(block.nbytes)
        if block.dtype.kind in "iu" and self.dtype.kind == "f" and block.size and \
                (block.min() < -FLOAT32_EXACT or block.max() > FLOAT32_EXACT):
            raise ValueError(f"labels beyond 2**24 in chunk {index[:3]} have no exact MRC value")
        per = self.planes_per_piece
        # a copy, never a view: a view would keep the whole chunk alive behind the cache's back
        return np.array(block[group * per:(group + 1) * per], dtype=self.dtype, order="C", copy=True)


class Counters:
    """How many chunks (and decoded bytes) MRC views read: listing must read none."""

    def __init__(self):
        self._lock = threading.Lock()
        self.chunks = 0
        self.bytes = 0

    def add(self, nbytes: int) -> None:
        with self._lock:
            self.chunks += 1
            self.bytes += nbytes
