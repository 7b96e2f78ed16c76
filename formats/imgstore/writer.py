"""Writing imgstores that upstream imgstore (loopbio, format version 2) opens.

Frames are given as upstream takes them: numpy arrays in OpenCV channel order (BGR).
Each chunk's index is written when the chunk is complete, through a temporary file and
a rename, so a crash never leaves a half-written index (the chunk is then skipped by
readers, as upstream does). Video chunks go through OpenCV when its build has the
encoder, else through the `ffmpeg` program (pip's OpenCV has no H.264 encoder).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import subprocess
import time
import uuid

import cv2
import numpy as np
import yaml

from ..atomic import atomic_write
from .metadata import DIRECTORY_FORMATS, STORE_KEY, VIDEO_FORMATS, StoreError

#: frame rate written into video containers; real timing lives in frame_time
NOMINAL_FPS = 25
_FFMPEG_CODECS = {
    "mjpeg/avi": ["-c:v", "mjpeg", "-q:v", "3", "-pix_fmt", "yuvj420p"],
    "avc1/mp4": ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-tag:v", "avc1"],
    "h264/mkv": ["-c:v", "libx264", "-pix_fmt", "yuv420p"],
}


def _local_zone_name() -> str:
    link = os.path.realpath("/etc/localtime")
    marker = "/zoneinfo/"
    if marker in link:
        return link.split(marker, 1)[1]
    return os.environ.get("TZ") or "Etc/UTC"


class _VideoChunkWriter:
    """One video file: OpenCV's writer, or ffmpeg fed raw BGR frames on a pipe."""

    def __init__(self, path: str, fmt: str, width: int, height: int, use_ffmpeg: bool):
        self.path = path
        self._proc = None
        self._cv = None
        if not use_ffmpeg:
            fourcc = cv2.VideoWriter_fourcc(*VIDEO_FORMATS[fmt][0])
            self._cv = cv2.VideoWriter(path, cv2.CAP_FFMPEG, fourcc, NOMINAL_FPS, (width, height), True)
            if not self._cv.isOpened():
                raise StoreError(f"this OpenCV build cannot encode {fmt}")
            return
        if shutil.which("ffmpeg") is None:
            raise StoreError(f"this OpenCV build cannot encode {fmt} and no ffmpeg program was found")
        cmd = ["ffmpeg", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "bgr24",
               "-s", f"{width}x{height}", "-r", str(NOMINAL_FPS), "-i", "-",
               *_FFMPEG_CODECS[fmt], path]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)

    def write(self, bgr: np.ndarray) -> None:
        if self._cv is not None:
            self._cv.write(bgr)
        else:
            self._proc.stdin.write(np.ascontiguousarray(bgr).tobytes())

    def close(self) -> None:
        if self._cv is not None:
            self._cv.release()
            return
        self._proc.stdin.close()
        err = self._proc.stderr.read().decode(errors="replace").strip()
        if self._proc.wait() != 0:
            raise StoreError(f"ffmpeg failed writing {self.path}: {err.splitlines()[-1] if err else '?'}")


class ImgStoreWriter:
    """Create a store and add frames: `add_image(img, frame_number, frame_time)`,
    `add_extra_data(**values)`, `close()` (or use it as a context manager)."""

    def __init__(self, basedir: str, fmt: str, imgshape, imgdtype="uint8", chunksize: int | None = None,
                 metadata: dict | None = None, encoding: str | None = None, video_encoder: str = "auto"):
        if fmt == "mjpeg":
            fmt = "mjpeg/avi"
        if fmt not in DIRECTORY_FORMATS and fmt not in VIDEO_FORMATS:
            raise StoreError(f"unknown imgstore format {fmt!r}")
        self.basedir = basedir
        self.format = fmt
        self.is_video = fmt in VIDEO_FORMATS
        shape = tuple(int(v) for v in imgshape)
        if self.is_video:
            shape = (shape[0] & ~1, shape[1] & ~1) + shape[2:]   # encoders need even sizes
        self.imgshape = shape
        self.imgdtype = np.dtype(imgdtype)
        self.chunksize = int(chunksize or (10000 if self.is_video else 200))
        self.encoding = encoding
        self._video_encoder = video_encoder
        self._frames = 0                   # frames added so far (= next frame_index)
        self._chunk = -1
        self._numbers: list[int] = []
        self._times: list[float] = []
        self._extra: list[dict] = []
        self._video: _VideoChunkWriter | None = None
        self._last = (None, None)
        os.makedirs(basedir, exist_ok=True)
        if os.path.exists(os.path.join(basedir, "metadata.yaml")):
            raise StoreError(f"{basedir}: already holds a store")
        self._lock = os.path.join(basedir, ".lock")
        open(self._lock, "w").close()
        store = {
            "chunksize": self.chunksize,
            "class": "VideoImgStore" if self.is_video else "DirectoryImgStore",
            "created_utc": _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None).isoformat(),
            "encoding": encoding,
            "format": fmt,
            "imgdtype": self.imgdtype.name,
            "imgshape": list(self.imgshape),
            "timezone_local": _local_zone_name(),
            "uuid": uuid.uuid4().hex,
            "version": 2,
        }
        if self.is_video:
            store["extension"] = VIDEO_FORMATS[fmt][1]
        self._store = store
        doc = {STORE_KEY: store, **(metadata or {})}
        atomic_write(os.path.join(basedir, "metadata.yaml"), yaml.safe_dump(doc).encode())
        self._new_chunk()

    # -- chunks -----------------------------------------------------------------------
    def _chunk_base(self, number: int) -> str:
        return os.path.join(self.basedir, f"{number:06d}")

    def _new_chunk(self) -> None:
        self._chunk += 1
        self._numbers, self._times, self._extra = [], [], []
        base = self._chunk_base(self._chunk)
        if self.is_video:
            return                        # the video file is opened with its first frame
        os.makedirs(base, exist_ok=True)

    def _open_video(self) -> None:
        h, w = self.imgshape[:2]
        path = self._chunk_base(self._chunk) + VIDEO_FORMATS[self.format][1]
        choice = self._video_encoder
        if choice in ("auto", "opencv"):
            try:
                self._video = _VideoChunkWriter(path, self.format, w, h, use_ffmpeg=False)
                self._video_encoder = "opencv"
                return
            except StoreError:
                if choice == "opencv":
                    raise
                if os.path.exists(path):
                    os.unlink(path)
        self._video = _VideoChunkWriter(path, self.format, w, h, use_ffmpeg=True)
        self._video_encoder = "ffmpeg"

    def _close_chunk(self) -> None:
        if self._video is not None:
            self._video.close()
            self._video = None
        base = self._chunk_base(self._chunk)
        index_path = (os.path.join(base, "index.npz") if not self.is_video else base + ".npz")
        members = {k: np.asarray("" if v is None else str(v)) for k, v in self._store.items()
                   if k != "imgshape"}
        members["imgshape"] = np.asarray(self.imgshape)
        tmp = index_path + ".tmp.npz"
        np.savez(tmp, frame_number=np.asarray(self._numbers, dtype=np.int64),
                 frame_time=np.asarray(self._times, dtype=np.float64), **members)
        os.replace(tmp, index_path)
        if self._extra:
            extra_path = (os.path.join(base, "index.extra.json") if not self.is_video
                          else base + ".extra.json")
            atomic_write(extra_path, json.dumps(self._extra).encode())

    # -- frames -----------------------------------------------------------------------
    def add_image(self, img: np.ndarray, frame_number: int, frame_time: float | None = None) -> None:
        img = np.asarray(img)
        if img.shape[:2] != self.imgshape[:2] and not self.is_video:
            raise StoreError(f"image shape {img.shape} does not match the store's {self.imgshape}")
        if frame_time is None:
            frame_time = time.time()
        if len(self._numbers) == self.chunksize:
            self._close_chunk()
            self._new_chunk()
        position = len(self._numbers)
        if self.is_video:
            if self._video is None:
                self._open_video()
            frame = img[: self.imgshape[0], : self.imgshape[1]]
            if frame.ndim == 2:
                frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
            self._video.write(np.ascontiguousarray(frame.astype(np.uint8, copy=False)))
        else:
            dest = os.path.join(self._chunk_base(self._chunk), f"{position:06d}.{self.format}")
            if self.format == "npy":
                np.save(dest, img)
            else:
                if self.format == "ppm" and img.ndim == 2:
                    img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
                elif self.format == "pgm" and img.ndim == 3:
                    img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
                if not cv2.imwrite(dest, img):
                    raise StoreError(f"{dest}: OpenCV could not write this image")
        self._numbers.append(int(frame_number))
        self._times.append(float(frame_time))
        self._frames += 1
        self._last = (int(frame_number), float(frame_time))

    def add_extra_data(self, **values) -> None:
        """Record values against the frame added last (as upstream does)."""
        number, t = self._last
        record = dict(values)
        record.update(frame_time=t, frame_number=number, frame_index=self._frames - 1)
        self._extra.append(record)

    def close(self) -> None:
        if self._chunk < 0:
            return
        self._close_chunk()
        self._chunk = -1
        if os.path.exists(self._lock):
            os.unlink(self._lock)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
