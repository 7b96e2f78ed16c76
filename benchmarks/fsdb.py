"""A ROMI FSDB mount walked like a local disk, against a plain copy of it, in one run.

    python benchmarks/fsdb.py [--scans 50] [--filesets 3] [--files 60] [--copy 200,1000]
                              [--repeat 3] [--baseline REV] [--work DIR]

The database is written with scopefs's FSDB API (small PNG-sized files, a metadata
dict each). It is mounted, copied with `rsync -a` from the mount into a plain folder,
and both are walked, the sides alternating: `find -printf %s`, reading every
`.metadata.json`, then `cp` of new files into one fileset in batches (--copy 200,1000:
200 files, then 1,000 more into the same fileset, each `cp` one process per file as a
user's loop would run them). Walks print medians of --repeat runs; copies print ms a
file per batch (flat means linear in the fileset's size). Ratios are plain / mount.

--baseline REV also mounts the same database with scopefs as it was at git revision
REV (exported to the work folder), so before and after show in one run.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def make_db(path: Path, scans: int, filesets: int, files: int) -> Path:
    """The database the issue measured (kept between runs)."""
    marker = path / f".made-{scans}-{filesets}-{files}"
    if marker.exists():
        return path
    from scopefs.backends.fsdb import FSDB
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    (path / "romidb").touch()
    rng = np.random.default_rng(0)
    db = FSDB(str(path))
    db.connect()
    for s in range(scans):
        scan = db.create_scan(f"plant_{s:03d}", {"species": "arabidopsis", "pot": s})
        for k in range(filesets):
            fileset = scan.create_fileset(f"fs{k}", {"task": f"task{k}"})
            for i in range(files):
                file = fileset.create_file(f"img_{i:03d}")
                file.write_raw(rng.bytes(int(rng.integers(2000, 6000))), "png")
                file.set_metadata({"shot_id": i, "pose": [float(i), 0.0, 1.0]})
    db.disconnect()
    marker.touch()
    return path


def export_revision(rev: str, work: Path) -> dict:
    """scopefs at `rev`, importable as `scopefs` (the environment to run its daemon in)."""
    tree = work / f"scopefs-{rev}"
    if not tree.exists():
        tree.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
        package = tree / "_pkg" / "scopefs"
        package.mkdir(parents=True)
        for name in ("daemon", "backends", "formats"):
            (package / name).symlink_to(tree / name)
    return dict(os.environ, PYTHONPATH=str(tree / "_pkg"))


class Mount:
    def __init__(self, source: Path, mountpoint: Path, env: dict | None = None):
        self.mountpoint, self.env = mountpoint, env
        mountpoint.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "scopefs.daemon", "mount", str(source), str(mountpoint),
                        "--log-file", f"{mountpoint}.log"], check=True, env=env)

    def close(self) -> None:
        done = subprocess.run([sys.executable, "-m", "scopefs.daemon", "umount", str(self.mountpoint)], env=self.env)
        if done.returncode and subprocess.run(["fusermount3", "-u", str(self.mountpoint)]).returncode:
            subprocess.run(["fusermount3", "-uz", str(self.mountpoint)])


def find_sizes(top: Path) -> None:
    subprocess.run(["find", str(top), "-printf", "%s\\n"], check=True, stdout=subprocess.DEVNULL)


def read_metadata(top: Path) -> None:
    for path in top.glob("*/*.metadata.json"):
        path.read_bytes()
    for path in top.glob("*/*/*.metadata.json"):
        path.read_bytes()


def copy_in(folder: Path, source: Path, first: int, count: int) -> None:
    for i in range(first, first + count):
        subprocess.run(["cp", str(source), str(folder / f"new_{i:05d}.png")], check=True)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=50)
    parser.add_argument("--filesets", type=int, default=3)
    parser.add_argument("--files", type=int, default=60)
    parser.add_argument("--copy", default="200,1000", help="batch sizes copied one after the other")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline", help="a git revision to compare with (its daemon runs from an export)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "scopefs-bench-fsdb")
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    db = make_db(work / f"db-{args.scans}-{args.filesets}-{args.files}", args.scans, args.filesets, args.files)
    print(f"scopefs FSDB benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f}; {args.scans} scans x {args.filesets} filesets x {args.files} files, "
          f"median of {args.repeat} runs, warm page cache")
    sides = {"mount": None}
    if args.baseline:
        sides = {f"mount@{args.baseline}": export_revision(args.baseline, work), **sides}
    # every side writes into its own copy of the database (the copy-in changes it)
    sources, mounts = {}, {}
    try:
        for label, env in sides.items():
            sources[label] = work / f"db-{len(sources)}"
            shutil.rmtree(sources[label], ignore_errors=True)
            shutil.copytree(db, sources[label], symlinks=True)
            mounts[label] = Mount(sources[label], work / f"mnt-{len(mounts)}", env)
        plain = work / "plain"
        shutil.rmtree(plain, ignore_errors=True)
        subprocess.run(["rsync", "-a", f"{mounts['mount'].mountpoint}/", f"{plain}/"], check=True)
        tops = {"plain copy": plain, **{label: m.mountpoint for label, m in mounts.items()}}
        n_files = sum(1 for _ in plain.rglob("*"))
        n_meta = sum(1 for _ in plain.rglob("*.metadata.json"))
        for label, fn, per in ((f"find -printf %s ({n_files:,} entries)", find_sizes, n_files),
                               (f"read every .metadata.json ({n_meta:,})", read_metadata, n_meta)):
            times = {side: [] for side in tops}
            for _ in range(args.repeat):
                for side, top in tops.items():
                    times[side].append(timed(lambda: fn(top)))
            report(label, {side: statistics.median(t) for side, t in times.items()}, per)
        fileset = Path(f"plant_{args.scans // 2:03d}") / "fs0"
        sample = work / "sample.png"
        sample.write_bytes(np.random.default_rng(1).bytes(4000))
        done = 0
        for batch in (int(n) for n in args.copy.split(",")):
            seconds = {side: timed(lambda: copy_in(top / fileset, sample, done, batch)) for side, top in tops.items()}
            report(f"cp {batch:,} new files into one fileset (after {args.files + done:,})", seconds, batch)
            done += batch
    finally:
        for m in mounts.values():
            m.close()


def report(label: str, seconds: dict, per: int) -> None:
    plain = seconds["plain copy"]
    parts = [f"{side} {1000 * s / per:8.3f} ms/file" + ("" if side == "plain copy" else f" (ratio {plain / s:5.2f})")
             for side, s in seconds.items()]
    print(f"  {label:<52} " + "   ".join(parts), flush=True)


if __name__ == "__main__":
    main()
