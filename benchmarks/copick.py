"""copick merged mounts vs the backing files used directly, side by side in one run.

    python benchmarks/copick.py [--gib 1] [--files 100000] [--picks 10000] [--s3-mib 256]
                                [--s3-listed 10000] [--s3-small 1000]
                                [--mrc-shape 256,1024,1024] [--mrc-chunk 256] [--only local|s3|mrc]

Each case runs --repeat times, the direct side and every union alternating; printed are
the median seconds and the ratio of the medians (direct / union: 1 means as fast as the
backing files, above 1 faster). Goals: local reads >= 0.8, metadata walks >= 0.5 (within
2x), S3 reads >= 1. Local cases start cold (as root, the page cache is dropped before each
run); with --warm both sides read cached files, which measures only what FUSE adds.
The unions, each over the same static root with an empty upper directory of its own:
scopefs, fuse-overlayfs (the same merge by a C daemon on libfuse), mergerfs (pooling with
its recommended options; no copy-up) and, as root, kernel overlayfs (no FUSE: the
physical limit); one that is not installed is left out with a note. Two shapes: the
project's (100,000 files in 100 dirs, 64 x 1 MiB zarr chunks, picks documents) and issue
12's (1,000 dirs, 64 x 2 MiB chunks, 200 B files), and the longest wait of other
operations of a mount while it copies up a static file of --gib GiB.
S3 cases (SeaweedFS on loopback): the bucket as a copick static root of scopefs, through
s3fs-fuse and through `rclone mount` (VFS cache off, and full), against Python's s3fs used
directly; every run on a fresh mount.
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
from control_file import daemon_status  # noqa: E402
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


def compare(label: str, direct_fn, union_fns: dict, goal: str, cold: bool = True, prepare=None) -> None:
    """Median seconds of the direct side and of each union over REPEAT alternating runs,
    and the ratios direct / union (above 1: faster than the backing files used directly).
    prepare(side name) runs before each run, untimed."""
    sides = [("direct", direct_fn, [])] + [(name, fn, []) for name, fn in union_fns.items()]
    for _ in range(REPEAT):
        for name, fn, times in sides:
            if prepare:
                prepare(name)
            times.append(timed(fn, cold))
    medians = {name: statistics.median(times) for name, _, times in sides}
    d = medians.pop("direct")
    line = f"  {label:<52} direct {d:7.3f} s"
    for name, m in medians.items():
        line += f" | {name} {m:7.3f} s {d / m:5.2f}"
    print(f"{line}   ({goal})", flush=True)


class Union:
    """A merge of the static root (lower) with an empty upper directory of its own,
    mounted at work/<key>-mnt; `skip` says why it cannot run here (else None)."""
    name = key = ""
    skip: str | None = None

    def __init__(self, static: Path, work: Path):
        self.static = static
        self.upper, self.scratch, self.mnt = (work / f"{self.key}-{part}" for part in ("upper", "work", "mnt"))
        self.mounted = False

    def mount(self) -> None:
        """Mount over an empty upper directory (what an earlier mount wrote is removed)."""
        if os.path.ismount(self.mnt):             # left by a run that was killed
            subprocess.run(self.lazy_unmount_command(), capture_output=True)
        self.mnt.mkdir(exist_ok=True)             # (never removed: it could still be a mount)
        for folder in (self.upper, self.scratch):
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
        done = subprocess.run(self.command(), capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"{self.name} could not mount: {done.stderr.strip()}")
        self.mounted = True

    def close(self) -> None:
        if self.mounted:
            self.mounted = False
            if subprocess.run(self.unmount_command(), capture_output=True).returncode:
                subprocess.run(self.lazy_unmount_command(), capture_output=True)

    def unmount_command(self) -> list[str]:
        return ["fusermount3", "-u", str(self.mnt)]

    def lazy_unmount_command(self) -> list[str]:
        return ["fusermount3", "-uz", str(self.mnt)]


class Scopefs(Union):
    name, key = "scopefs", "scopefs"

    def command(self) -> list[str]:
        return [*SCOPEFS, "mount", str(self.static), str(self.mnt), "-t", "copick", "-o", f"overlay={self.upper}"]

    def unmount_command(self) -> list[str]:
        return [*SCOPEFS, "umount", str(self.mnt)]


class FuseOverlayfs(Union):
    """The same merge by a C daemon on libfuse (Debian's fuse-overlayfs)."""
    name, key = "fuse-overlayfs", "ofs"
    skip = None if shutil.which("fuse-overlayfs") else "fuse-overlayfs is not installed"

    def command(self) -> list[str]:
        return ["fuse-overlayfs", "-o", f"lowerdir={self.static},upperdir={self.upper},workdir={self.scratch}",
                str(self.mnt)]


class Mergerfs(Union):
    """mergerfs (Debian's package) with the options its manual recommends; it pools, it
    does not copy up: the static branch is read-only, new files go to the upper one."""
    name, key = "mergerfs", "mergerfs"
    skip = None if shutil.which("mergerfs") else "mergerfs is not installed"

    def command(self) -> list[str]:
        return ["mergerfs", "-o", "use_ino,cache.files=partial,dropcacheonclose=true,category.create=mfs",
                f"{self.upper}=RW:{self.static}=RO", str(self.mnt)]


class KernelOverlayfs(Union):
    """Linux overlayfs: the same merge without FUSE, the physical limit of a union."""
    name, key = "overlayfs", "kovl"
    skip = None if os.geteuid() == 0 else "kernel overlayfs needs root"

    def command(self) -> list[str]:
        return ["mount", "-t", "overlay", "overlay", "-o",
                f"lowerdir={self.static},upperdir={self.upper},workdir={self.scratch}", str(self.mnt)]

    def unmount_command(self) -> list[str]:
        return ["umount", str(self.mnt)]

    def lazy_unmount_command(self) -> list[str]:
        return ["umount", "-l", str(self.mnt)]


UNIONS = (Scopefs, FuseOverlayfs, Mergerfs, KernelOverlayfs)
ZARR = {  # name: (shape, chunks) of float32 arrays
    "wbp.zarr": ((256, 256, 256), (64, 64, 64)),          # 64 chunks of 1 MiB
    "wbp-2mib.zarr": ((256, 256, 512), (64, 64, 128)),    # 64 chunks of 2 MiB
}


def make_static(work: Path, gib: float, files: int) -> Path:
    static = work / "static"
    marker = static / f".made-{gib}-{files}-v2"
    if marker.exists():
        return static
    shutil.rmtree(static, ignore_errors=True)
    spacing = static / "ExperimentRuns" / "TS_000" / "VoxelSpacing10.000"
    chunks = spacing / "raw.zarr" / "0"
    chunks.mkdir(parents=True)
    block = os.urandom(16 << 20)
    for i in range(int(gib * 64)):
        (chunks / f"{i}").write_bytes(block)
    with open(spacing / "big.mrc", "wb") as fh:                    # one file of gib GiB, to copy up
        for _ in range(int(gib * 64)):
            fh.write(block)
    import zarr
    for name, (shape, chunk) in ZARR.items():
        z = zarr.create_array(str(spacing / name), shape=shape, chunks=chunk, dtype="float32", zarr_format=2)
        z[:] = np.random.default_rng(0).random(shape, dtype=np.float32)
    for top, folders in (("many", 100), ("many-1000", 1000)):
        for d in range(folders):
            folder = static / top / f"d{d:04d}"
            folder.mkdir(parents=True)
            for i in range(files // folders):
                (folder / f"f{i:05d}.json").write_bytes(b"{}")
    marker.touch()
    return static


def mount(source: str, mountpoint: Path, *options: str) -> None:
    mountpoint.mkdir(parents=True, exist_ok=True)
    subprocess.run([*SCOPEFS, "mount", source, str(mountpoint), *options], check=True)


def umount(mountpoint: Path) -> None:
    subprocess.run([*SCOPEFS, "umount", str(mountpoint)], check=False)


def find_count(top: Path) -> None:
    """`find -type f | wc -l`"""
    find = subprocess.Popen(["find", str(top), "-type", "f"], stdout=subprocess.PIPE)
    subprocess.run(["wc", "-l"], stdin=find.stdout, check=True, stdout=subprocess.DEVNULL)
    find.stdout.close()
    assert find.wait() == 0


def find_sizes(top: Path) -> None:
    """`find -printf %s`: a stat of every entry"""
    subprocess.run(["find", str(top), "-type", "f", "-printf", "%s\\n"], check=True, stdout=subprocess.DEVNULL)


def local_benchmarks(work: Path, gib: float, files: int, picks: int) -> None:
    import zarr
    static = make_static(work, gib, files)
    unions = [cls(static, work) for cls in UNIONS]
    for union in unions:
        if union.skip:
            print(f"  (no {union.name} column: {union.skip})")
    unions = [u for u in unions if not u.skip]
    try:
        for union in unions:                # if one cannot mount, the finally unmounts the others
            union.mount()

        def sides(fn, rel):
            """fn on the backing files of rel, and on rel through each union."""
            return (lambda: fn(static / rel)), {u.name: (lambda u=u: fn(u.mnt / rel)) for u in unions}
        spacing = Path("ExperimentRuns/TS_000/VoxelSpacing10.000")
        names = sorted(os.listdir(static / spacing / "raw.zarr" / "0"), key=int)
        read_all(static / spacing / "raw.zarr" / "0" / n for n in names)        # warm, for --warm
        compare(f"sequential read, {gib:g} GiB in {len(names)} x 16 MiB files",
                *sides(lambda top: read_all(top / n for n in names), spacing / "raw.zarr" / "0"), "goal >= 0.8")
        for name, (shape, chunk) in ZARR.items():
            mib = np.prod(chunk) * 4 / (1 << 20)
            count = int(np.prod([s // c for s, c in zip(shape, chunk)]))
            compare(f"zarr: every chunk, {count} x {mib:g} MiB", *sides(
                lambda top: zarr.open_array(str(top), mode="r")[:], spacing / name), "goal >= 0.8")
        compare(f"find -printf %s, {files:,} files in 100 dirs", *sides(find_sizes, "many"), "goal >= 0.5")
        compare(f"find -type f | wc -l, {files:,} files in 1,000 dirs", *sides(find_count, "many-1000"),
                "goal >= 0.5")
        compare(f"find -printf %s, {files:,} files in 1,000 dirs", *sides(find_sizes, "many-1000"), "goal >= 0.5")
        rel_picks = Path("ExperimentRuns/TS_000/Picks")
        folders = {"direct": work / "plain-picks", **{u.name: u.mnt / rel_picks for u in unions}}

        def fresh_folder(side: str) -> None:
            shutil.rmtree(folders[side], ignore_errors=True)
            folders[side].mkdir(parents=True)
        for size, what in ((None, "small picks files"), (200, "files of 200 B")):
            doc = json.dumps({"pickable_object_name": "ribosome", "points": [{"location": {"x": 1, "y": 2, "z": 3}}]})
            doc = doc if size is None else doc.ljust(size)

            def write_picks(folder: Path, doc=doc) -> None:
                for i in range(picks):
                    (folder / f"user_{i}_ribosome.json").write_text(doc)
            compare(f"write {picks:,} {what}", lambda: write_picks(folders["direct"]),
                    {name: (lambda f=folder: write_picks(f)) for name, folder in folders.items() if name != "direct"},
                    "no goal set; for reference", cold=False, prepare=fresh_folder)
    finally:
        for union in unions:
            union.close()
    copy_up_waits([u for u in unions if not isinstance(u, Mergerfs)], spacing / "big.mrc", gib)


def copy_up_waits(unions: list[Union], rel: Path, gib: float) -> None:
    """While one process appends a byte to a static file of gib GiB (a copy-up), another
    makes, renames, looks up and removes files elsewhere on the same mount: the longest
    any one of those operations waited, median over the runs (each on a fresh mount)."""
    results = {u.name: ([], []) for u in unions}
    for _ in range(REPEAT):
        for union in unions:
            union.mount()
            try:
                drop_caches()
                waits, took = results[union.name]
                waits.append(max_wait_during(union.mnt, rel, took))
            finally:
                union.close()
                shutil.rmtree(union.upper, ignore_errors=True)      # (the copy: gib GiB)
    line = f"  {f'longest wait of other operations, {gib:g} GiB copy-up':<52}"
    for name, (waits, took) in results.items():
        line += f" | {name} {statistics.median(waits) * 1000:7.1f} ms (copy {statistics.median(took):.1f} s)"
    print(f"{line}   (goal: under 50 ms)", flush=True)


def max_wait_during(mnt: Path, rel: Path, took: list[float]) -> float:
    """The longest single operation while rel is copied up (its time appended to took)."""
    import threading
    start = time.perf_counter()
    copy = threading.Thread(target=lambda: open(mnt / rel, "ab").close())     # opening for writing copies up
    copy.start()
    other = mnt / "ExperimentRuns" / "TS_000" / "Picks"
    ops = [lambda i: other.mkdir(exist_ok=True), lambda i: (other / f"p{i}.json").write_text("{}"),
           lambda i: os.rename(other / f"p{i}.json", other / f"q{i}.json"),
           lambda i: os.stat(mnt / "many" / "d0000" / "f00000.json"), lambda i: os.unlink(other / f"q{i}.json")]
    longest, i = 0.0, 0
    while copy.is_alive():
        for op in ops:
            t = time.perf_counter()
            op(i)
            longest = max(longest, time.perf_counter() - t)
        i += 1
    copy.join()
    took.append(time.perf_counter() - start)
    return longest


class S3Mount:
    """A FUSE mount of the benchmark's bucket at work/<key>-mnt, made fresh before each
    run (nothing cached from the run before); `skip` says why it cannot run here."""
    name = key = ""
    skip: str | None = None

    def __init__(self, server, bucket: str, work: Path):
        self.server, self.bucket, self.work = server, bucket, work
        self.mnt = work / f"{self.key}-mnt"
        self.mounted = False

    def remount(self) -> None:
        self.close()
        self.mnt.mkdir(exist_ok=True)
        self.mount()
        self.mounted = True
        deadline = time.monotonic() + 30
        while not os.path.ismount(self.mnt):           # (some return before the mount is there)
            if time.monotonic() > deadline:
                raise SystemExit(f"{self.name} did not mount {self.mnt}")
            time.sleep(0.05)

    def close(self) -> None:
        if self.mounted or os.path.ismount(self.mnt):
            self.mounted = False
            if subprocess.run(["fusermount3", "-u", str(self.mnt)], capture_output=True).returncode:
                subprocess.run(["fusermount3", "-uz", str(self.mnt)], capture_output=True)


class ScopefsS3(S3Mount):
    """A copick project whose static root is the bucket (an empty local overlay)."""
    name, key = "scopefs", "scopefs-s3"

    def mount(self) -> None:
        overlay = self.work / "scopefs-s3-overlay"
        overlay.mkdir(exist_ok=True)
        config = self.work / "scopefs-s3.json"
        config.write_text(json.dumps({"config_type": "filesystem", "pickable_objects": [],
                                      "static_root": f"s3://{self.bucket}", "static_fs_args": self.server.fs_args,
                                      "overlay_root": f"local://{overlay}"}))
        mount(str(config), self.mnt)

    def close(self) -> None:
        if self.mounted or os.path.ismount(self.mnt):
            self.mounted = False
            umount(self.mnt)


class S3fsFuse(S3Mount):
    """s3fs-fuse (Debian's s3fs), path-style requests to the loopback endpoint."""
    name, key = "s3fs-fuse", "s3fs-fuse"
    skip = None if shutil.which("s3fs") else "s3fs (s3fs-fuse) is not installed"

    def mount(self) -> None:
        from s3server import KEY, SECRET
        passwd = self.work / "s3fs-passwd"
        passwd.write_text(f"{KEY}:{SECRET}\n")
        passwd.chmod(0o600)
        subprocess.run(["s3fs", self.bucket, str(self.mnt), "-o", f"url={self.server.endpoint}",
                        "-o", "use_path_request_style", "-o", f"passwd_file={passwd}"], check=True)


class Rclone(S3Mount):
    """`rclone mount` (Debian's rclone) with its VFS cache off, the remote given in the
    environment."""
    name, key, cache = "rclone", "rclone", "off"
    skip = None if shutil.which("rclone") else "rclone is not installed"

    def mount(self) -> None:
        from s3server import KEY, SECRET
        # (an AWS_CA_BUNDLE in the environment stops rclone's S3 client: plain http here)
        env = {**{k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"},
               "RCLONE_CONFIG_WEED_TYPE": "s3", "RCLONE_CONFIG_WEED_PROVIDER": "Other",
               "RCLONE_CONFIG_WEED_ACCESS_KEY_ID": KEY, "RCLONE_CONFIG_WEED_SECRET_ACCESS_KEY": SECRET,
               "RCLONE_CONFIG_WEED_ENDPOINT": self.server.endpoint, "RCLONE_CONFIG": "/dev/null"}
        cache = self.work / f"{self.key}-cache"
        shutil.rmtree(cache, ignore_errors=True)
        subprocess.run(["rclone", "mount", f"weed:{self.bucket}", str(self.mnt), "--daemon",
                        "--vfs-cache-mode", self.cache, "--cache-dir", str(cache)], check=True, env=env)


class RcloneFull(Rclone):
    """... and with `--vfs-cache-mode full` (whole objects kept on local disk)."""
    name, key, cache = "rclone-full", "rclone-full", "full"


S3_MOUNTS = (ScopefsS3, S3fsFuse, Rclone, RcloneFull)


def s3_benchmark(work: Path, mib: int, listed: int, small: int) -> None:
    """Each FUSE mount of one bucket against s3fs (Python) used directly, every run on a
    fresh mount (and a fresh filesystem object for the direct side): nothing is cached
    from an earlier run. Sequential reads of 8 MiB objects; a listing with the size of
    each of `listed` small objects; a listing, then `small` objects of 200 B read one by
    one."""
    from s3server import SeaweedS3
    server = SeaweedS3(Path(tempfile.mkdtemp(dir=work, prefix="weed")))
    mounts = [cls(server, "bench", work) for cls in S3_MOUNTS]
    for m in mounts:
        if m.skip:
            print(f"  (no {m.name} column: {m.skip})")
    mounts = [m for m in mounts if not m.skip]
    try:
        fs = server.filesystem()
        fs.mkdir("bench")
        block = os.urandom(8 << 20)
        chunks = [f"run/chunk{i:03d}" for i in range(max(1, mib // 8))]
        for name in chunks:
            fs.pipe(f"bench/{name}", block)
        many = [f"many/f{i:05d}.json" for i in range(listed)]
        few = [f"few/f{i:04d}.json" for i in range(small)]
        doc = b"{}".ljust(200)
        for batch in range(0, len(many + few), 1000):
            fs.pipe({f"bench/{name}": doc for name in (many + few)[batch:batch + 1000]})
        by_name = {m.name: m for m in mounts}
        direct_fs = None

        def fresh(side: str) -> None:
            """A fresh mount, or for the direct side a fresh s3fs with its connection made."""
            nonlocal direct_fs
            if side in by_name:
                by_name[side].remount()
            else:
                direct_fs = server.filesystem()
                direct_fs.connect()

        def sides(direct, on_mount):
            return direct, {m.name: (lambda m=m: on_mount(m.mnt)) for m in mounts}

        def direct_read(names):
            for name in names:
                with direct_fs.open(f"bench/{name}", "rb") as fh:
                    while fh.read(BLOCK):
                        pass

        def direct_list_stat():
            assert len(direct_fs.ls("bench/many", detail=True)) == listed

        def list_stat(mnt: Path):
            assert sum(1 for e in os.scandir(mnt / "many") if e.stat().st_size) == listed

        def direct_small():
            names = direct_fs.ls("bench/few", detail=False)
            for name in names:
                with direct_fs.open(name, "rb") as fh:
                    fh.read()

        def small_reads(mnt: Path):
            folder = mnt / "few"
            for name in os.listdir(folder):
                with open(folder / name, "rb", buffering=0) as fh:
                    fh.read(BLOCK)
        goal = "vs s3fs used directly; goal: ahead of the other mounts"
        compare(f"S3: sequential read, {len(chunks) * 8} MiB in {len(chunks)} x 8 MiB objects",
                *sides(lambda: direct_read(chunks), lambda mnt: read_all(mnt / name for name in chunks)),
                goal, cold=False, prepare=fresh)
        compare(f"S3: listing + stat of {listed:,} small objects", *sides(direct_list_stat, list_stat),
                goal, cold=False, prepare=fresh)
        compare(f"S3: list, then read {small:,} objects of 200 B one by one", *sides(direct_small, small_reads),
                goal, cold=False, prepare=fresh)
    finally:
        for m in mounts:
            m.close()
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
    pid = daemon_status(mountpoint)["pid"]
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
              f"{daemon_status(mnt)['mrc_views']['chunks_decoded']})", flush=True)
    finally:
        umount(mnt)
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--picks", type=int, default=10_000)
    parser.add_argument("--s3-mib", type=int, default=256, help="S3: MiB read in 8 MiB objects")
    parser.add_argument("--s3-listed", type=int, default=10_000, help="S3: small objects listed with their sizes")
    parser.add_argument("--s3-small", type=int, default=1_000, help="S3: objects of 200 B read one by one")
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
        s3_benchmark(args.work, args.s3_mib, args.s3_listed, args.s3_small)
    if args.only in (None, "mrc"):
        mrc_benchmark(args.work, tuple(int(n) for n in args.mrc_shape.split(",")), args.mrc_chunk)


if __name__ == "__main__":
    main()
