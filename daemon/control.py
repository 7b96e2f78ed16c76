"""The hidden control file at a mount's root (`cat MOUNT/.scopefs`): its name and how it
is read. Here rather than in fs.py so that `scopefs status` and `umount` start without
loading pyfuse3 and trio."""
from __future__ import annotations

import json
import os

CONTROL_NAME = ".scopefs"


def read_status(mountpoint: str) -> dict | None:
    """The status a live scopefs mount shows in its control file, or None."""
    try:
        with open(os.path.join(mountpoint, CONTROL_NAME), "rb") as fh:
            return json.loads(fh.read())
    except (OSError, ValueError):
        return None
