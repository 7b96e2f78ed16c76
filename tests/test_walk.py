"""Every kind walks like a local disk: a copy made with `rsync -a` of the mount holds the
same names, types, link targets, sizes and bytes, and the sizes `find` reports add up to
what reading the files gives."""
from __future__ import annotations

import hashlib
import os
import subprocess

import pytest
import walk_samples
from conftest import daemon_status

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


@pytest.mark.parametrize("listed", [True, False])
def test_reading_every_metadata_file_of_a_fileset_takes_a_worker_call_per_many(listed, tmp_path, mount):
    """A reader of every `.metadata.json` of a fileset (a walk, `tar`, a script that knows
    the paths) opens them in listing order: the first open, in a worker, reads the next
    ones ahead with their sizes, so their lookups and opens are answered from memory (a
    folder never listed is listed once for that); each reads what the database holds."""
    files = 40
    source = walk_samples.fsdb(tmp_path / "db", 1, 1, files)
    mnt = mount(source.path)
    fileset = mnt / "scan_000" / "fileset_0"
    names = [name + ".metadata.json" for name in sorted(os.listdir(source.path / "scan_000" / "fileset_0"))]
    if listed:
        assert sorted(name for name in os.listdir(fileset) if name.endswith(".metadata.json")) == names
    before = daemon_status(mnt)["worker_calls"]
    read = {name: (fileset / name).read_bytes() for name in names}
    # (before: an open each, and unlisted a lookup each too; here at most the first's two
    # and the lookups of the scan and the fileset)
    assert daemon_status(mnt)["worker_calls"] - before <= 4
    stored = source.path / "scan_000" / "metadata" / "fileset_0"
    assert read == {name: (stored / (name.split(".")[0] + ".json")).read_bytes() for name in names}
    assert [os.stat(fileset / name).st_size for name in names] == [len(read[name]) for name in names]


def test_reading_fsdb_data_files_again_takes_no_worker_call(tmp_path, mount):
    """A file whose path the kernel has cached opens on the daemon's loop (a second `tar`
    or `cp -r` of a fileset: no thread hop per file), and reads what the database holds."""
    source = walk_samples.fsdb(tmp_path / "db", 1, 1, 20)
    mnt = mount(source.path)
    fileset = mnt / "scan_000" / "fileset_0"
    names = [name for name in os.listdir(fileset) if name.endswith(".png")]
    first = {name: (fileset / name).read_bytes() for name in names}
    before = daemon_status(mnt)["worker_calls"]
    again = {name: (fileset / name).read_bytes() for name in names}
    assert daemon_status(mnt)["worker_calls"] == before         # (one a file before)
    stored = source.path / "scan_000" / "fileset_0"
    assert first == again == {name: (stored / name).read_bytes() for name in names}
