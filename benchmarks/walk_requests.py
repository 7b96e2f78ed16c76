"""FUSE requests per walk, by operation: what a cold and a warm `find`, `ls -lR`, `du -s`
and a read of every small file (by `cat`, and by a Python loop of `open().read()`) ask the daemon, on writable and `-o ro` mounts.

    python benchmarks/walk_requests.py [--work DIR] [--iid N] [--fsdb SxFxN] [--walks find,ls,du,read,pyread]

Counts, not times: they do not depend on the machine's load. Each walk runs on a fresh
mount (cold), then again on the same mount (warm); the requests are read from the
daemon's debug log (`scopefs mount -d`). The sources are those of the walk benchmark
(tests/walk_samples.py).
"""
from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import walk_samples  # noqa: E402

SCOPEFS = [sys.executable, "-m", "scopefs.daemon"]
WALKS = {"find": "find .", "ls": "ls -lR", "du": "du -s",
         "read": r"find . -type f \( {small} \) -exec cat {{}} + >/dev/null",
         # the walk benchmark's reader: Python's buffered open() also asks isatty, a FUSE
         # IOCTL per file that libfuse answers itself (not in the daemon's log)
         "pyread": r"find . -type f \( {small} \) -print0 | " + sys.executable
                   + r""" -c 'import sys
for p in sys.stdin.buffer.read().split(b"\0")[:-1]: open(p, "rb").read()'"""}
REQUEST = re.compile(r" DEBUG scopefs\.daemon\.fs\[\d+\]: ([a-z_]+)\(")


def requests(log: Path) -> collections.Counter:
    return collections.Counter(REQUEST.findall(log.read_text()))


def walk_counts(source: walk_samples.Source, options: list[str], command: str, work: Path) -> list[str]:
    mnt, log = work / "mnt", work / "daemon.log"
    mnt.mkdir(exist_ok=True)
    log.write_text("")
    subprocess.run(SCOPEFS + ["mount", str(source.path), str(mnt), "-d", "--log-file", str(log)]
                   + (["-o", ",".join(options)] if options else []), check=True)
    try:
        out = []
        for state in ("cold", "warm"):
            before = requests(log)
            subprocess.run(command, shell=True, cwd=mnt, check=True, stdout=subprocess.DEVNULL)
            time.sleep(0.2)                     # (the log is written as requests are answered)
            sent = requests(log) - before
            out.append(f"{state} {sum(sent.values()):6,}: " + " ".join(f"{op}={n}" for op, n in sorted(sent.items())))
        return out
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, help="where the sources are made (default: a temporary folder)")
    parser.add_argument("--iid", type=int, default=500, help="entries of the .iid (500)")
    parser.add_argument("--fsdb", default="3x2x10", help="scans x filesets x files of the FSDB (3x2x10)")
    parser.add_argument("--walks", default=",".join(WALKS), help=f"of {','.join(WALKS)}")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="scopefs-requests-"))
    work.mkdir(parents=True, exist_ok=True)
    scans, filesets, files = map(int, args.fsdb.split("x"))
    sources = {f".iid, {args.iid} entries": walk_samples.iid(work / f"cells{args.iid}.iid", args.iid),
               f"FSDB, {args.fsdb}": walk_samples.fsdb(work / f"fsdb{args.fsdb}", scans, filesets, files)}
    print(f"FUSE requests per walk ({time.strftime('%Y-%m-%d %H:%M')}), from the daemon's -d log")
    for title, source in sources.items():
        small = " -o ".join(f"-name '*{suffix}'" for suffix in source.small_files)
        for options in (list(source.options), list(source.options) + ["ro"]):
            label = f"{title} ({'-o ro' if 'ro' in options else 'writable'})"
            for walk in args.walks.split(","):
                cold, warm = walk_counts(source, options, WALKS[walk].format(small=small), work)
                print(f"{label:32} {walk:5} | {cold}\n{'':32} {'':5} | {warm}", flush=True)


if __name__ == "__main__":
    main()
