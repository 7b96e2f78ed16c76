"""A local directory as a root, used through the OS directly (no fsspec on the hot path).

Every call is relative to a descriptor of the root directory (`*at` calls): paths never
grow by the root's own path, and a path too long for one call is walked in steps. As
the overlay side, new entries get the caller as owner (when the daemon is root: it
creates them, then gives them away, as a kernel filesystem would make them), and a
copy-up is written in the work directory, fsynced, then renamed into place.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import os
import shutil
import stat
import threading
from typing import Iterator

from ...formats.files import regular_made_blocking
from ..kernel import (LOCAL_FILESYSTEMS, cached_pages, filesystem_type, open_cached, open_without_atime,
                      rename_at, set_times)
from ..localfiles import LocalWriteHandle, OSFileHandle
from ..nodes import Attr, FileHandle, Owner, attr_of
from .root import Root
from .rules import WORK_DIR

COPY_BLOCK = 8 << 20
#: paths longer than this (bytes) are walked a directory at a time (PATH_MAX is 4096)
_ONE_CALL = 3072
#: paths of fewer characters than this are shorter than _ONE_CALL bytes, encoded or not
_SURELY_SHORT = _ONE_CALL // 4
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW


def _open_untouched(name: str, dir_fd: int, owner: int) -> int:
    """A file read ahead (`read_small`), not opened by anyone yet: its atime stays where
    O_NOATIME is allowed (tried only for the file's owner or root: others fail EPERM)."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    opener = functools.partial(os.open, name, dir_fd=dir_fd)
    if owner == os.geteuid() or os.geteuid() == 0:
        return open_without_atime(opener, flags)
    return opener(flags)


class LocalRoot(Root):
    real_owners = True

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self.fd = os.open(self.path, _DIR_FLAGS & ~os.O_NOFOLLOW)      # the root itself may be a link
        # answers from the kernel's caches (the *_cached methods) only on local storage
        self.local_storage = self.answers_from_caches = filesystem_type(self.path) in LOCAL_FILESYSTEMS
        self.as_root = os.geteuid() == 0         # only root gives entries away
        self._work_lock = threading.Lock()
        self._work_fd: int | None = None
        self._copies = itertools.count()

    def describe(self) -> str:
        return self.path

    def local_path(self, rel: str) -> str:
        return os.path.join(self.path, rel) if rel else self.path

    def close(self) -> None:
        for fd in (self.fd, self._work_fd):
            if fd is not None and fd >= 0:
                os.close(fd)
        self.fd = self._work_fd = -1

    # -- resolving relative to the root's descriptor ----------------------------------
    @contextlib.contextmanager
    def _at(self, rel: str) -> Iterator[tuple[int, str]]:
        """(directory fd, name in it) for rel; a path too long for one call is walked in
        steps, and the directory opened for it is closed after."""
        if not rel:
            yield self.fd, "."
            return
        if len(rel) < _SURELY_SHORT or len(os.fsencode(rel)) < _ONE_CALL:
            yield self.fd, rel
            return
        parent, _, name = rel.rpartition("/")
        fd = self.fd
        parts = parent.split("/")
        try:
            for start in range(0, len(parts), 15):    # 15 names of up to 255 bytes: < PATH_MAX
                step = os.open("/".join(parts[start:start + 15]), _DIR_FLAGS, dir_fd=fd)
                if fd != self.fd:
                    os.close(fd)
                fd = step
            yield fd, name
        finally:
            if fd != self.fd:
                os.close(fd)

    def _call(self, fn, rel: str, *args, **kwargs):
        if rel and len(rel) < _SURELY_SHORT:             # (what `_at` gives it, without its calls)
            return fn(rel, *args, dir_fd=self.fd, **kwargs)
        with self._at(rel) as (fd, name):
            return fn(name, *args, dir_fd=fd, **kwargs)

    # -- reading ------------------------------------------------------------------------
    def stat(self, rel: str) -> Attr | None:
        try:
            return attr_of(self._call(os.stat, rel, follow_symlinks=False))
        except (FileNotFoundError, NotADirectoryError):
            return None

    def listdir(self, rel: str, touch: bool = True) -> list[str] | None:
        try:
            fd = open_without_atime(functools.partial(self._call, os.open, rel), _DIR_FLAGS) if not touch \
                else self._call(os.open, rel, _DIR_FLAGS)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            return os.listdir(fd)
        finally:
            os.close(fd)

    def stat_many(self, rel: str, names: list[str]) -> list[Attr | None]:
        """Attrs of names in directory rel, each resolved from the open directory (no
        walk down the whole path per name)."""
        try:
            fd = self._call(os.open, rel, _DIR_FLAGS)
        except (FileNotFoundError, NotADirectoryError):
            return [None] * len(names)
        out: list[Attr | None] = []
        try:
            for name in names:
                try:
                    out.append(attr_of(os.stat(name, dir_fd=fd, follow_symlinks=False)))
                except (FileNotFoundError, NotADirectoryError):
                    out.append(None)
        finally:
            os.close(fd)
        return out

    def readlink(self, rel: str) -> str:
        return self._call(os.readlink, rel)

    def open_read(self, rel: str) -> FileHandle:
        local = self.local_storage
        fd = self._call(os.open, rel, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        return OSFileHandle(fd, drop_behind=True, release_blocks=not local, mapped=local)

    def read_whole(self, rel: str, size: int) -> bytes:
        fd = self._call(os.open, rel, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            return os.pread(fd, size, 0)
        finally:
            os.close(fd)

    def read_small(self, folder: str, names: list[str], limit: int) -> dict[str, tuple[Attr, bytes]]:
        try:
            dir_fd = self._call(os.open, folder, _DIR_FLAGS)
        except (FileNotFoundError, NotADirectoryError):
            return {}
        opened: list[tuple[str, int, Attr, bool]] = []
        out = {}
        try:
            for name in names:          # all asked of the disk first, then read: one wait for all
                try:            # (only regular files opened: opening a device may do something)
                    info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                    if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
                        continue
                    fd = _open_untouched(name, dir_fd, info.st_uid)
                except OSError:
                    continue
                info = attr_of(os.fstat(fd))
                if not stat.S_ISREG(info.mode) or info.size > limit:
                    os.close(fd)
                    continue
                uncached = cached_pages(fd) == 0
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
                opened.append((name, fd, info, uncached))
            for name, fd, info, uncached in opened:
                data = os.pread(fd, info.size + 1, 0)
                if uncached:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                if len(data) == info.size:          # (else changed while read: not given)
                    out[name] = info, data
        finally:
            for _, fd, _, _ in opened:
                os.close(fd)
            os.close(dir_fd)
        return out

    def statvfs(self) -> os.statvfs_result:
        return os.fstatvfs(self.fd)

    def handle_attr(self, handle: FileHandle) -> Attr | None:
        fd = handle.fileno() if hasattr(handle, "fileno") else -1
        try:
            return attr_of(os.fstat(fd)) if fd >= 0 else None
        except OSError:                 # released meanwhile
            return None

    # -- answered from the kernel's caches --------------------------------------------
    def open_read_cached(self, rel: str) -> FileHandle | None:
        """A read handle if finding and opening rel waits for nothing, else None (the
        worker's: FileNotFoundError if the kernel knows rel is missing). Opened O_NONBLOCK:
        an open that would wait (a lease held elsewhere breaking, a FIFO put in rel's place
        behind the mount) fails or is not a regular file; a regular one is made blocking."""
        fd = open_cached(rel, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, self.fd) \
            if self.local_storage and rel else None
        if fd is None:
            return None
        try:
            regular_made_blocking(fd, rel)
        except OSError:                 # (not a regular file: the worker's own open says so)
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return OSFileHandle(fd, drop_behind=True, mapped=True)

    def stat_cached(self, rel: str) -> Attr | None:
        fd = open_cached(rel or ".", os.O_PATH | os.O_NOFOLLOW, self.fd) if self.local_storage else None
        if fd is None:
            return None
        try:
            return attr_of(os.fstat(fd))
        finally:
            os.close(fd)

    def exists_cached(self, rel: str) -> bool | None:
        try:
            return None if self.stat_cached(rel) is None else True
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                return False
            raise

    # -- as the overlay side --------------------------------------------------------------
    def _give(self, rel: str, owner: Owner | None, mode: int | None = None, fd: int | None = None) -> None:
        """A new entry goes to its maker. chown drops set-user/group-ID bits: the mode the
        maker asked for is set again after it."""
        if owner is None or not self.as_root or owner.uid == 0 and owner.gid in (None, os.getegid()):
            return                                  # made by its owner already
        gid = -1 if owner.gid is None else owner.gid
        if fd is not None:
            os.fchown(fd, owner.uid, gid)
        else:
            self._call(os.chown, rel, owner.uid, gid, follow_symlinks=False)
        if mode is not None and mode & (stat.S_ISUID | stat.S_ISGID):
            if fd is not None:
                os.fchmod(fd, mode & 0o7777)
            else:
                self._call(os.chmod, rel, mode & 0o7777)

    def mkdir(self, rel: str, mode: int, owner: Owner | None = None) -> None:
        self._call(os.mkdir, rel, mode & 0o7777)
        self._give(rel, owner)         # a set-group-ID bit comes from the directory, as it did

    def create(self, rel: str, mode: int, owner: Owner | None = None) -> None:
        fd = self._call(os.open, rel, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, mode & 0o7777)
        try:
            self._give(rel, owner, mode, fd)
        finally:
            os.close(fd)

    def symlink(self, target: str, rel: str, owner: Owner | None = None) -> None:
        self._call(lambda name, dir_fd: os.symlink(target, name, dir_fd=dir_fd), rel)
        self._give(rel, owner)

    def mknod(self, rel: str, mode: int, rdev: int, owner: Owner | None = None) -> None:
        self._call(os.mknod, rel, mode, rdev)
        self._give(rel, owner, mode)

    def touch(self, rel: str) -> None:
        os.close(self._call(os.open, rel, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))

    def unlink(self, rel: str) -> None:
        self._call(os.unlink, rel)

    def rmtree(self, rel: str) -> None:
        with self._at(rel) as (fd, name):
            shutil.rmtree(name, dir_fd=fd)

    def _two(self, fn, a: str, b: str):
        with self._at(a) as (fd_a, name_a), self._at(b) as (fd_b, name_b):
            return fn(fd_a, name_a, fd_b, name_b)

    def rename(self, old: str, new: str, flags: int = 0) -> None:
        self._two(lambda fa, a, fb, b: rename_at(fa, a, fb, b, flags), old, new)

    def link(self, existing: str, rel: str) -> None:
        self._two(lambda fa, a, fb, b: os.link(a, b, src_dir_fd=fa, dst_dir_fd=fb, follow_symlinks=False),
                  existing, rel)

    def open_write(self, rel: str, flags: int) -> FileHandle:
        keep = os.O_ACCMODE | os.O_TRUNC | os.O_APPEND | os.O_SYNC | os.O_DSYNC
        fd = self._call(os.open, rel, (flags & keep) | os.O_CLOEXEC | os.O_NOFOLLOW)
        return LocalWriteHandle(fd, flags, release_blocks=not self.local_storage)

    def truncate(self, rel: str, size: int) -> None:
        fd = self._call(os.open, rel, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)

    def set_attr(self, rel: str, handle: FileHandle | None, mode: int | None = None, uid: int | None = None,
                 gid: int | None = None, atime_ns: int | None = None, mtime_ns: int | None = None) -> None:
        fd = handle.fileno() if handle is not None else -1
        with self._at(rel) if fd < 0 else contextlib.nullcontext((fd, None)) as (dir_fd, name):
            if uid is not None or gid is not None:
                uid, gid = -1 if uid is None else uid, -1 if gid is None else gid
                if name is None:
                    os.fchown(fd, uid, gid)
                else:
                    os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
            if mode is not None:
                if name is None:
                    os.fchmod(fd, mode & 0o7777)
                else:
                    os.chmod(name, mode & 0o7777, dir_fd=dir_fd)
            if atime_ns is not None or mtime_ns is not None:
                set_times(dir_fd, name, atime_ns, mtime_ns)

    # -- copy-up through the work directory ------------------------------------------------
    def clear_work(self) -> None:
        try:
            shutil.rmtree(WORK_DIR, dir_fd=self.fd)
        except FileNotFoundError:
            pass

    def _work(self) -> int:
        with self._work_lock:
            if self._work_fd is None:
                try:
                    os.mkdir(WORK_DIR, 0o700, dir_fd=self.fd)
                except FileExistsError:
                    pass
                self._work_fd = os.open(WORK_DIR, _DIR_FLAGS, dir_fd=self.fd)
            return self._work_fd

    def work_path(self) -> str:
        """The work directory's path, the folder made if this mount has not made it yet
        (once, as copy-ups make it: `_work`): what is written there never shows, and every
        mount empties it (`clear_work`)."""
        self._work()
        return self.local_path(WORK_DIR)

    def stage_copy(self, source: Root, rel: str, info: Attr, data: bool = True) -> str:
        work = self._work()
        name = f"copy.{next(self._copies)}"
        try:
            if stat.S_ISLNK(info.mode):
                os.symlink(source.readlink(rel), name, dir_fd=work)
            elif stat.S_ISREG(info.mode):
                fd = os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600, dir_fd=work)
                try:
                    if data:
                        _copy(source.open_read(rel), fd)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            else:
                os.mknod(name, info.mode, info.rdev, dir_fd=work)
            self._keep_attrs(work, name, info)
        except BaseException:
            self.drop_copy(name)
            raise
        return name

    def _keep_attrs(self, dir_fd: int, name: str, info: Attr) -> None:
        """A copy keeps its original's owner, mode and times (owner only as root)."""
        if self.as_root and info.uid is not None:
            os.chown(name, info.uid, info.gid, dir_fd=dir_fd, follow_symlinks=False)
        if not stat.S_ISLNK(info.mode):
            os.chmod(name, stat.S_IMODE(info.mode), dir_fd=dir_fd)
        set_times(dir_fd, name, info.atime_ns if info.atime_ns is not None else info.mtime_ns, info.mtime_ns)

    def place_copy(self, staged: str, rel: str) -> None:
        with self._at(rel) as (fd, name):
            rename_at(self._work(), staged, fd, name)

    def drop_copy(self, staged: str) -> None:
        try:
            os.unlink(staged, dir_fd=self._work())
        except FileNotFoundError:
            pass

    def copy_dir(self, source: Root, rel: str, info: Attr) -> None:
        """The overlay's copy of a directory of the other root (empty: its entries merge)."""
        self._call(os.mkdir, rel, 0o700)
        with self._at(rel) as (fd, name):
            self._keep_attrs(fd, name, info)


def _copy(handle: FileHandle, out: int) -> None:
    """All of an open file into the descriptor `out` (the kernel copies when it can)."""
    try:
        src = handle.fileno() if hasattr(handle, "fileno") else -1
        offset = 0
        if src >= 0:
            try:
                while done := os.copy_file_range(src, out, COPY_BLOCK):
                    offset += done
                return
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
        while block := handle.read(offset, COPY_BLOCK):
            os.pwrite(out, block, offset)
            offset += len(block)
    finally:
        handle.release()
