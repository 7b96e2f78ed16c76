"""Kinds other than copick mounted straight from S3 (SeaweedFS on loopback): the same
tree as the local mount, read-only with a notice, no credential anywhere a user or
another user may look, and a server that goes away costs reads their EIO only."""
from __future__ import annotations

import errno
import os
import subprocess
import time
from pathlib import Path

import pytest

from iid_samples import ODD_ADDRESSES, masks_for
from s3server import KEY, SECRET, s3  # noqa: F401 (a fixture)
from scopefs.formats.iid import IIDFile


def s3_options(server) -> list[str]:
    return ["-o", f"endpoint_url={server.endpoint},key={KEY},secret={SECRET}"]


def tree_of(root: Path) -> dict[str, bytes | str]:
    """Every name under root: a file's bytes, a link's target, a folder's marker."""
    out: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = "-> " + os.readlink(path)
            elif path.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = path.read_bytes()
                assert len(out[rel]) == path.stat().st_size, rel
    return out


@pytest.fixture(scope="module")
def iid_object(s3, tmp_path_factory):
    """A local .iid with odd addresses and groups, and the same file in a bucket."""
    path = tmp_path_factory.mktemp("iid") / "sample.iid"
    f = IIDFile()
    for i, (address, mask) in enumerate(zip(ODD_ADDRESSES, masks_for(len(ODD_ADDRESSES)))):
        f.add(mask, (3 * i, 2 * i, 3 * i + mask.shape[0], 2 * i + mask.shape[1]), address=address,
              domain=f"dom{i % 3}".encode(), groups=("plain",) if i % 2 else ("odd/group name",))
    f.meta = {"image": "leaf.png"}
    f.save(str(path))
    fs = s3.filesystem()
    fs.mkdir("iids")
    fs.put_file(str(path), "iids/sample.iid")
    return path, "s3://iids/sample.iid"


def test_iid_from_s3_is_the_local_tree(s3, iid_object, mount):
    local, url = iid_object
    remote = mount(url, *s3_options(s3))
    assert mount.stderr == "scopefs: mounted read-only: an .iid in object storage cannot be rewritten in place\n"
    expected = tree_of(mount(local, "-o", "ro"))
    got = tree_of(remote)
    assert sorted(got) == sorted(expected)
    differing = [name for name in expected if got[name] != expected[name] and name != "README.txt"]
    assert differing == []
    with pytest.raises(OSError) as err:
        (remote / "meta.json").write_text("{}")
    assert err.value.errno == errno.EROFS
