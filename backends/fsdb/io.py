"""romidata's `io` helpers: read and write a File's data by kind.

Images are numpy arrays in RGB(A) order (as imageio gives them), stored through OpenCV;
the file is named `<id>.<ext>` as upstream names it.
"""
from __future__ import annotations

import io as _io
import json
import tomllib

import cv2
import numpy as np

from .db import File


def read_json(file: File):
    return json.loads(file.read_raw())


def write_json(file: File, data, ext: str = "json") -> None:
    file.write_raw(json.dumps(data, indent=4).encode(), ext)


def read_toml(file: File) -> dict:
    return tomllib.loads(file.read())


def read_image(file: File) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(file.read_raw(), np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise IOError(f"{file.path()} is not an image OpenCV can read")
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA if img.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    return img


def write_image(file: File, data: np.ndarray, ext: str = "png") -> None:
    img = np.asarray(data)
    if img.ndim == 3:
        if img.shape[2] == 4 and ext.lower() in ("jpg", "jpeg"):
            img = img[:, :, :3]                     # JPEG has no alpha (upstream drops it too)
        img = cv2.cvtColor(img, cv2.COLOR_RGBA2BGRA if img.shape[2] == 4 else cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(f".{ext}", img)
    if not ok:
        raise IOError(f"cannot encode a {img.shape} {img.dtype} image as {ext}")
    file.write_raw(buf.tobytes(), ext)


def read_npz(file: File) -> dict:
    with np.load(_io.BytesIO(file.read_raw()), allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def write_npz(file: File, data: dict) -> None:
    out = _io.BytesIO()
    np.savez(out, **data)
    file.write_raw(out.getvalue(), "npz")


def read_volume(file: File) -> np.ndarray:
    return read_npz(file)["voxels"] if file.filename.endswith(".npz") else np.load(_io.BytesIO(file.read_raw()))


def write_volume(file: File, data: np.ndarray, ext: str = "npz") -> None:
    if ext == "npz":
        write_npz(file, {"voxels": np.asarray(data)})
    else:
        out = _io.BytesIO()
        np.save(out, np.asarray(data))
        file.write_raw(out.getvalue(), "npy")
