"""The on-disk layout of a ROMI FSDB (romidata, plantdb): paths, JSON style, atomic writes.

    <db>/romidb                                marker
    <db>/lock                                  held while a (legacy) client is connected
    <db>/.locks/                               plantdb >= 0.15 per-resource flock files
    <db>/.scopefs-journal                      scopefs: files not yet in files.json (JSON lines)
    <db>/<scan>/files.json                     {"filesets": [{"files": [{"file", "id"}], "id"}]}
    <db>/<scan>/metadata/metadata.json         scan metadata
    <db>/<scan>/metadata/<fileset>.json        fileset metadata
    <db>/<scan>/metadata/<fileset>/<id>.json   file metadata
    <db>/<scan>/<fileset>/<id>.<ext>           data

JSON is written as romidata writes it (sorted keys, 4-space indent, no trailing newline),
but always through a temporary file and a rename, so a crash never leaves half a file.
"""
from __future__ import annotations

import json
import os
import re

from .atomic import atomic_write

MARKER = "romidb"
LOCK = "lock"
LOCKS_DIR = ".locks"
FILES_JSON = "files.json"
METADATA_DIR = "metadata"
#: where new scans are assembled before they appear whole, and deleted ones disappear from
STAGING = ".scopefs-staging"
#: registrations a writer made that files.json may not have yet: [scan, fileset, id, file, size]
JOURNAL = ".scopefs-journal"
#: identifiers plantdb 0.17 accepts when creating scans and filesets
PLANTDB_ID = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_-]{0,127}$")


def dump_json(data) -> bytes:
    return json.dumps(data, sort_keys=True, indent=4, separators=(",", ": ")).encode()


def write_json(path: str, data) -> None:
    atomic_write(path, dump_json(data))


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def read_json(path: str, default=None, read=_read):
    """The JSON in `path` (`read` gives a file's bytes); `default` if it is missing or empty."""
    try:
        data = read(path)
    except FileNotFoundError:
        return default
    return json.loads(data) if data.strip() else default


def is_db(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, MARKER))


def scan_dirs(root: str, listdir=os.listdir, isfile=os.path.isfile) -> list[str]:
    """Scans as romidata finds them: directories holding a files.json (hidden ones are not)."""
    found = []
    for name in sorted(listdir(root)):
        if not name.startswith(".") and isfile(os.path.join(root, name, FILES_JSON)):
            found.append(name)
    return found


def scan_metadata_path(scan_dir: str) -> str:
    return os.path.join(scan_dir, METADATA_DIR, "metadata.json")


def fileset_metadata_path(scan_dir: str, fileset: str) -> str:
    return os.path.join(scan_dir, METADATA_DIR, f"{fileset}.json")


def file_metadata_path(scan_dir: str, fileset: str, file_id: str) -> str:
    return os.path.join(scan_dir, METADATA_DIR, fileset, f"{file_id}.json")


def split_name(filename: str) -> tuple[str, str]:
    """A data file's id and extension: '<id>.<ext>' (the id is everything before the last dot)."""
    stem, dot, ext = filename.rpartition(".")
    return (stem, ext) if dot and stem else (filename, "")


def file_name(file_id: str, ext: str) -> str:
    return f"{file_id}.{ext.lstrip('.')}"
