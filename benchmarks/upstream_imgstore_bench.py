"""Run with upstream imgstore's venv by benchmarks/run.py; prints JSON timings.

    read STORE MODE INDEXES_JSON   MODE: get_image | get_image_png (decode + write a PNG, the
                                   export a user would otherwise do)
    open STORE                     time to open the store (new_for_filename)
"""
import json
import os
import sys
import tempfile
import time

import cv2

import imgstore


def read(path, mode, indexes):
    t0 = time.perf_counter()
    store = imgstore.new_for_filename(path)
    opened = time.perf_counter() - t0
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in indexes:
            t = time.perf_counter()
            img, _ = store.get_image(None, frame_index=i)
            if mode == "get_image_png":
                cv2.imwrite(os.path.join(tmp, f"{i:06d}.png"), img)
            times.append(time.perf_counter() - t)
    store.close()
    return {"open_s": opened, "per_frame_s": times}


def open_only(path):
    t0 = time.perf_counter()
    store = imgstore.new_for_filename(path)
    count = store.frame_count
    return {"open_s": time.perf_counter() - t0, "frame_count": count}


if __name__ == "__main__":
    if sys.argv[1] == "read":
        print(json.dumps(read(sys.argv[2], sys.argv[3], json.loads(sys.argv[4]))))
    else:
        print(json.dumps(open_only(sys.argv[2])))
