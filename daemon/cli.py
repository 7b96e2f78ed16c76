"""The `scopefs` command: mount and umount.

`scopefs mount` returns once the mount is live (exit 0), or prints one error line and
exits non-zero with nothing mounted. Unless `-f` is given, the daemon is a child
process in its own session that reports "ready" or its error through a pipe.
"""
from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import subprocess
import sys
import time

from ..backends import BACKENDS, detect, open_tree
from ..backends.options import MountError, Options, parse_option_string
from .fs import CONTROL_NAME

log = logging.getLogger("scopefs")

#: -o options the daemon itself understands; everything else goes to the backend
FUSE_FLAGS = ("allow_other", "allow_root", "default_permissions")
DAEMON_OPTIONS = ("ro", "rw", "threads", "fsname", "read_ahead_kb") + FUSE_FLAGS


class CliError(Exception):
    pass


#: what a mount point whose daemon died answers (kernels differ)
STALE_ERRNOS = (errno.ENOTCONN, errno.ECONNABORTED)


def default_log_file() -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "scopefs", "scopefs.log")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scopefs", description="Mount scientific imaging data as plain files.")
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("mount", help="mount SOURCE on MOUNTPOINT")
    m.add_argument("source")
    m.add_argument("mountpoint")
    m.add_argument("-t", "--type", choices=BACKENDS, help="kind of source (default: detected)")
    m.add_argument("-o", dest="options", action="append", default=[], metavar="OPT[,OPT...]",
                   help="mount options: ro, allow_other, threads=N, and the backend's own")
    m.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground, log to stderr")
    m.add_argument("-d", "--debug", action="store_true", help="log every request (implies -f unless --log-file)")
    m.add_argument("--log-file", help=f"where the background daemon logs (default {default_log_file()})")
    m.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    u = sub.add_parser("umount", help="unmount MOUNTPOINT and wait for its daemon to finish")
    u.add_argument("mountpoint")
    u.add_argument("-z", "--lazy", action="store_true", help="detach even if busy")
    u.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the daemon to exit")
    return parser


# -- mount point checks -----------------------------------------------------------------

def _fusermount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["fusermount3", *args], capture_output=True, text=True)


def mount_state(path: str) -> str:
    """'live', 'stale' (a FUSE mount whose daemon died) or 'none'.

    `stat` may still answer from the kernel's attribute cache after the daemon died;
    `statvfs` always reaches the daemon, so it is the probe."""
    try:
        if not os.path.ismount(path):
            return "none"
        os.statvfs(path)
        return "live"
    except OSError as exc:
        if exc.errno in STALE_ERRNOS:
            return "stale"
        raise


def prepare_mountpoint(path: str) -> None:
    """Refuse an unusable mount point; recover one left stale by a killed daemon."""
    try:
        state = mount_state(path)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise CliError(f"mount point {path} does not exist") from None
        raise CliError(f"mount point {path}: {exc.strerror}") from None
    if state == "stale":
        log.info("%s: stale mount of a dead daemon, detaching it", path)
        _fusermount("-uz", path)
        if mount_state(path) != "none":
            raise CliError(f"{path}: stale mount could not be cleared (fusermount3 -uz failed)")
    elif state == "live":
        raise CliError(f"{path} is already a mount point (unmount it first)")
    if not os.path.exists(path):
        raise CliError(f"mount point {path} does not exist")
    if not os.path.isdir(path):
        raise CliError(f"mount point {path} is not a directory")


# -- mount ------------------------------------------------------------------------------

def _split_options(raw: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    values: dict[str, str] = {}
    for text in raw:
        values.update(parse_option_string(text))
    daemon = {k: v for k, v in values.items() if k in DAEMON_OPTIONS}
    backend = {k: v for k, v in values.items() if k not in DAEMON_OPTIONS}
    return daemon, backend


def _setup_logging(debug: bool) -> None:
    fmt = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format=fmt, stream=sys.stderr)
    logging.getLogger("pyfuse3").setLevel(logging.DEBUG if debug else logging.WARNING)


def _mount_in_foreground(args) -> int:
    """Open the source, mount it and serve (the daemon itself)."""
    ready_pipe = os.fdopen(args.ready_fd, "w") if args.ready_fd is not None else None

    def report(line: str) -> None:
        """Tell the waiting `scopefs mount` how it went (once)."""
        nonlocal ready_pipe
        if ready_pipe is not None:
            ready_pipe.write(line + "\n")
            ready_pipe.close()
            ready_pipe = None

    try:
        daemon_opts, backend_opts = _split_options(args.options)
        opts = Options(daemon_opts)
        threads = opts.int("threads", 8, 1, 256)
        read_ahead_kib = opts.int("read_ahead_kb", 1024, 0, 65536)
        fsname = opts.str("fsname", args.source)
        extra = {flag for flag in FUSE_FLAGS if opts.flag(flag, False)}
        opts.flag("ro")
        opts.flag("rw")
        prepare_mountpoint(args.mountpoint)
        kind = args.type or detect(args.source)
        tree = open_tree(kind, args.source, Options(backend_opts), read_only="ro" in daemon_opts)
    except (MountError, CliError) as exc:
        log.error("cannot mount %s: %s", args.source, exc)
        if args.ready_fd is None:
            print(f"scopefs: cannot mount {args.source}: {exc}", file=sys.stderr)
        report(f"ERROR {exc}")
        return 1
    except Exception as exc:  # a bug: still one line for the user, the traceback in the log
        log.exception("cannot mount %s", args.source)
        report(f"ERROR {type(exc).__name__}: {exc}")
        return 1

    fuse_options = {f"fsname={fsname}", f"subtype=scopefs.{kind}", "default_permissions", *extra}
    if not tree.writable:
        fuse_options.add("ro")
    from .serve import serve
    os.chdir("/")
    try:
        serve(tree, args.mountpoint, fuse_options, threads=threads, read_ahead_kib=read_ahead_kib,
              info={"source": args.source, "type": kind},
              on_ready=lambda: report("READY"))
    except RuntimeError as exc:       # pyfuse3.init failed: nothing was mounted
        log.error("cannot mount %s: %s", args.mountpoint, exc)
        if args.ready_fd is None:
            print(f"scopefs: cannot mount on {args.mountpoint}: {exc}", file=sys.stderr)
        report(f"ERROR {exc}")
        return 1
    return 0


def _mount_in_background(args, argv: list[str]) -> int:
    log_file = args.log_file or default_log_file()
    os.makedirs(os.path.dirname(log_file), exist_ok=True)
    read_fd, write_fd = os.pipe()
    child_argv = [sys.executable, "-m", "scopefs.daemon", *argv, "--foreground", "--ready-fd", str(write_fd)]
    with open(log_file, "ab") as log_out, open(os.devnull, "rb") as devnull:
        proc = subprocess.Popen(child_argv, stdin=devnull, stdout=log_out, stderr=log_out,
                                pass_fds=(write_fd,), start_new_session=True, close_fds=True)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        line = pipe.readline().strip()
    if line == "READY":
        return 0
    if line.startswith("ERROR "):
        message = line[len("ERROR "):]
    else:
        code = proc.wait()
        message = f"the daemon exited (status {code}) before the mount was ready; see {log_file}"
    print(f"scopefs: cannot mount {args.source}: {message}", file=sys.stderr)
    proc.wait()
    return 1


def _absolute_argv(args) -> list[str]:
    argv = ["mount", os.path.abspath(args.source), os.path.abspath(args.mountpoint)]
    if args.type:
        argv += ["-t", args.type]
    for opt in args.options:
        argv += ["-o", opt]
    if args.debug:
        argv.append("--debug")
    return argv


# -- umount -----------------------------------------------------------------------------

def daemon_status(mountpoint: str) -> dict | None:
    """The status a live scopefs mount shows in its control file, or None."""
    try:
        with open(os.path.join(mountpoint, CONTROL_NAME), "rb") as fh:
            return json.loads(fh.read())
    except (OSError, ValueError):
        return None


def _daemon_pid(mountpoint: str) -> int | None:
    status = daemon_status(mountpoint)
    return status.get("pid") if status else None


def umount(mountpoint: str, lazy: bool = False, timeout: float = 60.0) -> int:
    mountpoint = os.path.abspath(mountpoint)
    try:
        state = mount_state(mountpoint)
    except OSError as exc:
        print(f"scopefs: {mountpoint}: {exc.strerror}", file=sys.stderr)
        return 1
    if state == "stale":
        _fusermount("-uz", mountpoint)
        return 0
    if state == "none":
        print(f"scopefs: {mountpoint} is not mounted", file=sys.stderr)
        return 1
    pid = _daemon_pid(mountpoint)
    result = _fusermount("-uz" if lazy else "-u", mountpoint)
    if result.returncode != 0:
        print(f"scopefs: {result.stderr.strip() or 'fusermount3 failed'}", file=sys.stderr)
        return 1
    # the kernel detaches at once, the daemon finishes its work after: wait for it
    deadline = time.monotonic() + timeout
    while pid is not None and _is_scopefs_process(pid):
        if time.monotonic() > deadline:
            print(f"scopefs: unmounted, but daemon {pid} is still finishing after {timeout:g} s", file=sys.stderr)
            return 1
        time.sleep(0.02)
    return 0


def _is_scopefs_process(pid: int) -> bool:
    """Alive (not a zombie) and still ours, not a reused pid."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            if b"scopefs" not in fh.read():
                return False
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if args.command == "umount":
        return umount(args.mountpoint, args.lazy, args.timeout)
    if args.debug and not args.log_file:
        args.foreground = True
    if args.foreground:
        _setup_logging(args.debug)
        args.source = os.path.abspath(args.source)
        args.mountpoint = os.path.abspath(args.mountpoint)
        return _mount_in_foreground(args)
    return _mount_in_background(args, _absolute_argv(args) + (["--log-file", args.log_file] if args.log_file else []))
