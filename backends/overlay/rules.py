"""The overlay root's reserved names: how a deletion, an opaque directory and the work
directory are written on disk.

On-disk compatible with earlier scopefs overlays and with fuse-overlayfs: a deleted name
is a file `.wh.<name>` beside it, an opaque directory holds `.wh..wh..opq`. A name longer
than 251 bytes has no room for the prefix (NAME_MAX is 255): its whiteout is
`.wh..wh.long.<sha256 of the name>`. Every `.wh.` name is internal: never listed, never
found, and refused (EINVAL) as the name of anything made through the mount.
"""
from __future__ import annotations

import errno
import hashlib

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
#: where copy-ups are written before they are renamed into place; emptied at every mount,
#: so a copy-up cut short (the daemon killed) leaves nothing behind after the next one
WORK_DIR = ".wh..wh.scopefs.work"
#: what a backend keeps across mounts out of sight (copick's tomogram imports not yet
#: converted): never emptied by a mount, never shown
KEPT_DIR = ".wh..wh.scopefs.kept"
#: an empty directory in an object store is kept alive by this marker object
DIR_MARKER = ".wh.scopefs-dir"
_LONG = ".wh..wh.long."
_NAME_MAX = 255


def internal(name: str) -> bool:
    return name.startswith(WHITEOUT)


def whiteout_name(name: str) -> str:
    """The whiteout that deletes `name` (a hashed one for names too long for the prefix)."""
    if len(name) + len(WHITEOUT) <= _NAME_MAX and len(name.encode("utf-8", "surrogateescape")) + 4 <= _NAME_MAX:
        return WHITEOUT + name
    return _LONG + hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()


def deleted_names(names) -> set[str]:
    """The names whose deletion a directory's listing records (hashed whiteouts are only
    probed by name, see `whiteout_name`)."""
    return {n[len(WHITEOUT):] for n in names if n.startswith(WHITEOUT) and not n.startswith(_LONG)}


def refuse_reserved(name: str) -> None:
    """Names the overlay uses for itself cannot be made through the mount."""
    if internal(name):
        raise OSError(errno.EINVAL, "names starting with .wh. are reserved by the overlay", name)
