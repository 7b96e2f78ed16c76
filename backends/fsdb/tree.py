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
"""
from __future__ import annotations

import errno
import json
import logging
import os
import stat
import threading

from ...formats import fsdb as layout
from ..nodes import (ROOT_INO, Attr, CachePolicy, Directory, File, FileHandle, ListedDirectory, LocalWriteHandle, Node,
                     OSFileHandle, TempFileHandle, Tree, View)
from ..options import MountError, Options
from .db import FSDB, DBBusyError, NotAnFSDBError

log = logging.getLogger(__name__)

META = ".metadata.json"
VIEW = ".view"


def detect(source: str) -> bool:
    return layout.is_db(source)


def open(source: str, options: Options, read_only: bool = False, progress=None, base: int = ROOT_INO) -> "FSDBTree":
    break_lock = options.flag("break_lock")
    options.finish()
    try:
        db = FSDB(source)
        if progress:
            progress(f"loading {source}")
        db.connect(break_lock=break_lock)
    except DBBusyError as exc:
        raise MountError(f"{exc} (-o break_lock takes it anyway)") from None
    except (NotAnFSDBError, OSError, ValueError) as exc:
        raise MountError(str(exc)) from None
    return FSDBTree(db, read_only, base)


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
    """An object's metadata as JSON; a write replaces it whole (a JSON object, or EINVAL)."""

    def __init__(self, obj):
        super().__init__(self)
        self.obj = obj
        self.mtime_ns = _mtime(obj._md_path)

    def content(self) -> bytes:
        return layout.dump_json(self.obj.get_metadata()) + b"\n"

    def commit(self, data: bytes) -> None:
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise OSError(errno.EINVAL, f"{self.obj!r} metadata is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise OSError(errno.EINVAL, f"{self.obj!r} metadata must be a JSON object")
        self.obj.replace_metadata(doc)


def _mtime(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0


class DataFile(File):
    """A registered file's data: read from disk; written through a temporary copy that
    replaces it atomically and is registered in files.json when the writer closes."""

    def __init__(self, tree: "FSDBTree", file, name: str):
        self.tree = tree
        self.file = file
        self.name = name

    def _path(self) -> str:
        return os.path.join(self.file.fileset.path(), self.name)

    def attr(self) -> Attr:
        try:
            st = os.stat(self._path())
            return Attr(stat.S_IFREG | 0o644, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:               # created, not yet closed
            return Attr(stat.S_IFREG | 0o644, 0, 0)

    def open(self, flags: int) -> FileHandle:
        exists = os.path.exists(self._path())
        if (flags & os.O_ACCMODE) == os.O_RDONLY:
            return OSFileHandle(self._path())
        copy = self._path() if exists and not flags & os.O_TRUNC else None
        # a new file is registered at close even if nothing was written (touch)
        return TempFileHandle(self._path(), copy, self._commit, dirty=self.file.filename is None)

    def _commit(self, finished: str) -> None:
        with self.tree.lock:
            _api_errors(self.file.adopt)(finished, layout.split_name(self.name)[1])

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


class RootFolder(ListedDirectory):
    def __init__(self, tree: "FSDBTree"):
        self.tree = tree

    def attr(self) -> Attr:
        return Attr(stat.S_IFDIR | 0o755, 0, _mtime(self.tree.db.basedir), 2)

    def listing(self) -> list[tuple[str, Node]]:
        with self.tree.lock:
            out = []
            for scan in self.tree.db.get_scans():
                out.append((scan.id, self.tree.node(("scan", scan.id), lambda s=scan: ScanFolder(self.tree, s))))
                if scan.id + META not in self.tree.hidden:
                    out.append((scan.id + META, self.tree.node(("meta", scan.id), lambda s=scan: MetaView(s))))
            return out

    def lookup(self, name: str):
        return dict(self.listing()).get(name)

    def mkdir(self, name: str, mode: int) -> Directory:
        with self.tree.lock:
            scan = _api_errors(self.tree.db.create_scan)(name)
            self.tree.hidden.discard(name + META)
            return self.tree.node(("scan", scan.id), lambda: ScanFolder(self.tree, scan))

    def rmdir(self, name: str) -> None:
        with self.tree.lock:
            scan = self.tree.db.get_scan(name)
            if scan is None:
                raise FileNotFoundError(errno.ENOENT, "no such scan", name)
            if scan.get_filesets():
                raise OSError(errno.ENOTEMPTY, "scan has filesets", name)
            _api_errors(self.tree.db.delete_scan)(name)
            self.tree.forget_nodes(("scan", name), ("meta", name))

    def unlink(self, name: str) -> None:
        _hide_view(self.tree, self, name)

    def create(self, name: str, mode: int) -> File:
        return _rewrite_view(self, name)


class ScanFolder(ListedDirectory):
    def __init__(self, tree: "FSDBTree", scan):
        self.tree = tree
        self.scan = scan

    def attr(self) -> Attr:
        return Attr(stat.S_IFDIR | 0o755, 0, _mtime(self.scan.path()), 2)

    def listing(self) -> list[tuple[str, Node]]:
        tree, scan = self.tree, self.scan
        with tree.lock:
            out = []
            for fs in scan.get_filesets():
                key = (scan.id, fs.id)
                out.append((fs.id, tree.node(("fileset",) + key, lambda f=fs: FilesetFolder(tree, f))))
                if f"{scan.id}/{fs.id}{META}" not in tree.hidden:
                    out.append((fs.id + META, tree.node(("meta",) + key, lambda f=fs: MetaView(f))))
                if any(f.filename == "metadata.yaml" for f in fs.get_files()):
                    view = tree.imgstore_view(fs)
                    if view is not None:
                        out.append((fs.id + VIEW, view))
            return out

    def lookup(self, name: str):
        return dict(self.listing()).get(name)

    def mkdir(self, name: str, mode: int) -> Directory:
        with self.tree.lock:
            fs = _api_errors(self.scan.create_fileset)(name)
            self.tree.hidden.discard(f"{self.scan.id}/{name}{META}")
            return self.tree.node(("fileset", self.scan.id, fs.id), lambda: FilesetFolder(self.tree, fs))

    def rmdir(self, name: str) -> None:
        with self.tree.lock:
            fs = self.scan.get_fileset(name)
            if fs is None:
                raise FileNotFoundError(errno.ENOENT, "no such fileset", name)
            if fs.get_files():
                raise OSError(errno.ENOTEMPTY, "fileset has files", name)
            _api_errors(self.scan.delete_fileset)(name)
            self.tree.forget_nodes(("fileset", self.scan.id, name), ("meta", self.scan.id, name))

    def unlink(self, name: str) -> None:
        _hide_view(self.tree, self, name, f"{self.scan.id}/")

    def create(self, name: str, mode: int) -> File:
        return _rewrite_view(self, name, f"{self.scan.id}/")


class FilesetFolder(ListedDirectory):
    def __init__(self, tree: "FSDBTree", fileset):
        self.tree = tree
        self.fileset = fileset

    def attr(self) -> Attr:
        return Attr(stat.S_IFDIR | 0o755, 0, _mtime(self.fileset.path()), 2)

    def _key(self, *rest) -> tuple:
        return (self.fileset.scan.id, self.fileset.id) + rest

    def _data(self, file) -> DataFile:
        name = file.filename or self.tree.pending_names.get(id(file), file.id)
        return self.tree.node(("data",) + self._key(file.id), lambda: DataFile(self.tree, file, name))

    def listing(self) -> list[tuple[str, Node]]:
        tree, fs = self.tree, self.fileset
        prefix = f"{fs.scan.id}/{fs.id}/"
        with tree.lock:
            out = []
            for file in fs.get_files():
                data = self._data(file)
                out.append((data.name, data))
                if prefix + data.name + META not in tree.hidden and file.filename:
                    out.append((data.name + META, tree.node(("meta",) + self._key(file.id),
                                                             lambda f=file: MetaView(f))))
                if data.name.endswith(".iid") and file.filename:
                    view = tree.iid_view(file)
                    if view is not None:
                        out.append((data.name + VIEW, view))
            try:
                hidden = sorted(n for n in os.listdir(fs.path()) if n.startswith("."))
            except FileNotFoundError:
                hidden = []
            for name in hidden:
                out.append((name, tree.node(("scratch",) + self._key(name),
                                            lambda n=name: Scratch(os.path.join(fs.path(), n)))))
            return out

    def lookup(self, name: str):
        return dict(self.listing()).get(name)

    def _file_by_name(self, name: str):
        for file in self.fileset.get_files():
            if (file.filename or self.tree.pending_names.get(id(file))) == name:
                return file
        return None

    def create(self, name: str, mode: int) -> File:
        with self.tree.lock:
            prefix = f"{self.fileset.scan.id}/{self.fileset.id}/"
            if name.endswith(META) and self._file_by_name(name[:-len(META)]):
                return _rewrite_view(self, name, prefix)
            if name.startswith("."):
                path = os.path.join(self.fileset.path(), name)
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, mode & 0o777))
                return self.tree.node(("scratch",) + self._key(name), lambda: Scratch(path))
            file_id, _ = layout.split_name(name)
            file = _api_errors(self.fileset.create_file)(file_id)
            self.tree.pending_names[id(file)] = name
            return self._data(file)

    def unlink(self, name: str) -> None:
        with self.tree.lock:
            prefix = f"{self.fileset.scan.id}/{self.fileset.id}/"
            if name.startswith("."):
                os.unlink(os.path.join(self.fileset.path(), name))
                self.tree.forget_nodes(("scratch",) + self._key(name))
                return
            file = self._file_by_name(name)
            if file is not None:
                _api_errors(self.fileset.delete_file)(file.id)
                self.tree.forget_nodes(("data",) + self._key(file.id), ("meta",) + self._key(file.id))
                self.tree.hidden.discard(prefix + name + META)
                return
            _hide_view(self.tree, self, name, prefix)

    def rename(self, name: str, new_parent: Directory, new_name: str) -> None:
        if new_parent is not self:
            raise OSError(errno.EXDEV, "files move only within their fileset")
        with self.tree.lock:
            fs = self.fileset
            new_id, ext = layout.split_name(new_name)
            if name.startswith(".") and not new_name.startswith("."):
                # rsync and editors: a finished temporary file becomes a registered file
                existing = self._file_by_name(new_name)
                file = existing or _api_errors(fs.create_file)(new_id)
                _api_errors(file.adopt)(os.path.join(fs.path(), name), ext)
                scratch = self.tree.nodes.pop(("scratch",) + self._key(name), None)
                if scratch is not None:
                    self.tree.alias(scratch.ino, self._data(file))
                return
            if name.startswith(".") and new_name.startswith("."):
                os.rename(os.path.join(fs.path(), name), os.path.join(fs.path(), new_name))
                self.tree.forget_nodes(("scratch",) + self._key(name))
                return
            file = self._file_by_name(name)
            if file is None or new_name.endswith(META) or new_name.startswith("."):
                raise OSError(errno.EPERM, "only files (not metadata) move, to visible names")
            moved = _api_errors(fs.rename_file)(file.id, new_id, ext)
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


def _rewrite_view(folder: Directory, name: str, prefix: str = "") -> File:
    """create() of an existing metadata file: it is written anew (committed at close)."""
    tree = folder.tree
    with tree.lock:
        tree.hidden.discard(prefix + name)
        node = folder.lookup(name)
        if not isinstance(node, MetaView):
            raise OSError(errno.EPERM, "only scans and filesets (mkdir) and files go here", name)
        node.staged = b""
        return node


class FSDBTree(Tree):
    def __init__(self, db: FSDB, read_only: bool, base: int = ROOT_INO):
        super().__init__(base)
        self.db = db
        self.writable = not read_only
        self.cache_policy = (CachePolicy() if read_only else
                             CachePolicy(entry_timeout=1.0, attr_timeout=0.0, negative_timeout=0.0, keep_cache=False))
        self.lock = threading.RLock()
        self.nodes: dict[tuple, Node] = {}
        self.hidden: set[str] = set()
        self.pending_names: dict[int, str] = {}
        self._views: dict[tuple, Directory] = {}
        self.add(RootFolder(self))

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
        key = (kind, path, _mtime(path))
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
        from .. import iid
        return self._view("iid", file.path(), lambda base: iid.open(file.path(), Options(), True, base=base))

    def imgstore_view(self, fileset) -> Directory | None:
        from .. import imgstore
        return self._view("imgstore", fileset.path(),
                          lambda base: imgstore.open(fileset.path(), Options(), True, base=base))

    def status(self) -> dict:
        return {"scans": len(self.db.scans), "lock": self.db._lock.path}

    def close(self) -> None:
        super().close()
        self.db.disconnect()
