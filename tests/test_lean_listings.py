"""Listings without attributes where they would cost I/O (`LeanRule`, READDIRPLUS entries
with node id 0): a cold `find` stats no file and sends no LOOKUP, while `ls -l`, `du`
and `find -printf %s` still see the right sizes, and a walk that stats what it lists
costs at most one folder's LOOKUPs before listings carry attributes again."""
from __future__ import annotations

import os
import subprocess

import pytest
import walk_samples
from conftest import daemon_status


def counts(mnt) -> dict:
    status = daemon_status(mnt)
    return {"lookups": status["lookup_requests"], "lean": status["lean_entries"],
            "learned": status.get("work", {}).get("attributes_learned", 0)}


def run(*args) -> str:
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout


def sizes_by_ls(folder) -> dict[str, int]:
    """Name -> size as `ls -l` shows them (files only)."""
    out = {}
    for line in run("ls", "-ln", str(folder)).splitlines()[1:]:
        fields = line.split(None, 8)
        if fields[0].startswith("-"):
            out[fields[8]] = int(fields[4])
    return out


@pytest.fixture
def fsdb_mount(tmp_path, mount):
    source = walk_samples.fsdb(tmp_path / "fsdb", 2, 2, 4)
    return source, mount(source.path, *source.options)


def test_cold_find_of_fsdb_stats_no_data_file_and_looks_nothing_up(fsdb_mount):
    source, mnt = fsdb_mount
    before = counts(mnt)
    names = run("find", str(mnt)).split("\n")
    after = counts(mnt)
    views = [name for name in names if name.endswith(".metadata.json")]
    assert len(names) - len(views) > 20
    assert after["lookups"] == before["lookups"]
    assert after["learned"] - before["learned"] == len(views)    # (each data file: none)
    assert after["lean"] - before["lean"] == 2 * 2 * 4
    # then `ls -l` (its listing kept by the kernel from the lean answer: a LOOKUP a name)
    shown, on_disk = sizes_by_ls(mnt / "scan_000" / "fileset_0"), source.path / "scan_000" / "fileset_0"
    data = {name: size for name, size in shown.items() if (on_disk / name).exists()}
    assert len(data) == 4 and data == {name: (on_disk / name).stat().st_size for name in data}
    assert sum(int(v) for v in run("find", str(mnt), "-type", "f", "-printf", "%s\\n").split()) == \
        sum(len(open(os.path.join(folder, name), "rb").read())
            for folder, _, files in os.walk(mnt) for name in files)


def test_a_walk_that_stats_sends_at_most_one_folders_lookups(fsdb_mount):
    """`ls -lR` of 4 filesets of 4 files: the first fileset listed costs a LOOKUP a data
    file, then listings carry attributes."""
    _, mnt = fsdb_mount
    before = counts(mnt)
    listed = run("ls", "-lR", str(mnt))
    after = counts(mnt)
    assert listed.count("img_003.png.metadata.json") == 4
    assert 0 < after["lookups"] - before["lookups"] <= 4
    assert daemon_status(mnt)["lean_rule_trips"] == 1


def test_listings_known_in_memory_keep_their_attributes(tmp_path, mount):
    """imgstore frames' attributes are in memory: `ls -l` of them sends no LOOKUP a frame."""
    source = walk_samples.imgstore(tmp_path / "store", 30)
    mnt = mount(source.path, *source.options)
    before = counts(mnt)
    assert len(run("ls", "-l", str(mnt / "by-number")).splitlines()) == 31
    after = counts(mnt)
    assert after["lookups"] - before["lookups"] == 1        # (the folder's own)
    assert after["lean"] == before["lean"]


def test_cold_find_of_copick_looks_nothing_up_and_ls_shows_what_reads_give(tmp_path, mount):
    """copick views' sizes (picks as CSV, tomograms as MRC) cost a conversion: `find`
    lists them without; `ls -l` afterwards still shows the sizes reading gives."""
    source = walk_samples.copick(tmp_path / "copick", 1, 2)
    mnt = mount(source.path, *source.options)
    before = counts(mnt)
    names = run("find", str(mnt)).splitlines()
    after = counts(mnt)
    assert after["lookups"] == before["lookups"] and after["lean"] > before["lean"]
    for folder in {os.path.dirname(name) for name in names}:
        for name, size in sizes_by_ls(folder).items():
            with open(os.path.join(folder, name), "rb") as fh:
                assert len(fh.read()) == size, name
