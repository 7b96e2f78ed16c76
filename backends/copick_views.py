"""copick data in the formats cryo-ET tools read: derived read-only files.

    VoxelSpacing<vs>/<tomo>.mrc            a tomogram's full-resolution level
    VoxelSpacing<vs>/<tomo>.bin<N>.mrc     its coarser levels, binned N times
    Segmentations/<vs>_<u>_<s>_<name>.mrc  a segmentation (and .bin<N>.mrc)
    VoxelSpacing<vs>/<u>_<s>_<o>.star|.relion4.star|.tbl|.em|.csv
                                           the run's picks (Picks/<u>_<s>_<o>.json) in
                                           pixels of this spacing (formats/picks.py);
                                           a new file of such a name written there is
                                           imported: it becomes Picks/<u>_<s>_<o>.json
    VoxelSpacing<vs>/<new>.mrc             written there: imported as <new>.zarr, a copick
                                           tomogram (formats/tomogram.py), after close

copick only globs `*.zarr` (and `*.json`, `*.glb`) there, so it never sees them. A volume
view's size comes from the zarr metadata alone; its bytes are read by range
(formats/mrc.py). These are hooked into the tree by `copick.DerivedViews` (listing and
lookup by name).
"""
from __future__ import annotations

import errno
import functools
import itertools
import logging
import os
import re
import stat
import threading
import time
import urllib.parse
import weakref
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor, wait

from ..formats import picks as picks_format
from ..formats.atomic import atomic_write, fsync_dir
from ..formats.mrc import Counters, MrcVolume, array_shape, group_attrs, multiscale_levels, view_size
from .blocks import BufferHandle, GeneratedFile, resized, view_attr
from .cache import ByteCache
from .kept_sizes import KeptTogether, digest_of_reprs, identity, versions
from .localfiles import TempFileHandle
from .nodes import Attr, File, FileHandle, read_only, writes
from .overlay.rules import KEPT_DIR, WORK_DIR

log = logging.getLogger(__name__)
BINNED = re.compile(r"^(?P<stem>.+)\.bin(?P<binning>\d+)$")
SPACING = "VoxelSpacing"
#: the version of what the views here and in copick.py write: counted up whenever a view's
#: bytes change for the same source, so that sizes kept on disk (`kept_sizes`) stop applying
VIEWS_VERSION = 1
#: the libraries the picks views write with (their versions are part of a kept size's key)
PICKS_LIBRARIES = ("pandas", "starfile", "dynamotable", "emfile", "numpy", "scipy")
MRC_LIBRARIES = ("mrcfile", "zarr", "numpy")
#: seconds an unmount gives the tomogram imports queued and running, in all, to finish
#: (within `scopefs umount`'s 60 s wait for the daemon)
IMPORTS_UNMOUNT_WAIT_S = 30.0
#: where a tomogram import's MRC waits for its conversion, across mounts (its writer was
#: told it is stored: `mv` has deleted its own copy), named by its path quoted
PENDING_IMPORTS = f"{KEPT_DIR}/copick-imports"
#: seconds a scan of a run's Picks/ serves the listings of its other spacing folders (a walk
#: lists them back to back); a picks file rewritten in place behind the mount, which moves
#: neither the mount's edits nor Picks/ itself, is seen by a spacing folder after that long
PICKS_SCAN_S = 2.0
#: runs whose Picks/ scan is held for their spacing folders
PICKS_SCANS_HELD = 64


def _partial_name(pending: str) -> str:
    """The name of the store an import kept at `pending` is built in (in the work directory)."""
    return f"import.{os.path.basename(pending)}.zarr"


def mrc_name(stem: str, binning: int) -> str:
    return f"{stem}.mrc" if binning == 1 else f"{stem}.bin{binning}.mrc"


def read_file(tree, rel: str) -> bytes:
    """The whole (small) file that rel shows in the merged tree (FileNotFoundError if none)."""
    root, info = tree.top(rel)
    return root.read_whole(rel, info.size)


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

    def __init__(self, tree, cache_bytes: int, views):
        self.tree, self.views = tree, views       # views: copick.DerivedViews (kept sizes)
        self.pieces = ByteCache(cache_bytes)
        # chunks decoded at once: each holds a decoded chunk (64 MiB at copick's 256**3) and
        # zarr's buffers beside the cache, so no more than there are cores to decode them
        self.pool = ThreadPoolExecutor(min(4, os.cpu_count() or 1), thread_name_prefix="scopefs-mrc")
        self.counters = Counters()
        self._keys = itertools.count()
        self._known: dict[tuple, list | tuple] = {}     # levels and shapes by store version (`_remembered`)
        self._lock = threading.Lock()

    # -- names ----------------------------------------------------------------------------
    def listing(self, rel: str, infos: dict):
        """(view name, source .zarr, make node) for the volumes among the names of folder
        rel (`infos`: name -> what it shows, or None: asked)."""
        folder = rel.rpartition("/")[2]
        out = []
        for name, info in infos.items():
            if not name.endswith(".zarr") or name.startswith(".") or name.endswith("_features.zarr"):
                continue
            voxel_size = voxel_size_of(folder, name)
            if voxel_size is None:
                continue
            source = f"{rel}/{name}"
            for path, binning in self.levels(source, info):
                out.append((mrc_name(name[:-5], binning), source,
                            self._maker(source, path, voxel_size * binning)))
        return out

    def sources_of(self, rel: str, name: str) -> list[str]:
        """The zarr stores an MRC view named `rel/name` can come from."""
        stem, folder = name[:-4], rel.rpartition("/")[2]
        if not name.endswith(".mrc") or not (folder.startswith(SPACING) or folder == "Segmentations"):
            return []
        binned = BINNED.match(stem)
        return [f"{rel}/{candidate}.zarr" for candidate in [stem] + ([binned["stem"]] if binned else [])]

    def lookup(self, rel: str, name: str):
        """(source, make, what the source shows, None: no `KeptTogether`) of one view name,
        looking only at the zarr stores it can come from."""
        for source in self.sources_of(rel, name):
            shown = self.tree.shown(source)
            if shown is None:
                continue
            for view, source, make in self.listing(rel, {source.rpartition("/")[2]: shown[1]}):
                if view == name:
                    return source, make, shown[1], None
        return None

    def levels(self, source: str, info: Attr | None = None, strict: bool = False) -> list[tuple[str, int]]:
        """(array path, binning) of a zarr store's 3-d levels, from its group metadata only;
        none if it is not a readable 3-d multiscale image (`info`: what the store shows, if
        known), nor while it is being copied in (`strict`: `_BeingCopied` then)."""
        def read() -> list[tuple[str, int]]:
            try:
                attrs = group_attrs(lambda meta: self._read_small(f"{source}/{meta}"))
                axes = (attrs.get("multiscales") or [{}])[0].get("axes")
                levels = [] if axes is not None and len(axes) != 3 else multiscale_levels(attrs)
            except Exception as exc:                # whatever the store holds, the listing goes on
                log.info("no MRC view of %s: %s", source, exc)
                return []
            # copied in level by level (cp -r, rsync: the coarsest last): whole once every level,
            # the coarsest too, has its metadata
            if any(all(self.tree.shown(f"{source}/{path}/{meta}") is None for meta in (".zarray", "zarr.json"))
                   for path, _ in reversed(levels)):
                raise _BeingCopied
            return levels
        try:
            return self._remembered(("levels",) + self.tree.source_key(source, info), read)
        except _BeingCopied:        # (not remembered: the store's own time need not move meanwhile)
            if strict:
                raise
            return []

    def shape(self, source: str) -> tuple[int, ...]:
        """The full-resolution shape of a tomogram (each STAR view of its run centres on
        it), read once per version of its store from its array's metadata (no zarr)."""
        return self._remembered(("shape",) + self.tree.source_key(source),
                                lambda: array_shape(lambda meta: self._read_small(f"{source}/0/{meta}")))

    def metadata_size(self, source: str, level: str) -> int | None:
        """The size of a level's MRC view from its array's metadata (`mrc.view_size`);
        None where they do not tell it (the volume is opened, and says why)."""
        try:
            return view_size(lambda meta: self._read_small(f"{source}/{level}/{meta}"))
        except Exception as exc:
            log.debug("the MRC view of %s level %s is sized by opening it: %s", source, level, exc)
            return None

    def _remembered(self, key: tuple, read):
        """What `read()` gives for key (a store's version), kept (bounded)."""
        with self._lock:
            known = self._known.get(key)
        if known is None:
            known = read()
            with self._lock:
                if len(self._known) > 10_000:
                    self._known.clear()
                self._known[key] = known
        return known

    def _read_small(self, rel: str) -> bytes | None:
        shown = self.tree.shown(rel)
        return shown[0].read_whole(rel, shown[1].size) if shown is not None and stat.S_ISREG(shown[1].mode) else None

    # -- nodes ----------------------------------------------------------------------------
    def _maker(self, source: str, level: str, voxel_size: float):
        def kept_key():
            # the size follows from the level's shape and type: its metadata file
            metadata = (self.views.source_identity(f"{source}/{level}/{name}") for name in (".zarray", "zarr.json"))
            found = next((m for m in metadata if m is not None), None)
            return None if found is None else ("mrc", level, versions(*MRC_LIBRARIES), found)

        def make(info=None):
            return MrcView(self, source, level, voxel_size, (info or self.tree.top(source)[1]).mtime_ns,
                           self.views.kept_size(kept_key))
        return make

    def open_volume(self, source: str, level: str, voxel_size: float) -> MrcVolume:
        import zarr
        self.views.count_made()
        root, _ = self.tree.top(source)
        path = root.local_path(source)
        if path is not None:
            store = zarr.storage.LocalStore(path, read_only=True)
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

    def __init__(self, views: VolumeViews, source: str, level: str, voxel_size: float, mtime_ns: int, kept):
        self.views, self.source, self.level, self.voxel_size = views, source, level, voxel_size
        self.mtime_ns = mtime_ns
        self.kept = kept
        self._size: int | None = None
        self._volume: MrcVolume | None = None
        self._lock = threading.Lock()

    def volume(self) -> MrcVolume:
        with self._lock:
            if self._volume is None:
                try:
                    self._volume = self.views.open_volume(self.source, self.level, self.voxel_size)
                except OSError:
                    raise
                except Exception as exc:        # zarr's complaint about this store: EIO for this file
                    raise OSError(errno.EIO, f"not a readable volume: {exc}", self.source) from None
            return self._volume

    def size(self) -> int:
        """The kept size (sizes learned before), else the level's metadata's (no zarr),
        else the volume's (opened here)."""
        if self._size is None:
            self._size = self.kept.get()
            if self._size is None:
                self.kept.digest()              # the metadata's version before it is read
                self._size = self.views.metadata_size(self.source, self.level) or self.volume().size
                self.kept.learn(self._size)
        return self._size

    def attr(self) -> Attr:
        return view_attr(self.size(), self.mtime_ns)

    def cached_attr(self) -> Attr | None:
        return view_attr(self._size, self.mtime_ns)

    def size_if_kept(self) -> None:
        """Its size taken from the kept sizes, if there (asked ahead of a walker: no volume opened)."""
        if self._size is None:
            self._size = self.kept.peek()

    def open(self, flags: int) -> FileHandle:
        if writes(flags):
            raise read_only(self.source)
        volume = self.volume()
        if self._size is not None and self._size != volume.size:     # a kept size proved wrong
            log.warning("the MRC view of %s was %d bytes, it is %d: corrected", self.source, self._size, volume.size)
            self._size = volume.size
            self.views.views.resized(self)
        return MrcHandle(volume, self.source)


class MrcHandle(FileHandle):
    def __init__(self, volume: MrcVolume, source: str):
        self.volume, self.source = volume, source

    def read(self, offset: int, size: int) -> bytes:
        try:
            return self.volume.read(offset, size)
        except (ValueError, KeyError) as exc:
            raise OSError(errno.EIO, f"MRC view of {self.source}: {exc}") from None


class PicksViews:
    """Each picks file of a run in the particle formats of cryo-ET tools, under each of the
    run's VoxelSpacing<vs>/ folders (pixel coordinates need the spacing)."""

    def __init__(self, tree, volumes: VolumeViews, views):
        self.tree = tree
        self.volumes, self.views = volumes, views    # views: copick.DerivedViews (kept sizes)
        self.cache = ByteCache(32 << 20)
        self.parsed = ByteCache(64 << 20)       # picks files parsed, by version: shared by spacings and views
        self.folders = ByteCache(32 << 20)      # `_written` of each spacing folder, by version
        self.size_batches = 0
        self.written_alone = 0
        self._scans: OrderedDict[str, tuple] = OrderedDict()     # `_picks_of`: run -> (version, when, picks)
        self._scans_lock = threading.Lock()

    @staticmethod
    def _run(rel: str) -> tuple[str, float] | None:
        """(run folder, voxel size) of ExperimentRuns/<run>/VoxelSpacing<vs>, else None."""
        parts = rel.split("/")
        if len(parts) != 3 or parts[0] != "ExperimentRuns" or not parts[2].startswith(SPACING):
            return None
        size = voxel_size_of(parts[2], "")
        return None if size is None else ("/".join(parts[:2]), size)

    def listing(self, rel: str, infos: dict, picks: dict[str, Attr] | None = None):
        """(view name, source picks JSON, make node, what the source shows) for folder rel
        (`infos`: what its names show; the picks files are in the run's Picks/); `picks`
        (name: what it shows) limits the picks files looked at (a lookup's one candidate),
        else the run's Picks/ is listed."""
        found = self._run(rel)
        if found is None:
            return []
        run, voxel_size = found
        if picks is None:               # what each picks file shows: one stat each, for all its views
            picks = self._picks_of(run)
        center = Once(lambda: self.center(rel, voxel_size))      # one for the whole listing
        sources = {f"{run}/Picks/{name}": info for name, info in picks.items()
                   if name.endswith(".json") and not name.startswith(".")}
        def written() -> dict[str, _Written]:           # every view, at once (a bounded cache)
            return self._written(rel, voxel_size, center, sources)

        found: list[weakref.ref | None] = [None]     # (the folder's, while the cache holds it)

        def written_nowait() -> dict[str, _Written] | None:     # the same if made already
            known = found[0]
            folder = None if known is None else known()
            if folder is None:
                folder = self._written_nowait(rel, voxel_size, center, sources)
                found[0] = None if folder is None else weakref.ref(folder)
            return folder
        listed = _Listed(rel, voxel_size, center, written, Once(written), written_nowait)
        kept = KeptTogether(self.views.sizes, functools.partial(_kept_keys, rel, voxel_size, center, sources))
        out = []
        for source, info in sources.items():
            stem = source.rpartition("/")[2][:-5]
            for suffix, kind in picks_format.FORMATS.items():
                # (one partial a view: a folder lists thousands, and most are never made)
                out.append((stem + suffix, source, functools.partial(self._make, listed, source, kind), info, kept))
        return out

    def _picks_of(self, run: str) -> dict[str, Attr]:
        """What the run's Picks/ shows (name -> what it shows; {} if none): one scan for
        all of the run's spacing folders listed within `PICKS_SCAN_S` of it, while neither
        the mount's edits nor Picks/ itself (a local folder's identity) changed; one stat
        of Picks/ for each other folder (each stat'ed every picks file)."""
        folder, edits = f"{run}/Picks", self.tree.edits       # (a change while scanning: not shared)
        shown = self.tree.shown(folder)
        if shown is None:
            return {}
        root, info = shown
        version = None if info.backing is None else (edits, root, info.backing, info.mtime_ns, info.ctime_ns)
        now = time.monotonic()
        with self._scans_lock:
            held = self._scans.get(run)
        if version is not None and held is not None and held[0] == version and now - held[1] < PICKS_SCAN_S:
            return held[2]
        picks = {name: info for name, _, info in self.tree.scan(folder)}
        if version is not None:
            with self._scans_lock:
                self._scans[run] = version, now, picks
                self._scans.move_to_end(run)
                if len(self._scans) > PICKS_SCANS_HELD:
                    self._scans.popitem(last=False)
        return picks

    def folders_showing(self, rel: str, names) -> dict[str, str]:
        """{VoxelSpacing folder: "Picks"} among the names of a run's folder rel."""
        if "Picks" not in names:
            return {}
        return {name: "Picks" for name in names if self._run(f"{rel}/{name}") is not None}

    def folders_following(self, rel: str) -> list[str]:
        """ExperimentRuns/<run>/Picks: the run's VoxelSpacing folders (they show its picks)."""
        parts = rel.split("/")
        if len(parts) != 3 or parts[0] != "ExperimentRuns" or parts[2] != "Picks":
            return []
        run = "/".join(parts[:2])
        return [f"{run}/{name}" for name in self.tree.listing(run) if self._run(f"{run}/{name}") is not None]

    def sources_of(self, rel: str, name: str) -> list[str]:
        """The picks file a picks view named `rel/name` is made of."""
        suffix = next((s for s in picks_format.FORMATS if name.endswith(s)), None)
        found = self._run(rel) if suffix else None
        return [f"{found[0]}/Picks/{name[:-len(suffix)]}.json"] if found else []

    def lookup(self, rel: str, name: str):
        for source in self.sources_of(rel, name):
            shown = self.tree.shown(source)
            if shown is None:
                return None
            for view, source, make, info, kept in self.listing(rel, {}, {source.rpartition("/")[2]: shown[1]}):
                if view == name:
                    return source, make, info, kept
        return None

    def _make(self, listed: "_Listed", source: str, kind: str, info: Attr | None = None) -> GeneratedFile:
        """The node of a view of source in the folder `listed` lists; `info`: what the
        source shows, if the listing or lookup stat'ed it (else it is asked)."""
        shown = info or self.tree.top(source)[1]
        center = listed.center if kind == "star" else _no_center
        rel, voxel_size = listed.rel, listed.voxel_size
        # (partials, not closures: a mount keeps one per view made)
        return GeneratedFile(functools.partial(self.render, source, kind, rel, voxel_size, center,
                                               functools.partial(_written_of, listed.written, source)),
                             shown.mtime_ns, self.cache,
                             made_nowait=functools.partial(self.render_nowait, source, kind, listed.written_nowait),
                             kept=self.views.kept_size(functools.partial(_kept_key, rel, voxel_size, center,
                                                                         source, shown, kind)),
                             on_resized=self.views.resized,
                             sized=functools.partial(_sized_from, listed.sized, source, kind))

    def _written(self, rel: str, voxel_size: float, center, sources: dict[str, Attr | None]) -> dict[str, "_Written"]:
        """The text views in folder rel of these picks files (`info` what each shows, or
        None: asked), each format written once for all of them (`picks.texts`), once per
        version of the files, whoever asks first (a listing for sizes, a reader, or the
        mount's learner: `copick.SizeLearner`), kept (bounded). A picks file that does not
        read, or a centre not found, has none: those views are made alone, and say why."""
        try:
            centre = center()
        except Exception as exc:
            log.info("the picks views in %s are made one by one: %s: %s", rel, type(exc).__name__, exc)
            return {}
        read = tuple(self.tree.source_key(source, info) for source, info in sources.items())
        return self.folders.get_or_make((rel, voxel_size, centre, read),
                                        lambda: self._written_together(rel, voxel_size, centre, sources))

    def _written_nowait(self, rel: str, voxel_size: float, center, sources: dict[str, Attr | None]) -> "_Folder | None":
        """`_written`'s views if they were written already, found without I/O (the centre
        found, and what every source shows known from the listing); else None."""
        if not center.done or None in sources.values():
            return None
        read = tuple(self.tree.source_key(source, info) for source, info in sources.items())
        return self.folders.get((rel, voxel_size, center(), read))

    def _written_together(self, rel: str, voxel_size: float, centre, sources: dict[str, Attr | None]) -> "_Folder":
        def parse(item: tuple[str, Attr | None]) -> picks_format.Picks | None:
            try:
                return self._parsed(*item)
            except Exception as exc:
                log.debug("the views of %s are made one by one: %s", item[0], exc)
                return None
        # read side by side: a cold walk waits on the disk for each file
        parsed = {source: picks for source, picks in zip(sources, self.views.readers.map(parse, sources.items()))
                  if picks is not None}
        try:
            texts = picks_format.texts(list(parsed.values()), rel.split("/")[1], voxel_size, centre)
        except Exception as exc:
            log.info("the picks views in %s are made one by one: %s: %s", rel, type(exc).__name__, exc)
            return _Folder()
        self.size_batches += 1
        return _Folder((source, _Written(self.tree.source_key(source, sources[source]), made, len(picks.points)))
                       for (source, picks), made in zip(parsed.items(), texts))

    def _parsed(self, source: str, info: Attr | None = None) -> picks_format.Picks:
        """A picks file as arrays, parsed once per version (what `info` shows, else asked)."""
        return self.parsed.get_or_make(self.tree.source_key(source, info), lambda: picks_format.Picks.from_json(
            self.volumes._read_small(source) or b""))

    def render(self, source: str, kind: str, rel: str, voxel_size: float, center, written=None) -> bytes:
        """One view of a picks file; `center()` gives the tomogram centre STAR views use.
        A text view comes from its folder's, written together (`written()`), if they were
        written from the source as it is."""
        self.views.count_made()
        try:
            together = written() if written is not None and kind != "em" else None
            if together is not None and together.version == self.tree.source_key(source):
                return together.texts[kind]
            self.written_alone += 1
            return picks_format.export(self._parsed(source), kind, rel.split("/")[1], voxel_size, center())
        except OSError:
            raise
        except Exception as exc:                # a bad picks file (or tomogram): EIO for this view only
            raise OSError(errno.EIO, f"no {kind} view of {source}: {type(exc).__name__}: {exc}") from None

    def render_nowait(self, source: str, kind: str, written_nowait) -> bytes | None:
        """`render`'s bytes where they need no I/O: a text view of its folder's, written
        together already from the version of source the kernel's caches show; else None."""
        folder = written_nowait() if kind != "em" else None
        together = folder.get(source) if folder else None
        shown = self.tree.shown_nowait(source) if together is not None else None
        if shown is None or together.version != self.tree.source_key(source, shown[1]):
            return None
        self.views.count_made()
        return together.texts[kind]

    def center(self, rel: str, voxel_size: float) -> tuple[float, float, float] | None:
        """The centre (Å) of the tomogram copick's exporter centres RELION 5 coordinates on:
        the first tomogram of this spacing, else of the run's smallest spacing with one
        (found once per version of the run's and this spacing's folders)."""
        run = rel.rpartition("/")[0]
        key = ("center", rel, voxel_size) + self.tree.source_key(run) + self.tree.source_key(rel)
        try:
            return self.volumes._remembered(key, lambda: self._center(run, rel))
        except _BeingCopied:        # none whole yet: not remembered (no folder's time moves as it completes)
            return None

    def star_views_following(self, rel: str) -> list[str]:
        """The STAR views that centre on the tomogram whose store's metadata or folder rel
        is (`ExperimentRuns/<run>/VoxelSpacing<vs>/<tomo>.zarr[/...]`): every STAR view of the run."""
        parts = rel.split("/")
        if len(parts) < 4 or self._run("/".join(parts[:3])) is None or not parts[3].endswith(".zarr") \
                or parts[3].endswith("_features.zarr") or len(parts) > 4 and parts[-1] not in (".zarray", "zarr.json", ".zattrs"):
            return []
        run = "/".join(parts[:2])
        stems = [name[:-5] for name in self.tree.listing(f"{run}/Picks") if name.endswith(".json")] \
            if self.tree.shown(f"{run}/Picks") else []
        return [f"{run}/{folder}/{stem}.star" for folder in self.tree.listing(run)
                if self._run(f"{run}/{folder}") is not None for stem in stems]

    def _center(self, run: str, rel: str) -> tuple[float, float, float] | None:
        spacings = sorted((size, f"{run}/{name}") for name in self.tree.listing(run)
                          if (size := voxel_size_of(name, "")) is not None and name.startswith(SPACING))
        for size, folder in sorted(spacings, key=lambda s: (s[1] != rel, s[0])):
            tomograms = sorted(n for n in self.tree.listing(folder)
                               if n.endswith(".zarr") and not n.endswith("_features.zarr") and not n.startswith("."))
            if tomograms:
                # (a store being copied in has no centre yet: _BeingCopied, nothing remembered)
                if self.volumes.levels(f"{folder}/{tomograms[0]}", strict=True):
                    nz, ny, nx = self.volumes.shape(f"{folder}/{tomograms[0]}")
                    return nx / 2 * size, ny / 2 * size, nz / 2 * size
        return None


class _Written:
    """A picks file's text views as its folder's were written together (kind -> bytes),
    the version of the file they were written from, and its number of points."""

    def __init__(self, version: tuple, texts: dict[str, bytes], points: int):
        self.version, self.texts, self.points = version, texts, points


class _Listed:
    """What the picks views of one listing of a spacing folder share: the folder, its
    voxel size, `center()` (a STAR view's tomogram centre), `written()` (its views written
    together), `sized()` (the same, held until each view knows its size) and
    `written_nowait()` (the same if written already, else None: no I/O)."""
    __slots__ = ("rel", "voxel_size", "center", "written", "sized", "written_nowait")

    def __init__(self, rel: str, voxel_size: float, center, written, sized, written_nowait):
        self.rel, self.voxel_size, self.center, self.written, self.sized = rel, voxel_size, center, written, sized
        self.written_nowait = written_nowait


class _Folder(dict):
    """A folder's picks files (source -> `_Written`), as a bounded cache counts them."""

    @property
    def nbytes(self) -> int:
        return 256 + sum(256 + sum(map(len, written.texts.values())) for written in self.values())


def _written_of(written, source: str) -> _Written | None:
    """The text views of source as its folder's were written together (`written()`)."""
    return written().get(source)


def _no_center() -> None:
    """The centre the views other than STAR have no need of."""
    return None


def _kept_keys(rel: str, voxel_size: float, center, sources: dict[str, Attr | None],
               formats: dict[str, str] = picks_format.FORMATS) -> dict[str, bytes | None]:
    """{view name: its kept size's key, None: not kept} of the picks views (`formats`:
    suffix -> kind) in folder rel of `sources` (picks file -> what it shows), the parts
    they share worked out once: those of a listing (`KeptTogether`), and of a view made
    alone (`_kept_key`), alike. A STAR view with no centre is not kept (it says why when
    made), nor a name two views share (`x.json`'s `.relion4.star`, `x.relion4.json`'s `.star`)."""
    if not sources:
        return {}
    try:
        centre = repr(center()) if "star" in formats.values() else None
    except Exception:
        centre = None
    head = [repr(VIEWS_VERSION), repr("picks")]
    shared = [repr(rel.split("/")[1]), repr(voxel_size), repr(versions(*PICKS_LIBRARIES))]
    keys = {}
    for source, info in sources.items():
        stem, found = source.rpartition("/")[2][:-5], identity(info)
        for suffix, kind in formats.items():
            around = centre if kind == "star" else "None"
            view = stem + suffix
            keys[view] = None if found is None or around is None or view in keys else \
                digest_of_reprs(head + [repr(kind)] + shared + [repr(found), around])
    return keys


def _kept_key(rel: str, voxel_size: float, center, source: str, shown: Attr, kind: str) -> bytes | None:
    """The kept size's key of the picks view of kind of source (what it shows) made
    alone: as its listing's (`_kept_keys`), except for a name two views share (keyed
    here, none in a listing)."""
    key, = _kept_keys(rel, voxel_size, center, {source: shown},
                      {suffix: k for suffix, k in picks_format.FORMATS.items() if k == kind}).values()
    return key


def _sized_from(sized, source: str, kind: str) -> int | None:
    """The size of a view of kind of source, from its folder's views written together
    (`sized()`), if they could be."""
    return _size(sized().get(source), kind)


def _size(written: _Written | None, kind: str) -> int | None:
    """The size of a view of kind, from its file's views written together (None: not)."""
    if written is None:
        return None
    return picks_format.em_size(written.points) if kind == "em" else len(written.texts[kind])


class Once:
    """What `make()` gives, made at the first call (errors are not kept)."""

    def __init__(self, make):
        self._make, self._made, self._value = make, False, None

    def __call__(self):
        if not self._made:
            self._value, self._made = self._make(), True
        return self._value

    @property
    def done(self) -> bool:
        """Made already: a call gives its value at once."""
        return self._made


class Imports:
    """A file created under a picks view's name that has no picks yet (`cp particles.star
    VoxelSpacing10.000/annotator_3_ribosome.star`) is an import: its bytes are kept until
    the writer closes, then read whole in its format and written to the overlay as
    Picks/<user>_<session>_<object>.json (atomically); a file that does not read, or an
    object the project does not know, is refused with EINVAL at close and nothing is
    written. `objects` are the config's pickable object names (None: any).

    A new `<name>.mrc` there (with no `<name>.zarr`) is a tomogram import, on a local
    overlay: written to a temporary file in the work directory (which mounts empty), its
    header checked at close (an MRC volume whose voxel size is the folder's, else EINVAL),
    then moved to PENDING_IMPORTS and converted in the background to a store built in the
    work directory, renamed to `<name>.zarr` when complete: nothing partial is ever shown,
    and a conversion cut (a kill, the unmount's wait) starts again at the next mount. A
    `<name>.zarr` that arrives meanwhile wins: the import is dropped, and `<name>.mrc`
    shows that store's view (`mv` of a run copies the view `wbp.mrc` before `wbp.zarr`)."""

    def __init__(self, tree, picks: PicksViews, objects: set[str] | None):
        self.tree, self.picks, self.objects = tree, picks, objects
        self.imported = 0
        self.refused = 0
        self.tomograms = {"imported": 0, "refused": 0, "failed": 0, "dropped": 0, "running": {}}
        self._status_lock = threading.Lock()
        self._converter = ThreadPoolExecutor(1, thread_name_prefix="scopefs-import")
        self._stopping = threading.Event()      # unmounting, and out of time: imports stop

    def __call__(self, rel: str, name: str) -> File | None:
        """The node for a new file `name` in folder rel, if it is an import (the hook
        `OverlayTree.imports`)."""
        found = self.picks._run(rel)
        if found is None:
            return None
        if name.endswith(".mrc"):
            return self._tomogram(rel, name, found[1])
        kind = next((k for suffix, k in picks_format.FORMATS.items() if name.endswith(suffix)), None)
        stem = name[:-len(next(s for s, k in picks_format.FORMATS.items() if k == kind))] if kind else ""
        parts = stem.split("_")
        if kind is None or len(parts) != 3 or not all(parts):
            return None
        return self.tree.add(PicksImport(self, rel, name, kind, parts, *found))

    def commit(self, node: "PicksImport", data: bytes) -> None:
        user, session, object_name = node.parts
        run_dir, run = node.run, node.run.rpartition("/")[2]
        try:
            if self.objects is not None and object_name not in self.objects:
                raise ValueError(f"the project has no pickable object {object_name!r}")
            center = self.picks.center(node.rel, node.voxel_size) if node.kind == "star" else None
            picks = picks_format.parse(node.kind, data, run, node.voxel_size, center)
        except Exception as exc:                # any library's complaint: this file is refused
            self.refused += 1                   # (the daemon logs the refusal, once)
            raise OSError(errno.EINVAL, f"not an importable picks file: {exc}", f"{node.rel}/{node.name}") from None
        target = f"{run_dir}/Picks/{user}_{session}_{object_name}.json"
        with self.tree.lock:
            self.tree.ensure_upper_dir(self._directory(f"{run_dir}/Picks"))
            self.tree.clear_whiteout(target)
            self._write(target, picks.to_json(object_name, user, session, run))
        # made behind the kernel's back: told before the writer's close returns (the overlay
        # watch would tell it a moment later)
        self.tree.overlay_changed({run_dir: {"Picks"}, f"{run_dir}/Picks": {target.rpartition("/")[2]},
                                   node.rel: {node.name}}, waited=True)
        self.imported += 1
        log.info("imported %s/%s as %s (%d points)", node.rel, node.name, target, len(picks.points))

    def _directory(self, rel: str):
        """The merged directory at rel, made on the way where missing (tree lock held)."""
        node = self.tree.root
        for name in rel.split("/"):
            node = node.lookup(name) or node.mkdir(name, 0o755)
        return node

    def _write(self, rel: str, data: bytes) -> None:
        upper = self.tree.upper
        path = upper.local_path(rel)
        if path is not None:
            atomic_write(path, data, keep_mode=False)
            return
        handle = upper.open_write(rel, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)     # one object put: atomic
        try:
            handle.write(0, data)
            handle.flush()
        finally:
            handle.release()


    # -- tomograms ---------------------------------------------------------------------------
    def _tomogram(self, rel: str, name: str, voxel_size: float) -> File | None:
        stem = name[:-4]
        if (self.tree.upper.local_path("") is None or stem.startswith(".") or BINNED.match(stem)
                or self.tree.shown(f"{rel}/{stem}.zarr") is not None):
            return None
        if f"{rel}/{name}" in self.tomograms["running"]:
            raise FileExistsError(errno.EEXIST, "this tomogram is being imported", name)
        return self.tree.add(TomogramImport(self, rel, name, voxel_size))

    def _count(self, key: str, running: str | None = None, done: str | None = None) -> None:
        """What the status says of import `key`: `running` (its progress), or ended with one
        more `done` ("imported", "refused", "failed", "dropped")."""
        with self._status_lock:
            if running is not None:
                self.tomograms["running"][key] = running
            else:
                self.tomograms["running"].pop(key, None)
                self.tomograms[done] += 1

    def check_tomogram(self, node: "TomogramImport", temp: str) -> None:
        """At close: the written file must be an MRC volume of the folder's voxel size;
        then it is moved to PENDING_IMPORTS and its conversion queued (the converter owns
        it from there on)."""
        import mrcfile
        pending = self._pending_path(node)
        try:
            if len(_partial_name(pending)) > 255:
                raise ValueError("its path is too long to be kept while it is converted")
            with mrcfile.mmap(temp, mode="r", permissive=False) as mrc:
                if mrc.data is None or mrc.data.ndim != 3:
                    raise ValueError("not a 3-d volume")
                size = float(mrc.voxel_size.x)
            if round(size, 3) != round(node.voxel_size, 3):
                raise ValueError(f"its voxel size {size:.3f} Å is not the folder's {node.voxel_size:.3f} Å")
        except Exception as exc:
            self._count(f"{node.rel}/{node.name}", done="refused")     # (the daemon logs it, once)
            raise OSError(errno.EINVAL, f"not an importable tomogram: {exc}", f"{node.rel}/{node.name}") from None
        os.makedirs(os.path.dirname(pending), 0o700, exist_ok=True)
        os.rename(temp, pending)
        fsync_dir(os.path.dirname(pending))
        self._queue(node, pending)

    def resume(self) -> None:
        """At mount: the imports an earlier mount was cut in (killed, or out of time at
        unmount) are queued again."""
        folder = self.tree.upper.local_path(PENDING_IMPORTS)
        for quoted in sorted(os.listdir(folder)) if folder and os.path.isdir(folder) else ():
            rel, _, name = urllib.parse.unquote(quoted).rpartition("/")
            voxel_size = voxel_size_of(rel.rpartition("/")[2], "")
            if voxel_size is not None and name.endswith(".mrc"):
                log.info("tomogram import %s/%s resumed (cut at an earlier mount)", rel, name)
                self._queue(TomogramImport(self, rel, name, voxel_size), os.path.join(folder, quoted))

    def _pending_path(self, node: "TomogramImport") -> str:
        return os.path.join(self.tree.upper.local_path(PENDING_IMPORTS),
                            urllib.parse.quote(f"{node.rel}/{node.name}", safe=""))

    def _queue(self, node: "TomogramImport", pending: str) -> None:
        self._count(f"{node.rel}/{node.name}", running="queued")
        self._converter.submit(self._convert, node, pending)

    def _convert(self, node: "TomogramImport", pending: str) -> None:
        import shutil

        import mrcfile

        from ..formats.tomogram import write_copick_tomogram
        key = f"{node.rel}/{node.name}"
        target_rel = f"{node.rel}/{node.name[:-4]}.zarr"
        # (built in the work directory, which every mount empties: a kill leaves nothing shown)
        partial_rel = f"{WORK_DIR}/{_partial_name(pending)}"
        target, partial = self.tree.upper.local_path(target_rel), self.tree.upper.local_path(partial_rel)

        def progress(done: int, total: int) -> None:
            if os.path.lexists(target):
                raise _ImportDropped
            if self._stopping.is_set():
                raise _ImportStopped
            self._count(key, running=f"{done}/{total} chunks")
        outcome = "failed"
        try:
            if self._stopping.is_set():
                raise _ImportStopped
            shutil.rmtree(partial, ignore_errors=True)
            self.tree.upper.work_path()         # (made if not there: the partial store's folder)
            with mrcfile.mmap(pending, mode="r") as mrc:
                write_copick_tomogram(mrc.data, partial, node.voxel_size, progress=progress)
            with self.tree.lock:                # (what the mount creates, it creates holding it)
                if os.path.lexists(target):
                    raise _ImportDropped
                self.tree.upper.rename(partial_rel, target_rel)     # complete, or not there at all
            outcome = "imported"
            log.info("imported %s as %s", key, target)
        except _ImportStopped:
            log.error("tomogram import %s not done at unmount: the file written is kept as %s "
                      "and imported at the next mount", key, pending)
            pending = None
        except _ImportDropped:
            outcome = "dropped"
            log.info("tomogram import %s dropped: its store arrived meanwhile", key)
        except Exception as exc:
            self._keep_failed(node, pending, f"{type(exc).__name__}: {exc}")
            pending = None
        finally:
            shutil.rmtree(partial, ignore_errors=True)
            self._count(key, done=outcome)
            self.tree.overlay_changed({node.rel: {node.name}})        # the name is the view's now, or nothing
            try:
                if pending is not None:
                    os.unlink(pending)
            except OSError:
                pass

    def _keep_failed(self, node: "TomogramImport", pending: str, why: str) -> None:
        """An import that failed (its writer was told it is stored): the MRC is shown as a
        plain file under its own name, or kept where it is if that cannot be."""
        key = f"{node.rel}/{node.name}"
        kept = f"kept as {pending}"
        try:
            with self.tree.lock:
                if not os.path.lexists(self.tree.upper.local_path(key)):
                    os.rename(pending, self.tree.upper.local_path(key))
                    kept = "shown as a plain file under its name"
        except OSError as exc:
            why += f" (not shown: {exc})"
        log.error("tomogram import %s failed: %s; the file written is %s", key, why, kept)

    def status(self) -> dict:
        return {"picks_imports": {"imported": self.imported, "refused": self.refused},
                "tomogram_imports": self._tomogram_status()}

    def _tomogram_status(self) -> dict:
        with self._status_lock:
            return {**self.tomograms, "running": dict(self.tomograms["running"])}

    def close(self) -> None:
        """Before the tree closes (a conversion uses it): the imports queued and running
        (their writers were told they succeeded) get IMPORTS_UNMOUNT_WAIT_S in all to finish;
        those left then stop (at their next chunk), each logged, its written file kept."""
        all_done = self._converter.submit(lambda: None)     # (one thread: after every import)
        self._converter.shutdown(wait=False)
        if not wait([all_done], timeout=IMPORTS_UNMOUNT_WAIT_S).done:
            self._stopping.set()
        self._converter.shutdown(wait=True)


class _BeingCopied(Exception):
    """A store lacks a level's metadata (being copied in): it has no view until it has."""


class _ImportDropped(Exception):
    """A tomogram import stops: its store arrived meanwhile."""


class _ImportStopped(Exception):
    """A tomogram import stops: the mount ends, and waited for it long enough."""


class TomogramImport(File):
    """An MRC file being written in: to a hidden temporary file in the overlay, handed to
    the converter when its writer closes."""

    def __init__(self, imports: Imports, rel: str, name: str, voxel_size: float):
        self.imports, self.rel, self.name, self.voxel_size = imports, rel, name, voxel_size
        self.mtime_ns = time.time_ns()

    def attr(self) -> Attr:
        return Attr(stat.S_IFREG | 0o644, 0, self.mtime_ns)

    def open(self, flags: int) -> FileHandle:
        # written in the overlay's work directory, which every mount empties: a writer cut
        # short leaves nothing (moved to PENDING_IMPORTS at close)
        work = self.imports.tree.upper.work_path()
        return TempFileHandle(os.path.join(work, self.name), None, lambda temp: self.imports.check_tomogram(self, temp))


class PicksImport(File):
    """A picks file being written in; converted when its writer closes."""

    def __init__(self, imports: Imports, rel: str, name: str, kind: str, parts: list[str], run: str,
                 voxel_size: float):
        self.imports, self.rel, self.name, self.kind, self.parts = imports, rel, name, kind, parts
        self.run, self.voxel_size = run, voxel_size
        self.data = b""
        self.mtime_ns = time.time_ns()

    def attr(self) -> Attr:
        return Attr(stat.S_IFREG | 0o644, len(self.data), self.mtime_ns)

    def open(self, flags: int) -> FileHandle:
        # imported at the first close after a write (a shell's `>` closes a dup of the file
        # before it writes); a file created and never written imports nothing
        return BufferHandle(b"" if flags & os.O_TRUNC else self.data, self._commit)

    def truncate(self, size: int) -> None:
        self.data = resized(self.data, size)

    def _commit(self, data: bytes) -> None:
        self.imports.commit(self, data)
        self.data, self.mtime_ns = data, time.time_ns()
