"""copick merged mounts vs the backing files used directly, side by side in one run.

    python benchmarks/copick.py [--gib 1] [--files 100000] [--picks 10000] [--s3-mib 256]

Each case runs --repeat times, direct and mount alternating; printed are the median
seconds and the ratio of the medians (direct / mount: 1 means as fast as direct, above 1
faster). Goals: local reads >= 0.8, metadata walks >= 0.5 (within 2x), S3 reads >= 1.
Local cases start cold (as root, the page cache is dropped before each run); with
--warm both sides read cached files, which measures only what FUSE and scopefs add.
Where fuse-overlayfs is installed, the local cases also run through it over the same
static root (its own empty upper directory): the same merge by a C daemon on libfuse,
for a reference of what FUSE itself costs on this machine.
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


def compare(label: str, direct_fn, mount_fn, goal: str, cold: bool = True, prepare=None, peer_fn=None) -> None:
    """Median seconds of each side over REPEAT alternating runs, and their ratio (and
    those of fuse-overlayfs, with `peer_fn`)."""
    sides = [(direct_fn, []), (mount_fn, [])] + ([(peer_fn, [])] if peer_fn else [])
    for _ in range(REPEAT):
        for fn, times in sides:
            if prepare:
                prepare()
            times.append(timed(fn, cold))
    d, m, *peer = (statistics.median(times) for _, times in sides)
    line = f"  {label:<44} direct {d:8.3f} s   mount {m:8.3f} s   ratio {d / m:5.2f}  ({goal})"
    if peer:
        line += f"   fuse-overlayfs {peer[0]:8.3f} s   ratio {d / peer[0]:5.2f}"
    print(line, flush=True)


class FuseOverlayfs:
    """fuse-overlayfs over the static root with an empty upper directory of its own; a
    no-op (every path None) where it is not installed."""

    def __init__(self, static: Path, work: Path):
        self.mnt = None
        if shutil.which("fuse-overlayfs") is None:
            print("  (fuse-overlayfs is not installed: no reference column)")
            return
        upper, scratch, mnt = work / "ofs-upper", work / "ofs-work", work / "ofs-mnt"
        for folder in (upper, scratch, mnt):
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
        done = subprocess.run(["fuse-overlayfs", "-o", f"lowerdir={static},upperdir={upper},workdir={scratch}",
                               str(mnt)], capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"fuse-overlayfs could not mount: {done.stderr.strip()}")
        self.mnt = mnt

    def path(self, rel: Path | str) -> Path | None:
        return None if self.mnt is None else self.mnt / rel

    def close(self) -> None:
        if self.mnt is not None:
            if subprocess.run(["fusermount3", "-u", str(self.mnt)]).returncode:
                subprocess.run(["fusermount3", "-uz", str(self.mnt)])


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
    peer = FuseOverlayfs(static, work)         # first: if it cannot mount, nothing is left mounted
    try:
        mount(str(static), mnt, "-t", "copick", "-o", f"overlay={overlay}")
    except BaseException:
        peer.close()
        raise

    def sides(fn, rel):
        """fn on the direct, mount and fuse-overlayfs paths of rel (None: no such side)."""
        at = peer.path(rel)
        return (lambda: fn(static / rel), lambda: fn(mnt / rel), at and (lambda: fn(at)))
    try:
        rel_chunks = Path("ExperimentRuns/TS_000/VoxelSpacing10.000/raw.zarr/0")
        names = sorted(os.listdir(static / rel_chunks), key=int)
        read_all(static / rel_chunks / n for n in names)                   # warm, for --warm
        direct, mounted, other = sides(lambda top: read_all(top / n for n in names), rel_chunks)
        compare(f"sequential read, {gib:g} GiB in 16 MiB chunk files", direct, mounted, "goal >= 0.8", peer_fn=other)
        direct, mounted, other = sides(lambda top: zarr.open_array(str(top), mode="r")[:],
                                       "ExperimentRuns/TS_000/VoxelSpacing10.000/wbp.zarr")
        compare("zarr: every chunk of a 256^3 tomogram (64 chunks)", direct, mounted, "goal >= 0.8", peer_fn=other)

        def walk(top: Path):
            subprocess.run(["find", str(top), "-type", "f", "-printf", "%s\\n"], check=True, stdout=subprocess.DEVNULL)
        direct, mounted, other = sides(walk, "many")
        compare(f"find + stat over {files:,} files", direct, mounted, "goal >= 0.5 (within 2x)", peer_fn=other)
        rel_picks = "ExperimentRuns/TS_000/Picks"
        doc = json.dumps({"pickable_object_name": "ribosome", "points": [{"location": {"x": 1, "y": 2, "z": 3}}]})
        folders = [work / "plain-picks", mnt / rel_picks] + ([peer.path(rel_picks)] if peer.mnt else [])

        def fresh_folders():
            for folder in folders:
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir(parents=True)

        def write_picks(folder: Path) -> None:
            for i in range(picks):
                (folder / f"user_{i}_ribosome.json").write_text(doc)
        plain, through_mount, *through_peer = folders
        compare(f"write {picks:,} small picks files", lambda: write_picks(plain), lambda: write_picks(through_mount),
                "no goal set; for reference", cold=False, prepare=fresh_folders,
                peer_fn=through_peer and (lambda: write_picks(through_peer[0])))
    finally:
        peer.close()
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
