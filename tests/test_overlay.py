"""Static + overlay roots merged by the copick backend: one test per rule (local roots),
the static root unchanged by all of them, and a randomized check against a plain directory."""
from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from conftest import Mounter
import json


def tree_digest(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        st_ = path.lstat()
        rel = str(path.relative_to(root))
        out[rel] = (hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() and not path.is_symlink()
                    else f"dir {stat.S_IMODE(st_.st_mode):o}" if path.is_dir() else "link")
        out[rel] += f" {stat.S_IMODE(st_.st_mode):o} {st_.st_mtime_ns}"
    return out


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("overlay")
    static = base / "static"
    (static / "run1" / "Picks").mkdir(parents=True)
    (static / "run1" / "Picks" / "a_1_ribosome.json").write_text('{"static": 1}')
    (static / "run1" / "Picks" / "both.json").write_text('{"static": 2}')
    (static / "run1" / "tomo").mkdir()
    (static / "run1" / "tomo" / "chunk").write_bytes(os.urandom(5000))
    (static / "only_static.txt").write_text("static text\n")
    (static / "only_static.txt").chmod(0o640)
    (static / "empty_static_dir").mkdir()
    os.symlink("only_static.txt", static / "link")
    before = tree_digest(static)
    yield base, static
    # the static root is never written, whatever the tests did
    assert tree_digest(static) == before


class MountPath(type(Path())):
    """A mount point that knows whether its static root is on S3."""
    s3 = False


@pytest.fixture(scope="module")
def s3_static(roots, tmp_path_factory):
    """The same static tree in a bucket of a real S3 server (SeaweedFS on loopback); S3
    has no links, modes or empty folders (a hidden marker keeps that one)."""
    from s3server import SeaweedS3
    _, static = roots
    server = SeaweedS3(tmp_path_factory.mktemp("weed"))
    try:
        fs = server.filesystem()
        fs.mkdir("ovstatic")
        for path in static.rglob("*"):
            if path.is_file() and not path.is_symlink():
                fs.pipe(f"ovstatic/{path.relative_to(static)}", path.read_bytes())
        fs.pipe("ovstatic/empty_static_dir/.wh.scopefs-dir", b"")
        before = {p: fs.cat(p) for p in sorted(fs.find("ovstatic"))}
        yield server
        assert {p: server.filesystem().cat(p) for p in sorted(fs.find("ovstatic"))} == before
    finally:
        server.stop()


@pytest.fixture(params=["local", "s3"])
def merged(request, roots, tmp_path):
    base, static = roots
    overlay = tmp_path / "overlay"
    (overlay / "run1" / "Picks").mkdir(parents=True)
    (overlay / "run1" / "Picks" / "both.json").write_text('{"overlay": 2}')
    (overlay / "only_overlay.txt").write_text("overlay text\n")
    mounter = Mounter(tmp_path)
    try:
        if request.param == "local":
            mnt = mounter(static, "-t", "copick", "-o", f"overlay={overlay}")
        else:
            server = request.getfixturevalue("s3_static")
            config = tmp_path / "project.json"
            config.write_text(json.dumps({"config_type": "filesystem", "pickable_objects": [],
                                          "static_root": "s3://ovstatic", "static_fs_args": server.fs_args,
                                          "overlay_root": f"local://{overlay}"}))
            mnt = mounter(config)
        mnt = MountPath(mnt)
        mnt.s3 = request.param == "s3"
        yield mnt, static, overlay
    finally:
        mounter.cleanup()


def test_directories_merge_and_the_overlay_wins(merged):
    mnt, static, overlay = merged
    assert sorted(os.listdir(mnt)) == sorted(["copick_config.json", "empty_static_dir", "only_overlay.txt",
                                              "only_static.txt", "run1"] + ([] if mnt.s3 else ["link"]))
    assert sorted(os.listdir(mnt / "run1" / "Picks")) == ["a_1_ribosome.csv", "a_1_ribosome.json",
                                                          "both.csv", "both.json"]       # + derived CSVs
    assert (mnt / "run1" / "Picks" / "both.json").read_text() == '{"overlay": 2}'
    assert (mnt / "only_static.txt").read_text() == "static text\n"
    if not mnt.s3:
        assert os.readlink(mnt / "link") == "only_static.txt"
        assert stat.S_IMODE(os.stat(mnt / "only_static.txt").st_mode) == 0o640


def test_writes_go_to_the_overlay_with_atomic_copy_up(merged):
    mnt, static, overlay = merged
    with open(mnt / "only_static.txt", "a") as fh:
        fh.write("appended\n")
    assert (overlay / "only_static.txt").read_text() == "static text\nappended\n"
    assert stat.S_IMODE((overlay / "only_static.txt").stat().st_mode) == (0o644 if mnt.s3 else 0o640)  # kept
    (mnt / "run1" / "Picks" / "new_1_x.json").write_text("{}")
    assert (overlay / "run1" / "Picks" / "new_1_x.json").exists()
    (mnt / "run1" / "tomo" / "new").write_text("n")                # parents made in the overlay
    assert (overlay / "run1" / "tomo" / "new").read_text() == "n"
    assert not [n for n in os.listdir(overlay) if "copyup" in n]


@pytest.mark.parametrize("op", ["truncate", "chmod", "utime"])
def test_truncate_chmod_utimens_copy_up(merged, op):
    mnt, static, overlay = merged
    target = mnt / "run1" / "tomo" / "chunk"
    if op == "truncate":
        os.truncate(target, 10)
        assert (overlay / "run1" / "tomo" / "chunk").stat().st_size == 10
    elif op == "chmod":
        os.chmod(target, 0o600)
        assert stat.S_IMODE((overlay / "run1" / "tomo" / "chunk").stat().st_mode) == 0o600
    else:
        os.utime(target, ns=(1_000_000_000, 2_000_000_000))
        assert (overlay / "run1" / "tomo" / "chunk").stat().st_mtime_ns == 2_000_000_000
    assert os.stat(target).st_size == (10 if op == "truncate" else 5000)


def test_deleting_static_entries_leaves_whiteouts(merged):
    mnt, static, overlay = merged
    os.unlink(mnt / "run1" / "Picks" / "a_1_ribosome.json")
    assert "a_1_ribosome.json" not in os.listdir(mnt / "run1" / "Picks")
    assert (overlay / "run1" / "Picks" / ".wh.a_1_ribosome.json").exists()
    os.unlink(mnt / "run1" / "Picks" / "both.json")                # overlay copy and static copy both go
    assert not os.path.exists(mnt / "run1" / "Picks" / "both.json")
    os.rmdir(mnt / "empty_static_dir")
    assert (overlay / ".wh.empty_static_dir").exists()
    os.mkdir(mnt / "empty_static_dir")                              # made again: opaque
    assert (overlay / "empty_static_dir" / ".wh..wh..opq").exists()
    assert os.listdir(mnt / "empty_static_dir") == []
    with pytest.raises(OSError) as err:
        os.rmdir(mnt / "run1")
    assert err.value.errno == errno.ENOTEMPTY
    subprocess.run(["rm", "-r", str(mnt / "run1")], check=True)     # a static tree removed
    assert "run1" not in os.listdir(mnt) and (overlay / ".wh.run1").exists()


def test_renames(merged, tmp_path):
    mnt, static, overlay = merged
    with pytest.raises(OSError) as err:
        os.rename(mnt / "run1", mnt / "run2")
    assert err.value.errno == errno.EXDEV
    subprocess.run(["mv", str(mnt / "run1"), str(mnt / "run2")], check=True)     # mv falls back to copying
    assert (mnt / "run2" / "Picks" / "both.json").read_text() == '{"overlay": 2}'
    assert "run1" not in os.listdir(mnt)
    os.rename(mnt / "only_static.txt", mnt / "moved.txt")
    assert (mnt / "moved.txt").read_text() == "static text\n" and not os.path.exists(mnt / "only_static.txt")
    assert (overlay / ".wh.only_static.txt").exists()
    os.mkdir(mnt / "fresh")
    os.rename(mnt / "fresh", mnt / "fresh2")                        # overlay-only dirs rename
    assert (overlay / "fresh2").is_dir()


def test_hard_links_share_one_inode_and_a_static_file_is_linked_by_its_copy_up(merged):
    mnt, static, overlay = merged
    os.link(mnt / "only_overlay.txt", mnt / "hard.txt")
    assert os.stat(mnt / "hard.txt").st_nlink == 2
    assert os.stat(mnt / "hard.txt").st_ino == os.stat(mnt / "only_overlay.txt").st_ino
    if mnt.s3:
        return
    os.link(mnt / "only_static.txt", mnt / "linked.txt")
    assert (mnt / "linked.txt").read_text() == "static text\n"
    assert os.stat(mnt / "linked.txt").st_ino == os.stat(mnt / "only_static.txt").st_ino
    assert os.stat(mnt / "only_static.txt").st_nlink == 2
    os.chmod(mnt / "linked.txt", 0o600)                            # seen through the other name
    assert stat.S_IMODE(os.stat(mnt / "only_static.txt").st_mode) == 0o600
    os.symlink("only_static.txt", mnt / "sym")
    os.link(mnt / "sym", mnt / "sym2", follow_symlinks=False)      # links of symlinks
    assert os.readlink(mnt / "sym2") == "only_static.txt"


def test_copick_config_points_at_the_mount(merged):
    import json
    mnt, _, _ = merged
    config = json.loads((mnt / "copick_config.json").read_text())
    assert config["overlay_root"] == f"local://{mnt}" and "static_root" not in config
    assert config["overlay_fs_args"] == {"auto_mkdir": True}


LISTER = """
import os, sys, threading, time
path, prefix, count, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
bad, end = [], time.monotonic() + seconds

def lister():
    while time.monotonic() < end:
        try:
            seen = [n for n in os.listdir(path) if n.startswith(prefix)]
        except OSError as exc:
            bad.append(repr(exc))
            continue
        if len(seen) != count or len(set(seen)) != count:
            bad.append(f"{len(seen)} names, {len(set(seen))} different")
threads = [threading.Thread(target=lister) for _ in range(2)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(len(bad), bad[:3])
"""
STABLE = 1000           # names in static big/ that every listing must show once


class MountVsPlainDirectory(RuleBasedStateMachine):
    """The same operations on the merged mount and on a plain directory holding what the
    merge should show: contents, listings and stat fields (type and mode, owner, nlink,
    size, which names share an inode) identical after every step."""

    names = st.sampled_from(["a", "b", "c", "d/x", "d/y", "e"])
    owners = st.sampled_from([0, 12346])

    @initialize()
    def start(self):
        base = Path(self._base)
        for d in ("static", "overlay", "plain", "mnt"):
            shutil.rmtree(base / d, ignore_errors=True)
        (base / "static" / "d").mkdir(parents=True)
        (base / "static" / "a").write_bytes(b"static a")
        (base / "static" / "d" / "x").write_bytes(b"static x")
        (base / "static" / "big").mkdir()
        for i in range(STABLE):
            (base / "static" / "big" / f"s{i:03d}").write_bytes(b"")
        (base / "overlay").mkdir()
        shutil.copytree(base / "static", base / "plain", symlinks=True)
        self.plain = base / "plain"
        self.mounter = Mounter(base)
        self.mnt = self.mounter(base / "static", "-t", "copick", "-o", f"overlay={base / 'overlay'}",
                                mountpoint=base / "mnt")

    def _both(self, fn):
        """fn on each side; the same outcome (value or errno) on both."""
        results = []
        for root in (self.mnt, self.plain):
            try:
                results.append(fn(root))
            except OSError as exc:
                results.append(exc.errno)
        assert results[0] == results[1], results
        return results[1]

    @rule(name=names, offset=st.integers(0, 40), data=st.binary(min_size=1, max_size=30))
    def write_at(self, name, offset, data):
        def op(root):
            fd = os.open(root / name, os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK, 0o644)   # (a FIFO: ENXIO)
            try:
                os.pwrite(fd, data, offset)
            finally:
                os.close(fd)
        self._both(op)

    @rule(name=names, size=st.integers(0, 50))
    def truncate(self, name, size):
        self._both(lambda root: os.truncate(root / name, size))

    @rule(src=names, dst=names)
    def rename(self, src, dst):
        if src != dst:
            self._both(lambda root: os.rename(root / src, root / dst))

    @rule(src=names, dst=names, flags=st.sampled_from([1, 2]))      # RENAME_NOREPLACE, RENAME_EXCHANGE
    def rename_with_flags(self, src, dst, flags):
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)

        def op(root):
            if libc.renameat2(-100, os.fsencode(root / src), -100, os.fsencode(root / dst), flags):
                raise OSError(ctypes.get_errno(), "renameat2")
        self._both(op)

    @rule(name=names)
    def unlink(self, name):
        self._both(lambda root: os.unlink(root / name))

    @rule(name=st.sampled_from(["d", "f", "f/g"]))
    def mkdir(self, name):
        self._both(lambda root: os.mkdir(root / name))

    @rule(name=st.sampled_from(["d", "f", "f/g"]))
    def rmdir(self, name):
        self._both(lambda root: os.rmdir(root / name))

    @rule(src=names, dst=names)
    def link(self, src, dst):
        self._both(lambda root: os.link(root / src, root / dst))

    @rule(name=names)
    def mkfifo(self, name):
        self._both(lambda root: os.mkfifo(root / name, 0o640))

    @rule(name=names, mode=st.sampled_from([0o600, 0o644, 0o755, 0o4750, 0o1777]))
    def chmod(self, name, mode):
        self._both(lambda root: os.chmod(root / name, mode))

    @rule(name=names, uid=owners, gid=owners)
    def chown(self, name, uid, gid):
        self._both(lambda root: os.chown(root / name, uid, gid))

    @rule(name=names, atime=st.integers(0, 2 ** 33), mtime=st.integers(0, 2 ** 33))
    def utimens(self, name, atime, mtime):
        def op(root):
            os.utime(root / name, ns=(atime * 10 ** 9 + 7, mtime * 10 ** 9 + 9))
            st_ = os.stat(root / name)
            return st_.st_atime_ns, st_.st_mtime_ns
        self._both(op)

    @rule(name=names, data=st.binary(min_size=1, max_size=30), size=st.integers(0, 20))
    def open_unlink_use(self, name, data, size):
        """A file stays usable through its descriptor once its name is gone."""
        def op(root):
            fd = os.open(root / name, os.O_RDWR | os.O_NONBLOCK)
            try:
                os.unlink(root / name)
                os.pwrite(fd, data, 0)
                os.ftruncate(fd, size)
                os.fchmod(fd, 0o600)
                st_ = os.fstat(fd)
                return os.pread(fd, 100, 0), st_.st_size, st_.st_nlink, stat.S_IMODE(st_.st_mode)
            finally:
                os.close(fd)
        self._both(op)

    @rule()
    def list_while_changing(self):
        """A second process lists big/ (two threads) while this one adds and removes
        other names in it: every listing shows each name that stayed there exactly once."""
        import sys
        big = self.mnt / "big"
        lister = subprocess.Popen([sys.executable, "-c", LISTER, str(big), "s", str(STABLE), "0.3"],
                                  stdout=subprocess.PIPE, text=True)
        i = 0
        while lister.poll() is None:        # c.. sorts before s..: a listing resumed at a stale position shows it
            (big / f"c{i % 50:02d}").write_bytes(b"")
            if i >= 25:
                os.unlink(big / f"c{(i - 25) % 50:02d}")
            i += 1
        for j in range(max(0, i - 25), i):
            os.unlink(big / f"c{j % 50:02d}")
        report = lister.communicate()[0].strip()
        assert report.startswith("0 "), f"listings that skipped or repeated names: {report}"

    @invariant()
    def same(self):
        if not hasattr(self, "mnt"):
            return
        inodes = ({}, {})
        for rel in ("", "d", "f", "f/g"):
            a, b = self.mnt / rel, self.plain / rel
            assert a.is_dir() == b.is_dir(), rel
            if b.is_dir():
                assert sorted(os.listdir(a)) == sorted(os.listdir(b)) or \
                    (rel == "" and sorted(set(os.listdir(a)) - {"copick_config.json"}) == sorted(os.listdir(b))), rel
                for name in os.listdir(b):
                    sa, sb = os.lstat(a / name), os.lstat(b / name)
                    fields = [(s.st_mode, s.st_uid, s.st_gid) + (() if stat.S_ISDIR(s.st_mode) else
                                                                 (s.st_nlink, s.st_size)) for s in (sa, sb)]
                    assert fields[0] == fields[1], (rel, name, fields)
                    if stat.S_ISREG(sb.st_mode):
                        assert (a / name).read_bytes() == (b / name).read_bytes(), rel + "/" + name
                        for table, s in zip(inodes, (sa, sb)):
                            table.setdefault(s.st_ino, set()).add(f"{rel}/{name}")
        groups = [sorted(sorted(names) for names in table.values()) for table in inodes]
        assert groups[0] == groups[1], groups           # the same names share an inode

    def teardown(self):
        if hasattr(self, "mounter"):
            self.mounter.cleanup()


def test_randomized_operations_match_a_plain_directory(tmp_path):
    MountVsPlainDirectory._base = str(tmp_path)
    run = MountVsPlainDirectory.TestCase
    run.settings = settings(max_examples=8, stateful_step_count=25, deadline=None)
    run().runTest()


WRITER = """
import os, sys
mnt, who = sys.argv[1], sys.argv[2]
os.makedirs(f"{mnt}/run1/Picks", exist_ok=True)
for i in range(60):
    data = (f"{who}-{i}-" * 50).encode()
    with open(f"{mnt}/run1/Picks/{who}_{i}_x.json", "wb") as fh:
        fh.write(data)
print("ok")
"""

READER = """
import os, sys, time
mnt, expected = sys.argv[1], open(sys.argv[2], "rb").read()
end = time.monotonic() + float(sys.argv[3])
n = 0
while time.monotonic() < end:
    assert open(f"{mnt}/run1/tomo/chunk", "rb").read() == expected
    os.listdir(f"{mnt}/run1/Picks")
    n += 1
print("ok", n)
"""


def test_parallel_writers_and_readers_lose_nothing(merged):
    import sys
    mnt, static, overlay = merged
    readers = [subprocess.Popen([sys.executable, "-c", READER, str(mnt), str(static / "run1" / "tomo" / "chunk"),
                                 "4"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(mnt), f"w{k}"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for k in range(4)]
    for proc in writers + readers:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and out.startswith("ok"), err
    for k in range(4):
        for i in range(60):
            name = f"w{k}_{i}_x.json"
            expected = (f"w{k}-{i}-" * 50).encode()
            assert (overlay / "run1" / "Picks" / name).read_bytes() == expected
            assert (mnt / "run1" / "Picks" / name).read_bytes() == expected
