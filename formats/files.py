"""How format readers reach files: the OS by default, or another `Files` (a source in
object storage, given by the backend) with the same few calls."""
from __future__ import annotations

import os
import stat
from typing import NamedTuple


class FileStat(NamedTuple):
    mode: int
    size: int
    mtime_ns: int


class Files:
    """read, listdir and stat (FileNotFoundError when missing), and what follows from them."""
    remote = False

    def read(self, path: str) -> bytes:
        raise NotImplementedError

    def listdir(self, path: str) -> list[str]:
        raise NotImplementedError

    def stat(self, path: str) -> FileStat:
        raise NotImplementedError

    def exists(self, path: str) -> bool:
        try:
            self.stat(path)
            return True
        except OSError:
            return False

    def isdir(self, path: str) -> bool:
        try:
            return stat.S_ISDIR(self.stat(path).mode)
        except OSError:
            return False

    def isfile(self, path: str) -> bool:
        try:
            return stat.S_ISREG(self.stat(path).mode)
        except OSError:
            return False

    def local_path(self, path: str) -> str:
        """A path the OS can open for this file (decoders that want one)."""
        return path

    def close(self) -> None:
        """At unmount: what reaching the files holds open (connections)."""


class LocalFiles(Files):
    """Files through the OS."""

    def read(self, path: str) -> bytes:
        with open(path, "rb") as fh:
            return fh.read()

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def stat(self, path: str) -> FileStat:
        st = os.stat(path)
        return FileStat(st.st_mode, st.st_size, st.st_mtime_ns)


LOCAL = LocalFiles()
