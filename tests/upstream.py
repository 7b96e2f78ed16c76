"""Upstream libraries in venvs of their own, made on first use by the test setup.

Upstream packages pin dependencies that scopefs does not share, so they never go into
scopefs's venv: each gets a venv under the repository (git-ignored) and is driven
through scripts run with its python.
"""
from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

UPSTREAMS = {
    "imgstore": ["imgstore==0.4.0", "opencv-python-headless", "pandas", "tzlocal"],
    # iidfile declares no dependencies; it needs numpy >= 2 (np.bool) and scikit-image
    "iidfile": ["iidfile==0.2.0", "numpy>=2", "scikit-image"],
    # the FSDB of today (per-scan flock files) and the last one with the root `lock`
    "plantdb": ["plantdb-commons==0.17.0"],
    "plantdb014": ["plantdb-commons==0.14.5"],
    "copick": ["copick==1.31.0", "trimesh"],      # copick 1.x pins zarr<3 itself
}


def _base_python() -> str:
    """The interpreter the scopefs venv was made from (a venv of a venv works too,
    but this keeps them independent)."""
    return getattr(sys, "_base_executable", None) or sys.executable


def upstream_python(name: str) -> str:
    venv = Path(os.environ.get(f"SCOPEFS_{name.upper()}_VENV", ROOT / f".venv-{name}"))
    python = venv / "bin" / "python"
    ready = venv / ".scopefs-ready"
    wanted = json.dumps(UPSTREAMS[name])
    if ready.exists() and ready.read_text() == wanted:
        return str(python)
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(str(venv) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)          # parallel test workers make it once
        if not (ready.exists() and ready.read_text() == wanted):
            if not python.exists():
                subprocess.run([_base_python(), "-m", "venv", str(venv)], check=True)
            result = subprocess.run([str(python), "-m", "pip", "install", "-q", *UPSTREAMS[name]],
                                    capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"installing upstream {name} failed:\n{result.stderr[-3000:]}")
            ready.write_text(wanted)
    return str(python)


def run_upstream(name: str, script: str, *args: str, timeout: float = 600) -> str:
    """Run tests/<script> with the upstream venv's python; its stdout."""
    result = subprocess.run([upstream_python(name), str(Path(__file__).parent / script), *args],
                            capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"upstream {script} {' '.join(args)} failed:\n{result.stderr[-5000:]}")
    return result.stdout
