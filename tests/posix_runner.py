"""Scripted syscall sequences for the differential POSIX suite (tests/test_posix.py).

A scenario is a seed (entries made before the run, owned by `me`, `other` or `root`) and a
list of steps `(op, *args)`. The same steps run in a plain directory (the reference) and
in the merged view; every step's outcome is recorded in a form that does not depend on
where it ran (errno names, stat fields with owners by role and inode numbers by first
appearance, times as set or "recent"), so the two traces compare with ==.

Run as `python posix_runner.py ROOT UID GID KEY=SCENARIO...`: privileges are dropped to
UID/GID (no supplementary groups), each scenario runs in ROOT/KEY, and a JSON line
[KEY, trace] is printed as each one ends.
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import socket
import stat
import sys
import threading
import time
from dataclasses import dataclass, field

USER, USER_GID = 12345, 12345          # the unprivileged runner
OTHER, OTHER_GID = 12346, 12346        # somebody else
SEED_NS = 1_000_000_000 * 10 ** 9      # times of seeded entries (2001)
SET_NS = (1_234_567_890 * 10 ** 9 + 123, 1_111_111_111 * 10 ** 9 + 456)
RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT = 1, 2, 4
UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2
AT_FDCWD = -100
NAME_255, NAME_256 = "n" * 255, "n" * 256
LONG_DIR = "d" * 250

libc = ctypes.CDLL(None, use_errno=True)


# -- seeds ------------------------------------------------------------------------------
@dataclass
class F:
    mode: int = 0o644
    data: bytes = b""
    owner: str = "me"
    group: str | None = None          # default: the owner's group


@dataclass
class D:
    mode: int = 0o755
    owner: str = "me"
    group: str | None = None


@dataclass
class P:
    """A FIFO."""
    mode: int = 0o644
    owner: str = "me"
    group: str | None = None


@dataclass
class H:
    """A hard link to another seeded file."""
    target: str
    owner: str = "me"


@dataclass
class L:
    target: str
    owner: str = "me"


def ids(role: str, me: tuple[int, int]) -> tuple[int, int]:
    return {"me": me, "other": (OTHER, OTHER_GID), "root": (0, 0), "user": (USER, USER_GID)}[role]


def make_seed(top: str, seed: dict, me: tuple[int, int]) -> None:
    """Write a scenario's directory top and its seed (by a privileged caller)."""
    os.mkdir(top)
    os.chown(top, *me)
    os.chmod(top, 0o755)
    for rel, entry in seed.items():
        path = os.path.join(top, rel)
        uid, gid = ids(entry.owner, me)
        if isinstance(entry, L):
            os.symlink(entry.target, path)
            os.lchown(path, uid, gid)
            continue
        if isinstance(entry, H):
            os.link(os.path.join(top, entry.target), path)
            continue
        if isinstance(entry, D):
            os.mkdir(path)
        elif isinstance(entry, P):
            os.mkfifo(path)
        else:
            with open(path, "wb") as fh:
                fh.write(entry.data)
        if entry.group is not None:
            gid = ids(entry.group, me)[1]
        os.chown(path, uid, gid)
        os.chmod(path, entry.mode)
    for rel in sorted(seed, key=lambda r: -r.count("/")):
        os.utime(os.path.join(top, rel), ns=(SEED_NS, SEED_NS), follow_symlinks=False)
    os.utime(top, ns=(SEED_NS, SEED_NS))


@dataclass
class Scenario:
    name: str
    item: str                          # the item number, or the POSIX area
    steps: list
    seed: dict = field(default_factory=dict)
    layers: tuple = ("new", "static", "copied")
    # outcomes the merged view may show instead of the reference's: {step index: [results]}
    allow: dict = field(default_factory=dict)


# -- running ----------------------------------------------------------------------------
class Run:
    """One scenario's execution: open fds by label, marks, and inode labels."""

    def __init__(self, me: tuple[int, int]):
        self.me = me
        self.fds: dict[str, int] = {}
        self.marks: dict[str, int] = {}
        self.inos: dict[int, str] = {}
        self.umask = 0o022
        self.top: int | None = None     # the scenario's folder while `cd` left it (an O_PATH fd)

    def uid(self, token) -> int:
        return token if isinstance(token, int) else ids(token, self.me)[0]

    def gid(self, token) -> int:
        return token if isinstance(token, int) else ids(token, self.me)[1]

    def role(self, uid: int, gid: int) -> str:
        names = {self.me: "me", (OTHER, OTHER_GID): "other", (0, 0): "root"}
        by_uid = {u: n for (u, _), n in names.items()}
        by_gid = {g: n for (_, g), n in names.items()}
        return f"{by_uid.get(uid, uid)}:{by_gid.get(gid, gid)}"

    def stat_result(self, st: os.stat_result) -> dict:
        ino = self.inos.setdefault(st.st_ino, f"i{len(self.inos)}")
        out = {"mode": oct(st.st_mode), "owner": self.role(st.st_uid, st.st_gid), "nlink": st.st_nlink, "ino": ino}
        if not stat.S_ISDIR(st.st_mode):        # a directory's size is the backing fs's business
            out["size"] = st.st_size
        if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            out["rdev"] = st.st_rdev
        return out

    @staticmethod
    def when(ns: int) -> int | str:
        if ns in SET_NS or ns == SEED_NS:
            return ns
        return "recent" if abs(ns - time.time_ns()) < 300 * 10 ** 9 else "other"

    def step(self, op: str, *args):
        return getattr(self, "op_" + op)(*args)

    # every op returns something JSON-able; OSError is recorded by the caller
    def op_mkdir(self, p, mode=0o755):
        os.mkdir(p, mode)

    def op_rmdir(self, p):
        os.rmdir(p)

    def op_create(self, p, mode=0o644):
        os.close(os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode))

    def op_open(self, label, p, flags, mode=0o644):
        self.fds[label] = os.open(p, flags, mode)

    def op_close(self, label):
        os.close(self.fds.pop(label))

    def op_write(self, label, data: str):
        return os.write(self.fds[label], data.encode())

    def op_pwrite(self, label, data: str, offset: int):
        return os.pwrite(self.fds[label], data.encode(), offset)

    def op_pread(self, label, size: int, offset: int = 0):
        return os.pread(self.fds[label], size, offset).decode("latin-1")

    def op_ls_fd(self, label):
        return sorted(os.listdir(self.fds[label]))

    def op_fstat(self, label):
        return self.stat_result(os.fstat(self.fds[label]))

    def op_ftruncate(self, label, size):
        os.ftruncate(self.fds[label], size)

    def op_fchmod(self, label, mode):
        os.fchmod(self.fds[label], mode)

    def op_fchown(self, label, uid, gid):
        os.fchown(self.fds[label], self.uid(uid), self.gid(gid))

    def op_mmap_write(self, label, offset, data: str):
        """Write through a shared mapping of the open file, then msync."""
        import mmap
        with mmap.mmap(self.fds[label], 0) as mapped:
            mapped[offset:offset + len(data)] = data.encode()
            mapped.flush()

    def op_sh(self, script):
        """A shell script of real tools (tar, rsync, git...): its exit status and output."""
        import subprocess
        done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60,
                              env={"PATH": os.environ["PATH"], "HOME": os.getcwd(), "LC_ALL": "C"})
        return [done.returncode, done.stdout]

    def op_sqlite(self, p, journal):
        """A SQLite database in p (journal mode journal): rows written in transactions and
        read back, with an integrity check."""
        import sqlite3
        db = sqlite3.connect(p)
        try:
            db.execute(f"PRAGMA journal_mode={journal}")
            db.execute("CREATE TABLE IF NOT EXISTS picks (x REAL, y REAL, z REAL)")
            for i in range(8):
                with db:
                    db.executemany("INSERT INTO picks VALUES (?, ?, ?)", [(i, j, 1.5) for j in range(50)])
            return [db.execute("SELECT count(*), sum(x) FROM picks").fetchone(),
                    db.execute("PRAGMA integrity_check").fetchone()[0]]
        finally:
            db.close()

    def op_fallocate(self, label, offset, length):
        os.posix_fallocate(self.fds[label], offset, length)

    def op_fsync(self, label):
        os.fsync(self.fds[label])

    def op_stat(self, p):
        return self.stat_result(os.stat(p))

    def op_lstat(self, p):
        return self.stat_result(os.lstat(p))

    def op_exists(self, p):
        return os.path.lexists(p)

    def op_access(self, p, mode):
        return os.access(p, mode)

    def op_chmod(self, p, mode):
        os.chmod(p, mode)

    def op_chown(self, p, uid, gid):
        os.chown(p, self.uid(uid), self.gid(gid))

    def op_lchown(self, p, uid, gid):
        os.lchown(p, self.uid(uid), self.gid(gid))

    def op_link(self, src, dst):
        os.link(src, dst, follow_symlinks=False)

    def op_symlink(self, target, p):
        os.symlink(target, p)

    def op_readlink(self, p):
        return os.readlink(p)

    def op_unlink(self, p):
        os.unlink(p)

    def op_rename(self, src, dst):
        os.rename(src, dst)

    def op_renameat2(self, src, dst, flags):
        if libc.renameat2(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), flags) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))

    def op_truncate(self, p, size):
        os.truncate(p, size)

    def op_read(self, p):
        with open(p, "rb") as fh:
            return fh.read().decode("latin-1")

    def op_write_file(self, p, data: str):
        with open(p, "wb") as fh:
            fh.write(data.encode())

    def op_append(self, p, data: str):
        with open(p, "ab") as fh:
            fh.write(data.encode())

    def op_ls(self, p="."):
        return sorted(os.listdir(p))

    def op_ls_stat(self, p="."):
        """Read folder p, then lstat each entry (in name order, as `ls -l` does): the
        attributes a lean listing left out must be what a listing with them gives, times
        included."""
        out = {}
        for name in sorted(os.listdir(p)):
            try:
                st = os.lstat(os.path.join(p, name))
            except OSError as exc:
                out[name] = errno.errorcode.get(exc.errno, exc.errno)
                continue
            out[name] = self.stat_result(st) | {"times": [self.when(st.st_atime_ns), self.when(st.st_mtime_ns),
                                                          self.when(st.st_ctime_ns)]}
        return out

    def op_cd(self, p):
        """Go into p (the scenario's folder is kept for `at_top`)."""
        if self.top is None:
            self.top = os.open(".", os.O_PATH)
        os.chdir(p)

    def op_at_top(self, op, *args):
        """Step (op, *args) from the scenario's folder, then back into the current one
        (which may have been removed meanwhile)."""
        here = os.open(".", os.O_PATH)
        try:
            os.fchdir(self.top)
            return self.step(op, *args)
        finally:
            os.fchdir(here)
            os.close(here)

    def op_umask(self, mask):
        os.umask(mask)

    def op_utimens(self, p, atime, mtime, nofollow=False):
        def spec(value):
            if value == "now":
                return (0, UTIME_NOW)
            if value == "omit":
                return (0, UTIME_OMIT)
            return divmod(value, 10 ** 9)
        times = (ctypes.c_long * 4)(*spec(atime), *spec(mtime))
        if libc.utimensat(AT_FDCWD, os.fsencode(p), times, 0x100 if nofollow else 0) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))

    def op_touch_now(self, p):
        """utimensat(path, NULL): both times to now (allowed to a non-owner with write access)."""
        os.utime(p)

    def op_times(self, p):
        st = os.lstat(p)
        return [self.when(st.st_atime_ns), self.when(st.st_mtime_ns)]

    def op_mark(self, p):
        """Remember p's ctime and mtime; the next change must be seen as a later time."""
        st = os.lstat(p)
        self.marks[p] = (st.st_ctime_ns, st.st_mtime_ns)
        time.sleep(0.03)

    def op_moved(self, p):
        """Whether p's [ctime, mtime] moved since op_mark."""
        st = os.lstat(p)
        ctime, mtime = self.marks[p]
        return [st.st_ctime_ns > ctime, st.st_mtime_ns > mtime]

    def op_mkfifo(self, p, mode=0o644):
        os.mkfifo(p, mode)

    def op_mknod(self, p, mode, major=0, minor=0):
        os.mknod(p, mode, os.makedev(major, minor))

    def op_bind(self, p):
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(p)

    def op_statfs(self, p="."):
        st = os.statvfs(p)
        return {"blocks": st.f_blocks > 0, "bavail": st.f_bavail > 0, "files": st.f_files > 0,
                "namemax": st.f_namemax}

    def op_unlink_while_listing(self, p):
        """Remove each entry of p as the listing shows it (what rm -r does): every entry
        is seen, so none is left."""
        with os.scandir(p) as entries:
            for entry in entries:
                os.unlink(entry.path)

    def op_list_stat_while_renaming(self, p, rounds):
        """List p `rounds` times, stat'ing each stable name listed, while one thread
        creates, renames and deletes other names in it: each stable name shows exactly
        once per listing and stats as the file it is."""
        stable = {n: os.lstat(os.path.join(p, n)).st_size for n in os.listdir(p) if n.startswith("stable")}
        stop = threading.Event()

        def churn():
            i = 0
            while not stop.is_set():
                name, moved = f"{p}/churn{i % 200:03d}", f"{p}/moved{i % 200:03d}"
                with open(name, "wb") as fh:
                    fh.write(b"c" * (i % 7))
                os.rename(name, moved)
                if i >= 100:
                    os.unlink(f"{p}/moved{(i - 100) % 200:03d}")
                i += 1
            for j in range(max(0, i - 100), i):     # (the folder as it was: for what follows)
                os.unlink(f"{p}/moved{j % 200:03d}")
        thread = threading.Thread(target=churn)
        thread.start()
        bad = {"skipped": 0, "repeated": 0, "wrong": 0}
        try:
            for _ in range(rounds):
                seen = [n for n in os.listdir(p) if n.startswith("stable")]
                bad["skipped"] += len(stable.keys() - set(seen))
                bad["repeated"] += len(seen) - len(set(seen))
                bad["wrong"] += sum(os.lstat(os.path.join(p, n)).st_size != stable[n] for n in seen)
        finally:
            stop.set()
            thread.join()
        return bad

    def op_list_while_changing(self, p, rounds):
        """List p `rounds` times while one thread creates and deletes other names in it
        and another lists it too: each stable name must show exactly once per listing."""
        stable = {n for n in os.listdir(p) if n.startswith("stable")}
        stop = threading.Event()

        def churn():
            i = 0
            while not stop.is_set():
                name = f"{p}/churn{i % 500:03d}"
                os.close(os.open(name, os.O_CREAT | os.O_WRONLY, 0o644))
                if i >= 250:
                    os.unlink(f"{p}/churn{(i - 250) % 500:03d}")
                i += 1

        def other_lister():
            while not stop.is_set():
                os.listdir(p)
        threads = [threading.Thread(target=churn), threading.Thread(target=other_lister)]
        for t in threads:
            t.start()
        bad = {"skipped": 0, "repeated": 0}
        try:
            for _ in range(rounds):
                seen = [n for n in os.listdir(p) if n.startswith("stable")]
                bad["skipped"] += len(stable - set(seen))
                bad["repeated"] += len(seen) - len(set(seen))
        finally:
            stop.set()
            for t in threads:
                t.join()
        return bad

    def close_all(self):
        for fd in self.fds.values():
            os.close(fd)
        if self.top is not None:
            os.close(self.top)


def outcome(fn, *args):
    try:
        value = fn(*args)
    except OSError as exc:
        return errno.errorcode.get(exc.errno, exc.errno) if exc.errno else f"OSError {exc}"
    except Exception as exc:      # a wrong step is a failing trace, not a crash of the run
        return f"{type(exc).__name__}: {exc}"
    return "ok" if value is None else value


def run_scenario(scenario: Scenario, me: tuple[int, int]) -> list:
    run = Run(me)
    os.umask(0o022)
    trace = []
    try:
        for step in scenario.steps:
            trace.append([step[0], outcome(run.step, *step)])
    finally:
        run.close_all()
    return trace


def main(argv: list[str]) -> None:
    from posix_scenarios import SCENARIOS
    root, uid, gid, *jobs = argv
    uid, gid = int(uid), int(gid)
    if uid:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    for job in jobs:
        key, name = job.split("=")
        entered = outcome(os.chdir, os.path.join(root, key))
        trace = run_scenario(SCENARIOS[name], (uid, gid)) if entered == "ok" else [["chdir", entered]]
        print(json.dumps([key, trace]), flush=True)
        os.chdir("/")


if __name__ == "__main__":
    main(sys.argv[1:])
