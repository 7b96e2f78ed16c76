"""Linux facts, in one place: calls Python's os module lacks, made through libc's
syscall(2), and what /proc tells (mounts, processes). The calls answer None where the
running kernel cannot (too old, or not Linux), and callers then do without: these only let
the daemon skip work, never change what it answers."""
from __future__ import annotations

import ctypes
import errno
import mmap
import os
import re
from typing import Callable, NamedTuple

# new system calls have the same number on every architecture
_SYS_OPENAT2 = 437
_SYS_CACHESTAT = 451
_RESOLVE_CACHED = 0x20          # fail with EAGAIN rather than look anything up on disk
_AT_FDCWD = -100

try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _syscall = _libc.syscall
except (OSError, AttributeError):
    _libc = _syscall = None
_missing: set[int] = set()      # calls this kernel has been found not to have


def _call(number: int, *args) -> int | None:
    """The call's result; None if this kernel lacks it; OSError for any other failure."""
    if _syscall is None or number in _missing:
        return None
    # syscall(2) takes longs: every integer goes as a full register, whatever the ABI
    result = _syscall(ctypes.c_long(number), *(ctypes.c_long(a) if isinstance(a, int) else a for a in args))
    if result >= 0:
        return result
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.E2BIG):
        _missing.add(number)
        return None
    raise OSError(code, os.strerror(code))


def cached_pages(fd: int) -> int | None:
    """How many pages of the open file the page cache holds, found without reading or
    faulting anything (cachestat(2), Linux 6.5)."""
    counts = (ctypes.c_uint64 * 5)()                # cached, dirty, writeback, evicted...
    whole = (ctypes.c_uint64 * 2)(0, 0)             # offset 0, length 0: the whole file
    try:
        if _call(_SYS_CACHESTAT, fd, whole, counts, 0) is None:
            return None
    except OSError:
        return None
    return counts[0]


def resident(address: int, length: int) -> bool | None:
    """Whether every page of a mapped range is in memory and up to date, so that touching
    it never waits for the disk (mincore(2); a page still being read counts as absent).
    None if the call fails."""
    if _libc is None:
        return None
    pages = (ctypes.c_ubyte * -(-length // mmap.PAGESIZE))()
    if _libc.mincore(ctypes.c_void_p(address), ctypes.c_size_t(length), pages) != 0:
        return None
    return 0 not in bytes(pages)                    # bit 0: resident; the others are unused


def open_cached(path: str, flags: int, dir_fd: int = _AT_FDCWD) -> int | None:
    """open(2) that never waits for the disk: a file descriptor if every component of
    path (relative to `dir_fd`) is in the kernel's lookup cache (openat2 with
    RESOLVE_CACHED, Linux 5.12), None if finding it needs I/O. A missing file raises
    FileNotFoundError, as open would."""
    how = (ctypes.c_uint64 * 3)(flags | os.O_CLOEXEC, 0, _RESOLVE_CACHED)
    try:
        return _call(_SYS_OPENAT2, dir_fd, os.fsencode(path), how, ctypes.sizeof(how))
    except OSError as exc:
        if exc.errno == errno.EAGAIN:
            return None
        if exc.errno == errno.EINVAL:                # RESOLVE_CACHED unknown here
            _missing.add(_SYS_OPENAT2)
            return None
        raise OSError(exc.errno, exc.strerror, path) from None


#: filesystems on local storage, where a lookup the kernel has cached, and the open or
#: fstat that follows it, never wait for a server (NFS, FUSE and the like may)
LOCAL_FILESYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "zfs", "bcachefs",
                               "jfs", "tmpfs", "overlay", "vfat", "exfat", "ntfs3"})


class Mount(NamedTuple):
    point: str          # where it is mounted
    device: str         # "major:minor"
    fstype: str         # "ext4", "fuse.scopefs.imgstore"...


def open_without_atime(opener: Callable[[int], int], flags: int) -> int:
    """`opener(flags)` with O_NOATIME, so that reading leaves the atime where it was; where
    that is refused (EPERM: not the file's owner, nor root with CAP_FOWNER), without."""
    try:
        return opener(flags | os.O_NOATIME)
    except PermissionError:
        return opener(flags)


def _unescape(field: bytes) -> str:
    """A mountinfo field as a path: the kernel writes space, tab, newline and backslash
    as octal escapes (\\040...) and every other byte as it is."""
    return os.fsdecode(re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), field))


def mounts() -> list[Mount]:
    """This process's mounts, oldest first (so the last of one point is on top)."""
    try:
        with open("/proc/self/mountinfo", "rb") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        left, _, right = line.partition(b" - ")
        fields = left.split(b" ")
        found.append(Mount(_unescape(fields[4]), fields[2].decode(), right.split(b" ")[0].decode()))
    return found


def filesystem_type(path: str) -> str | None:
    """The type of the filesystem holding path, as /proc/self/mountinfo names it."""
    path = os.path.realpath(path)
    found, depth = None, -1
    for mount in mounts():
        point = mount.point
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= depth:        # the last of equal depth is on top
            found, depth = mount.fstype, len(point)
    return found


def process_alive(pid: int) -> bool:
    """Running, not a zombie (which has exited and holds nothing, but keeps its pid until
    it is reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except FileNotFoundError:
        return False
    except OSError:                          # no /proc to read: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True


def _paths_held(proc: str) -> list[str]:
    """What the process at /proc/<pid> holds: working and root directory, executable,
    open files and mapped files (each part it may not inspect is left out)."""
    held = []
    for link in ("cwd", "root", "exe"):
        try:
            held.append(os.readlink(f"{proc}/{link}"))
        except OSError:
            pass
    try:
        for fd in os.scandir(f"{proc}/fd"):
            try:
                held.append(os.readlink(fd.path))
            except OSError:
                pass
    except OSError:
        pass
    try:
        with open(f"{proc}/maps", "rb") as fh:
            for line in fh:
                fields = line.rstrip(b"\n").split(None, 5)    # address perms offset dev inode path
                if len(fields) == 6:
                    held.append(os.fsdecode(fields[5]))
    except OSError:
        pass
    return held


def processes_using(path: str) -> dict[int, str]:
    """pid -> command name of every process (that we may inspect) holding something
    under path: what keeps a mount busy."""
    path = os.path.realpath(path)
    inside = path.rstrip("/") + "/"
    holders = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        if any(held == path or held.startswith(inside) for held in _paths_held(entry.path)):
            try:
                with open(f"{entry.path}/comm") as fh:
                    holders[int(entry.name)] = fh.read().strip()
            except OSError:                  # gone meanwhile
                continue
    return holders


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_UTIME_OMIT = (1 << 30) - 2
_AT_SYMLINK_NOFOLLOW = 0x100


def set_times(fd: int, name: str | None, atime_ns: int | None, mtime_ns: int | None) -> None:
    """utimensat(2): set either time or both, leaving a None one as it is (UTIME_OMIT,
    which os.utime cannot say). `name` relative to the directory `fd`, not followed if a
    link; without a name, the times of the open file `fd` itself."""
    times = (_Timespec * 2)(*(_Timespec(0, _UTIME_OMIT) if t is None else _Timespec(*divmod(t, 10**9))
                              for t in (atime_ns, mtime_ns)))
    if _libc is None:
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS), name)
    # glibc's utimensat refuses a NULL path (EINVAL): an open file's times go through futimens
    _libc_done(_libc.futimens(fd, times) if name is None
               else _libc.utimensat(fd, os.fsencode(name), times, _AT_SYMLINK_NOFOLLOW), name)


def _libc_done(result: int, path: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), path)


def syncfs(fd: int, path: str) -> None:
    """syncfs(2): everything written to the filesystem of the open `fd` (at `path`) is
    durable; OSError if a write-back on it failed since (Linux >= 5.8) that no one has been
    told of, ENOSYS where libc cannot be called (the caller fsyncs its files instead)."""
    if _libc is None:
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS), path)
    _libc_done(_libc.syncfs(fd), path)


_SYNC_FILE_RANGE_WAIT_BEFORE = 1


def wait_written(fd: int, path: str) -> None:
    """sync_file_range(SYNC_FILE_RANGE_WAIT_BEFORE) of the whole open file: waits for its
    write-back in flight and raises the file's own write-back error, if any, without a
    flush of the disk's cache (after `syncfs`, which reports an error only once)."""
    if _libc is None:
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS), path)
    _libc_done(_libc.sync_file_range(fd, ctypes.c_int64(0), ctypes.c_int64(0),
                                     ctypes.c_uint(_SYNC_FILE_RANGE_WAIT_BEFORE)), path)


RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2


def rename_at(old_dir: int, old: str, new_dir: int, new: str, flags: int = 0) -> None:
    """renameat2(2): a rename that may refuse to replace (RENAME_NOREPLACE) or swap two
    names (RENAME_EXCHANGE); without flags, os.rename."""
    if not flags:
        os.rename(old, new, src_dir_fd=old_dir, dst_dir_fd=new_dir)
        return
    renameat2 = getattr(_libc, "renameat2", None)
    if renameat2 is None:
        raise OSError(errno.EINVAL, "renameat2 is not available here", new)
    _libc_done(renameat2(old_dir, os.fsencode(old), new_dir, os.fsencode(new), ctypes.c_uint(flags)), new)
