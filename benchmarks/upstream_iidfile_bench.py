"""Run with upstream iidfile's venv by benchmarks/iid.py; prints JSON timings.

    load FILE        open + fetch(everything=True); open + fetch(iids only)
    mask FILE KEYS   open, then fetch(keys=[k]) + mask() for each key (lazy, one at a time)
"""
import json
import sys
import time

from iidfile import IIDFile


def load(path):
    t = time.perf_counter()
    f = IIDFile(fpath=path)
    f.fetch(everything=True)
    everything = time.perf_counter() - t
    t = time.perf_counter()
    f = IIDFile(fpath=path)
    f.fetch(all_keys=True, segs=False)
    iids = time.perf_counter() - t
    return {"everything_s": everything, "iids_only_s": iids}


def masks(path, keys):
    f = IIDFile(fpath=path)
    times = []
    for k in keys:
        t = time.perf_counter()
        entry = f.fetch(keys=[k])[0]
        entry.seg.mask()
        times.append(time.perf_counter() - t)
    return {"per_mask_s": times}


if __name__ == "__main__":
    if sys.argv[1] == "load":
        print(json.dumps(load(sys.argv[2])))
    else:
        print(json.dumps(masks(sys.argv[2], json.loads(sys.argv[3]))))
