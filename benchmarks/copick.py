"""copick merged mounts vs the backing files used directly, side by side in one run.

    python benchmarks/copick.py [--gib 1] [--files 100000] [--picks 10000] [--s3-mib 256]

Each case runs --repeat times, direct and mount alternating; printed are the median
seconds and the ratio of the medians (direct / mount: 1 means as fast as direct, above 1
faster). Goals: local reads >= 0.8, metadata walks >= 0.5 (within 2x), S3 reads >= 1.
Local cases start cold (as root, the page cache is dropped before each run); with
--warm both sides read cached files, which measures only what FUSE and scopefs add.
"""
from __future__ import annotations

import argparse
import json
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
sys.path.insert(0, str(ROOT / "tests"))
SCOPEFS = [sys.executable, "-m", "scopefs.daemon"]
BLOCK = 1 << 20


COLD = True
REPEAT = 5


def drop_caches() -> None:
    if COLD and os.geteuid() == 0:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3\n")


def timed(fn, cold: bool = False) -> float:
    if cold:
        drop_caches()
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def read_all(paths) -> None:
    for path in paths:
        with open(path, "rb", buffering=0) as fh:
            while fh.read(BLOCK):
                pass


def compare(label: str, direct_fn, mount_fn, goal: str, cold: bool = True, prepare=None) -> None:
    """Median seconds of each side over REPEAT alternating runs, and their ratio."""
    direct, mounted = [], []
    for _ in range(REPEAT):
        for fn, times in ((direct_fn, direct), (mount_fn, mounted)):
            if prepare:
                prepare()
            times.append(timed(fn, cold))
    d, m = statistics.median(direct), statistics.median(mounted)
    print(f"  {label:<44} direct {d:8.3f} s   mount {m:8.3f} s   ratio {d / m:5.2f}  ({goal})", flush=True)


def make_static(work: Path, gib: float, files: int) -> Path:
    static = work / "static"
    marker = static / f".made-{gib}-{files}"
    if marker.exists():
        return static
    shutil.rmtree(static, ignore_errors=True)
    chunks = static / "ExperimentRuns" / "TS_000" / "VoxelSpacing10.000" / "raw.zarr" / "0"
    chunks.mkdir(parents=True)
    block = os.urandom(16 << 20)
    for i in range(int(gib * 64)):
        (chunks / f"{i}").write_bytes(block)
    import zarr
    z = zarr.create_array(str(static / "ExperimentRuns" / "TS_000" / "VoxelSpacing10.000" / "wbp.zarr"),
                          shape=(256, 256, 256), chunks=(64, 64, 64), dtype="float32", zarr_format=2)
    z[:] = np.random.default_rng(0).random((256, 256, 256), dtype=np.float32)
    many = static / "many"
    for d in range(100):
        folder = many / f"d{d:03d}"
        folder.mkdir(parents=True)
        for i in range(files // 100):
            (folder / f"f{i:05d}.json").write_bytes(b"{}")
    marker.touch()
    return static


def mount(source: str, mountpoint: Path, *options: str) -> None:
    mountpoint.mkdir(parents=True, exist_ok=True)
    subprocess.run([*SCOPEFS, "mount", source, str(mountpoint), *options], check=True)


def umount(mountpoint: Path) -> None:
    subprocess.run([*SCOPEFS, "umount", str(mountpoint)], check=False)


def local_benchmarks(work: Path, gib: float, files: int, picks: int) -> None:
    import zarr
    static = make_static(work, gib, files)
    overlay = work / "overlay"
    shutil.rmtree(overlay, ignore_errors=True)
    overlay.mkdir()
    mnt = work / "mnt"
    mount(str(static), mnt, "-t", "copick", "-o", f"overlay={overlay}")
    try:
        rel_chunks = Path("ExperimentRuns/TS_000/VoxelSpacing10.000/raw.zarr/0")
        names = sorted(os.listdir(static / rel_chunks), key=int)
        read_all(static / rel_chunks / n for n in names)                   # warm, for --warm
        compare(f"sequential read, {gib:g} GiB in 16 MiB chunk files",
                lambda: read_all(static / rel_chunks / n for n in names),
                lambda: read_all(mnt / rel_chunks / n for n in names), "goal >= 0.8")
        rel_tomo = "ExperimentRuns/TS_000/VoxelSpacing10.000/wbp.zarr"
        compare("zarr: every chunk of a 256^3 tomogram (64 chunks)",
                lambda: zarr.open_array(str(static / rel_tomo), mode="r")[:],
                lambda: zarr.open_array(str(mnt / rel_tomo), mode="r")[:], "goal >= 0.8")

        def walk(top: Path):
            subprocess.run(["find", str(top), "-type", "f", "-printf", "%s\\n"], check=True, stdout=subprocess.DEVNULL)
        compare(f"find + stat over {files:,} files", lambda: walk(static / "many"), lambda: walk(mnt / "many"),
                "goal >= 0.5 (within 2x)")
        plain = work / "plain-picks"
        target = mnt / "ExperimentRuns" / "TS_000" / "Picks"
        doc = json.dumps({"pickable_object_name": "ribosome", "points": [{"location": {"x": 1, "y": 2, "z": 3}}]})

        def fresh_folders():
            for folder in (plain, target):
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir(parents=True)

        def write_picks(folder: Path) -> None:
            for i in range(picks):
                (folder / f"user_{i}_ribosome.json").write_text(doc)
        compare(f"write {picks:,} small picks files", lambda: write_picks(plain), lambda: write_picks(target),
                "no goal set; for reference", cold=False, prepare=fresh_folders)
    finally:
        umount(mnt)


def s3_benchmark(work: Path, mib: int) -> None:
    from s3server import SeaweedS3
    server = SeaweedS3(Path(tempfile.mkdtemp(dir=work, prefix="weed")))
    mnt = work / "mnt-s3"
    try:
        fs = server.filesystem()
        fs.mkdir("bench")
        block = os.urandom(8 << 20)
        names = [f"run/chunk{i:03d}" for i in range(max(1, mib // 8))]
        for name in names:
            fs.pipe(f"bench/{name}", block)
        overlay = work / "overlay-s3"
        shutil.rmtree(overlay, ignore_errors=True)
        overlay.mkdir()
        config = work / "s3.json"
        config.write_text(json.dumps({"config_type": "filesystem", "pickable_objects": [],
                                      "static_root": "s3://bench", "static_fs_args": server.fs_args,
                                      "overlay_root": f"local://{overlay}"}))
        mount(str(config), mnt)

        def direct_read():
            direct_fs = server.filesystem()
            for name in names:
                with direct_fs.open(f"bench/{name}", "rb") as fh:
                    while fh.read(BLOCK):
                        pass
        compare(f"S3 static root: read {len(names) * 8} MiB in 8 MiB objects", direct_read,
                lambda: read_all(mnt / name for name in names), "vs s3fs used directly; goal >= 1")
    finally:
        umount(mnt)
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--picks", type=int, default=10_000)
    parser.add_argument("--s3-mib", type=int, default=256)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "scopefs-bench-copick")
    parser.add_argument("--warm", action="store_true", help="compare with files in the page cache")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each side; medians are printed")
    parser.add_argument("--only", choices=("local", "s3"), help="run only these cases")
    args = parser.parse_args()
    global COLD, REPEAT
    COLD, REPEAT = not args.warm, args.repeat
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"scopefs copick benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f}, {'cold' if COLD and os.geteuid() == 0 else 'warm'} page cache, "
          f"median of {REPEAT} runs")
    if args.only != "s3":
        local_benchmarks(args.work, args.gib, args.files, args.picks)
    if args.only != "local":
        s3_benchmark(args.work, args.s3_mib)


if __name__ == "__main__":
    main()
