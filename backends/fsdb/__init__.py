"""ROMI FSDB (romidata, plantdb): a library (`FSDB`, `io`) and a mount (`tree.open_tree`).

`io` (which loads OpenCV and numpy) is imported by whoever uses it, e.g.
`from scopefs.backends.fsdb import io`, so that a mount loads only what it needs."""
from .db import FSDB, DBBusyError, File, Fileset, NotAnFSDBError, Scan
from .tree import open_tree

__all__ = ["FSDB", "DBBusyError", "NotAnFSDBError", "Scan", "Fileset", "File", "io", "open_tree"]
