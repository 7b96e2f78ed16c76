""".iid files: scopefs vs upstream iidfile 0.2.0, side by side in one run.

    python benchmarks/iid.py [--entries N] [--work DIR]

Listing every entry, reading one mask, and writing the file back after one change
(for files of N/10 and N entries, to show it grows with the file). Prints medians and
ratios (upstream time / scopefs time; above 1 means scopefs is faster).
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "scopefs-bench-iid")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"scopefs .iid benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f}")
    big = make_file(args.work / f"cells_{args.entries}.iid", args.entries)
    small = make_file(args.work / f"cells_{args.entries // 10}.iid", args.entries // 10)
    print(f"\n{args.entries} entries, {big.stat().st_size / 1e6:.1f} MB")

    up = upstream("load", str(big))
    mnt, mount_s = mount(big, args.work, "-o", "ro")
    try:
        t = time.perf_counter()
        names = [n for n in os.listdir(mnt) if n[:1].isdigit()]
        list_s = time.perf_counter() - t
        assert len(names) == args.entries
        keys = random.Random(1).sample(range(args.entries), 200)
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

    small_s, big_s = write_back_time(small, args.work), write_back_time(big, args.work)
    print(f"  {'write-back after one change (fsync)':<40} {small.stat().st_size / 1e6:5.1f} MB: "
          f"{small_s * 1e3:7.1f} ms   {big.stat().st_size / 1e6:5.1f} MB: {big_s * 1e3:7.1f} ms   "
          f"(time per MB {small_s / small.stat().st_size * 1e9:.1f} vs {big_s / big.stat().st_size * 1e9:.1f} ms)")


if __name__ == "__main__":
    main()
