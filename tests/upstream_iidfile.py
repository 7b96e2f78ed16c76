"""Driven by the tests, run with upstream iidfile's own venv (not collected by pytest).

    write OUT SPEC.npz   write OUT with upstream from masks/bboxes/iids in SPEC.npz
    read IN OUT.npz      read IN with upstream; save entries, masks, groups and meta
"""
import json
import sys

import numpy as np

from iidfile import IIDFile


def write(out, spec_path):
    spec = np.load(spec_path, allow_pickle=False)
    info = json.loads(str(spec["info"]))
    f = IIDFile()
    for i, e in enumerate(info["entries"]):
        f.add(address=bytes.fromhex(e["address"]),
              domain=bytes.fromhex(e["domain"]) if e["domain"] is not None else None,
              bbox=tuple(e["bbox"]), mask=spec[f"mask_{i}"].astype(bool))
        # upstream's save() packs regionprops' float area with "I" and fails on recent
        # scikit-image; store the same value as an int (the format is unchanged)
        f.lut.entries[-1].seg.area = int(f.lut.entries[-1].seg.area)
    for name, keys in info["groups"].items():
        f.groups.add(name, keys=keys)
    f.meta.data = info["meta"]
    f.save(out)


def read(path, out):
    f = IIDFile(fpath=path)
    entries = f.fetch(everything=True)
    arrays, listed = {}, []
    for e in sorted(entries, key=lambda e: e.key):
        arrays[f"mask_{e.key}"] = e.seg.mask().astype(bool)
        listed.append({"key": e.key, "address": e.iid.address.hex(),
                       "domain": None if e.iid.domain is None else e.iid.domain.hex(),
                       "bbox": [int(v) for v in e.seg.bbox], "area": int(e.seg.area)})
    groups = {name: sorted(int(k) for k in f.groups.get(name, keys_only=True)) for name in f.groups.list()}
    info = {"entries": listed, "meta": f.meta.data, "groups": groups}
    np.savez(out, info=np.asarray(json.dumps(info)), **arrays)


if __name__ == "__main__":
    {"write": write, "read": read}[sys.argv[1]](sys.argv[2], sys.argv[3])
