"""Where a warm read of a small file goes: a Python loop of `open(path, 'rb').read()` over
every `entry.json` of an `.iid`, writable and `-o ro`, with the daemon's idle poll off
(the default) and on (`SCOPEFS_IDLE_POLL_US`, `--poll-us`), side by side, alternating.

    python benchmarks/small_reads.py [--entries 500] [--rounds 5] [--poll-us 50] [--work DIR]

Per file: wall time (median of rounds), and the work behind it (mean of rounds), steadier on a shared
machine: the daemon's CPU (/proc/PID/stat), how often its session thread slept (each
sleep is a wake-up to pay: voluntary context switches), and its requests (status
counters; the FUSE_IOCTL that Python's isatty sends at each open is answered by libfuse
and not counted). The loop also runs with the reader and the daemon pinned to one CPU,
and to two different ones (`os.sched_setaffinity`): on a VM, waking a thread on an idle
CPU is what a request costs most.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import walk_samples  # noqa: E402

SCOPEFS = [sys.executable, "-m", "scopefs.daemon"]


def read_all(paths: list[Path]) -> None:
    for path in paths:
        with open(path, "rb") as fh:
            fh.read()


class Daemon:
    def __init__(self, mnt: Path):
        self.mnt = mnt
        self.pid = json.loads((mnt / ".scopefs").read_text())["pid"]

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def sleeps(self) -> int:
        status = Path(f"/proc/{self.pid}/task/{self.pid}/status").read_text()
        return int(status.split("voluntary_ctxt_switches:")[1].split()[0])

    def requests(self) -> int:
        return json.loads((self.mnt / ".scopefs").read_text())["requests"]

    def pin(self, cpus: set[int]) -> None:
        for tid in os.listdir(f"/proc/{self.pid}/task"):
            os.sched_setaffinity(int(tid), cpus)


def measure(paths: list[Path], daemon: Daemon | None) -> tuple[float, float, float, float]:
    """One loop: (wall µs, daemon CPU µs, daemon sleeps, daemon requests) per file."""
    n = len(paths)
    if daemon is None:
        t = time.perf_counter()
        read_all(paths)
        return 1e6 * (time.perf_counter() - t) / n, 0.0, 0.0, 0.0
    requests, cpu, sleeps = daemon.requests(), daemon.cpu_s(), daemon.sleeps()
    t = time.perf_counter()
    read_all(paths)
    wall = time.perf_counter() - t
    cpu, sleeps = daemon.cpu_s() - cpu, daemon.sleeps() - sleeps
    requests = daemon.requests() - requests - 1           # (less reading the status once)
    return 1e6 * wall / n, 1e6 * cpu / n, sleeps / n, requests / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--poll-us", default="50", help="SCOPEFS_IDLE_POLL_US of the mounts with the poll on (50)")
    parser.add_argument("--work", type=Path, help="where the source and mounts go (default: a temporary folder)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="scopefs-small-reads-"))
    work.mkdir(parents=True, exist_ok=True)
    source = walk_samples.iid(work / f"cells-{args.entries}.iid", args.entries)
    plain = work / "plain"
    mounts: dict[str, Path] = {}
    try:
        for options in ((), ("-o", "ro")):
            for poll in ("0", args.poll_us):
                label = f"{'-o ro' if options else 'writable'}, idle poll {'on' if float(poll) else 'off'}"
                mnt = work / f"mnt{len(mounts)}"
                mnt.mkdir(exist_ok=True)
                env = {**os.environ, "SCOPEFS_IDLE_POLL_US": poll}
                subprocess.run(SCOPEFS + ["mount", str(source.path), str(mnt), *options], check=True, env=env)
                mounts[label] = mnt
        if not plain.exists():
            subprocess.run(["rsync", "-a", f"{next(iter(mounts.values()))}/", f"{plain}/"], check=True)
        sides = {"plain copy": (plain, None)}
        for label, mnt in mounts.items():
            sides[label] = (mnt, Daemon(mnt))
        files = {label: sorted(root.glob("*/entry.json")) for label, (root, _) in sides.items()}
        cpus = sorted(os.sched_getaffinity(0))
        placements = {"as the scheduler places them": None}
        if len(cpus) > 1:
            placements.update({"reader and daemon on one CPU": (cpus[0], cpus[0]),
                               "reader and daemon on two CPUs": (cpus[0], cpus[1])})
        print(f"warm reads of {args.entries:,} entry.json, Python open().read() ({time.strftime('%Y-%m-%d %H:%M')}, "
              f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, median of {args.rounds} rounds); per file:")
        for placement, pinned in placements.items():
            print(f"\n{placement}")
            results = {label: [] for label in sides}
            for label, (_, daemon) in sides.items():            # warm everything first
                read_all(files[label])
            try:
                for _ in range(args.rounds):
                    for label, (_, daemon) in sides.items():
                        if pinned:
                            os.sched_setaffinity(0, {pinned[0]})
                            if daemon:
                                daemon.pin({pinned[1]})
                        results[label].append(measure(files[label], daemon))
            finally:
                os.sched_setaffinity(0, set(cpus))
                for _, daemon in sides.values():
                    if daemon:
                        daemon.pin(set(cpus))
            base = statistics.median(r[0] for r in results["plain copy"])
            for label, rows in results.items():
                # wall: the median round; the counts (CPU in clock ticks) summed over all rounds
                wall = statistics.median(row[0] for row in rows)
                cpu, sleeps, requests = (statistics.fmean(column) for column in list(zip(*rows))[1:])
                extra = "" if label == "plain copy" else \
                    f"   daemon CPU {cpu:6.1f} µs, sleeps {sleeps:4.2f}, requests {requests:4.2f}"
                print(f"  {label:<26} {wall:7.1f} µs   ratio {base / wall:5.2f}{extra}")
    finally:
        for mnt in mounts.values():
            subprocess.run(SCOPEFS + ["umount", str(mnt)], check=False)


if __name__ == "__main__":
    main()
