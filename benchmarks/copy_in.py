"""Which FUSE requests one copied file costs, by tool, on the writable mounts.

    python benchmarks/copy_in.py [--work DIR] [--tools cp,cp -a,rsync -a]

Mounts a small `.iid` (new entry folders holding a mask.png) and a small FSDB (new files in a
fileset) with the daemon's request log (`-d`), copies one file at a time with each tool (the
second copy is shown: the first also looks up the path to the folder), and prints the
requests the daemon received for it, by operation, and its worker-thread calls (the
status counter). Requests are counted in the log between two lookups of marker names,
so the status reads do not count. Work is counted, not timed: steady on a shared machine.
"""
from __future__ import annotations

import argparse
import collections
import io
import json
import os
import re
import shutil
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="scratch folder (default: a new temporary one)")
    parser.add_argument("--tools", default=",".join(TOOLS), help="tools to copy with (cp,cp -a,rsync -a)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="scopefs-copy-in-", dir=args.work))
    try:
        print(f"requests for one file copied into a writable mount, {time.strftime('%Y-%m-%d %H:%M')}, "
              f"kernel {os.uname().release}")
        tools = args.tools.split(",")
        trace("iid", walk_samples.iid(work / "cells.iid", 20), work, tools)
        trace("fsdb", walk_samples.fsdb(work / "fsdb", 1, 1, 5), work, tools)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
