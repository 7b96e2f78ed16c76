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
from .roots import FsspecRoot, LocalRoot

CONFIG_NAME = "copick_config.json"


def detect(source: str) -> bool:
    if not (source.endswith(".json") and os.path.isfile(source)):
        return False
    try:
        with builtins.open(source, "rb") as fh:
            return b'"overlay_root"' in fh.read(1 << 20)
    except OSError:
        return False


def make_root(url: str, fs_args: dict | None, key: str, ttl: float):
    """`local:///abs`, `file:///abs` or a plain path: straight to the OS; any other fsspec
    URL (s3://...) through fsspec, with fs_args (endpoint, credentials...)."""
    match = re.match(r"^(?:local|file)://(.*)$", url)
    path = (match.group(1) or "/") if match else url
    if match or not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", url):
        if not os.path.isdir(path):
            raise MountError(f"the {key} {path} is not a directory")
        return LocalRoot(path)
    args = {k: v for k, v in (fs_args or {}).items() if k != "auto_mkdir"}
    try:
        root = FsspecRoot(url, args, ttl)
        if root.stat("") is None and root.listdir("") is None:
            raise MountError(f"the {key} {root.describe()} does not exist")
        return root
    except MountError:
        raise
    except Exception as exc:
        raise MountError(f"the {key} {url.split('@')[-1]} cannot be opened: {type(exc).__name__}: {exc}") from None


def open(source: str, options: Options, read_only: bool = False, progress=None, base: int = ROOT_INO):
    overlay_dir = options.str("overlay", "")
    mountpoint = options.str("_mountpoint", "")
    ttl = options.float("metadata_ttl", 60.0)
    options.finish()
    if base != ROOT_INO:
        raise MountError("a copick project cannot be shown inside another source")
    if os.path.isdir(source):
        if not overlay_dir:
            raise MountError(f"{source} is a directory: give the overlay root with -o overlay=DIR, "
                             f"or mount the project's config JSON")
        config = {"config_type": "filesystem", "name": os.path.basename(os.path.abspath(source)),
                  "pickable_objects": []}
        static, overlay = make_root(source, None, "static root", ttl), make_root(overlay_dir, None, "overlay root", ttl)
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
        overlay = make_root(config["overlay_root"], config.get("overlay_fs_args"), "overlay_root", ttl)
        static = (make_root(config["static_root"], config.get("static_fs_args"), "static_root", ttl)
                  if config.get("static_root") else overlay)
    tree = OverlayTree(static, overlay, read_only)
    if mountpoint:
        merged = {k: v for k, v in config.items() if k not in ("static_root", "static_fs_args")}
        merged.update(overlay_root=f"local://{mountpoint}", overlay_fs_args={"auto_mkdir": True})
        text = (json.dumps(merged, indent=4) + "\n").encode()
        tree.extra[CONFIG_NAME] = tree.add(GeneratedFile(lambda: text, (static.stat("") or overlay.stat("")).mtime_ns))
    return tree

