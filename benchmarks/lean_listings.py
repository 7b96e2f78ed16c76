"""Listings with and without attributes (`LeanRule`), side by side: what cold walks of an
FSDB and a copick mount cost with lean listings (the default) and with every entry's
attributes (SCOPEFS_LEAN_LISTINGS=0), alternating, each walk on a fresh mount.

    python benchmarks/lean_listings.py [--work DIR] [--fsdb SxFxN|none] [--copick RxP|none]
        [--cases never,kept,learned] [--walks 'find;ls -lR'] [--repeat 3] [--learner]
        [--daemon-path LABEL=DIR ...]

Printed per walk and mode, as medians: wall time, the daemon's CPU seconds, and the
daemon's counters for the walk: requests, LOOKUPs, READDIRs, entries listed without
attributes, LOOKUPs answered from a folder's first (`lean_lookups_answered`), worker calls,
and (FSDB) attributes the backend learned from disk and the CPU time of the threads that
learn them ahead of the walk (`learning_ahead_cpu_s`; 0 where a daemon has no such count).
The copick project is mounted as never before (`never`: no view sizes kept, a fresh
XDG_CACHE_HOME each mount, the size learner racing the walk), with the sizes a mount before
kept (`kept`), and after the mount's learner is done (`learned`). With sizes kept the mount
has no size learner unless `--learner` (as `benchmarks/walk.py` mounts: the learner from
mount on, the walk at once). Each `--daemon-path LABEL=DIR` adds a column, lean listings
with DIR first on the daemon's PYTHONPATH (another checkout of scopefs, unpacked there as
`DIR/scopefs`), walked in turn with the others.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import walk_samples  # noqa: E402
from control_file import daemon_status  # noqa: E402
from daemon_cpu import daemon_cpu_s  # noqa: E402  (benchmarks/daemon_cpu.py)

SCOPEFS = [sys.executable, "-m", "scopefs.daemon"]
WALKS = {"find": "find . >/dev/null", "find -printf %s": "find . -printf '%s\\n' >/dev/null",
         "du -s": "du -s . >/dev/null", "ls -lR": "ls -lR . >/dev/null",
         "find, then ls -lR": "find . >/dev/null && ls -lR . >/dev/null"}
COUNTERS = ("requests", "lookup_requests", "readdir_requests", "lean_entries", "lean_lookups_answered",
            "worker_calls", "listings_made", "lean_listings_given_again")


def counted(st: dict) -> dict:
    out = {name: st.get(name, 0) for name in COUNTERS}
    out["learned"] = st.get("work", {}).get("attributes_learned", 0)
    out["views_made"] = st.get("views_made", 0)
    out["learner_cpu_s"] = st.get("learning_ahead_cpu_s", 0)      # (FSDB: the threads learning ahead)
    return out


def learned(mnt: Path) -> None:
    while not daemon_status(mnt).get("view_sizes", {}).get("learning_done", True):
        time.sleep(0.2)


def one_walk(source: walk_samples.Source, command: str, lean: bool, work: Path, case: str = "never",
             learner: bool = False, daemon_path: str | None = None) -> dict:
    mnt = work / "mnt"
    mnt.mkdir(exist_ok=True)
    cache = work / "cache-kept" if case == "kept" else Path(tempfile.mkdtemp(dir=work, prefix="cache-"))
    env = dict(os.environ, SCOPEFS_LEAN_LISTINGS="1" if lean else "0", XDG_CACHE_HOME=str(cache))
    if daemon_path:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (daemon_path, env.get("PYTHONPATH"))))
    if case == "kept" and not cache.exists():            # a mount before learns every size and keeps them
        subprocess.run(SCOPEFS + ["mount", str(source.path), str(mnt), *source.options], check=True, env=env)
        learned(mnt)
        subprocess.run(["fusermount3", "-u", str(mnt)], check=True)
        time.sleep(0.5)
    subprocess.run(SCOPEFS + ["mount", str(source.path), str(mnt), *source.options], check=True,
                   env=dict(env, SCOPEFS_LEARN_VIEW_SIZES="0") if case == "kept" and not learner else env)
    try:
        if case == "learned":
            learned(mnt)
        if os.geteuid() == 0:
            os.sync()
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
        before = daemon_status(mnt)
        cpu, start = daemon_cpu_s(before["pid"]), time.perf_counter()
        subprocess.run(command, shell=True, cwd=mnt, check=True)
        took = time.perf_counter() - start
        after = daemon_status(mnt)
        out = {name: counted(after)[name] - counted(before)[name] for name in counted(after)}
        out["requests"] -= 1                        # (the status read between)
        return dict(out, wall_s=took, cpu_s=daemon_cpu_s(before["pid"]) - cpu)
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "scopefs-bench-lean")
    parser.add_argument("--fsdb", default="10x3x60", help="scans x filesets x files (10x3x60), or none")
    parser.add_argument("--copick", default="5x10", help="runs x picks (5x10), or none")
    parser.add_argument("--cases", default="never,kept,learned", help="copick: never,kept,learned")
    parser.add_argument("--walks", default=";".join(WALKS), help="some of: " + "; ".join(WALKS))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--learner", action="store_true", help="sizes kept: the size learner runs from mount on")
    parser.add_argument("--daemon-path", action="append", default=[], metavar="LABEL=DIR",
                        help="also lean listings with DIR first on the daemon's PYTHONPATH")
    args = parser.parse_args()
    # (label, lean, daemon path) of each column
    modes = [("lean", True, None), ("full", False, None)] + \
        [(spec.partition("=")[0], True, spec.partition("=")[2]) for spec in args.daemon_path]
    args.work.mkdir(parents=True, exist_ok=True)
    walks = args.walks.split(";")
    if unknown := set(walks) - set(WALKS):
        parser.error(f"unknown walks: {', '.join(sorted(unknown))}")
    sources = {}
    if args.fsdb != "none":
        sources[f"FSDB {args.fsdb}"] = walk_samples.fsdb(args.work / f"fsdb-{args.fsdb}",
                                                        *map(int, args.fsdb.split("x"))), "never"
    titles = {"never": "never mounted before", "kept": "sizes kept by a mount before",
              "learned": "after the mount learned the sizes"}
    if args.copick != "none":
        copick = walk_samples.copick(args.work / f"copick-{args.copick}", *map(int, args.copick.split("x")))
        for case in args.cases.split(","):
            sources[f"copick {args.copick}, {titles[case]}"] = copick, case
    for label, (source, case) in sources.items():
        learner = " (the size learner running)" if case == "kept" and args.learner else ""
        print(f"{label}{learner}, cold, medians of {args.repeat} ({' | '.join(mode[0] for mode in modes)}; "
              f"lean: lean listings, full: every entry with attributes)")
        for walk in walks:
            command = WALKS[walk]
            runs = {mode: [] for mode in modes}
            for _ in range(args.repeat):
                for mode in modes:
                    runs[mode].append(one_walk(source, command, mode[1], args.work, case, args.learner, mode[2]))
            med = [{k: statistics.median(r[k] for r in rs) for k in rs[0]} for rs in runs.values()]

            def cell(key: str, form: str = "g") -> str:
                return " | ".join(format(m[key], form) for m in med)
            cells = "  ".join(f"{k} {cell(k)}" for k in
                              ("requests", "lookup_requests", "lean_lookups_answered", "readdir_requests",
                               "listings_made", "lean_listings_given_again", "lean_entries", "worker_calls",
                               "views_made", "learned"))
            print(f"  {walk:<18} wall {cell('wall_s', '.3f')} s  daemon CPU {cell('cpu_s', '.2f')} s  "
                  f"learner CPU {cell('learner_cpu_s', '.2f')} s  {cells}",
                  flush=True)

if __name__ == "__main__":
    main()
