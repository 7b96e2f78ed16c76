"""copick volumes in the format cryo-ET tools read: derived read-only MRC files.

    VoxelSpacing<vs>/<tomo>.mrc            a tomogram's full-resolution level
    VoxelSpacing<vs>/<tomo>.bin<N>.mrc     its coarser levels, binned N times
    Segmentations/<vs>_<u>_<s>_<name>.mrc  a segmentation (and .bin<N>.mrc)

copick only globs `*.zarr` (and `*.json`, `*.glb`) there, so it never sees them. A view's
size comes from the zarr metadata alone; its bytes are read by range (formats/mrc.py).
These are hooked into the tree by `copick.DerivedViews` (listing and lookup by name).
"""
from __future__ import annotations

import errno
import itertools
import logging
import os
import re
import stat
import threading
from concurrent.futures import ThreadPoolExecutor

from ..formats.mrc import Counters, MrcVolume, group_attrs, multiscale_levels
from .cache import ByteCache
from .nodes import Attr, File, FileHandle, read_only
from .roots import LocalRoot

log = logging.getLogger(__name__)
BINNED = re.compile(r"^(?P<stem>.+)\.bin(?P<binning>\d+)$")
SPACING = "VoxelSpacing"


def mrc_name(stem: str, binning: int) -> str:
    return f"{stem}.mrc" if binning == 1 else f"{stem}.bin{binning}.mrc"


def voxel_size_of(folder: str, zarr_name: str) -> float | None:
    """The voxel size (Å) of a tomogram in VoxelSpacing<vs>/ or of a segmentation store
    `<vs>_<user>_<session>_<name>.zarr`; None for anything else."""
    try:
        if folder.startswith(SPACING):
            return float(folder[len(SPACING):])
        if folder == "Segmentations":
            return float(zarr_name.partition("_")[0])
    except ValueError:
        pass
    return None


class VolumeViews:
    """The MRC views of one mount: listing, lookup by name, and the shared chunk cache."""

    def __init__(self, tree, cache_bytes: int):
        self.tree = tree
        self.pieces = ByteCache(cache_bytes)
        self.pool = ThreadPoolExecutor(4, thread_name_prefix="scopefs-mrc")
        self.counters = Counters()
        self._keys = itertools.count()
        self._levels: dict[tuple, list[tuple[str, int]]] = {}     # by source key, bounded below
        self._lock = threading.Lock()

    # -- names ----------------------------------------------------------------------------
    def listing(self, rel: str, names: list[str]):
        """(view name, source .zarr, make node) for the volumes among `names` of folder rel."""
        folder = rel.rpartition("/")[2]
        out = []
        for name in names:
            if not name.endswith(".zarr") or name.startswith(".") or name.endswith("_features.zarr"):
                continue
            voxel_size = voxel_size_of(folder, name)
            if voxel_size is None:
                continue
            source = f"{rel}/{name}"
            for path, binning in self.levels(source):
                out.append((mrc_name(name[:-5], binning), source,
                            self._maker(source, path, voxel_size * binning)))
        return out

    def lookup(self, rel: str, name: str):
        """(source, make) of one view name, looking only at the zarr stores it can come from."""
        if not name.endswith(".mrc"):
            return None
        stem = name[:-4]
        binned = BINNED.match(stem)
        for candidate in [stem] + ([binned["stem"]] if binned else []):
            if self.tree.shown(f"{rel}/{candidate}.zarr") is None:
                continue
            for view, source, make in self.listing(rel, [candidate + ".zarr"]):
                if view == name:
                    return source, make
        return None

    def levels(self, source: str) -> list[tuple[str, int]]:
        """(array path, binning) of a zarr store's 3-d levels, from its group metadata only;
        none if it is not a readable 3-d multiscale image."""
        key = self.tree.source_key(source)
        with self._lock:
            known = self._levels.get(key)
        if known is not None:
            return known
        try:
            attrs = group_attrs(lambda meta: self._read_small(f"{source}/{meta}"))
            axes = (attrs.get("multiscales") or [{}])[0].get("axes")
            levels = [] if axes is not None and len(axes) != 3 else multiscale_levels(attrs)
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            log.info("no MRC view of %s: %s", source, exc)
            levels = []
        with self._lock:
            if len(self._levels) > 10_000:
                self._levels.clear()
            self._levels[key] = levels
        return levels

    def _read_small(self, rel: str) -> bytes | None:
        info = self.tree.shown(rel)
        if info is None or not stat.S_ISREG(info.mode):
            return None
        root, _ = self.tree.top(rel)
        handle = root.open_read(rel)
        try:
            return handle.read(0, info.size)
        finally:
            handle.release()

    # -- nodes ----------------------------------------------------------------------------
    def _maker(self, source: str, level: str, voxel_size: float):
        def make():
            return MrcView(self, source, level, voxel_size, self.tree.top(source)[1].mtime_ns)
        return make

    def open_volume(self, source: str, level: str, voxel_size: float) -> MrcVolume:
        import zarr
        root, _ = self.tree.top(source)
        if isinstance(root, LocalRoot):
            store = zarr.storage.LocalStore(root.full(source), read_only=True)
        else:
            from ..formats.zarrstore import ReadOnlyStore
            store = ReadOnlyStore(lambda key: self._read_small(f"{source}/{key}"))
        array = zarr.open_array(store, path=level, mode="r")
        return MrcVolume(array, voxel_size, f"scopefs: copick {source} level {level}",
                         self.pieces, next(self._keys), self.pool, self.counters)

    def status(self) -> dict:
        return {"mrc_views": {"chunks_decoded": self.counters.chunks, "bytes_decoded": self.counters.bytes,
                              "cache_bytes": self.pieces.used_bytes, "cache_limit": self.pieces.max_bytes}}

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


class MrcView(File):
    """One level of a zarr store as an MRC file (read-only). The volume (its metadata) is
    opened once, at the first stat or open."""

    def __init__(self, views: VolumeViews, source: str, level: str, voxel_size: float, mtime_ns: int):
        self.views, self.source, self.level, self.voxel_size = views, source, level, voxel_size
        self.mtime_ns = mtime_ns
        self._volume: MrcVolume | None = None
        self._lock = threading.Lock()

    def volume(self) -> MrcVolume:
        with self._lock:
            if self._volume is None:
                try:
                    self._volume = self.views.open_volume(self.source, self.level, self.voxel_size)
                except (KeyError, ValueError, TypeError) as exc:
                    raise OSError(errno.EIO, f"not a readable volume: {exc}", self.source) from None
            return self._volume

    def attr(self) -> Attr:
        return Attr(stat.S_IFREG | 0o444, self.volume().size, self.mtime_ns)

    def open(self, flags: int) -> FileHandle:
        if (flags & os.O_ACCMODE) != os.O_RDONLY:
            raise read_only(self.source)
        return MrcHandle(self.volume(), self.source)


class MrcHandle(FileHandle):
    def __init__(self, volume: MrcVolume, source: str):
        self.volume, self.source = volume, source

    def read(self, offset: int, size: int) -> bytes:
        try:
            return self.volume.read(offset, size)
        except (ValueError, KeyError) as exc:
            raise OSError(errno.EIO, f"MRC view of {self.source}: {exc}") from None
