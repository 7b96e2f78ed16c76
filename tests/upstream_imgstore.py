"""Driven by the tests, run with upstream imgstore's own venv (not collected by pytest).

    write BASE      write sample stores with upstream imgstore under BASE
    read STORE OUT  read every frame of STORE with upstream; save arrays and metadata in OUT.npz
"""
import json
import sys

import numpy as np

import imgstore

T0 = 1700000000.0


def frame(number, shape):
    rng = np.random.default_rng(number & 0xFFFFFFFF)
    img = rng.integers(0, 255, size=shape, dtype=np.uint8, endpoint=True)
    w = shape[1]
    img[16:32] = 0
    for bit in range(16):
        if ((number & 0xFFFF) >> (15 - bit)) & 1:
            img[16:32, bit * w // 16:(bit + 1) * w // 16] = 255
    return img


STORES = {
    # name: (format, shape, frame numbers, chunksize, extra)
    "npy_gray": ("npy", (48, 64), list(range(12)), 5, False),
    "npy_color": ("npy", (48, 64, 3), list(range(7)), 5, False),
    "png_color": ("png", (48, 64, 3), list(range(12)), 5, True),
    "png_gray": ("png", (48, 64), list(range(7)), 5, False),
    "jpg_color": ("jpg", (48, 64, 3), list(range(7)), 5, False),
    "bmp_color": ("bmp", (48, 64, 3), list(range(3)), 5, False),
    "tif_gray": ("tif", (48, 64), list(range(3)), 5, False),
    "pgm_gray": ("pgm", (48, 64), list(range(3)), 5, False),
    "ppm_color": ("ppm", (48, 64, 3), list(range(3)), 5, False),
    "gap_nonzero_npy": ("npy", (48, 64), list(range(1000, 1010)) + list(range(1020, 1030)), 7, False),
    "nonmonotonic_npy": ("npy", (48, 64), [6050, 6055, 6056, 0, 1, 2], 2, False),
    "exactmultiple_npy": ("npy", (48, 64), list(range(10)), 5, False),
    "mjpeg_color": ("mjpeg/avi", (120, 160, 3), list(range(12)), 5, True),
    "mjpeg_gray": ("mjpeg/avi", (120, 160), list(range(12)), 5, False),
    "exactmultiple_mjpeg": ("mjpeg/avi", (120, 160, 3), list(range(10)), 5, False),
    "onelast_mjpeg": ("mjpeg/avi", (64, 64, 3), [3, 4, 5, 6], 3, False),
    "empty_npy": ("npy", (48, 64), [], 5, False),
}


def write(base):
    for name, (fmt, shape, numbers, chunksize, extra) in STORES.items():
        store = imgstore.new_for_format(fmt, mode="w", basedir=f"{base}/{name}", imgshape=shape,
                                        imgdtype=np.uint8, chunksize=chunksize,
                                        metadata={"genotype": "wt", "experiment": {"arena": 3}})
        for i, number in enumerate(numbers):
            store.add_image(frame(number, shape), number, T0 + 0.04 * i)
            if extra and i % 2 == 0:
                store.add_extra_data(temperature=20.0 + i, label=f"f{i}")
        store.close()
    print(json.dumps(list(STORES)))


def read(path, out):
    store = imgstore.new_for_filename(path)
    frames, numbers, times = [], [], []
    for i in range(store.frame_count):
        img, (number, t) = store.get_image(None, frame_index=i)
        frames.append(img)
        numbers.append(number)
        times.append(t)
    by_number = {}
    for number in sorted(set(numbers)):
        img, _ = store.get_image(int(number))      # upstream: the first frame with that number
        by_number[int(number)] = img
    nearest = {}
    for t in (times[:3] + [T0 + 0.5, T0 - 100]) if times else []:   # upstream crashes on empty stores
        img, (n, tt) = store.get_nearest_image(t)
        nearest[repr(t)] = [int(n), float(tt)]
    extra = store.get_extra_data()
    info = {
        "frame_count": store.frame_count,
        "numbers": [int(n) for n in numbers],
        "times": [float(t) for t in times],
        "user_metadata": store.user_metadata,
        "nearest": nearest,
        "extra": None if extra is None else json.loads(extra.to_json(orient="records")),
        "image_shape": list(store.image_shape),
    }
    arrays = {f"frame_{i}": f for i, f in enumerate(frames)}
    arrays.update({f"number_{n}": img for n, img in by_number.items()})
    np.savez(out, info=np.asarray(json.dumps(info)), **arrays)
    store.close()


if __name__ == "__main__":
    if sys.argv[1] == "write":
        write(sys.argv[2])
    elif sys.argv[1] == "read":                 # read STORE OUT [STORE OUT...]: one start for many
        for path, out in zip(sys.argv[2::2], sys.argv[3::2]):
            read(path, out)
