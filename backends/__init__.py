"""Backends: each turns one kind of data source into a `Tree` of nodes.

A backend is a module here, named as the type `-t` takes, with
`open_tree(source, options, read_only=False, progress=None, base=ROOT_INO, mountpoint=None) -> Tree`.
Its detection test is in `DETECTORS`, in modules that import nothing heavy: the CLI tells
a source's kind (or that it is none) without loading numpy, OpenCV or zarr, and a mount
loads only the backend module it uses. Adding a format means adding a module here and its
detector to `DETECTORS`; the daemon does not change.
"""
from __future__ import annotations

import importlib
import os
import re

from ..formats.fsdb import is_db
from ..formats.imgstore.metadata import looks_like_store
from .options import MountError, Options


def looks_like_iid(source: str) -> bool:
    """`.iid` files have no magic number: the name says it (the mount checks the rest)."""
    return source.endswith(".iid") and os.path.isfile(source)


def looks_like_copick_config(source: str) -> bool:
    """A JSON file naming an `overlay_root`: copick's config (of any config_type)."""
    if not (source.endswith(".json") and os.path.isfile(source)):
        return False
    try:
        with open(source, "rb") as fh:
            return b'"overlay_root"' in fh.read(1 << 20)
    except OSError:
        return False


#: type name -> cheap test for a source of that type, in the order they are tried
DETECTORS = {"imgstore": looks_like_store, "iid": looks_like_iid, "fsdb": is_db, "copick": looks_like_copick_config}
BACKENDS = tuple(DETECTORS)


def is_url(source: str) -> bool:
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", source) is not None


def source_kind(source: str, given: str | None = None, options: dict[str, str] | None = None) -> str:
    """The kind of source to mount: `given` (from -t) or detected. Cheap: no backend is
    imported, so that what is wrong with a command line is told at once. A URL's kind
    comes from its name, else from a listing made with the mount `options`."""
    if not is_url(source) and not os.path.lexists(source):
        raise MountError("it does not exist")
    if given:
        if given not in DETECTORS:
            raise MountError(f"unknown source type {given!r} (known: {', '.join(BACKENDS)})")
        return given
    if is_url(source):
        from .remote import remote_kind
        return remote_kind(source, options or {})
    for kind, looks_like in DETECTORS.items():
        if looks_like(source):
            return kind
    raise MountError(f"cannot tell what kind of source this is "
                     f"(give -t, one of {', '.join(BACKENDS)})")


def open_tree(kind: str, source: str, options: Options, read_only: bool = False, progress=None,
              mountpoint: str | None = None):
    """The backend's tree; it calls `options.finish()` before any slow work, so that a
    typo in an option fails at once. Read-only sources ignore `read_only`; slow start-up
    work reports through `progress(message)`; `mountpoint` is for sources whose content
    names their own mount (copick's config). `kind` comes from `source_kind`. Grafted views
    call a backend's `open_tree` directly, with the `base` of their inode numbers."""
    backend = importlib.import_module(f"{__name__}.{kind}")
    return backend.open_tree(source, options, read_only, progress, mountpoint=mountpoint)
