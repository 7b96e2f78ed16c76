"""A copick project: its static root and overlay root as one merged, writable tree.

    scopefs mount project/copick_config.json MOUNTPOINT        (config_type: filesystem)
    scopefs mount -t copick -o overlay=OVERLAY_DIR STATIC_DIR MOUNTPOINT

The merge follows `backends/overlay/` (overlay wins; whiteouts, which copick never sees
since it skips dot names). The mount root also shows `copick_config.json`: the project's
config with the mount as its only (overlay) root, so `copick.from_file()` on it works.
"""
from __future__ import annotations

import errno
import functools
import json
import logging
import os
import re
import stat
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import csv
import io

from ..formats import picks as picks_format
from . import is_url, remote
from .blocks import GeneratedFile
from .cache import ByteCache
from .copick_views import (MRC_LIBRARIES, PICKS_LIBRARIES, VIEWS_VERSION, Imports, Once, PicksViews, VolumeViews,
                           read_file)
from .kept_sizes import KeptSize, KeptSizes, KeptTogether, cache_path, digest_of_reprs, identity, versions
from .nodes import ROOT_INO, Attr, attr_of
from .options import MountError, Options
from .overlay import FsspecRoot, LocalRoot, OverlayTree

log = logging.getLogger(__name__)

CONFIG_NAME = "copick_config.json"
MESH_FORMATS = ("ply", "obj", "stl")
#: set to 0 for no `SizeLearner`: views are sized when a walk lists or looks them up
LEARN_SIZES_ENV = "SCOPEFS_LEARN_VIEW_SIZES"
#: what the bytes of a view depend on besides its source: its renderer's libraries
RENDERER_LIBRARIES = {"picks_csv": (), "mesh_as": ("trimesh", "numpy"),
                      "preview": ("zarr", "numcodecs", "opencv-python-headless", "numpy")}
#: the views a listing sizes together (`KeptTogether`), by renderer: their sources'
#: extension, and each view's (its name's) with the renderer's args
SIZED_TOGETHER = {"picks_csv": (".json", (("csv", ()),)),
                  "mesh_as": (".glb", tuple((fmt, (fmt,)) for fmt in MESH_FORMATS))}


def make_root(url: str, fs_args: dict | None, key: str, ttl: float):
    """`local:///abs`, `file:///abs` or a plain path: straight to the OS; any other fsspec
    URL (s3://...) through fsspec, with fs_args (endpoint, credentials...)."""
    match = re.match(r"^(?:local|file)://(.*)$", url)
    path = (match.group(1) or "/") if match else url
    if match or not is_url(url):
        if not os.path.isdir(path):
            raise MountError(f"the {key} {path} is not a directory")
        return LocalRoot(path)
    args = {k: v for k, v in (fs_args or {}).items() if k != "auto_mkdir"}
    try:
        root = FsspecRoot(url, args, ttl)
        if root.stat("") is None and root.listdir("") is None:
            raise MountError(f"the {key} {root.describe()} does not exist")
        return root
    except MountError:
        raise
    except Exception as exc:
        raise MountError(f"the {key} {remote.public_url(url)} cannot be opened: {type(exc).__name__}: "
                         f"{remote.redact(str(exc))}") from None


def open_tree(source: str, options: Options, read_only: bool = False, progress=None, base: int = ROOT_INO,
              mountpoint: str | None = None):
    """The merged tree; with a `mountpoint`, its root also shows the project's config
    rewritten to name the mount as its only root."""
    overlay_dir = options.str("overlay", "")
    ttl = options.float("metadata_ttl", 60.0)
    volume_cache = options.int("mrc_cache_mb", 512, minimum=16) << 20
    view_cache = options.int("view_cache_mb", 128, minimum=1) << 20
    options.finish()
    if base != ROOT_INO:
        raise MountError("a copick project cannot be shown inside another source")
    if os.path.isdir(source):
        if not overlay_dir:
            raise MountError(f"{source} is a directory: give the overlay root with -o overlay=DIR, "
                             f"or mount the project's config JSON")
        config = {"config_type": "filesystem", "name": os.path.basename(os.path.abspath(source)),
                  "pickable_objects": []}
        static, overlay = make_root(source, None, "static root", ttl), make_root(overlay_dir, None, "overlay root", ttl)
    else:
        try:
            with open(source, encoding="utf-8") as fh:
                config = json.load(fh)
        except (OSError, ValueError) as exc:
            raise MountError(f"{source}: not a readable copick config ({exc})") from None
        if not isinstance(config, dict) or config.get("config_type", "filesystem") != "filesystem":
            raise MountError(f"{source}: config_type must be 'filesystem'")
        if "overlay_root" not in config:
            raise MountError(f"{source}: the config has no overlay_root")
        overlay = make_root(config["overlay_root"], config.get("overlay_fs_args"), "overlay_root", ttl)
        static = (make_root(config["static_root"], config.get("static_fs_args"), "static_root", ttl)
                  if config.get("static_root") else overlay)
    tree = CopickTree(static, overlay, read_only)
    tree.derive = DerivedViews(tree, volume_cache, view_cache)
    objects = {o.get("name") for o in config.get("pickable_objects") or [] if isinstance(o, dict)}
    tree.imports = Imports(tree, tree.derive.picks, objects or None)
    if tree.writable:
        tree.imports.resume()
    if mountpoint:
        merged = {k: v for k, v in config.items() if k not in ("static_root", "static_fs_args")}
        merged.update(overlay_root=f"local://{mountpoint}", overlay_fs_args={"auto_mkdir": True})
        text = (json.dumps(merged, indent=4) + "\n").encode()
        config_file = tree.extra[CONFIG_NAME] = tree.add(GeneratedFile(lambda: text,
                                                                       (static.stat("") or overlay.stat("")).mtime_ns))
        config_file.attr()          # (in memory: its size known, the root lists it with attributes)
    return tree


class LibraryLoader:
    """What the derived views write with (picks formats, MRC, previews from zarr),
    imported in the background once a view must be made (about a second cold): not at
    mount, and not for a walk whose sizes were kept (`kept_sizes`), which needs none of
    them. trimesh (meshes) is left to the first mesh view: most projects have none. A
    library that fails to import is left to the view that needs it, which says why."""

    def __init__(self):
        self._started = threading.Event()

    def start(self) -> None:
        if not self._started.is_set():
            self._started.set()
            threading.Thread(target=self._load, name="load-view-libraries", daemon=True).start()

    @staticmethod
    def _load() -> None:
        try:
            picks_format.load_libraries()
            import mrcfile  # noqa: F401
            import zarr  # noqa: F401
        except Exception as exc:
            log.debug("loading the view libraries: %s", exc)


class CopickTree(OverlayTree):
    """The merged tree, with the derived views' and imports' counters in its status."""

    def listen(self, listener) -> None:
        """The daemon serves the tree: what the views' kept sizes need is read, and their
        sizes are learned, from now on (a tree opened and not served does neither)."""
        super().listen(listener)
        self.derive.read_ahead()
        self.derive.learner.start()

    def status(self) -> dict:
        return {**super().status(), **self.derive.status(), **self.imports.status()}

    def close(self) -> None:
        self.imports.close()
        super().close()
        self.derive.close()


class SizeLearner:
    """The sizes of the derived views, learned in a thread of the mount's own from mount
    on: a cold walk of a project never mounted before made or sized every view it listed
    (a plain disk answers `ls -lR` from its inodes). It sizes the very nodes the listings
    show (`OverlayTree.derived`), so a walk after it finds each size in its node, and the
    kept sizes (`kept_sizes`) learn them for later mounts. Local roots only (object storage
    keeps nothing); folders one at a time, in the order `ls -lR` walks them; at most as
    many views as are kept (their nodes hold about 1.5 KB each, as after a walk); it stops at
    unmount; none with `SCOPEFS_LEARN_VIEW_SIZES=0`. A walk that outruns it sizes what it lists itself, and what both ask for is
    made once (the caches of `DerivedViews` and `PicksViews`).

    It gives way to requests (`Tree.requests_answered`): on two cores and one GIL a walk
    right after mount ran at the speed of both, even with every size kept (each view's key
    is still worked out from stats to find its kept size). Before each view, if requests
    came since it last looked, it waits until none came for `QUIET_S`, at most `PAUSE_S`
    (then it sizes one folder whatever comes: a steady trickle of requests does not keep
    it from ending)."""

    #: seconds without a request before it goes on, and the longest it waits for that
    QUIET_S = 0.05
    PAUSE_S = 1.0

    def __init__(self, tree: OverlayTree, views: "DerivedViews", limit: int):
        self.tree, self.views, self.limit = tree, views, limit
        self.done = False
        self.learned = 0
        self.paused = 0                 # times it waited for requests to stop
        self._seen = 0                  # requests answered when it last looked
        self._pushing = False           # sizing the rest of a folder after waiting PAUSE_S
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        if os.environ.get(LEARN_SIZES_ENV) != "0" and self.tree.static.local_path("") is not None \
                and self.tree.upper.local_path("") is not None:
            self._thread = threading.Thread(target=self._learn, name="learn-view-sizes", daemon=True)
            self._thread.start()
        else:
            self.done = True

    def stop(self) -> None:
        """No more after the view or folder in hand, which is waited for (a thread still
        in a library's code as the process ends can crash it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _learn(self) -> None:
        try:
            self._seen = self.tree.requests_answered()
            for rel, names in self._folders():
                self._pushing = False
                if not self._quiet():
                    return
                # the nodes a listing shows (no stats, and not the walk's scans ahead)
                for name, node, _ in self.tree.derived(rel, dict.fromkeys(names)):
                    if self._stop.is_set() or self.learned >= self.limit or not self._quiet():
                        return
                    try:
                        node.attr()
                        self.learned += 1
                    except OSError as exc:      # a bad source: its view says why when asked
                        log.debug("learning the size of %s/%s: %s", rel, name, exc)
        except Exception as exc:              # whatever it is, a listing meets it again and says why
            log.debug("learning the views' sizes at mount: %s: %s", type(exc).__name__, exc)
        finally:
            self.done = True

    def _quiet(self) -> bool:
        """After requests came since the last look: until none came for `QUIET_S`, or
        `PAUSE_S` passed (then no more looks in this folder); False if stopped meanwhile."""
        seen = self.tree.requests_answered()
        if seen == self._seen or self._pushing:
            return True
        self.paused += 1
        until = time.monotonic() + self.PAUSE_S
        while True:
            self._seen = seen
            if self._stop.wait(self.QUIET_S):
                return False
            seen = self.tree.requests_answered()
            if seen == self._seen:
                return True
            if time.monotonic() > until:
                self._pushing = True        # (the rest of the folder whatever comes)
                return True

    def _folders(self):
        """(folder, its names) of the folders that show derived views, in the order of a
        walk (`ls -lR`)."""
        for run in self._names("ExperimentRuns") or ():
            for name in self._names(f"ExperimentRuns/{run}") or ():
                if name in ("Picks", "Meshes", "Segmentations") or name.startswith("VoxelSpacing"):
                    names = self._names(f"ExperimentRuns/{run}/{name}")
                    if names is not None:
                        yield f"ExperimentRuns/{run}/{name}", names

    def _names(self, rel: str) -> list[str] | None:
        """The names in folder rel; None if it is gone or not a folder."""
        shown = self.tree.shown(rel)
        if shown is None or not stat.S_ISDIR(shown[1].mode):
            return None
        try:
            return self.tree.listing(rel)
        except OSError:
            return None


class DerivedViews:
    """Read-only files made from copick data for tools that read other formats, named so
    that copick's own globs (`Picks/*.json`, `Meshes/*.glb`, `*.zarr`) never match them:

        Picks/<u>_<s>_<o>.csv        the picks as a table (x, y, z in Å, instance, score, 4x4)
        Meshes/<u>_<s>_<o>.ply|.obj|.stl   the mesh through trimesh
        VoxelSpacing<vs>/<tomo>.png  central slices (z, y, x) of the coarsest level, side by side
        VoxelSpacing<vs>/<tomo>[.bin<N>].mrc, Segmentations/<seg>[.bin<N>].mrc,
        VoxelSpacing<vs>/<u>_<s>_<o>.star|.relion4.star|.tbl|.em|.csv   (copick_views.py)
    """

    def __init__(self, tree: OverlayTree, volume_cache: int, view_cache: int = 128 << 20):
        self.tree = tree
        self.cache = ByteCache(view_cache)      # the bytes of these views: nowhere else
        self.sizes = KeptSizes(cache_path())
        self.libraries = LibraryLoader()
        self.made = 0
        self._made_lock = threading.Lock()
        # small sources read side by side for a listing's sizes (Picks JSON): cold, each waits on the disk
        self.readers = ThreadPoolExecutor(8, thread_name_prefix="scopefs-view-read")
        self.volumes = VolumeViews(tree, volume_cache, self)
        self.picks = PicksViews(tree, self.volumes, self)
        self.learner = SizeLearner(tree, self, self.sizes.limit)
        self._reader: threading.Thread | None = None     # `read_ahead`'s

    def kept_size(self, key) -> KeptSize:
        """The kept size of a view whose bytes depend on what `key()` gives (None: not
        kept); asking for one that is not kept starts loading the view libraries."""
        return KeptSize(self.sizes, key, on_miss=self.libraries.start, prefix=(VIEWS_VERSION,))

    def read_ahead(self) -> None:
        """What every view's kept size needs, read at mount in a thread of its own (one,
        however many times asked; waited for at `close`), so that a first walk reads
        neither: the sizes kept, and the versions of the renderers' libraries (11
        packages' metadata: about 10 ms)."""
        if self._reader is None:
            self._reader = threading.Thread(target=self._read_ahead, name="read-view-sizes", daemon=True)
            self._reader.start()

    def _read_ahead(self) -> None:
        try:
            self.sizes.load()
            for libraries in (PICKS_LIBRARIES, MRC_LIBRARIES, *RENDERER_LIBRARIES.values()):
                versions(*libraries)
        except Exception as exc:              # a walk meets it again, and says why
            log.debug("reading what the views' kept sizes need: %s: %s", type(exc).__name__, exc)

    def count_made(self) -> None:
        """One view made (its bytes, or an MRC view's volume opened): a walk whose sizes
        are kept makes none."""
        with self._made_lock:
            self.made += 1

    def resized(self, node) -> None:
        self.tree.report(node.ino, waited=False)

    def source_identity(self, rel: str) -> tuple | None:
        shown = self.tree.shown(rel)
        return None if shown is None else identity(shown[1])

    def status(self) -> dict:
        return {**self.volumes.status(), "views_made": self.made,
                "view_cache": {"bytes": self.cache.used_bytes, "limit": self.cache.max_bytes}, "picks_size_batches": self.picks.size_batches,
                "picks_views_written_alone": self.picks.written_alone,
                "view_sizes": {**self.sizes.status(), "learned_at_mount": self.learner.learned,
                               "learner_paused": self.learner.paused,
                               "learning_done": self.learner.done}}

    def close(self) -> None:
        self.learner.stop()
        if self._reader is not None:
            self._reader.join(timeout=10)
        self.volumes.close()
        self.readers.shutdown(wait=False, cancel_futures=True)
        self.sizes.close()

    def lookup(self, rel: str, name: str):
        """(source, make, what the source shows, its `KeptTogether`) of one derived name,
        from the name alone (its source stat'ed once); None if there is no such view."""
        found = self.volumes.lookup(rel, name) or self.picks.lookup(rel, name)
        if found is not None:
            return found
        source = self._source_name(rel, name)
        shown = self.tree.shown(f"{rel}/{source}") if source else None
        for derived, path, make, _, kept in self._listing(rel, {source: shown[1]}) if shown else ():
            if derived == name:
                return path, make, shown[1], kept
        return None

    @staticmethod
    def _source_name(rel: str, name: str) -> str:
        folder, (stem, _, ext) = rel.rpartition("/")[2], name.rpartition(".")
        if folder == "Picks" and ext == "csv":
            return stem + ".json"
        if folder == "Meshes" and ext in MESH_FORMATS:
            return stem + ".glb"
        if folder.startswith("VoxelSpacing") and ext == "png":
            return stem + ".zarr"
        return ""

    def sources_of(self, rel: str, name: str) -> list[str]:
        """The paths a view named `rel/name` would be made of, there or not (none: no
        view takes that name)."""
        source = self._source_name(rel, name)
        if source:
            return [f"{rel}/{source}"]
        return self.volumes.sources_of(rel, name) or self.picks.sources_of(rel, name)

    def listing(self, rel: str, infos: dict):
        """(view name, source, make node, what the source shows or None: not stat'ed, the
        `KeptTogether` of its size or None) of the names of folder rel (`infos`: name ->
        what it shows, or None: not known)."""
        return self._listing(rel, infos) + [(*entry, None, None) for entry in self.volumes.listing(rel, infos)] \
            + self.picks.listing(rel, infos)

    def folders_showing(self, rel: str, names) -> dict[str, str]:
        """{folder: sibling} for the folders among the names of folder rel that show views
        of the sibling's files (`OverlayTree.listed_before`)."""
        return self.picks.folders_showing(rel, names)

    def views_following(self, rel: str) -> list[str]:
        """The views whose bytes depend on rel besides those made of it: a tomogram's
        store (its metadata) centres its run's STAR views (`PicksViews`)."""
        return self.picks.star_views_following(rel)

    def folders_following(self, rel: str) -> list[str]:
        """The folders whose listings show views of the files in folder rel besides rel
        itself: a run's VoxelSpacing folders show its Picks/ (`PicksViews`)."""
        return self.picks.folders_following(rel)

    def _listing(self, rel: str, infos: dict):
        """The views of this module (picks as CSV, meshes, volume previews) among the names
        of `infos` (name -> what it shows, or None), each (name, source, make, None, the
        `KeptTogether` of its size or None)."""
        folder = rel.rpartition("/")[2]
        out = []
        if folder in ("Picks", "Meshes"):
            convert = self.picks_csv if folder == "Picks" else self.mesh_as
            extension = SIZED_TOGETHER[convert.__name__][0]
            sources = {name: info for name, info in infos.items()
                       if name.endswith(extension) and not name.startswith(".")}
            views = {name: self._views_of(name, convert) for name in sources}
            # (what the sources show, not the folder's every name: each view holds it until asked)
            kept = KeptTogether(self.sizes, functools.partial(self._kept_keys, convert, sources, views)) \
                if any(info is not None for info in sources.values()) else None
            if convert == self.picks_csv:
                paths = [f"{rel}/{name}" for name in sources]
                sized = Once(lambda: self._sizes(paths, self.picks_csv))           # all at once
            for name, made in views.items():
                src = f"{rel}/{name}"
                size = (lambda src=src: sized().get(src)) if convert == self.picks_csv else None
                for view, args in made:
                    out.append((view, src, self._file(src, convert, *args, view=view, sized=size), None, kept))
        elif folder.startswith("VoxelSpacing"):
            for name in infos:
                if name.endswith(".zarr") and "features" not in name and not name.startswith(".") \
                        and self.volumes.levels(f"{rel}/{name}", infos[name]):   # (none of a store being copied in)
                    src = f"{rel}/{name}"
                    out.append((name[:-5] + ".png", src, self._file(src, self.preview), None, None))
        return out

    @staticmethod
    def _views_of(name: str, convert) -> tuple[tuple[str, tuple], ...]:
        """(view name, the renderer's args) of each view `convert` makes of source `name`."""
        extension, views = SIZED_TOGETHER[convert.__name__]
        stem = name[:-len(extension)]
        return tuple((f"{stem}.{suffix}", args) for suffix, args in views)

    def _kept_keys(self, convert, sources: dict[str, Attr | None],
                   views: dict[str, tuple] | None = None) -> dict[str, bytes | None]:
        """{view name: its kept size's key, None: not kept} of the views `convert` makes of
        `sources` (name -> what it shows; `views`: name -> its `_views_of`, where worked out
        already), the parts they share worked out once: those of a listing (`KeptTogether`),
        and of a view made alone (`_file`), alike."""
        head = [repr(VIEWS_VERSION), repr(convert.__name__)]
        libraries = repr(versions(*RENDERER_LIBRARIES[convert.__name__]))
        keys = {}
        for name, info in sources.items():
            found = identity(info)
            for view, args in views[name] if views is not None else self._views_of(name, convert):
                keys[view] = None if found is None else digest_of_reprs(head + [repr(args), libraries, repr(found)])
        return keys

    def _file(self, source: str, convert, *args, view: str = "", sized=None):
        """The node maker of the view `convert(source, *args)` named `view` (`make(info)`:
        `info` what the source shows, if the listing knows; else it is asked); `sized()`:
        its size if known without making it."""
        def make(info=None):
            shown = info or self.tree.top(source)[1]

            def kept_key():
                if convert != self.preview:
                    return self._kept_keys(convert, {source.rpartition("/")[2]: shown})[view]
                found = self.store_identity(source)
                return None if found is None else \
                    (convert.__name__, args, versions(*RENDERER_LIBRARIES[convert.__name__]), found)
            return GeneratedFile(functools.partial(self._made, source, convert, *args), shown.mtime_ns, self.cache,
                                 key=self._version(source, convert, args, shown),
                                 kept=self.kept_size(kept_key), on_resized=self.resized, sized=sized)
        return make

    def _version(self, source: str, convert, args: tuple, shown=None) -> tuple:
        """The cache key of a view: what it is made of, as the source is (`shown`, else asked)."""
        return (source, convert.__name__) + args + self.tree.source_key(source, shown)

    def _made(self, source: str, convert, *args) -> bytes:
        self.count_made()
        try:
            return convert(source, *args)
        except OSError:
            raise
        except Exception as exc:        # a bad source: EIO for this view, the listing goes on
            raise OSError(errno.EIO, f"{type(exc).__name__}: {exc}", source) from None

    def _content(self, source: str, convert, *args) -> bytes:
        """The bytes of a view, made once per version of its source (bounded cache)."""
        return self.cache.get_or_make(self._version(source, convert, args),
                                      functools.partial(self._made, source, convert, *args))

    def _sizes(self, sources: list[str], convert) -> dict[str, int]:
        """The sizes of the views `convert(source)` of a listing's sources, made side by
        side (each waits on the disk for its source, when cold) into the cache; a view
        that cannot be made has none (it says why when asked)."""
        def size(source: str) -> int | None:
            try:
                return len(self._content(source, convert))
            except OSError:
                return None
        return {source: n for source, n in zip(sources, self.readers.map(size, sources)) if n is not None}

    def store_identity(self, rel: str) -> tuple | None:
        """The identities of what a preview of store rel reads, from stat alone: its
        metadata and the files of its coarsest level (None where they are not local
        files, or are more than a few)."""
        root = self.tree.top(rel)[0]
        path = root.local_path(rel)
        if path is None:
            return None
        try:
            names = os.listdir(path)
            levels = [n for n in names if n.isdigit()]
            if not levels:
                return None
            coarsest = max(levels, key=int)
            files = [n for n in (".zgroup", ".zattrs", "zarr.json") if n in names]
            for folder, dirs, found in os.walk(os.path.join(path, coarsest)):
                dirs.sort()
                files += sorted(os.path.relpath(os.path.join(folder, f), path) for f in found)
                if len(files) > 64:
                    return None
            if not {f"{coarsest}/.zarray", f"{coarsest}/zarr.json"} & set(files):
                return None
            found = [identity(attr_of(os.stat(os.path.join(path, f), follow_symlinks=False))) for f in files]
        except OSError:
            return None
        return None if None in found else tuple(zip(files, found))

    def _bytes(self, rel: str) -> bytes:
        return read_file(self.tree, rel)

    def picks_csv(self, rel: str) -> bytes:
        try:
            doc = json.loads(self._bytes(rel))
        except ValueError:
            return b"error: not a JSON picks file\n"
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["x", "y", "z", "instance_id", "score"] + [f"m{r}{c}" for r in range(4) for c in range(4)])
        for point in doc.get("points") or []:
            loc = point.get("location") or {}
            matrix = point.get("transformation_") or [[float(r == c) for c in range(4)] for r in range(4)]
            writer.writerow([loc.get("x"), loc.get("y"), loc.get("z"), point.get("instance_id", 0),
                             point.get("score", 1.0)] + [v for row in matrix for v in row])
        return out.getvalue().encode()

    def mesh_as(self, rel: str, fmt: str) -> bytes:
        import trimesh
        mesh = trimesh.load(io.BytesIO(self._bytes(rel)), file_type="glb", force="mesh")
        data = mesh.export(file_type=fmt)
        return data if isinstance(data, bytes) else data.encode()

    def preview(self, rel: str) -> bytes:
        import zarr
        root, _ = self.tree.top(rel)
        with tempfile.TemporaryDirectory(prefix="scopefs-preview-") as tmp:
            path = root.local_path(rel) or self._fetch_coarsest(root, rel, tmp)
            group = zarr.open_group(zarr.storage.LocalStore(path, read_only=True), mode="r")
            levels = sorted(group.array_keys(), key=lambda k: int(k) if k.isdigit() else 0)
            return self._slices_png(group[levels[-1]])

    @staticmethod
    def _fetch_coarsest(root, rel: str, tmp: str) -> str:
        """A remote store's metadata and coarsest level, copied through the root's own reads
        (zarr's own fsspec store would drive s3fs from another event loop)."""
        def copy(sub: str) -> None:
            handle = root.open_read(f"{rel}/{sub}")
            try:
                os.makedirs(os.path.dirname(os.path.join(tmp, sub)) or tmp, exist_ok=True)
                with open(os.path.join(tmp, sub), "wb") as out:
                    offset = 0
                    while block := handle.read(offset, 8 << 20):
                        out.write(block)
                        offset += len(block)
            finally:
                handle.release()

        names = root.listdir(rel) or []
        for meta in (".zgroup", ".zattrs", "zarr.json"):
            if meta in names:
                copy(meta)
        levels = sorted((n for n in names if n.isdigit()), key=int)
        stack = [levels[-1]] if levels else []
        while stack:
            sub = stack.pop()
            info = root.stat(f"{rel}/{sub}")
            if info is not None and stat.S_ISDIR(info.mode):
                stack.extend(f"{sub}/{n}" for n in root.listdir(f"{rel}/{sub}") or [])
            else:
                copy(sub)
        return tmp

    @staticmethod
    def _slices_png(volume) -> bytes:
        import cv2
        import numpy as np
        z, y, x = (n // 2 for n in volume.shape[-3:])
        slices = [np.asarray(volume[z]), np.asarray(volume[:, y, :]), np.asarray(volume[:, :, x])]
        height = max(s.shape[0] for s in slices)
        tiles = []
        for plane in slices:
            plane = plane.astype(np.float64)
            lo, hi = np.percentile(plane, (1, 99)) if plane.size else (0, 1)
            scaled = np.clip((plane - lo) / ((hi - lo) or 1) * 255, 0, 255).astype(np.uint8)
            tiles.append(np.pad(scaled, ((0, height - scaled.shape[0]), (0, 4))))
        return cv2.imencode(".png", np.hstack(tiles))[1].tobytes()
