""".iid files: scopefs vs upstream iidfile 0.2.0, and the mount vs a plain copy of it,
side by side in one run.

    python benchmarks/iid.py [--entries N] [--work DIR] [--only upstream|walk] [--rounds R]

Listing every entry, reading one mask, and writing the file back after one change
(for files of N/10 and N entries, to show it grows with the file). Prints medians and
ratios (upstream time / scopefs time; above 1 means scopefs is faster).

The walk: what `ls`, `stat`, `cat` and a walker (os.walk reading every entry.json) cost
through the mount (writable, the default, and `-o ro`) against a copy of the mount made
with `rsync -a` on the same disk, in rounds alternating the sides; every mount round is
a fresh mount. Ratio = plain time / mount time (1 would be as fast as the copy).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
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
from upstream import upstream_python  # noqa: E402


SCOPEFS = [sys.executable, "-m", "scopefs.daemon"]


def make_file(path: Path, entries: int) -> Path:
    """Disks, 15%-scatter and full rectangles, 4 to 63 px a side (like the research's)."""
    return walk_samples.iid(path, entries).path


def upstream(*args: str) -> dict:
    out = subprocess.run([upstream_python("iidfile"), str(ROOT / "benchmarks" / "upstream_iidfile_bench.py"),
                          *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def mount(source: Path, work: Path, *options: str) -> tuple[Path, float]:
    mnt = Path(tempfile.mkdtemp(dir=work, prefix="mnt"))
    t = time.perf_counter()
    subprocess.run([*SCOPEFS, "mount", str(source), str(mnt), *options], check=True)
    return mnt, time.perf_counter() - t


def umount(mnt: Path) -> None:
    subprocess.run([*SCOPEFS, "umount", str(mnt)], check=False)
    os.rmdir(mnt)


def line(label: str, ours: float, theirs: float, theirs_name: str, goal: str = "") -> None:
    print(f"  {label:<40} scopefs {ours * 1e3:9.2f} ms   {theirs_name} {theirs * 1e3:9.2f} ms   "
          f"ratio {theirs / ours:6.2f}x  {goal}")


def write_back_time(path: Path, work: Path) -> float:
    """Change one mask through the mount, then time the fsync that rewrites the file."""
    mnt, _ = mount(path, work, "-o", "writeback_delay=3600")
    try:
        folder = sorted(n for n in os.listdir(mnt) if n[:1].isdigit())[0]
        buf = io.BytesIO()
        Image.fromarray(np.full((5, 5), 255, np.uint8)).save(buf, format="PNG")
        (mnt / folder / "mask.png").write_bytes(buf.getvalue())
        fd = os.open(mnt / "meta.json", os.O_RDONLY)
        t = time.perf_counter()
        os.fsync(fd)
        elapsed = time.perf_counter() - t
        os.close(fd)
        return elapsed
    finally:
        umount(mnt)


def walk_timings(root: Path) -> dict[str, float]:
    """Seconds per operation (per entry where it says so) over the tree at `root`."""
    out = {}
    t = time.perf_counter()
    names = sorted(n for n in os.listdir(root) if n[:1].isdigit())
    out["ls of the root"] = time.perf_counter() - t
    sample = names[len(names) // 3:][:100]
    t = time.perf_counter()
    for name in sample:
        os.listdir(root / name)
    out["ls of an entry folder"] = (time.perf_counter() - t) / len(sample)
    for file in ("mask.png", "entry.json"):
        t = time.perf_counter()
        for name in sample:
            os.stat(root / name / file)
        out[f"stat {file}"] = (time.perf_counter() - t) / len(sample)
    sample = names[len(names) // 2:][:100]
    for attempt in ("first", "second"):
        t = time.perf_counter()
        for name in sample:
            (root / name / "entry.json").read_bytes()
        out[f"read entry.json ({attempt} time)"] = (time.perf_counter() - t) / len(sample)
    t = time.perf_counter()
    count = 0
    for folder, _, files in os.walk(root):
        if "entry.json" in files:
            (Path(folder) / "entry.json").read_bytes()
            count += 1
    out["os.walk + read every entry.json"] = time.perf_counter() - t
    assert count == len(names), (count, len(names))
    return out


def walk(path: Path, work: Path, rounds: int) -> None:
    """The mount (writable and -o ro) against a plain copy of it made with rsync -a."""
    plain = work / "plain-copy"
    subprocess.run(["rm", "-rf", str(plain)], check=True)
    mnt, _ = mount(path, work, "-o", "ro")
    try:
        t = time.perf_counter()
        subprocess.run(["rsync", "-a", f"{mnt}/", f"{plain}/"], check=True)
        rsync_s = time.perf_counter() - t
    finally:
        umount(mnt)
    print(f"\nwalk: {path.name} against a plain copy made with rsync -a of the mount -o ro "
          f"({rsync_s:.1f} s), {rounds} rounds, medians; ratio = plain / mount")
    sides: dict[str, list[dict]] = {"plain": [], "mount": [], "mount -o ro": []}
    for _ in range(rounds):
        for side in sides:
            if side == "plain":
                sides[side].append(walk_timings(plain))
                continue
            mnt, _ = mount(path, work, *(("-o", "ro") if side.endswith("ro") else ()))
            try:
                sides[side].append(walk_timings(mnt))
            finally:
                umount(mnt)
    for label in sides["plain"][0]:
        per = "" if label.startswith(("ls of the", "os.walk")) else " each"
        med = {side: statistics.median(r[label] for r in runs) for side, runs in sides.items()}
        print(f"  {label + per:<40} plain {med['plain'] * 1e3:9.3f} ms" + "".join(
            f"   {side} {med[side] * 1e3:9.3f} ms (ratio {med['plain'] / med[side]:5.2f})"
            for side in ("mount", "mount -o ro")))
    subprocess.run(["rm", "-rf", str(plain)], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "scopefs-bench-iid")
    parser.add_argument("--only", choices=("upstream", "walk"), help="run one part only")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the walk (default 3)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"scopefs .iid benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f}")
    big = make_file(args.work / f"cells_{args.entries}.iid", args.entries)
    print(f"\n{args.entries} entries, {big.stat().st_size / 1e6:.1f} MB")
    if args.only != "walk":
        small = make_file(args.work / f"cells_{args.entries // 10}.iid", args.entries // 10)
        against_upstream(big, small, args.entries, args.work)
    if args.only != "upstream":
        walk(big, args.work, args.rounds)


def against_upstream(big: Path, small: Path, entries: int, work: Path) -> None:
    """Listing, one mask and write-back against upstream iidfile."""
    up = upstream("load", str(big))
    mnt, mount_s = mount(big, work, "-o", "ro")
    try:
        t = time.perf_counter()
        names = [n for n in os.listdir(mnt) if n[:1].isdigit()]
        list_s = time.perf_counter() - t
        assert len(names) == entries
        keys = random.Random(1).sample(range(entries), 200)
        by_key = {int(n[:6]): n for n in names}
        mask_times = []
        for k in keys:
            t = time.perf_counter()
            (mnt / by_key[k] / "mask.png").read_bytes()
            mask_times.append(time.perf_counter() - t)
    finally:
        umount(mnt)
    up_masks = upstream("mask", str(big), json.dumps(keys))["per_mask_s"]
    line("list all entries (ls of the mount)", list_s, up["everything_s"], "upstream fetch(everything)",
         "(goal: < 200 ms)")
    line("list all entries (ls of the mount)", list_s, up["iids_only_s"], "upstream fetch(iids only)")
    line("mount + list", mount_s + list_s, up["everything_s"], "upstream fetch(everything)")
    line("one mask (median of 200)", statistics.median(mask_times), statistics.median(up_masks),
         "upstream fetch(key)+mask()", "(goal: a few ms)")

    small_s, big_s = write_back_time(small, work), write_back_time(big, work)
    print(f"  {'write-back after one change (fsync)':<40} {small.stat().st_size / 1e6:5.1f} MB: "
          f"{small_s * 1e3:7.1f} ms   {big.stat().st_size / 1e6:5.1f} MB: {big_s * 1e3:7.1f} ms   "
          f"(time per MB {small_s / small.stat().st_size * 1e9:.1f} vs {big_s / big.stat().st_size * 1e9:.1f} ms)")


if __name__ == "__main__":
    main()
