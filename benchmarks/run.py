"""scopefs vs upstream imgstore, side by side in one run (see benchmarks/README.md).

    python benchmarks/run.py [--frames N] [--million/--no-million] [--work DIR]

Prints medians and ratios; the goals are stated next to each line. Machines here are
shared and noisy: compare the ratios of one run, not absolute numbers across runs.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from control_file import daemon_status  # noqa: E402
from stores import index_only_store  # noqa: E402
from upstream import upstream_python  # noqa: E402  (the venv the tests use too)

from scopefs.formats.imgstore.sample import sample_frame  # noqa: E402
from scopefs.formats.imgstore.writer import ImgStoreWriter  # noqa: E402

SHAPE = (480, 640, 3)
SCOPEFS = [sys.executable, "-m", "scopefs.daemon"]


def make_store(path: Path, fmt: str, frames: int) -> Path:
    if (path / "metadata.yaml").exists():
        return path
    if path.exists():
        shutil.rmtree(path)
    base = [sample_frame(i, SHAPE) for i in range(16)]
    with ImgStoreWriter(str(path), fmt, SHAPE) as store:
        for i in range(frames):
            img = base[i % 16].copy()
            img[16:32] = sample_frame(i, (32, 640, 3))[16:32]        # the barcode of this frame
            store.add_image(img, i, 1.7e9 + i * 0.04)
    return path


def make_million(path: Path, frames: int = 1_000_000, chunk: int = 10_000) -> Path:
    """A directory store whose index says a million frames; mounting and listing never
    read frame files, so none are written."""
    if not (path / "metadata.yaml").exists():
        index_only_store(path, range(frames), chunk, SHAPE)
    return path


class Mount:
    def __init__(self, source: Path, workdir: Path, *options: str):
        self.path = Path(tempfile.mkdtemp(dir=workdir, prefix="mnt"))
        t0 = time.perf_counter()
        subprocess.run([*SCOPEFS, "mount", str(source), str(self.path), *options], check=True)
        self.mount_s = time.perf_counter() - t0
        self.pid = daemon_status(self.path)["pid"]

    def peak_rss_mb(self) -> float:
        with open(f"/proc/{self.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def close(self) -> None:
        subprocess.run([*SCOPEFS, "umount", str(self.path)], check=False)
        os.rmdir(self.path)


def read_file(path: Path) -> float:
    t = time.perf_counter()
    with open(path, "rb", buffering=0) as fh:
        while fh.read(1 << 20):
            pass
    return time.perf_counter() - t


def upstream(*args: str) -> dict:
    out = subprocess.run([upstream_python("imgstore"), str(ROOT / "benchmarks" / "upstream_imgstore_bench.py"),
                          *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def ms(values) -> str:
    return f"{statistics.median(values) * 1e3:7.2f} ms"


def line(label: str, ours: float, theirs: float, goal: str, ours_name="mount", theirs_name="upstream"):
    ratio = theirs / ours if ours else float("nan")
    print(f"  {label:<34} {ours_name} {ours * 1e3:8.2f} ms   {theirs_name} {theirs * 1e3:8.2f} ms   "
          f"speed ratio {ratio:5.2f}x  ({goal})")
    return ratio


def bench_store(name: str, store: Path, frames: int, work: Path, results: dict) -> None:
    print(f"\n{name}: {frames} frames of {SHAPE[1]}x{SHAPE[0]} colour")
    rng = random.Random(1)
    sequential = list(range(frames))
    randoms = rng.sample(range(frames), min(200, frames))
    r = results.setdefault(name, {})

    up_seq = upstream("read", str(store), "get_image", json.dumps(sequential))["per_frame_s"]
    up_seq_png = upstream("read", str(store), "get_image_png", json.dumps(sequential))["per_frame_s"]
    up_rand = upstream("read", str(store), "get_image", json.dumps(randoms))["per_frame_s"]

    mnt = Mount(store, work)
    try:
        names = sorted(os.listdir(mnt.path / "frames"))
        seq = [read_file(mnt.path / "frames" / names[i]) for i in sequential]
        rss_seq = mnt.peak_rss_mb()
    finally:
        mnt.close()
    mnt = Mount(store, work)
    try:
        rand = [read_file(mnt.path / "frames" / names[i]) for i in randoms]
    finally:
        mnt.close()
    mnt = Mount(store, work)
    try:
        parallel_set = rng.sample(range(frames), min(400, frames))
        t0 = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: read_file(mnt.path / "frames" / names[i]), parallel_set))
        parallel_per_frame = (time.perf_counter() - t0) / len(parallel_set)
        rss = max(rss_seq, mnt.peak_rss_mb())
    finally:
        mnt.close()

    rand_indexed = seq_bmp = None
    if name == "mjpeg/avi":
        mnt = Mount(store, work, "-o", "image_format=bmp")
        try:
            seq_bmp = [read_file(mnt.path / "frames" / n.replace(".png", ".bmp")) for n in names]
        finally:
            mnt.close()
        mnt = Mount(store, work, "-o", "mjpeg_reader=opencv")
        try:
            rand_indexed = [read_file(mnt.path / "frames" / names[i]) for i in randoms]
        finally:
            mnt.close()

    med = statistics.median
    r["sequential"] = {"mount_ms": med(seq) * 1e3, "upstream_get_image_ms": med(up_seq) * 1e3,
                       "upstream_get_image_png_ms": med(up_seq_png) * 1e3,
                       "mount_total_s": sum(seq), "upstream_total_s": sum(up_seq)}
    r["random"] = {"mount_ms": med(rand) * 1e3, "upstream_ms": med(up_rand) * 1e3}
    r["parallel8_random"] = {"mount_ms_per_frame": parallel_per_frame * 1e3}
    r["daemon_peak_rss_mb"] = rss
    print("  (median per frame; ratio > 1 means the mount is faster)")
    line("sequential, whole file", med(seq), med(up_seq), "goal: >= 0.67x of decode alone")
    line("sequential vs decode + write PNG", med(seq), med(up_seq_png), "the export users do instead")
    line("random", med(rand), med(up_rand), "goal: >= 1x")
    line("8 parallel readers, random", parallel_per_frame, med(up_rand), "goal: > 1x, per frame of throughput")
    if seq_bmp:
        r["sequential_bmp"] = {"mount_ms": med(seq_bmp) * 1e3}
        line("sequential, -o image_format=bmp", med(seq_bmp), med(up_seq), "encoding cost left out")
    if rand_indexed:
        r["random_mjpeg_reader_opencv"] = {"mount_ms": med(rand_indexed) * 1e3}
        line("random, -o mjpeg_reader=opencv", med(rand_indexed), med(up_rand), "indexed MJPEG seeks")
    print(f"  {'daemon peak RSS':<34} {rss:8.1f} MiB")


def bench_million(store: Path, work: Path, results: dict) -> None:
    print("\n1,000,000-frame store (100 chunks of 10,000)")
    up = upstream("open", str(store))
    t0 = time.perf_counter()
    mnt = Mount(store, work)
    try:
        os.stat(mnt.path / "frames" / "000000.png")
        first_stat = time.perf_counter() - t0
        t = time.perf_counter()
        os.stat(mnt.path / "by-number" / "999999.png")
        os.readlink(mnt.path / "at-time" / f"{1.7e9 + 500000 * 0.04:.2f}.png")
        lookups = time.perf_counter() - t
        t = time.perf_counter()
        subprocess.run(f"ls -l {mnt.path}/frames > /dev/null", shell=True, check=True)
        ls_s = time.perf_counter() - t
        rss = mnt.peak_rss_mb()
    finally:
        mnt.close()
    results["million"] = {"mount_and_first_stat_s": first_stat, "mount_command_s": mnt.mount_s,
                          "upstream_open_s": up["open_s"], "ls_l_frames_s": ls_s,
                          "by_number_and_at_time_lookup_s": lookups, "daemon_peak_rss_mb": rss}
    print(f"  {'mount + first stat':<34} {first_stat:8.2f} s    (goal: < 2 s)")
    print(f"  {'upstream new_for_filename':<34} {up['open_s']:8.2f} s    "
          f"speed ratio {up['open_s'] / first_stat:5.2f}x")
    print(f"  {'by-number + at-time lookup':<34} {lookups * 1e3:8.2f} ms")
    print(f"  {'ls -l frames/ (1,000,000 entries)':<34} {ls_s:8.2f} s")
    print(f"  {'daemon peak RSS after ls -l':<34} {rss:8.1f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--npy-frames", type=int, default=300, help="npy frames are 900 KiB each")
    parser.add_argument("--million", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "scopefs-bench")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"scopefs benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f}")
    results: dict = {}
    stores = [("mjpeg/avi", args.frames), ("avc1/mp4", args.frames), ("npy", args.npy_frames)]
    for fmt, frames in stores:
        store = make_store(args.work / f"{fmt.replace('/', '_')}_{frames}", fmt, frames)
        bench_store(fmt, store, frames, args.work, results)
    if args.million:
        bench_million(make_million(args.work / "million"), args.work, results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
