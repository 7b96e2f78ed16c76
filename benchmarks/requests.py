"""The fixed cost of one FUSE request: scopefs against the kernel + C floor, side by side.

    python benchmarks/requests.py [--n 4000] [--rounds 3] [--work DIR] [--walk-entries 2000]
                                  [--daemon-path LABEL=DIR ...] [--no-floor] [--kinds getattr,...]

Mounts a small writable `.iid` through the real CLI and issues N requests of each kind
that always reaches the daemon, whatever the kernel caches:

  getattr   statx(AT_STATX_FORCE_SYNC) of an entry's `entry.json` (one GETATTR)
  lookup    stat of a missing name in `groups/` (one LOOKUP: the names of a writable
            `.iid`'s groups change behind the kernel's back, so it caches no negatives)
  open      open + close of `entry.json` (OPEN, FLUSH, RELEASE)
  read      pread of 4 KiB at 0 of `entry.json` opened O_DIRECT (one READ)
  readdir   listdir of an entry folder, the mount made with SCOPEFS_LISTING_CACHE=0
            (OPENDIR, READDIRPLUS, READDIRPLUS at the end, RELEASEDIR, and the GETATTR
            the kernel sends after a listing)
  dirents   lseek to 0 and one getdents64 of an entry folder kept open, the mount made with
            SCOPEFS_LISTING_CACHE=0 (one READDIRPLUS carrying the folder's entries)
  dirend    lseek to the offset of the folder's last entry and one getdents64 (one READDIRPLUS
            answered empty: the request that ends every listing)
  find      a warm `find -printf %s` of a --walk-entries `.iid` mounted as users do (listings
            cached in the kernel), once per round: what a walk asks, per request
  coldfind  the same `find` cold, once per round, after the kernel's caches are dropped
            (`echo 3 > /proc/sys/vm/drop_caches`, as root): nearly all READDIRPLUS, two per
            folder (its entries, then the empty one at its end)

Printed per kind and target, medians over --rounds (targets alternate within each round):
microseconds per operation, requests per operation (scopefs's own counters), microseconds
per request, the daemon's CPU microseconds per request (user + system, from its process
CPU-time clock: benchmarks/daemon_cpu.py), and the ratio of each target's time per
operation to scopefs's.

Targets: scopefs as installed; each `--daemon-path LABEL=DIR` is scopefs with DIR first on
the daemon's PYTHONPATH (e.g. another build of pyfuse3, unpacked there, to compare); and
the floor, `fuse-overlayfs` (C, libfuse) over a plain copy of the same tree: the kernel's
share of the same system calls (not for find: it lets the kernel cache other things, so
a walk asks it other requests). Everything printed also goes to
benchmarks/results/requests-latest.txt.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import walk_samples  # noqa: E402
from control_file import daemon_status  # noqa: E402
from daemon_cpu import daemon_cpu_s  # noqa: E402  (benchmarks/daemon_cpu.py)

SCOPEFS = [sys.executable, "-m", "scopefs.daemon"]
RESULTS = ROOT / "benchmarks" / "results" / "requests-latest.txt"
KINDS = ("getattr", "lookup", "open", "read", "readdir", "dirents", "dirend", "find", "coldfind")
WALKS = ("find", "coldfind")     # kinds run once per round on the --walk-entries `.iid`
ENTRIES = 20

_libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
AT_STATX_FORCE_SYNC = 0x2000
STATX_BASIC_STATS = 0x7FF


GETDENTS64 = {"x86_64": 217, "aarch64": 61}.get(os.uname().machine)


def getdents_last_offset(fd: int, buf=ctypes.create_string_buffer(32768)) -> int:
    """One getdents64 of an open directory: the offset of the last entry it gave (0: none)."""
    got = _libc.syscall(GETDENTS64, fd, buf, len(buf))
    if got < 0:
        raise OSError(ctypes.get_errno(), "getdents64")
    raw, pos, last = buf.raw, 0, 0
    while pos < got:
        last = int.from_bytes(raw[pos + 8:pos + 16], "little", signed=True)
        pos += int.from_bytes(raw[pos + 16:pos + 18], "little")
    return last


def statx_sync(path: bytes, buf=ctypes.create_string_buffer(256)) -> None:
    """A stat the kernel must ask the file system for, however long it may cache attributes."""
    if _libc.statx(AT_FDCWD, path, AT_STATX_FORCE_SYNC, STATX_BASIC_STATS, buf) != 0:
        raise OSError(ctypes.get_errno(), "statx", path)


def lines():
    out: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        out.append(text)
    return say, out


say, printed = lines()


class Target:
    """A mounted file system and what it takes to count its daemon's work."""
    label: str
    path: Path
    pid: int

    def requests(self) -> int | None:
        return None

    def close(self) -> None:
        raise NotImplementedError


class Scopefs(Target):
    def __init__(self, label: str, source: Path, work: Path, pythonpath: str | None, listing_cache: bool):
        self.label = label
        self.path = Path(tempfile.mkdtemp(dir=work, prefix="mnt-"))
        env = dict(os.environ)
        if not listing_cache:
            env["SCOPEFS_LISTING_CACHE"] = "0"
        if pythonpath:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath, env.get("PYTHONPATH")]))
        subprocess.run([*SCOPEFS, "mount", str(source), str(self.path), "--log-file", str(work / f"{label}.log")],
                       check=True, env=env)
        self.pid = self._status()["pid"]

    def _status(self) -> dict:
        return daemon_status(self.path)

    def requests(self) -> int:
        return self._status()["requests"]

    def close(self) -> None:
        subprocess.run([*SCOPEFS, "umount", str(self.path)], check=False)
        os.rmdir(self.path)


class Overlayfs(Target):
    """fuse-overlayfs with only a lower layer: a read-only passthrough written in C."""

    def __init__(self, plain: Path, work: Path):
        self.label = "fuse-overlayfs"
        self.path = Path(tempfile.mkdtemp(dir=work, prefix="floor-"))
        subprocess.run(["fuse-overlayfs", "-o", f"lowerdir={plain}", str(self.path)], check=True)
        out = subprocess.run(["pgrep", "-n", "-f", f"fuse-overlayfs -o lowerdir={plain} {self.path}"],
                             capture_output=True, text=True, check=True)
        self.pid = int(out.stdout.split()[0])

    def close(self) -> None:
        subprocess.run(["fusermount3", "-u", str(self.path)], check=False)
        os.rmdir(self.path)


def operation(kind: str, root: Path):
    """The client side of one kind: a function doing one operation, and its cleanup."""
    entry = next(p for p in sorted(root.iterdir()) if p.is_dir() and (p / "entry.json").exists())
    file = bytes(entry / "entry.json")
    if kind == "getattr":
        return lambda: statx_sync(file), lambda: None
    if kind == "lookup":
        missing = bytes(root / "groups" / "no-such-name")

        def lookup():
            try:
                os.stat(missing)
            except FileNotFoundError:
                pass
        return lookup, lambda: None
    if kind == "open":
        return lambda: os.close(os.open(file, os.O_RDONLY)), lambda: None
    if kind == "read":
        fd = os.open(file, os.O_RDONLY | os.O_DIRECT)
        return lambda: os.pread(fd, 4096, 0), lambda: os.close(fd)
    if kind == "readdir":
        return lambda: os.listdir(entry), lambda: None
    if kind in ("dirents", "dirend"):
        fd = os.open(entry, os.O_RDONLY | os.O_DIRECTORY)
        end = getdents_last_offset(fd)
        at = 0 if kind == "dirents" else end

        def getdents():
            os.lseek(fd, at, os.SEEK_SET)
            getdents_last_offset(fd)
        return getdents, lambda: os.close(fd)
    if kind in WALKS:
        return (lambda: subprocess.run(["find", str(root), "-printf", "%s\n"], stdout=subprocess.DEVNULL, check=True),
                lambda: None)
    raise ValueError(kind)


def drop_kernel_caches() -> None:
    """Cold: the kernel forgets every unused inode, dentry and cached listing (the daemon's
    FORGETs are let in before the count starts)."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")
    time.sleep(0.5)


def run(target: Target, kind: str, n: int) -> dict:
    once, done = operation(kind, target.path)
    for _ in range(1 if kind in WALKS else 50):     # warm: names and attributes known, code paths hot
        once()
    if kind == "coldfind":
        drop_kernel_caches()
    before_requests = target.requests()
    cpu0, t0 = daemon_cpu_s(target.pid), time.perf_counter()
    for _ in range(n):
        once()
    wall, cpu = time.perf_counter() - t0, daemon_cpu_s(target.pid) - cpu0
    done()
    requests = None
    if before_requests is not None:         # less what reading the status itself asked
        after = target.requests()
        requests = (after - before_requests - (target.requests() - after)) / n
    return {"op_us": wall / n * 1e6, "cpu_op_us": cpu / n * 1e6, "requests": requests}


def side_by_side(source: Path, work: Path, args, listing_cache: bool, floor: bool = True) -> list[Target]:
    """scopefs, scopefs with each --daemon-path, and the floor, all mounting `source`."""
    work.mkdir()
    targets: list[Target] = [Scopefs("scopefs", source, work, None, listing_cache)]
    for spec in args.daemon_path:
        label, _, path = spec.partition("=")
        targets.append(Scopefs(label, source, work, path, listing_cache))
    if floor and not args.no_floor and shutil.which("fuse-overlayfs"):
        plain = work / "plain"
        subprocess.run(["rsync", "-a", f"{targets[0].path}/", str(plain)], check=True)
        targets.append(Overlayfs(plain, work))
    return targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4000, help="operations per kind, target and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--daemon-path", action="append", default=[], metavar="LABEL=DIR",
                        help="also run scopefs with DIR first on the daemon's PYTHONPATH")
    parser.add_argument("--no-floor", action="store_true", help="skip fuse-overlayfs")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--walk-entries", type=int, default=2000, help="entries of the .iid that find walks")
    args = parser.parse_args()
    kinds = args.kinds.split(",")
    work = Path(tempfile.mkdtemp(prefix="scopefs-requests-", dir=args.work))
    targets: dict[str, list[Target]] = {}       # per source: the small one, the walked one
    try:
        walks = [kind for kind in kinds if kind in WALKS]
        walk = f"{'/'.join(walks)}: {args.walk_entries} entries, one per round; " if walks else ""
        say(f"# {ENTRIES}-entry writable .iid, {args.n} operations per kind; {walk}{args.rounds} rounds; "
            f"load average {os.getloadavg()[0]:.2f}")
        small = walk_samples.iid(work / "small.iid", ENTRIES).path
        targets["small"] = side_by_side(small, work / "small", args, listing_cache=False)
        if walks:
            walked = walk_samples.iid(work / "walked.iid", args.walk_entries).path
            # (no floor: fuse-overlayfs lets the kernel cache other things, so a walk asks it other requests)
            targets["find"] = side_by_side(walked, work / "walked", args, listing_cache=True, floor=False)
        results: dict[tuple[str, str], list[dict]] = {}
        for _ in range(args.rounds):
            for kind in kinds:
                for target in targets["find" if kind in WALKS else "small"]:
                    results.setdefault((kind, target.label), []).append(
                        run(target, kind, 1 if kind in WALKS else args.n))
        labels = [target.label for target in targets["small"]]
        say(f"{'kind':8} {'target':16} {'us/op':>8} {'req/op':>7} {'us/req':>8} {'cpu us/req':>10}")
        for kind in kinds:
            per_op = {}
            for label in labels:
                if (kind, label) not in results:
                    continue
                rows = results[(kind, label)]
                op = statistics.median(r["op_us"] for r in rows)
                cpu = statistics.median(r["cpu_op_us"] for r in rows)
                # the floor asks the same requests of the kernel: scopefs's count
                requests = statistics.median(r["requests"] or s["requests"]
                                             for r, s in zip(rows, results[(kind, "scopefs")]))
                per_op[label] = op
                say(f"{kind:8} {label:16} {op:8.1f} {requests:7.2f} {op / requests:8.1f} "
                    f"{cpu / requests:10.1f}")
            if len(per_op) > 1:
                say("         ratio target / scopefs, per operation: " +
                    ", ".join(f"{label} {op / per_op['scopefs']:.2f}" for label, op in per_op.items() if label != "scopefs"))
        if "fuse-overlayfs" in labels:
            say("(fuse-overlayfs: requests per operation taken as scopefs's; it lets the kernel cache "
                "missing names, so its lookup row asks it nothing)")
    finally:
        for target in (t for side in targets.values() for t in side):
            target.close()
        shutil.rmtree(work, ignore_errors=True)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text("\n".join(printed) + "\n")


if __name__ == "__main__":
    main()
