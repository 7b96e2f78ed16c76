"""Requests and daemon CPU per frame for readers that open an imgstore's frames by name,
never listing frames/ (the kernel knows no frame's inode before its LOOKUP):

    python benchmarks/frames_by_name.py [--frames 2000] [--rounds 3] [--readers 'tar dir,ffmpeg']
                                        [--daemon LABEL=PYTHON ...] [--daemon-path LABEL=DIR ...]

ffmpeg -i MNT/frames/%06d.png, tar cf - -T LIST, a Python loop over the names (and, for
reference, a tar of the folder, which lists it), each on a fresh mount of the walk
benchmark's sample store (tests/walk_samples.py), for every daemon in turn, round after
round (machines shared with other work: compare counts and CPU side by side, not wall
time). A daemon is a Python with scopefs installed (a checkout's .venv/bin/python), or a
scopefs checkout DIR run by the Python running this script (`--daemon-path`: DIR on
PYTHONPATH as `scopefs`, ahead of any PYTHONPATH set); by default the Python running this
script. The daemon's CPU is its process's CPU-time clock (ns: the run time of all its
threads, ended ones too), not the 10 ms ticks of /proc/PID/stat.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import walk_samples  # noqa: E402
from control_file import daemon_status  # noqa: E402
from daemon_cpu import daemon_cpu_s  # noqa: E402  (benchmarks/daemon_cpu.py)

COUNTED = ("requests", "lookup_requests", "read_requests", "stored_ahead", "lookups_to_store",
           "inodes_forgotten")       # (other sessions dropping caches: the kernel forgets frames)


def readers(frames: int, work: Path) -> dict:
    names = [f"frames/{i:06d}.png" for i in range(frames)]
    listed = work / "list.txt"
    listed.write_text("".join(f"{name}\n" for name in names))

    def python(mnt: Path) -> None:
        for name in names:
            (mnt / name).read_bytes()
    return {
        "ffmpeg": lambda mnt: subprocess.run(["ffmpeg", "-v", "error", "-i", str(mnt / "frames/%06d.png"),
                                              "-f", "null", "-"], check=True),
        "tar -T": lambda mnt: subprocess.run(f"tar cf - -T {shlex.quote(str(listed))} | wc -c", shell=True,
                                             cwd=mnt, check=True,
                                             stdout=subprocess.DEVNULL),
        "python": python,
        "tar dir": lambda mnt: subprocess.run("tar cf - frames | wc -c", shell=True, cwd=mnt, check=True,
                                              stdout=subprocess.DEVNULL)}     # (listed: for reference)


def measure(daemon: tuple[str, dict], store: Path, work: Path, read, frames: int) -> dict:
    python, env = daemon
    mnt = Path(tempfile.mkdtemp(dir=work, prefix="mnt-"))
    try:
        subprocess.run([python, "-m", "scopefs.daemon", "mount", str(store), str(mnt),
                        "--log-file", str(work / "scopefs.log")], check=True, env=env)
    except BaseException:
        with contextlib.suppress(OSError):      # (the mount's error is the one to see)
            os.rmdir(mnt)
        raise
    try:
        assert (mnt / "frames/000000.png").exists()     # (frames/ is not listed)
        daemon_status(mnt)                                  # (a status read's own requests are counted after it)
        before = daemon_status(mnt)
        cpu = daemon_cpu_s(before["pid"])
        start = time.perf_counter()
        read(mnt)
        wall = time.perf_counter() - start
        cpu = daemon_cpu_s(before["pid"]) - cpu
        after = daemon_status(mnt)
        return {**{key: (after.get(key, 0) - before.get(key, 0)) / frames for key in COUNTED},
                "wall_ms": 1000 * wall / frames, "cpu_ms": 1000 * cpu / frames}
    finally:
        unmounted = subprocess.run([python, "-m", "scopefs.daemon", "umount", str(mnt)], check=False, env=env)
        if unmounted.returncode == 0:            # (else the error that got here is the one to see)
            os.rmdir(mnt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--daemon", action="append", default=[], metavar="LABEL=PYTHON")
    parser.add_argument("--daemon-path", action="append", default=[], metavar="LABEL=DIR",
                        help="a scopefs checkout run by this Python (an old commit's worktree)")
    parser.add_argument("--readers", type=lambda v: v.split(","), help="only these (e.g. 'tar dir,ffmpeg')")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "scopefs-frames-by-name")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    daemons = {label: (python, dict(os.environ)) for label, python in
               (spec.partition("=")[::2] for spec in args.daemon)}
    for label, checkout in (spec.partition("=")[::2] for spec in args.daemon_path):
        path = args.work / f"path-{label}"
        path.mkdir(exist_ok=True)
        link = path / "scopefs"
        if link.is_symlink():
            link.unlink()
        link.symlink_to(Path(checkout).resolve())
        daemons[label] = sys.executable, {**os.environ, "PYTHONPATH": os.pathsep.join(
            filter(None, (str(path), os.environ.get("PYTHONPATH"))))}
    daemons = daemons or {"scopefs": (sys.executable, dict(os.environ))}
    store = walk_samples.imgstore(args.work / f"imgstore-{args.frames}", args.frames).path
    print(f"{args.frames:,} frames of 320x240 (MJPEG, served as PNG), per frame:", flush=True)
    for round_ in range(args.rounds):
        for kind, read in readers(args.frames, args.work).items():
            if args.readers and kind not in args.readers:
                continue
            for label, daemon in daemons.items():
                counts = measure(daemon, store, args.work, read, args.frames)
                print(f"round {round_ + 1}  {kind:7s} {label:8s} " + "  ".join(
                    f"{key} {value:.3f}" for key, value in counts.items()), flush=True)


if __name__ == "__main__":
    main()
