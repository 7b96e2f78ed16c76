"""copick merged mounts vs the backing files used directly, side by side in one run.

    python benchmarks/copick.py [--gib 1] [--files 100000] [--picks 10000] [--s3-mib 256]
                                [--mrc-shape 256,1024,1024] [--mrc-chunk 256] [--only local|s3|mrc]

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


def make_tomogram(work: Path, shape: tuple[int, int, int], chunk: int) -> Path:
    """A copick project (static root and config) with one float32 tomogram written as copick
    1.x writes it: OME-Zarr, zarr v2, blosc-lz4, cubic chunks."""
    import numcodecs
    import zarr
    static = work / f"mrc-static-{'x'.join(map(str, shape))}-{chunk}"
    config = work / f"{static.name}.json"
    if not (static / ".made").exists():
        shutil.rmtree(static, ignore_errors=True)
        store = static / "ExperimentRuns" / "TS_001" / "VoxelSpacing10.000" / "wbp.zarr"
        group = zarr.open_group(str(store), mode="w", zarr_format=2)
        array = group.create_array("0", shape=shape, dtype="float32", chunks=(chunk,) * 3,
                                   compressors=numcodecs.Blosc(cname="lz4", clevel=5, shuffle=1),
                                   chunk_key_encoding={"name": "v2", "separator": "/"})
        rng = np.random.default_rng(0)
        for z in range(0, shape[0], chunk):
            array[z:z + chunk] = rng.normal(size=(min(chunk, shape[0] - z), *shape[1:])).astype(np.float32)
        group.attrs["multiscales"] = [{"version": "0.4", "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [10.0] * 3}]}], "axes": [{"name": a, "type": "space", "unit": "angstrom"}
                                                              for a in "zyx"]}]
        (static / ".made").touch()
    config.write_text(json.dumps({"config_type": "filesystem", "name": "bench", "pickable_objects": [],
                                  "overlay_root": f"local://{static}", "overlay_fs_args": {"auto_mkdir": True}}))
    return config


def daemon_peak_rss_mib(mountpoint: Path) -> float:
    pid = json.loads((mountpoint / ".scopefs").read_text())["pid"]
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM")) / 1024


def mrc_benchmark(work: Path, shape: tuple[int, int, int], chunk: int) -> None:
    """The MRC view of a tomogram against what a user does today (`copick export tomogram
    --output-format mrc`, then read the file) and against zarr in-process."""
    import mrcfile
    import zarr
    from upstream import upstream_python
    config = make_tomogram(work, shape, chunk)
    copick = str(Path(upstream_python("copick")).parent / "copick")
    mnt, out = work / "mnt-mrc", work / "mrc-export"
    view = mnt / "ExperimentRuns" / "TS_001" / "VoxelSpacing10.000" / "wbp.mrc"
    exported = out / "TS_001" / "VoxelSpacing10.000" / "wbp.mrc"
    store = config.parent / config.stem / "ExperimentRuns" / "TS_001" / "VoxelSpacing10.000" / "wbp.zarr"
    mib = np.prod(shape) * 4 / 2 ** 20

    def remount(*options: str):
        """A fresh daemon, nothing decoded yet; the view stat'ed once (as `ls -l` would), so
        the daemon's one-time imports of zarr and mrcfile are not counted."""
        if os.path.ismount(mnt):
            umount(mnt)
        mount(str(config), mnt, *options)
        view.stat()

    def central_slice(path: Path) -> None:
        with mrcfile.mmap(str(path), mode="r") as mrc:
            np.array(mrc.data[shape[0] // 2])

    def export_then_slice() -> None:
        shutil.rmtree(out, ignore_errors=True)
        subprocess.run([copick, "export", "tomogram", "-c", str(config), "--tomogram-uri", "wbp@10.0",
                        "--output-dir", str(out), "--output-format", "mrc"], check=True, capture_output=True)
        central_slice(exported)
    try:
        compare(f"MRC {'x'.join(map(str, shape[::-1]))} f32: first slice, export+read vs view",
                export_then_slice, lambda: central_slice(view), "goal >= 20", prepare=remount)
        compare(f"MRC: read all {mib:.0f} MiB, exported file vs view", lambda: read_all([exported]),
                lambda: read_all([view]), "goal >= 0.5", prepare=remount)
        compare(f"MRC: read all {mib:.0f} MiB, zarr in-process vs view",
                lambda: zarr.open_array(str(store / "0"), mode="r")[:], lambda: read_all([view]),
                "for reference", prepare=remount)
        cache_mib = 64
        remount("-o", f"mrc_cache_mb={cache_mib}")
        read_all([view])
        print(f"  MRC: daemon peak RSS after streaming {mib:.0f} MiB with mrc_cache_mb={cache_mib}: "
              f"{daemon_peak_rss_mib(mnt):.0f} MiB (chunks decoded: "
              f"{json.loads((mnt / '.scopefs').read_text())['mrc_views']['chunks_decoded']})", flush=True)
    finally:
        umount(mnt)
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--picks", type=int, default=10_000)
    parser.add_argument("--s3-mib", type=int, default=256)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "scopefs-bench-copick")
    parser.add_argument("--warm", action="store_true", help="compare with files in the page cache")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each side; medians are printed")
    parser.add_argument("--mrc-shape", default="256,1024,1024", help="z,y,x of the MRC cases' tomogram")
    parser.add_argument("--mrc-chunk", type=int, default=256, help="its cubic zarr chunks (copick: 256)")
    parser.add_argument("--only", choices=("local", "s3", "mrc"), help="run only these cases")
    args = parser.parse_args()
    global COLD, REPEAT
    COLD, REPEAT = not args.warm, args.repeat
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"scopefs copick benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f}, {'cold' if COLD and os.geteuid() == 0 else 'warm'} page cache, "
          f"median of {REPEAT} runs")
    if args.only in (None, "local"):
        local_benchmarks(args.work, args.gib, args.files, args.picks)
    if args.only in (None, "s3"):
        s3_benchmark(args.work, args.s3_mib)
    if args.only in (None, "mrc"):
        mrc_benchmark(args.work, tuple(int(n) for n in args.mrc_shape.split(",")), args.mrc_chunk)


if __name__ == "__main__":
    main()
