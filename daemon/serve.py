"""Running a mount: pyfuse3 session, trio loop, signals, and a clean unmount at the end."""
from __future__ import annotations

import faulthandler
import logging
import signal
import subprocess
from typing import Callable

import pyfuse3
import trio

from ..backends.nodes import Tree
from .fs import Operations

log = logging.getLogger(__name__)


async def _main(ops: Operations) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signal)
        await pyfuse3.main(min_tasks=4, max_tasks=64)
        nursery.cancel_scope.cancel()


async def _stop_on_signal() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("%s received, unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()
            return


def serve(tree: Tree, mountpoint: str, fuse_options: set[str], *, threads: int,
          info: dict[str, str], on_ready: Callable[[], None]) -> None:
    """Mount `tree` on `mountpoint` and serve until unmounted or signalled."""
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    ops = Operations(tree, threads=threads, info=info)
    pyfuse3.init(ops, mountpoint, fuse_options)
    try:
        log.info("mounted %s on %s", info.get("source"), mountpoint)
        on_ready()
        trio.run(_main, ops)
    finally:
        # unmount first, so that nothing waits on a mount whose daemon is going away
        try:
            pyfuse3.close(unmount=True)
        except Exception:
            log.exception("unmounting failed; trying fusermount3 -uz")
            subprocess.run(["fusermount3", "-uz", mountpoint], check=False)
        tree.close()
        log.info("unmounted %s", mountpoint)
