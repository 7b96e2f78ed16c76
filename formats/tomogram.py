"""A volume (an MRC file's data) written as a copick tomogram, in bounded memory.

The store is what copick 1.x writes (`CopickTomogram.from_numpy`, `copick add tomogram`):
OME-Zarr 0.4 multiscales, zarr v2, float32, chunks 256**3 compressed with blosc-lz4,
"/" chunk keys, levels 0, 1, 2 where each level is the previous one's 2x2x2 local mean
(zero padded at odd edges, as skimage's `downscale_local_mean`). Level 0 is copied chunk by
chunk; each coarser level is made one output chunk at a time from slabs of the level
above, so memory stays near two chunks whatever the volume's size.
"""
from __future__ import annotations

import math

import numpy as np

CHUNK = 256
SLAB_PLANES = 16          # output planes of a coarser level made at once


def _axes() -> list[dict]:
    return [{"name": a, "type": "space", "unit": "angstrom"} for a in "zyx"]


def _chunks(shape: tuple[int, ...], chunk: int):
    for starts in np.ndindex(*(math.ceil(n / chunk) for n in shape)):
        yield tuple(slice(i * chunk, min((i + 1) * chunk, n)) for i, n in zip(starts, shape))


def _local_mean(block: np.ndarray) -> np.ndarray:
    """2x2x2 means, the block zero padded to even sizes (float32, as copick computes them)."""
    pad = [(0, n % 2) for n in block.shape]
    if any(p for _, p in pad):
        block = np.pad(block, pad)
    z, y, x = (n // 2 for n in block.shape)
    return block.reshape(z, 2, y, 2, x, 2).transpose(0, 2, 4, 1, 3, 5).mean(axis=(3, 4, 5), dtype=np.float32)


def write_copick_tomogram(volume, path: str, voxel_size: float, levels: int = 3, chunk: int = CHUNK,
                          progress=None) -> None:
    """Write `volume` (z, y, x; anything sliceable, such as an mrcfile memmap) to a new
    zarr store at `path`. `progress(done, total)` is told after each chunk written."""
    import numcodecs
    import zarr
    group = zarr.open_group(path, mode="w", zarr_format=2)
    shapes = [tuple(int(n) for n in volume.shape)]
    for _ in range(1, levels):
        shapes.append(tuple(math.ceil(n / 2) for n in shapes[-1]))
    total = sum(math.prod(math.ceil(n / chunk) for n in shape) for shape in shapes)
    done = 0
    source = volume
    for level, shape in enumerate(shapes):
        array = group.create_array(str(level), shape=shape, dtype="<f4", chunks=(chunk,) * 3, fill_value=0.0,
                                   compressors=numcodecs.Blosc(cname="lz4", clevel=5, shuffle=1),
                                   chunk_key_encoding={"name": "v2", "separator": "/"})
        for region in _chunks(shape, chunk):
            if level == 0:
                array[region] = np.asarray(source[region], dtype=np.float32)
            else:
                array[region] = _coarser(source, region)
            done += 1
            if progress is not None:
                progress(done, total)
        source = array
    group.attrs["multiscales"] = [{
        "axes": _axes(),
        "datasets": [{"coordinateTransformations": [{"scale": [voxel_size * 2 ** i] * 3, "type": "scale"}],
                      "path": str(i)} for i in range(levels)],
        "metadata": {}, "name": "/", "version": "0.4"}]


def _coarser(source, region: tuple[slice, slice, slice]) -> np.ndarray:
    """One region of the next coarser level, from slabs of `source` (the level above)."""
    zs, ys, xs = region
    out = np.empty((zs.stop - zs.start, ys.stop - ys.start, xs.stop - xs.start), np.float32)
    y_in, x_in = slice(2 * ys.start, 2 * ys.stop), slice(2 * xs.start, 2 * xs.stop)
    for z in range(zs.start, zs.stop, SLAB_PLANES):
        top = min(z + SLAB_PLANES, zs.stop)
        block = np.asarray(source[2 * z:2 * top, y_in, x_in], dtype=np.float32)
        # the source ends before the padded block would: the missing planes are zeros
        want = (2 * (top - z), 2 * out.shape[1], 2 * out.shape[2])
        if block.shape != want:
            block = np.pad(block, [(0, w - n) for w, n in zip(want, block.shape)])
        out[z - zs.start:top - zs.start] = _local_mean(block)
    return out
