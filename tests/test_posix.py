"""The merged copick view against a plain directory: every scenario of posix_scenarios runs
in both, as root and as an unprivileged user (through allow_other), with its seed in a new
(overlay-only) directory, in the static root, and in the static root copied up through the
mount first; the traces of syscall outcomes must be the same.

One mount for the module; four runner processes (plain/merged x root/user) run all
scenarios, then one test per (scenario, layer, user) compares the traces. The static root
is hashed before the mount and after the unmount: it is never written.
SCOPEFS_POSIX_UNION=fuse-overlayfs runs the same suite through fuse-overlayfs instead, for
a reference score.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import Mounter
from posix_runner import USER, USER_GID, D, F, P, make_seed
from posix_scenarios import SCENARIOS

RUNNER = Path(__file__).with_name("posix_runner.py")
USERS = {"root": (0, 0), "user": (USER, USER_GID)}
HUNG = [["hung", "no answer within the runner's timeout"]]
CASES = [(name, layer, user) for name, s in SCENARIOS.items() for layer in s.layers for user in USERS]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="makes files of several owners: run as root")


def key(name: str, layer: str, user: str) -> str:
    """A short directory name per case (long names would eat into the PATH_MAX scenario)."""
    return f"{list(SCENARIOS).index(name):02d}{layer[0]}{user[0]}"


def _walk_noatime(folder: str):
    """(folder, names) of a tree, listed through O_NOATIME descriptors: reading the seed
    must not move the directory atimes the scenarios compare."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOATIME)
    try:
        names = os.listdir(fd)
    finally:
        os.close(fd)
    yield folder, names
    for name in names:
        path = os.path.join(folder, name)
        if stat.S_ISDIR(os.lstat(path).st_mode):        # (following a symlink moves its atime)
            yield from _walk_noatime(path)


def root_digest(root: Path) -> dict[str, tuple]:
    """Everything about a tree that a write could change: content, type, mode, owner, mtime."""
    out = {}
    for folder, names in _walk_noatime(str(root)):
        for name in names + ["."]:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            content = None
            if os.path.islink(path):
                content = os.readlink(path)
                # (readlink moved its atime, which scenarios compare: put back)
                os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
            elif os.path.isfile(path):
                # O_NOATIME: reading the seed must not move the atimes the scenarios compare
                with open(os.open(path, os.O_RDONLY | os.O_NOATIME), "rb") as fh:
                    content = hashlib.sha256(fh.read()).hexdigest()
            out[os.path.relpath(path, root)] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, content)
    return out


def run_all(root: Path, user: str, keys: dict[str, str], timeout: float = 120) -> dict[str, list]:
    """The traces of the scenarios keys names, run in root as user. A runner that hangs
    is killed: the scenario it was in is marked hung and the others run again (after a
    second hang, all that are left are marked hung: the mount no longer answers)."""
    uid, gid = USERS[user]
    results, pending, hangs = {}, dict(keys), 0
    while pending and hangs < 2:
        try:
            done = subprocess.run([sys.executable, str(RUNNER), str(root), str(uid), str(gid),
                                   *(f"{k}={name}" for k, name in pending.items())],
                                  capture_output=True, text=True, timeout=timeout)
            assert done.returncode == 0, done.stderr[-3000:]
            out = done.stdout
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        for line in out.splitlines():
            k, trace = json.loads(line)
            results[k] = trace
            pending.pop(k)
        if pending:
            hangs += 1
            results[next(iter(pending))] = HUNG
            pending.pop(next(iter(pending)))
    return results | {k: HUNG for k in pending}


@pytest.fixture(scope="module")
def traces():
    base = Path(tempfile.mkdtemp(prefix="scopefs-posix-"))
    base.chmod(0o755)                                   # the unprivileged runner walks in
    static, overlay, plain = base / "static", base / "overlay", base / "plain"
    for folder in (static, overlay, plain):
        folder.mkdir(mode=0o755)
    for name, layer, user in CASES:
        seed, k = SCENARIOS[name].seed, key(name, layer, user)
        make_seed(str(plain / k), seed, USERS[user])
        make_seed(str((overlay if layer == "new" else static) / k), seed, USERS[user])
    before = root_digest(static)
    mounter = Mounter(base)
    reference = base / "reference"
    try:
        if os.environ.get("SCOPEFS_POSIX_UNION") == "fuse-overlayfs":     # the suite's score of the C peer
            mnt = reference
            for folder in (mnt, base / "work"):
                folder.mkdir()
            subprocess.run(["fuse-overlayfs", "-o", f"lowerdir={static},upperdir={overlay},workdir={base / 'work'},"
                            "allow_other", str(mnt)], check=True)
        else:
            mnt = mounter(static, "-t", "copick", "-o", f"overlay={overlay}", "-o", "allow_other")
        failed_copy_ups = {}                            # a case whose copy-up failed fails, not the module
        stalled = None                                  # after a timeout the mount is not asked again
        for name, layer, user in CASES:
            if layer == "copied":                       # every seeded file and folder copied up
                k = key(name, layer, user)
                for rel, mode in [(rel, e.mode) for rel, e in SCENARIOS[name].seed.items()
                                  if isinstance(e, (F, D, P))] + [("", 0o755)]:
                    started = time.monotonic()
                    try:
                        if stalled:
                            raise OSError(errno.EIO, f"not tried: {stalled}")
                        os.chmod(mnt / k / rel, mode)
                    except OSError as exc:
                        failed_copy_ups.setdefault(k, []).append(f"chmod {rel or '.'}: {exc.strerror}")
                        if time.monotonic() - started > 10 and not stalled:
                            stalled = f"the mount stopped answering at {k}/{rel}"
        results = {}
        for user in USERS:
            keys = {key(n, layer, u): n for n, layer, u in CASES if u == user}
            results.update({("plain", k): v for k, v in run_all(plain, user, keys).items()})
            results.update({("merged", k): v for k, v in run_all(mnt, user, keys).items()})
        yield results, failed_copy_ups
    finally:
        mounter.cleanup()
        if os.path.ismount(reference):
            subprocess.run(["fusermount3", "-u", str(reference)], check=True)
        written = root_digest(static) != before
        shutil.rmtree(base, ignore_errors=True)
    assert not written, "the static root was written"


@pytest.mark.parametrize("name,layer,user", CASES, ids=["-".join(c) for c in CASES])
def test_merged_view_behaves_like_a_plain_directory(traces, name, layer, user):
    results, failed_copy_ups = traces
    scenario, k = SCENARIOS[name], key(name, layer, user)
    if k in failed_copy_ups:
        pytest.fail(f"issue 12 item {scenario.item}, in {k}: copying the seed up through the mount failed: "
                    + "; ".join(failed_copy_ups[k]), pytrace=False)
    plain, merged = results[("plain", k)], results[("merged", k)]
    assert plain != HUNG, "hung in a plain directory: a broken scenario"
    if merged == HUNG:
        pytest.fail(f"issue 12 item {scenario.item}, in {k}: hung on the merged view", pytrace=False)
    if len(merged) != len(plain):
        pytest.fail(f"issue 12 item {scenario.item}, in {k}: stopped at {merged[-1]}", pytrace=False)
    assert len(plain) == len(scenario.steps)
    differences = [f"step {i} {scenario.steps[i][:1] + tuple(str(a)[:40] for a in scenario.steps[i][1:])}: "
                   f"plain {want[1]!r}, merged {got[1]!r}"
                   for i, (want, got) in enumerate(zip(plain, merged))
                   if want != got and got[1] not in scenario.allow.get(i, [])]
    if differences:
        pytest.fail(f"issue 12 item {scenario.item}, in {k}:\n" + "\n".join(differences), pytrace=False)
