"""Driven by the tests with plantdb's own venvs (not collected by pytest).

    read DB          (0.17) print the scans, filesets, files and metadata as JSON
    write DB         (0.17) write a small database the way plantdb users do
    hold DB          (0.14.5) connect (taking the root lock), print "connected", wait for stdin
    try DB           (0.14.5) print "connected" or "busy: <message>"
"""
import json
import sys
import warnings

warnings.filterwarnings("ignore")


def read(path):
    from plantdb.commons.fsdb.core import FSDB
    db = FSDB(path, no_auth=True)
    db.connect()
    out = {}
    for scan in db.get_scans(owner_only=False):
        out[scan.id] = {"metadata": scan.get_metadata(), "filesets": {}}
        for fs in scan.get_filesets():
            out[scan.id]["filesets"][fs.id] = {
                "metadata": fs.get_metadata(),
                "files": {f.id: {"file": f.filename, "metadata": f.get_metadata()} for f in fs.get_files()}}
    print(json.dumps(out, default=str))


def write(path):
    import numpy as np
    from plantdb.commons import io
    from plantdb.commons.fsdb.core import FSDB
    db = FSDB(path, no_auth=True)
    db.connect()
    scan = db.create_scan("plant_001")
    scan.set_metadata({"species": "arabidopsis", "pot": 7})
    images = scan.create_fileset("images")
    for i in range(3):
        f = images.create_file(f"img_{i:03d}")
        io.write_image(f, np.full((8, 10, 3), 40 * i, np.uint8))
        f.set_metadata({"shot_id": i, "pose": [0.0, float(i), 0.0]})
    f = scan.create_fileset("measures").create_file("summary")
    io.write_json(f, {"height_mm": 120.5})
    print("written")


def hold(path):
    from plantdb.commons.fsdb import FSDB
    db = FSDB(path)
    db.connect()
    print("connected", flush=True)
    sys.stdin.read()
    db.disconnect()


def attempt(path):
    from plantdb.commons.fsdb import FSDB
    from plantdb.commons.db import DBBusyError
    try:
        FSDB(path).connect()
        print("connected")
    except DBBusyError as exc:
        print("busy:", exc.message)


if __name__ == "__main__":
    {"read": read, "write": write, "hold": hold, "try": attempt}[sys.argv[1]](sys.argv[2])
