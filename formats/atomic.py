"""Replacing a file so that readers and crashes see the old or the new one, never a part."""
from __future__ import annotations

import os
import socket
import tempfile
from typing import Callable


def _temp_prefix(path: str, pid: int | str = "") -> str:
    """Temporary files name their writer (host and pid), so that the leftovers of one
    killed mid-write can be told from those of a writer still at work."""
    return f".{os.path.basename(path)}.{socket.gethostname()}-{pid}"


def atomic_write(path: str, data: bytes, keep_mode: bool = True) -> None:
    """A temporary file beside `path`, fsync, rename over `path`, fsync the directory."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path, os.getpid()) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if keep_mode:
            try:
                os.chmod(tmp, os.stat(path).st_mode & 0o7777)
            except FileNotFoundError:
                os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def fsync_dir(directory: str) -> None:
    """The renames and creations in `directory` are made durable."""
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove_leftovers(path: str, writer_alive: Callable[[int], bool]) -> list[str]:
    """Remove the temporary files `atomic_write(path)` left when its writer (a process on
    this host, whose pid `writer_alive` says is gone) was killed before the rename; return
    their names. `path` itself was never touched by them."""
    directory = os.path.dirname(os.path.abspath(path))
    start = _temp_prefix(path)
    removed = []
    with os.scandir(directory) as found:
        for entry in found:
            pid = entry.name[len(start):].split(".", 1)[0]
            if entry.name.startswith(start) and entry.name.endswith(".tmp") and pid.isdigit() \
                    and not writer_alive(int(pid)):
                try:
                    os.unlink(entry.path)
                    removed.append(entry.name)
                except FileNotFoundError:
                    pass
    return removed
