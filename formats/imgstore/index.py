"""Chunk discovery and the frame index of an imgstore.

Frames have three coordinates: `frame_index` (dense position over the whole store),
`frame_number` (whatever the camera said: gaps, duplicates, wrap-around, negatives) and
`frame_time` (float, usually epoch seconds). The index keeps them as numpy arrays so
that every lookup is a binary search, never a scan, even for millions of frames.
"""
from __future__ import annotations

import bisect
import io
import logging
import os
import re
import threading
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np
import yaml

from ..files import LOCAL, Files
from .metadata import StoreError, StoreMetadata

log = logging.getLogger(__name__)

_CHUNK_NAME = re.compile(r"^-?\d+$")


@dataclass(frozen=True)
class Chunk:
    number: int          # the chunk's own number (its name)
    index_path: str      # the .npz (or legacy .yaml) this chunk's frames came from
    data_path: str       # the chunk directory (directory store) or the video file
    start: int           # frame_index of its first frame
    count: int           # frames in it


def discover_chunks(meta: StoreMetadata) -> list[tuple[int, str, str]]:
    """(chunk number, index path without extension, data path), sorted by number.

    Follows upstream: directory stores have one numeric sub-directory per chunk, video
    stores one numeric `NNNNNN<ext>` file per chunk. A non-numeric name is refused
    (upstream refuses too), so a stray file never silently shifts frame indexes.
    """
    base, files = meta.path, meta.files
    found = []
    try:
        names = files.listdir(base)
    except OSError as exc:
        raise StoreError(f"{base}: {exc.strerror or exc}") from None
    if meta.kind == "directory":
        for name in names:
            full = os.path.join(base, name)
            if name.startswith(".") or not files.isdir(full):
                continue
            if not _CHUNK_NAME.match(name):
                raise StoreError(f"{full}: chunk directory name is not a number")
            found.append((int(name), os.path.join(full, "index"), full))
    else:
        ext = meta.video_extension
        for name in names:
            if not name.endswith(ext) or name.startswith("."):
                continue
            stem = name[: -len(ext)]
            full = os.path.join(base, name)
            if not _CHUNK_NAME.match(stem):
                raise StoreError(f"{full}: video chunk name is not a number")
            found.append((int(stem), os.path.join(base, stem), full))
        # a chunk whose video went missing still has its index: keep it so that its
        # frames keep their indexes and fail alone (EIO) instead of vanishing
        have = {n for n, _, _ in found}
        for name in names:
            if name.endswith(".npz") and _CHUNK_NAME.match(name[:-4]) and int(name[:-4]) not in have:
                stem = name[:-4]
                found.append((int(stem), os.path.join(base, stem), os.path.join(base, stem + ext)))
    found.sort()
    return found


def _read_npz(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    # only these two members: the others are copies of __store (one of them pickled)
    with np.load(io.BytesIO(data), allow_pickle=False) as dat:
        return dat["frame_number"], dat["frame_time"]


def _read_yaml(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    doc = yaml.safe_load(data)
    if not isinstance(doc, dict):
        raise ValueError("not a mapping")
    return np.asarray(doc["frame_number"]), np.asarray(doc["frame_time"])


def read_chunk_index(index_base: str, files: Files = LOCAL) -> tuple[np.ndarray, np.ndarray, str] | None:
    """frame_number (int64) and frame_time (float64) of one chunk, and the index file
    they came from; None if it has no index."""
    for ext, reader in ((".npz", _read_npz), (".yaml", _read_yaml)):
        path = index_base + ext
        try:
            data = files.read(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise StoreError(f"{path}: chunk index is unreadable ({exc})") from None
        try:
            numbers, times = reader(data)
            numbers = np.asarray(numbers).reshape(-1)
            times = np.asarray(times, dtype=np.float64).reshape(-1)
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, EOFError, yaml.YAMLError) as exc:
            raise StoreError(f"{path}: chunk index is unreadable ({type(exc).__name__}: {exc})") from None
        if numbers.shape != times.shape:
            raise StoreError(f"{path}: chunk index has {numbers.size} frame numbers "
                             f"but {times.size} frame times")
        if numbers.size and not np.all(np.isfinite(numbers.astype(np.float64))):
            raise StoreError(f"{path}: chunk index has non-finite frame numbers")
        return numbers.astype(np.int64), times, path
    return None


class FrameIndex:
    """All frames of a store in frame_index order, with O(log n) lookups."""

    def __init__(self, chunks: list[Chunk], numbers: np.ndarray, times: np.ndarray):
        self.chunks = chunks
        self.numbers = numbers
        self.times = times
        self._starts = [c.start for c in chunks]
        self._start_array = np.asarray(self._starts, np.int64)
        self._lock = threading.Lock()
        self._orders: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return int(self.numbers.size)

    @classmethod
    def load(cls, meta: StoreMetadata, skip_bad_chunks: bool = False, workers: int = 4,
             progress: Callable[[str], None] | None = None) -> "FrameIndex":
        found = discover_chunks(meta)

        def load_one(item):
            number, index_base, data = item
            try:
                return item, read_chunk_index(index_base, meta.files)
            except StoreError as exc:
                if not skip_bad_chunks:
                    raise
                log.warning("skipping chunk %d: %s", number, exc)
                return item, None

        loaded = []
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for item in pool.map(load_one, found):
                loaded.append(item)
                if progress:
                    progress(f"indexing {meta.path}: chunk {len(loaded)}/{len(found)}")
        chunks, numbers, times = [], [], []
        start = 0
        for (number, index_base, data), arrays in loaded:
            if arrays is None:
                if not any(meta.files.exists(index_base + ext) for ext in (".npz", ".yaml")):
                    log.warning("chunk %d has no index, its frames are not visible", number)
                continue
            n_numbers, n_times, path = arrays
            if n_numbers.size == 0:
                continue  # the trailing empty chunk of an exact multiple, or an empty store
            chunks.append(Chunk(number, path, data, start, int(n_numbers.size)))
            numbers.append(n_numbers)
            times.append(n_times)
            start += int(n_numbers.size)
        if numbers:
            return cls(chunks, np.concatenate(numbers), np.concatenate(times))
        return cls(chunks, np.zeros(0, np.int64), np.zeros(0, np.float64))

    # -- frame_index ------------------------------------------------------------------
    def locate(self, index: int) -> tuple[Chunk, int]:
        """The chunk holding a frame and the frame's position inside it."""
        if not 0 <= index < self.numbers.size:
            raise IndexError(index)
        chunk = self.chunks[bisect.bisect_right(self._starts, index) - 1]
        return chunk, index - chunk.start

    def chunk_positions(self, indexes: np.ndarray) -> np.ndarray:
        """For many frames at once: the position in `chunks` of the chunk holding each."""
        return np.searchsorted(self._start_array, indexes, side="right") - 1

    def _sorted(self, field: str) -> tuple[np.ndarray, np.ndarray]:
        """(frame indexes in order of `field`, the sorted values), made on first use; the
        stable sort keeps equal values in frame_index order."""
        with self._lock:
            if field not in self._orders:
                values = getattr(self, field)
                order = np.argsort(values, kind="stable")
                self._orders[field] = (order, values[order])
            return self._orders[field]

    # -- frame_number -----------------------------------------------------------------
    def by_number_order(self) -> tuple[np.ndarray, np.ndarray]:
        """(frame indexes in frame_number order, the sorted frame numbers)."""
        return self._sorted("numbers")

    def by_number_position(self, position: int) -> tuple[int, int]:
        """(frame_index, duplicate rank) of the position-th frame in frame_number order."""
        order, values = self.by_number_order()
        rank = position - int(np.searchsorted(values, values[position], side="left"))
        return int(order[position]), rank

    def find_number(self, number: int, rank: int = 0) -> int | None:
        """frame_index of the rank-th frame (in index order) carrying this frame_number."""
        order, values = self.by_number_order()
        lo = int(np.searchsorted(values, number, side="left"))
        hi = int(np.searchsorted(values, number, side="right"))
        if not 0 <= rank < hi - lo:
            return None
        return int(order[lo + rank])

    # -- frame_time -------------------------------------------------------------------
    def _time_order(self) -> tuple[np.ndarray, np.ndarray]:
        return self._sorted("times")

    def nearest_time(self, t: float) -> int | None:
        """frame_index of the frame whose time is closest to t; on a tie (equal times, or
        equal float distances on both sides) the earliest frame_index, as upstream."""
        if not len(self):
            return None
        order, values = self._time_order()
        n = values.size
        pos = int(np.searchsorted(values, t, side="left"))      # values[:pos] < t <= values[pos:]
        best = t - values[pos - 1] if pos else np.inf
        if pos < n:
            best = min(best, values[pos] - t)
        # distance falls to the left of pos and grows to the right: both ends by bisection
        first = bisect.bisect_left(range(pos), True, key=lambda i: bool(t - values[i] <= best))
        end = pos + bisect.bisect_left(range(pos, n), True, key=lambda i: bool(values[i] - t > best))
        return int(order[first:end].min())
