"""ROMI FSDB (romidata, plantdb): a library (`FSDB`, `io`) and a mount."""
from . import io
from .db import FSDB, DBBusyError, File, Fileset, NotAnFSDBError, Scan
from .tree import detect, open  # noqa: A001  (the backend interface's name)

__all__ = ["FSDB", "DBBusyError", "NotAnFSDBError", "Scan", "Fileset", "File", "io", "detect", "open"]
