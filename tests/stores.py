"""Sample imgstores with known pixels, written by scopefs's own writer."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from scopefs.formats.imgstore.sample import barcode, draw_barcode, sample_frame
from scopefs.formats.imgstore.writer import ImgStoreWriter

T0 = 1700000000.0


def noise_frame(number: int, shape, dtype=np.uint8) -> np.ndarray:
    """Noise (so that every pixel matters) with the number as a barcode."""
    rng = np.random.default_rng(number & 0xFFFFFFFF)
    top = np.iinfo(dtype).max
    img = rng.integers(0, top, size=shape, dtype=dtype, endpoint=True)
    plane = np.zeros(shape[:2] + (3,), np.uint8)
    draw_barcode(plane, number & 0xFFFF)
    mask = plane[..., 0] > 0
    img[16:32] = 0
    img[mask] = top
    return img


@dataclass
class Sample:
    path: Path
    fmt: str
    numbers: list[int]
    times: list[float]
    written: list[np.ndarray] = field(repr=False)   # as given to the writer (BGR)
    encoding: str | None = None

    def expected_rgb(self, i: int) -> np.ndarray:
        """What a lossless served frame must contain: RGB (or gray) pixels."""
        img = self.written[i]
        if self.encoding:
            img = cv2.cvtColor(img, cv2.COLOR_BayerBG2BGR)
        if img.ndim == 3:
            img = img[:, :, ::-1]
        return img


def make_store(path: Path, fmt: str, shape=(48, 64, 3), dtype=np.uint8, numbers=None, chunksize=5,
               encoding=None, video=False, extra=False, metadata=None) -> Sample:
    numbers = list(range(12)) if numbers is None else list(numbers)
    times = [T0 + 0.04 * i for i in range(len(numbers))]
    written = []
    with ImgStoreWriter(str(path), fmt, shape, dtype, chunksize=chunksize, encoding=encoding,
                        metadata=metadata) as store:
        for i, (number, t) in enumerate(zip(numbers, times)):
            img = sample_frame(number, shape) if video else noise_frame(number, shape, dtype)
            store.add_image(img, number, t)
            written.append(img)
            if extra and i % 2 == 0:
                store.add_extra_data(temperature=20.0 + i, label=f"f{i}", vec=[i, 2 * i])
    return Sample(path, fmt, numbers, times, written, encoding)


def index_only_store(path: Path, numbers, chunksize: int = 10_000, shape=(480, 640, 3)) -> Path:
    """A directory store whose chunk indexes hold `numbers` (frame_number per frame_index)
    but whose frame files are never written: mounting, listing and stat never read them,
    so a million frames cost a few index files."""
    numbers = np.asarray(numbers, np.int64)
    with ImgStoreWriter(str(path), "npy", shape, chunksize=chunksize):
        pass
    for c, start in enumerate(range(0, numbers.size, chunksize)):
        chunk = numbers[start:start + chunksize]
        folder = path / f"{c:06d}"
        folder.mkdir(exist_ok=True)
        np.savez(folder / "index.npz", frame_number=chunk, frame_time=T0 + np.arange(start, start + chunk.size) * 0.04)
    return path


__all__ = ["Sample", "make_store", "index_only_store", "noise_frame", "barcode", "T0"]
