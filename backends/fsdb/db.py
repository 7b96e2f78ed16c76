"""The FSDB API of romidata/plantdb, on the real layout, with safe locking and atomic writes.

    from scopefs.backends.fsdb import FSDB, io
    db = FSDB(path); db.connect()
    scan = db.create_scan("myscan_001"); scan.set_metadata({"scanner": {...}})
    fileset = scan.create_fileset("images")
    file = fileset.create_file("0"); io.write_image(file, img); file.set_metadata("key", "0")
    db.disconnect()

Locking: `connect()` creates the root `lock` exclusively (romidata and plantdb <= 0.14
then see the database busy), writes who holds it into it, and keeps an OS lock (flock)
on it while connected. A lock whose holder is provably gone (a scopefs lock on this host
whose flock is free and whose process is dead) is broken with a warning; any other lock
(an empty legacy one, another host's, a live holder's) makes `connect()` fail with
DBBusyError naming the holder, unless `break_lock=True`. Writes also take plantdb 0.17's
per-resource flock files under `.locks/`.

Writes: data first (temporary file + rename), then `files.json` is re-read, changed and
replaced atomically, so nothing another writer added is lost and a crash at any point
leaves a database that romidata, plantdb and this module open.

With `register_lazily` (the mount sets it), new data is registered in `files.json` in
batches (`flush()`: when due, at fsync, at disconnect), so adding N files to a scan
rewrites it a few times, not N times. Until then upstream readers do not see the new
files (no partial file is ever visible), and each registration is appended to a journal
(`.scopefs-journal`) that the next `connect()` replays, so a killed writer loses no file
whose writer had closed it. New data need not be on disk yet when it is registered
lazily: a flush makes it durable before files.json names it (a batch by one syncfs of
its filesystem), and a replay registers only files of the journaled size. Removals are
written at once (with whatever is pending); so are renames, whose data moves first,
journaled (a replay finishes a rename whose data moved: `Fileset.finish_rename`).
A lazy database's writes and `flush()` must not run concurrently (the mount serializes
them with its lock): a flush takes plantdb's fileset locks, which writers hold before
they register.

Metadata JSON is read on first use, not at connect.

Refused requests raise FileExistsError and FileNotFoundError (IOErrors, as romidata's
callers expect, without an errno); bad identifiers raise ValueError.
"""
from __future__ import annotations

import copy
import datetime as _dt
import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections import Counter, OrderedDict
from contextlib import ExitStack, contextmanager

from ...formats import fsdb as layout
from ..kernel import process_alive, syncfs, wait_written
from ..storage import LocalFiles, RemoteFiles

log = logging.getLogger(__name__)

LOCK_TIMEOUT = 30.0
#: metadata kept in memory, in bytes of its JSON (a parsed document takes a few times
#: that); the least recently used documents are read again when asked for
METADATA_KEPT_BYTES = 32 << 20
#: lazy registrations are written to files.json at most once per this many times what its
#: last write took (then its rewrites take at most 1/20 of a long copy's time)
FLUSH_SPACING = 20


class DBBusyError(OSError):
    """The database is locked by someone else; the message names the holder."""

    def __init__(self, message: str):
        super().__init__(errno.EBUSY, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class NotAnFSDBError(OSError):
    pass


def _describe(holder: dict | None) -> str:
    if not holder:
        return "a client that records no owner (romidata or plantdb <= 0.14)"
    return (f"{holder.get('program', '?')} (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
            f"since {holder.get('since', '?')})")


class RootLock:
    """The root `lock` file, held exclusively for a connection's life."""

    def __init__(self, root: str):
        self.path = os.path.join(root, layout.LOCK)
        self._fd: int | None = None

    def holder(self) -> dict | None:
        try:
            with open(self.path, "rb") as fh:
                text = fh.read()
            doc = json.loads(text) if text.strip() else None
            return doc if isinstance(doc, dict) else None
        except (OSError, ValueError):
            return None

    def _is_stale(self) -> bool:
        """Provably abandoned: our kind of lock, from this host, flock free, pid dead."""
        holder = self.holder()
        if not holder or holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
            return False
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        finally:
            os.close(fd)
        return not process_alive(holder["pid"])

    def acquire(self, break_lock: bool = False) -> None:
        for attempt in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o644)
                break
            except FileExistsError:
                holder = self.holder()
                if attempt == 0 and (break_lock or self._is_stale()):
                    log.warning("breaking the lock of %s on %s: %s", _describe(holder), self.path,
                                "asked to" if break_lock and not self._is_stale() else "its holder is gone")
                    try:
                        os.unlink(self.path)
                    except FileNotFoundError:
                        pass
                    continue
                raise DBBusyError(f"{os.path.dirname(self.path)} is in use by {_describe(holder)}; "
                                  f"if that is wrong, remove {self.path}") from None
        else:
            raise DBBusyError(f"{self.path}: could not take the lock")
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        program = os.path.basename(sys.argv[0] or "python")
        info = {"holder": "scopefs", "program": " ".join(["scopefs" if program == "__main__.py" else program] + sys.argv[1:3]),
                "pid": os.getpid(), "host": socket.gethostname(),
                "since": _dt.datetime.now().astimezone().isoformat(timespec="seconds")}
        os.write(fd, json.dumps(info).encode())
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None


class _HeldLock:
    def __init__(self):
        self.thread_lock = threading.RLock()     # threads of this process, re-entrant
        self.fd: int | None = None               # the flock, taken once per outermost use
        self.depth = 0


_held: dict[str, _HeldLock] = {}
_held_guard = threading.Lock()


@contextmanager
def resource_lock(root: str, *parts: str, timeout: float = LOCK_TIMEOUT, root_changes: _RootChanges | None = None):
    """plantdb 0.17's lock for a scan, fileset or file: flock on `.locks/<a>_<b>_<c>.lock`.
    Re-entrant within a thread (flocks of one process through two descriptors would
    exclude each other). The file is left in place; plantdb removes free ones. Making
    the locks' folder is counted in `root_changes` (the database's)."""
    path = os.path.join(root, layout.LOCKS_DIR, "_".join(parts) + ".lock")
    with _held_guard:
        held = _held.get(path)
        if held is None:                        # (made once a path: a commit takes it per file)
            held = _held[path] = _HeldLock()
    with held.thread_lock:
        if held.depth == 0:
            held.fd = _flock(path, parts, timeout, root_changes)
        held.depth += 1
        try:
            yield
        finally:
            held.depth -= 1
            if held.depth == 0 and held.fd is not None:
                os.close(held.fd)
                held.fd = None


class _RootChanges:
    """Folders one database's writes made in its root folder (the locks' folder), counted
    from any thread: whether the root's mtime may have moved (`FSDB.root_changes`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.locks_folders_made = 0

    def locks_folder_made(self) -> None:
        with self._lock:
            self.locks_folders_made += 1


def _flock(path: str, parts: tuple[str, ...], timeout: float, root_changes: _RootChanges | None) -> int | None:
    try:
        try:
            fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:               # (the locks' folder, made once)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if root_changes is not None:
                root_changes.locks_folder_made()
            fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644)
    except OSError as exc:                      # a read-only database: nothing to coordinate
        log.debug("no plantdb lock for %s: %s", parts, exc)
        return None
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise DBBusyError(f"{'/'.join(parts)} stayed locked by another program for {timeout:g} s") from None
            time.sleep(0.1)


class _Metadata:
    """get_metadata/set_metadata over one JSON file, read on first use and kept in memory
    while among the database's most recently used (`METADATA_KEPT_BYTES` in all; the file
    always holds what was set: writes go to it first). `md_version` counts changes (views
    derived from the metadata key on it)."""

    _md_path: str
    _md_loaded: dict | None = None
    md_version = 0

    @property
    def _md(self) -> dict:
        doc = self._md_loaded
        if doc is None:
            db = self._db()
            db.counts["metadata_reads"] += 1
            size = 0

            def read(path: str) -> bytes:
                nonlocal size
                data = db.files.read(path)
                size = len(data)
                return data
            try:
                doc = layout.read_json(self._md_path, {}, read)
            except ValueError:
                log.warning("%s is not valid JSON; it reads as {}", self._md_path)
                doc = {}
            doc = self._md_loaded = doc if isinstance(doc, dict) else {}
            db._keep_metadata(self, size)
        else:
            self._db()._keep_metadata(self)
        return doc

    def _written(self, doc: dict) -> None:
        """`doc` was written to the metadata file: it is the metadata now."""
        self._md_loaded = doc
        self.md_version += 1
        self._db()._keep_metadata(self, os.path.getsize(self._md_path))

    def get_metadata(self, key: str | None = None, default=None):
        if key is None:
            return copy.deepcopy(self._md)
        return copy.deepcopy(self._md.get(key, default))

    def set_metadata(self, data, value=None) -> None:
        """A key and its value, or a dict merged at the top level."""
        if isinstance(data, str):
            if value is None:
                raise IOError(f"No value given for key {data}")
            update = {data: value}
        elif isinstance(data, dict):
            update = data
        else:
            raise IOError(f"metadata must be a key and value or a dict, not {type(data).__name__}")
        json.dumps(update)                          # refuse what JSON cannot hold, before writing
        with self._write_lock():
            merged = dict(self._md)
            merged.update(copy.deepcopy(update))
            os.makedirs(os.path.dirname(self._md_path), exist_ok=True)
            layout.write_json(self._md_path, merged)
            self._written(merged)

    def replace_metadata(self, data: dict) -> None:
        """Set the whole metadata dict (what editing its JSON file through the mount does)."""
        if not isinstance(data, dict):
            raise ValueError("metadata must be a JSON object")
        with self._write_lock():
            os.makedirs(os.path.dirname(self._md_path), exist_ok=True)
            layout.write_json(self._md_path, data)
            self._written(copy.deepcopy(data))


class File(_Metadata):
    def __init__(self, fileset: "Fileset", file_id: str, filename: str | None):
        self.fileset = fileset
        self.id = file_id
        self.filename = filename
        self._md_path = layout.file_metadata_path(fileset.scan.path(), fileset.id, file_id)

    def _db(self) -> "FSDB":
        return self.fileset.scan.db

    def _write_lock(self):
        return self.fileset.scan.db._writing(self.fileset.scan.id, self.fileset.id, self.id)

    def path(self) -> str:
        if self.filename is None:
            raise FileNotFoundError(f"file {self.id} has no data yet")
        return os.path.join(self.fileset.path(), self.filename)

    def get_id(self) -> str:
        return self.id

    def import_file(self, path: str) -> None:
        ext = os.path.splitext(path)[1].lstrip(".")
        with open(path, "rb") as fh:
            self.write_raw(fh.read(), ext)

    def write_raw(self, data: bytes, ext: str = "") -> None:
        filename = layout.file_name(self.id, ext)
        with self.fileset.scan.db._writing(self.fileset.scan.id, self.fileset.id):
            layout.atomic_write(os.path.join(self.fileset.path(), filename), bytes(data))
            self._registered_as(filename)

    def adopt(self, finished: str, filename: str, durable: bool = False, size: int | None = None) -> None:
        """Make a finished file (written beside its final place) this file's data, named
        `filename` (the mount's name as given: `notes` stays `notes`, where upstream's naming
        from an extension would make it `notes.`): one rename, then files.json. Large files
        need not pass through memory. `durable` (a rename of registered data): the folder
        is fsynced before files.json names the new name (a power cut cannot leave files.json
        naming a name the folder lost). `size`: the finished file's, if known (else stat'ed
        for the journal)."""
        with self.fileset.scan.db._writing(self.fileset.scan.id, self.fileset.id):
            os.replace(finished, os.path.join(self.fileset.path(), filename))
            if durable:
                _fsync(self.fileset.path())
            self._registered_as(filename, size)

    def _registered_as(self, filename: str, size: int | None = None) -> None:
        old, self.filename = self.filename, filename
        if old == filename and not self._db().register_lazily:
            return                              # new data under a name files.json has
        # (lazily, new data is journaled again: a replay checks the size it has now)
        self.fileset._register(self, old, os.path.join(self.fileset.path(), filename), size)
        if old and old != filename:
            _unlink(os.path.join(self.fileset.path(), old))

    def read_raw(self) -> bytes:
        return self._db().files.read(self.path())

    def write(self, data: str, ext: str = "") -> None:
        self.write_raw(data.encode(), ext)

    def read(self) -> str:
        return self.read_raw().decode()

    def __repr__(self) -> str:
        return f"<File {self.fileset.scan.id}/{self.fileset.id}/{self.id}>"


class Fileset(_Metadata):
    def __init__(self, scan: "Scan", fileset_id: str, entries: list[dict] | None = None):
        self.scan = scan
        self.id = fileset_id
        self.files: dict[str, File] = {}
        self.by_name: dict[str, File] = {}          # registered files by file name
        self._path = os.path.join(scan.path(), fileset_id)
        self._md_path = layout.fileset_metadata_path(scan.path(), fileset_id)
        for entry in entries or []:
            fid, fname = entry.get("id"), entry.get("file")
            if not isinstance(fid, str) or not isinstance(fname, str):
                log.warning("%s/%s: skipping a files.json entry without id or file name: %r",
                            scan.id, fileset_id, entry)
                continue
            self.files[fid] = self.by_name[fname] = File(self, fid, fname)

    def _db(self) -> "FSDB":
        return self.scan.db

    def _write_lock(self):
        return self.scan.db._writing(self.scan.id, self.id)

    def path(self) -> str:
        return self._path

    def get_id(self) -> str:
        return self.id

    def get_files(self, query=None) -> list[File]:
        files = list(self.files.values())
        if query:
            files = [f for f in files if all(f.get_metadata(k) == v for k, v in query.items())]
        return files

    def list_files(self) -> list[str]:
        return list(self.files)

    def file_named(self, filename: str) -> File | None:
        return self.by_name.get(filename)

    def get_file(self, file_id: str, create: bool = False) -> File | None:
        found = self.files.get(file_id)
        if found is None and create:
            return self.create_file(file_id)
        return found

    def file_exists(self, file_id: str) -> bool:
        return file_id in self.files

    def create_file(self, file_id: str) -> File:
        """A new file; it is registered in files.json once it has data (an entry without a
        file name would make plantdb 0.14 refuse the whole database)."""
        _check_id(file_id, strict=False)
        if file_id in self.files:
            raise FileExistsError(f"file {file_id} already exists in {self.scan.id}/{self.id}")
        file = File(self, file_id, None)
        self.files[file_id] = file
        return file

    def delete_file(self, file_id: str) -> None:
        file = self.files.get(file_id)
        if file is None:
            raise FileNotFoundError(f"no file {file_id} in {self.scan.id}/{self.id}")
        with self.scan.db._writing(self.scan.id, self.id):
            self._drop_entry(file)
            if file.filename:
                _unlink(os.path.join(self.path(), file.filename))

    def rename_file(self, file_id: str, new_name: str) -> File:
        """A file under a new name (and the id it gives): data and metadata move with it.
        Onto a registered file of that name, it replaces that file, data and metadata (what
        `mv` does: the name shows what was moved); onto an id that another name holds,
        FileExistsError. The data moves by one rename, journaled first: a writer killed
        after it is completed by the next connect (`_replay_journal`)."""
        new_id = layout.split_name(new_name)[0]
        _check_id(new_id, strict=False)
        file = self.files.get(file_id)
        if file is None:
            raise FileNotFoundError(f"no file {file_id} in {self.scan.id}/{self.id}")
        target = self.files.get(new_id) if new_id != file_id else None
        if target is not None and target.filename != new_name:
            raise FileExistsError(f"file {new_id} already exists in {self.scan.id}/{self.id}")
        metadata = file.get_metadata()
        moved = target or (File(self, new_id, None) if new_id != file_id else file)
        with self.scan.db._writing(self.scan.id, self.id):
            if file.filename and file.filename != new_name:
                with self.scan.db._files_lock:      # (as a flush empties the journal)
                    self.scan.db._journal([self.scan.id, self.id, file_id, file.filename, None, new_id, new_name],
                                          durable=True)
            if moved is file:
                if file.filename:
                    file.adopt(file.path(), new_name, durable=True)
                return file
            if file.filename:
                moved.adopt(file.path(), new_name, durable=True)
            self.files[new_id] = moved
            self._took_metadata(moved, metadata)
            self._drop_entry(file)
        return moved

    def finish_rename(self, file_id: str, filename: str, new_id: str, new_name: str | None) -> None:
        """A rename of `file_id`'s data (`filename`) onto `new_id`'s name `new_name`,
        journaled by a writer that stopped: done if its data moved (the name is gone) and
        files.json still names it (then its metadata has not been removed yet, and goes to
        `new_id`; files.json names the new name)."""
        file = self.files.get(file_id)
        if file is None:                        # all done, or its data not yet in files.json
            self._finish_rename_of_unnamed(file_id, new_id, new_name)
            return
        if file.filename != filename or os.path.lexists(file.path()):
            return                              # not begun, or all done
        moved = new_name is not None and os.path.lexists(os.path.join(self.path(), new_name))
        log.warning("%s/%s: finished renaming %s, which a writer that stopped had begun",
                    self.scan.id, self.id, filename)
        if new_id == file_id:                   # another extension: only the name changes
            if moved:
                file._registered_as(new_name)
            return
        target = self.files.get(new_id)
        if target is None and moved:            # stopped before the new file was journaled
            target = self.files[new_id] = File(self, new_id, None)
            target._registered_as(new_name)
        if target is not None:
            self._took_metadata(target, file.get_metadata())
        self._drop_entry(file)

    def _finish_rename_of_unnamed(self, file_id: str, new_id: str, new_name: str | None) -> None:
        """A journaled rename of a file files.json does not name: all done but removing its
        metadata, or (registered lazily, not flushed) its data moved to `new_name` before
        files.json was written: then `new_name` is registered and the metadata, if still
        there, goes with it (again, if the rename had moved it: the same)."""
        md_path = layout.file_metadata_path(self.scan.path(), self.id, file_id)
        if new_name is None or not os.path.lexists(os.path.join(self.path(), new_name)):
            _unlink(md_path)
            return
        target = self.files.get(new_id)
        if target is None:
            log.warning("%s/%s: registered %s, renamed by a writer that stopped before writing "
                        "files.json", self.scan.id, self.id, new_name)
            target = self.files[new_id] = File(self, new_id, None)
            target._registered_as(new_name)
        if new_id == file_id or target.filename != new_name or not os.path.exists(md_path):
            return
        self._took_metadata(target, File(self, file_id, None).get_metadata())
        _unlink(md_path)

    def _took_metadata(self, moved: File, metadata: dict) -> None:
        """`moved` describes what moved onto it: its metadata is the moved file's."""
        if metadata:
            moved.replace_metadata(metadata)
        elif os.path.exists(moved._md_path):
            _unlink(moved._md_path)
            moved._md_loaded = None
            moved.md_version += 1

    def _drop_entry(self, file: File) -> None:
        """files.json no longer names `file` (written at once), its metadata gone: deleted,
        or its data went to another id."""
        self.scan._update_files_json(lambda doc: doc.remove_file(self.id, file.id))
        if self.files.get(file.id) is file:
            del self.files[file.id]
        self._unindex(file)
        _unlink(file._md_path)

    def _register(self, file: File, old_name: str | None, data_path: str, size: int | None = None) -> None:
        """files.json names `file` (now, or lazily if nothing else changes in it; `size`:
        its data's, if known)."""
        if old_name and self.by_name.get(old_name) is file:
            del self.by_name[old_name]
        self.by_name[file.filename] = file
        file_id, filename = file.id, file.filename
        # a new name for data whose old name goes now is written at once: files.json
        # must not name the old one a moment longer than the disk has it
        lazily = (self.id, file_id, filename, data_path, size) if old_name in (None, filename) else None
        self.scan._update_files_json(lambda doc: doc.put_file(self.id, file_id, filename), lazily=lazily)

    def _unindex(self, file: File) -> None:
        if file.filename and self.by_name.get(file.filename) is file:
            del self.by_name[file.filename]

    def __repr__(self) -> str:
        return f"<Fileset {self.scan.id}/{self.id}>"


class Scan(_Metadata):
    def __init__(self, db: "FSDB", scan_id: str):
        self.db = db
        self.id = scan_id
        self._path = os.path.join(db.basedir, scan_id)     # (asked for at every write)
        self._md_path = layout.scan_metadata_path(self.path())
        self.filesets: dict[str, Fileset] = {}
        self._pending: list = []                    # changes to files.json not written yet
        self._pending_filesets: set[str] = set()
        self._pending_data: list[str] = []          # lazily registered data, to fsync first
        self._writes = 0                            # of files.json (what was pending is gone)
        try:
            db.counts["files_json_reads"] += 1
            doc = layout.read_json(os.path.join(self.path(), layout.FILES_JSON), {"filesets": []}, db.files.read)
        except ValueError as exc:
            raise NotAnFSDBError(errno.EINVAL, f"{self.path()}/files.json is not JSON: {exc}") from None
        for entry in doc.get("filesets", []) if isinstance(doc, dict) else []:
            if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                self.filesets[entry["id"]] = Fileset(self, entry["id"], entry.get("files", []))

    def _db(self) -> "FSDB":
        return self.db

    def _write_lock(self):
        return self.db._writing(self.id)

    def path(self) -> str:
        return self._path

    def get_id(self) -> str:
        return self.id

    def get_filesets(self, query=None) -> list[Fileset]:
        return list(self.filesets.values())

    def list_filesets(self) -> list[str]:
        return list(self.filesets)

    def get_fileset(self, fileset_id: str, create: bool = False) -> Fileset | None:
        found = self.filesets.get(fileset_id)
        if found is None and create:
            return self.create_fileset(fileset_id)
        return found

    def fileset_exists(self, fileset_id: str) -> bool:
        return fileset_id in self.filesets

    def create_fileset(self, fileset_id: str, metadata: dict | None = None) -> Fileset:
        _check_id(fileset_id)
        if fileset_id in self.filesets:
            raise FileExistsError(f"fileset {fileset_id} already exists in {self.id}")
        with self.db._writing(self.id, fileset_id):
            os.makedirs(os.path.join(self.path(), fileset_id), exist_ok=True)
            self._update_files_json(lambda doc: doc.fileset(fileset_id))
            fileset = self.filesets[fileset_id] = Fileset(self, fileset_id)
        if metadata:
            fileset.set_metadata(metadata)
        return fileset

    def delete_fileset(self, fileset_id: str) -> None:
        fileset = self.filesets.get(fileset_id)
        if fileset is None:
            raise FileNotFoundError(f"no fileset {fileset_id} in {self.id}")
        with self.db._writing(self.id, fileset_id):
            self._update_files_json(lambda doc: doc.remove_fileset(fileset_id))
            del self.filesets[fileset_id]
            self.db._discard(fileset.path())
            self.db._discard(os.path.join(self.path(), layout.METADATA_DIR, fileset_id))
            _unlink(fileset._md_path)

    def _update_files_json(self, change, lazily: tuple[str, str, str, str, int | None] | None = None) -> None:
        """Re-read files.json, apply the pending changes and `change`, replace it atomically:
        what another writer added meanwhile is kept. A registration (`lazily`: fileset,
        file id, file name, data path, data size or None) waits for `flush` if the database
        registers lazily."""
        with self.db._files_lock:
            self._pending.append(change)
            if lazily is not None and self.db.register_lazily:
                fileset_id, file_id, filename, data_path, size = lazily
                self._pending_filesets.add(fileset_id)
                self._pending_data.append(data_path)
                self.db._journal([self.id, fileset_id, file_id, filename,
                                  os.path.getsize(data_path) if size is None else size])
                self.db._dirty.setdefault(self.id, time.monotonic())
                return
            self._write_pending()

    def _write_pending(self) -> None:
        """Write what is pending (with the files.json lock held)."""
        path = os.path.join(self.path(), layout.FILES_JSON)
        with ExitStack() as locks:
            for fileset_id in sorted(self._pending_filesets):       # plantdb's writers take these
                locks.enter_context(self.db._writing(self.id, fileset_id))
            self.db._make_durable(self._pending_data)
            self.db.counts["files_json_reads"] += 1
            try:
                doc = layout.read_json(path, {"filesets": []})
            except ValueError:
                log.warning("%s was not valid JSON; rewriting it from memory", path)
                doc = self._files_doc()
            if not isinstance(doc, dict) or not isinstance(doc.get("filesets"), list):
                doc = self._files_doc()
            indexed = _FilesDoc(doc)
            for change in self._pending:
                change(indexed)
            layout.write_json(path, doc)
            self.db.counts["files_json_writes"] += 1
            self._pending.clear()
            self._pending_filesets.clear()
            self._pending_data.clear()
            self._writes += 1
            self.db._dirty.pop(self.id, None)

    def _files_doc(self) -> dict:
        return {"filesets": [{"files": [{"file": f.filename, "id": f.id} for f in fs.files.values() if f.filename],
                              "id": fs.id} for fs in self.filesets.values()]}

    def __repr__(self) -> str:
        return f"<Scan {self.id}>"


class FSDB:
    def __init__(self, basedir: str, files: RemoteFiles | None = None):
        """A database on local disk, or read-only in an object store (`files`, with the
        database's URL as `basedir`)."""
        basedir = os.fspath(basedir)
        self.files = files or LocalFiles()
        if not self.files.remote:
            basedir = os.path.abspath(basedir)
        if not self.files.isdir(basedir):
            raise NotAnFSDBError(errno.ENOTDIR, f"Not a directory: {basedir}")
        if not self.files.isfile(os.path.join(basedir, layout.MARKER)):
            raise NotAnFSDBError(errno.EINVAL, f"Not a DB. Check that there is a marker named "
                                               f"{layout.MARKER} in {basedir}")
        self.basedir = basedir
        self.scans: dict[str, Scan] = {}
        self.is_connected = False
        self.register_lazily = False
        self.register_delay = 1.0                   # seconds a lazy registration may wait
        self._last_flush_s = 0.0                    # what the last write of files.json took
        #: work done, for tests and status: files_json_reads/_writes, metadata_reads
        self.counts: Counter[str] = Counter()
        self._lock = RootLock(self.basedir)
        self._files_lock = threading.RLock()
        self._sync_lock = threading.Lock()          # sync_data, one at a time
        self._dirty: dict[str, float] = {}          # scans with lazy registrations: since when
        self._metadata_kept: OrderedDict[int, tuple[_Metadata, int]] = OrderedDict()   # by id: (obj, bytes)
        self._metadata_bytes = 0
        self._metadata_lock = threading.Lock()
        self._journal_fd: int | None = None
        self._journal_opens = 0                     # (each made the journal, in the root folder)
        self._journal_named = False                 # the root folder fsynced since it was made
        self._root_changes = _RootChanges()

    def connect(self, login_data=None, unsafe: bool = False, break_lock: bool = False) -> None:
        """Take the database (see the module's notes on locking) and load its scans.
        `login_data` is accepted as romidata accepts it; FSDB files carry no users."""
        del login_data
        if self.is_connected:
            return
        if self.files.remote:                   # read-only: nothing to lock, clean or replay
            self.reload()
            self.is_connected = True
            return
        if not unsafe:
            self._lock.acquire(break_lock=break_lock)
        try:
            self._clean_staging()
            self.reload()
            self._replay_journal()
        except BaseException:
            self._lock.release()
            raise
        self.is_connected = True

    def disconnect(self) -> None:
        if self._lock._fd is not None or self.is_connected:
            try:
                self.flush()
            except OSError as exc:              # the journal keeps them for the next connect
                log.error("%s: new files could not be written to files.json: %s", self.basedir, exc)
        if self._lock._fd is not None:
            self._clean_staging()
        self._lock.release()
        self.scans = {}
        self._metadata_kept.clear()
        self._metadata_bytes = 0
        self.is_connected = False

    def sync_data(self) -> None:
        """Make the data of lazy registrations durable, holding no lock while it waits for
        the disk (what `flush` then writes to files.json is fsynced by now; data registered
        meanwhile `flush` fsyncs itself). One at a time: a flush's fsyncs are not repeated."""
        with self._sync_lock:
            with self._files_lock:
                batches = [(scan, scan._writes, list(scan._pending_data))
                           for scan in map(self.scans.get, self._dirty) if scan is not None]
            for _, _, paths in batches:
                self._make_durable(paths)
            with self._files_lock:
                for scan, writes, paths in batches:
                    if scan._writes == writes:      # else files.json was written meanwhile
                        del scan._pending_data[:len(paths)]

    def flush(self) -> None:
        """Write every lazy registration to files.json (then the journal is emptied)."""
        started = time.monotonic()
        with self._files_lock:
            for scan_id in list(self._dirty):
                scan = self.scans.get(scan_id)
                if scan is None:
                    self._dirty.pop(scan_id)
                else:
                    scan._write_pending()
            if self._journal_fd is not None:
                self._remove_journal()
            self._last_flush_s = time.monotonic() - started

    def _keep_metadata(self, obj: _Metadata, size: int | None = None) -> None:
        """`obj` used its metadata (loaded anew: `size` bytes of JSON): keep it in memory,
        let the least recently used go (the last one used stays, however large)."""
        with self._metadata_lock:
            kept = self._metadata_kept
            if size is not None:
                self._metadata_bytes += size - kept.pop(id(obj), (obj, 0))[1]
                kept[id(obj)] = (obj, size)
            elif id(obj) in kept:
                kept.move_to_end(id(obj))
            while self._metadata_bytes > METADATA_KEPT_BYTES and len(kept) > 1:
                old, old_size = kept.popitem(last=False)[1]
                old._md_loaded = None
                self._metadata_bytes -= old_size

    def flush_due(self) -> bool:
        """Some registration has waited `register_delay` seconds, and FLUSH_SPACING times
        what the last write of files.json took: rewriting a files.json that grows with
        each copied file (its every entry, each time) stays a bounded share of a copy's
        time, so the cost per copied file does not grow with the fileset."""
        oldest = min(self._dirty.values(), default=None)
        return (oldest is not None
                and time.monotonic() - oldest >= max(self.register_delay, FLUSH_SPACING * self._last_flush_s))

    def _make_durable(self, paths: list[str]) -> None:
        """The data at `paths` durable (a group commit): one file by its fsync, more by one
        `syncfs` of their filesystem, one commit of its journal and one cache flush for all,
        where an fsync per new file commits the journal anew each time (and a copy's next
        create waits for that commit). Each file's write-back error, if any, is still
        reported (`_wait_written`); if the syncfs fails, each file's fsync says whether the
        error was one of these files'."""
        by_device: dict[int, tuple[str, list[str]]] = {}
        for folder, files in _by_folder(paths).items():
            try:
                device = os.stat(folder).st_dev
            except FileNotFoundError:           # removed since: nothing to keep
                continue
            by_device.setdefault(device, (folder, []))[1].extend(files)
        for folder, files in by_device.values():
            if len(files) > 1:
                self.counts["data_syncfs"] += 1
                try:
                    _syncfs(folder)
                except OSError as exc:
                    log.debug("syncfs of %s: %s; each file is fsynced", folder, exc)
                else:
                    for path in files:
                        _wait_written(path)
                    continue
            for path in files:
                self.counts["data_fsyncs"] += 1
                _fsync(path)

    def root_changes(self) -> tuple[int, int]:
        """Counts that move when a write makes something in the root folder (the journal,
        the locks' folder): whether its mtime may have moved."""
        return self._journal_opens, self._root_changes.locks_folders_made

    def _journal(self, entry: list, durable: bool = False) -> None:
        """Note a lazy registration, or a rename about to move data, where the next
        connect() finds it (one append). `durable` (a rename): on disk before this returns,
        with the journal's name if this made it (a power cut then cannot leave files.json
        naming data that moved)."""
        if self._journal_fd is None:
            self._journal_fd = os.open(os.path.join(self.basedir, layout.JOURNAL),
                                       os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
            self._journal_opens += 1
            self._journal_named = False
        os.write(self._journal_fd, json.dumps(entry).encode() + b"\n")
        if durable:
            os.fsync(self._journal_fd)
            if not self._journal_named:
                _fsync(self.basedir)
                self._journal_named = True

    def _replay_journal(self) -> None:
        """Register what a writer that died before its flush had journaled: files whose
        data is in place and whose id files.json does not name otherwise; then finish the
        renames whose data had moved."""
        path = os.path.join(self.basedir, layout.JOURNAL)
        try:
            with open(path, "rb") as fh:
                lines = fh.read().splitlines()
        except FileNotFoundError:
            return
        registrations, renames = {}, []         # (a rename's line must not hide a registration)
        for line in lines:
            try:
                scan_id, fileset_id, file_id, filename, size, *onto = json.loads(line)
            except (ValueError, TypeError):
                continue                        # a line cut short by the crash
            if onto:
                renames.append((scan_id, fileset_id, file_id, filename, onto[0], onto[1] if len(onto) > 1 else None))
            else:
                registrations[scan_id, fileset_id, file_id] = filename, size
        found = 0
        for (scan_id, fileset_id, file_id), (filename, size) in registrations.items():
            scan = self.scans.get(scan_id)
            fileset = scan and scan.filesets.get(fileset_id)
            if fileset is None or _size(os.path.join(fileset.path(), filename)) != size:
                continue                        # gone, or not all on disk (a power cut)
            file = fileset.files.get(file_id)
            if file is not None and file.filename is not None:
                continue
            file = fileset.files[file_id] = File(fileset, file_id, None)
            file.filename = filename
            fileset.by_name[filename] = file
            scan._pending.append(lambda doc, f=fileset_id, i=file_id, n=filename: doc.put_file(f, i, n))
            self._dirty.setdefault(scan_id, 0.0)
            found += 1
        if found:
            log.warning("registered %d file(s) that a writer which stopped had not yet written to "
                        "files.json", found)
        for scan_id, fileset_id, file_id, filename, new_id, new_name in renames:  # in journal order
            scan = self.scans.get(scan_id)
            fileset = scan and scan.filesets.get(fileset_id)
            if fileset is not None:
                fileset.finish_rename(file_id, filename, new_id, new_name)
        with self._files_lock:
            for scan_id in list(self._dirty):
                self.scans[scan_id]._write_pending()
            self._remove_journal()

    def _remove_journal(self) -> None:
        """What the journal held is in files.json: it goes, with this writer's descriptor
        (a later line starts a new journal, not one no connect would find)."""
        if self._journal_fd is not None:
            os.close(self._journal_fd)
            self._journal_fd = None
        _unlink(os.path.join(self.basedir, layout.JOURNAL))

    def reload(self) -> None:
        found = layout.scan_dirs(self.basedir, self.files.listdir, self.files.isfile)
        self.scans = {sid: Scan(self, sid) for sid in found}



    def path(self) -> str:
        return self.basedir

    def get_scans(self, query=None) -> list[Scan]:
        return list(self.scans.values())

    def list_scans(self, query=None) -> list[str]:
        return list(self.scans)

    def scan_exists(self, scan_id: str) -> bool:
        return scan_id in self.scans

    def get_scan(self, scan_id: str, create: bool = False) -> Scan | None:
        found = self.scans.get(scan_id)
        if found is None and create:
            return self.create_scan(scan_id)
        return found

    def create_scan(self, scan_id: str, metadata: dict | None = None) -> Scan:
        """Assembled in a hidden staging folder (files.json, metadata/) and renamed into
        place, so a crash never leaves a scan folder plantdb would refuse the database for."""
        _check_id(scan_id)
        target = os.path.join(self.basedir, scan_id)
        if scan_id in self.scans or os.path.exists(target):
            raise FileExistsError(f"scan {scan_id} already exists")
        with self._writing(scan_id):
            staging = self._staging()
            build = tempfile.mkdtemp(prefix=f"new-{scan_id}-", dir=staging)
            os.makedirs(os.path.join(build, layout.METADATA_DIR))
            layout.write_json(layout.scan_metadata_path(build), metadata or {})
            layout.write_json(os.path.join(build, layout.FILES_JSON), {"filesets": []})
            os.rename(build, target)
            scan = self.scans[scan_id] = Scan(self, scan_id)
        return scan

    def delete_scan(self, scan_id: str) -> None:
        if scan_id not in self.scans:
            raise FileNotFoundError(f"no scan {scan_id}")
        with self._writing(scan_id):
            self._discard(os.path.join(self.basedir, scan_id))
            del self.scans[scan_id]

    # -- internals ----------------------------------------------------------------------
    def _writing(self, *parts: str):
        if not self.is_connected and self._lock._fd is None:
            raise IOError("not connected (call connect() first)")
        return resource_lock(self.basedir, *parts, root_changes=self._root_changes)

    def _staging(self) -> str:
        path = os.path.join(self.basedir, layout.STAGING)
        os.makedirs(path, exist_ok=True)
        return path

    def _discard(self, path: str) -> None:
        """Make a folder disappear at once (a rename), then remove it."""
        if not os.path.exists(path):
            return
        gone = os.path.join(self._staging(), f"deleted-{os.path.basename(path)}-{time.time_ns()}")
        os.rename(path, gone)
        shutil.rmtree(gone, ignore_errors=True)

    def _clean_staging(self) -> None:
        path = os.path.join(self.basedir, layout.STAGING)
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)


def _check_id(value: str, strict: bool = True) -> None:
    if not isinstance(value, str) or not value or "/" in value or value in (".", "..") or "\0" in value:
        raise ValueError(f"invalid identifier {value!r}")
    if strict and not layout.PLANTDB_ID.match(value):
        raise ValueError(f"invalid identifier {value!r}: plantdb accepts letters, digits, '_' and '-' "
                         f"(not first), up to 128")


def _size(path: str) -> int | None:
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def _fsync(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:                   # removed since: nothing to keep
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _by_folder(paths: list[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in paths:
        found.setdefault(os.path.dirname(path), []).append(path)
    return found


def _syncfs(folder: str) -> None:
    """Everything written to the filesystem of `folder` is durable (syncfs(2)); OSError if
    a write-back on it failed since (Linux >= 5.8) that no one has been told of."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        syncfs(fd, folder)
    finally:
        os.close(fd)


def _wait_written(path: str) -> None:
    """OSError if writing `path`'s data back failed (after `_syncfs`, which reports such an
    error only once for the whole filesystem, perhaps to another process): the file's own
    error, as its fsync would report it, without another flush of the disk's cache."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:                   # removed since: nothing to keep
        return
    try:
        wait_written(fd, path)
    finally:
        os.close(fd)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class _FilesDoc:
    """files.json being changed, its filesets and files found by id through indexes made
    on first use, so a batch of k registrations costs time linear in k and the document."""

    def __init__(self, doc: dict):
        self.doc = doc
        self._filesets: dict[str, dict] | None = None
        self._files: dict[str, dict[str, dict]] = {}

    def fileset(self, fileset_id: str) -> dict:
        """The fileset's entry (added if missing)."""
        if self._filesets is None:
            self._filesets = {}
            for entry in self.doc["filesets"]:
                if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                    self._filesets.setdefault(entry["id"], entry)
        entry = self._filesets.get(fileset_id)
        if entry is None:
            entry = self._filesets[fileset_id] = {"files": [], "id": fileset_id}
            self.doc["filesets"].append(entry)
        if not isinstance(entry.get("files"), list):
            entry["files"] = []
        return entry

    def _files_of(self, fileset_id: str) -> dict[str, dict]:
        index = self._files.get(fileset_id)
        if index is None:
            index = self._files[fileset_id] = {}
            for entry in self.fileset(fileset_id)["files"]:
                if isinstance(entry, dict):
                    index.setdefault(entry.get("id"), entry)
        return index

    def put_file(self, fileset_id: str, file_id: str, filename: str) -> None:
        index = self._files_of(fileset_id)
        entry = index.get(file_id)
        if entry is not None:
            entry["file"] = filename
        else:
            entry = index[file_id] = {"file": filename, "id": file_id}
            self.fileset(fileset_id)["files"].append(entry)

    def remove_file(self, fileset_id: str, file_id: str) -> None:
        entry = self.fileset(fileset_id)
        entry["files"] = [f for f in entry["files"] if not (isinstance(f, dict) and f.get("id") == file_id)]
        self._files.pop(fileset_id, None)

    def remove_fileset(self, fileset_id: str) -> None:
        self.doc["filesets"] = [e for e in self.doc["filesets"]
                                if not (isinstance(e, dict) and e.get("id") == fileset_id)]
        self._filesets = None
        self._files.pop(fileset_id, None)
