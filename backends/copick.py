"""A copick project: its static root and overlay root as one merged, writable tree.

    scopefs mount project/copick_config.json MOUNTPOINT        (config_type: filesystem)
    scopefs mount -t copick -o overlay=OVERLAY_DIR STATIC_DIR MOUNTPOINT

The merge follows `backends/overlay.py` (overlay wins; whiteouts, which copick never sees
since it skips dot names). The mount root also shows `copick_config.json`: the project's
config with the mount as its only (overlay) root, so `copick.from_file()` on it works.
"""
from __future__ import annotations

import builtins
import json
import os
import re

from .nodes import ROOT_INO, GeneratedFile
from .options import MountError, Options
from .overlay import OverlayTree

CONFIG_NAME = "copick_config.json"


def detect(source: str) -> bool:
    if not (source.endswith(".json") and os.path.isfile(source)):
        return False
    try:
        with builtins.open(source, "rb") as fh:
            return b'"overlay_root"' in fh.read(1 << 20)
    except OSError:
        return False


def _local_root(url: str | None, key: str) -> str | None:
    """A root as a local path: `local:///abs`, `file:///abs` or a plain path."""
    if url is None:
        return None
    match = re.match(r"^(?:local|file)://(.*)$", url)
    if match:
        return match.group(1) or "/"
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", url):
        raise MountError(f"{key} {url.split('://')[0]}:// is not supported yet (local roots only in this version)")
    return url


def open(source: str, options: Options, read_only: bool = False, progress=None, base: int = ROOT_INO):
    overlay_dir = options.str("overlay", "")
    mountpoint = options.str("_mountpoint", "")
    options.finish()
    if base != ROOT_INO:
        raise MountError("a copick project cannot be shown inside another source")
    if os.path.isdir(source):
        if not overlay_dir:
            raise MountError(f"{source} is a directory: give the overlay root with -o overlay=DIR, "
                             f"or mount the project's config JSON")
        config = {"config_type": "filesystem", "name": os.path.basename(os.path.abspath(source)),
                  "pickable_objects": []}
        static, overlay = source, overlay_dir
    else:
        try:
            with builtins.open(source, encoding="utf-8") as fh:
                config = json.load(fh)
        except (OSError, ValueError) as exc:
            raise MountError(f"{source}: not a readable copick config ({exc})") from None
        if not isinstance(config, dict) or config.get("config_type", "filesystem") != "filesystem":
            raise MountError(f"{source}: config_type must be 'filesystem'")
        if "overlay_root" not in config:
            raise MountError(f"{source}: the config has no overlay_root")
        overlay = _local_root(config["overlay_root"], "overlay_root")
        static = _local_root(config.get("static_root"), "static_root") or overlay
    for name, path in (("static root", static), ("overlay root", overlay)):
        if not os.path.isdir(path):
            raise MountError(f"the {name} {path} is not a directory")
    tree = OverlayTree(static, overlay, read_only)
    if mountpoint:
        merged = {k: v for k, v in config.items() if k not in ("static_root", "static_fs_args")}
        merged.update(overlay_root=f"local://{mountpoint}", overlay_fs_args={"auto_mkdir": True})
        text = (json.dumps(merged, indent=4) + "\n").encode()
        tree.extra[CONFIG_NAME] = tree.add(GeneratedFile(lambda: text, os.stat(static).st_mtime_ns))
    return tree

