"""What a cold walk of names costs an FSDB mount per folder, counted (the FSDB backend's
`listings`: each a pass over a folder's entries), at two sizes: every folder is listed
once for the kernel; a fileset too big for a prepared reply is not listed to find that
out, nor listed again to note its subfolders after its reply. Only scans may be listed
more (small: their prepared replies, tried twice while the learner has not stat'ed
their filesets yet, and the listing a worker makes then), and the root once more."""
from __future__ import annotations

import subprocess

import pytest
import walk_samples
from conftest import daemon_status

SCANS, FILES = 2, 13                # a fileset lists 26 entries: more than a prepared reply takes


@pytest.mark.parametrize("filesets", [3, 6])
def test_a_cold_find_lists_each_fsdb_fileset_once(tmp_path, mount, filesets):
    source = walk_samples.fsdb(tmp_path / "fsdb", SCANS, filesets, FILES)
    mnt = mount(source.path, *source.options)
    before = daemon_status(mnt)["work"].get("listings", 0)
    subprocess.run(["find", "."], cwd=mnt, check=True, capture_output=True)
    listings = daemon_status(mnt)["work"]["listings"] - before
    folders = 1 + SCANS + SCANS * filesets
    assert folders <= listings <= folders + 1 + 3 * SCANS, (listings, folders)
