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
so `stat` needs no thread; a folder lists itself once per readdir pass, from memory (on
the daemon's loop) once what its listing needs is learned, which a thread does ahead of
a walk (`ahead.py`): its folders' attributes, and its files' only once a walk stats files
(`FSDBTree.stat_walk`; a lean listing gives them without). Metadata views
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
import time
from collections import Counter
from itertools import islice

from ...formats import fsdb as layout
from ...formats.files import open_regular, read_to_end
from ..cache import ByteCache
from ..blocks import BytesHandle, ListingSnapshot
from ..cached_view import CachedView
from ..kernel import LOCAL_FILESYSTEMS, filesystem_type, open_cached
from ..localfiles import TEMP_SUFFIX, LocalWriteHandle, OSFileHandle, TempFileHandle
from ..nodes import GRAFT_SHIFT, ROOT_INO, Attr, CachePolicy, Directory, File, FileHandle, Node, Tree
from ..nowait import lookup_attr_nowait, under_lock_nowait
from ..options import MountError, Options, lists_ahead
from .. import is_url, remote, storage
from . import db as model
from .ahead import Learner
from .db import FSDB, DBBusyError, NotAnFSDBError

log = logging.getLogger(__name__)

META = ".metadata.json"
VIEW = ".view"
#: bytes of metadata views kept in memory
META_CACHE_BYTES = 16 << 20
#: metadata views read with the one a reader opens: the next ones in listing order (of a
#: local database), so that a walk reading them all makes one worker call per this many
META_READ_AHEAD = 64
#: a metadata file bigger than this is not read ahead (its stat is learned; its reader's
#: open reads it): what one lookup reads ahead stays within the views' cache
META_AHEAD_BYTES = META_CACHE_BYTES // META_READ_AHEAD
#: readers by name in one folder each keeping their read-ahead (`Folder.views_after`)
READ_AHEAD_PLACES = 4
#: entries whose attributes are learned ahead of a walk (`ahead.Learner`, local databases)
LEARN_AHEAD = 4096
#: listings that learn their files' attributes (and ahead of them) after a file was
#: stat'ed whose attributes were not in memory (`FSDBTree.stat_walk`); twice as many
#: after each such stat that ends a period, up to MAX_STAT_WALK_LISTINGS
STAT_WALK_LISTINGS = 64
MAX_STAT_WALK_LISTINGS = 4096
#: what of a folder's listing is in memory (`Folder.learned`)
UNLEARNED, LEARNED_NAMES, LEARNED_FILES = 0, 1, 2
#: files whose nodes the learner makes under one hold of the tree's lock
ROWS_PER_LOCK = 32
#: files of a fileset whose names `FilesetFolder.entry_count_nowait` looks through (on the
#: daemon's loop); in a bigger fileset each counts as an .iid (an over-count)
NAMES_COUNTED = 64
#: a new file written up to this size is kept in memory until its close commits it; all
#: such files together up to NEW_FILES_BYTES (beyond, they go to a temporary file at once)
NEW_FILE_BYTES = 1 << 20
NEW_FILES_BYTES = 64 << 20
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
    """The FSDB API raises FileExistsError, FileNotFoundError (romidata-style, without an
    errno) and ValueError for refused requests: give them the errnos their types mean."""
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ValueError as exc:
            raise OSError(errno.EINVAL, str(exc)) from None
        except OSError as exc:
            if exc.errno is None:
                raise OSError(_ERRNO_OF.get(type(exc), errno.EIO), str(exc)) from None
            raise
    return wrapper


_ERRNO_OF = {FileExistsError: errno.EEXIST, FileNotFoundError: errno.ENOENT}


class MetaView(CachedView):
    """An object's metadata file, byte for byte as stored (plantdb and scopefs write the
    same sorted, indented JSON), so its size and mtime are one stat away: a walk reads no
    metadata. A write replaces it whole (a JSON object, or EINVAL). The bytes read are
    kept in the tree's bounded cache, keyed by the metadata's version."""

    def __init__(self, tree: "FSDBTree", obj):
        super().__init__(self, tree.meta_cache)
        self.tree = tree
        self.obj = obj
        self._stat: tuple[int, int, int, Attr] | None = None    # (metadata version, size, mtime_ns, attr)
        self._stat_changes = 0                  # a stat read before a change (utimens) is not kept
        self.next_view: MetaView | None = None  # the next in its folder's last listing

    @property
    def mtime_ns(self) -> int:
        return self._stat_of_version()[2]

    @mtime_ns.setter
    def mtime_ns(self, value: int) -> None:
        with self.tree.stat_lock:
            self._stat_changes += 1
            self._stat = None               # rewritten: the file's own mtime is asked again

    def _stat_of_version(self) -> tuple[int, int, int, Attr]:
        """Its size and mtime: learned with its folder's files where a walker that stats
        may be at it (a folder listed); in a folder never listed, where a reader opens it
        by name (`cat`, `json.load`) next, read (over META_AHEAD_BYTES: its fstat only)
        with at most META_READ_AHEAD views after it, which gives them too, so that its open
        and theirs, and their lookups, need no worker call (the folder stays unlisted: a
        lone stat of a file costs a stat)."""
        known = self._stat
        version = self.obj.md_version
        if (known is None or known[0] != version) and (folder := self._folder()) is not None:
            if folder.listed:
                folder.file_attr_asked()
            elif self.staged is None and not self.tree.db.files.remote:
                try:
                    if self._read_for_a_reader():
                        self._read_ahead()
                except OSError:                 # (unreadable: its stat says what it can)
                    pass
            known = self._stat
        if known is None or known[0] != version:
            changes = self._stat_changes
            try:
                st = self.tree.db.files.stat(self.obj._md_path)
                known = _meta_stat(version, st.size, st.mtime_ns)
            except FileNotFoundError:
                known = _meta_stat(version, len(NO_METADATA), 0)
            self._keep(known, changes)
        return known

    def learn_stat(self, dir_fd: int | None, name: str) -> None:
        """Its size and mtime, from its file `name` in its metadata folder (open as
        `dir_fd`; None: missing)."""
        version, changes = self.obj.md_version, self._stat_changes
        try:
            if dir_fd is None:
                raise FileNotFoundError
            st = os.stat(name, dir_fd=dir_fd)
            known = _meta_stat(version, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            known = _meta_stat(version, len(NO_METADATA), 0)
        with self.tree.stat_lock:           # (`_keep`, inline: the learner calls this per view)
            current = self._stat
            if changes == self._stat_changes and (current is None or current[0] != self.obj.md_version):
                self._stat = known

    def _keep(self, known: tuple[int, int, int, Attr], changes: int) -> None:
        """`known` kept as its size and mtime, unless they are known of its version, or it
        changed (a utimens) since `changes` was read: checked and set together."""
        with self.tree.stat_lock:
            current = self._stat
            if changes == self._stat_changes and (current is None or current[0] != self.obj.md_version):
                self._stat = known

    def _known(self) -> tuple[int, int, int, Attr] | None:
        known = self._stat
        return None if known is None or known[0] != self.obj.md_version else known

    def cached_attr(self) -> Attr | None:
        if self.staged is not None:
            return super().cached_attr()
        known = self._stat                  # (its Attr made once: a listing asks for it per entry)
        return None if known is None or known[0] != self.obj.md_version else known[3]

    def content_tag(self) -> tuple:
        return ("metadata view", self.ino, self.obj.md_version)

    def make(self) -> bytes:
        if self.tree.db.files.remote:           # (a read there is a round trip each: none ahead)
            return self._read()
        data = self._read(self.obj.md_version)
        self._read_ahead()
        return data

    def _read(self, version: int | None = None) -> bytes:
        """The stored bytes (the empty metadata where there is no file), counted: through
        the storage layer (remote-safe), or, given the metadata's `version` (a local read),
        from the file opened here, learning its size and mtime as of that version on the
        way (from the open file: no second stat)."""
        if version is None:
            self.tree.counts["metadata_files_read"] += 1
            try:
                return self.tree.db.files.read(self.obj._md_path)
            except FileNotFoundError:
                return NO_METADATA
        changes = self._stat_changes
        fd, st = self._open_stored()
        try:
            return self._read_open(fd, st, version, changes)
        finally:
            if fd is not None:
                os.close(fd)

    def _read_for_a_reader(self, wait: bool = True) -> bool:
        """Its bytes into the cache ahead of a reader, with its size and mtime, unless there
        or being read; over META_AHEAD_BYTES its size and mtime only. Whether its file was
        opened (not there). `wait` False: a sibling nobody asked for, never waited on under
        a lease held elsewhere (BlockingIOError)."""
        tag = self.content_tag()
        if self.cache.get(tag) is not None:
            return False
        changes = self._stat_changes
        fd, st = self._open_stored(wait)
        try:
            if st is not None and st.st_size > META_AHEAD_BYTES:
                self._learned(tag[2], st, changes)
            elif self.cache.claim(tag):
                try:
                    data = self._read_open(fd, st, tag[2], changes)
                except BaseException as exc:    # (said to whoever waits for it)
                    self.cache.complete(tag, error=exc)
                    raise
                self.cache.complete(tag, data)
        finally:
            if fd is not None:
                os.close(fd)
        return True

    def _open_stored(self, wait: bool = True) -> tuple[int | None, os.stat_result | None]:
        """Its file open for reading, and its fstat; (None, None) where there is none.
        `wait` False: BlockingIOError where a lease held elsewhere would be waited for."""
        try:
            return open_regular(self.obj._md_path, wait)
        except FileNotFoundError:
            return None, None

    def _read_open(self, fd: int | None, st: os.stat_result | None, version: int, changes: int) -> bytes:
        """The bytes of its file open as `fd` (None: the empty metadata), counted; its fstat
        `st` kept as of `version` where the bytes are as many as it says."""
        self.tree.counts["metadata_files_read"] += 1
        if fd is None:
            data = NO_METADATA
        else:
            data = read_to_end(fd, st.st_size)
        if st is None or st.st_size == len(data):
            self._learned(version, st, changes)
        return data

    def _learned(self, version: int, st: os.stat_result | None, changes: int) -> None:
        """Its size and mtime as of `version`, from its file's fstat `st` (None: no file),
        unless known, or changed since `changes` was read (a utimens meanwhile)."""
        self._keep(_meta_stat(version, len(NO_METADATA), 0) if st is None else
                   _meta_stat(version, st.st_size, st.st_mtime_ns), changes)

    def _folder(self) -> "Folder | None":
        """The folder that lists this view (made by then: a path to the view goes through it)."""
        obj, nodes = self.obj, self.tree.nodes
        if isinstance(obj, model.File):
            return nodes.get(("fileset", obj.fileset.scan.id, obj.fileset.id))
        if isinstance(obj, model.Fileset):
            return nodes.get(("scan", obj.scan.id))
        return self.tree.root

    def _read_ahead(self) -> None:
        """The next META_READ_AHEAD views of its folder's listing not read ahead yet into
        the cache, with their sizes and mtimes: their lookups and opens are then answered
        from memory, without a worker call each; so are the attributes of the scans' or
        filesets' folders these views describe (a reader by name looks each up next).
        Best effort: a view that fails here (unreadable, not a regular file) is left to its
        own reads, the others are read (this reader's open has its bytes)."""
        folder = self._folder()
        if folder is None:
            return
        views = self._next_views(folder)
        for view in views:
            try:
                view._read_for_a_reader(wait=False)
            except OSError as exc:
                log.debug("reading ahead %s: %s", view.obj._md_path, exc)
        if views and not isinstance(self.obj, model.File):
            try:
                with self.tree.lock:
                    described = [(view.obj.id, folder.find(view.obj.id)) for view in [self] + views]
                folder._learn_attrs(described, files=False)
            except OSError as exc:
                log.debug("learning the folders of %s: %s", self.obj._md_path, exc)

    def _next_views(self, folder: "Folder") -> list["MetaView"]:
        """The META_READ_AHEAD views after this one in its folder's last listing, or, in a
        folder never listed, in the model's order (`Folder.views_after`)."""
        if not folder.listed:
            return folder.views_after(self.obj)
        views, view = [], self.next_view
        while view is not None and len(views) < META_READ_AHEAD:
            views.append(view)
            view = view.next_view
        return views

    def size(self) -> int:
        return self._stat_of_version()[1]

    def known_size(self) -> int | None:
        known = self._known()
        return None if known is None else known[1]

    def known_mtime_ns(self) -> int | None:
        known = self._known()
        return None if known is None else known[2]

    def commit(self, data: bytes) -> None:
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise OSError(errno.EINVAL, f"{self.obj!r} metadata is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise OSError(errno.EINVAL, f"{self.obj!r} metadata must be a JSON object")
        self.obj.replace_metadata(doc)


def _meta_stat(version: int, size: int, mtime_ns: int) -> tuple[int, int, int, Attr]:
    return version, size, mtime_ns, Attr(FILE_MODE, size, mtime_ns)


def _mtime(files, path: str) -> int:
    try:
        return files.stat(path).mtime_ns
    except OSError:
        return 0


class DataFile(File):
    """A registered file's data: read from disk; written through a temporary copy that
    replaces it atomically and is registered in files.json when the writer closes."""

    def __init__(self, folder: "FilesetFolder", file, name: str | None = None):
        self.folder = folder
        self.tree = folder.tree
        self.file = file
        self.name = name or file.filename or file.id
        self._attr: Attr | None = None         # learned from the disk, until a writer commits
        self._commits = 0                       # a stat that raced a commit is not kept
        self.writer: NewFileHandle | None = None    # the open handle of a new file not yet on disk
        self.unlinked_attr: Attr | None = None  # once unlinked: what fstat of a descriptor still open shows

    def _path(self) -> str:
        return os.path.join(self.file.fileset.path(), self.name)

    def cached_attr(self) -> Attr | None:
        if self.unlinked_attr is not None:
            return self._gone_attr()
        writer = self.writer
        if self._attr is None and writer is not None:
            return writer.attr_nowait()
        return self._attr

    def forget_attr(self) -> None:
        """The data changed on disk (call after the change)."""
        self._commits += 1
        self._attr = None

    def _gone_attr(self) -> Attr:
        """Unlinked: what was asked then, with the size that writes to a descriptor still
        open on it gave it since (a new file's kept bytes, or its temporary file's)."""
        writer = self.writer
        kept = writer.attr_nowait() if writer is not None else None
        return self.unlinked_attr if kept is None else self.unlinked_attr._replace(size=kept.size)

    def attr(self) -> Attr:
        if self.unlinked_attr is not None:
            return self._gone_attr()
        if self._attr is None and self.writer is None and not self._commits:
            # (never known: a walker may be at its folder; one written through the mount
            # since costs its own stat, not a pass over the folder per file copied in)
            self.folder.file_attr_asked()
            if self._attr is not None:
                return self._attr
        return self._stat()

    def _stat(self, known: os.stat_result | None = None) -> Attr:
        """Its attributes from the disk (`known`: from its stat already made)."""
        commits = self._commits
        if known is not None:
            attr = Attr(FILE_MODE, known.st_size, known.st_mtime_ns)
        else:
            try:
                st = self.tree.db.files.stat(self._path())
            except FileNotFoundError:           # created, not yet closed
                writer = self.writer
                return (writer is not None and writer.attr_nowait()) or Attr(FILE_MODE, 0, 0)
            attr = Attr(FILE_MODE, st.size, st.mtime_ns)
        if commits == self._commits:
            self._attr = attr
        return attr

    def learn_attr(self, dir_fd: int) -> None:
        """`attr`, from its folder (open as `dir_fd`); nothing if it is not on disk yet."""
        commits = self._commits
        try:
            st = os.stat(self.name, dir_fd=dir_fd)
        except FileNotFoundError:
            return
        if commits == self._commits:
            self._attr = Attr(FILE_MODE, st.st_size, st.st_mtime_ns)

    def open(self, flags: int) -> FileHandle:
        if (flags & os.O_ACCMODE) == os.O_RDONLY:
            return self.open_read()
        handle = self.temp_handle(flags, self._commit)
        self.folder.refresh_attr()              # the temporary file is in it
        return handle

    def temp_handle(self, flags: int, commit) -> FilesetTempHandle:
        """The temporary file a write goes to, handed to `commit` when complete."""
        copy = self._path() if not flags & os.O_TRUNC and os.path.exists(self._path()) else None
        new = self.file.filename is None
        # a new file is registered at close even if nothing was written (touch); if lazily,
        # the registration's flush makes it durable (files.json names no file before that)
        return FilesetTempHandle(self.folder, self._path(), copy, commit, dirty=new,
                                 durable_later=new and self.tree.db.register_lazily, data=self)

    def _commit(self, finished: str, kernel_wrote_all: bool = False, written: os.stat_result | None = None) -> None:
        """`kernel_wrote_all`: every byte of the file came through the kernel's writes to a
        new file, so what the kernel holds of it (pages, size; the writes dropped its times)
        is what the disk has now: it is not told of the file, only of its folder.
        `written`: the finished file's fstat, which gives the journal its size and the node
        its attributes (a rename keeps both): no stat of its path before or after."""
        with self.tree.lock:
            if self.unlinked_attr is not None:  # unlinked while open: what was written goes with it
                model._unlink(finished)
                return
            new = self.file.filename is None
            db, scan = self.tree.db, self.file.fileset.scan
            outside = db.root_changes(), scan._writes       # what changes folders above this one
            adopted = None
            try:
                _api_errors(self.file.adopt)(finished, self.name, size=None if written is None else written.st_size)
                adopted = written
            finally:
                self.forget_attr()
                self._stat(adopted)             # (here: the kernel's next getattr needs no thread)
                # a new file's metadata view appears now (the kernel may hold that name as
                # missing), and its folder changed, unless the kernel has neither (`cp`)
                unseen = kernel_wrote_all and new and self.folder.unseen_since_create()
                self.folder.data_changed(self.name, *(() if kernel_wrote_all and new else (self.ino,)),
                                         entries=((self.folder.ino, self.name + META),) if new and not unseen
                                         else (), unseen=unseen,
                                         only_here=outside == (db.root_changes(), scan._writes))
            self.folder.committed(self)

    def open_nowait(self, flags: int) -> FileHandle | None:
        """A read of data whose path the kernel's caches resolve (on local storage: its
        open then never waits) needs no worker call; anything else goes to `open`."""
        if (flags & os.O_ACCMODE) != os.O_RDONLY or flags & os.O_TRUNC or not self.tree.local_storage \
                or self.writer is not None:
            return None
        fd = open_cached(self._path(), os.O_RDONLY)
        if fd is None:
            return None
        handle = OSFileHandle(fd)
        handle.keep_cache = True
        return handle

    def open_read(self) -> FileHandle:
        writer = self.writer
        kept = writer.kept() if writer is not None else None
        if kept is not None:                    # new, not yet closed: what was written so far
            return BytesHandle(kept)
        handle = self.tree.db.files.open_read(self._path())
        handle.keep_cache = True        # changes come through the mount, and are reported
        return handle

    def truncate(self, size: int) -> None:
        handle = FilesetTempHandle(self.folder, self._path(), self._path() if os.path.exists(self._path()) else None,
                                   self._commit, data=self)
        try:
            handle.truncate(size)
            handle.flush()
        finally:
            handle.release()


class FilesetTempHandle(TempFileHandle):
    """A temporary file in a fileset: one removed unused at release is gone from the
    folder's hidden names too."""

    def __init__(self, folder: "FilesetFolder", target: str, copy_from: str | None, *args,
                 data: DataFile | None = None, **kwargs):
        super().__init__(target, copy_from, *args, **kwargs)
        self._folder = folder
        self._data = data
        self._size = 0 if copy_from is None else os.fstat(self._fd).st_size     # (a new one: empty)

    def write(self, offset: int, data: bytes) -> int:
        written = super().write(offset, data)
        self._sized(max(self._size, offset + written))
        return written

    def truncate(self, size: int) -> None:
        super().truncate(size)
        self._sized(size)

    def _sized(self, size: int) -> None:
        """The file's data unlinked while this is open: its fstat shows what was written."""
        self._size = size
        data = self._data
        if data is not None and data.unlinked_attr is not None:
            data.unlinked_attr = data.unlinked_attr._replace(size=size, mtime_ns=time.time_ns())

    def finished_stat(self) -> os.stat_result:
        """The temporary file's stat (call before it is released)."""
        return os.fstat(self._fd)

    def release(self) -> None:
        try:
            super().release()
        finally:
            if not self._committed:
                self._folder.refresh_attr()


class NewFileHandle(FileHandle):
    """A file created through the mount: what is written is kept in memory (so that the
    create and the writes of a small file are answered on the loop) and written to a
    temporary file, renamed into place and registered at the first flush, in one worker
    call. A file that outgrows NEW_FILE_BYTES (or the tree's NEW_FILES_BYTES) moves to
    its temporary file at that write, and goes on as one (`DataFile.open`)."""
    flush_blocks = True

    def __init__(self, data: "DataFile", created_ns: int):
        self.data = data
        self.tree = data.tree
        self._created_ns = created_ns
        self._buffer: bytearray | None = bytearray()
        self._on_disk: FilesetTempHandle | None = None
        self._written = False                   # by the kernel's writes (or truncates)
        self._lock = threading.Lock()
        data.writer = self

    def attr_nowait(self) -> Attr | None:
        """What the file shows while its bytes are kept here (`cp -a` sets its times before
        it closes), or None: moved to disk, or the lock is busy doing so."""
        return under_lock_nowait(self._lock, self._kept_attr)

    def _kept_attr(self) -> Attr | None:
        return None if self._buffer is None else Attr(FILE_MODE, len(self._buffer), self._created_ns)

    def kept(self) -> bytes | None:
        """The bytes written so far while they are kept here (another reader's), else None."""
        with self._lock:
            return None if self._buffer is None else bytes(self._buffer)

    def write_nowait(self, offset: int, data: bytes) -> int | None:
        """The write kept in memory, or None (then `write` in a thread): too big, moved to
        disk, or the lock is busy (a thread holds it across disk I/O)."""
        return under_lock_nowait(self._lock, self._write_kept, offset, data)

    def _write_kept(self, offset: int, data: bytes) -> int | None:
        end = offset + len(data)
        buffer = self._buffer
        if buffer is None or end > NEW_FILE_BYTES or not self.tree.keep_new_bytes(max(0, end - len(buffer))):
            return None
        if offset > len(buffer):
            buffer.extend(bytes(offset - len(buffer)))
        buffer[offset:end] = data
        self._written = True
        return len(data)

    def _moved_to_disk(self, committing: bool = False) -> FilesetTempHandle:
        """The temporary file, made and given what was kept (call with the lock held): a
        new file's, holding nothing else (not a file of its name on disk that files.json
        does not name). `committing`: at the flush, whose commit refreshes the folder."""
        if self._on_disk is None:
            handle = self.data.temp_handle(os.O_WRONLY | os.O_TRUNC, self._commit)
            if not committing:
                self.data.folder.refresh_attr()     # the temporary file is in it
            if self._buffer:
                handle.write(0, bytes(self._buffer))
            self.tree.keep_new_bytes(-len(self._buffer))
            self._buffer = None
            self._on_disk = handle
            self.release_blocks = True          # the temporary file is closed (and removed)
        return self._on_disk

    def read(self, offset: int, size: int) -> bytes:
        with self._lock:
            if self._buffer is not None:
                return bytes(self._buffer[offset:offset + size])
            return self._on_disk.read(offset, size)

    def write(self, offset: int, data: bytes) -> int:
        with self._lock:
            self._written = True
            return self._moved_to_disk().write(offset, data)

    def truncate(self, size: int) -> None:
        with self._lock:
            self._written = True
            self._moved_to_disk().truncate(size)

    def _commit(self, finished: str) -> None:
        self.data._commit(finished, kernel_wrote_all=self._written, written=self._on_disk.finished_stat())

    def flush(self) -> None:
        with self._lock:
            handle = self._moved_to_disk(committing=True)
        handle.flush()
        self.release_blocks = handle.release_blocks

    def release(self) -> None:
        with self._lock:
            if self._buffer is not None:
                self.tree.keep_new_bytes(-len(self._buffer))
                self._buffer = None
            handle = self._on_disk
            if self.data.writer is self:
                self.data.writer = None
        if handle is not None:
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
    no I/O where the model knows), a listing made once per readdir pass (per open handle),
    attributes kept until the tree changes."""

    def negative_timeout_of(self, name: str) -> float | None:
        """A metadata view or a `.view` appears at a call that does not name it (a scan's
        or fileset's mkdir, a file's first close): never remembered missing, so it shows
        as soon as that call returns."""
        return 0.0 if name.endswith((META, VIEW)) else self.negative_timeout

    def mkdir(self, name: str, mode: int) -> Directory:
        raise OSError(errno.EPERM, "folders are scans (at the root) and filesets (in a scan)", name)

    def symlink(self, name: str, target: str):
        raise OSError(errno.EPERM, "a database holds no symbolic links", name)

    def rename(self, name: str, new_parent: Directory, new_name: str, flags: int = 0) -> None:
        raise OSError(errno.EPERM, "only files move (within their fileset)", name)

    def __init__(self, tree: "FSDBTree"):
        self.tree = tree
        self._attr: Attr | None = None
        self._changes = 0                       # a stat that raced a change is not kept
        self.listed = False                     # its metadata views are linked (`link_views`)
        self._order: list | None = None         # the first of `view_objects` in order (`_taken`),
        self._order_of = 0                      # ...when they were that many,
        #: [where `views_after` found its object, the end of what it gave] of its last calls
        self._places: list[list[int]] = []
        self._learned = UNLEARNED               # what of its listing is in memory (`learn`)
        self._learning = threading.Lock()       # held by whoever learns it (once, not twice at a time)
        #: whether its attributes or listing may have gone to the kernel since a create in
        #: it made the kernel drop them (`unseen_since_create`)
        self.shown = True

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

    def listing_nowait(self) -> list[tuple[str, Node]] | None:
        """`listing` if it needs no I/O (call with the tree's lock), else None."""
        return None

    def rows_in_memory(self) -> list[tuple[str, Node]]:
        """The entries of `listing` that memory holds, views left out (it takes the lock)."""
        raise NotImplementedError

    def entry_count_nowait(self) -> int:
        """`Directory.entry_count_nowait`, always known here."""
        raise NotImplementedError

    def learn_size(self) -> int:
        """About how many entries learning it goes through, from memory (the learner's
        budget and `file_attr_asked`'s limit): its entry count, unless that bound says more."""
        return self.entry_count_nowait()

    @property
    def learned(self) -> bool:
        """Whether what its listing needs is in memory: the attributes of its folders, and
        of its files while walkers stat them (`FSDBTree.stat_walk`)."""
        return self._learned == LEARNED_FILES or (self._learned == LEARNED_NAMES and not self.tree.stat_walk)

    def learn(self, wait: bool = True) -> int:
        """Learn from the disk, in one pass, what this folder's listing needs and memory
        does not hold (its folders' attributes, its files' while walkers stat them, a
        fileset's hidden names), so that it is then listed from memory: each folder is
        opened once and its files are stat'ed by name in it; how many things were learned
        (in a worker thread). Not `wait`: nothing if another thread is learning it."""
        if not self._learning.acquire(blocking=wait):
            return 0
        try:
            changes, files = self._changes, self.tree.stat_walk
            rows = self.rows_in_memory()
            learned = self.learn_names() + self._learn_attrs(rows, files)
            self._learn_done(changes, files)
        finally:
            self._learning.release()
        return learned

    def _learn_done(self, changes: int, files: bool) -> None:
        self._learned = UNLEARNED if changes != self._changes else LEARNED_FILES if files else LEARNED_NAMES

    def file_attr_asked(self) -> None:
        """A file of it was stat'ed whose attributes memory did not hold: a walker that
        stats what it lists (`ls -l`, `du`, `find -printf %s`, rsync, a listing with
        attributes) may be at it, so its other files' are learned with it, in one pass
        (not in a folder of more than LEARN_AHEAD entries, nor while another thread learns
        it), and those of the folders a walk lists next (`FSDBTree.stat_walk`). Not in a
        folder never listed: a lone `stat` costs a stat."""
        if not self.listed:
            return
        tree = self.tree
        if not tree.files_stated():
            tree.learn_after(self, again=True)  # (learned names only so far: files' now)
        if not tree.db.files.remote and self.learn_size() <= LEARN_AHEAD:
            self.learn(wait=False)

    def _learn_attrs(self, rows: list[tuple[str, Node]], files: bool = True) -> int:
        """The attributes of `rows` memory does not hold, learned (see `learn`): of its
        folders only, unless `files`."""
        tree = self.tree
        unknown = [(name, node) for name, node in rows
                   if (files or isinstance(node, Folder)) and node.cached_attr() is None]
        if tree.db.files.remote:
            for _, node in unknown:
                node.attr()
            tree.counts["attributes_learned"] += len(unknown)
            return len(unknown)
        fds: dict[str, int | None] = {}
        here = self.path()

        def opened(path: str) -> int | None:
            if path not in fds:
                try:
                    fds[path] = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                except FileNotFoundError:
                    fds[path] = None
            return fds[path]
        learned, views_in, views_fd = 0, None, None   # (a folder's views are in one metadata folder)
        try:
            for name, node in unknown:
                if isinstance(node, MetaView):
                    folder, _, file_name = node.obj._md_path.rpartition("/")
                    if folder != views_in:
                        views_in, views_fd = folder, opened(folder)
                    node.learn_stat(views_fd, file_name)
                elif isinstance(node, (DataFile, Folder)):
                    if (here_fd := fds[here] if here in fds else opened(here)) is None:
                        continue                # (its folder gone meanwhile)
                    if isinstance(node, DataFile):
                        node.learn_attr(here_fd)
                    else:
                        node.learn_attr(here_fd, name)
                else:
                    continue                    # (a view or a hidden file: `attr` when listed)
                learned += 1
        finally:
            for fd in fds.values():
                if fd is not None:
                    os.close(fd)
        tree.counts["attributes_learned"] += learned
        return learned

    def learn_names(self) -> int:
        """Learn the names only the disk knows (a fileset's hidden files)."""
        return 0

    def learn_attr(self, dir_fd: int, name: str) -> None:
        """`attr` of this folder, from its name in its parent (open as `dir_fd`)."""
        changes = self._changes
        try:
            mtime_ns = os.stat(name, dir_fd=dir_fd).st_mtime_ns
        except OSError:
            mtime_ns = 0
        if changes == self._changes:
            self._attr = Attr(DIR_MODE, 0, mtime_ns, 2)

    def lookup(self, name: str) -> Node | None:
        with self.tree.lock:
            found = self.find(name)
            return self.find_slow(name) if found is NEEDS_IO else found

    def lookup_attr_nowait(self, name: str):
        """(`find` gives None only for names that are not there: a missing name, a copy's
        first `stat`, is answered on the loop.)"""
        return lookup_attr_nowait(self.find, name, self.tree.lock, none_is_absent=True)

    def cached_attr(self) -> Attr | None:
        self.shown = True
        return self._attr

    def attr(self) -> Attr:
        self.shown = True
        return self._read_attr()

    def _read_attr(self) -> Attr:
        changes = self._changes
        attr = Attr(DIR_MODE, 0, _mtime(self.tree.db.files, self.path()), 2)
        if changes == self._changes:
            self._attr = attr
        return attr

    def refresh_attr(self) -> bool:
        """Read the attributes again after the mount changed the folder on disk (in the
        worker that changed it, so that the kernel's next getattr is answered from
        memory); whether they changed. What was learned of its names is learned again."""
        before = self._attr
        self._changes += 1
        self._attr = None
        self._learned = UNLEARNED
        return self._read_attr() != before

    def _listing_now(self) -> list[tuple[str, Node]]:
        with self._learning:                    # (what the learner is learning of it, waited for)
            changes, files = self._changes, self.tree.stat_walk
            with self.tree.lock:
                listing = self.listing()
            self._learn_attrs(listing, files)
            self._learn_done(changes, files)
        return self._listed(listing)

    def _listing_from_memory(self) -> list[tuple[str, Node]] | None:
        listing = self.listing_nowait()
        return None if listing is None else self._listed(listing)

    def _listed(self, listing: list[tuple[str, Node]]) -> list[tuple[str, Node]]:
        """(A listing made:) its metadata views linked for their read-ahead, and the
        folders a walk lists next learned ahead of it."""
        self.tree.counts["listings"] += 1
        self.tree.listed()
        self.link_views(listing)
        self.tree.learn_after(self)
        return listing

    def view_objects(self):
        """The model's objects whose metadata views it lists, in listing order (call with
        the tree's lock)."""
        raise NotImplementedError

    def views_after(self, obj) -> list[MetaView]:
        """For a reader of metadata by name in a folder never listed (`cat`, `json.load`):
        the views of the META_READ_AHEAD objects after `obj` in the model's order (its
        listing's) not read ahead yet, their nodes made. `obj` is looked for near where the
        last READ_AHEAD_PLACES calls found theirs, then at the start (`_position`): none of
        it goes through a whole folder, and a lookup elsewhere (a stray reader) reads none
        ahead but leaves the places kept."""
        with self.tree.lock:
            objects = self.view_objects()
            at, place = self._position(obj, objects)
            if at is None:
                return []
            if place is None:
                place = [at, at + 1]
            else:
                self._places.remove(place)
            start = place[1] if place[0] <= at < place[1] else at + 1
            place[:] = at, at + 1 + META_READ_AHEAD
            self._places = (self._places + [place])[-READ_AHEAD_PLACES:]
            names = map(_view_name, self._taken(objects, place[1])[start:place[1]])
            views = [self.find(name + META) for name in names if name]
            return [view for view in views if isinstance(view, MetaView)]

    def _position(self, obj, objects) -> tuple[int | None, list[int] | None]:
        """Where `obj` is in the model's order, and the place (of `_places`) it is near:
        within 2 * META_READ_AHEAD + 2 of a place's object (a reader's next, past what it
        read ahead; or moved back by deletions), or as far from the start (no place)."""
        width = 2 * META_READ_AHEAD + 2
        for place in [*reversed(self._places), None]:
            first = 0 if place is None else max(place[0] - width, 0)
            try:
                return self._taken(objects, first + 2 * width).index(obj, first, first + 2 * width), place
            except ValueError:
                pass
        return None, None

    def _taken(self, objects, end: int) -> list:
        """The model's `objects` (its dict's values) in order, at least the first `end` of
        them (or all): taken again, twice as many, where fewer, and after a change (files
        added or removed), so a reader in order takes each about twice in all."""
        order = self._order
        if order is None or self._order_of != len(objects) or len(objects) > len(order) < end:
            order = self._order = list(islice(objects, max(end, 2 * len(order or ()))))
            self._order_of = len(objects)
        return order

    def link_views(self, listing: list[tuple[str, Node]]) -> None:
        """Each metadata view of `listing` learns the next one (what a reader of one
        reads ahead)."""
        views = [node for _, node in listing if isinstance(node, MetaView)]
        for view, next_view in zip(views, views[1:] + [None]):
            view.next_view = next_view
        self.listed = True
        self._order = None                      # (read ahead from the links now)

    def opendir(self) -> ListingSnapshot:
        """Each open handle lists from the listing made when it read from its start (a
        reader deleting what it has read skips nothing); from memory on the loop where
        everything in it is known."""
        self.shown = True
        return ListingSnapshot(self._listing_now, attrs=True, lock=self.tree.lock,
                               listing_nowait=self._listing_from_memory, files_unsized=True)

    def entries(self, offset: int):
        return self.opendir().entries(offset)


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
            if scan.id + META not in self.tree.hidden:
                out.append((scan.id + META, self.find(scan.id + META)))
            out.append((scan.id, self.find(scan.id)))
        return out

    listing_nowait = listing

    def view_objects(self):
        return self.tree.db.scans.values()

    def rows_in_memory(self) -> list[tuple[str, Node]]:
        with self.tree.lock:
            return self.listing()

    def entry_count_nowait(self) -> int:
        return 2 * len(self.tree.db.scans)

    def mkdir(self, name: str, mode: int) -> Directory:
        with self.tree.lock:
            _api_errors(self.tree.db.create_scan)(name)
            self.tree._scan_order = None
            self.tree.report(entries=((self.ino, name + META),))     # a removed namesake's, if kept
            self.tree.hidden.discard(name + META)
            self.tree.refresh_folders()
            return self.find(name)

    def rmdir(self, name: str) -> None:
        with self.tree.lock:
            scan = self.tree.db.get_scan(name)
            if scan is None:
                raise FileNotFoundError(errno.ENOENT, "no such scan", name)
            if scan.get_filesets():
                raise OSError(errno.ENOTEMPTY, "scan has filesets", name)
            _api_errors(self.tree.db.delete_scan)(name)
            self.tree._scan_order = None
            self.tree.forget_nodes(("scan", name), ("meta", name), report=True)
            self.tree.refresh_folders()

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
        return self._rows(views=True)

    def view_objects(self):
        return self.scan.filesets.values()

    def rows_in_memory(self) -> list[tuple[str, Node]]:
        with self.tree.lock:
            return self._rows(views=False)

    def listing_nowait(self) -> list[tuple[str, Node]] | None:
        return self._rows(views=None)

    def entry_count_nowait(self) -> int:
        return 2 * len(self.scan.filesets)

    def _rows(self, views: bool | None) -> list[tuple[str, Node]] | None:
        """views: True shows them (I/O), False leaves them out, None gives None if any."""
        tree, scan = self.tree, self.scan
        out = []
        for fs in scan.get_filesets():
            if f"{scan.id}/{fs.id}{META}" not in tree.hidden:
                out.append((fs.id + META, self.find(fs.id + META)))
            out.append((fs.id, self.find(fs.id)))
            if _is_imgstore(fs) and views is not False:
                if views is None:
                    return None
                view = tree.imgstore_view(fs)
                if view is not None:
                    out.append((fs.id + VIEW, view))
        return out

    def mkdir(self, name: str, mode: int) -> Directory:
        with self.tree.lock:
            _api_errors(self.scan.create_fileset)(name)
            self.tree.report(entries=((self.ino, name + META),))     # a removed namesake's, if kept
            self.tree.hidden.discard(f"{self.scan.id}/{name}{META}")
            self.tree.refresh_folders(self.scan.id)
            return self.find(name)

    def rmdir(self, name: str) -> None:
        with self.tree.lock:
            fs = self.scan.get_fileset(name)
            if fs is None:
                raise FileNotFoundError(errno.ENOENT, "no such fileset", name)
            if fs.files:
                raise OSError(errno.ENOTEMPTY, "fileset has files", name)
            _api_errors(self.scan.delete_fileset)(name)
            self.tree.forget_nodes(("fileset", self.scan.id, name), ("meta", self.scan.id, name), report=True)
            self.tree.report(entries=((self.ino, name + VIEW),))
            self.tree.refresh_folders(self.scan.id)

    def unlink(self, name: str) -> None:
        _hide_view(self.tree, self, name, f"{self.scan.id}/")

    def create(self, name: str, mode: int) -> File:
        return _rewrite_view(self, name, f"{self.scan.id}/")


def _view_name(obj) -> str | None:
    """The name shown for a scan, fileset or file (None: a file with no data yet)."""
    return obj.filename if isinstance(obj, model.File) else obj.id


def _is_imgstore(fileset) -> bool:
    return fileset is not None and fileset.file_named("metadata.yaml") is not None


class FilesetFolder(Folder):
    def __init__(self, tree: "FSDBTree", fileset):
        super().__init__(tree)
        self.fileset = fileset
        self.prefix = f"{fileset.scan.id}/{fileset.id}/"      # of its names in tree.hidden
        self.pending: dict[str, object] = {}       # created files not yet closed, by name
        self._hidden: list[str] | None = None      # hidden files (`learn_names`)

    def path(self) -> str:
        return self.fileset.path()

    def _key(self, *rest) -> tuple:
        return (self.fileset.scan.id, self.fileset.id) + rest

    def _data(self, file, name: str | None = None) -> DataFile:
        return self.tree.node(("data",) + self._key(file.id), lambda: DataFile(self, file, name))

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
        out = self._rows(views=True)
        out.extend((name, self._scratch(name)) for name in self._hidden_names())
        return out

    def view_objects(self):
        return self.fileset.files.values()

    def rows_in_memory(self) -> list[tuple[str, Node]]:
        """(The tree's lock is taken per ROWS_PER_LOCK files: a listing on the daemon's
        loop, which only tries it, then seldom finds it held by a thread making nodes.)"""
        with self.tree.lock:
            files = list(self.fileset.files.values())
        out = []
        for start in range(0, len(files), ROWS_PER_LOCK):
            with self.tree.lock:
                out += self._rows(False, files[start:start + ROWS_PER_LOCK])
        return out

    def entry_count_nowait(self) -> int:
        """Two entries a file (it and its metadata view), a third an .iid (its `.view`),
        and its hidden files as last learned (`learn_names`: until then it is not listed
        from memory)."""
        files = len(self.fileset.files)
        iids = files if files > NAMES_COUNTED else sum(
            (file.filename or "").endswith(".iid") for file in list(self.fileset.files.values()))
        iids += sum(name.endswith(".iid") for name in list(self.pending))      # (named so until closed)
        return 2 * files + iids + len(self._hidden or ())

    def learn_size(self) -> int:
        """Two entries a file (it and its metadata view), as the learner always budgeted a
        fileset; not `entry_count_nowait`'s bound, which counts each file of a big fileset
        as an .iid (a fileset of plain files budgeted half again)."""
        return 2 * len(self.fileset.files)

    def listing_nowait(self) -> list[tuple[str, Node]] | None:
        hidden = self._hidden
        out = None if hidden is None else self._rows(views=None)
        if out is not None:
            out.extend((name, self._scratch(name)) for name in hidden)
        return out

    def _rows(self, views: bool | None, files=None) -> list[tuple[str, Node]] | None:
        """Its registered files, or those of `files` (views as for `ScanFolder._rows`)."""
        tree = self.tree
        pending = {id(file): name for name, file in self.pending.items()} if self.pending else {}
        nodes, hidden, (scan_id, fileset_id) = tree.nodes, tree.hidden, self._key()
        out, made = [], []                      # (nodes made here: numbered at once, `Tree.add_all`)
        try:
            for file in self.fileset.files.values() if files is None else files:
                # (nodes found and made here as by `_data` and `_meta`, with fewer calls: a walk
                # makes two per file, in the learner's thread)
                # (a view before its file, its node made and numbered first: `rm -r` unlinks it
                # first, in listing order or by inode, and finds it; after its file it is gone)
                meta = None
                if file.filename:
                    key = ("meta", scan_id, fileset_id, file.id)
                    meta = nodes.get(key)
                    if meta is None:
                        meta = nodes[key] = MetaView(tree, file)
                        made.append(meta)
                key = ("data", scan_id, fileset_id, file.id)
                data = nodes.get(key)
                if data is None:
                    data = nodes[key] = DataFile(self, file, pending.get(id(file)))
                    made.append(data)
                if meta and (not hidden or self.prefix + data.name + META not in hidden):
                    out.append((data.name + META, meta))
                out.append((data.name, data))
                if file.filename:
                    if data.name.endswith(".iid") and views is not False:
                        if views is None:
                            return None
                        view = tree.iid_view(file)
                        if view is not None:
                            out.append((data.name + VIEW, view))
            return out
        finally:
            if made:
                tree.add_all(made)

    def _hidden_names(self) -> list[str]:
        """Its hidden (temporary) files, as last learned (with the tree's lock)."""
        if self._hidden is None:
            self.learn_names()
        return self._hidden or []

    def learn_names(self) -> int:
        """Hidden files are made through the mount, which refreshes the folder (and so
        forgets them) at each: they are learned again after a change only."""
        if self._hidden is not None:
            return 0
        changes = self._changes
        try:
            local = not self.tree.db.files.remote               # (scratch files are written locally)
            names = sorted(n for n in os.listdir(self.path()) if n.startswith(".")) if local else []
        except FileNotFoundError:
            names = []
        with self.tree.lock:
            # (temporary files of writes: this mount's in progress are not shown, older ones removed)
            for name in names:
                if name.endswith(TEMP_SUFFIX):
                    self._drop_leftover(name)
            names = [name for name in names if not name.endswith(TEMP_SUFFIX)]
            if changes == self._changes:
                self._hidden = names
        return 1

    def refresh_attr(self) -> bool:
        self._hidden = None
        return super().refresh_attr()

    def _drop_leftover(self, name: str) -> None:
        """Remove a temporary file of a write that a mount killed before the file was closed
        (older than this mount; the journal does not name it): never registered, its data
        is lost, as the writer was told nothing else (call with the tree's lock)."""
        path = os.path.join(self.path(), name)
        try:
            if os.stat(path).st_mtime_ns >= self.tree.started_ns:
                return                          # one of this mount's writes
            os.unlink(path)
        except FileNotFoundError:
            return
        log.warning("removed %s: a write that a stopped mount never finished", path)

    def data_changed(self, name: str, *inodes: int, entries: tuple = (), unseen: bool = False,
                     only_here: bool = False) -> None:
        """The data of the file shown as `name` changed or went away: the kernel drops what
        it has of `inodes` and of the views made from the data (call with the tree's lock).
        `unseen`: it holds nothing of this folder to drop (`unseen_since_create`).
        `only_here`: no folder above this one changed (no files.json, journal or locks'
        folder was made: a file registered lazily), so they are not read again."""
        entries += ((self.ino, name + VIEW),) if name.endswith(".iid") else ()
        scan = self.tree.nodes.get(("scan", self.fileset.scan.id))
        if scan is not None and _is_imgstore(self.fileset):
            entries += ((scan.ino, self.fileset.id + VIEW),)
        folders = ([self.ino] if self.refresh_attr() else []) if only_here else \
            self.tree.refreshed_folders(self.fileset.scan.id, self.fileset.id)
        if unseen:
            folders = [ino for ino in folders if ino != self.ino]
        if inodes or folders or entries:
            self.tree.report(*inodes, *folders, entries=entries)   # (one wake of the notifier)

    def unseen_since_create(self) -> bool:
        """Whether the kernel holds nothing of this folder that a new file's commit changes
        (call with the tree's lock): neither its attributes nor its listing went to it
        since its last create here, which made the kernel drop both (a missing metadata
        file it never remembers: `negative_timeout_of`). A copy into the folder is then
        told nothing: the kernel asks anew, after the commit.
        (A GETATTR the kernel sent before the create and that is answered after it is
        the kernel's own race, as for any create: its reply does not drop the folder's
        new mtime, it was never told it.)"""
        return not self.shown

    def committed(self, data: DataFile) -> None:
        """A created file was closed: it is registered now (call with the tree's lock)."""
        if self.pending.get(data.name) is data.file:
            del self.pending[data.name]

    def create_nowait(self, name: str, mode: int, flags: int):
        """A new visible file, while its id is free: made in memory, and its data kept in
        memory until it is closed (`NewFileHandle`); anything else goes to `create`."""
        tree = self.tree
        if name.startswith(".") or name.endswith(META) or tree.db.files.remote or (flags & os.O_ACCMODE) == os.O_RDONLY:
            return None
        file_id, _ = layout.split_name(name)

        def made():
            if self._file_by_name(name) is not None:
                return None
            try:
                file = self.fileset.create_file(file_id)
            except (ValueError, OSError):       # (FileExistsError: the id is taken)
                return None                     # refused: `create` says why
            self.pending[name] = file
            self.shown = False                  # (the kernel drops what it has of the folder)
            return self._data(file, name)
        data = under_lock_nowait(tree.lock, made)
        if data is None:
            return None
        handle = NewFileHandle(data, time.time_ns())
        return data, handle.attr_nowait(), handle

    def create(self, name: str, mode: int) -> File:
        with self.tree.lock:
            if name.endswith(META) and self._file_by_name(name[:-len(META)]):
                return _rewrite_view(self, name, self.prefix)
            if name.startswith("."):
                os.close(os.open(os.path.join(self.path(), name), os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, mode & 0o777))
                self.refresh_attr()
                return self._scratch(name)
            file_id, _ = layout.split_name(name)
            file = _api_errors(self.fileset.create_file)(file_id)
            self.pending[name] = file
            self.shown = False                  # (the kernel drops what it has of the folder)
            return self._data(file, name)

    def unlink(self, name: str) -> None:
        with self.tree.lock:
            if name.startswith("."):
                os.unlink(os.path.join(self.path(), name))
                self.tree.forget_nodes(("scratch",) + self._key(name))
                self.refresh_attr()
                return
            file = self._file_by_name(name)
            if file is not None:
                gone = self._unlinked_attr(file)
                _api_errors(self.fileset.delete_file)(file.id)
                self._unlinked(file, gone)
                self.tree.forget_nodes(("meta",) + self._key(file.id), report=True)
                self.data_changed(name)
                self.tree.hidden.discard(self.prefix + name + META)
                self.pending.pop(name, None)
                return
            _hide_view(self.tree, self, name, self.prefix)

    def _unlinked_attr(self, file) -> Attr | None:
        """What fstat of a descriptor open on `file`'s data shows once its name is gone
        (asked before it goes), if the kernel has its node."""
        data = self.tree.nodes.get(("data",) + self._key(file.id))
        return data.attr()._replace(nlink=0) if isinstance(data, DataFile) else None

    def _unlinked(self, file, gone: Attr | None) -> None:
        """`file`'s name is gone (unlinked, or renamed over): its node is kept for the
        descriptors still open on it, as a plain directory keeps the inode."""
        data = self.tree.nodes.get(("data",) + self._key(file.id))
        if isinstance(data, DataFile):
            data.unlinked_attr = gone
            self.tree.unlinked[data.ino] = data
        self.tree.forget_nodes(("data",) + self._key(file.id), report=True)

    def rename(self, name: str, new_parent: Directory, new_name: str) -> None:
        if new_parent is not self:
            raise OSError(errno.EXDEV, "files move only within their fileset")
        with self.tree.lock:
            fs = self.fileset
            if name.startswith(".") and not new_name.startswith("."):
                # rsync and editors: a finished temporary file becomes a registered file
                existing = self._file_by_name(new_name)
                file = existing or _api_errors(fs.create_file)(layout.split_name(new_name)[0])
                gone = existing and self._unlinked_attr(existing)
                _api_errors(file.adopt)(os.path.join(fs.path(), name), new_name)
                if existing is not None:        # a descriptor open on the old data is still served
                    self._unlinked(existing, gone)
                scratch = self.tree.nodes.pop(("scratch",) + self._key(name), None)
                data = self._data(file)
                data.forget_attr()
                if scratch is not None:
                    self.tree.alias(scratch.ino, data)
                self.data_changed(new_name, entries=((self.ino, new_name + META),) if existing is None else ())
                return
            if name.startswith(".") and new_name.startswith("."):
                os.rename(os.path.join(fs.path(), name), os.path.join(fs.path(), new_name))
                self.tree.forget_nodes(("scratch",) + self._key(name))
                self.refresh_attr()
                return
            file = self._file_by_name(name)
            if file is None or new_name.endswith(META) or new_name.startswith("."):
                raise OSError(errno.EPERM, "only files (not metadata) move, to visible names")
            replaced = self._file_by_name(new_name)
            if replaced is file:
                return                          # (a name onto itself)
            if file.filename != name or (replaced is not None and replaced.filename != new_name):
                raise OSError(errno.EBUSY, "a file being created moves or is replaced once closed")
            gone = replaced and self._unlinked_attr(replaced)
            moved = _api_errors(fs.rename_file)(file.id, new_name)
            if replaced is not None:            # a descriptor open on it is still served
                self._unlinked(replaced, gone)
                self.tree.forget_nodes(("meta",) + self._key(replaced.id), report=True)
            old = self.tree.nodes.pop(("data",) + self._key(file.id), None)
            self.tree.forget_nodes(("meta",) + self._key(file.id), report=True)
            if old is not None:                  # the kernel knows the new name by the old inode
                self.tree.alias(old.ino, self._data(moved))
            self.tree.hidden.difference_update((self.prefix + name + META, self.prefix + new_name + META))
            self.data_changed(name)
            self.data_changed(new_name, entries=((self.ino, new_name + META),))


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


#: what a closed view's slot holds: an empty tree (its numbers answer nothing)
_RETIRED = Tree()


def _is_view_root(ino: int) -> bool:
    """A grafted tree's root is the first number of its slot."""
    return ino >= 1 << GRAFT_SHIFT and not ino & ((1 << GRAFT_SHIFT) - 1)


class FSDBTree(Tree):
    #: a file's attributes cost a stat and its name is in files.json: a `find` needs no stat
    lean_listings = True

    def __init__(self, db: FSDB, read_only: bool, base: int = ROOT_INO, register_delay: float = 1.0):
        super().__init__(base)
        self.db = db
        self.writable = not read_only
        # writable: the kernel keeps names and file attributes, and is told (`report`) of
        # what changes without a request on it (views of a rewritten file, the metadata
        # file of a removed one or of a new one, folders' mtimes: files.json batched in, a
        # file replaced); missing names for a second (a copy asks for each name twice)
        self.cache_policy = (CachePolicy() if read_only else
                             CachePolicy(negative_timeout=1.0, keep_cache=False))
        self.lock = threading.RLock()
        self.started_ns = time.time_ns()        # temporary files older than this are leftovers
        self.nodes: dict[tuple, Node] = {}
        #: data files unlinked through the mount, by inode, until the kernel forgets them:
        #: a descriptor still open on one is served (fstat, read), as a plain directory does
        self.unlinked: dict[int, Node] = {}
        self.hidden: set[str] = set()
        self.meta_cache = ByteCache(META_CACHE_BYTES)
        self._new_bytes = 0                     # kept by NewFileHandles, up to NEW_FILES_BYTES
        self._new_bytes_lock = threading.Lock()
        self.counts: Counter[str] = Counter()   # work done: listings, metadata_files_read
        self._views: dict[tuple, tuple[int, Tree]] = {}   # (kind, path) -> (its mtime, view)
        self._views_lock = threading.Lock()     # for these three (never held during I/O)
        self.stat_lock = threading.Lock()       # a metadata view's size and mtime checked and set (`MetaView._keep`)
        self._held_views: set[int] = set()      # roots of views the kernel holds
        self._superseded: dict[int, Tree] = {}  # views of older versions the kernel holds, by root
        self._unused_views: list[Tree] = []     # views of older versions to close
        self.remote_options: dict[str, str] = {}    # for the views of files in an object store
        #: where an open whose path the kernel has cached never waits (DataFile.open_nowait)
        self.local_storage = not db.files.remote and filesystem_type(db.basedir) in LOCAL_FILESYSTEMS
        db.register_lazily = not read_only and register_delay > 0
        db.register_delay = register_delay
        self._scan_order: tuple[list, dict[str, int]] | None = None  # the scans, and their places
        self.learner = Learner(self.folders_after, LEARN_AHEAD) if not db.files.remote and lists_ahead() else None
        self._stat_listings = 0                 # listings left that learn files' attributes
        self._stat_period = STAT_WALK_LISTINGS  # listings the next stat walk lasts
        self._name_listings = 0                 # listings since one that learned files
        self.add(RootFolder(self))

    @property
    def stat_walk(self) -> bool:
        """Whether listings learn their files' attributes, and the learner ahead of them:
        for the STAT_WALK_LISTINGS listings after a file was stat'ed whose attributes were
        not in memory (twice as many after each period a stat ends, as a walk that still
        stats does: each costs it a folder's LOOKUPs; back at STAT_WALK_LISTINGS after
        two listings with no such stat, a walk of names). A walk of names (`find`) then
        stats nothing: a lean listing gives its files without attributes
        (`ListingSnapshot.files_unsized`); a walk that stats finds them learned, in one
        pass a folder, as it lists it or ahead of it."""
        return self._stat_listings > 0

    def files_stated(self) -> bool:
        """A file was stat'ed whose attributes were not in memory; whether listings learned
        files' attributes before."""
        before = self._stat_listings
        if not before:
            self._stat_listings = self._stat_period
            self._stat_period = min(2 * self._stat_period, MAX_STAT_WALK_LISTINGS)
        self._name_listings = 0
        return before > 0

    def listed(self) -> None:
        if self._stat_listings:
            self._stat_listings -= 1
        else:
            self._name_listings += 1
            if self._name_listings > 2:
                self._stat_period = STAT_WALK_LISTINGS

    def learn_after(self, folder: "Folder", again: bool = False) -> None:
        """`folder` was listed: what a walk lists next is learned ahead (never waits)."""
        if self.learner is not None:
            self.learner.listed(folder, again)

    def folders_after(self, folder: "Folder"):
        """The folders a depth-first walk lists after `folder`: its own, then those after it."""
        with self.lock:
            if self._scan_order is None:
                scans = list(self.db.scans.values())
                self._scan_order = scans, {scan.id: place for place, scan in enumerate(scans)}
            scans, order = self._scan_order
        if isinstance(folder, RootFolder):
            following = range(len(scans))
        else:
            scan = folder.scan if isinstance(folder, ScanFolder) else folder.fileset.scan
            filesets = list(scan.filesets.values())
            if isinstance(folder, FilesetFolder):
                filesets = filesets[filesets.index(folder.fileset) + 1:] if folder.fileset in filesets else []
            yield from map(self._fileset_folder, filesets)
            place = order.get(scan.id)
            following = () if place is None else range(place + 1, len(scans))
        for scan in map(scans.__getitem__, following):
            yield self.node(("scan", scan.id), lambda scan=scan: ScanFolder(self, scan))
            yield from map(self._fileset_folder, list(scan.filesets.values()))

    def _fileset_folder(self, fileset) -> "FilesetFolder":
        return self.node(("fileset", fileset.scan.id, fileset.id), lambda: FilesetFolder(self, fileset))

    def keep_new_bytes(self, more: int) -> bool:
        """Count `more` bytes kept in memory by new files (negative: let go); False (and
        nothing counted) if that would pass NEW_FILES_BYTES."""
        with self._new_bytes_lock:
            if more > 0 and self._new_bytes + more > NEW_FILES_BYTES:
                return False
            self._new_bytes += more
            return True

    def node(self, key: tuple, make) -> Node:
        with self.lock:
            found = self.nodes.get(key)
            return self.keep(key, make()) if found is None else found

    def keep(self, key: tuple, node: Node) -> Node:
        """`node`, numbered and kept as `key` (call with the lock)."""
        self.nodes[key] = self.add(node)
        return node

    def refresh_folders(self, scan_id: str | None = None, fileset_id: str | None = None) -> None:
        """After a change on disk (in its worker): the root, a scan's and a fileset's
        folders (those made so far) read their attributes again, and the kernel is told
        of those whose mtime moved (files.json, the journal or a file written in them)."""
        self.report(*self.refreshed_folders(scan_id, fileset_id))

    def refreshed_folders(self, scan_id: str | None = None, fileset_id: str | None = None) -> list[int]:
        """`refresh_folders` without the report: the folders to tell the kernel of."""
        keys = [("scan", scan_id)] if scan_id is not None else []
        keys += [("fileset", scan_id, fileset_id)] if fileset_id is not None else []
        folders = [self.root] + [node for node in map(self.nodes.get, keys) if node is not None]
        return [folder.ino for folder in folders if folder.refresh_attr()]

    def forget_nodes(self, *keys: tuple, report: bool = False) -> None:
        """Drop the nodes of what was deleted. `report`: the kernel is told their
        attributes are gone, but keeps their names until it looks again, so that `rm -r`
        can still remove a metadata file that went with its object."""
        with self.lock:
            for key in keys:
                node = self.nodes.pop(key, None)
                if node is not None:
                    self.discard(node.ino)
                    if report:
                        self.report(node.ino)

    def _view(self, kind: str, path: str, make) -> Directory | None:
        """A read-only tree of a file inside the database, made on first look, made again
        when the file changed (the superseded one is closed once the kernel lets it go)."""
        mtime = _mtime(self.db.files, path)
        with self.lock:
            made = self._views.get((kind, path))
            if made is not None and made[0] == mtime:
                return made[1].root
            try:
                view = self.graft(make)
            except (MountError, OSError) as exc:
                log.warning("%s cannot be shown as %s: %s", path, kind, exc)
                return None
            self._views[(kind, path)] = (mtime, view)
            with self._views_lock:
                if made is not None:
                    if made[1].base in self._held_views:
                        self._superseded[made[1].base] = made[1]
                    else:
                        self._unused_views.append(made[1])
        self._close_unused_views()
        return view.root

    def _close_unused_views(self) -> None:
        """Close the views of older file versions that the kernel holds nothing of (a node
        it holds, an open file's included, keeps the view's root held). Their numbers answer
        nothing after; slots are not reused."""
        with self._views_lock:
            unused, self._unused_views = self._unused_views, []
            for view in unused:
                self._grafts[view.base >> GRAFT_SHIFT] = _RETIRED
        for view in unused:
            view.close()

    def adopt(self, node: Node) -> None:
        """(On the event loop: no I/O, no lock that I/O holds.) The database's own nodes
        are kept until deleted: only those of grafted views have anything to adopt (a
        walk hands the kernel every entry of every folder through here)."""
        if node.ino < 1 << GRAFT_SHIFT:
            return
        if _is_view_root(node.ino):
            with self._views_lock:
                self._held_views.add(node.ino)
        super().adopt(node)

    def get(self, ino: int) -> Node | None:
        node = super().get(ino)
        if node is None and self.unlinked:
            node = self.unlinked.get(ino)
        return node

    def forget(self, ino: int) -> None:
        """(On the event loop: a superseded view let go is closed by the next write-back or
        view made, in a worker thread.)"""
        self.unlinked.pop(ino, None)
        super().forget(ino)
        if _is_view_root(ino):
            with self._views_lock:
                self._held_views.discard(ino)
                view = self._superseded.pop(ino, None)
                if view is not None:
                    self._unused_views.append(view)

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
        self.db.sync_data()             # the slow part, while copies go on (they need the lock)
        self.db.sync_data()             # what they copied meanwhile: little is left for the flush
        with self.lock:                 # writers take plantdb's locks, then files.json's: same order
            scans = list(self.db._dirty)
            self.db.flush()
            for scan in scans:          # files.json rewritten: their folders' mtimes
                self.refresh_folders(scan)
        self._close_unused_views()

    def sync_due(self) -> bool:
        return self.db.flush_due() or bool(self._unused_views)

    def status(self) -> dict:
        return {"scans": len(self.db.scans), "lock": None if self.db.files.remote else self.db._lock.path,
                **(self.db.files.status() if self.db.files.remote else {}),
                "work": dict(self.counts + self.db.counts),
                **({"learning_ahead": not self.learner.idle(), "learning_ahead_cpu_s": self.learner.cpu_ns / 1e9}
                   if self.learner is not None else {})}

    def close(self) -> None:
        if self.learner is not None:
            self.learner.close()
        super().close()
        self.db.disconnect()
        self.db.files.close()
