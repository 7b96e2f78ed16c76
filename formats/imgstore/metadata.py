"""`metadata.yaml` of an imgstore: the `__store` description and the user metadata.

Only what a reader needs is interpreted; the file itself is kept verbatim so that it
can be shown unchanged.
"""
from __future__ import annotations

import datetime as _dt
import os
import re
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..files import LOCAL, Files


STORE_KEY = "__store"
SUPPORTED_VERSION = 2
DIRECTORY_CLASS = "DirectoryImgStore"
VIDEO_CLASSES = ("VideoImgStore", "VideoImgStoreFFMPEG")

#: directory formats: name in `__store.format` -> file extension on disk
DIRECTORY_FORMATS = ("npy", "png", "jpg", "bmp", "tif", "pgm", "ppm")

#: video formats written by imgstore: format -> (fourcc, extension)
VIDEO_FORMATS = {
    "mjpeg/avi": ("MJPG", ".avi"),
    "avc1/mp4": ("avc1", ".mp4"),
    "h264/mkv": ("H264", ".mkv"),
}


class StoreError(Exception):
    """A store cannot be opened; the message is one line meant for the user."""


@dataclass
class StoreMetadata:
    path: str                      # the store directory
    raw: bytes                     # metadata.yaml exactly as on disk
    store: dict                    # the `__store` mapping
    user: dict = field(default_factory=dict)
    files: Files = LOCAL           # where the store's files are read from

    @property
    def kind(self) -> str:
        """'directory' or 'video'."""
        return "directory" if self.store["class"] == DIRECTORY_CLASS else "video"

    @property
    def format(self) -> str:
        return str(self.store["format"])

    @property
    def chunksize(self) -> int:
        return int(self.store.get("chunksize") or 0)

    @property
    def encoding(self) -> str | None:
        """OpenCV colour conversion applied on read (e.g. 'cv_bayerbg'), or None."""
        return self.store.get("encoding") or None

    @property
    def imgshape(self) -> tuple[int, ...]:
        return tuple(int(v) for v in self.store["imgshape"])

    @property
    def imgdtype(self) -> str:
        return str(self.store.get("imgdtype") or "uint8")

    @property
    def video_extension(self) -> str:
        """Chunk file extension of a video store, with the upstream fallbacks."""
        ext = self.store.get("extension")
        if ext:
            return ext if ext.startswith(".") else "." + ext
        if self.format in VIDEO_FORMATS:
            return VIDEO_FORMATS[self.format][1]
        return ".avi" if self.format == "mjpeg" else ".mp4"

    @property
    def timezone(self) -> _dt.tzinfo:
        """Zone for showing frame times: the writer's zone, else the user's, else UTC."""
        for name in (self.store.get("timezone_local"), self.user.get("timezone")):
            if isinstance(name, str) and name:
                try:
                    return ZoneInfo(name)
                except (ZoneInfoNotFoundError, ValueError):
                    continue
        return _dt.timezone.utc

    @property
    def created_utc(self) -> _dt.datetime | None:
        value = self.store.get("created_utc")
        if isinstance(value, _dt.datetime):
            return value
        if isinstance(value, str):
            try:
                return _dt.datetime.fromisoformat(value)
            except ValueError:
                return None
        return None


def metadata_path(source: str, files: Files = LOCAL) -> str:
    """The `metadata.yaml` of a store given as its directory or the file itself."""
    if files.isdir(source):
        return os.path.join(source, "metadata.yaml")
    return source


def looks_like_store(source: str) -> bool:
    """Cheap test used for auto-detection: a metadata.yaml with a `__store` key."""
    path = metadata_path(source)
    if os.path.basename(path) != "metadata.yaml" or not os.path.isfile(path):
        return False
    try:
        with open(path, "rb") as fh:
            head = fh.read(65536)
    except OSError:
        return False
    return re.search(rb"^__store\s*:", head, re.MULTILINE) is not None


def read_metadata(source: str, files: Files = LOCAL) -> StoreMetadata:
    path = metadata_path(source, files)
    try:
        raw = files.read(path)
    except FileNotFoundError:
        raise StoreError(f"{path}: no such file (an imgstore needs metadata.yaml)") from None
    except OSError as exc:
        raise StoreError(f"{path}: {exc.strerror}") from None
    import yaml                                  # (here: detecting a store needs no YAML parser)
    try:
        doc = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise StoreError(f"{path}: not valid YAML{where}: {problem}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get(STORE_KEY), dict):
        raise StoreError(f"{path}: no '{STORE_KEY}' mapping, so this is not an imgstore")
    store = doc[STORE_KEY]
    _validate(path, store)
    user = {k: v for k, v in doc.items() if k != STORE_KEY}
    return StoreMetadata(path=os.path.dirname(path if files.remote else os.path.abspath(path)), raw=raw,
                         store=store, user=user, files=files)


def _validate(path: str, store: dict) -> None:
    for key in ("class", "format", "imgshape"):
        if key not in store:
            raise StoreError(f"{path}: '{STORE_KEY}.{key}' is missing")
    cls = store["class"]
    if cls != DIRECTORY_CLASS and cls not in VIDEO_CLASSES:
        raise StoreError(f"{path}: store class {cls!r} is not supported")
    version = store.get("version", SUPPORTED_VERSION)
    if version != SUPPORTED_VERSION:
        raise StoreError(f"{path}: store version {version!r} is not supported (only {SUPPORTED_VERSION})")
    shape = store["imgshape"]
    if (not isinstance(shape, (list, tuple)) or len(shape) not in (2, 3)
            or not all(isinstance(v, int) and v > 0 for v in shape)):
        raise StoreError(f"{path}: '{STORE_KEY}.imgshape' must be [h, w] or [h, w, c], got {shape!r}")
    if cls == DIRECTORY_CLASS and store["format"] not in DIRECTORY_FORMATS:
        raise StoreError(f"{path}: directory store format {store['format']!r} is not supported "
                         f"(supported: {', '.join(DIRECTORY_FORMATS)})")
