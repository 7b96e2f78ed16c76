"""Every kind walks like a local disk: a copy made with `rsync -a` of the mount holds the
same names, types, link targets, sizes and bytes, and the sizes `find` reports add up to
what reading the files gives."""
from __future__ import annotations

import hashlib
import os
import subprocess

import pytest
import walk_samples

SIZES = {"imgstore": (30,), "iid": (40,), "fsdb": (2, 2, 3), "copick": (2, 3)}


def make_source(kind: str, base):
    if kind == "iid":
        return walk_samples.iid(base / "cells.iid", *SIZES[kind])
    return getattr(walk_samples, kind)(base / kind, *SIZES[kind])


def snapshot(root) -> dict[str, tuple]:
    """Every path under `root`: ("dir",), ("link", target) or ("file", size, sha256)."""
    seen = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                seen[rel] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                seen[rel] = ("dir",)
            else:
                with open(path, "rb") as fh:
                    data = fh.read()
                seen[rel] = ("file", os.lstat(path).st_size, len(data), hashlib.sha256(data).hexdigest())
    return seen


def find_sizes(root) -> int:
    out = subprocess.run(["find", str(root), "-type", "f", "-printf", "%s\\n"], capture_output=True, text=True,
                         check=True).stdout
    return sum(int(v) for v in out.split())


def cat_bytes(root) -> int:
    files = subprocess.run(["find", str(root), "-type", "f", "-print0"], capture_output=True, check=True).stdout
    names = [n for n in files.split(b"\0") if n]
    total = 0
    for start in range(0, len(names), 500):
        done = subprocess.run(["cat", "--", *names[start:start + 500]], capture_output=True, check=True)
        total += len(done.stdout)
    return total


@pytest.mark.parametrize("kind", walk_samples.KINDS)
def test_rsync_copy_of_the_mount_is_the_same_tree(kind, tmp_path, mount):
    source = make_source(kind, tmp_path)
    mnt = mount(source.path, *source.options)
    copy = tmp_path / "copy"
    done = subprocess.run(["rsync", "-a", f"{mnt}/", f"{copy}/"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    seen = snapshot(mnt)
    assert len(seen) > 20 and any(v[0] == "file" for v in seen.values())
    assert seen == snapshot(copy)
    for rel, what in seen.items():
        if what[0] == "file":
            assert what[1] == what[2], f"{rel}: stat says {what[1]} bytes, read gives {what[2]}"
    assert find_sizes(mnt) == cat_bytes(mnt) == find_sizes(copy) == cat_bytes(copy)
    assert "Traceback" not in mount.log()
