"""A mount's hidden control file, `.scopefs`: what the daemon shows of itself (its pid,
counters, caches). Tests (through conftest) and benchmarks (run outside pytest) read it."""
from __future__ import annotations

import json
from pathlib import Path


def daemon_status(mountpoint: Path) -> dict:
    """The JSON a mount shows in its hidden control file."""
    return json.loads((Path(mountpoint) / ".scopefs").read_text())
