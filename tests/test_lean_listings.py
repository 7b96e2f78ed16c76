"""Listings without attributes where they would cost work (`LeanRule`, READDIRPLUS entries
with node id 0): a cold `find` of a copick mount computes no view's size and sends no
LOOKUP, while `ls -l`, `du` and `find -printf %s` still see the right sizes, and a walk
that stats what it lists costs one folder's LOOKUPs before listings carry attributes
again, also after a `find` left its listings in the kernel."""
from __future__ import annotations

import os
import subprocess

import pytest
import walk_samples
from conftest import daemon_status
from scopefs.daemon.listings import LEAN_MISSES


def counts(mnt) -> dict:
    status = daemon_status(mnt)
    return {"lookups": status["lookup_requests"], "lean": status["lean_entries"],
            "sized": status.get("picks_size_batches", 0), "trips": status["lean_rule_trips"]}


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
def copick_source(tmp_path):
    return walk_samples.copick(tmp_path / "copick", 3, 2)


@pytest.fixture
def copick_mount(copick_source, mount):
    return mount(copick_source.path, *copick_source.options)


def one_folders_lookups(mnt) -> int:
    """The most LOOKUPs before listings carry attributes: those that tell (in folders
    of a file or two), then the rest of the widest folder (its lean listing is read)."""
    return LEAN_MISSES - 1 + max(len(files) for _, _, files in os.walk(mnt))


def lookups_without_lean(source, mount, monkeypatch, *walks) -> int:
    """The LOOKUPs of the last of `walks` on a mount whose listings all carry attributes."""
    with monkeypatch.context() as env:
        env.setenv("SCOPEFS_LEAN_LISTINGS", "0")
        mnt = mount(source.path, *source.options)
    for walk in walks:
        before = counts(mnt)
        run(*walk, str(mnt))
    return counts(mnt)["lookups"] - before["lookups"]


def test_cold_find_of_copick_sizes_no_view_and_looks_nothing_up(copick_mount):
    mnt = copick_mount
    before = counts(mnt)
    names = run("find", str(mnt)).splitlines()
    after = counts(mnt)
    assert after["lookups"] == before["lookups"] and after["lean"] > before["lean"]
    assert after["sized"] == before["sized"]
    for folder in {os.path.dirname(name) for name in names}:   # (then with sizes, right ones)
        for name, size in sizes_by_ls(folder).items():
            with open(os.path.join(folder, name), "rb") as fh:
                assert len(fh.read()) == size, name


def test_a_walk_that_stats_sends_one_folders_lookups(copick_source, copick_mount, mount, monkeypatch):
    mnt = copick_mount
    before = counts(mnt)
    run("ls", "-lR", str(mnt))
    after = counts(mnt)
    more = after["lookups"] - before["lookups"] - lookups_without_lean(copick_source, mount, monkeypatch, ["ls", "-lR"])
    assert 0 < more <= one_folders_lookups(mnt)
    assert after["trips"] - before["trips"] == 1


def test_a_walk_that_stats_after_find_sends_one_folders_lookups(copick_source, copick_mount, mount, monkeypatch):
    """`find` left lean listings in the kernel (FOPEN_CACHE_DIR): they are dropped when
    `ls -lR` looks names up, so the folders after are listed anew, with attributes."""
    mnt = copick_mount
    run("find", str(mnt))
    before = counts(mnt)
    assert "TS_000" in run("ls", "-lR", str(mnt))
    after = counts(mnt)
    more = after["lookups"] - before["lookups"] - lookups_without_lean(copick_source, mount, monkeypatch, ["find"],
                                                                      ["ls", "-lR"])
    assert 0 < more <= one_folders_lookups(mnt)


@pytest.mark.parametrize("kind", ["imgstore", "fsdb"])
def test_attributes_known_in_memory_are_kept(kind, tmp_path, mount):
    """imgstore frames' attributes are in memory, and FSDB folders learn theirs as they
    list (in one pass, ahead of the walk: cheaper than a LOOKUP a name): `ls -l` of them
    sends no LOOKUP a file."""
    source = walk_samples.imgstore(tmp_path / "store", 30) if kind == "imgstore" else \
        walk_samples.fsdb(tmp_path / "fsdb", 1, 1, 15)
    folder = "by-number" if kind == "imgstore" else "scan_000/fileset_0"
    mnt = mount(source.path, *source.options)
    run("find", str(mnt))
    before = counts(mnt)
    assert len(run("ls", "-l", str(mnt / folder)).splitlines()) == 31
    after = counts(mnt)
    assert after["lookups"] == before["lookups"] and after["lean"] == before["lean"]
