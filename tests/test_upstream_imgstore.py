"""Interop with upstream imgstore 0.4.0 (its own venv): stores it writes mount and match
its `get_image` frame for frame; stores scopefs writes open in it."""
from __future__ import annotations

import csv
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from stores import barcode, make_store
from upstream import run_upstream

pytestmark = pytest.mark.upstream


def served_as_upstream_returns(path) -> np.ndarray:
    """A served PNG as upstream would hand it out: BGR for colour."""
    img = np.asarray(Image.open(path))
    return img[:, :, ::-1] if img.ndim == 3 else img


def upstream_read(stores: dict, folder) -> dict[str, tuple[dict, dict]]:
    """What upstream reads from each store ({key: path}), in one run of its venv."""
    outs = {key: folder / f"read{i}.npz" for i, key in enumerate(stores)}
    run_upstream("imgstore", "upstream_imgstore.py", "read",
                 *(str(path) for key in stores for path in (stores[key], outs[key])))
    read = {}
    for key, out in outs.items():
        with np.load(out) as data:
            read[key] = json.loads(str(data["info"])), {k: data[k] for k in data.files if k != "info"}
    return read


@pytest.fixture(scope="module")
def upstream_stores(tmp_path_factory):
    """Stores upstream wrote, and what it reads from each."""
    base = tmp_path_factory.mktemp("upstream")
    names = json.loads(run_upstream("imgstore", "upstream_imgstore.py", "write", str(base)))
    return base, names, upstream_read({name: base / name for name in names}, base)


def test_stores_written_by_upstream_match_its_get_image(upstream_stores, module_mount):
    base, names, read = upstream_stores
    for name in names:
        store = base / name
        info, arrays = read[name]
        mnt = module_mount(store)
        frames = sorted(os.listdir(mnt / "frames"))
        assert len(frames) == info["frame_count"], name
        for i, fname in enumerate(frames):
            got = served_as_upstream_returns(mnt / "frames" / fname)
            assert np.array_equal(got, arrays[f"frame_{i}"]), (name, i)
        # by-number: upstream's get_image(number) is the first frame with that number
        for number in set(info["numbers"]):
            sign = "-" if number < 0 else ""
            got = served_as_upstream_returns(mnt / "by-number" / f"{sign}{abs(number):06d}.png")
            assert np.array_equal(got, arrays[f"number_{number}"]), (name, number)
        rows = list(csv.DictReader(io.StringIO((mnt / "frames.csv").read_text())))
        assert [int(r["frame_number"]) for r in rows] == info["numbers"]
        assert [float(r["frame_time"]) for r in rows] == info["times"]
        for t, (number, _) in info["nearest"].items():
            target = os.readlink(mnt / "at-time" / f"{float(t)!r}.png")
            assert info["numbers"][int(target[len("../frames/"):-4])] == number, (name, t)
        assert json.loads((mnt / "metadata.json").read_text()) == info["user_metadata"]
        if info["extra"]:
            ours = [json.loads(line) for line in (mnt / "extra.jsonl").read_text().splitlines()]
            assert [r["label"] for r in ours] == [r["label"] for r in info["extra"]]
            assert [r["frame_index"] for r in ours] == [r["frame_index"] for r in info["extra"]]


SCOPEFS_WRITES = [
    ("npy", (48, 64, 3), False), ("png", (48, 64), False), ("tif", (48, 64, 3), False),
    ("mjpeg/avi", (120, 160, 3), True), ("avc1/mp4", (120, 160, 3), True), ("h264/mkv", (120, 160), True),
]
NUMBERS = [5, 6, 7, 9, 12, 13, 14, 15, 16, 20, 21, 22, 23]


@pytest.fixture(scope="module")
def scopefs_stores(tmp_path_factory):
    """A store of each format written by scopefs, and what upstream reads from each."""
    base = tmp_path_factory.mktemp("scopefs-written")
    samples = {fmt: make_store(base / f"store{i}", fmt, shape=shape, numbers=NUMBERS, chunksize=4, video=video,
                               extra=True, metadata={"genotype": "mutant", "rig": {"camera": 2}})
               for i, (fmt, shape, video) in enumerate(SCOPEFS_WRITES)}
    return samples, upstream_read({fmt: sample.path for fmt, sample in samples.items()}, base)


@pytest.mark.parametrize("fmt,shape,video", SCOPEFS_WRITES)
def test_stores_written_by_scopefs_open_in_upstream(scopefs_stores, fmt, shape, video):
    numbers = NUMBERS
    sample, (info, arrays) = scopefs_stores[0][fmt], scopefs_stores[1][fmt]
    assert info["frame_count"] == len(numbers)
    assert info["numbers"] == numbers
    assert info["times"] == sample.times
    assert info["user_metadata"] == {"genotype": "mutant", "rig": {"camera": 2}}
    assert [r["label"] for r in info["extra"]] == [f"f{i}" for i in range(0, len(numbers), 2)]
    for i in range(len(numbers)):
        got = arrays[f"frame_{i}"]
        if video:
            assert barcode(got) == numbers[i], (fmt, i)
        else:
            assert np.array_equal(got, sample.written[i]), (fmt, i)
