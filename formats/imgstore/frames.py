"""Decoding the frames of an imgstore into numpy arrays (OpenCV channel order, BGR).

Directory stores hold one image file per frame. Video stores hold one video per chunk,
decoded with OpenCV; to make random access exact and sequential access cheap, each
chunk keeps a small pool of positioned decoders: a request at or a little after a
decoder's position reads forward, anything else seeks and checks where the seek landed.
"""
from __future__ import annotations

import io
import logging
import os
import re
import threading
from collections import OrderedDict

import cv2
import numpy as np

from ..files import Files
from .index import Chunk, FrameIndex
from .metadata import StoreError, StoreMetadata

log = logging.getLogger(__name__)

_CONVERSION_NAME = re.compile(r"^COLOR_(?P<codec>[A-Za-z0-9_]+)2BGR(?P<method>_[A-Za-z0-9]+)?$")


class FrameError(Exception):
    """One frame cannot be read; the rest of the store is fine."""


def colour_conversions() -> dict[str, int]:
    """imgstore `encoding` names ('cv_bayerbg', 'cv_yuv_nv12', ...) -> cv2 conversion codes.

    imgstore names an encoding after the OpenCV constant `COLOR_<X>2BGR[_<method>]`:
    'cv_' + X lowered without underscores, plus '_<method>' lowered; the Bayer variants
    with a demosaicing method are not encodings.
    """
    table = {}
    for name in dir(cv2):
        m = _CONVERSION_NAME.match(name)
        if not m:
            continue
        code = "cv_" + m["codec"].lower().replace("_", "")
        method = m["method"]
        if method:
            if "bayer" in code:
                continue
            code += "_" + method[1:].lower().replace("_", "")
        table.setdefault(code, int(getattr(cv2, name)))
    return table


def _match_channels(img: np.ndarray, colour: bool) -> np.ndarray:
    if colour and img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if not colour and img.ndim == 3:
        if img.shape[2] == 1:
            return img[:, :, 0]
        return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY if img.shape[2] == 3 else cv2.COLOR_BGRA2GRAY)
    if colour and img.ndim == 3 and img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    return img


class FrameReader:
    """Returns decoded frames by frame_index. Thread-safe."""

    def __init__(self, meta: StoreMetadata, index: FrameIndex):
        self.meta = meta
        self.index = index
        stored = meta.imgshape
        if meta.kind == "video":
            # the video writer truncates to even sizes, and so must the reader
            stored = (stored[0] & ~1, stored[1] & ~1) + stored[2:]
        self._colour = len(stored) == 3 and stored[2] == 3
        self._conversion = None
        if meta.encoding:
            table = colour_conversions()
            if meta.encoding not in table:
                raise StoreError(f"{meta.path}: encoding {meta.encoding!r} is not an OpenCV colour conversion")
            self._conversion = table[meta.encoding]
            self.shape = (stored[0], stored[1], 3)
        else:
            self.shape = stored if len(stored) == 2 or self._colour else stored[:2]
        self.dtype = np.dtype(meta.imgdtype) if meta.kind == "directory" else np.dtype(np.uint8)

    def read(self, frame_index: int) -> np.ndarray:
        chunk, position = self.index.locate(frame_index)
        img = self._load(chunk, position)
        img = _match_channels(img, self._colour)
        if self._conversion is not None:
            img = cv2.cvtColor(img, self._conversion)
        if img.shape != self.shape or img.dtype != self.dtype:
            raise FrameError(f"frame {frame_index} decodes as {img.shape} {img.dtype}, "
                             f"but the store declares {self.shape} {self.dtype}")
        return img

    def _load(self, chunk: Chunk, position: int) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass


class DirectoryFrameReader(FrameReader):
    def frame_path(self, chunk: Chunk, position: int) -> str:
        return os.path.join(chunk.data_path, f"{position:06d}.{self.meta.format}")

    def _load(self, chunk: Chunk, position: int) -> np.ndarray:
        path = self.frame_path(chunk, position)
        try:
            data = self.meta.files.read(path)
            if self.meta.format == "npy":
                img = np.load(io.BytesIO(data), allow_pickle=False)
            else:
                img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
        except (OSError, ValueError, EOFError) as exc:
            raise FrameError(f"{path}: {exc}") from None
        if img is None:
            raise FrameError(f"{path}: not a decodable {self.meta.format} image")
        return img


#: an MJPEG capture decodes in its caller's thread alone: FFmpeg otherwise works on each
#: frame with a thread of its own besides the caller's, a hand-off and 2 wake-ups a frame,
#: for no gain (`tar` of a 320x240 store: 0.5-1.6 against 4.0-4.6 context switches a
#: frame, the daemon's CPU the same, the same pixels). Inter-frame codecs keep
#: FFmpeg's threads.
_ONE_THREAD = [cv2.CAP_PROP_N_THREADS, 1]


class _Decoder:
    """One OpenCV capture on one chunk, and where it stands (the next frame it returns)."""

    def __init__(self, chunk: Chunk, api: int, params: list[int], files: Files):
        self.chunk = chunk
        self.api = api
        self.params = params
        self.files = files
        self.cap = None
        self.next = 0

    def open(self) -> None:
        self.close()
        try:
            local = self.files.local_path(self.chunk.data_path)   # a remote chunk: a cached copy
        except FileNotFoundError:
            raise FrameError(f"{self.chunk.data_path}: video chunk is missing") from None
        if not os.path.exists(local):
            raise FrameError(f"{self.chunk.data_path}: video chunk is missing")
        cap = cv2.VideoCapture(local, self.api, self.params)
        if not cap.isOpened():
            raise FrameError(f"{self.chunk.data_path}: OpenCV cannot open this video chunk")
        self.cap, self.next = cap, 0

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None

    def read(self, position: int, forward_limit: int) -> np.ndarray:
        if self.cap is None:
            self.open()
        if not (self.next <= position <= self.next + forward_limit):
            frame = self._seek_read(position)
            if frame is not None:
                return frame
            log.debug("%s: seek to %d was not exact, decoding from the start",
                      self.chunk.data_path, position)
            self.open()
        frame = self._forward_read(position)
        if frame is None:
            # a decoder can get stuck after a seek (upstream's one-frame-chunk bug):
            # a fresh one read forward is always right
            self.open()
            frame = self._forward_read(position)
        if frame is None:
            self.close()
            raise FrameError(f"{self.chunk.data_path}: frame {position} cannot be decoded "
                             f"(chunk has {self.chunk.count} frames in its index)")
        return frame

    def _forward_read(self, position: int) -> np.ndarray | None:
        while self.next < position:
            if not self.cap.grab():
                return None
            self.next += 1
        ok, frame = self.cap.read()
        if not ok or frame is None:
            return None
        self.next = position + 1
        return frame

    def _seek_read(self, position: int) -> np.ndarray | None:
        self.cap.set(cv2.CAP_PROP_POS_FRAMES, position)
        ok, frame = self.cap.read()
        landed = int(round(self.cap.get(cv2.CAP_PROP_POS_FRAMES))) - 1
        if not ok or frame is None or landed != position:
            return None
        self.next = position + 1
        return frame


class VideoFrameReader(FrameReader):
    """Video chunks decoded by a bounded pool of positioned decoders.

    `mjpeg_reader='opencv'` reads MJPEG/AVI chunks with OpenCV's own MJPEG reader, which
    seeks through the AVI index (one decode per random frame instead of up to 17), but
    decodes with libjpeg: pixels differ slightly from FFmpeg's (and upstream's) decode.
    """

    def __init__(self, meta: StoreMetadata, index: FrameIndex, decoders_per_chunk: int = 4,
                 max_decoders: int = 16, mjpeg_reader: str = "ffmpeg"):
        super().__init__(meta, index)
        mjpeg = meta.format in ("mjpeg/avi", "mjpeg")
        self._api = cv2.CAP_OPENCV_MJPEG if (mjpeg and mjpeg_reader == "opencv") else cv2.CAP_FFMPEG
        self._params = _ONE_THREAD if (mjpeg and self._api == cv2.CAP_FFMPEG) else []
        # read forward instead of seeking when the target is at most this far ahead:
        # FFmpeg seeks land up to 16 frames early and decode forward anyway; an indexed
        # MJPEG seek costs one decode; inter-frame codecs decode from a keyframe
        if self._api == cv2.CAP_OPENCV_MJPEG:
            self.forward_limit = 1
        elif mjpeg:
            self.forward_limit = 12
        else:
            self.forward_limit = 96
        self._per_chunk = decoders_per_chunk
        self._max = max(max_decoders, decoders_per_chunk)
        self._lock = threading.Lock()           # (taken bare: a Condition's `with` is 2 Python calls)
        self._cond = threading.Condition(self._lock)
        self._idle: OrderedDict[int, _Decoder] = OrderedDict()   # id -> decoder, LRU first
        self._open_per_chunk: dict[int, int] = {}
        self._waiting = 0                       # threads in `_acquire` waiting for a decoder
        self._closed = False

    def _load(self, chunk: Chunk, position: int) -> np.ndarray:
        decoder = self._acquire(chunk, position)
        ok = False
        try:
            frame = decoder.read(position, self.forward_limit)
            ok = True
            return frame
        finally:
            self._release(decoder, keep=ok)

    def _acquire(self, chunk: Chunk, position: int) -> _Decoder:
        with self._lock:
            while True:
                if self._closed:
                    raise FrameError("store is closed")
                best = None
                for key, dec in self._idle.items():
                    if dec.chunk.number != chunk.number:
                        continue
                    ahead = position - dec.next
                    score = ahead if 0 <= ahead <= self.forward_limit else self.forward_limit + 1
                    if best is None or score < best[0]:
                        best = (score, key)
                if best is not None and (best[0] <= self.forward_limit
                                         or self._open_per_chunk.get(chunk.number, 0) >= self._per_chunk):
                    return self._idle.pop(best[1])
                if self._open_per_chunk.get(chunk.number, 0) < self._per_chunk:
                    self._evict_for_room()
                    self._open_per_chunk[chunk.number] = self._open_per_chunk.get(chunk.number, 0) + 1
                    return _Decoder(chunk, self._api, self._params, self.meta.files)
                self._waiting += 1
                self._cond.wait()
                self._waiting -= 1

    def _evict_for_room(self) -> None:
        total = sum(self._open_per_chunk.values())
        while total >= self._max and self._idle:
            _, dec = self._idle.popitem(last=False)
            dec.close()
            self._open_per_chunk[dec.chunk.number] -= 1
            total -= 1

    def _release(self, decoder: _Decoder, keep: bool) -> None:
        with self._lock:
            if keep and not self._closed:
                self._idle[id(decoder)] = decoder
            else:
                decoder.close()
                self._open_per_chunk[decoder.chunk.number] -= 1
            if self._waiting:                   # (notify_all is 4 Python calls: once a frame, it showed)
                self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            for dec in self._idle.values():
                dec.close()
            self._idle.clear()
            self._cond.notify_all()


def open_reader(meta: StoreMetadata, index: FrameIndex, mjpeg_reader: str = "ffmpeg") -> FrameReader:
    if meta.kind == "directory":
        return DirectoryFrameReader(meta, index)
    return VideoFrameReader(meta, index, mjpeg_reader=mjpeg_reader)
