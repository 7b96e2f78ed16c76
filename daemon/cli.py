"""The `scopefs` command: mount, umount, status.

`scopefs mount` returns once the mount is live (exit 0), or prints one error line and
exits non-zero with nothing mounted. Unless `-f` is given, the daemon is a child
process in its own session that reports "ready" or its error through a pipe.

Only what every command needs is imported here: pyfuse3, trio and the backend (with
numpy, OpenCV, zarr...) are loaded when a mount starts, so that help, status, umount
and errors answer at once.
"""
from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import subprocess
import sys
import threading
import time

from ..backends import BACKENDS, is_url, open_tree, source_kind
from ..backends.kernel import mounts, process_alive, processes_using
from ..backends.options import MountError, Options, parse_option_string
from ..backends.remote import SECRET_OPTIONS, redact
from .control import read_status
from .systemd import JournalFormatter, Progress, notify, under_systemd

log = logging.getLogger("scopefs")

#: -o options the daemon itself understands; everything else goes to the backend
FUSE_FLAGS = ("allow_other", "allow_root", "default_permissions")
DAEMON_OPTIONS = ("ro", "rw", "threads", "fsname", "read_ahead_kb", "timeout") + FUSE_FLAGS
#: options that are for mount(8), fstab and systemd, or that every FUSE mount has anyway
MOUNT_ONLY = {"auto", "noauto", "_netdev", "nofail", "user", "users", "nouser", "owner", "group",
              "defaults", "nosuid", "suid", "nodev", "dev", "exec", "noexec", "atime", "noatime",
              "relatime", "norelatime", "strictatime", "nostrictatime", "lazytime", "nolazytime",
              "sync", "async", "dirsync", "silent", "loud"}
COMMANDS = ("mount", "umount", "status")

MOUNT_OPTIONS = """mount options (-o, comma-separated; README.md has the details):
  every source   ro, allow_other, allow_root, threads=N (8), timeout=SECONDS (60),
                 read_ahead_kb=N (1024; needs root), fsname=NAME;
                 mount(8)/fstab/systemd options (noauto, _netdev, nofail, x-*...) are ignored
  imgstore       image_format=png|tiff|npy|bmp|pnm|jpg, jpeg_quality=N (95),
                 png_compression=0..9 (0), cache_mb=N (2*prefetch+16 frames, >= 16),
                 prefetch=N (16 MiB of frames, 8..64), passthrough=yes|no (yes: files
                 already in the served format are served as they are),
                 mjpeg_reader=ffmpeg|opencv, skip_bad_chunks
  iid            mask_format=png|tiff|npy|bmp|pnm, writeback_delay=SECONDS (2)
  fsdb           break_lock (take the database even if another client holds its lock),
                 register_delay=SECONDS (1)
  copick         overlay=DIR (with a static root directory as SOURCE), metadata_ttl=SECONDS (60),
                 mrc_cache_mb=N (512), view_cache_mb=N (128)
  s3:// sources  endpoint_url=URL, region=, profile=, anon, key=, secret=, token= (or the AWS
                 environment and config files); imgstore: chunk_cache_mb=N (1024), chunk_cache_dir=DIR"""


def ignored_option(key: str) -> bool:
    return key in MOUNT_ONLY or key.startswith(("x-", "comment"))


class CliError(Exception):
    pass


#: what a mount point whose daemon died answers (kernels differ)
STALE_ERRNOS = (errno.ENOTCONN, errno.ECONNABORTED)


def default_log_file() -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "scopefs", "scopefs.log")


class _PrintVersion(argparse.Action):
    """--version, looked up only when asked for (the package metadata is slow to load)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        from importlib.metadata import version
        print(f"scopefs {version('scopefs')}")
        parser.exit()


EXAMPLES = """examples:
  scopefs mount /data/fly_2023-11-14 /mnt/fly      an imgstore: frames as PNG files
  scopefs mount -o ro segmentation.iid /mnt/seg    an .iid file: one folder per entry
  scopefs mount /data/plantdb /mnt/db              a ROMI FSDB (a folder with a romidb marker)
  scopefs mount project/copick_config.json /mnt/p  a copick project: static + overlay merged
  scopefs status                                   live mounts and their counters
  scopefs umount /mnt/fly

`scopefs mount --help` lists the mount options; README.md describes each kind of source."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scopefs", description="Mount scientific imaging data as plain files.",
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=_PrintVersion)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{mount,umount,status}")
    m = sub.add_parser("mount", help="mount SOURCE on MOUNTPOINT (the word `mount` may be left out)",
                       description="Mount SOURCE on MOUNTPOINT; returns once the mount answers.",
                       epilog=MOUNT_OPTIONS, formatter_class=argparse.RawDescriptionHelpFormatter)
    m.add_argument("source", help="an imgstore directory or its metadata.yaml, an .iid file, "
                                  "an FSDB root (or any of these as an s3:// URL) or a copick config JSON")
    m.add_argument("mountpoint", help="an existing directory")
    m.add_argument("-t", "--type", choices=BACKENDS, help="kind of source (default: detected)")
    m.add_argument("-o", dest="options", action="append", default=[], metavar="OPT[,OPT...]",
                   help="mount options (below)")
    m.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground, log to stderr")
    m.add_argument("-d", "--debug", action="store_true", help="log every request (implies -f unless --log-file)")
    m.add_argument("--log-file", help=f"where the background daemon logs (default {default_log_file()})")
    m.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    st = sub.add_parser("status", help="list live scopefs mounts with their counters")
    st.add_argument("mountpoint", nargs="?")
    st.add_argument("--json", action="store_true", help="machine-readable output")
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
        os.lstat(path)                     # a dead mount may fail even this (ismount hides it)
        if not os.path.ismount(path):
            return "none"
        os.statvfs(path)
        return "live"
    except OSError as exc:
        if exc.errno in STALE_ERRNOS:
            return "stale"
        if exc.errno == errno.ENOENT:
            return "none"
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

#: where the background daemon finds the credential options (its argv is world-readable)
SECRETS_ENV = "SCOPEFS_SECRET_OPTIONS"


def _split_options(raw: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    values: dict[str, str] = {}
    for text in raw:
        values.update({k: v for k, v in parse_option_string(text).items() if not ignored_option(k)})
    daemon = {k: v for k, v in values.items() if k in DAEMON_OPTIONS}
    backend = {k: v for k, v in values.items() if k not in DAEMON_OPTIONS}
    return daemon, backend


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = ()
        return True


class LateReplyFilter(logging.Filter):
    """libfuse's "fuse_reply_* failed with No such file or directory": the kernel no longer
    waited for that answer (a RELEASE of a file closed just before the unmount, ended by
    it; an interrupted request). Nothing was lost: shown only with -d, as debug."""

    def __init__(self, debug: bool):
        super().__init__()
        self.debug = debug

    def filter(self, record: logging.LogRecord) -> bool:
        if "fuse_reply_* failed with No such file or directory" not in record.getMessage():
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return self.debug


def _setup_logging(debug: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if under_systemd():
        handler.setFormatter(JournalFormatter())    # journald adds time and pid itself
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"))
    handler.addFilter(RedactingFilter())
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, handlers=[handler])
    logging.getLogger("pyfuse3").setLevel(logging.DEBUG if debug else logging.WARNING)
    logging.getLogger("pyfuse3").addFilter(LateReplyFilter(debug))
    # OpenCV writes its own lines to stderr (no time, no masking) for what the daemon
    # reports itself as one error (an undecodable frame, a cut video): only with -d
    os.environ.setdefault("OPENCV_LOG_LEVEL", "INFO" if debug else "SILENT")


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
        daemon_opts, backend_opts = _split_options(args.options + [os.environ.pop(SECRETS_ENV, "")])
        opts = Options(daemon_opts)
        threads = opts.int("threads", 8, 1, 256)
        timeout = opts.float("timeout", 60.0)
        read_ahead_kib = opts.int("read_ahead_kb", 1024, 0, 65536)
        fsname = opts.str("fsname", args.source)
        extra = {flag for flag in FUSE_FLAGS if opts.flag(flag, False)}
        opts.flag("ro")
        opts.flag("rw")
        prepare_mountpoint(args.mountpoint)
        kind = source_kind(args.source, args.type, backend_opts)
        progress = Progress(foreground=args.ready_fd is None)
        tree = open_tree(kind, args.source, Options(backend_opts), read_only="ro" in daemon_opts, progress=progress,
                         mountpoint=args.mountpoint)
    except (MountError, CliError) as exc:
        log.error("cannot mount %s: %s", args.source, exc)
        if args.ready_fd is None:
            print(redact(f"scopefs: cannot mount {args.source}: {exc}"), file=sys.stderr)
        report(redact(f"ERROR {exc}"))
        notify(redact(f"STATUS=cannot mount: {exc}"))
        return 1
    except Exception as exc:  # a bug: still one line for the user, the traceback in the log
        log.exception("cannot mount %s", args.source)
        report(redact(f"ERROR {type(exc).__name__}: {exc}"))
        return 1

    if tree.notice:
        log.warning("%s: %s", args.source, tree.notice)
    fuse_options = {f"fsname={fsname}", f"subtype=scopefs.{kind}", "default_permissions", *extra}
    if not tree.writable:
        fuse_options.add("ro")
    from .serve import serve
    os.chdir("/")
    try:
        serve(tree, args.mountpoint, fuse_options, threads=threads, timeout=timeout, read_ahead_kib=read_ahead_kib,
              info={"source": args.source, "type": kind},
              on_ready=lambda: report(f"READY {tree.notice}" if tree.notice else "READY"))
    except RuntimeError as exc:       # pyfuse3.init failed: nothing was mounted
        log.error("cannot mount %s: %s", args.mountpoint, exc)
        if args.ready_fd is None:
            print(redact(f"scopefs: cannot mount on {args.mountpoint}: {exc}"), file=sys.stderr)
        report(f"ERROR {exc}")
        return 1
    return 0


def _mount_in_background(args) -> int:
    try:                              # what is wrong with the command line is told at once
        prepare_mountpoint(args.mountpoint)
        args.type = source_kind(args.source, args.type, _split_options(args.options)[1])
    except (MountError, CliError) as exc:
        print(redact(f"scopefs: cannot mount {args.source}: {exc}"), file=sys.stderr)
        return 1
    log_file = os.path.abspath(args.log_file or default_log_file())
    argv, secrets = _absolute_argv(args)
    argv += ["--log-file", log_file] if args.log_file else []
    os.makedirs(os.path.dirname(log_file), exist_ok=True)
    read_fd, write_fd = os.pipe()
    child_argv = [sys.executable, "-m", "scopefs.daemon", *argv, "--foreground", "--ready-fd", str(write_fd)]
    with open(log_file, "ab") as log_out, open(os.devnull, "rb") as devnull:
        proc = subprocess.Popen(child_argv, stdin=devnull, stdout=log_out, stderr=log_out,
                                pass_fds=(write_fd,), start_new_session=True, close_fds=True,
                                env={**os.environ, SECRETS_ENV: secrets} if secrets else None)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        line = pipe.readline().strip()
    if line.startswith("READY"):
        if line != "READY":                          # a notice: one line the user must see
            print(f"scopefs: {line[len('READY '):]}", file=sys.stderr)
        return 0
    if line.startswith("ERROR "):
        message = line[len("ERROR "):]
    else:
        code = proc.wait()
        message = f"the daemon exited (status {code}) before the mount was ready; see {log_file}"
    print(redact(f"scopefs: cannot mount {args.source}: {message}"), file=sys.stderr)
    proc.wait()
    return 1


def _absolute(source: str) -> str:
    """Local paths made absolute (the daemon runs in /); URLs (s3://...) kept as given."""
    return source if is_url(source) else os.path.abspath(source)


def _absolute_argv(args) -> tuple[list[str], str]:
    """The daemon's argv, and its credential options (for its environment, which only
    its user may read, unlike /proc/PID/cmdline)."""
    argv = ["mount", _absolute(args.source), os.path.abspath(args.mountpoint)]
    if args.type:
        argv += ["-t", args.type]
    secrets = []
    for opt in args.options:
        items = parse_option_string(opt)
        secrets += [f"{k}={v}" for k, v in items.items() if k in SECRET_OPTIONS]
        public = [f"{k}={v}" if v else k for k, v in items.items() if k not in SECRET_OPTIONS]
        if public:
            argv += ["-o", ",".join(public)]
    if args.debug:
        argv.append("--debug")
    return argv, ",".join(secrets)


# -- umount -----------------------------------------------------------------------------

def _daemon_pid(mountpoint: str) -> int | None:
    status = read_status(mountpoint)
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
        if "busy" in result.stderr:
            print(f"scopefs: {_busy(mountpoint, pid)}", file=sys.stderr)
        else:
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


def _busy(mountpoint: str, daemon_pid: int | None) -> str:
    """Why an unmount was refused: who holds the mount, and what to do about it."""
    holders = {pid: name for pid, name in processes_using(mountpoint).items() if pid != daemon_pid}
    if holders:
        who = "in use by " + ", ".join(f"{name} (pid {pid})" for pid, name in sorted(holders.items()))
    else:
        who = "in use (by no process this user may inspect: as root, this names them)"
    return (f"{mountpoint} is busy, {who}; end or leave them, or detach it now with "
            f"`scopefs umount -z {mountpoint}` (the daemon finishes once they let go)")


def _is_scopefs_process(pid: int) -> bool:
    """Alive and still ours, not a reused pid."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            if b"scopefs" not in fh.read():
                return False
    except OSError:
        return False
    return process_alive(pid)


# -- status -----------------------------------------------------------------------------

def scopefs_mounts() -> list[tuple[str, str]]:
    """(mount point, fuse type) of every scopefs mount."""
    return [(m.point, m.fstype) for m in mounts() if m.fstype.startswith("fuse.scopefs")]


#: what every daemon reports, shown as columns; the rest of a status is the tree's own
COLUMNS = ("type", "uptime_s", "requests", "bytes_read", "errors", "source")


#: how long `status` waits for the daemons to answer (a stopped or wedged one never does)
STATUS_WAIT = 3.0


def _probe(paths: list[str], wait: float = STATUS_WAIT) -> dict[str, dict | None]:
    """Each live mount's status (None: stale), asked of all daemons at once, each in a
    thread of its own; a mount whose daemon has not answered within `wait` is missing
    from the result (its thread is left blocked, and ends with this process)."""
    found: dict[str, dict | None] = {}

    def ask(path: str) -> None:
        found[path] = read_status(path) if mount_state(path) == "live" else None

    threads = [threading.Thread(target=ask, args=(path,), daemon=True) for path in paths]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + wait
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return dict(found)


def status(mountpoint: str | None, as_json: bool) -> int:
    wanted = os.path.abspath(mountpoint) if mountpoint else None
    chosen = [(path, fstype) for path, fstype in scopefs_mounts() if not wanted or path == wanted]
    answers = _probe([path for path, _ in chosen])
    rows = []
    for path, fstype in chosen:
        info = answers.get(path)
        state = "live" if info else "stale" if path in answers else "silent"
        rows.append({"mountpoint": path, "state": state, **(info or {"type": fstype[len("fuse.scopefs."):]})})
    if wanted and not rows:
        print(f"scopefs: {wanted} is not a scopefs mount", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no scopefs mounts")
        return 0
    print(f"{'MOUNTPOINT':<28} {'TYPE':<9} {'STATE':<6} {'UPTIME':>9} {'REQUESTS':>9} {'READ':>9} {'ERR':>4}  SOURCE")
    for r in rows:
        print(f"{r['mountpoint']:<28} {r.get('type', '?'):<9} {r['state']:<6} {_duration(r.get('uptime_s')):>9} "
              f"{r.get('requests', '-'):>9} {_size(r.get('bytes_read')):>9} {r.get('errors', '-'):>4}  "
              f"{r.get('source', '?')}")
        details = {k: v for k, v in r.items() if k not in COLUMNS and k not in ("mountpoint", "state")}
        if details:
            print("    " + " ".join(f"{key}={_value(value)}" for key, value in _flat(details)))
    return 0


def _flat(values: dict, prefix: str = ""):
    """(dotted key, value) of a status, nested dicts flattened."""
    for key, value in values.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _value(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def _duration(seconds) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h" if seconds >= 86400 else \
        f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _size(n) -> str:
    if n is None:
        return "-"
    for unit in ("B", "K", "M", "G", "T"):
        if n < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024


# -- the mount(8) helper ------------------------------------------------------------------

def mount_helper(argv: list[str] | None = None) -> int:
    """`mount.scopefs SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS]`, as mount(8) calls helpers
    (link it as /sbin/mount.fuse.scopefs for `mount -t fuse.scopefs` and fstab)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    positional, options, fake = [], [], False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "-o" and i + 1 < len(argv):
            options.append(argv[i + 1])
            i += 2
            continue
        if arg.startswith("-o") and len(arg) > 2:
            options.append(arg[2:])
        elif arg == "-t" and i + 1 < len(argv):
            i += 1                                   # the type: we are it
        elif arg.startswith("-") and len(arg) > 1:
            fake = fake or "f" in arg[1:]            # -f: fake, -s/-n/-v: nothing to do
        else:
            positional.append(arg)
        i += 1
    if len(positional) != 2:
        print("usage: mount.scopefs SOURCE MOUNTPOINT [-o OPTIONS]", file=sys.stderr)
        return 2
    if fake:
        return 0
    source, mountpoint = positional
    if source.startswith("scopefs#"):                # the old fuse "type#source" spelling
        source = source[len("scopefs#"):]
    return main(["mount", source, mountpoint, *[x for o in options for x in ("-o", o)]])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-") and argv[0] not in COMMANDS:
        argv = ["mount", *argv]           # `scopefs SOURCE MOUNTPOINT -o ...`, as mount.fuse3 runs it
    parser = _parser()
    if not argv:
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
    if args.command == "status":
        return status(args.mountpoint, args.json)
    if args.command == "umount":
        return umount(args.mountpoint, args.lazy, args.timeout)
    if args.debug and not args.log_file:
        args.foreground = True
    if args.foreground:
        _setup_logging(args.debug)
        args.source = _absolute(args.source)
        args.mountpoint = os.path.abspath(args.mountpoint)
        return _mount_in_foreground(args)
    return _mount_in_background(args)
