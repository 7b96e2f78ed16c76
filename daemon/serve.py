"""Running a mount: pyfuse3 session, trio loop, signals, and a clean unmount at the end."""
from __future__ import annotations

import faulthandler
import gc
import logging
import os
import signal
import subprocess
from typing import Callable

import pyfuse3
import trio

from ..backends.kernel import mounts
from ..backends.nodes import Tree
from .fs import Operations, kernel_opens_files
from .systemd import notify

log = logging.getLogger(__name__)

#: how long the session loop goes on trying an empty FUSE fd before it sleeps (the
#: pyfuse3 patch session-poll-before-wait), so that a program waiting for each answer
#: (open, isatty's FUSE_IOCTL, close of many small files) finds the daemon awake. Off by
#: default: it pays where the program and the daemon run on different idle CPUs, but
#: where the scheduler keeps them on one busy CPU the poll delays the program it waits
#: for (benchmarks/README.md, "Warm reads of small files")
IDLE_POLL_S = 0.0
#: microseconds of that (e.g. 50), instead
IDLE_POLL_ENV = "SCOPEFS_IDLE_POLL_US"


async def _main(ops: Operations, mountpoint: str, when_live: Callable[[], None]) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signal)
        nursery.start_soon(_wait_until_live, ops, mountpoint, when_live)
        if ops.tree.writable:
            nursery.start_soon(ops.sync_when_idle)
        await pyfuse3.main(min_tasks=4, max_tasks=64)
        nursery.cancel_scope.cancel()


async def _wait_until_live(ops: Operations, mountpoint: str, when_live: Callable[[], None]) -> None:
    """Run `when_live` once the mount answers: the kernel sends INIT first, so an answered
    statvfs means the handshake (which resets read-ahead) is over and clients can come.
    The mount point's folder is opened then, once, for the notifier (`Notifier.live`)."""
    found = await trio.to_thread.run_sync(_live_parent, mountpoint)
    if found is not None:
        ops.notifier.live(*found)
    when_live()


def _live_parent(mountpoint: str) -> tuple[int, str, int] | None:
    """Once the mount answers (a statvfs), an O_PATH descriptor of the folder that holds
    the mount point, the mount point's name in it and the mount's device (None: cannot)."""
    os.statvfs(mountpoint)
    name = os.path.basename(mountpoint)
    try:
        parent = os.open(os.path.dirname(mountpoint) or ".", os.O_PATH | os.O_DIRECTORY)
    except OSError as exc:
        log.warning("the folder of %s cannot be opened: frames read ahead reach only readers"
                    " that list them (%s)", mountpoint, exc)
        return None
    try:
        return parent, name, os.stat(name, dir_fd=parent).st_dev
    except OSError as exc:
        log.warning("%s cannot be found from its folder: frames read ahead reach only readers"
                    " that list them (%s)", mountpoint, exc)
        os.close(parent)
        return None


async def _stop_on_signal() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("%s received, unmounting", signal.Signals(signum).name)
            notify("STOPPING=1")
            pyfuse3.terminate()
            return


def _mount_device(mountpoint: str) -> str | None:
    """'major:minor' of the mount on `mountpoint`, from mountinfo: a stat() of our own
    mount before we serve requests would wait forever."""
    for mount in reversed(mounts()):          # the newest mount on that path wins
        if mount.point == mountpoint:
            return mount.device
    return None


def set_read_ahead(mountpoint: str, kib: int) -> None:
    """Let the kernel read ahead `kib` KiB per request instead of 128: a 900 KiB frame is
    then one FUSE read instead of eight (the largest per-frame cost in Python)."""
    device = _mount_device(mountpoint)
    if not kib or device is None:
        return
    try:
        with open(f"/sys/class/bdi/{device}/read_ahead_kb", "w") as fh:
            fh.write(str(kib))
    except OSError as exc:     # not root, or a read-only /sys: the default still works
        log.debug("cannot set read_ahead_kb of %s: %s", device, exc)


def set_idle_poll() -> float:
    """Keep the session loop awake for a moment after each request (`IDLE_POLL_S`, or
    `IDLE_POLL_ENV`); the seconds set."""
    seconds = IDLE_POLL_S
    if os.environ.get(IDLE_POLL_ENV):
        try:
            seconds = max(0.0, float(os.environ[IDLE_POLL_ENV]) * 1e-6)
        except ValueError:
            log.warning("%s=%r is not a number of microseconds: %g used", IDLE_POLL_ENV,
                        os.environ[IDLE_POLL_ENV], IDLE_POLL_S * 1e6)
    if not seconds:
        return 0.0
    if not hasattr(pyfuse3, "set_idle_poll"):
        log.info("pyfuse3 %s has no set_idle_poll (daemon/pyfuse3-patches): %s is ignored",
                 getattr(pyfuse3, "__version__", "?"), IDLE_POLL_ENV)
        return 0.0
    pyfuse3.set_idle_poll(seconds)
    return seconds


def serve(tree: Tree, mountpoint: str, fuse_options: set[str], *, threads: int, timeout: float,
          read_ahead_kib: int, info: dict[str, str], on_ready: Callable[[], None]) -> None:
    """Mount `tree` on `mountpoint` and serve until unmounted or signalled."""
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    # a listing makes tens of thousands of short-lived tuples per directory: collecting
    # every 700 allocations (the default) walks the node table over and over
    gc.freeze()
    gc.set_threshold(50_000, 50, 1000)
    if tree.real_owners:
        os.umask(0)            # modes arrive with the caller's umask applied by the kernel
    info = {**info, "idle_poll_us": round(set_idle_poll() * 1e6, 1)}
    ops = Operations(tree, threads=threads, timeout=timeout, info=info, kernel_opens=kernel_opens_files(tree))
    try:
        pyfuse3.init(ops, mountpoint, fuse_options)
    except RuntimeError:
        try:
            tree.close()           # nothing was mounted: its threads are stopped all the same
        except Exception:          # (the mount's failure is what the user is told)
            log.exception("closing %s after the failed mount", info.get("source"))
        raise
    ops.notifier.start()

    def when_live() -> None:
        set_read_ahead(mountpoint, read_ahead_kib)
        log.info("mounted %s on %s", info.get("source"), mountpoint)
        notify("READY=1", f"STATUS=serving {info.get('source')} on {mountpoint}")
        on_ready()

    try:
        trio.run(_main, ops, mountpoint, when_live)
    finally:
        notify("STOPPING=1")
        if ops.thread_replies is not None and not ops.thread_replies.close(timeout or 60.0):
            log.warning("flushes still running at unmount: their files may not be saved")
        ops.notifier.stop()
        ops.flush_open_files()
        # unmount first, so that nothing waits on a mount whose daemon is going away
        try:
            pyfuse3.close(unmount=True)
        except Exception:
            log.exception("unmounting failed; trying fusermount3 -uz")
            subprocess.run(["fusermount3", "-uz", mountpoint], check=False)
        try:
            tree.close()               # writable trees write their last changes back here
        except Exception:
            log.exception("closing the source failed; its last changes may not be saved")
        log.info("unmounted %s", mountpoint)
