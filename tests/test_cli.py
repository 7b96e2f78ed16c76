"""The mount life cycle: daemonising, umount, signals, stale mounts."""
from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SCOPEFS, MountFailed, cleanup_mount, stop_foreground, wait_mounted, alive, daemon_pid, daemon_status, is_stale, run_scopefs, wait_gone
from iid_samples import wide_plane
from stores import make_store

from scopefs.backends import kernel


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("cli") / "store", "npy", shape=(48, 64)).path


def test_mount_returns_once_live_and_umount_waits_for_the_daemon(store, mount):
    mnt = mount(store)
    # no waiting: the mount is usable the moment the command returned
    assert sorted(os.listdir(mnt))[:3] == ["at-time", "by-number", "frames"]
    pid = daemon_pid(mnt)
    assert alive(pid)
    status = daemon_status(mnt)
    assert status["source"] == str(store) and status["type"] == "imgstore" and status["frames"] == 12
    assert ".scopefs" not in os.listdir(mnt)
    result = run_scopefs("umount", str(mnt))
    assert result.returncode == 0, result.stderr
    assert not os.path.ismount(mnt)
    assert not alive(pid)


def test_detects_metadata_yaml_path_and_forced_type(store, mount):
    assert os.listdir(mount(store / "metadata.yaml") / "frames")
    assert os.listdir(mount(store, "-t", "imgstore") / "frames")


def test_mount_point_problems_are_one_line_errors(store, mount, tmp_path):
    mounted = mount(store)
    with pytest.raises(MountFailed) as err:
        mount(store, mountpoint=mounted)
    assert "already a mount point" in err.value.stderr
    result = run_scopefs("mount", str(store), str(tmp_path / "missing" / "dir"))
    assert result.returncode != 0 and "does not exist" in result.stderr
    (tmp_path / "plainfile").write_text("x")
    result = run_scopefs("mount", str(store), str(tmp_path / "plainfile"))
    assert result.returncode != 0 and "not a directory" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_unmounts_cleanly(store, mount, sig):
    mnt = mount(store)
    pid = daemon_pid(mnt)
    held_open = open(mnt / "frames" / "000001.png", "rb")
    held_open.read(100)
    os.kill(pid, sig)
    assert wait_gone(pid, 20)
    assert not os.path.ismount(mnt) and not is_stale(mnt)
    try:
        held_open.close()         # its connection is gone with the mount
    except OSError as exc:
        assert exc.errno == errno.ENOTCONN
    assert "unmounted" in mount.log()


def test_killed_daemon_leaves_stale_mount_that_next_mount_recovers(store, mount):
    mnt = mount(store)
    pid = daemon_pid(mnt)
    os.kill(pid, signal.SIGKILL)
    assert wait_gone(pid, 10)
    with pytest.raises(OSError) as err:
        os.listdir(mnt)
    assert err.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    assert is_stale(mnt)
    again = mount(store, mountpoint=mnt)
    assert os.listdir(again / "frames")


def test_foreground_mode_serves_until_interrupted(store, tmp_path):
    mnt = tmp_path / "fg"
    mnt.mkdir()
    proc = subprocess.Popen([*SCOPEFS, "mount", "-f", str(store), str(mnt)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_mounted(proc, mnt)
        assert len(os.listdir(mnt / "frames")) == 12
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
        assert "mounted" in proc.stderr.read()
        assert not os.path.ismount(mnt)
    finally:
        stop_foreground(proc, mnt)


def test_daemon_stopped_at_once_exits_cleanly(tmp_path):
    """Unmounted, or stopped as systemd does (SIGTERM), as soon as it is ready, while the
    thread that learns overview.png's size encodes a blank 2048² plane in OpenCV: the
    daemon exits with status 0. It aborted ("terminate called without an active
    exception", 134) when that encoding ended as the interpreter was exiting: a third
    of the time, hence 6 stops."""
    source, mnt = wide_plane(tmp_path / "wide.iid"), tmp_path / "mnt"
    mnt.mkdir()
    exits = []
    for stop in ["fusermount3 -u", "SIGTERM"] * 3:
        ready, ready_w = os.pipe()
        proc = subprocess.Popen([*SCOPEFS, "mount", "-f", "--ready-fd", str(ready_w), str(source), str(mnt)],
                                stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, pass_fds=(ready_w,))
        os.close(ready_w)
        try:
            with os.fdopen(ready) as pipe:
                assert pipe.readline().strip() == "READY"
            if stop == "SIGTERM":
                proc.send_signal(signal.SIGTERM)
            else:
                subprocess.run(["fusermount3", "-u", str(mnt)], check=True)
            code, stderr = proc.wait(timeout=30), proc.stderr.read()
            exits.append((stop, code, "terminate called" in stderr or "Traceback" in stderr))
            assert not os.path.ismount(mnt)
        finally:
            stop_foreground(proc, mnt)
    assert exits == [(stop, 0, False) for stop in ["fusermount3 -u", "SIGTERM"] * 3]


def test_mount_refused_by_the_kernel_exits_cleanly(tmp_path):
    """A mount the kernel refuses (options over a page: a 5,000-character fsname) after the
    tree was opened: the daemon says so and exits 1, its threads stopped first (it aborted
    with 134 about two times in three: see the test above), 4 tries."""
    source, mnt = wide_plane(tmp_path / "wide.iid"), tmp_path / "mnt"
    mnt.mkdir()
    tries = [run_scopefs("mount", "-f", str(source), str(mnt), "-o", "fsname=" + "x" * 5000) for _ in range(4)]
    assert [(r.returncode, "cannot mount on" in r.stderr, "terminate called" in r.stderr) for r in tries] == \
        [(1, True, False)] * 4, tries[-1].stderr
    assert not os.path.ismount(mnt)


def test_umount_of_something_not_mounted(tmp_path):
    result = run_scopefs("umount", str(tmp_path))
    assert result.returncode == 1 and "not mounted" in result.stderr


# -- what a new user meets ------------------------------------------------------------------

def test_help_alone_and_with_help_and_a_version():
    for args in ((), ("--help",), ("-h",)):
        result = run_scopefs(*args)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("usage: scopefs") and "umount" in result.stdout and "examples:" in result.stdout
    mount_help = run_scopefs("mount", "--help").stdout
    assert "passthrough=yes|no" in mount_help and "mask_format" in mount_help and "break_lock" in mount_help
    from importlib.metadata import version
    result = run_scopefs("--version")
    assert result.returncode == 0 and result.stdout == f"scopefs {version('scopefs')}\n"


def test_every_mount_option_is_in_the_help_and_the_manual():
    """Each option the daemon or a backend reads (`options.int("name", ...)` and the like)
    is listed by `scopefs mount --help` and has a row in README.md's table of options."""
    from scopefs.backends.remote import S3_OPTIONS
    from scopefs.daemon.cli import DAEMON_OPTIONS
    root = Path(__file__).resolve().parents[1]
    read = re.compile(r"""\b(?:options|opts)\.(?:str|int|float|flag)\(\s*["'](\w+)["']""")
    names = {name for path in root.glob("backends/**/*.py") for name in read.findall(path.read_text())}
    assert {"passthrough", "register_delay", "mrc_cache_mb", "chunk_cache_dir"} <= names   # the pattern works
    names |= set(DAEMON_OPTIONS) | set(S3_OPTIONS)
    manual = (root / "README.md").read_text()
    table = manual[manual.index("## Mount options"):]
    table = table[:table.index("\n## ")]
    assert sorted(name for name in names if f"`{name}" not in table) == []
    mount_help = run_scopefs("mount", "--help").stdout
    accepted_only = {"rw", "default_permissions", "decoded_cache_mb"}     # change nothing: in the manual only
    assert sorted(name for name in names - accepted_only if not re.search(rf"\b{name}\b", mount_help)) == []


def test_a_missing_source_is_said_to_be_missing(tmp_path):
    (tmp_path / "mnt").mkdir()
    for args in ((), ("-t", "imgstore"), ("-f",)):
        result = run_scopefs("mount", *args, str(tmp_path / "no-such-store"), str(tmp_path / "mnt"))
        assert result.returncode == 1
        assert result.stderr.strip().endswith("no-such-store: it does not exist"), result.stderr
    assert not os.path.ismount(tmp_path / "mnt")


def test_fsdb_type_on_a_file_says_what_an_fsdb_root_is(tmp_path):
    (tmp_path / "mnt").mkdir()
    (tmp_path / "scan.txt").write_text("x")
    result = run_scopefs("mount", "-t", "fsdb", str(tmp_path / "scan.txt"), str(tmp_path / "mnt"))
    assert result.returncode == 1
    assert "not an FSDB root (it is not a directory)" in result.stderr and "'romidb'" in result.stderr
    assert "Errno" not in result.stderr


def test_commands_that_do_not_mount_load_no_fuse_and_no_backend(tmp_path, store):
    """help, version, status, umount and refused mounts answer at once: they import neither
    pyfuse3/trio nor a backend's numpy, OpenCV or zarr (counted in sys.modules, not timed)."""
    (tmp_path / "file").write_text("x")
    commands = [[], ["--help"], ["--version"], ["mount", "--help"], ["status"], ["status", "--json"],
                ["umount", str(tmp_path)], ["mount", str(tmp_path / "missing"), str(tmp_path)],
                ["mount", str(tmp_path / "file"), str(tmp_path)], ["mount", "-t", "fsdb", str(store), str(tmp_path / "file")]]
    program = f"""
import contextlib, io, json, sys
from scopefs.daemon.cli import main
for argv in {commands!r}:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            main(argv)
        except SystemExit:
            pass
heavy = ("numpy", "cv2", "zarr", "trimesh", "pyfuse3", "trio", "fsspec", "yaml")
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in heavy)))
"""
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_busy_umount_names_the_holders_and_the_lazy_way_out(store, mount):
    mnt = mount(store)
    holder = subprocess.Popen(["sleep", "60"], cwd=mnt / "frames")
    try:
        result = run_scopefs("umount", str(mnt))
        assert result.returncode == 1 and os.path.ismount(mnt)
        assert f"sleep (pid {holder.pid})" in result.stderr, result.stderr
        assert f"scopefs umount -z {mnt}" in result.stderr
    finally:
        holder.kill()
        holder.wait()
    assert run_scopefs("umount", str(mnt)).returncode == 0 and not os.path.ismount(mnt)


def test_mount_points_with_odd_names_are_found(store, mount, tmp_path):
    """mountinfo escapes space, tab, newline and backslash; every reader unescapes all four."""
    mnt = mount(store, mountpoint=tmp_path / "odd \\ name\tand\nlines")
    assert kernel.filesystem_type(str(mnt / "frames")) == "fuse.scopefs.imgstore"
    rows = json.loads(run_scopefs("status", "--json").stdout)
    assert [r["frames"] for r in rows if r["mountpoint"] == str(mnt)] == [12]
    table = run_scopefs("status", str(mnt)).stdout
    assert "frames=12" in table and "frames_decoded=0" in table   # the tree's own status, generically


def test_a_relative_log_file_is_the_one_the_daemon_writes(store, tmp_path):
    """--log-file given as a bare name, relative to the caller's directory."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    result = subprocess.run([*SCOPEFS, "mount", str(store), str(mnt), "--log-file", "daemon.log"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    pid = daemon_pid(mnt) if os.path.ismount(mnt) else None
    try:
        assert result.returncode == 0, result.stderr
        assert (tmp_path / "daemon.log").exists()
    finally:
        cleanup_mount(mnt, pid)


def test_status_does_not_wait_for_a_daemon_that_does_not_answer(store, mount):
    """A stopped (or wedged) daemon is shown as silent; the others are listed all the same."""
    answering, stopped = mount(store), mount(store)
    pid = daemon_pid(stopped)
    os.kill(pid, signal.SIGSTOP)
    try:
        result = run_scopefs("status", "--json", timeout=30)
    finally:
        os.kill(pid, signal.SIGCONT)
    rows = {row["mountpoint"]: row for row in json.loads(result.stdout)}
    assert rows[str(stopped)]["state"] == "silent"
    assert rows[str(answering)]["state"] == "live" and rows[str(answering)]["frames"] == 12


def test_the_manual_starts_with_the_demo_and_the_command_ci_runs():
    """README.md's first block: the command that shows the product, then exactly the one
    that .ci/run runs on a fresh clone."""
    root = Path(__file__).resolve().parents[1]
    manual = (root / "README.md").read_text()
    first_block = manual.split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in first_block.splitlines()]
    ci = [line.strip() for line in (root / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith("#") and not line.startswith(("set ", "cd "))]
    assert commands == ["./dev demo", ci[-1]] and ci[-1] == "./dev test"


def test_debug_logs_every_request_and_without_it_none(store, mount):
    """-d logs each request (the daemon asks the log level once, at mount)."""
    quiet, verbose = mount(store), mount(store, "--debug")
    for mnt in (quiet, verbose):
        os.stat(mnt / "frames" / "000003.png")
    lines = mount.log().splitlines()         # (both daemons log into one file)
    assert any(f"[{daemon_pid(verbose)}]" in line and "lookup(" in line and "000003.png" in line for line in lines)
    assert not any(f"[{daemon_pid(quiet)}]" in line and "lookup(" in line for line in lines)


@pytest.mark.parametrize("debug", [False, True])
def test_a_reply_the_kernel_no_longer_waited_for_is_not_an_error(debug):
    """libfuse logs a reply to a request the kernel already ended (a RELEASE cut short by
    the unmount) as an error: the daemon shows it only with -d, as debug; other pyfuse3
    errors stay errors."""
    program = f"""
import logging
from scopefs.daemon.cli import _setup_logging
_setup_logging({debug})
log = logging.getLogger("pyfuse3")
log.error("fuse_release(): fuse_reply_* failed with No such file or directory")
log.error("something else went wrong")
"""
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    lines = result.stderr.splitlines()
    assert [line for line in lines if "something else" in line and " ERROR " in line]
    late = [line for line in lines if "fuse_reply_*" in line]
    assert len(late) == (1 if debug else 0) and all(" DEBUG " in line for line in late)
