"""A ROMI FSDB as a tree: scans, filesets and files, each with its metadata beside it.

    <scan>/                               a scan (mkdir here: create_scan)
    <scan>.metadata.json                  its metadata, editable
    <scan>/<fileset>/                     a fileset (mkdir in a scan: create_fileset)
    <scan>/<fileset>.metadata.json
    <scan>/<fileset>/<id>.<ext>           a file: copy one in to register it, rm to remove it
    <scan>/<fileset>/<id>.<ext>.metadata.json
    <scan>/<fileset>/<x>.iid.view/        an .iid file browsed as entry folders (read-only)
    <scan>/<fileset>.view/                a fileset that is an imgstore, as frames (read-only)

The mount holds the database's lock for its whole life. Names starting with '.' in a
fileset are temporary files (rsync's, editors'): real files that are not registered,
until renamed to a visible name.

Every name is found through the model's indexes (scans, filesets, files by name), so a
lookup or stat costs the same in a fileset of ten files or a million. Attributes are
kept in the nodes (the mount is the database's only writer while it holds the lock),
so `stat` needs no thread; a folder lists itself once per readdir pass. Metadata views
show the stored metadata files (sizes from a stat); their bytes are read once and kept
in a bounded cache, keyed by the metadata's version. New files
are registered in files.json lazily (see `db.py`): at most a second later, at fsync, or
at unmount.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import stat
import threading
from collections import Counter

from ...formats import fsdb as layout
from ..cache import ByteCache
from ..nodes import (ROOT_INO, Attr, CachePolicy, Directory, File, FileHandle, LocalWriteHandle, Node,
                     TempFileHandle, Tree, View)
from ..options import MountError, Options
from .. import is_url, remote, storage
from .db import FSDB, DBBusyError, NotAnFSDBError

log = logging.getLogger(__name__)

META = ".metadata.json"
VIEW = ".view"
#: bytes of metadata views kept in memory
META_CACHE_BYTES = 16 << 20
#: what the metadata view of an object without a metadata file shows
NO_METADATA = layout.dump_json({})
DIR_MODE = stat.S_IFDIR | 0o755
FILE_MODE = stat.S_IFREG | 0o644


def open_tree(source: str, options: Options, read_only: bool = False, progress=None, base: int = ROOT_INO,
              mountpoint: str | None = None) -> "FSDBTree":
    break_lock = options.flag("break_lock")
    register_delay = options.float("register_delay", 1.0)
    remote_options = {k: options.str(k, "") for k in remote.S3_OPTIONS if k in options}
    if is_url(source):                  # read-only, through an fsspec root (cached listings)
        fs_args = remote.s3_args(source, Options(remote_options))
        read_only = True
    options.finish()
    files = None
    try:
        if is_url(source):
            from ..overlay.remote import FsspecRoot     # only object-store sources need it
            files = storage.RemoteFiles(FsspecRoot(source, fs_args), source)
        db = FSDB(source, files)
        if progress:
            progress(f"loading {source}")
        db.connect(break_lock=break_lock)
    except DBBusyError as exc:
        raise MountError(f"{exc} (-o break_lock takes it anyway)") from None
    except NotAnFSDBError as exc:
        missing = "it is not a directory" if exc.errno == errno.ENOTDIR else f"it has no {layout.MARKER!r} file"
        raise MountError(f"not an FSDB root ({missing}): an FSDB root is a directory holding "
                         f"an empty file named {layout.MARKER!r} and one folder per scan") from None
    except (OSError, ValueError) as exc:
        raise MountError(str(exc)) from None
    except Exception as exc:                        # an object store's own errors
        raise MountError(f"{type(exc).__name__}: {remote.redact(str(exc))}") from None
    tree = FSDBTree(db, read_only, base, register_delay)
    tree.remote_options = remote_options
    if files is not None:
        tree.notice = "mounted read-only: an FSDB in object storage has no lock that plantdb would honour"
    return tree


def _api_errors(fn):
    """The FSDB API raises IOError/ValueError for refused requests: give them errnos."""
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (DBBusyError, FileExistsError, FileNotFoundError):
            raise
        except ValueError as exc:
            raise OSError(errno.EINVAL, str(exc)) from None
        except OSError as exc:
            if exc.errno is None:
                text = str(exc)
                code = errno.EEXIST if "already exists" in text else errno.ENOENT if "no " in text else errno.EIO
                raise OSError(code, text) from None
            raise
    return wrapper


class MetaView(View):
    """An object's metadata file, byte for byte as stored (plantdb and scopefs write the
    same sorted, indented JSON), so its size and mtime are one stat away: a walk reads no
    metadata. A write replaces it whole (a JSON object, or EINVAL). The bytes read are
    kept in the tree's bounded cache, keyed by the metadata's version."""

    def __init__(self, tree: "FSDBTree", obj):
        super().__init__(self)
        self.tree = tree
        self.obj = obj
        self._stat: tuple[int, int, int] | None = None      # (metadata version, size, mtime_ns)

    @property
    def mtime_ns(self) -> int:
        return self._stat_of_version()[2]

    @mtime_ns.setter
    def mtime_ns(self, value: int) -> None:
        self._stat = None                   # rewritten: the file's own mtime is asked again

    def _stat_of_version(self) -> tuple[int, int, int]:
        known = self._stat
        version = self.obj.md_version
        if known is None or known[0] != version:
            try:
                st = self.tree.db.files.stat(self.obj._md_path)
                known = (version, st.size, st.mtime_ns)
            except FileNotFoundError:
                known = (version, len(NO_METADATA), 0)
            self._stat = known
        return known

    def content_tag(self):
        return (self.ino, self.obj.md_version)

    def content(self) -> bytes:
        return self.tree.meta_cache.get_or_make(self.content_tag(), self._read)

    def _read(self) -> bytes:
        self.tree.counts["metadata_files_read"] += 1
        try:
            return self.tree.db.files.read(self.obj._md_path)
        except FileNotFoundError:
            return NO_METADATA

    def cached_attr(self) -> Attr | None:
        if self.staged is not None:
            return Attr(FILE_MODE, len(self.staged), self.mtime_ns)
        known = self._stat
        return None if known is None or known[0] != self.obj.md_version else Attr(FILE_MODE, known[1], known[2])

    def attr(self) -> Attr:
        if self.staged is not None:
            return Attr(FILE_MODE, len(self.staged), self.mtime_ns)
        _, size, mtime_ns = self._stat_of_version()
        return Attr(FILE_MODE, size, mtime_ns)

    def open_nowait(self, flags: int) -> FileHandle | None:
        if (flags & os.O_ACCMODE) != os.O_RDONLY or flags & os.O_TRUNC or self.staged is not None:
            return None
        tag = self.content_tag()
        data = self.tree.meta_cache.get(tag)
        return None if data is None else self._reader(data, tag)

    def commit(self, data: bytes) -> None:
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise OSError(errno.EINVAL, f"{self.obj!r} metadata is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise OSError(errno.EINVAL, f"{self.obj!r} metadata must be a JSON object")
        self.obj.replace_metadata(doc)


def _mtime(files, path: str) -> int:
    try:
        return files.stat(path).mtime_ns
    except OSError:
        return 0


class DataFile(File):
    """A registered file's data: read from disk; written through a temporary copy that
    replaces it atomically and is registered in files.json when the writer closes."""

    def __init__(self, folder: "FilesetFolder", file, name: str):
        self.folder = folder
        self.tree = folder.tree
        self.file = file
        self.name = name
        self._attr: Attr | None = None         # learned from the disk, until a writer commits
        self._commits = 0                       # a stat that raced a commit is not kept

    def _path(self) -> str:
        return os.path.join(self.file.fileset.path(), self.name)

    def cached_attr(self) -> Attr | None:
        return self._attr

    def forget_attr(self) -> None:
        """The data changed on disk (call after the change)."""
        self._commits += 1
        self._attr = None

    def attr(self) -> Attr:
        commits = self._commits
        try:
            st = self.tree.db.files.stat(self._path())
        except FileNotFoundError:               # created, not yet closed
            return Attr(FILE_MODE, 0, 0)
        attr = Attr(FILE_MODE, st.size, st.mtime_ns)
        if commits == self._commits:
            self._attr = attr
        return attr

    def open(self, flags: int) -> FileHandle:
        if (flags & os.O_ACCMODE) == os.O_RDONLY:
            return self.tree.db.files.open_read(self._path())
        exists = os.path.exists(self._path())
        copy = self._path() if exists and not flags & os.O_TRUNC else None
        new = self.file.filename is None
        # a new file is registered at close even if nothing was written (touch); if lazily,
        # the registration's flush makes it durable (files.json names no file before that)
        return TempFileHandle(self._path(), copy, self._commit, dirty=new,
                              durable_later=new and self.tree.db.register_lazily)

    def _commit(self, finished: str) -> None:
        with self.tree.lock:
            try:
                _api_errors(self.file.adopt)(finished, layout.split_name(self.name)[1])
            finally:
                self.forget_attr()
            self.folder.committed(self)

    def truncate(self, size: int) -> None:
        handle = TempFileHandle(self._path(), self._path() if os.path.exists(self._path()) else None, self._commit)
        try:
            handle.truncate(size)
            handle.flush()
        finally:
            handle.release()


class Scratch(File):
    """A hidden temporary file in a fileset, not registered (yet)."""

    def __init__(self, path: str):
        self.path = path

    def attr(self) -> Attr:
        st = os.stat(self.path)
        return Attr(stat.S_IFREG | (st.st_mode & 0o777), st.st_size, st.st_mtime_ns)

    def open(self, flags: int) -> FileHandle:
        return LocalWriteHandle(self.path, flags)

    def truncate(self, size: int) -> None:
        os.truncate(self.path, size)


#: what Folder.find answers when only I/O can tell (hidden files, grafted views)
NEEDS_IO = object()


class Folder(Directory):
    """What the database's folders share: names found in the model's indexes (no listing,
    no I/O where the model knows), a listing made once per readdir pass, attributes kept
    until the tree changes."""

    def __init__(self, tree: "FSDBTree"):
        self.tree = tree
        self._pass: tuple[int, list[tuple[str, Node]]] | None = None     # (generation, listing)
        self._attr: tuple[int, Attr] | None = None

    def path(self) -> str:
        raise NotImplementedError

    def find(self, name: str):
        """The child called `name` from memory, None, or NEEDS_IO (call with the tree's lock)."""
        raise NotImplementedError

    def find_slow(self, name: str) -> Node | None:
        """The children only I/O can find (call with the tree's lock)."""
        return None

    def listing(self) -> list[tuple[str, Node]]:
        raise NotImplementedError

    def lookup(self, name: str) -> Node | None:
        with self.tree.lock:
            found = self.find(name)
            return self.find_slow(name) if found is NEEDS_IO else found

    def lookup_attr_nowait(self, name: str) -> tuple[Node, Attr] | None:
        if not self.tree.lock.acquire(blocking=False):      # a writer holds it: never wait here
            return None
        try:
            node = self.find(name)
        finally:
            self.tree.lock.release()
        attr = None if node is None or node is NEEDS_IO else node.cached_attr()
        return None if attr is None else (node, attr)

    def cached_attr(self) -> Attr | None:
        known = self._attr
        return known[1] if known is not None and known[0] == self.tree.generation else None

    def attr(self) -> Attr:
        generation = self.tree.generation
        attr = Attr(DIR_MODE, 0, _mtime(self.tree.db.files, self.path()), 2)
        self._attr = (generation, attr)
        return attr

    def entries(self, offset: int):
        generation = self.tree.generation
        known = self._pass
        if offset == 0 or known is None or known[0] != generation:
            with self.tree.lock:
                known = self._pass = (generation, self.listing())
            self.tree.counts["listings"] += 1
        listing = known[1]
        for pos in range(offset, len(listing)):
            name, node = listing[pos]
            yield pos + 1, name, node, node.cached_attr()


class RootFolder(Folder):
    def path(self) -> str:
        return self.tree.db.basedir

    def find(self, name: str):
        tree = self.tree
        scan = tree.db.scans.get(name)
        if scan is not None:
            return tree.node(("scan", scan.id), lambda: ScanFolder(tree, scan))
        if name.endswith(META) and name not in tree.hidden:
            scan = tree.db.scans.get(name[:-len(META)])
            if scan is not None:
                return tree.node(("meta", scan.id), lambda: MetaView(tree, scan))
        return None

    def listing(self) -> list[tuple[str, Node]]:
        out = []
        for scan in self.tree.db.get_scans():
            out.append((scan.id, self.find(scan.id)))
            if scan.id + META not in self.tree.hidden:
                out.append((scan.id + META, self.find(scan.id + META)))
        return out

    def mkdir(self, name: str, mode: int) -> Directory:
        with self.tree.lock:
            _api_errors(self.tree.db.create_scan)(name)
            self.tree.hidden.discard(name + META)
            self.tree.changed()
            return self.find(name)

    def rmdir(self, name: str) -> None:
        with self.tree.lock:
            scan = self.tree.db.get_scan(name)
            if scan is None:
                raise FileNotFoundError(errno.ENOENT, "no such scan", name)
            if scan.get_filesets():
                raise OSError(errno.ENOTEMPTY, "scan has filesets", name)
            _api_errors(self.tree.db.delete_scan)(name)
            self.tree.forget_nodes(("scan", name), ("meta", name))
            self.tree.changed()

    def unlink(self, name: str) -> None:
        _hide_view(self.tree, self, name)

    def create(self, name: str, mode: int) -> File:
        return _rewrite_view(self, name)


class ScanFolder(Folder):
    def __init__(self, tree: "FSDBTree", scan):
        super().__init__(tree)
        self.scan = scan

    def path(self) -> str:
        return self.scan.path()

    def find(self, name: str):
        tree, scan = self.tree, self.scan
        fs = scan.filesets.get(name)
        if fs is not None:
            return tree.node(("fileset", scan.id, fs.id), lambda: FilesetFolder(tree, fs))
        if name.endswith(META) and f"{scan.id}/{name}" not in tree.hidden:
            fs = scan.filesets.get(name[:-len(META)])
            if fs is not None:
                return tree.node(("meta", scan.id, fs.id), lambda: MetaView(tree, fs))
        if name.endswith(VIEW) and _is_imgstore(scan.filesets.get(name[:-len(VIEW)])):
            return NEEDS_IO
        return None

    def find_slow(self, name: str) -> Node | None:
        return self.tree.imgstore_view(self.scan.filesets[name[:-len(VIEW)]])

    def listing(self) -> list[tuple[str, Node]]:
        tree, scan = self.tree, self.scan
        out = []
        for fs in scan.get_filesets():
            out.append((fs.id, self.find(fs.id)))
            if f"{scan.id}/{fs.id}{META}" not in tree.hidden:
                out.append((fs.id + META, self.find(fs.id + META)))
            if _is_imgstore(fs):
                view = tree.imgstore_view(fs)
                if view is not None:
                    out.append((fs.id + VIEW, view))
        return out

    def mkdir(self, name: str, mode: int) -> Directory:
        with self.tree.lock:
            _api_errors(self.scan.create_fileset)(name)
            self.tree.hidden.discard(f"{self.scan.id}/{name}{META}")
            self.tree.changed()
            return self.find(name)

    def rmdir(self, name: str) -> None:
        with self.tree.lock:
            fs = self.scan.get_fileset(name)
            if fs is None:
                raise FileNotFoundError(errno.ENOENT, "no such fileset", name)
            if fs.files:
                raise OSError(errno.ENOTEMPTY, "fileset has files", name)
            _api_errors(self.scan.delete_fileset)(name)
            self.tree.forget_nodes(("fileset", self.scan.id, name), ("meta", self.scan.id, name))
            self.tree.changed()

    def unlink(self, name: str) -> None:
        _hide_view(self.tree, self, name, f"{self.scan.id}/")

    def create(self, name: str, mode: int) -> File:
        return _rewrite_view(self, name, f"{self.scan.id}/")


def _is_imgstore(fileset) -> bool:
    return fileset is not None and fileset.file_named("metadata.yaml") is not None


class FilesetFolder(Folder):
    def __init__(self, tree: "FSDBTree", fileset):
        super().__init__(tree)
        self.fileset = fileset
        self.prefix = f"{fileset.scan.id}/{fileset.id}/"      # of its names in tree.hidden
        self.pending: dict[str, object] = {}       # created files not yet closed, by name

    def path(self) -> str:
        return self.fileset.path()

    def _key(self, *rest) -> tuple:
        return (self.fileset.scan.id, self.fileset.id) + rest

    def _data(self, file, name: str | None = None) -> DataFile:
        return self.tree.node(("data",) + self._key(file.id),
                              lambda: DataFile(self, file, name or file.filename or file.id))

    def _meta(self, file) -> MetaView:
        return self.tree.node(("meta",) + self._key(file.id), lambda: MetaView(self.tree, file))

    def _scratch(self, name: str) -> "Scratch":
        return self.tree.node(("scratch",) + self._key(name), lambda: Scratch(os.path.join(self.path(), name)))

    def _file_by_name(self, name: str):
        """The file shown as `name`: registered, or created and not yet closed."""
        file = self.fileset.file_named(name)
        if file is None:
            file = self.pending.get(name)
            if file is not None and self.fileset.files.get(file.id) is not file:
                file = None
        return file

    def find(self, name: str):
        if name.startswith("."):
            return NEEDS_IO
        file = self._file_by_name(name)
        if file is not None:
            return self._data(file, name)
        if name.endswith(META) and self.prefix + name not in self.tree.hidden:
            file = self.fileset.file_named(name[:-len(META)])
            if file is not None:
                return self._meta(file)
        if name.endswith(".iid" + VIEW) and self.fileset.file_named(name[:-len(VIEW)]) is not None:
            return NEEDS_IO
        return None

    def find_slow(self, name: str) -> Node | None:
        if name.startswith("."):
            local = not self.tree.db.files.remote        # (scratch files are written locally)
            return self._scratch(name) if local and os.path.lexists(os.path.join(self.path(), name)) else None
        return self.tree.iid_view(self.fileset.file_named(name[:-len(VIEW)]))

    def listing(self) -> list[tuple[str, Node]]:
        tree = self.tree
        pending = {id(file): name for name, file in self.pending.items()}
        out = []
        for file in self.fileset.get_files():
            data = self._data(file, pending.get(id(file)))
            out.append((data.name, data))
            if file.filename:
                if self.prefix + data.name + META not in tree.hidden:
                    out.append((data.name + META, self._meta(file)))
                if data.name.endswith(".iid"):
                    view = tree.iid_view(file)
                    if view is not None:
                        out.append((data.name + VIEW, view))
        try:
            local = not self.tree.db.files.remote               # (scratch files are written locally)
            hidden = sorted(n for n in os.listdir(self.path()) if n.startswith(".")) if local else []
        except FileNotFoundError:
            hidden = []
        out.extend((name, self._scratch(name)) for name in hidden)
        return out

    def committed(self, data: DataFile) -> None:
        """A created file was closed: it is registered now (call with the tree's lock)."""
        if self.pending.get(data.name) is data.file:
            del self.pending[data.name]
        self.tree.changed()

    def create(self, name: str, mode: int) -> File:
        with self.tree.lock:
            if name.endswith(META) and self._file_by_name(name[:-len(META)]):
                return _rewrite_view(self, name, self.prefix)
            self.tree.changed()
            if name.startswith("."):
                os.close(os.open(os.path.join(self.path(), name), os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, mode & 0o777))
                return self._scratch(name)
            file_id, _ = layout.split_name(name)
            file = _api_errors(self.fileset.create_file)(file_id)
            self.pending[name] = file
            return self._data(file, name)

    def unlink(self, name: str) -> None:
        with self.tree.lock:
            if name.startswith("."):
                os.unlink(os.path.join(self.path(), name))
                self.tree.forget_nodes(("scratch",) + self._key(name))
                self.tree.changed()
                return
            file = self._file_by_name(name)
            if file is not None:
                _api_errors(self.fileset.delete_file)(file.id)
                self.tree.forget_nodes(("data",) + self._key(file.id), ("meta",) + self._key(file.id))
                self.tree.hidden.discard(self.prefix + name + META)
                self.pending.pop(name, None)
                self.tree.changed()
                return
            _hide_view(self.tree, self, name, self.prefix)

    def rename(self, name: str, new_parent: Directory, new_name: str) -> None:
        if new_parent is not self:
            raise OSError(errno.EXDEV, "files move only within their fileset")
        with self.tree.lock:
            self.tree.changed()
            fs = self.fileset
            new_id, ext = layout.split_name(new_name)
            if name.startswith(".") and not new_name.startswith("."):
                # rsync and editors: a finished temporary file becomes a registered file
                existing = self._file_by_name(new_name)
                file = existing or _api_errors(fs.create_file)(new_id)
                _api_errors(file.adopt)(os.path.join(fs.path(), name), ext)
                scratch = self.tree.nodes.pop(("scratch",) + self._key(name), None)
                data = self._data(file)
                data.forget_attr()
                if scratch is not None:
                    self.tree.alias(scratch.ino, data)
                return
            if name.startswith(".") and new_name.startswith("."):
                os.rename(os.path.join(fs.path(), name), os.path.join(fs.path(), new_name))
                self.tree.forget_nodes(("scratch",) + self._key(name))
                return
            file = self._file_by_name(name)
            if file is None or new_name.endswith(META) or new_name.startswith("."):
                raise OSError(errno.EPERM, "only files (not metadata) move, to visible names")
            moved = _api_errors(fs.rename_file)(file.id, new_id, ext)
            self.pending.pop(name, None)
            old = self.tree.nodes.pop(("data",) + self._key(file.id), None)
            self.tree.forget_nodes(("meta",) + self._key(file.id))
            if old is not None:                  # the kernel knows the new name by the old inode
                self.tree.alias(old.ino, self._data(moved))


def _hide_view(tree: "FSDBTree", folder: Directory, name: str, prefix: str = "") -> None:
    """`rm` of a metadata file: gone from the listing (so `rm -r` works), data unchanged.
    It succeeds even when the file it describes was removed first (it went with it)."""
    if not name.endswith(META):
        raise FileNotFoundError(errno.ENOENT, "no such file", name)
    with tree.lock:
        tree.hidden.add(prefix + name)
        tree.changed()


def _rewrite_view(folder: Directory, name: str, prefix: str = "") -> File:
    """create() of an existing metadata file: it is written anew (committed at close)."""
    tree = folder.tree
    with tree.lock:
        tree.hidden.discard(prefix + name)
        tree.changed()
        node = folder.lookup(name)
        if not isinstance(node, MetaView):
            raise OSError(errno.EPERM, "only scans and filesets (mkdir) and files go here", name)
        node.staged = b""
        return node


class FSDBTree(Tree):
    def __init__(self, db: FSDB, read_only: bool, base: int = ROOT_INO, register_delay: float = 1.0):
        super().__init__(base)
        self.db = db
        self.writable = not read_only
        self.cache_policy = (CachePolicy() if read_only else
                             CachePolicy(entry_timeout=1.0, attr_timeout=1.0, negative_timeout=0.0, keep_cache=False))
        self.lock = threading.RLock()
        self.nodes: dict[tuple, Node] = {}
        self.hidden: set[str] = set()
        self.generation = 0                     # of the namespace: listings and folder attributes follow it
        self.meta_cache = ByteCache(META_CACHE_BYTES)
        self.counts: Counter[str] = Counter()   # work done: listings, metadata_files_read
        self._views: dict[tuple, Directory] = {}
        self.remote_options: dict[str, str] = {}    # for the views of files in an object store
        db.register_lazily = not read_only and register_delay > 0
        db.register_delay = register_delay
        self.add(RootFolder(self))

    def changed(self) -> None:
        """Something in the namespace changed (call with the lock held)."""
        self.generation += 1

    def node(self, key: tuple, make) -> Node:
        with self.lock:
            found = self.nodes.get(key)
            if found is None:
                found = self.nodes[key] = self.add(make())
            return found

    def forget_nodes(self, *keys: tuple) -> None:
        with self.lock:
            for key in keys:
                node = self.nodes.pop(key, None)
                if node is not None:
                    self.discard(node.ino)

    def _view(self, kind: str, path: str, make) -> Directory | None:
        """A read-only tree of a file inside the database, made on first look, made again
        when the file changed."""
        key = (kind, path, _mtime(self.db.files, path))
        with self.lock:
            view = self._views.get(key)
            if view is None:
                try:
                    view = self._views[key] = self.graft(make).root
                except (MountError, OSError) as exc:
                    log.warning("%s cannot be shown as %s: %s", path, kind, exc)
                    return None
            return view

    def iid_view(self, file) -> Directory | None:
        if file is None:
            return None
        from .. import iid
        return self._view("iid", file.path(),
                          lambda base: iid.open_tree(file.path(), Options(self.remote_options), True, base=base))

    def imgstore_view(self, fileset) -> Directory | None:
        from .. import imgstore
        return self._view("imgstore", fileset.path(),
                          lambda base: imgstore.open_tree(fileset.path(), Options(self.remote_options), True,
                                                          base=base))

    def sync(self) -> None:
        with self.lock:                 # writers take plantdb's locks, then files.json's: same order
            self.db.flush()

    def sync_due(self) -> bool:
        return self.db.flush_due()

    def status(self) -> dict:
        return {"scans": len(self.db.scans), "lock": None if self.db.files.remote else self.db._lock.path,
                **(self.db.files.status() if self.db.files.remote else {}),
                "work": dict(self.counts + self.db.counts)}

    def close(self) -> None:
        super().close()
        self.db.disconnect()
