"""A real file manager on scopefs mounts against the same file manager on a plain copy.

    python benchmarks/filemanager.py [--frames 1500,20000] [--entries 10000] [--fileset 500]
        [--runs 20] [--repeat 3] [--timeout 60] [--cases imgstore,iid,fsdb,copick]
        [--work DIR] [--screenshot PNG]

PCManFM (Debian's, with libfm's own thumbnailer) runs under Xvfb in icon view, once per
folder and side; the plain copy is `rsync -a` of the mount on the same disk. Per case the
sides alternate; the first run of each side is cold (as root the page cache is dropped,
and the mount is fresh), the others warm. Times are seconds from starting PCManFM:

  window   its window is mapped
  items    the first items are drawn in the folder view
  view     the view reached what it finally showed (thumbnails of the items in sight)
  idle     PCManFM stopped working (no CPU, no reads, no thread waiting on a file
           system): every thumbnail made, including those out of sight

">T" means not within the timeout. The ratio is plain / mount (1: as fast as a plain
folder). A last run per case, on a fresh mount with -d, counts the requests PCManFM
sends per entry of the folder, by kind.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import desktop  # noqa: E402
import walk_samples  # noqa: E402
from control_file import daemon_status  # noqa: E402
from iid import make_file as make_iid  # noqa: E402  (benchmarks/iid.py)

SCOPEFS = [sys.executable, "-m", "scopefs.daemon"]
#: Timeline attributes, as the columns are headed
FIELDS = {"window": "window", "first_items": "items", "view_final": "view", "idle": "idle"}


def drop_caches() -> None:
    if os.geteuid() == 0:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3\n")


# -- sources ------------------------------------------------------------------------
def made(path: Path, make) -> Path:
    """`path`, made by `make(path)` unless an earlier run finished making it."""
    marker = path.with_name(path.name + ".made")
    if not marker.exists():
        if path.is_dir():
            shutil.rmtree(path)
        make(path)
        marker.touch()
    return path


def make_imgstore(frames: int, shape) -> callable:
    def make(path: Path) -> None:
        from stores import make_store
        make_store(path, "mjpeg/avi", shape=shape, numbers=range(frames), chunksize=1000, video=True)
    return make


def make_fsdb(files: int) -> callable:
    """One scan whose fileset `images` holds `files` 256 x 256 PNG images."""
    return lambda path: walk_samples.fsdb_images(path, files)


def make_copick(runs: int) -> callable:
    """A static root of `runs` runs, each with two tomograms (and their previews) and a
    picks file."""
    return lambda path: walk_samples.copick_tomograms(path, runs)


# -- mounts -------------------------------------------------------------------------
@dataclass
class Mount:
    source: str
    options: tuple[str, ...]
    point: Path

    def __enter__(self) -> Mount:
        self.point.mkdir(parents=True, exist_ok=True)
        subprocess.run([*SCOPEFS, "mount", self.source, str(self.point), *self.options], check=True)
        return self

    def __exit__(self, *exc) -> None:
        if subprocess.run([*SCOPEFS, "umount", str(self.point)], capture_output=True).returncode:
            subprocess.run(["fusermount3", "-uz", str(self.point)], capture_output=True)

    def requests(self) -> int:
        return daemon_status(self.point)["requests"]


@dataclass
class Case:
    label: str
    source: str
    options: tuple[str, ...]
    folder: str            # the folder opened, relative to the mount
    copy: str              # what is copied for the plain side, relative to the mount (with
                           # the case's options or without: the same files)


def cases(args, work: Path) -> list[Case]:
    out = []
    if "imgstore" in args.cases:
        shape = tuple(int(v) for v in args.frame_shape.split("x"))[::-1] + (3,)
        for n in args.frames:
            store = made(work / f"imgstore-{n}-{args.frame_shape}", make_imgstore(n, shape))
            out.append(Case(f"imgstore frames/, {n:,} frames", str(store), (), "frames", "frames"))
    if "iid" in args.cases:
        iid = work / f"cells-{args.entries}.iid"
        make_iid(iid, args.entries)
        out.append(Case(f".iid root, {args.entries:,} entries", str(iid), (), ".", "."))
        out.append(Case(f".iid root, {args.entries:,} entries, mounted -o ro", str(iid), ("-o", "ro"), ".", "."))
        out.append(Case(f".iid entry folder ({args.entries:,} entries)", str(iid), (), "000042-cell-42", "."))
    if "fsdb" in args.cases:
        db = made(work / f"fsdb-{args.fileset}", make_fsdb(args.fileset))
        for options in ((), ("-o", "ro")):
            out.append(Case(f"FSDB fileset, {args.fileset:,} images{', mounted -o ro' if options else ''}",
                            str(db), options, "plant_001/images", "plant_001/images"))
    if "copick" in args.cases:
        static = made(work / f"copick-{args.runs}", make_copick(args.runs))
        overlay = work / f"copick-{args.runs}-overlay"
        overlay.mkdir(exist_ok=True)
        options = ("-t", "copick", "-o", f"overlay={overlay}")
        out.append(Case(f"copick merged root ({args.runs} runs)", str(static), options, ".", "."))
        out.append(Case("copick VoxelSpacing folder (previews)", str(static), options,
                        "ExperimentRuns/TS_000/VoxelSpacing10.000", "."))
    return out


def plain_copy(case: Case, work: Path) -> Path:
    """`rsync -a` of what the case opens, from a mount of its own (made once per source)."""
    key = re.sub(r"[^A-Za-z0-9]+", "_", f"{case.source}-{case.copy}")[-120:]
    plain = work / "plain" / key
    if not (plain.parent / (key + ".made")).exists():
        shutil.rmtree(plain, ignore_errors=True)
        plain.mkdir(parents=True)
        with Mount(case.source, case.options, work / "mnt-copy") as m:
            t = time.perf_counter()
            subprocess.run(["rsync", "-a", f"{m.point / case.copy}/", f"{plain}/"], check=True)
            print(f"    (plain copy: rsync -a of the mount took {time.perf_counter() - t:.1f} s)", flush=True)
        (plain.parent / (key + ".made")).touch()
    return plain / os.path.relpath(case.folder, case.copy)


# -- runs ---------------------------------------------------------------------------
def one_run(screen: desktop.Desktop, view: desktop.Box, folder: Path, timeout: float, cold: bool,
            shot: Path | None = None) -> desktop.Timeline:
    shutil.rmtree(screen.home / ".cache" / "thumbnails", ignore_errors=True)
    if cold:
        drop_caches()
    fm = screen.open(folder)
    try:
        line = fm.watch(view, timeout)
        if shot is not None:
            screen.screenshot().save(shot)
        errors = [title for _, title in fm.windows() if title != folder.name]
        if errors or not fm.alive():
            print(f"    !! {folder}: windows {errors}, alive {fm.alive()}", flush=True)
        return line
    finally:
        fm.close()


def seconds(value: float | None, timeout: float) -> str:
    return f">{timeout:.0f}" if value is None else f"{value:.2f}"


def summary(lines: list[desktop.Timeline], name: str) -> tuple[float | None, float | None]:
    """The cold run's value and the warm runs' median (None where one did not happen)."""
    values = [getattr(line, name) for line in lines]
    warm = values[1:]
    return values[0], (None if not warm or None in warm else statistics.median(warm))


def op_counts(case: Case, screen, view, work: Path, timeout: float) -> Counter:
    """Requests by kind that one opening of the folder sends to a fresh mount (-d log)."""
    log = work / "ops.log"
    log.unlink(missing_ok=True)
    with Mount(case.source, (*case.options, "-d", "--log-file", str(log)), work / "mnt-ops") as m:
        one_run(screen, view, m.point / case.folder, timeout, cold=True)
    ops = Counter()
    for line in log.read_text(errors="replace").splitlines():
        found = re.search(r" DEBUG scopefs\.daemon\.fs\[\d+\]: ([a-z_]+)\(", line)
        if found:
            ops[found.group(1)] += 1
    text = log.read_text(errors="replace")
    if "Traceback" in text:
        kept = work / f"traceback-{re.sub(r'[^A-Za-z0-9]+', '_', case.label)}.log"
        shutil.copy(log, kept)
        after = text[text.index("Traceback"):].splitlines()[1:]
        error = next((line for line in after if line and not line[0].isspace()), "?")
        print(f"    !! the daemon log has a traceback ({error[:160]}; kept in {kept})", flush=True)
    return ops


def run_case(case: Case, screen, view, args, work: Path) -> None:
    print(f"\n{case.label}", flush=True)
    plain = plain_copy(case, work)
    entries = len(os.listdir(plain))
    sides = {"plain": [], "mount": []}
    with Mount(case.source, case.options, work / "mnt") as m:
        folder = m.point / case.folder
        for i in range(args.repeat):
            for side, path in (("plain", plain), ("mount", folder)):
                shot = args.screenshot if (side == "mount" and i == 0 and case is args.shot_case) else None
                before = m.requests() if side == "mount" else 0
                line = one_run(screen, view, path, args.timeout, cold=(i == 0), shot=shot)
                if side == "mount":
                    line.requests = m.requests() - before
                sides[side].append(line)
    print(f"  {entries:,} entries; seconds from starting PCManFM, cold run | median of warm runs")
    print("  " + " " * 6 + "".join(f"{name:>16}" for name in FIELDS.values()) + "     MB read")
    for side, lines in sides.items():
        cells = []
        for name in FIELDS:
            cold, warm = summary(lines, name)
            warm_text = seconds(warm, args.timeout) if len(lines) > 1 else "-"
            cells.append(f"{seconds(cold, args.timeout):>7} | {warm_text:<6}")
        print(f"  {side:<6}" + "".join(f"{c:>16}" for c in cells) + f"   {lines[0].bytes_read / 1e6:7.1f}")
    ratios = []
    for name in FIELDS:
        p, m_ = (summary(sides[s], name)[0] for s in ("plain", "mount"))
        ratios.append("-" if p is None or m_ is None or m_ == 0 else f"{p / m_:.2f}")
    print(f"  {'ratio':<6}" + "".join(f"{r:>16}" for r in ratios) + "   (plain / mount, cold runs)")
    requests = [line.requests for line in sides["mount"]]
    print(f"  requests to the daemon per opening: {', '.join(f'{r:,}' for r in requests)} "
          f"({requests[0] / max(entries, 1):.1f} per entry, cold)")
    ops = op_counts(case, screen, view, work, args.timeout)
    total = sum(ops.values())
    print(f"  by kind (fresh mount, -d): {total:,} requests, "
          + ", ".join(f"{op} {n / max(entries, 1):.2f}" for op, n in ops.most_common()) + " per entry", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", default="1500,20000", help="frame counts of the imgstore cases")
    parser.add_argument("--frame-shape", default="320x240", help="frame width x height")
    parser.add_argument("--entries", type=int, default=10000, help="entries of the .iid")
    parser.add_argument("--fileset", type=int, default=500, help="images in the FSDB fileset")
    parser.add_argument("--runs", type=int, default=20, help="runs of the copick project")
    parser.add_argument("--repeat", type=int, default=3, help="openings per side (the first cold)")
    parser.add_argument("--timeout", type=float, default=60, help="seconds an opening is watched at most")
    parser.add_argument("--cases", default="imgstore,iid,fsdb,copick")
    parser.add_argument("--work", type=Path, help="sources and plain copies are kept here between runs")
    parser.add_argument("--screenshot", type=Path, default=ROOT / "benchmarks" / "results" / "filemanager.png",
                        help="where the first imgstore case's mount window is saved")
    args = parser.parse_args()
    args.frames = [int(n) for n in args.frames.split(",") if n]
    args.cases = set(args.cases.split(","))
    reason = desktop.missing()
    if reason:
        raise SystemExit(f"cannot run: {reason}")
    work = args.work or Path(tempfile.mkdtemp(prefix="scopefs-fm-"))
    work.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    cold = "cold runs drop the page cache" if os.geteuid() == 0 else "not root: no cache drop"
    print(f"scopefs file manager benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
          f"load {load:.1f}, PCManFM {pcmanfm_version()}, {cold}")
    try:
        todo = cases(args, work)
        args.shot_case = next((c for c in todo if c.label.startswith("imgstore")), None)
        home = Path(tempfile.mkdtemp(dir=work, prefix="home"))
        empty = work / "empty"
        empty.mkdir(exist_ok=True)
        with desktop.Desktop(home) as screen:
            view = screen.folder_view(empty)
            for case in todo:
                run_case(case, screen, view, args, work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


def pcmanfm_version() -> str:
    done = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "pcmanfm"], capture_output=True, text=True)
    return done.stdout.strip() or "?"


if __name__ == "__main__":
    main()
