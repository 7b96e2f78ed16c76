"""The node contract (tests/contract.py) on a tree of every kind, without the kernel.

Trees are opened through the backends' entry point (`backends.open_tree`, the kind told
by `backends.DETECTORS`) on the built-in samples, each opened on a copy of its own. Every
read check walks the whole tree; the read-only check also reaches read-only trees grafted
into writable ones (the `.iid` and imgstore views inside an FSDB).
"""
from __future__ import annotations

import errno
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest

from contract import (READ_CHECKS, Walk, check_made_up_files_without_write_bits_refuse_writers,
                      check_read_only_refuses_changes)
from stores import make_store

from scopefs.backends import DETECTORS, open_tree
from scopefs.backends.blocks import BufferHandle, StaticDirectory
from scopefs.backends.nodes import Attr, File, Tree, read_only
from scopefs.backends.options import Options
from scopefs.formats import samples
from scopefs.formats.imgstore.sample import make_sample


@dataclass(frozen=True)
class Spec:
    name: str
    sample: str                 # a key of `sample_sources`
    read_only: bool
    options: tuple = ()         # (key, value) mount options

    def __str__(self) -> str:
        return self.name


SPECS = [
    Spec("imgstore-video", "video", True),
    Spec("imgstore-video-decoded", "video", True, (("passthrough", "no"),)),
    Spec("imgstore-directory", "directory", True),
    Spec("imgstore-directory-encoded", "directory", True, (("passthrough", "no"), ("image_format", "bmp"))),
    Spec("iid-read-only", "iid", True),
    Spec("iid-writable", "iid", False),
    Spec("fsdb-writable", "fsdb", False),          # with .iid and imgstore views: read-only grafts
    Spec("fsdb-read-only", "fsdb", True),
    Spec("copick", "copick", False),
    Spec("copick-read-only", "copick", True),
]


@pytest.fixture(scope="session")
def sample_sources(tmp_path_factory) -> dict:
    """The samples, small: an imgstore as video chunks and as a directory of images, an
    .iid, an FSDB (images, an .iid, an imgstore), a copick project (static + overlay)."""
    base = tmp_path_factory.mktemp("contract-samples")
    make_sample(str(base / "video"), frames=12, chunksize=5)
    make_store(base / "directory", "png", chunksize=5)
    return {"video": base / "video", "directory": base / "directory",
            "iid": samples.make_iid(str(base / "cells.iid")),
            "fsdb": samples.make_fsdb(str(base / "plantdb"), images=2),
            "copick": samples.make_copick(str(base / "copick"))}


class Opened:
    """Trees opened on copies of the samples (each its own copy), closed at the end."""

    def __init__(self, sources: dict, base: Path):
        self.sources, self.base, self.trees = sources, base, []

    def open(self, spec: Spec) -> Tree:
        source = self.sources[spec.sample]
        copy = self.base / f"{spec.name}-{len(self.trees)}"
        if source.is_dir():
            shutil.copytree(source, copy)
        elif source.suffix == ".json":          # copick: the config names its roots: copy them along
            shutil.copytree(source.parent, copy)
            text = (copy / source.name).read_text().replace(str(source.parent), str(copy))
            (copy := copy / source.name).write_text(text)
        else:
            copy.mkdir()
            shutil.copy(source, copy := copy / source.name)
        kind = next(kind for kind, looks_like in DETECTORS.items() if looks_like(str(copy)))
        tree = open_tree(kind, str(copy), Options(dict(spec.options)), read_only=spec.read_only,
                         mountpoint=str(self.base / "mnt"))
        self.trees.append(tree)
        return tree

    def close(self) -> None:
        for tree in self.trees:
            tree.close()


@pytest.fixture(scope="module")
def opener(sample_sources, tmp_path_factory):
    opened = Opened({k: Path(v) for k, v in sample_sources.items()}, tmp_path_factory.mktemp("contract-trees"))
    yield opened
    opened.close()


@pytest.fixture(scope="module", params=SPECS, ids=str)
def walked(request, opener) -> Walk:
    """One tree of each spec, walked once for all the read checks."""
    return Walk.of(opener.open(request.param))


@pytest.mark.parametrize("check", READ_CHECKS, ids=lambda check: check.__name__.removeprefix("check_"))
def test_contract(walked, check):
    check(walked)


@pytest.mark.parametrize("spec", [s for s in SPECS if s.read_only or s.sample == "fsdb"], ids=str)
async def test_read_only_trees_refuse_changes(opener, spec):
    await check_read_only_refuses_changes(Walk.of(opener.open(spec)))


def test_every_kind_is_covered(sample_sources):
    kinds = {next(k for k, looks_like in DETECTORS.items() if looks_like(str(sample_sources[s.sample])))
             for s in SPECS}
    assert kinds == set(DETECTORS), "a new kind of source: add a sample of it here"


class RefusingOtherBytes(File):
    """A read-only file whose write-only handle refuses any byte (EROFS), saying nothing;
    any other open is refused."""

    def attr(self) -> Attr:
        return Attr(stat.S_IFREG | 0o444, 3)

    def open(self, flags: int):
        if flags & os.O_ACCMODE != os.O_WRONLY:
            raise read_only()

        def refuse(offset, data):
            raise OSError(errno.EROFS, "only its own bytes")
        handle = BufferHandle(b"abc", lambda data: None)
        handle.write = refuse
        return handle


class TakingItsOwnBytesBack(RefusingOtherBytes):
    takes_own_bytes_back = True


@pytest.mark.parametrize("file, passes", [(RefusingOtherBytes, False), (TakingItsOwnBytesBack, True)])
def test_only_a_file_that_says_it_takes_its_own_bytes_back_may_give_a_writer_without_write_bits(file, passes):
    """The write-bits check lets a file without them give a write-only handle that refuses
    a byte past its end only if the file says so (`File.takes_own_bytes_back`: copick's
    views); before, any backend's file passed."""
    tree = Tree()
    tree.writable = True
    tree.add(StaticDirectory()).add("view", tree.add(file()))
    walk = Walk.of(tree)
    if passes:
        check_made_up_files_without_write_bits_refuse_writers(walk)
    else:
        with pytest.raises(AssertionError, match="view: open"):
            check_made_up_files_without_write_bits_refuse_writers(walk)
