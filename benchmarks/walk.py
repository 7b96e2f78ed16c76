"""Walking every kind of mount against a plain copy of the same tree, side by side.

    python benchmarks/walk.py [--quick] [--repeat 3] [--kinds imgstore,iid,fsdb,copick]
                              [--no-cold] [--work DIR] [--frames N] [--million N]
                              [--iid N,N] [--fsdb SxFxN] [--copick RxP] [--copy-in N]
                              [--limit 300] [--walks ls,find,...] [--results FILE]

For each source the plain copy is made with `rsync -a` of the mount onto the same disk.
Then, alternating plain and mount, each walk runs --repeat times cold (a fresh mount,
and the page cache dropped when run as root) and warm (run once before, same mount):
`ls -lR`, `find`, `find -printf %s`, `du -s`, reading every small file, `tar cf - | wc
-c` and `rsync -a` to a scratch folder (the first `.iid` also mounted `-o ro`, where the
kernel opens files itself); then `cp` of 1,000 new files into an FSDB fileset and into
new entry folders of an `.iid` mount. A copick mount keeps its views' sizes across mounts
(in `--work`, as XDG_CACHE_HOME): its cold walks find those the walks before learnt, and
`ls -lR` and `find -printf %s` run cold once more with none kept (a project never mounted
before), and `ls -lR` and `find` once more after the mount has learned them (its status says
`view_sizes.learning_done`) and the page cache was dropped. Printed are the medians and the
ratio plain time / mount time (1: as fast as the plain copy, 0.5: twice as slow). The
1,000,000-frame imgstore is listed against 1,000,000 empty files of the same names (a
real copy would be 900 GB). Everything printed also goes to benchmarks/results/walk-latest.txt.
Only the scopefs CLI and the writers' public APIs are used, so it runs on any version.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import walk_samples  # noqa: E402
from stores import index_only_store  # noqa: E402
from daemon_cpu import daemon_cpu_s  # noqa: E402  (benchmarks/daemon_cpu.py)
from control_file import daemon_status  # noqa: E402  (tests/control_file.py)

SCOPEFS = [sys.executable, "-m", "scopefs.daemon"]
RESULTS = ROOT / "benchmarks" / "results" / "walk-latest.txt"
FULL = {"imgstore_frames": 3000, "million": 1_000_000, "iid": (10_000, 100_000), "fsdb": (50, 3, 60),
        "copick": (50, 100), "copy_in": 1000}
QUICK = {"imgstore_frames": 100, "million": 20_000, "iid": (500,), "fsdb": (3, 2, 10), "copick": (3, 5),
         "copy_in": 100}
GOALS = {"ls -lR": ">= 0.5", "find": ">= 0.5", "find -printf %s": ">= 0.5", "du -s": ">= 0.5",
         "read small files": ">= 0.33", "copy-in": ">= 0.2"}


class Report:
    """Prints a line and keeps it for the results file."""

    def __init__(self):
        self.lines: list[str] = []
        self.path = RESULTS

    def __call__(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("\n".join(self.lines) + "\n")


report = Report()


def drop_caches() -> None:
    if os.geteuid() == 0:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


class Mount:
    """`scopefs mount` of a source; `fresh()` mounts it again (nothing cached anywhere)."""

    def __init__(self, source: walk_samples.Source, work: Path):
        self.source = source
        self.path = Path(tempfile.mkdtemp(dir=work, prefix="mnt-"))
        self.mounted = False
        self.mount()

    def mount(self) -> None:
        subprocess.run([*SCOPEFS, "mount", str(self.source.path), str(self.path), *self.source.options,
                        "--log-file", str(self.path.parent / "scopefs.log")], check=True)
        self.mounted = True

    def unmount(self) -> None:
        if self.mounted:
            subprocess.run([*SCOPEFS, "umount", str(self.path)], check=False)
            self.mounted = False

    def fresh(self) -> None:
        self.unmount()
        self.mount()

    def close(self) -> None:
        self.unmount()
        os.rmdir(self.path)

    def status(self) -> dict:
        return daemon_status(self.path)

    def requests(self) -> int:
        return self.status()["requests"]

    def worker_calls(self) -> int:
        return self.status()["worker_calls"]

    def requests_per(self, fn, count: int) -> float:
        """Requests the daemon answered for one run of `fn` over the mount, per item
        (less what reading its status costs)."""
        before, start = self.requests(), self.requests()
        fn(self.path)
        return (self.requests() - start - (start - before)) / count

    def sleeps_per(self, fn, count: int) -> float:
        """Times the daemon's session thread slept (waited for a request: each is a
        wake-up to pay) during one run of `fn` over the mount, per item."""
        pid = self.status()["pid"]

        def sleeps() -> int:
            status = Path(f"/proc/{pid}/task/{pid}/status").read_text()
            return int(status.split("voluntary_ctxt_switches:")[1].split()[0])
        before = sleeps()
        fn(self.path)
        return (sleeps() - before) / count

    def wait_learned(self, timeout: float = 600) -> None:
        """Until the tree says it has learned what it learns from mount on (copick's
        `view_sizes.learning_done`)."""
        end = time.monotonic() + timeout
        while not self.status().get("view_sizes", {}).get("learning_done", True):
            if time.monotonic() > end:
                raise TimeoutError(f"{self.path}: view sizes not learned in {timeout:g} s")
            time.sleep(0.2)

    def daemon_cpu_s(self) -> float:
        """CPU seconds the mount's daemon has used (its process CPU clock: in ns, where
        /proc's 10 ms ticks were 49 us a path of a quick copick walk)."""
        return daemon_cpu_s(self.status()["pid"])


def walks(source: walk_samples.Source, scratch: Path, small: list[str]):
    """(label, fn(root)) of every walk; `small` are the small files' relative paths."""
    def read_small(root: Path) -> None:
        for rel in small:
            with open(root / rel, "rb") as fh:
                fh.read()

    def tar(root: Path) -> None:
        subprocess.run(f"tar cf - -C '{root}' . | wc -c", shell=True, check=True, stdout=subprocess.DEVNULL)

    def rsync(root: Path) -> None:
        shutil.rmtree(scratch, ignore_errors=True)
        sh("rsync", "-a", f"{root}/", f"{scratch}/")

    return [("ls -lR", lambda root: sh("ls", "-lR", str(root))),
            ("find", lambda root: sh("find", str(root))),
            ("find -printf %s", lambda root: sh("find", str(root), "-printf", "%s\\n")),
            ("du -s", lambda root: sh("du", "-s", str(root))),
            (f"read small files ({len(small):,})", read_small),
            ("tar cf - | wc -c", tar),
            ("rsync -a", rsync)]


def timed(fn, root: Path) -> float:
    t = time.perf_counter()
    fn(root)
    return time.perf_counter() - t


def compare(label: str, plain_fn, mount_fn, goal: str) -> tuple[float, float]:
    """Run both sides REPEAT times, alternating (fewer once a run takes over LIMIT
    seconds); print medians and plain/mount."""
    plain, mounted = [], []
    while len(plain) < REPEAT:
        plain.append(plain_fn())
        mounted.append(mount_fn())
        if max(plain[-1], mounted[-1]) > LIMIT:
            break
    p, m = statistics.median(plain), statistics.median(mounted)
    runs = "" if len(plain) == REPEAT else f"  [{len(plain)} run(s): over {LIMIT:g} s]"
    report(f"  {label:<38} plain {p:9.3f} s   mount {m:9.3f} s   ratio {p / m:6.2f}  (goal {goal}){runs}")
    return p, m


def run_walks(title: str, source: walk_samples.Source, work: Path, cold: bool) -> dict:
    """The walks over one source: mount, plain copy by rsync -a, cold and warm runs."""
    report(f"\n{title}")
    mnt = Mount(source, work)
    plain = work / f"plain-{source.kind}"
    scratch = work / "scratch"
    results = {}
    try:
        shutil.rmtree(plain, ignore_errors=True)
        t = time.perf_counter()
        sh("rsync", "-a", f"{mnt.path}/", f"{plain}/")
        paths = sum(1 for _ in plain.rglob('*'))
        report(f"  (plain copy made with rsync -a of the mount in {time.perf_counter() - t:.1f} s: {paths:,} paths)")
        small = [str(p.relative_to(plain)) for p in walk_samples.small_files(plain, source)]
        for label, fn in walks(source, scratch, small):
            if not any(label.startswith(w) for w in WALKS):
                continue
            goal = next((g for k, g in GOALS.items() if label.startswith(k)), "for reference")
            if cold:
                def cold_plain(fn=fn):
                    drop_caches()
                    return timed(fn, plain)

                cpu, calls = [], []

                def cold_mount(fn=fn, cpu=cpu, calls=calls, forget_sizes=False, learned=False):
                    mnt.unmount()
                    if forget_sizes:
                        shutil.rmtree(KEPT_SIZES, ignore_errors=True)
                    mnt.mount()
                    if learned:
                        mnt.wait_learned()
                    drop_caches()
                    before, workers = mnt.daemon_cpu_s(), mnt.worker_calls()
                    took = timed(fn, mnt.path)
                    cpu.append(mnt.daemon_cpu_s() - before)
                    calls.append(mnt.worker_calls() - workers)
                    return took
                results[label, "cold"] = compare(f"{label}, cold", cold_plain, cold_mount, goal)
                # work, steadier than time on a shared machine
                report(f"    {'daemon CPU per path, cold':<38} {statistics.median(cpu) / paths * 1e6:.0f} us")
                report(f"    {'daemon worker calls a walk, cold':<38} {statistics.median(calls):.0f}")
                if source.kind == "copick" and label in ("ls -lR", "find", "find -printf %s"):
                    # a project never mounted before: each view is made once for its size
                    compare(f"{label}, cold, no view sizes kept", cold_plain,
                            lambda fn=fn: cold_mount(fn, forget_sizes=True), goal)
                if source.kind == "copick" and label in ("ls -lR", "find"):
                    # the mount's own learner done first: every size in its node, the page cache cold
                    compare(f"{label}, cold, after sizes are learned", cold_plain,
                            lambda fn=fn: cold_mount(fn, learned=True), goal)
            fn(plain)
            fn(mnt.path)
            results[label, "warm"] = compare(f"{label}, warm", lambda fn=fn: timed(fn, plain),
                                             lambda fn=fn: timed(fn, mnt.path), goal)
            if label.startswith("read small files"):
                report(f"    {'daemon requests per file, warm':<38} {mnt.requests_per(fn, len(small)):.2f}")
                report(f"    {'daemon sleeps per file, warm':<38} {mnt.sleeps_per(fn, len(small)):.2f}")
    finally:
        mnt.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return results


def copy_in(title: str, source: walk_samples.Source, work: Path, files: int, entry_folders: bool) -> None:
    """cp -r of `files` new files (into new entry folders, or into one folder) on a copy of
    the source mounted afresh, against the same cp into its plain copy; each round adds
    new names. The files go in cps of COPY_CHUNK each, timed apart: whether the cost per
    file grows with the folder shows from the first chunk to the last (and round to round).
    The daemon's counters give the FUSE requests and worker calls per file."""
    report(f"\n{title}")
    scratch_source = work / f"copy-in-{source.path.name}"
    shutil.rmtree(scratch_source, ignore_errors=True)
    if source.path.is_dir():
        shutil.copytree(source.path, scratch_source, symlinks=True)
    else:
        shutil.copy2(source.path, scratch_source)
    copied = walk_samples.Source(source.kind, scratch_source, source.options, source.small_files, source.write_dir)
    mnt = Mount(copied, work)
    plain = work / f"plain-copy-in-{source.kind}"
    try:
        shutil.rmtree(plain, ignore_errors=True)
        sh("rsync", "-a", f"{mnt.path}/", f"{plain}/")
        template = next(p for p in sorted(plain.rglob("*.png")) if p.is_file()).read_bytes()
        rounds = iter(range(2 * REPEAT))

        def prepare() -> Path:
            """A folder of `files` new files (or entry folders holding a mask.png each)."""
            batch = work / "new-files"
            shutil.rmtree(batch, ignore_errors=True)
            batch.mkdir()
            r = next(rounds)
            for i in range(files):
                if entry_folders:
                    (batch / f"new{r}-{i:05d}").mkdir()
                    (batch / f"new{r}-{i:05d}" / "mask.png").write_bytes(template)
                else:
                    (batch / f"new{r}_{i:05d}.png").write_bytes(template)
            return batch

        chunks: dict[str, list[list[float]]] = {"plain": [], "mount": [], "daemon CPU": []}
        work_done: list[dict] = []

        def status() -> dict:
            return mnt.status() | {"cpu": mnt.daemon_cpu_s()}

        def cp_into(root: Path, side: str) -> float:
            names = sorted(str(p) for p in prepare().iterdir())
            before, flushes = status(), disk_flushes(root)
            times, cpu = [], []
            for start in range(0, files, COPY_CHUNK):
                cpu_before, t = mnt.daemon_cpu_s(), time.perf_counter()
                sh("cp", "-r", *names[start:start + COPY_CHUNK], str(root / source.write_dir))
                times.append(time.perf_counter() - t)
                cpu.append(mnt.daemon_cpu_s() - cpu_before)
            if side == "mount":
                folder = os.open(root / source.write_dir, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(folder)            # (what the copy left to write back, written now)
                finally:
                    os.close(folder)
                after = status()
                work_done.append({"requests": (after["requests"] - before["requests"]) / files,
                                  "worker calls": (after["worker_calls"] - before["worker_calls"]) / files,
                                  "daemon CPU ms": (after["cpu"] - before["cpu"]) / files * 1e3,
                                  "disk flushes": (disk_flushes(root) - flushes) / files})
                chunks["daemon CPU"].append(cpu)
            chunks[side].append(times)
            return sum(times)

        compare(f"cp {files:,} new files", lambda: cp_into(plain, "plain"), lambda: cp_into(mnt.path, "mount"),
                GOALS["copy-in"])
        size = min(COPY_CHUNK, files)
        for side in ("plain", "mount", "daemon CPU"):
            per_file = [statistics.median(round_[k] for round_ in chunks[side]) / size * 1e3
                        for k in range(len(chunks[side][0]))]
            report(f"  {f'  per file, first/last {size} ({side})':<38} {per_file[0]:9.3f} ms   {per_file[-1]:9.3f} ms"
                   f"   (flat: the cost does not grow with the folder)")
        report(f"  {'  per file, round by round (mount)':<38} "
               + "  ".join(f"{sum(t) / files * 1e3:.2f}" for t in chunks["mount"]) + " ms")
        report(f"  {'  per file through the mount (median)':<38} "
               + "   ".join(f"{key} {statistics.median(w[key] for w in work_done):.2f}" for key in work_done[0]))
    finally:
        mnt.close()
        shutil.rmtree(work / "new-files", ignore_errors=True)


def disk_flushes(path: Path) -> float:
    """Cache flushes the disk holding `path` has done (fsyncs and journal commits wait for
    them; other programs' too), from /sys/dev/block/*/stat; NaN where not known."""
    source = path
    while os.path.ismount(source) and source != source.parent:  # (a mount: its source's disk)
        source = source.parent
    device = os.stat(source).st_dev
    try:
        fields = Path(f"/sys/dev/block/{os.major(device)}:{os.minor(device)}/stat").read_text().split()
        return float(fields[15])
    except (OSError, IndexError):
        return float("nan")


def million(work: Path, frames: int) -> None:
    """ls -l of frames/ of an index-only store against empty files of the same names."""
    store = work / f"index-only-{frames}"
    if not (store / "metadata.yaml").exists():
        shutil.rmtree(store, ignore_errors=True)
        index_only_store(store, range(frames))
    plain = work / f"names-{frames}"
    width = max(6, len(str(frames - 1)))
    if not (plain / ".made").exists():
        shutil.rmtree(plain, ignore_errors=True)
        (plain / "frames").mkdir(parents=True)
        for i in range(frames):
            os.close(os.open(plain / "frames" / f"{i:0{width}d}.png", os.O_CREAT | os.O_WRONLY, 0o444))
        (plain / ".made").touch()
    report(f"\nimgstore, {frames:,} frames (index only): frames/ against {frames:,} empty files of the same names")
    mnt = Mount(walk_samples.Source("imgstore", store), work)
    try:
        for label, cmd in (("ls -l frames/", ["ls", "-l"]), ("ls -f frames/", ["ls", "-f"]),
                           ("find -printf %s frames/", ["find"])):
            extra = ["-printf", "%s\\n"] if cmd == ["find"] else []
            daemon_cpu = []
            for state in ("cold", "warm"):
                def run(root: Path, state=state, cmd=cmd, extra=extra) -> float:
                    if state == "cold":
                        if root == mnt.path:
                            mnt.fresh()
                        drop_caches()
                    through_mount = root == mnt.path
                    cpu = mnt.daemon_cpu_s() if through_mount else 0.0
                    t = time.perf_counter()
                    sh(*cmd, str(root / "frames"), *extra)
                    elapsed = time.perf_counter() - t
                    if through_mount:
                        daemon_cpu.append(mnt.daemon_cpu_s() - cpu)
                    return elapsed
                compare(f"{label}, {state}", lambda run=run: run(plain), lambda run=run: run(mnt.path), ">= 0.5")
            report(f"  {'  daemon CPU per ' + label:<38} {statistics.median(daemon_cpu):9.3f} s (median)")
    finally:
        mnt.close()


def frame_reads(work: Path, source: walk_samples.Source, frames: int) -> None:
    """tar of frames/ through a fresh mount, per frame, against decoding alone (and
    decoding + encoding), both with scopefs's own reader in this process."""
    from scopefs.formats.images import make_format
    from scopefs.formats.imgstore.frames import open_reader
    from scopefs.formats.imgstore.index import FrameIndex
    from scopefs.formats.imgstore.metadata import read_metadata
    meta = read_metadata(str(source.path))
    index = FrameIndex.load(meta)
    reader = open_reader(meta, index, "ffmpeg")
    fmt = make_format("png", png_compression=0, jpeg_quality=95)
    decode, encode = [], []
    for i in range(frames):
        t = time.perf_counter()
        img = reader.read(i)
        decode.append(time.perf_counter() - t)
        t = time.perf_counter()
        fmt.encode_checked(img)
        encode.append(time.perf_counter() - t)
    reader.close()
    tar, cpu, requests = [], [], []
    mnt = Mount(source, work)
    try:
        for _ in range(REPEAT):
            mnt.fresh()
            before = mnt.daemon_cpu_s()
            t = time.perf_counter()
            subprocess.run(f"tar cf - -C '{mnt.path}' frames | wc -c", shell=True, check=True,
                           stdout=subprocess.DEVNULL)
            tar.append((time.perf_counter() - t) / frames)
            cpu.append((mnt.daemon_cpu_s() - before) / frames)
            requests.append(mnt.status()["requests"] / frames)
    finally:
        mnt.close()
    d, e, t, c = (statistics.median(v) * 1e3 for v in (decode, encode, tar, cpu))
    report(f"  {'tar of frames/, per frame (fresh mount)':<38} {t:7.2f} ms   decode alone {d:.2f} ms, "
           f"decode + PNG encode {d + e:.2f} ms   (goal: bound by decoding, {os.cpu_count()} cores)")
    report(f"  {'  daemon per frame of that tar':<38} {c:7.2f} ms CPU, {statistics.median(requests):.2f} requests")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sources (a check that it runs)")
    parser.add_argument("--kinds", default=",".join(walk_samples.KINDS))
    parser.add_argument("--repeat", type=int, default=3, help="runs of each side; medians are printed")
    parser.add_argument("--no-cold", dest="cold", action="store_false", help="warm runs only")
    parser.add_argument("--limit", type=float, default=300, help="no more runs of a walk once one takes longer (s)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the printed lines are written too")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "scopefs-bench-walk")
    parser.add_argument("--frames", type=int, help=f"imgstore frames for the walks ({FULL['imgstore_frames']})")
    parser.add_argument("--million", type=int, help=f"frames of the index-only store ({FULL['million']:,}; 0: none)")
    parser.add_argument("--iid", type=lambda v: tuple(int(n) for n in v.split(",")),
                        help="entries of each .iid file (10000,100000)")
    parser.add_argument("--fsdb", type=lambda v: tuple(int(n) for n in v.split("x")),
                        help="scans x filesets x files (50x3x60)")
    parser.add_argument("--copick", type=lambda v: tuple(int(n) for n in v.split("x")), help="runs x picks (50x100)")
    parser.add_argument("--copy-in", type=int, help="files copied into the FSDB and .iid mounts (1000; 0: no copy-in)")
    parser.add_argument("--walks", type=lambda v: tuple(v.split(",")),
                        help="only the walks whose labels start with these (e.g. 'ls -lR,find,du -s,read small')")
    args = parser.parse_args()
    global REPEAT, LIMIT, WALKS
    REPEAT, LIMIT = args.repeat, args.limit
    WALKS = args.walks or ("",)
    report.path = args.results
    sizes = dict(QUICK if args.quick else FULL)
    for key, value in (("imgstore_frames", args.frames), ("million", args.million), ("iid", args.iid),
                       ("fsdb", args.fsdb), ("copick", args.copick), ("copy_in", args.copy_in)):
        if value is not None:
            sizes[key] = value
    kinds = args.kinds.split(",")
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    global KEPT_SIZES
    KEPT_SIZES = work / "cache" / "scopefs"             # the mounts' own, not the user's
    os.environ["XDG_CACHE_HOME"] = str(KEPT_SIZES.parent)
    report(f"scopefs walk benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
           f"load {os.getloadavg()[0]:.1f}, median of {REPEAT} runs, cold = fresh mount"
           f"{' + page cache dropped' if os.geteuid() == 0 else ' (page cache kept: not root)'}; "
           f"ratio = plain time / mount time")
    try:
        if "imgstore" in kinds:
            if sizes["million"]:
                million(work, sizes["million"])
            frames = sizes["imgstore_frames"]
            source = walk_samples.imgstore(work / f"imgstore-{frames}", frames)
            run_walks(f"imgstore, {frames:,} frames of 320x240 (MJPEG, served as PNG)", source, work, args.cold)
            frame_reads(work, source, frames)
        if "iid" in kinds:
            for n, entries in enumerate(sizes["iid"]):
                source = walk_samples.iid(work / f"cells-{entries}.iid", entries)
                run_walks(f".iid, {entries:,} entries", source, work, args.cold)
                if n == 0:                  # read-only: the kernel opens files itself
                    run_walks(f".iid, {entries:,} entries, -o ro", dataclasses.replace(
                        source, options=[*source.options, "-o", "ro"], write_dir=None), work, args.cold)
            if sizes["copy_in"]:
                copy_in(f".iid, {entries:,} entries: new entry folders", source, work, sizes["copy_in"], True)
        if "fsdb" in kinds:
            scans, filesets, files = sizes["fsdb"]
            source = walk_samples.fsdb(work / f"fsdb-{scans}x{filesets}x{files}", scans, filesets, files)
            run_walks(f"FSDB, {scans} scans x {filesets} filesets x {files} files", source, work, args.cold)
            if sizes["copy_in"]:
                copy_in(f"FSDB: new files into a fileset of {files}", source, work, sizes["copy_in"], False)
        if "copick" in kinds:
            runs, picks = sizes["copick"]
            source = walk_samples.copick(work / f"copick-{runs}x{picks}", runs, picks)
            run_walks(f"copick, {runs} runs x ({picks} picks + a 64^3 zarr tomogram), empty overlay", source,
                      work, args.cold)
    finally:
        report.save()
        print(f"\n(written to {report.path})")


REPEAT = 3
LIMIT = 300.0
#: files per cp in the copy-in (timed apart)
COPY_CHUNK = 100
WALKS = ("",)
#: where the mounts keep what they learn across mounts (copick's view sizes: XDG_CACHE_HOME)
KEPT_SIZES = Path()

if __name__ == "__main__":
    main()
