"""Backends: each turns one kind of data source into a `Tree` of nodes.

A backend module, named as the type `-t` takes, has `detect(source) -> bool` (cheap, for
auto-detection) and `open(source, options, read_only, progress) -> Tree`. Adding a format means adding a
module here and its name to `BACKENDS`; the daemon does not change.
"""
from __future__ import annotations

import importlib

from .options import MountError, Options

BACKENDS = ("imgstore", "iid", "fsdb", "copick")


def _module(kind: str):
    if kind not in BACKENDS:
        raise MountError(f"unknown source type {kind!r} (known: {', '.join(BACKENDS)})")
    return importlib.import_module(f"{__name__}.{kind}")


def detect(source: str) -> str:
    for kind in BACKENDS:
        if _module(kind).detect(source):
            return kind
    raise MountError(f"{source}: cannot tell what kind of source this is "
                     f"(give -t, one of {', '.join(BACKENDS)})")


def open_tree(kind: str, source: str, options: Options, read_only: bool = False, progress=None):
    # (grafted views pass `base` to a backend's open directly)
    """The backend's tree; it calls `options.finish()` before any slow work, so that a
    typo in an option fails at once. Read-only sources ignore `read_only`; slow start-up
    work reports through `progress(message)`."""
    return _module(kind).open(source, options, read_only, progress)
