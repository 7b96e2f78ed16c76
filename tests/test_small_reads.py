"""Warm reads of many small files, one after another, as a Python loop of
`open(path, 'rb').read()` does them: each open costs the daemon one request or more
(Python's open calls isatty, a FUSE_IOCTL on every mount; writable mounts add OPEN and
RELEASE), and the reader waits for each answer. Told to poll (`SCOPEFS_IDLE_POLL_US`,
daemon/pyfuse3-patches/session-poll-before-wait.patch), the daemon must not go to sleep
between two such requests: a sleeping daemon is woken for each one, which is what such
a loop spends most of its time on when the reader and the daemon run on different CPUs.
Counted as the voluntary context switches of the daemon's session thread (one per
sleep), not in seconds."""
from __future__ import annotations

from pathlib import Path

import pytest

import walk_samples
from conftest import daemon_status
from scopefs.daemon.serve import IDLE_POLL_ENV, IDLE_POLL_S

FILES = 150


def sleeps(pid: int) -> int:
    """How many times the daemon's main thread (trio's, which reads the FUSE fd) slept."""
    status = Path(f"/proc/{pid}/task/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines()
                    if line.startswith("voluntary_ctxt_switches")))


def read_all(paths: list[Path]) -> None:
    for path in paths:
        with open(path, "rb") as fh:
            fh.read()


@pytest.mark.parametrize("options", [(), ("-o", "ro")], ids=["writable", "ro"])
def test_a_python_loop_over_small_files_does_not_wake_the_daemon_per_file(mount, tmp_path, monkeypatch, options):
    # a poll far longer than anyone would set, so that a loaded machine cannot make the
    # reader miss it: what is checked is that the daemon stays awake while requests come
    monkeypatch.setenv(IDLE_POLL_ENV, "100000")
    mnt = mount(walk_samples.iid(tmp_path / "cells.iid", FILES).path, *options)
    paths = sorted(mnt.glob("*/entry.json"))
    assert len(paths) == FILES
    read_all(paths)                                  # warm: names, attributes and pages kept
    status = daemon_status(mnt)
    assert status["idle_poll_us"] == 100000
    before = sleeps(status["pid"])
    read_all(paths)
    slept = sleeps(status["pid"]) - before
    # without the poll: about one sleep per request (FILES on -o ro, 2-3 x FILES writable)
    assert slept < FILES / 10, f"the daemon slept {slept} times for {FILES} files"


def test_the_daemon_polls_only_when_told(mount, tmp_path, monkeypatch):
    source = walk_samples.iid(tmp_path / "cells.iid", 3).path
    assert daemon_status(mount(source))["idle_poll_us"] == IDLE_POLL_S * 1e6 == 0
    monkeypatch.setenv(IDLE_POLL_ENV, "50")
    assert daemon_status(mount(source, "-o", "ro"))["idle_poll_us"] == 50
