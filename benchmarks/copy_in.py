"""Which FUSE requests one copied file costs, by tool, on the writable mounts.

    python benchmarks/copy_in.py [--work DIR] [--tools cp,cp -a,rsync -a]
    python benchmarks/copy_in.py --cpu 1000 [--rounds 6] [--bytes N] [--daemon NAME=DIR ...]

Mounts a small `.iid` (new entry folders holding a mask.png) and a small FSDB (new files in a
fileset) with the daemon's request log (`-d`), copies one file at a time with each tool (the
second copy is shown: the first also looks up the path to the folder), and prints the
requests the daemon received for it, by operation, and its worker-thread calls (the
status counter). Requests are counted in the log between two lookups of marker names,
so the status reads do not count. Work is counted, not timed: steady on a shared machine.

With `--cpu N`: `cp -r` of N new files (in cps of 100) into a fileset of a small FSDB through
a fresh mount of each daemon given (`--daemon NAME=DIR`: the checkout DIR with its .venv;
default this one), the daemons taking turns for `--rounds` rounds, the write-back included
(an fsync of the folder at the end); per file, the daemon's CPU time (its session thread
and its other threads apart), the wall time, requests and worker calls, and each daemon's
medians. CPU time, not wall time, is what to compare on a loaded machine. `--bytes N`: files
of N bytes (e.g. 4194304, an image of a real scan) instead of the sample's small PNG.
"""
from __future__ import annotations

import argparse
import collections
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import walk_samples  # noqa: E402

TOOLS = {"cp": ["cp", "-r"], "cp -a": ["cp", "-a"], "rsync -a": ["rsync", "-a"]}
REQUEST = re.compile(r"DEBUG scopefs\.daemon\.fs\[\d+\]: (\w+)\(")


def requests_between(log: Path, first: str, last: str) -> collections.Counter:
    """Requests logged after the lookup of `first` and before the lookup of `last`."""
    text = log.read_text()
    start, end = text.index(f"b'{first}'"), text.index(f"b'{last}'")
    text = text[text.index("\n", start):text.rindex("\n", 0, end)]
    return collections.Counter(REQUEST.findall(text))


def trace(kind: str, source: walk_samples.Source, work: Path, tools: list[str]) -> None:
    mnt, log = work / f"mnt-{kind}", work / f"{kind}.log"
    mnt.mkdir()
    subprocess.run([sys.executable, "-m", "scopefs.daemon", "mount", str(source.path), str(mnt), "-d",
                    "--log-file", str(log)], check=True)
    try:
        dest = mnt / source.write_dir
        new = work / f"new-{kind}"
        new.mkdir()
        png = io.BytesIO()
        Image.fromarray(np.full((8, 8), 255, np.uint8)).save(png, format="PNG")
        n = 0
        for tool in tools:
            for attempt in range(2):
                n += 1
                if kind == "iid":
                    copied = new / f"entry{n}"
                    copied.mkdir()
                    (copied / "mask.png").write_bytes(png.getvalue())
                else:
                    copied = new / f"new{n}.png"
                    copied.write_bytes(bytes(range(256)) * 3)
                before = json.loads((mnt / ".scopefs").read_text())
                os.path.exists(mnt / f"MARK-{n}-a")
                subprocess.run([*TOOLS[tool], str(copied), str(dest)], check=True)
                os.path.exists(mnt / f"MARK-{n}-b")
                time.sleep(0.1)                 # (the log is written by the daemon)
                after = json.loads((mnt / ".scopefs").read_text())
                if attempt:
                    seen = requests_between(log, f"MARK-{n}-a", f"MARK-{n}-b")
                    print(f"  {kind:5} {tool:9} {sum(seen.values()):3} requests, "
                          f"{after['worker_calls'] - before['worker_calls']} worker calls: "
                          + ", ".join(f"{op} {count}" for op, count in sorted(seen.items())), flush=True)
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=False)


def cpu_ticks(pid: int) -> tuple[int, int]:
    """Clock ticks of CPU time (user + system) of a process's first thread (its session
    loop) and of all its other threads."""
    main = rest = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:                         # (a thread that ended)
            continue
        ticks = int(fields[11]) + int(fields[12])
        if task.name == str(pid):
            main += ticks
        else:
            rest += ticks
    return main, rest


def copy_cpu(python: str, source: Path, work: Path, files: int, size: int = 0) -> dict:
    """One fresh mount of a copy of `source` by `python -m scopefs.daemon`, and `cp -r` of
    `files` new files into its fileset: what each file cost."""
    db, mnt, new = work / "db", work / "mnt", work / "new"
    work.mkdir()                # (new each run: files removed just before would make ext4's
    shutil.copytree(source, db)     # inode allocator pass over them, without a journal)
    new.mkdir()
    mnt.mkdir()
    data = os.urandom(size) if size else \
        next(p for p in sorted((db / "scan_000" / "fileset_0").iterdir()) if p.suffix == ".png").read_bytes()
    names = []
    for i in range(files):
        (new / f"new_{i:05d}.png").write_bytes(data)
        names.append(str(new / f"new_{i:05d}.png"))
    subprocess.run([python, "-m", "scopefs.daemon", "mount", str(db), str(mnt), "--log-file", str(work / "log")],
                   check=True)
    try:
        dest = mnt / "scan_000" / "fileset_0"
        before = json.loads((mnt / ".scopefs").read_text())
        ticks, started = cpu_ticks(before["pid"]), time.perf_counter()
        for start in range(0, files, 100):
            subprocess.run(["cp", "-r", *names[start:start + 100], str(dest)], check=True)
        folder = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder)                    # (the write-back, now)
        finally:
            os.close(folder)
        wall = time.perf_counter() - started
        after = json.loads((mnt / ".scopefs").read_text())
        main, rest = (b - a for a, b in zip(ticks, cpu_ticks(before["pid"])))
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
    tick_ms = 1e3 / os.sysconf("SC_CLK_TCK")
    return {"wall ms": wall * 1e3 / files, "CPU ms": (main + rest) * tick_ms / files,
            "loop ms": main * tick_ms / files, "threads ms": rest * tick_ms / files,
            "requests": (after["requests"] - before["requests"]) / files,
            "worker calls": (after["worker_calls"] - before["worker_calls"]) / files}


def compare_cpu(daemons: dict[str, str], files: int, rounds: int, work: Path, size: int = 0) -> None:
    source = walk_samples.fsdb(work / "fsdb", 1, 1, 10).path
    print(f"daemon CPU per file copied into an FSDB fileset, {files:,} files "
          f"{f'of {size:,} bytes ' if size else ''}a round, {time.strftime('%Y-%m-%d %H:%M')}, "
          f"load {os.getloadavg()[0]:.1f}")
    runs: dict[str, list[dict]] = {name: [] for name in daemons}
    for r in range(rounds):
        for name, python in daemons.items():
            got = copy_cpu(python, source, work / f"run-{name}-{r}", files, size)
            runs[name].append(got)
            print(f"  round {r + 1} {name:12} " + "  ".join(f"{key} {value:.2f}" for key, value in got.items()),
                  flush=True)
    print(f"  load {os.getloadavg()[0]:.1f}; medians:")
    for name, got in runs.items():
        print(f"  {name:20} " + "  ".join(f"{key} {statistics.median(g[key] for g in got):.2f}" for key in got[0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="scratch folder (default: a new temporary one)")
    parser.add_argument("--tools", default=",".join(TOOLS), help="tools to copy with (cp,cp -a,rsync -a)")
    parser.add_argument("--cpu", type=int, default=0, help="files copied into an FSDB fileset per round, timed")
    parser.add_argument("--rounds", type=int, default=6, help="rounds of --cpu (each daemon in turn)")
    parser.add_argument("--bytes", type=int, default=0, help="size of each file of --cpu (default: a small PNG)")
    parser.add_argument("--daemon", action="append", default=[], metavar="NAME=DIR",
                        help="a checkout whose .venv runs the daemon, for --cpu (default: this one)")
    args = parser.parse_args()
    if (args.bytes or args.daemon) and not args.cpu:
        parser.error("--bytes and --daemon are options of --cpu")
    work = Path(tempfile.mkdtemp(prefix="scopefs-copy-in-", dir=args.work))
    try:
        if args.cpu:
            daemons = dict(d.split("=", 1) for d in args.daemon) or {"this": str(ROOT)}
            compare_cpu({name: str(Path(path) / ".venv" / "bin" / "python") for name, path in daemons.items()},
                        args.cpu, args.rounds, work, args.bytes)
            return
        print(f"requests for one file copied into a writable mount, {time.strftime('%Y-%m-%d %H:%M')}, "
              f"kernel {os.uname().release}")
        tools = args.tools.split(",")
        trace("iid", walk_samples.iid(work / "cells.iid", 20), work, tools)
        trace("fsdb", walk_samples.fsdb(work / "fsdb", 1, 1, 5), work, tools)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
