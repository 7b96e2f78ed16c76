"""Sample .iid files written by upstream iidfile (in its own venv), with what they hold,
and by scopefs (`disks_in_a_row`); `overview_sized` for a tree opened on one."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np

from upstream import run_upstream
from scopefs.formats.iid import IIDFile
from scopefs.formats.samples import disk

ODD_ADDRESSES = [b"leaf", b"a/b", b"/leading", b"..", b".", b"../../etc/passwd", b"with space ",
                 b"\xff\xfe\x80latin1-\xe9", b"nul\x00byte", b"new\nline", b"", b"dup", b"dup",
                 b"x" * 300, "café".encode()]


def masks_for(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = []
    for i in range(count):
        h, w = 5 + (i * 7) % 23, 4 + (i * 5) % 19
        kind = i % 4
        if kind == 0:                               # a disk
            yy, xx = np.mgrid[:h, :w]
            m = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 2.2) ** 2
        elif kind == 1:                             # scattered pixels: many regions
            m = rng.random((h, w)) < 0.2
        elif kind == 2:                             # a ring with a blob in its hole
            m = np.zeros((h, w), bool)
            m[0, :] = m[-1, :] = m[:, 0] = m[:, -1] = True
            m[h // 2, w // 2] = True
        else:
            m = np.ones((h, w), bool)
        masks.append(m)
    masks.append(np.zeros((3, 4), bool))            # an empty mask: no regions, area 0
    return masks


def write_upstream(path: Path, addresses=ODD_ADDRESSES, groups=None, meta=None) -> dict:
    """Write `path` with upstream iidfile; return the spec (entries, masks, groups, meta)."""
    masks = masks_for(len(addresses) - 1)[:len(addresses)]
    entries = []
    for i, (address, mask) in enumerate(zip(addresses, masks)):
        minr, minc = 3 * i, 2 * i
        domain = None if i % 5 == 4 else f"dom{i % 3}".encode()
        entries.append({"address": address.hex(), "domain": None if domain is None else domain.hex(),
                        "bbox": [minr, minc, minr + mask.shape[0], minc + mask.shape[1]]})
    groups = groups if groups is not None else {"plain": [0, 2, 4], "odd/group name": [1, 11, 12]}
    info = {"entries": entries, "groups": groups, "meta": meta if meta is not None else {"image": "leaf.png", "n": 3}}
    spec = path.with_suffix(".spec.npz")
    np.savez(spec, info=np.asarray(json.dumps(info)), **{f"mask_{i}": m for i, m in enumerate(masks)})
    run_upstream("iidfile", "upstream_iidfile.py", "write", str(path), str(spec))
    return {"info": info, "masks": masks}


def read_upstream(path: Path) -> tuple[dict, dict]:
    out = path.with_suffix(".read.npz")
    run_upstream("iidfile", "upstream_iidfile.py", "read", str(path), str(out))
    with np.load(out) as data:
        return json.loads(str(data["info"])), {k: data[k] for k in data.files if k != "info"}


def disks_in_a_row(path: Path, count: int) -> Path:
    """An .iid of `count` small disks side by side, addressed c00, c01, ... in domain d."""
    f = IIDFile()
    for i in range(count):
        f.add(disk(3), (10 * i, 0, 10 * i + 7, 7), address=f"c{i:02d}".encode(), domain=b"d")
    f.save(str(path))
    return path


def wide_plane(path: Path) -> Path:
    """An .iid of two small disks 6,000 pixels apart: its overview.png is of a 2048² plane,
    whose size a thread learns at mount by encoding it blank (~0.1 s of CPU)."""
    f = IIDFile()
    for i, corner in enumerate((0, 6000)):
        f.add(disk(3), (corner, corner, corner + 7, corner + 7), address=f"c{i}".encode(), domain=b"d")
    f.save(str(path))
    return path


def overview_sized() -> None:
    """Waits for the thread an .iid tree starts to learn overview.png's size (it takes the
    tree's lock; one still encoding when the interpreter exits aborts it: "terminate
    called without an active exception")."""
    for thread in threading.enumerate():
        if thread.name == "overview-size":
            thread.join()
